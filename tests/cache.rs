//! Cache mode (`Options::capacity`): the file never grows past the bound,
//! eviction never returns a wrong value (model test against a HashMap,
//! other handles and threads reading throughout), read entries get a second
//! chance, expired entries go first, the bound is stored in the file, and
//! writes that cannot fit fail cleanly.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{check_self, seed, self_checking, store, Rng};
use mapkv::{Db, Error, Options};

const CAP: u64 = 1 << 20;

fn cache(path: &std::path::Path, cap: u64) -> Db {
    Options::new().capacity(cap).open(path).unwrap()
}

#[test]
fn the_file_never_grows_past_the_capacity() {
    let (_d, path) = store();
    let db = cache(&path, CAP);
    let mut max_len = 0;
    for i in 0..40_000u64 {
        db.insert(i.to_le_bytes(), self_checking(i, 0, 100))
            .unwrap();
        if i % 97 == 0 {
            let s = db.cache_stats();
            max_len = max_len.max(s.file_len);
            assert!(s.file_len <= CAP, "file {} > capacity at {i}", s.file_len);
            assert!(s.used_bytes <= CAP);
            // The length on disk too, not only the mapping's idea of it.
            let on_disk = std::fs::metadata(&path).unwrap().len();
            assert!(on_disk <= CAP, "file on disk {on_disk} > capacity");
        }
    }
    let s = db.cache_stats();
    assert!(s.evictions > 20_000, "{s:?}");
    assert!(s.eviction_runs >= 5, "{s:?}");
    assert_eq!(s.capacity, CAP);
    assert!(
        max_len > CAP / 2,
        "the cache used little of its room: {max_len}"
    );
    // The newest entries are there, with the right values.
    for i in 39_900..40_000u64 {
        let v = db
            .get(i.to_le_bytes())
            .unwrap()
            .expect("a new entry was evicted");
        assert_eq!(check_self(&v).unwrap(), (i, 0));
    }
    // And the store holds about as many as fit (each entry is 136 bytes).
    let keys = db.len();
    assert!(keys > 5_000 && keys < 7_800, "{keys} keys in 1 MiB");
    assert_eq!(keys, s.keys);
}

/// Random inserts, TTL inserts, removes, batches and reads against a
/// HashMap. A read returns either nothing (evicted) or exactly the latest
/// value; once a key is found missing it stays missing until written again.
#[test]
fn eviction_never_returns_a_wrong_value() {
    let s = seed("cache_model");
    let mut rng = Rng::new(s);
    let (_d, path) = store();
    let db = cache(&path, 512 << 10);
    let other = Db::open(&path).unwrap(); // a second handle, no options
    let mut model: HashMap<u64, (u64, usize)> = HashMap::new();
    let mut version = 0u64;
    let mut missing_seen = 0;
    for step in 0..60_000u32 {
        let k = rng.below(6_000);
        let reader = if rng.chance(50) { &db } else { &other };
        match rng.below(100) {
            0..=44 => {
                version += 1;
                let len = 24 + rng.below(200) as usize;
                let v = self_checking(k, version, len);
                if rng.chance(10) {
                    db.insert_with_ttl(k.to_le_bytes(), &v, Duration::from_secs(3600))
                        .unwrap();
                } else {
                    reader.insert(k.to_le_bytes(), &v).unwrap();
                }
                model.insert(k, (version, len));
            }
            45..=49 => {
                reader.remove(k.to_le_bytes()).unwrap();
                model.remove(&k);
            }
            50..=52 => {
                let mut b = db.batch();
                for j in 0..rng.below(20) {
                    let kk = (k + j * 7) % 6_000;
                    version += 1;
                    b.insert(kk.to_le_bytes(), self_checking(kk, version, 64));
                    model.insert(kk, (version, 64));
                }
                b.commit().unwrap();
            }
            _ => match reader.get(k.to_le_bytes()).unwrap() {
                Some(v) => {
                    let (kk, ver) = check_self(&v)
                        .unwrap_or_else(|e| panic!("step {step}: key {k}: {e} (seed {s})"));
                    assert_eq!(kk, k, "step {step}: value of another key (seed {s})");
                    let want = model.get(&k).map(|x| x.0);
                    assert_eq!(Some(ver), want, "step {step}: key {k} (seed {s})");
                }
                None => {
                    if model.remove(&k).is_some() {
                        missing_seen += 1;
                    }
                }
            },
        }
        if step % 5_000 == 0 {
            assert!(db.cache_stats().file_len <= 512 << 10);
        }
    }
    // Everything still in the model is either there with its value or gone.
    let mut present = 0;
    for (k, (ver, len)) in &model {
        if let Some(v) = db.get(k.to_le_bytes()).unwrap() {
            assert_eq!(check_self(&v).unwrap(), (*k, *ver));
            assert_eq!(v.len(), (*len).max(24));
            present += 1;
        }
    }
    let st = db.cache_stats();
    assert!(st.eviction_runs > 0 && missing_seen > 0, "{st:?}");
    assert!(present > 0);
    // Iteration agrees with point reads.
    for item in db.iter() {
        let (k, v) = item.unwrap();
        let k = u64::from_le_bytes(k[..].try_into().unwrap());
        let (kk, _) = check_self(&v).unwrap();
        assert_eq!(kk, k);
    }
}

