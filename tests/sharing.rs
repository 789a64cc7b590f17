//! Several handles on one store, as several processes would hold them:
//! joining, following growth and index rebuilds made by another handle,
//! read-only handles, clean close by the last writer, change notification,
//! consistent multi-key reads, `Pod` values, and a writer killed in the
//! middle of a commit (a child process) repaired by the next writer.
//!
//! Handles opened separately in one process behave as separate processes
//! do: each has its own descriptor, open lock and mapping.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{check_self, self_checking, store, Rng};
use mapkv::{Db, Durability, Error, OpenKind, Options};

#[test]
fn handles_see_each_others_writes_growth_and_index_rebuilds() {
    let (_d, path) = store();
    let small = Options::new().initial_size(64 << 10).map_reserve(1 << 20);
    let a = small.clone().open(&path).unwrap();
    let b = small.clone().open(&path).unwrap();
    assert_eq!(b.stats().opened, OpenKind::Joined);
    let start_len = a.stats().file_len;
    // a grows the file past b's reservation and rebuilds the index many
    // times; b must follow without reopening.
    for i in 0..20_000u64 {
        a.insert(i.to_le_bytes(), self_checking(i, 1, 100)).unwrap();
    }
    assert!(a.stats().file_len > 4 * start_len);
    for i in 0..20_000u64 {
        let v = b.get(i.to_le_bytes()).unwrap().expect("written by a");
        assert_eq!(check_self(&v).unwrap(), (i, 1));
    }
    assert_eq!(b.len(), 20_000);
    // And the other way round: b writes, a reads; both keep one count.
    for i in 0..5_000u64 {
        b.insert(i.to_le_bytes(), self_checking(i, 2, 300)).unwrap();
    }
    for i in 0..5_000u64 {
        let v = a.get(i.to_le_bytes()).unwrap().unwrap();
        assert_eq!(check_self(&v).unwrap(), (i, 2));
    }
    assert_eq!(a.len(), 20_000);
    assert!(b.stats().remaps >= 1, "b never remapped: {:?}", b.stats());
    a.check().unwrap();
    b.check().unwrap();
    drop(a);
    drop(b);
    let c = Db::open(&path).unwrap();
    assert_eq!(c.stats().opened, OpenKind::Clean);
    assert_eq!(c.len(), 20_000);
    c.check().unwrap();
}

