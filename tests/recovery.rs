//! Recovery on open: process-crash images (replay), simulated reboots
//! (rebuild from the log), torn tails, a writer that died mid-change, and
//! stale records past a recovered tail.
//!
//! A "crash image" is a copy of the file taken while the store is open:
//! exactly what the page cache holds, i.e. what a killed process leaves.
//! `MAPKV_BOOT_ID` makes the next open believe the machine rebooted. The
//! variable is process-wide, so these tests take a lock around it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::store;
use mapkv::testing::layout::{self, control};
use mapkv::{Db, Durability, OpenKind, Options};

static BOOT: Mutex<()> = Mutex::new(());

fn image(from: &Path, name: &str) -> PathBuf {
    let to = from.with_file_name(name);
    std::fs::copy(from, &to).unwrap();
    to
}

/// Open `path` in this boot (holding the lock, so that no other test's
/// simulated reboot is in force meanwhile).
fn open_same_boot(path: &Path) -> mapkv::Result<Db> {
    let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
    Db::open(path)
}

/// Open `path` as if the machine had rebooted since it was written.
fn open_after_reboot(path: &Path, boot: &str) -> mapkv::Result<Db> {
    let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MAPKV_BOOT_ID", boot);
    let r = Db::open(path);
    std::env::remove_var("MAPKV_BOOT_ID");
    r
}

fn patch(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn read_at(path: &Path, off: u64, n: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0; n];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

fn fill(db: &Db, n: u32, tag: u8) {
    for i in 0..n {
        db.insert(i.to_le_bytes(), [tag; 60]).unwrap();
    }
}

fn assert_filled(db: &Db, n: u32, tag: u8) {
    db.check().unwrap();
    assert_eq!(db.len(), n as u64);
    for i in 0..n {
        assert_eq!(
            db.get(i.to_le_bytes()).unwrap().unwrap(),
            &[tag; 60][..],
            "key {i}"
        );
    }
}

#[test]
fn process_crash_image_replays_and_loses_nothing() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 5000, 1);
    let img = image(&path, "crash.mapkv");
    let db2 = open_same_boot(&img).unwrap();
    assert_eq!(db2.stats().opened, OpenKind::Replayed);
    assert_filled(&db2, 5000, 1);
    assert!(db2.stats().generation > db.stats().generation);
    // The recovered store is writable and reopens cleanly.
    db2.insert(b"after", b"crash").unwrap();
    db2.close().unwrap();
    let db3 = open_same_boot(&img).unwrap();
    assert_eq!(db3.stats().opened, OpenKind::Clean);
    assert_eq!(db3.len(), 5001);
}

#[test]
fn reboot_rebuilds_the_index_from_the_log() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 20_000, 2);
    for i in 0..5000u32 {
        db.remove(i.to_le_bytes()).unwrap();
    }
    let img = image(&path, "reboot.mapkv");
    let db2 = open_after_reboot(&img, "another-boot-1").unwrap();
    assert_eq!(db2.stats().opened, OpenKind::Rebuilt);
    assert_eq!(db2.len(), 15_000);
    for i in 0..20_000u32 {
        let v = db2.get(i.to_le_bytes()).unwrap();
        assert_eq!(v.is_some(), i >= 5000, "key {i}");
    }
    let s1 = db.stats();
    let s2 = db2.stats();
    assert_eq!(
        (s2.keys, s2.live_bytes),
        (s1.keys, s1.live_bytes),
        "rebuilt counters differ"
    );
}

#[test]
fn clean_close_survives_a_reboot_without_a_scan() {
    let (_d, path) = store();
    {
        let db = open_same_boot(&path).unwrap();
        fill(&db, 1000, 3);
    }
    let db = open_after_reboot(&path, "another-boot-2").unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    assert_filled(&db, 1000, 3);
}

