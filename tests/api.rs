//! The public API, end to end.

mod common;

use common::{store, Rng};
use mapkv::{Db, Durability, OpenKind, Options};

#[test]
fn insert_get_overwrite_remove() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    assert!(db.is_empty());
    assert_eq!(db.get(b"a").unwrap(), None);
    db.insert(b"a", b"1").unwrap();
    db.insert(b"b", b"2").unwrap();
    assert_eq!(db.get(b"a").unwrap().unwrap(), &b"1"[..]);
    db.insert(b"a", b"one").unwrap();
    assert_eq!(db.get(b"a").unwrap().unwrap(), &b"one"[..]);
    assert_eq!(db.len(), 2);
    assert!(db.contains_key(b"b").unwrap());
    assert!(db.remove(b"b").unwrap());
    assert!(!db.remove(b"b").unwrap());
    assert!(!db.contains_key(b"b").unwrap());
    assert_eq!(db.len(), 1);
    let mut buf = vec![9u8; 100];
    assert!(db.get_into(b"a", &mut buf).unwrap());
    assert_eq!(buf, b"one");
    assert!(!db.get_into(b"zzz", &mut buf).unwrap());
    assert!(buf.is_empty());
}

#[test]
fn reopen_keeps_everything_and_is_clean() {
    let (_d, path) = store();
    {
        let db = Db::open(&path).unwrap();
        for i in 0..10_000u32 {
            db.insert(i.to_be_bytes(), (i * 3).to_le_bytes()).unwrap();
        }
        for i in (0..10_000u32).step_by(3) {
            assert!(db.remove(i.to_be_bytes()).unwrap());
        }
        db.close().unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    assert_eq!(db.len(), 10_000 - 3334);
    for i in 0..10_000u32 {
        let got = db.get(i.to_be_bytes()).unwrap();
        if i % 3 == 0 {
            assert_eq!(got, None, "removed key {i} came back");
        } else {
            assert_eq!(got.unwrap(), &(i * 3).to_le_bytes()[..]);
        }
    }
}

#[test]
fn binary_and_edge_keys() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    let long_key = vec![0xffu8; mapkv::MAX_KEY_LEN];
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![0xff; 7],
        b"\x00\x01\x02\xfe\xff".to_vec(),
        long_key.clone(),
    ];
    for (i, k) in keys.iter().enumerate() {
        db.insert(k, [i as u8; 3]).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(db.get(k).unwrap().unwrap(), &[i as u8; 3][..], "key {k:?}");
    }
    assert_eq!(db.len(), keys.len() as u64);
    db.close().unwrap();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.get(&long_key).unwrap().unwrap(), &[5u8; 3][..]);
    assert_eq!(db.get([]).unwrap().unwrap(), &[0u8; 3][..]);
}

#[test]
fn empty_and_64_mib_values() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    db.insert(b"empty", b"").unwrap();
    let mut rng = Rng::new(1);
    let big = rng.bytes(64 << 20);
    db.insert(b"big", &big).unwrap();
    assert_eq!(db.get(b"empty").unwrap().unwrap().len(), 0);
    assert!(db.contains_key(b"empty").unwrap());
    assert!(db.get(b"big").unwrap().unwrap() == big);
    db.close().unwrap();
    let db = Db::open(&path).unwrap();
    assert!(db.get(b"big").unwrap().unwrap() == big);
    assert_eq!(db.get(b"empty").unwrap().unwrap().len(), 0);
}