/// Entries that are read survive evictions that take the unread ones
/// written at the same time.
#[test]
fn read_entries_get_a_second_chance() {
    let (_d, path) = store();
    let db = cache(&path, CAP);
    // 200 hot and 2,000 cold entries, interleaved, written first.
    for i in 0..2_200u64 {
        db.insert(i.to_le_bytes(), self_checking(i, 0, 100))
            .unwrap();
    }
    let hot = |i: u64| i % 11 == 0;
    let mut filler = 1_000_000u64;
    for round in 0..40 {
        for i in (0..2_200u64).filter(|&i| hot(i)) {
            // A hot entry that is gone was evicted although it was read.
            let v = db.get(i.to_le_bytes()).unwrap();
            assert!(v.is_some(), "round {round}: hot key {i} was evicted");
        }
        for _ in 0..500 {
            db.insert(filler.to_le_bytes(), self_checking(filler, 0, 100))
                .unwrap();
            filler += 1;
        }
    }
    assert!(db.cache_stats().eviction_runs >= 3);
    let cold_left = (0..2_200u64)
        .filter(|&i| !hot(i))
        .filter(|i| db.contains_key(i.to_le_bytes()).unwrap())
        .count();
    assert_eq!(cold_left, 0, "cold entries outlived 20,000 newer ones");
}

#[test]
fn expired_entries_are_invisible_and_their_space_is_taken_back() {
    let (_d, path) = store();
    let db = cache(&path, CAP);
    for i in 0..3_000u64 {
        db.insert_with_ttl(i.to_le_bytes(), [1u8; 100], Duration::from_millis(50))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(120));
    assert!(db.get(5u64.to_le_bytes()).unwrap().is_none());
    for i in 10_000..16_000u64 {
        db.insert(i.to_le_bytes(), [2u8; 100]).unwrap();
    }
    let s = db.cache_stats();
    assert!(s.expirations >= 2_000, "{s:?}");
    for i in 0..3_000u64 {
        assert!(db.get(i.to_le_bytes()).unwrap().is_none());
    }
    // The expired entries went before the live ones written after them.
    assert!(db.get(15_999u64.to_le_bytes()).unwrap().is_some());
}

#[test]
fn the_capacity_is_stored_in_the_file() {
    let (_d, path) = store();
    cache(&path, 2 * CAP).close().unwrap();
    // A plain open keeps to it...
    let db = Db::open(&path).unwrap();
    assert_eq!(db.cache_stats().capacity, 2 * CAP);
    for i in 0..30_000u64 {
        db.insert(i.to_le_bytes(), [0u8; 100]).unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().len() <= 2 * CAP);
    assert!(db.cache_stats().evictions > 0);
    db.close().unwrap();
    // ...an open with another capacity is refused, naming both...
    match Options::new().capacity(CAP).open(&path) {
        Err(mapkv::Error::CapacityMismatch {
            stored, requested, ..
        }) => assert_eq!((stored, requested), (2 * CAP, CAP)),
        other => panic!("expected CapacityMismatch, got {:?}", other.map(|_| ())),
    }
    // ...and set_capacity changes it, for every handle.
    let small = Db::open(&path).unwrap();
    small.set_capacity(CAP).unwrap();
    let plain = Db::open(&path).unwrap();
    assert_eq!(plain.cache_stats().capacity, CAP);
    for i in 0..20_000u64 {
        plain.insert(i.to_le_bytes(), [0u8; 100]).unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().len() <= CAP);
    drop(small);
    plain.close().unwrap();
    assert_eq!(Db::open(&path).unwrap().cache_stats().capacity, CAP);
    // Odd sizes are rounded down to 64 KiB, tiny ones raised to 256 KiB.
    let (_d2, p2) = store();
    assert_eq!(cache(&p2, 1).cache_stats().capacity, 256 << 10);
    let (_d3, p3) = store();
    assert_eq!(cache(&p3, CAP + 1000).cache_stats().capacity, CAP);
}