#[test]
fn incomplete_batch_past_the_tail_is_invisible() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 100, 4);
    let tail = db.stats().tail;
    // The state before the batch: what the page cache holds if the writer
    // dies before it publishes anything.
    let before = image(&path, "before.mapkv");
    let mut b = db.batch();
    for i in 0..50u32 {
        b.insert((1000 + i).to_le_bytes(), [9u8; 60]);
    }
    b.commit().unwrap();
    let end = db.stats().tail;
    let full = image(&path, "full.mapkv");
    let batch_bytes = read_at(&full, tail, (end - tail) as usize);
    // The writer died after appending part of the batch (or, after a
    // reboot, only part of its pages reached the disk).
    for (name, cut) in [
        ("torn-early", tail + 24),
        ("torn-mid", (tail + end) / 2),
        ("torn-late", end - 8),
    ] {
        for reboot in [false, true] {
            let img = image(&before, &format!("{name}.{reboot}.mapkv"));
            patch(&img, tail, &batch_bytes[..(cut - tail) as usize]);
            let db2 = if reboot {
                open_after_reboot(&img, "boot-torn").unwrap()
            } else {
                open_same_boot(&img).unwrap()
            };
            let want = if reboot {
                OpenKind::Rebuilt
            } else {
                OpenKind::Replayed
            };
            assert_eq!(db2.stats().opened, want, "{name}");
            assert_filled(&db2, 100, 4);
            assert_eq!(
                db2.get(1000u32.to_le_bytes()).unwrap(),
                None,
                "{name}: partial batch visible"
            );
            // The store continues at the recovered tail.
            db2.insert(b"next", b"write").unwrap();
            assert_eq!(db2.stats().tail, tail + 40, "{name}"); // 24 + 4 + 5, padded to 8
        }
    }
    // The whole batch appended but not yet published (the writer died
    // before the slot stores): replay rolls it forward.
    let img = image(&before, "rolled.mapkv");
    patch(&img, tail, &batch_bytes);
    let db3 = open_same_boot(&img).unwrap();
    assert_eq!(db3.stats().opened, OpenKind::Replayed);
    assert_eq!(db3.len(), 150);
    assert_eq!(
        db3.get(1049u32.to_le_bytes()).unwrap().unwrap(),
        &[9u8; 60][..]
    );
}

#[test]
fn writer_dead_in_the_middle_of_an_index_change_forces_a_rebuild() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 3000, 5);
    let img = image(&path, "odd.mapkv");
    // Control block version word (the seqlock): make it odd.
    let at = layout::CONTROL_OFFSET + control::VERSION as u64;
    let v = u64::from_le_bytes(read_at(&img, at, 8).try_into().unwrap());
    patch(&img, at, &(v | 1).to_le_bytes());
    let db2 = open_same_boot(&img).unwrap();
    assert_eq!(db2.stats().opened, OpenKind::Rebuilt);
    assert_filled(&db2, 3000, 5);
}

#[test]
fn garbage_index_is_rebuilt_after_a_reboot() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 3000, 6);
    let s = db.stats();
    let img = image(&path, "garbage-index.mapkv");
    // Overwrite the live index table with junk: slots pointing anywhere.
    let at = layout::CONTROL_OFFSET + control::INDEX_DESC as u64;
    let ctrl_desc = u64::from_le_bytes(read_at(&img, at, 8).try_into().unwrap());
    let start = ctrl_desc & !layout::INDEX_DESC_LOG2_MASK;
    let junk: Vec<u8> = (0..s.index_bytes).map(|i| (i * 7919 % 251) as u8).collect();
    patch(&img, start, &junk);
    let db2 = open_after_reboot(&img, "boot-garbage").unwrap();
    assert_eq!(db2.stats().opened, OpenKind::Rebuilt);
    assert_filled(&db2, 3000, 6);
}

#[test]
fn stale_commits_past_a_recovered_tail_are_never_adopted() {
    let (_d, path) = store();
    let db = Options::new()
        .durability(Durability::None)
        .open(&path)
        .unwrap();
    let t0 = db.stats().tail;
    db.insert(b"a", [b'x'; 100]).unwrap(); // C0 at t0
    let t1 = db.stats().tail;
    db.insert(b"b", b"y").unwrap(); // C1
    db.insert(b"a", b"old-overwrite").unwrap(); // C2
    let img = image(&path, "stale.mapkv");
    // Lose C0's last value bytes: its CRC fails, so the log ends at t0 and
    // C1 and C2 lie past the recovered tail.
    patch(&img, t1 - 12, &[0xEE; 4]);
    let db2 = open_after_reboot(&img, "boot-stale-1").unwrap();
    assert_eq!(db2.stats().opened, OpenKind::Rebuilt);
    assert!(db2.is_empty());
    assert_eq!(db2.stats().tail, t0);
    // A new commit of exactly C0's size ends where C1 starts.
    db2.insert(b"a", [b'z'; 100]).unwrap();
    assert_eq!(db2.stats().tail, t1);
    let img2 = image(&img, "stale2.mapkv");
    let db3 = open_after_reboot(&img2, "boot-stale-2").unwrap();
    assert_eq!(
        db3.get(b"a").unwrap().unwrap(),
        &[b'z'; 100][..],
        "a stale overwrite came back"
    );
    assert_eq!(db3.get(b"b").unwrap(), None, "a stale commit was adopted");
    assert_eq!(db3.len(), 1);
}