#[test]
fn read_only_handle_follows_a_writer_that_joins_later() {
    let (_d, path) = store();
    Db::open(&path).unwrap().insert(b"k", b"v0").unwrap();
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(ro.stats().opened, OpenKind::Clean);
    let seen = ro.commit_seq();
    // Only a reader has it open: the writer starts the session (nothing to
    // recover after a clean close), and the reader sees its commits.
    let w = Db::open(&path).unwrap();
    assert_eq!(w.stats().opened, OpenKind::Clean);
    let w2 = Db::open(&path).unwrap();
    assert_eq!(w2.stats().opened, OpenKind::Joined);
    drop(w2);
    w.insert(b"k", b"v1").unwrap();
    assert!(ro.wait_for_change(seen, Duration::from_secs(10)).seq() > seen);
    assert_eq!(ro.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(matches!(ro.insert(b"x", b"y"), Err(Error::ReadOnly { .. })));
    ro.check().unwrap();
    // The last writer closes the store cleanly although a reader is still
    // open; the reader keeps reading.
    drop(w);
    assert_eq!(ro.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    drop(ro);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
}

/// A read-only handle alone on a crashed store recovers it in private
/// memory and never writes the file. It opens the file read-only, so it
/// cannot hold it exclusively: a writer that comes meanwhile starts a
/// session and recovers the file itself, and the reader keeps reading.
#[test]
fn read_only_recovery_in_private_memory_never_writes_nor_blocks_writers() {
    let (d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..100u32 {
        db.insert(i.to_le_bytes(), b"v").unwrap();
    }
    // A copy of a store that is open: what a crashed process leaves.
    let crashed = d.path().join("crashed.mapkv");
    std::fs::copy(&path, &crashed).unwrap();
    drop(db);
    let before = std::fs::read(&crashed).unwrap();
    let ro = Options::new().read_only(true).open(&crashed).unwrap();
    assert_eq!(ro.stats().opened, OpenKind::Replayed);
    assert_eq!(ro.len(), 100);
    for i in 0..100u32 {
        assert_eq!(ro.get(i.to_le_bytes()).unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(std::fs::read(&crashed).unwrap(), before, "read-only wrote");
    let quick = Options::new().lock_timeout(Duration::from_millis(200));
    let w = quick.clone().open(&crashed).unwrap();
    assert_eq!(w.stats().opened, OpenKind::Replayed);
    assert_eq!(w.len(), 100);
    w.insert(b"new", b"n").unwrap();
    for i in 0..100u32 {
        assert_eq!(ro.get(i.to_le_bytes()).unwrap().as_deref(), Some(&b"v"[..]));
    }
    drop(ro);
    w.check().unwrap();
    drop(w);
    let db = quick.open(&crashed).unwrap();
    assert_eq!(db.len(), 101);
}

#[test]
fn wait_for_change_wakes_on_commits_from_another_handle() {
    let (_d, path) = store();
    let waiter = Db::open(&path).unwrap();
    let writer = Db::open(&path).unwrap();
    let mut seen = waiter.commit_seq();
    let h = std::thread::spawn(move || {
        for i in 0..50u32 {
            std::thread::sleep(Duration::from_millis(2));
            writer.insert(b"counter", i.to_le_bytes()).unwrap();
        }
    });
    let mut wakes = 0;
    while seen < 50 {
        let now = waiter.wait_for_change(seen, Duration::from_secs(30)).seq();
        assert!(now > seen, "timed out at {seen}");
        seen = now;
        wakes += 1;
    }
    h.join().unwrap();
    assert!(wakes >= 1);
    assert_eq!(
        waiter.get(b"counter").unwrap().as_deref(),
        Some(&49u32.to_le_bytes()[..])
    );
    // No commit: times out and returns `since`.
    assert_eq!(
        waiter
            .wait_for_change(seen, Duration::from_millis(20))
            .seq(),
        seen
    );
}

#[test]
fn consistent_reads_see_batches_whole() {
    let (_d, path) = store();
    let w = Db::open(&path).unwrap();
    let r = Db::open(&path).unwrap();
    let keys: Vec<Vec<u8>> = (0..8u32).map(|i| format!("acct{i}").into_bytes()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (keys, stop) = (keys.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(7);
            let mut gen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                gen += 1;
                let mut b = w.batch();
                for k in &keys {
                    b.insert(k, self_checking(gen, gen, 40 + rng.below(200) as usize));
                }
                b.commit().unwrap();
            }
            gen
        })
    };
    let mut checked = 0;
    let mut last = 0;
    while checked < 2_000 {
        let vals = r.get_many(&keys).unwrap();
        if vals[0].is_none() {
            assert!(vals.iter().all(|v| v.is_none()), "half a batch visible");
            continue;
        }
        let gens: Vec<u64> = vals
            .iter()
            .map(|v| check_self(v.as_ref().expect("whole batch")).unwrap().1)
            .collect();
        assert!(gens.iter().all(|&g| g == gens[0]), "torn view: {gens:?}");
        assert!(gens[0] >= last, "went back from {last} to {}", gens[0]);
        last = gens[0];
        checked += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let made = writer.join().unwrap();
    assert!(made >= last);
}

#[test]
fn pod_values_round_trip_and_check_their_size() {
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Row {
        id: u64,
        qty: i32,
        price_cents: u32,
    }
    let (_d, path) = store();
    let a = Db::open(&path).unwrap();
    let b = Db::open(&path).unwrap();
    let row = Row {
        id: 42,
        qty: -3,
        price_cents: 1999,
    };
    a.insert_pod(b"row:42", &row).unwrap();
    assert_eq!(b.get_pod::<Row>(b"row:42").unwrap(), Some(row));
    assert_eq!(b.get_pod::<Row>(b"row:43").unwrap(), None);
    match b.get_pod::<[u8; 15]>(b"row:42") {
        Err(Error::ValueSize {
            expected: 15,
            found: 16,
        }) => {}
        other => panic!("{other:?}"),
    }
    // The same bytes through the byte API.
    assert_eq!(
        &*b.get(b"row:42").unwrap().unwrap(),
        bytemuck::bytes_of(&row)
    );
}

/// Child half of the writer-death test: open the store, arm a hook that
/// stops forever inside the next commit's msync (records written, not yet
/// published, writer lock held), say so on stdout, and commit a batch.
fn death_child(path: &str) -> ! {
    let db = Options::new()
        .durability(Durability::Sync)
        .open(path)
        .unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let a = armed.clone();
    let _hook = mapkv::testing::add_io_hook(Arc::new(move |_p, op, phase| {
        if phase == mapkv::testing::Phase::Before
            && matches!(op, mapkv::testing::IoOp::Msync { .. })
            && a.swap(false, Ordering::SeqCst)
        {
            println!("IN-COMMIT");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        None
    }));
    let mut b = db.batch();
    for i in 0..100u32 {
        b.insert(format!("child{i}"), self_checking(i as u64, 9, 64));
    }
    b.commit().unwrap();
    unreachable!("the hook never returns");
}

#[test]
fn writer_killed_holding_the_lock_is_repaired_by_the_next_writer() {
    if let Ok(p) = std::env::var("MAPKV_DEATH_CHILD") {
        death_child(&p);
    }
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..1000u32 {
        db.insert(format!("base{i}"), self_checking(i as u64, 1, 64))
            .unwrap();
    }
    let gen_before = db.stats().generation;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_killed_holding_the_lock_is_repaired_by_the_next_writer",
            "--nocapture",
        ])
        .env("MAPKV_DEATH_CHILD", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The test harness prints its own lines first.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("child ended without reaching the commit: {said:?}");
        }
        said.push_str(&line);
        if line.contains("IN-COMMIT") {
            break;
        }
    }
    // Readers do not wait for the stuck writer.
    assert!(db.get("base7").unwrap().is_some());
    child.kill().unwrap(); // SIGKILL while it holds the writer lock
    child.wait().unwrap();
    // The next write takes over the lock at once and repairs first.
    db.insert(b"after", b"death").unwrap();
    let st = db.stats();
    assert!(st.generation > gen_before, "no repair: {st:?}");
    db.check().unwrap();
    // The dead commit is all or nothing (its records were complete, so it
    // is rolled forward).
    let present = (0..100u32)
        .filter(|i| db.get(format!("child{i}")).unwrap().is_some())
        .count();
    assert!(present == 0 || present == 100, "half a batch: {present}");
    assert_eq!(db.len(), 1001 + present as u64);
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    db.check().unwrap();
    assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"death"[..]));
}

