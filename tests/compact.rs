//! Compaction: nothing live is lost (model test with compactions at random
//! points), the file shrinks to the live data, it runs online (other handles
//! read and write throughout and follow the store to the new file), it is
//! crash-safe (a child process killed at every stage, and injected failures
//! around the rename), and automatic compaction triggers.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{check_self, seed, self_checking, store, Rng};
use mapkv::testing::{add_io_hook, IoOp, Phase};
use mapkv::{Db, Durability, Error, OpenKind, Options};

fn assert_model(db: &Db, model: &HashMap<Vec<u8>, Vec<u8>>, what: &str) {
    assert_eq!(db.len(), model.len() as u64, "{what}: len");
    for (k, v) in model {
        let got = db.get(k).unwrap();
        assert_eq!(got.as_deref(), Some(&v[..]), "{what}: key {k:?}");
    }
    let mut n = 0;
    for item in db.iter() {
        let (k, v) = item.unwrap();
        assert_eq!(
            model.get(&k[..]).map(|x| &x[..]),
            Some(&v[..]),
            "{what}: iter"
        );
        n += 1;
    }
    assert_eq!(n, model.len(), "{what}: iter count");
}

/// No hidden leftovers (unfinished compaction files) next to the store.
fn assert_only_the_store(path: &std::path::Path) {
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["test.mapkv"], "{names:?}");
}

#[test]
fn compaction_at_random_points_never_loses_a_live_entry() {
    let s = seed("compact_model");
    let mut rng = Rng::new(s);
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut compactions = 0;
    for step in 0..40_000u32 {
        let k = format!("key{}", rng.below(3_000)).into_bytes();
        match rng.below(100) {
            0..=59 => {
                let n = rng.below(300) as usize;
                let v = rng.bytes(n);
                db.insert(&k, &v).unwrap();
                model.insert(k, v);
            }
            60..=84 => {
                assert_eq!(db.remove(&k).unwrap(), model.remove(&k).is_some());
            }
            85..=97 => {
                let mut b = db.batch();
                for _ in 0..rng.below(20) {
                    let k = format!("key{}", rng.below(3_000)).into_bytes();
                    if rng.chance(30) {
                        b.remove(&k);
                        model.remove(&k);
                    } else {
                        let v = rng.bytes(8);
                        b.insert(&k, &v);
                        model.insert(k, v);
                    }
                }
                b.commit().unwrap();
            }
            _ => {
                let before = db.commit_seq();
                let r = db.compact().unwrap();
                compactions += 1;
                assert_eq!(r.keys, model.len() as u64, "step {step}");
                // Sequence numbers go on where they were.
                assert_eq!(db.commit_seq(), before, "step {step}");
                db.check().unwrap();
            }
        }
        if step % 5_000 == 4_999 {
            assert_model(&db, &model, &format!("step {step}"));
        }
    }
    assert!(compactions > 100, "{compactions}");
    assert_model(&db, &model, "end");
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    assert_model(&db, &model, "reopened");
    db.check().unwrap();
    assert_only_the_store(&path);
}

#[test]
fn removing_half_then_compacting_leaves_a_file_near_the_live_data() {
    let (_d, path) = store();
    let db = Options::new().open(&path).unwrap();
    const N: u64 = 200_000;
    let mut b = db.batch();
    for i in 0..N {
        b.insert(format!("{i:024}"), self_checking(i, 1, 150));
        if i % 1000 == 999 {
            b.commit().unwrap();
            b = db.batch();
        }
    }
    b.commit().unwrap();
    for i in (0..N).step_by(2) {
        db.remove(format!("{i:024}")).unwrap();
    }
    let r = db.compact().unwrap();
    let live_kv = (N / 2) * (24 + 150);
    let ratio = r.len_after as f64 / live_kv as f64;
    eprintln!("compacted: {r:?}; file / live key+value bytes = {ratio:.3}");
    assert!(ratio <= 1.3, "file is {ratio:.3} x the live data");
    // The file on disk is that short.
    let on_disk = std::fs::metadata(&path).unwrap().len();
    assert_eq!(on_disk, r.len_after);
    for i in 0..N {
        let v = db.get(format!("{i:024}")).unwrap();
        if i % 2 == 0 {
            assert!(v.is_none());
        } else {
            assert_eq!(check_self(&v.unwrap()).unwrap(), (i, 1));
        }
    }
}

