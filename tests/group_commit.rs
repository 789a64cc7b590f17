//! Durability chosen per commit, and group commit: a durable commit costs
//! one device flush, is on stable storage before any reader can see it,
//! and threads committing durably at once share syncs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::store;
use mapkv::testing::{add_io_hook, HookGuard, IoOp, Phase};
use mapkv::{Db, Durability, Error, Options};

/// Counts the device flushes (msync and fsync) made on one store.
struct Syncs {
    n: Arc<AtomicU64>,
    _hook: HookGuard,
}

impl Syncs {
    fn on(path: &Path) -> Syncs {
        let me = path.to_path_buf();
        let n = Arc::new(AtomicU64::new(0));
        let c = n.clone();
        let hook = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
            if p == me && phase == Phase::After && matches!(op, IoOp::Msync { .. } | IoOp::Fsync) {
                c.fetch_add(1, Ordering::SeqCst);
            }
            None
        }));
        Syncs { n, _hook: hook }
    }

    fn take(&self) -> u64 {
        self.n.swap(0, Ordering::SeqCst)
    }
}

/// Open `path`, grow it past anything the tests write (so that no sync of
/// theirs is an fsync of new length), and make that durable.
fn open_grown(path: &PathBuf, d: Durability) -> Db {
    let db = Options::new().durability(d).open(path).unwrap();
    db.insert(b"warm", vec![0u8; 4 << 20]).unwrap();
    db.remove(b"warm").unwrap();
    db.flush().unwrap();
    db
}

#[test]
fn a_durable_commit_on_an_unsynced_handle_costs_one_sync() {
    let (_dir, path) = store();
    let db = open_grown(&path, Durability::None);
    let syncs = Syncs::on(&path);
    db.insert(b"a", b"1").unwrap();
    db.batch().insert(b"b", b"2").commit().unwrap();
    assert_eq!(syncs.take(), 0, "unsynced commits made a sync");

    let durable = db.with_durability(Durability::Sync);
    assert_eq!(durable.durability(), Durability::Sync);
    assert_eq!(db.durability(), Durability::None);
    durable.insert(b"c", b"3").unwrap();
    assert_eq!(syncs.take(), 1, "a durable insert");
    db.batch()
        .insert(b"d", b"4")
        .insert(b"e", b"5")
        .durability(Durability::Sync)
        .commit()
        .unwrap();
    assert_eq!(syncs.take(), 1, "a durable batch");
    durable.remove(b"a").unwrap();
    assert_eq!(syncs.take(), 1, "a durable remove");
    durable
        .batch()
        .insert(b"f", b"6")
        .durability(Durability::None)
        .commit()
        .unwrap();
    assert_eq!(syncs.take(), 0, "a batch made unsynced on a durable handle");
    db.insert(b"g", b"7").unwrap();
    db.flush().unwrap();
    assert_eq!(syncs.take(), 1, "flush");
    db.flush().unwrap();
    assert_eq!(syncs.take(), 0, "a flush with nothing to do");
    for (k, v) in [
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("e", "5"),
        ("f", "6"),
        ("g", "7"),
    ] {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(v.as_bytes()), "{k}");
    }
    assert!(db.get(b"a").unwrap().is_none());
}

/// Publish order: while the sync of a durable commit runs, no reader (in
/// this process, through another handle) can see the commit yet.
#[test]
fn a_durable_commit_is_invisible_until_its_sync_returned() {
    let (_dir, path) = store();
    let db = open_grown(&path, Durability::None);
    let reader = Db::open(&path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let me = path.clone();
    let (r, s) = (reader.clone(), seen.clone());
    let _hook = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
        if p == me && phase == Phase::Before && matches!(op, IoOp::Msync { .. }) {
            s.lock()
                .unwrap()
                .push(r.get(b"k").unwrap().map(|v| v.to_vec()));
        }
        None
    }));
    let durable = db.with_durability(Durability::Sync);
    durable.insert(b"k", b"one").unwrap();
    durable.insert(b"k", b"two").unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![None, Some(b"one".to_vec())]);
    assert_eq!(reader.get(b"k").unwrap().as_deref(), Some(&b"two"[..]));
}