#[test]
fn batches_apply_in_order_and_drop_discards() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    db.insert(b"x", b"old").unwrap();
    let mut b = db.batch();
    b.insert(b"k", b"1")
        .insert(b"k", b"2")
        .remove(b"x")
        .insert(b"y", b"3");
    assert_eq!(b.len(), 4);
    b.commit().unwrap();
    assert_eq!(db.get(b"k").unwrap().unwrap(), &b"2"[..]);
    assert_eq!(db.get(b"x").unwrap(), None);
    assert_eq!(db.len(), 2);
    {
        let mut dropped = db.batch();
        dropped.insert(b"never", b"!");
    }
    assert_eq!(db.get(b"never").unwrap(), None);
    db.batch().commit().unwrap();
    let mut b = db.batch();
    b.insert(b"ok", b"1")
        .insert(vec![0u8; mapkv::MAX_KEY_LEN + 1], b"");
    assert!(matches!(b.commit(), Err(mapkv::Error::KeyTooLarge { .. })));
    assert_eq!(
        db.get(b"ok").unwrap(),
        None,
        "a failed batch wrote something"
    );
}

#[test]
fn iter_returns_every_live_entry_once() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    let mut model = std::collections::BTreeMap::new();
    for i in 0..5000u32 {
        let k = (i % 3000).to_le_bytes().to_vec();
        let v = i.to_be_bytes().to_vec();
        db.insert(&k, &v).unwrap();
        model.insert(k, v);
    }
    for i in 0..1000u32 {
        let k = i.to_le_bytes().to_vec();
        db.remove(&k).unwrap();
        model.remove(&k);
    }
    let mut seen = std::collections::BTreeMap::new();
    for item in db.iter() {
        let (k, v) = item.unwrap();
        assert!(
            seen.insert(k.to_vec(), v.to_vec()).is_none(),
            "key returned twice"
        );
    }
    assert_eq!(seen, model);
}

#[test]
fn stats_add_up() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..1000u32 {
        db.insert(i.to_le_bytes(), [7u8; 100]).unwrap();
    }
    for i in 0..500u32 {
        db.insert(i.to_le_bytes(), [8u8; 100]).unwrap();
    }
    let s = db.stats();
    assert_eq!(s.keys, 1000);
    // 24-byte header + 4-byte key + 100-byte value = 128 bytes per record.
    assert_eq!(s.live_bytes, 1000 * 128);
    assert_eq!(s.used_bytes, s.live_bytes + s.dead_bytes + s.index_bytes);
    assert!(s.dead_bytes >= 500 * 128);
    assert!(s.index_load > 0.0 && s.index_load <= 0.75);
    assert_eq!(s.commits, 1500);
    assert_eq!(s.file_len % 65536, 0);
    assert!(s.file_len >= s.tail);
}

#[test]
fn clones_share_one_store_across_threads() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    let hs: Vec<_> = (0..4u32)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    db.insert([t.to_le_bytes(), i.to_le_bytes()].concat(), i.to_le_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(db.len(), 8000);
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Db>();
}

#[test]
fn read_only_reads_and_never_writes() {
    let (_d, path) = store();
    {
        let db = Db::open(&path).unwrap();
        db.insert(b"k", b"v").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(ro.get(b"k").unwrap().unwrap(), &b"v"[..]);
    assert!(matches!(
        ro.insert(b"a", b"b"),
        Err(mapkv::Error::ReadOnly { .. })
    ));
    assert!(matches!(
        ro.remove(b"k"),
        Err(mapkv::Error::ReadOnly { .. })
    ));
    assert!(matches!(ro.batch().insert(b"a", b"b").len(), 1));
    let mut b = ro.batch();
    b.insert(b"a", b"b");
    assert!(matches!(b.commit(), Err(mapkv::Error::ReadOnly { .. })));
    ro.flush().unwrap();
    // Two read-only handles may coexist.
    let ro2 = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(ro2.len(), 1);
    drop((ro, ro2));
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a read-only open changed the file"
    );
    // A missing file is not created read-only.
    let missing = path.with_extension("missing");
    assert!(Options::new().read_only(true).open(&missing).is_err());
    assert!(!missing.exists());
}

