//! Model tests: random operations against `std::collections::HashMap`.
//!
//! The key space is small, so overwrites, removals of present keys and
//! probe collisions are frequent; reopens (clean) and process-crash images
//! (a copy of the file taken while the store is open, which is what a
//! killed process leaves in the page cache) are mixed in.

mod common;

use std::collections::HashMap;

use common::{seed, store, Rng};
use mapkv::{Db, Durability, Options};

/// Compare the whole store with the model; `deep` also runs `Db::check`
/// (a full log scan, so only on crash images and at the end).
fn check_all(db: &Db, model: &HashMap<Vec<u8>, Vec<u8>>, ctx: &str, deep: bool) {
    assert_eq!(db.len(), model.len() as u64, "{ctx}: len");
    let mut n = 0;
    for item in db.iter() {
        let (k, v) = item.unwrap_or_else(|e| panic!("{ctx}: iter: {e}"));
        assert_eq!(
            model.get(&*k).map(|v| &v[..]),
            Some(&*v),
            "{ctx}: iter entry {k:?}"
        );
        n += 1;
    }
    assert_eq!(n, model.len(), "{ctx}: iter count");
    if deep {
        let report = db.check().unwrap_or_else(|e| panic!("{ctx}: check: {e}"));
        assert_eq!(report.live_keys, model.len() as u64, "{ctx}: check");
    }
}

fn run(seed: u64, steps: usize, durability: Durability) {
    let (dir, path0) = store();
    let mut path = path0.clone();
    let mut rng = Rng::new(seed);
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let opts = || Options::new().durability(durability).initial_size(64 << 10);
    let mut db = opts().open(&path).unwrap();
    let key_space = 2000;
    let mut images = 0;
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let key = {
            let k = rng.below(key_space);
            // Keys of varied length, some sharing prefixes.
            let mut key = k.to_le_bytes()[..1 + (k % 8) as usize].to_vec();
            if k % 5 == 0 {
                key.extend_from_slice(b"/shared/prefix");
            }
            key
        };
        let value_len = match rng.below(100) {
            0 => 5000 + rng.below(20_000) as usize,
            1..=5 => 0,
            _ => rng.below(300) as usize,
        };
        match rng.below(10_000) {
            0..=4499 => {
                let v = rng.bytes(value_len);
                db.insert(&key, &v).unwrap();
                model.insert(key, v);
            }
            4500..=5999 => {
                let existed = db.remove(&key).unwrap();
                assert_eq!(existed, model.remove(&key).is_some(), "{ctx}: remove");
            }
            6000..=8999 => {
                let got = db.get(&key).unwrap();
                assert_eq!(
                    got.as_deref(),
                    model.get(&key).map(|v| &v[..]),
                    "{ctx}: get"
                );
                assert_eq!(
                    db.contains_key(&key).unwrap(),
                    model.contains_key(&key),
                    "{ctx}: contains"
                );
            }
            9000..=9899 => {
                let mut b = db.batch();
                let mut staged: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                for _ in 0..rng.below(50) {
                    let k = rng.below(key_space).to_le_bytes()[..3].to_vec();
                    if rng.chance(70) {
                        let n = rng.below(100) as usize;
                        let v = rng.bytes(n);
                        b.insert(&k, &v);
                        staged.push((k, Some(v)));
                    } else {
                        b.remove(&k);
                        staged.push((k, None));
                    }
                }
                b.commit().unwrap();
                for (k, v) in staged {
                    match v {
                        Some(v) => model.insert(k, v),
                        None => model.remove(&k),
                    };
                }
            }
            9900..=9949 => {
                db.close().unwrap();
                db = opts().open(&path).unwrap();
                assert_eq!(db.stats().opened, mapkv::OpenKind::Clean, "{ctx}");
                check_all(&db, &model, &ctx, false);
            }
            9950..=9954 => {
                // Process-crash image: the file as the page cache has it now.
                images += 1;
                let copy = dir.path().join(format!("crash-{images}.mapkv"));
                std::fs::copy(&path, &copy).unwrap();
                let old = std::mem::replace(&mut db, opts().open(&copy).unwrap());
                drop(old);
                std::fs::remove_file(&path).unwrap();
                path = copy;
                let opened = db.stats().opened;
                assert_eq!(
                    opened,
                    mapkv::OpenKind::Replayed,
                    "{ctx}: crash image opened as {opened:?}"
                );
                check_all(&db, &model, &ctx, false);
            }
            _ => {
                if rng.chance(90) {
                    db.flush().unwrap();
                } else {
                    check_all(&db, &model, &ctx, false);
                }
            }
        }
    }
    db.close().unwrap();
    let db = Db::open(&path).unwrap();
    check_all(&db, &model, &format!("seed {seed} final"), true);
}

#[test]
fn model_none_300k_steps() {
    run(seed("model_none"), 300_000, Durability::None);
}

#[test]
fn model_sync_20k_steps() {
    run(seed("model_sync"), 20_000, Durability::Sync);
}

#[test]
fn model_async_50k_steps() {
    run(seed("model_async"), 50_000, Durability::Async);
}

mod shrinking {
    //! The same model as a proptest, so that a failure shrinks to a short
    //! sequence of operations.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, Vec<u8>),
        Remove(u8),
        Get(u8),
        Batch(Vec<(u8, Option<Vec<u8>>)>),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => any::<u8>().prop_map(Op::Remove),
            2 => any::<u8>().prop_map(Op::Get),
            1 => proptest::collection::vec(
                (any::<u8>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))),
                0..10
            )
            .prop_map(Op::Batch),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn ops_match_hashmap(ops in proptest::collection::vec(op(), 1..120)) {
            let (_d, path) = store();
            let mut db = Db::open(&path).unwrap();
            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => { db.insert([k], &v).unwrap(); model.insert(vec![k], v); }
                    Op::Remove(k) => prop_assert_eq!(db.remove([k]).unwrap(), model.remove(&vec![k]).is_some()),
                    Op::Get(k) => prop_assert_eq!(db.get([k]).unwrap().map(|v| v.to_vec()), model.get(&vec![k]).cloned()),
                    Op::Batch(items) => {
                        let mut b = db.batch();
                        for (k, v) in items {
                            match v {
                                Some(v) => { b.insert([k], &v); model.insert(vec![k], v); }
                                None => { b.remove([k]); model.remove(&vec![k]); }
                            }
                        }
                        b.commit().unwrap();
                    }
                    Op::Reopen => { drop(db); db = Db::open(&path).unwrap(); }
                }
                prop_assert_eq!(db.len(), model.len() as u64);
            }
        }
    }
}
