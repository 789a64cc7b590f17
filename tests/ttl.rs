//! Entries with a time to live (`insert_with_ttl`): invisible to every read
//! once expired, kept (with their expiry) by recovery and compaction, and
//! left behind by compaction when expired. Expiry in these tests is either
//! immediate (`Duration::ZERO`) or an hour away, so that nothing depends on
//! how fast the machine is, except one test that waits out a 1.5 s TTL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{seed, store, Rng};
use mapkv::{Change, Db, OpenKind, Options};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn expired_entries_are_invisible_to_every_read() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    db.insert(b"plain", b"p").unwrap();
    db.insert_with_ttl(b"long", b"l", HOUR).unwrap();
    db.insert_with_ttl(b"gone", b"g", Duration::ZERO).unwrap();
    db.insert_with_ttl(b"pod", 7u64.to_le_bytes(), HOUR)
        .unwrap();
    db.insert_with_ttl(b"podgone", 8u64.to_le_bytes(), Duration::ZERO)
        .unwrap();
    assert_eq!(db.get(b"long").unwrap().as_deref(), Some(&b"l"[..]));
    assert!(db.get(b"gone").unwrap().is_none());
    let mut buf = vec![1, 2, 3];
    assert!(!db.get_into(b"gone", &mut buf).unwrap());
    assert!(db.get_into(b"long", &mut buf).unwrap());
    assert_eq!(buf, b"l");
    assert!(db.contains_key(b"long").unwrap());
    assert!(!db.contains_key(b"gone").unwrap());
    assert_eq!(db.get_pod::<u64>(b"pod").unwrap(), Some(7));
    assert_eq!(db.get_pod::<u64>(b"podgone").unwrap(), None);
    let many = db.get_many(&[&b"long"[..], &b"gone"[..]]).unwrap();
    assert!(many[0].is_some() && many[1].is_none());
    let mut seen: Vec<Vec<u8>> = db.iter().map(|r| r.unwrap().0.to_vec()).collect();
    seen.sort();
    assert_eq!(seen, [&b"long"[..], b"plain", b"pod"]);
    // Removing an expired entry finds nothing; overwriting it revives it
    // for good.
    assert!(!db.remove(b"gone").unwrap());
    db.insert(b"podgone", b"back").unwrap();
    assert_eq!(db.get(b"podgone").unwrap().as_deref(), Some(&b"back"[..]));
    // len leaves expired entries out; stats and check report them apart
    // until a compaction drops them.
    assert_eq!(db.len(), 4);
    assert_eq!((db.stats().keys, db.stats().expired_keys), (4, 1));
    let report = db.check().unwrap();
    assert_eq!((report.live_keys, report.expired_keys), (4, 1));
    let r = db.compact().unwrap();
    assert_eq!(r.expired, 1);
    assert_eq!(db.len(), 4);
    assert_eq!((db.stats().keys, db.stats().expired_keys), (4, 0));
    db.check().unwrap();
}

#[test]
fn expiry_survives_reopen_recovery_and_compaction() {
    let (d, path) = store();
    let db = Db::open(&path).unwrap();
    db.insert_with_ttl(b"soon", b"s", Duration::from_millis(1500))
        .unwrap();
    db.insert_with_ttl(b"later", b"l", HOUR).unwrap();
    let mut b = db.batch();
    b.insert_with_ttl(b"batch-soon", b"b", Duration::from_millis(1500))
        .insert(b"batch-plain", b"p");
    b.commit().unwrap();
    // A process crash image, recovered.
    let crashed = d.path().join("crashed.mapkv");
    std::fs::copy(&path, &crashed).unwrap();
    let c = Db::open(&crashed).unwrap();
    assert_eq!(c.stats().opened, OpenKind::Replayed);
    // Compaction copies entries with their expiry.
    db.compact().unwrap();
    drop(db);
    let db = Db::open(&path).unwrap();
    for h in [&db, &c] {
        for k in [&b"soon"[..], b"later", b"batch-soon", b"batch-plain"] {
            assert!(h.get(k).unwrap().is_some(), "{k:?} before expiry");
        }
    }
    std::thread::sleep(Duration::from_millis(1700));
    for h in [&db, &c] {
        assert!(h.get(b"soon").unwrap().is_none());
        assert!(h.get(b"batch-soon").unwrap().is_none());
        assert!(h.get(b"later").unwrap().is_some());
        assert!(h.get(b"batch-plain").unwrap().is_some());
    }
    let r = db.compact().unwrap();
    assert_eq!((r.expired, r.keys), (2, 2));
}

#[test]
fn the_change_feed_reports_values_without_the_expiry() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    let pos = db.log_position();
    db.insert_with_ttl(b"k", b"value", HOUR).unwrap();
    let (commits, _) = db.changes_after(pos, 10).unwrap();
    match &commits[0].changes[0] {
        Change::Put { key, value } => {
            assert_eq!(key, b"k");
            assert_eq!(&value[..], b"value");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn model_with_expiring_entries_reopens_and_compactions() {
    let s = seed("ttl_model");
    let mut rng = Rng::new(s);
    let (_d, path) = store();
    let opts = Options::new().initial_size(64 << 10);
    let mut db = opts.clone().open(&path).unwrap();
    // What a read must return: entries with a zero TTL are absent.
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut stored = std::collections::HashSet::new();
    for step in 0..20_000u32 {
        let k = format!("k{}", rng.below(500)).into_bytes();
        let n = rng.below(100) as usize;
        let v = rng.bytes(n);
        match rng.below(100) {
            0..=39 => {
                db.insert(&k, &v).unwrap();
                model.insert(k.clone(), v);
                stored.insert(k);
            }
            40..=59 => {
                db.insert_with_ttl(&k, &v, HOUR).unwrap();
                model.insert(k.clone(), v);
                stored.insert(k);
            }
            60..=74 => {
                db.insert_with_ttl(&k, &v, Duration::ZERO).unwrap();
                model.remove(&k);
                stored.insert(k);
            }
            75..=94 => {
                let was = model.remove(&k).is_some();
                assert_eq!(db.remove(&k).unwrap(), was, "step {step}");
                // Removing an expired entry finds nothing and writes
                // nothing: it stays (counted) until a compaction.
                if was {
                    stored.remove(&k);
                }
            }
            95..=97 => {
                db.compact().unwrap();
                // Expired entries are gone from the count now.
                stored.retain(|k| model.contains_key(k));
                assert_eq!(db.len(), model.len() as u64, "step {step}");
            }
            _ => {
                db.close().unwrap();
                db = opts.clone().open(&path).unwrap();
            }
        }
        let probe = format!("k{}", rng.below(500)).into_bytes();
        assert_eq!(
            db.get(&probe).unwrap().map(|v| v.to_vec()),
            model.get(&probe).cloned(),
            "step {step}: key {probe:?}"
        );
        // len counts what reads see; stats tells the expired entries
        // still stored apart.
        assert_eq!(db.len(), model.len() as u64, "step {step}: len");
        if step % 16 == 0 {
            let st = db.stats();
            assert_eq!(st.keys, model.len() as u64, "step {step}: stats");
            assert_eq!(
                st.keys + st.expired_keys,
                stored.len() as u64,
                "step {step}: stored"
            );
        }
    }
    let mut n = 0;
    for item in db.iter() {
        let (k, v) = item.unwrap();
        assert_eq!(model.get(&k[..]).map(|x| &x[..]), Some(&v[..]));
        n += 1;
    }
    assert_eq!(n, model.len());
    db.check().unwrap();
}