#[test]
fn durability_modes_all_roundtrip() {
    for d in [Durability::None, Durability::Async, Durability::Sync] {
        let (_d, path) = store();
        {
            let db = Options::new().durability(d).open(&path).unwrap();
            for i in 0..200u32 {
                db.insert(i.to_le_bytes(), [i as u8; 40]).unwrap();
            }
            let mut b = db.batch();
            for i in 200..400u32 {
                b.insert(i.to_le_bytes(), [i as u8; 40]);
            }
            b.commit().unwrap();
            db.flush().unwrap();
            let s = db.stats();
            assert_eq!(
                s.durable_tail, s.tail,
                "{d:?}: flush left the tail undurable"
            );
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.len(), 400, "{d:?}");
        assert_eq!(
            db.get(399u32.to_le_bytes()).unwrap().unwrap(),
            &[399u32 as u8; 40][..]
        );
    }
}

#[test]
fn sync_commits_are_durable_when_they_return() {
    let (_d, path) = store();
    let db = Options::new()
        .durability(Durability::Sync)
        .open(&path)
        .unwrap();
    db.insert(b"a", b"1").unwrap();
    let s = db.stats();
    assert_eq!(s.durable_tail, s.tail);
    let none = {
        let (_d2, p2) = store();
        let db2 = Db::open(&p2).unwrap();
        db2.insert(b"a", b"1").unwrap();
        let s = db2.stats();
        s.durable_tail < s.tail
    };
    assert!(none, "Durability::None synced a commit");
}

#[test]
fn growth_is_page_aligned_and_remaps_work() {
    let (_d, path) = store();
    let db = Options::new()
        .initial_size(64 << 10)
        .growth_step(1 << 20)
        .map_reserve(1 << 20)
        .open(&path)
        .unwrap();
    let mut lens = vec![];
    for i in 0..20_000u32 {
        db.insert(i.to_le_bytes(), [1u8; 200]).unwrap();
        let l = db.stats().file_len;
        if lens.last() != Some(&l) {
            lens.push(l);
        }
    }
    assert!(lens.len() > 5, "file never grew: {lens:?}");
    assert!(
        db.stats().remaps >= 2,
        "the file outgrew a 1 MiB reservation without a remap"
    );
    for w in lens.windows(2) {
        assert_eq!(w[1] % 65536, 0);
        // Doubling up to the 1 MiB step, then steps.
        assert!(w[1] - w[0] <= (1 << 20).max(w[0]), "{lens:?}");
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        *lens.last().unwrap()
    );
    for i in 0..20_000u32 {
        assert!(db.contains_key(i.to_le_bytes()).unwrap());
    }
}

#[test]
fn expected_keys_presizes_the_index() {
    let (_d, path) = store();
    let db = Options::new().expected_keys(100_000).open(&path).unwrap();
    let cap = db.stats().index_capacity;
    assert!(cap >= 133_334, "{cap}");
    for i in 0..100_000u32 {
        db.insert(i.to_le_bytes(), b"").unwrap();
    }
    assert_eq!(
        db.stats().index_capacity,
        cap,
        "the index was rebuilt despite expected_keys"
    );
}

#[test]
fn empty_existing_file_is_initialised() {
    use std::os::unix::fs::OpenOptionsExt;
    let (_d, path) = store();
    // Our own, and no more open than the default mode 0600: adopted (see
    // tests/trust_files.rs for the files that are refused).
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    let db = Db::open(&path).unwrap();
    db.insert(b"k", b"v").unwrap();
    assert_eq!(db.get(b"k").unwrap().unwrap(), &b"v"[..]);
}

#[test]
fn new_files_are_private_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, path) = store();
    drop(Db::open(&path).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    let p2 = path.with_extension("shared");
    drop(Options::new().mode(0o644).open(&p2).unwrap());
    let mode = std::fs::metadata(&p2).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o004, 0o004 & !umask(), "mode {mode:o}");
}