/// Eight threads commit durably through clones of one handle while each
/// sync is slowed down: the commits that arrive during a sync share the
/// next one, every commit is acknowledged and there with its bytes, and
/// far fewer syncs than commits were made.
#[test]
fn threads_committing_durably_share_syncs() {
    let (_dir, path) = store();
    let db = open_grown(&path, Durability::Sync);
    let syncs = Syncs::on(&path);
    let me = path.clone();
    let _slow = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
        if p == me && phase == Phase::Before && matches!(op, IoOp::Msync { .. }) {
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }));
    const THREADS: u64 = 8;
    const EACH: u64 = 25;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let db = db.clone();
            s.spawn(move || {
                for i in 0..EACH {
                    if i % 5 == 4 {
                        let mut b = db.batch();
                        b.insert(format!("t{t}-{i}"), format!("v{i}"));
                        b.insert(format!("t{t}-{i}-pair"), format!("v{i}"));
                        b.commit().unwrap();
                    } else {
                        db.insert(format!("t{t}-{i}"), format!("v{i}")).unwrap();
                    }
                }
            });
        }
    });
    let commits = THREADS * EACH;
    let n = syncs.take();
    assert!(n >= 2, "{n} syncs for {commits} commits");
    assert!(
        n * 2 <= commits,
        "{n} syncs for {commits} durable commits: the group commit did not group"
    );
    drop(db);
    let db = Db::open(&path).unwrap();
    for t in 0..THREADS {
        for i in 0..EACH {
            let want = format!("v{i}");
            assert_eq!(
                db.get(format!("t{t}-{i}")).unwrap().as_deref(),
                Some(want.as_bytes())
            );
            if i % 5 == 4 {
                let pair = db.get(format!("t{t}-{i}-pair")).unwrap();
                assert_eq!(pair.as_deref(), Some(want.as_bytes()));
            }
        }
    }
    let report = db.check().unwrap();
    assert_eq!(report.live_keys, THREADS * EACH + THREADS * EACH / 5);
}

/// A sync that fails fails every commit of its group: none of them is
/// acknowledged, none becomes visible, and the handle refuses writes from
/// then on (a failed msync cannot be retried into success).
#[test]
fn a_failed_group_sync_fails_every_member() {
    let (_dir, path) = store();
    let db = open_grown(&path, Durability::Sync);
    db.insert(b"before", b"ok").unwrap();
    let me = path.clone();
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let _fail = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
        if p == me && phase == Phase::Before && matches!(op, IoOp::Msync { .. }) {
            // The first sync is slow, so that the other threads queue up
            // behind it; the second (their group's) fails.
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(100));
                return None;
            }
            return Some(std::io::Error::from_raw_os_error(libc_eio()));
        }
        None
    }));
    let results: Vec<(String, Result<(), Error>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let db = db.clone();
                s.spawn(move || {
                    if t > 0 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let k = format!("k{t}");
                    let r = db.insert(&k, b"v");
                    (k, r)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (ok, failed): (Vec<_>, Vec<_>) = results.iter().partition(|(_, r)| r.is_ok());
    assert_eq!(
        ok.len(),
        1,
        "only the first group's commit succeeds: {results:?}"
    );
    assert_eq!(ok[0].0, "k0");
    for (k, r) in &failed {
        assert!(
            matches!(r, Err(Error::Io { .. } | Error::Poisoned { .. })),
            "{k}: {r:?}"
        );
        assert!(
            db.get(k).unwrap().is_none(),
            "{k} is visible though its sync failed"
        );
    }
    assert!(matches!(
        db.insert(b"after", b"x"),
        Err(Error::Poisoned { .. })
    ));
    assert_eq!(db.get(b"before").unwrap().as_deref(), Some(&b"ok"[..]));
}

fn libc_eio() -> i32 {
    5
}