#[test]
fn a_write_larger_than_the_cache_fails_and_evicts_nothing() {
    let (_d, path) = store();
    let db = cache(&path, 512 << 10);
    for i in 0..100u64 {
        db.insert(i.to_le_bytes(), [0u8; 100]).unwrap();
    }
    let err = db.insert(b"huge", vec![0u8; 600 << 10]).unwrap_err();
    assert!(matches!(err, Error::OutOfSpace { .. }), "{err}");
    assert!(err.to_string().contains("capacity"), "{err}");
    assert_eq!(db.len(), 100);
    assert_eq!(db.cache_stats().evictions, 0);
    // A big batch is refused whole too.
    let mut b = db.batch();
    for i in 0..6_000u64 {
        b.insert((1_000_000 + i).to_le_bytes(), [0u8; 100]);
    }
    assert!(matches!(b.commit(), Err(Error::OutOfSpace { .. })));
    assert_eq!(db.len(), 100);
    db.insert(b"small", b"still fine").unwrap();
}

/// Writer threads fill a small cache over and over while reader threads,
/// through clones and a second handle, check every value they get.
#[test]
fn readers_never_see_a_torn_or_recycled_value_during_eviction() {
    let (_d, path) = store();
    let db = cache(&path, 512 << 10);
    let other = Db::open(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..2u64 {
        let h = if r == 0 { db.clone() } else { other.clone() };
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            let mut rng = Rng::new(r);
            let mut found = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = rng.below(20_000);
                if let Some(v) = h.get(k.to_le_bytes()).unwrap() {
                    let (kk, _) = check_self(&v).unwrap();
                    assert_eq!(kk, k);
                    found += 1;
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            found
        }));
    }
    let mut rng = Rng::new(7);
    for n in 0..150_000u64 {
        let k = rng.below(20_000);
        db.insert(
            k.to_le_bytes(),
            self_checking(k, n, 24 + (n % 100) as usize),
        )
        .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let found: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let s = db.cache_stats();
    assert!(s.eviction_runs >= 10, "{s:?}");
    assert!(found > 0 && reads.load(Ordering::Relaxed) > 1_000);
}

#[test]
fn read_only_handles_read_a_cache_and_count_their_hits() {
    let (_d, path) = store();
    let db = cache(&path, CAP);
    for i in 0..100u64 {
        db.insert(i.to_le_bytes(), self_checking(i, 0, 64)).unwrap();
    }
    let ro = Options::new().read_only(true).open(&path).unwrap();
    for i in 0..150u64 {
        let got = ro.get(i.to_le_bytes()).unwrap();
        assert_eq!(got.is_some(), i < 100);
    }
    let s = ro.cache_stats();
    assert_eq!((s.hits, s.misses, s.capacity), (100, 50, CAP));
    // The writer's counts are its own.
    assert_eq!(db.cache_stats().hits, 0);
    // Evictions made by the writer are followed by the reader.
    for i in 1_000..20_000u64 {
        db.insert(i.to_le_bytes(), self_checking(i, 0, 64)).unwrap();
    }
    assert!(ro.cache_stats().eviction_runs > 0);
    let v = ro.get(19_999u64.to_le_bytes()).unwrap().unwrap();
    assert_eq!(check_self(&v).unwrap(), (19_999, 0));
}