#[test]
fn other_handles_read_and_write_throughout_and_follow_the_store() {
    let (_d, path) = store();
    let a = Db::open(&path).unwrap();
    for i in 0..20_000u64 {
        a.insert(i.to_le_bytes(), self_checking(i, 0, 100)).unwrap();
    }
    for i in 0..20_000u64 {
        a.insert(i.to_le_bytes(), self_checking(i, 1, 100)).unwrap();
    }
    let b = Db::open(&path).unwrap();
    let ro = Options::new().read_only(true).open(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // b writes new versions while a compacts; readers check every value.
    let writer = {
        let (b, stop, written) = (b.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut v = 2;
            while !stop.load(Ordering::Relaxed) {
                for i in (0..20_000u64).step_by(97) {
                    b.insert(i.to_le_bytes(), self_checking(i, v, 100)).unwrap();
                }
                written.store(v, Ordering::Release);
                v += 1;
                // A busy writer, not a saturating one: one that outpaces
                // the catch-up makes the final pause as long as a round.
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let reader = {
        let (ro, stop) = (ro.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut rng = Rng::new(3);
            while !stop.load(Ordering::Relaxed) {
                let i = rng.below(20_000);
                let v = ro.get(i.to_le_bytes()).unwrap().expect("never missing");
                let (k, _) = check_self(&v).unwrap();
                assert_eq!(k, i);
                reads += 1;
            }
            reads
        })
    };
    let seq_before = b.commit_seq();
    let mut reports = Vec::new();
    for _ in 0..3 {
        reports.push(a.compact().unwrap());
    }
    // Let the writer finish one more round on the new file.
    let w0 = written.load(Ordering::Acquire);
    while written.load(Ordering::Acquire) < w0 + 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    let last = written.load(Ordering::Acquire);
    eprintln!("reports {reports:?}, reads during compaction {reads}, writer rounds {last}");
    // Every handle is on the compacted file and sees the same data.
    let len = std::fs::metadata(&path).unwrap().len();
    for h in [&a, &b, &ro] {
        assert_eq!(h.stats().file_len, len);
        assert!(h.commit_seq() > seq_before);
        for i in (0..20_000u64).step_by(97) {
            let v = h.get(i.to_le_bytes()).unwrap().unwrap();
            assert_eq!(check_self(&v).unwrap(), (i, last));
        }
    }
    a.check().unwrap();
    assert!(reports.iter().any(|r| r.caught_up > 0) || last <= 2);
    drop((a, b, ro));
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    db.check().unwrap();
}

#[test]
fn waiters_and_watchers_follow_a_compaction() {
    let (_d, path) = store();
    let a = Db::open(&path).unwrap();
    let b = Options::new().read_only(true).open(&path).unwrap();
    a.insert(b"k", b"v1").unwrap();
    a.insert(b"k", b"v2").unwrap();
    let pos = b.log_position();
    let seen = b.commit_seq();
    let waiter = std::thread::spawn(move || {
        let now = b.wait_for_change(seen, Duration::from_secs(30)).seq();
        (now, b.get(b"k").unwrap(), b)
    });
    std::thread::sleep(Duration::from_millis(50));
    a.compact().unwrap();
    a.insert(b"k", b"v3").unwrap();
    let (now, v, b) = waiter.join().unwrap();
    assert!(now > seen);
    assert_eq!(v.as_deref(), Some(&b"v3"[..]));
    // Positions from before the compaction are refused, clearly.
    assert!(matches!(
        b.changes_after(pos, 10),
        Err(Error::BadPosition { .. })
    ));
    let p2 = b.log_position();
    a.remove(b"k").unwrap();
    let (commits, _) = b.changes_after(p2, 10).unwrap();
    assert_eq!(commits.len(), 1);
}

#[test]
fn failure_before_the_rename_leaves_the_old_store_intact_and_usable() {
    let (_d, path) = store();
    let db = Options::new()
        .durability(Durability::Sync)
        .open(&path)
        .unwrap();
    for i in 0..2_000u32 {
        db.insert(i.to_le_bytes(), [1u8; 64]).unwrap();
    }
    for i in 0..1_000u32 {
        db.remove(i.to_le_bytes()).unwrap();
    }
    let len0 = db.stats().file_len;
    let p = path.clone();
    let hook = add_io_hook(Arc::new(move |hp, op, ph| {
        (hp == p.as_path() && op == IoOp::Rename && ph == Phase::Before)
            .then(|| std::io::Error::other("injected"))
    }));
    let r = db.compact();
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    drop(hook);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len0);
    assert_eq!(db.len(), 1_000);
    db.insert(b"after", b"failure").unwrap();
    assert_eq!(db.stats().file_len, len0);
    db.check().unwrap();
    // The same handle compacts fine afterwards, and sees the store move.
    let p = path.clone();
    let renamed = Arc::new(AtomicBool::new(false));
    let seen = renamed.clone();
    let hook = add_io_hook(Arc::new(move |hp, op, ph| {
        if hp == p.as_path() && op == IoOp::Rename && ph == Phase::After {
            seen.store(true, Ordering::SeqCst);
        }
        None
    }));
    let r = db.compact().unwrap();
    drop(hook);
    assert!(renamed.load(Ordering::SeqCst));
    assert!(r.len_after < len0, "{r:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), r.len_after);
    assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"failure"[..]));
    db.check().unwrap();
    assert_only_the_store(&path);
}

#[test]
fn automatic_compaction_shrinks_a_mostly_dead_log() {
    let (_d, path) = store();
    let db = Options::new().auto_compact(Some(0.5)).open(&path).unwrap();
    // Overwrite the same 1,000 keys again and again: the log fills with
    // dead records, and commits past the threshold start compactions in the
    // background, which show as the log getting shorter.
    let mut shrank = 0;
    let mut last_used = 0;
    for round in 0..60u64 {
        for i in 0..1_000u64 {
            db.insert(i.to_le_bytes(), self_checking(i, round, 200))
                .unwrap();
        }
        let used = db.stats().used_bytes;
        if used < last_used {
            shrank += 1;
        }
        last_used = used;
        if shrank >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(shrank >= 1, "never compacted: {:?}", db.stats());
    let last = db.commit_seq() / 1_000 - 1;
    for i in 0..1_000u64 {
        let v = db.get(i.to_le_bytes()).unwrap().unwrap();
        assert_eq!(check_self(&v).unwrap(), (i, last));
    }
}

/// Child for the kill test: compact in a loop while reporting progress.
fn kill_child(path: &str) -> ! {
    let db = Options::new()
        .durability(Durability::Sync)
        .open(path)
        .unwrap();
    let out = std::io::stdout();
    // Go on from the rounds of the child before.
    let mut round = db
        .get(0u64.to_le_bytes())
        .unwrap()
        .map_or(0, |v| check_self(&v).unwrap().1 + 1);
    loop {
        // Acknowledged writes (Sync), then a compaction.
        for i in 0..200u64 {
            db.insert(i.to_le_bytes(), self_checking(i, round, 80))
                .unwrap();
        }
        writeln!(out.lock(), "ACK {round}").unwrap();
        out.lock().flush().unwrap();
        db.compact().unwrap();
        round += 1;
    }
}

#[test]
fn compactor_killed_at_any_moment_leaves_a_complete_store() {
    if let Ok(p) = std::env::var("MAPKV_COMPACT_CHILD") {
        kill_child(&p);
    }
    let s = seed("compact_kill");
    let mut rng = Rng::new(s);
    let (_d, path) = store();
    Db::open(&path).unwrap();
    let mut acked: Option<u64> = None;
    let mut kills = 0;
    for _ in 0..12 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "compactor_killed_at_any_moment_leaves_a_complete_store",
                "--nocapture",
            ])
            .env("MAPKV_COMPACT_CHILD", &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // Let it get through a few rounds, then kill it at a random moment
        // (most of its time is spent compacting).
        let rounds = 1 + rng.below(4);
        let mut got = 0;
        let mut line = String::new();
        while got < rounds {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("child died");
            }
            if let Some(r) = line.trim().strip_prefix("ACK ") {
                acked = Some(r.parse().unwrap());
                got += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // Acknowledgements it made before dying are still in the pipe.
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(r) = line.trim().strip_prefix("ACK ") {
                acked = Some(r.parse().unwrap());
            }
        }
        // The store opens complete: every key at the last acknowledged
        // round or the one after (written but not acknowledged).
        let db = Db::open(&path).unwrap();
        db.check().unwrap();
        let a = acked.unwrap();
        let mut round_seen = None;
        for i in 0..200u64 {
            let v = db
                .get(i.to_le_bytes())
                .unwrap()
                .expect("acknowledged key lost");
            let (k, r) = check_self(&v).unwrap();
            assert_eq!(k, i);
            assert!(r == a || r == a + 1, "key {i}: round {r}, acked {a}");
            round_seen.get_or_insert(r);
        }
        assert_eq!(db.len(), 200);
        drop(db);
    }
    eprintln!("{kills} kills of a compacting process, MAPKV_SEED={s}");
    // The new files of killed compactions were removed by the opens above
    // (each was alone on the store).
    assert_only_the_store(&path);
}