#[test]
fn damage_below_the_durable_tail_is_reported_not_dropped() {
    let (_d, path) = store();
    let db = Options::new()
        .durability(Durability::Sync)
        .open(&path)
        .unwrap();
    fill(&db, 200, 7);
    let img = image(&path, "durable-damage.mapkv");
    // Flip a byte in the middle of the synced log.
    let mut bytes = std::fs::read(&img).unwrap();
    let pos = bytes.windows(60).position(|w| w == [7u8; 60]).unwrap() + 30;
    bytes[pos] ^= 0x40;
    std::fs::write(&img, &bytes).unwrap();
    match open_after_reboot(&img, "boot-damage") {
        Err(mapkv::Error::Corrupted { offset, what, .. }) => {
            assert!(
                offset <= pos as u64 && pos as u64 - offset < 128,
                "offset {offset}, flip at {pos}"
            );
            assert!(what.contains("durable tail"), "{what}");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("opened a store with damaged synced data"),
    }
}

#[test]
fn read_only_open_recovers_in_memory_without_writing() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 2000, 8);
    let img = image(&path, "ro.mapkv");
    let before = std::fs::read(&img).unwrap();
    {
        let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("MAPKV_BOOT_ID", "boot-ro");
        let ro = Options::new().read_only(true).open(&img);
        std::env::remove_var("MAPKV_BOOT_ID");
        let ro = ro.unwrap();
        assert_eq!(ro.stats().opened, OpenKind::Rebuilt);
        assert_filled(&ro, 2000, 8);
    }
    // Under the lock too: another test may have set MAPKV_BOOT_ID (a
    // simulated reboot) for its own open meanwhile.
    let ro = {
        let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
        Options::new().read_only(true).open(&img).unwrap()
    };
    assert_eq!(ro.stats().opened, OpenKind::Replayed);
    assert_filled(&ro, 2000, 8);
    drop(ro);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "read-only recovery wrote the file"
    );
}

#[test]
fn recovery_is_idempotent() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 1000, 9);
    let img = image(&path, "twice.mapkv");
    // Recover, then "crash" again right away (copy while open), twice.
    let a = open_after_reboot(&img, "boot-twice").unwrap();
    let img2 = image(&img, "twice2.mapkv");
    // Same (simulated) boot as the recovery: a process crash.
    let b = open_after_reboot(&img2, "boot-twice").unwrap();
    assert_eq!(b.stats().opened, OpenKind::Replayed);
    assert_filled(&b, 1000, 9);
    let img3 = image(&img2, "twice3.mapkv");
    let c = open_after_reboot(&img3, "boot-twice-2").unwrap();
    assert_filled(&c, 1000, 9);
    drop((a, b));
}

/// Found by the kill -9 loop: a replay whose commits held only deletes
/// moved the tail past them without applying them.
#[test]
fn replay_of_delete_only_commits_applies_them() {
    let (_d, path) = store();
    let db = open_same_boot(&path).unwrap();
    fill(&db, 50, 10);
    let tail = db.stats().tail;
    let before = image(&path, "del-before.mapkv");
    assert!(db.remove(7u32.to_le_bytes()).unwrap());
    let mut b = db.batch();
    b.remove(8u32.to_le_bytes()).remove(9u32.to_le_bytes());
    b.commit().unwrap();
    let end = db.stats().tail;
    let after = image(&path, "del-after.mapkv");
    // The writer appended the deletes and died before publishing them.
    let img = image(&before, "del-img.mapkv");
    patch(&img, tail, &read_at(&after, tail, (end - tail) as usize));
    let db2 = open_same_boot(&img).unwrap();
    assert_eq!(db2.stats().opened, OpenKind::Replayed);
    db2.check().unwrap();
    assert_eq!(db2.len(), 47);
    for k in [7u32, 8, 9] {
        assert_eq!(
            db2.get(k.to_le_bytes()).unwrap(),
            None,
            "deleted key {k} is back"
        );
    }
}