fn umask() -> u32 {
    // Linux reports the umask in /proc/self/status ("Umask:\t0022").
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[test]
fn close_gives_back_preallocated_space() {
    let (_d, path) = store();
    let db = Options::new().initial_size(32 << 20).open(&path).unwrap();
    db.insert(b"k", [1u8; 1000]).unwrap();
    let tail = db.stats().tail;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 32 << 20);
    db.close().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len, tail.div_ceil(65536) * 65536);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    assert_eq!(db.get(b"k").unwrap().unwrap().len(), 1000);
    db.insert(b"more", [2u8; 100_000]).unwrap();
}

/// `get_many` runs its lookups through a prefetching pipeline several keys
/// deep: for every batch length around the pipeline's depths, with hits,
/// misses, removed keys, repeated keys, expired entries and keys sharing
/// probe paths, it answers exactly what `get` answers, in order.
#[test]
fn get_many_answers_as_get_does_for_every_batch_length() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("gm.mapkv")).unwrap();
    let mut model = std::collections::HashMap::new();
    for i in 0..3000u32 {
        let k = format!("key-{i}");
        let v = format!("value-{i}-").repeat(1 + i as usize % 40);
        db.insert(&k, &v).unwrap();
        model.insert(k, v.into_bytes());
    }
    for i in (0..3000u32).step_by(7) {
        let k = format!("key-{i}");
        db.remove(&k).unwrap();
        model.remove(&k);
    }
    db.insert_with_ttl(b"gone", b"x", std::time::Duration::from_millis(1))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut r = 12345u64;
    let mut next = move || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    };
    let mut out = Vec::new();
    for len in (0..40).chain([63, 64, 65, 100, 257, 1000]) {
        let keys: Vec<String> = (0..len)
            .map(|j| match next() % 10 {
                0 => "gone".to_string(),
                1 => format!("absent-{}", next() % 5000),
                2 if j > 0 => "key-1".to_string(), // a repeat
                _ => format!("key-{}", next() % 3000),
            })
            .collect();
        let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| model.get(k).cloned()).collect();
        let got: Vec<Option<Vec<u8>>> = db
            .get_many(&keys)
            .unwrap()
            .into_iter()
            .map(|v| v.map(|v| v.into_vec()))
            .collect();
        assert_eq!(got, want, "get_many of {len} keys");
        let found = db.get_many_into(&keys, &mut out).unwrap();
        assert_eq!(found, want.iter().filter(|v| v.is_some()).count());
        assert_eq!(out.len(), len);
        for (k, v) in keys.iter().zip(&out) {
            assert_eq!(v.as_deref(), db.get(k).unwrap().as_deref(), "{k}");
        }
    }
}

/// `for_each` visits exactly what `iter` returns: every live entry once,
/// with its value, not removed or expired ones; and stops when told to.
#[test]
fn for_each_visits_what_iter_returns() {
    use std::collections::HashMap;
    use std::ops::ControlFlow;
    let (_dir, path) = store();
    let db = Db::open(&path).unwrap();
    let mut model = HashMap::new();
    let mut rng = Rng::new(7);
    for i in 0..5000u32 {
        let k = format!("k{}", rng.below(3000)).into_bytes();
        match i % 7 {
            0 => {
                db.remove(&k).unwrap();
                model.remove(&k);
            }
            _ => {
                // Values of different lengths, so the reused buffer shrinks
                // and grows.
                let v = vec![i as u8; rng.below(300) as usize];
                db.insert(&k, &v).unwrap();
                model.insert(k, v);
            }
        }
    }
    db.insert_with_ttl(b"gone", b"x", std::time::Duration::from_millis(1))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));

    let mut seen = HashMap::new();
    db.for_each(|k, v| {
        assert!(seen.insert(k.to_vec(), v.to_vec()).is_none(), "{k:?} twice");
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(seen == model, "for_each differs from the model");
    let from_iter: HashMap<Vec<u8>, Vec<u8>> = db
        .iter()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<mapkv::Result<_>>()
        .unwrap();
    assert!(from_iter == seen, "iter and for_each differ");

    let mut n = 0;
    db.for_each(|_, _| {
        n += 1;
        if n == 10 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(n, 10, "Break stops the visit");
}