/// An entry kept for its hit moves behind the entries written before the
/// eviction, so the next eviction, which takes the oldest, leaves it alone
/// even if it was not read again. (A sort once put such entries back in
/// front, which made the policy plain FIFO.)
#[test]
fn a_second_chance_moves_the_entry_to_the_back_of_the_queue() {
    let (_d, path) = store();
    let db = Options::new()
        .capacity(CAP)
        .evict_ahead(false)
        .open(&path)
        .unwrap();
    let runs = || db.cache_stats().eviction_runs;
    // The oldest entries; 100 of them are read once.
    for i in 0..1_000u64 {
        db.insert(i.to_le_bytes(), self_checking(i, 0, 100))
            .unwrap();
    }
    for i in 0..100u64 {
        assert!(db.get(i.to_le_bytes()).unwrap().is_some());
    }
    let mut next = 1_000_000u64;
    let mut fill_until = |n: u64| {
        while runs() < n {
            db.insert(next.to_le_bytes(), self_checking(next, 0, 100))
                .unwrap();
            next += 1;
        }
    };
    fill_until(1);
    let kept = |range: std::ops::Range<u64>| {
        range
            .filter(|i| db.contains_key(i.to_le_bytes()).unwrap())
            .count()
    };
    assert_eq!(kept(0..100), 100, "read entries were evicted");
    assert_eq!(
        kept(100..1_000),
        0,
        "unread old entries outlived the eviction"
    );
    // The next eviction takes the oldest again: the entries written before
    // the first one, not the ones it kept for their hit.
    fill_until(2);
    assert_eq!(kept(0..100), 100, "the second chance did not last");
}

/// `check` on a cache whose readers count hits meanwhile: the hit bits
/// change without any lock, and must not look like a misplaced slot.
#[test]
fn check_passes_while_readers_count_hits() {
    let (_d, path) = store();
    let db = cache(&path, 64 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(3);
            while !stop.load(Ordering::Relaxed) {
                let _ = db.get(rng.below(2_000).to_le_bytes()).unwrap();
            }
        })
    };
    for round in 0..40u64 {
        for i in 0..200u64 {
            let k = (round * 200 + i) % 2_000;
            db.insert(k.to_le_bytes(), self_checking(k, round, 40))
                .unwrap();
        }
        db.check()
            .unwrap_or_else(|e| panic!("round {round}: check: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
}

/// `check` and `flush` write nothing to the log, so they must not start an
/// eviction, even on a cache past the point where a write would.
#[test]
fn check_and_flush_do_not_evict() {
    let (_d, path) = store();
    let filler = Options::new()
        .capacity(256 << 10)
        .evict_ahead(false)
        .open(&path)
        .unwrap();
    let mut i = 0u64;
    while filler.cache_stats().used_bytes < (256 << 10) - 4096 {
        filler.insert(i.to_le_bytes(), [1u8; 200]).unwrap();
        i += 1;
    }
    assert_eq!(filler.cache_stats().eviction_runs, 0);
    let keys = filler.len();
    let plain = Db::open(&path).unwrap(); // evicts ahead by default
    plain.check().unwrap();
    plain.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(plain.cache_stats().eviction_runs, 0);
    assert_eq!(plain.len(), keys);
    // A write does start one.
    plain.insert(b"one more", [2u8; 200]).unwrap();
    plain.close().unwrap(); // waits for the background eviction
                            // (The counters survive the last handle on the new file closing
                            // before this one follows it there.)
    assert_eq!(filler.cache_stats().eviction_runs, 1);
    assert!(filler.len() < keys);
}

/// Several handles (each with its own evictions) write big values into a
/// small cache at once: every write must succeed. A write that found the
/// cache full once measured its size against the log of the store another
/// handle had just evicted into, and could give up with `OutOfSpace`.
#[test]
fn concurrent_writers_on_a_small_cache_never_fail() {
    let (_d, path) = store();
    cache(&path, 256 << 10).close().unwrap();
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let db = Db::open(&path).unwrap();
                let mut rng = Rng::new(t);
                for n in 0..800u64 {
                    let k = t * 1_000_000 + n;
                    let len = 1_000 + rng.below(20_000) as usize;
                    db.insert(k.to_le_bytes(), self_checking(k, 0, len))
                        .unwrap_or_else(|e| panic!("writer {t}, write {n}: {e}"));
                }
                db.cache_stats().eviction_runs
            })
        })
        .collect();
    let runs: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(runs.iter().all(|&r| r > 10), "{runs:?}");
    let db = Db::open(&path).unwrap();
    db.check().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() <= 256 << 10);
}
