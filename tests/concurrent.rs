//! Readers running while a writer writes: values are self-checking, so a
//! torn or misplaced value is caught, and each key's version must never go
//! back in time for a reader.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{check_self, self_checking, store, Rng};
use mapkv::Options;

#[test]
fn readers_never_see_torn_or_older_values() {
    let (_d, path) = store();
    // A small start so that the file grows, remaps and the index is rebuilt
    // several times while the readers run.
    let db = Options::new()
        .initial_size(64 << 10)
        .map_reserve(1 << 20)
        .open(&path)
        .unwrap();
    const KEYS: u64 = 3000;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let db = db.clone();
            let stop = stop.clone();
            let reads = reads.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(r);
                let mut last = vec![0u64; KEYS as usize];
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.below(KEYS);
                    let found = db.get_into(k.to_le_bytes(), &mut buf).unwrap();
                    if !found {
                        continue;
                    }
                    let (key, version) =
                        check_self(&buf).unwrap_or_else(|e| panic!("key {k}: {e}"));
                    assert_eq!(key, k, "value of another key returned");
                    assert!(
                        version >= last[k as usize],
                        "key {k} went back from {} to {version}",
                        last[k as usize]
                    );
                    last[k as usize] = version;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut rng = Rng::new(99);
    let mut version = vec![0u64; KEYS as usize];
    for i in 0..60_000u64 {
        let k = rng.below(KEYS);
        version[k as usize] += 1;
        let len = 24 + rng.below(if i % 100 == 0 { 20_000 } else { 300 }) as usize;
        if i % 50 == 0 {
            let mut b = db.batch();
            for j in 0..20 {
                let k2 = (k + j) % KEYS;
                if j > 0 {
                    version[k2 as usize] += 1;
                }
                b.insert(
                    k2.to_le_bytes(),
                    self_checking(k2, version[k2 as usize], len),
                );
            }
            b.commit().unwrap();
        } else {
            db.insert(k.to_le_bytes(), self_checking(k, version[k as usize], len))
                .unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let s = db.stats();
    assert!(reads.load(Ordering::Relaxed) > 1000, "readers barely ran");
    assert!(
        s.file_len > 8 << 20,
        "the file did not grow during the test"
    );
    for k in 0..KEYS {
        if version[k as usize] > 0 {
            let v = db.get(k.to_le_bytes()).unwrap().unwrap();
            assert_eq!(check_self(&v).unwrap(), (k, version[k as usize]));
        }
    }
}

#[test]
fn iteration_during_writes_sees_each_stable_key_once() {
    let (_d, path) = store();
    let db = Options::new().initial_size(64 << 10).open(&path).unwrap();
    // Stable keys: never touched during the iteration.
    for k in 0..2000u64 {
        db.insert(
            [b"s".as_slice(), &k.to_le_bytes()].concat(),
            self_checking(k, 1, 40),
        )
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                db.insert(
                    [b"v".as_slice(), &(i % 5000).to_le_bytes()].concat(),
                    self_checking(i, 1, 60),
                )
                .unwrap();
                if i % 3 == 0 {
                    db.remove([b"v".as_slice(), &((i / 3) % 5000).to_le_bytes()].concat())
                        .unwrap();
                }
                i += 1;
            }
        })
    };
    for _ in 0..20 {
        let mut stable = std::collections::HashSet::new();
        for item in db.iter() {
            let (k, v) = item.unwrap();
            check_self(&v).unwrap();
            if k[0] == b's' {
                assert!(stable.insert(k.to_vec()), "stable key returned twice");
            }
        }
        assert_eq!(stable.len(), 2000);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

/// Keys that exist for the whole iteration but are overwritten during it
/// (many times, while new keys make the file and the index grow) are
/// returned exactly once each, by `iter` and by `for_each`, with a value
/// that was written for that key.
#[test]
fn iteration_returns_each_key_overwritten_meanwhile_once() {
    const KEYS: u64 = 3000;
    let (_d, path) = store();
    let db = Options::new().initial_size(64 << 10).open(&path).unwrap();
    let key = |k: u64| [b"o".as_slice(), &k.to_le_bytes()].concat();
    for k in 0..KEYS {
        db.insert(key(k), self_checking(k, 1, 40)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut r = Rng::new(9);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = r.below(KEYS);
                db.insert(key(k), self_checking(k, 2 + i % 1000, 40))
                    .unwrap();
                if i % 4 == 0 {
                    db.insert([b"n".as_slice(), &i.to_le_bytes()].concat(), b"new")
                        .unwrap();
                }
                i += 1;
            }
            i
        })
    };
    let check = |seen: &mut std::collections::HashSet<u64>, k: &[u8], v: &[u8]| {
        if k[0] == b'o' {
            let id = u64::from_le_bytes(k[1..9].try_into().unwrap());
            assert_eq!(check_self(v).unwrap().0, id, "a value of another key");
            assert!(seen.insert(id), "key {id} returned twice");
        }
    };
    for round in 0..20 {
        let mut seen = std::collections::HashSet::new();
        if round % 2 == 0 {
            for item in db.iter() {
                let (k, v) = item.unwrap();
                check(&mut seen, &k, &v);
            }
        } else {
            db.for_each(|k, v| {
                check(&mut seen, k, v);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        }
        assert_eq!(
            seen.len() as u64,
            KEYS,
            "round {round}: {} of {KEYS} keys returned",
            seen.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 1000, "the writer made only {writes} writes");
}