/// Child for the multi-process test: read and write until stdin closes;
/// check every value; report how many operations it did and the last
/// version it wrote.
fn busy_child(path: &str, id: u64) -> ! {
    let db = Db::open(path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut rng = Rng::new(id);
    let (mut reads, mut writes, mut v) = (0u64, 0u64, 1u64);
    let mine = |i: u64| (id << 32 | i).to_le_bytes();
    while !stop.load(Ordering::Relaxed) {
        for i in 0..50 {
            db.insert(mine(i), self_checking(id << 32 | i, v, 120))
                .unwrap();
            writes += 1;
        }
        for _ in 0..500 {
            let i = rng.below(50);
            let got = db.get(mine(i)).unwrap().expect("own key missing");
            let (k, ver) = check_self(&got).unwrap();
            assert_eq!(k, id << 32 | i);
            assert_eq!(ver, v, "own write lost or stale");
            let j = rng.below(5_000);
            if let Some(x) = db.get(j.to_le_bytes()).unwrap() {
                assert_eq!(check_self(&x).unwrap().0, j);
            }
            reads += 2;
        }
        v += 1;
    }
    println!("DONE {reads} {writes} {}", v - 1);
    std::process::exit(0);
}

#[test]
fn processes_keep_reading_and_writing_through_compactions() {
    if let Ok(p) = std::env::var("MAPKV_BUSY_CHILD") {
        let id = std::env::var("MAPKV_BUSY_ID").unwrap().parse().unwrap();
        busy_child(&p, id);
    }
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..5_000u64 {
        db.insert(i.to_le_bytes(), self_checking(i, 0, 200))
            .unwrap();
    }
    let children: Vec<_> = (1..=2u64)
        .map(|id| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "processes_keep_reading_and_writing_through_compactions",
                    "--nocapture",
                ])
                .env("MAPKV_BUSY_CHILD", &path)
                .env("MAPKV_BUSY_ID", id.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut pauses = Vec::new();
    for round in 1..=5u64 {
        for i in 0..5_000u64 {
            db.insert(i.to_le_bytes(), self_checking(i, round, 200))
                .unwrap();
        }
        pauses.push(db.compact().unwrap().writer_pause);
    }
    let mut finals = Vec::new();
    for mut c in children {
        drop(c.stdin.take()); // stop
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "child failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("DONE "))
            .expect("report");
        let f: Vec<u64> = line[5..].split(' ').map(|x| x.parse().unwrap()).collect();
        assert!(f[0] > 0 && f[1] > 0, "{line}");
        finals.push(f[2]);
    }
    eprintln!("writer pauses {pauses:?}; children's last versions {finals:?}");
    // Every child's last writes are in the store's current file: a child
    // that had stayed on an old file would have written them there.
    db.check().unwrap();
    for i in 0..5_000u64 {
        let v = db.get(i.to_le_bytes()).unwrap().unwrap();
        assert_eq!(check_self(&v).unwrap(), (i, 5));
    }
    for (id, &last) in (1..=2u64).zip(&finals) {
        for i in 0..50 {
            let v = db.get((id << 32 | i).to_le_bytes()).unwrap().unwrap();
            assert_eq!(check_self(&v).unwrap(), (id << 32 | i, last));
        }
    }
}

#[test]
fn opening_and_closing_while_compactions_move_the_store() {
    let (_d, path) = store();
    let a = Db::open(&path).unwrap();
    for i in 0..2_000u64 {
        a.insert(i.to_le_bytes(), self_checking(i, 0, 64)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let compactor = {
        let (a, stop, done) = (a.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                a.compact().unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
            done.load(Ordering::Relaxed)
        })
    };
    let mut opens = 0;
    // Until 30 compactions happened while we kept opening (bounded).
    for round in 0..50_000u64 {
        if done.load(Ordering::Relaxed) >= 30 {
            break;
        }
        let h = if round % 3 == 0 {
            Options::new().read_only(true).open(&path).unwrap()
        } else {
            Db::open(&path).unwrap()
        };
        let i = round % 2_000;
        let v = h.get(i.to_le_bytes()).unwrap().expect("present");
        assert_eq!(check_self(&v).unwrap().0, i);
        if round % 3 != 0 {
            h.insert(i.to_le_bytes(), self_checking(i, round, 64))
                .unwrap();
        }
        h.close().unwrap();
        opens += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let n = compactor.join().unwrap();
    eprintln!("{opens} opens and closes during {n} compactions");
    assert!(n >= 30, "{n} compactions in {opens} opens");
    a.check().unwrap();
    assert_eq!(a.len(), 2_000);
}

/// Found by the multi-process stress test: inode numbers are reused, so a
/// log position named by device and inode alone passed for a position in a
/// later file. Positions carry the file's random nonce too.
#[test]
fn a_log_position_never_passes_for_one_in_a_later_file() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..1_000u32 {
        db.insert(i.to_le_bytes(), [1u8; 32]).unwrap();
    }
    for round in 0..20 {
        db.compact().unwrap();
        let pos = db.log_position();
        db.insert(5u32.to_le_bytes(), [round as u8; 32]).unwrap();
        // Usually the third file reuses the first one's inode number.
        db.compact().unwrap();
        db.compact().unwrap();
        match db.changes_after(pos, 10) {
            Err(Error::BadPosition { reason, .. }) => {
                assert!(reason.contains("another file"), "round {round}: {reason}")
            }
            other => panic!("round {round}: a stale position was accepted: {other:?}"),
        }
    }
}

/// Found by the multi-process stress test: clones share one descriptor, so
/// the cross-process compaction lock let two clones compact at once (each
/// then deleted the other's new file). Now one of them is refused.
#[test]
fn clones_never_compact_at_the_same_time() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..3_000u32 {
        db.insert(i.to_le_bytes(), [2u8; 64]).unwrap();
    }
    let results: Vec<(u32, u32)> = (0..2)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let (mut ok, mut locked) = (0, 0);
                for _ in 0..30 {
                    match db.compact() {
                        Ok(_) => ok += 1,
                        Err(Error::Locked { .. }) => locked += 1,
                        Err(e) => panic!("compaction failed: {e}"),
                    }
                }
                (ok, locked)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    eprintln!("clones compacting: (done, refused) per thread {results:?}");
    assert!(results.iter().map(|r| r.0).sum::<u32>() > 0);
    assert_eq!(db.len(), 3_000);
    db.check().unwrap();
    assert_only_the_store(&path);
}

/// A backup is made next to its destination, so it may go to another
/// file system than the store's (the copy is linked into place, and a link
/// cannot cross file systems). Here: the store on the test's temporary
/// directory, the copy on tmpfs, when the machine has one.
#[test]
fn backup_to_another_file_system() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..1_000u32 {
        db.insert(i.to_le_bytes(), [3u8; 40]).unwrap();
    }
    let shm = std::path::Path::new("/dev/shm");
    let other = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let dest = other.path().join("copy.mapkv");
    let report = db.backup(&dest).unwrap();
    assert_eq!(report.keys, 1_000);
    // Nothing is left beside either file but the copy.
    let names: Vec<_> = std::fs::read_dir(other.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["copy.mapkv"]);
    let copy = Db::open(&dest).unwrap();
    assert_eq!(copy.len(), 1_000);
    copy.check().unwrap();
    // And it refuses to replace anything.
    assert!(matches!(
        db.backup(&dest),
        Err(mapkv::Error::Refused { .. })
    ));
}