#[test]
fn change_feed_replays_every_handles_commits_in_order() {
    use std::collections::HashMap;
    let (_d, path) = store();
    let a = Db::open(&path).unwrap();
    let b = Db::open(&path).unwrap();
    let start = a.log_position();
    let mut rng = Rng::new(common::seed("change_feed"));
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for i in 0..3_000u32 {
        let h = if rng.chance(50) { &a } else { &b };
        let k = format!("k{}", rng.below(300)).into_bytes();
        if rng.chance(20) {
            h.remove(&k).unwrap();
            model.remove(&k);
        } else {
            let n = rng.below(100) as usize;
            let v = rng.bytes(n);
            h.insert(&k, &v).unwrap();
            model.insert(k, v);
        }
        if i % 500 == 0 {
            let mut batch = h.batch();
            batch.insert(b"batch", i.to_le_bytes()).remove(b"k0");
            batch.commit().unwrap();
            model.insert(b"batch".to_vec(), i.to_le_bytes().to_vec());
            model.remove(&b"k0"[..]);
        }
    }
    // Replay the feed, in small pages, into a fresh map.
    let mut replay: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let (mut pos, mut last_seq) = (start, 0);
    loop {
        let (commits, next) = b.changes_after(pos, 97).unwrap();
        if commits.is_empty() {
            break;
        }
        for c in commits {
            assert!(c.seq > last_seq, "out of order: {} after {last_seq}", c.seq);
            last_seq = c.seq;
            for ch in c.changes {
                match ch {
                    mapkv::Change::Put { key, value } => {
                        replay.insert(key, value.to_vec());
                    }
                    mapkv::Change::Remove { key } => {
                        replay.remove(&key);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        pos = next;
    }
    assert_eq!(last_seq, a.commit_seq());
    assert_eq!(replay, model);
    // A position of another store's log is refused.
    let (_d2, other_path) = store();
    let other = Db::open(&other_path).unwrap();
    other.insert(b"x", b"y").unwrap();
    assert!(matches!(
        a.changes_after(other.log_position(), 10),
        Err(Error::BadPosition { .. })
    ));
    assert!(a.changes_after(pos, 10).unwrap().0.is_empty());
}
