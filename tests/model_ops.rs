//! Model test of the cache-face operations against a `HashMap` with
//! expiries: insert (with and without a TTL), remove, insert_if_absent,
//! compare_and_swap, increment, expire, time_to_live, get_or_insert_with,
//! clear, with reopens. TTLs are either zero (expired at once) or an hour
//! (alive for the whole test), so the model needs no clock.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{seed, store, Rng};
use mapkv::{Db, Error, Options};

/// The model: key → (value, has an expiry that has not passed).
type Model = HashMap<Vec<u8>, (Vec<u8>, bool)>;

const HOUR: Duration = Duration::from_secs(3600);

fn check_all(db: &Db, model: &Model, ctx: &str) {
    assert_eq!(db.len(), model.len() as u64, "{ctx}: len");
    let stats = db.stats();
    assert_eq!(stats.keys, model.len() as u64, "{ctx}: stats.keys");
    let mut n = 0;
    for item in db.iter() {
        let (k, v) = item.unwrap_or_else(|e| panic!("{ctx}: iter: {e}"));
        assert_eq!(
            model.get(&*k).map(|(v, _)| &v[..]),
            Some(&*v),
            "{ctx}: iter {k:?}"
        );
        n += 1;
    }
    assert_eq!(n, model.len(), "{ctx}: iter count");
    let report = db.check().unwrap_or_else(|e| panic!("{ctx}: check: {e}"));
    assert_eq!(report.live_keys, model.len() as u64, "{ctx}: check");
    assert_eq!(report.expired_keys, stats.expired_keys, "{ctx}: expired");
}

fn ttl() -> impl FnMut(&mut Rng) -> Option<Duration> {
    |rng| match rng.below(3) {
        0 => None,
        1 => Some(Duration::ZERO),
        _ => Some(HOUR),
    }
}

/// What the model does with a put that has `ttl`.
fn put(model: &mut Model, k: Vec<u8>, v: Vec<u8>, ttl: Option<Duration>) {
    match ttl {
        Some(Duration::ZERO) => {
            model.remove(&k);
        }
        t => {
            model.insert(k, (v, t.is_some()));
        }
    }
}

fn run(seed: u64, steps: usize) {
    let (_dir, path) = store();
    let mut rng = Rng::new(seed);
    let mut model: Model = HashMap::new();
    let open = || Options::new().initial_size(64 << 10).open(&path).unwrap();
    let mut db = open();
    let mut pick_ttl = ttl();
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let key = rng.below(300).to_le_bytes()[..2].to_vec();
        let value = {
            let n = rng.below(40) as usize;
            rng.bytes(n)
        };
        match rng.below(1000) {
            0..=199 => {
                let t = pick_ttl(&mut rng);
                match t {
                    Some(t) => db.insert_with_ttl(&key, &value, t).unwrap(),
                    None => db.insert(&key, &value).unwrap(),
                }
                put(&mut model, key, value, t);
            }
            200..=279 => {
                let existed = db.remove(&key).unwrap();
                assert_eq!(existed, model.remove(&key).is_some(), "{ctx}: remove");
            }
            280..=379 => {
                let inserted = db.insert_if_absent(&key, &value).unwrap();
                assert_eq!(
                    inserted,
                    !model.contains_key(&key),
                    "{ctx}: insert_if_absent"
                );
                if inserted {
                    model.insert(key, (value, false));
                }
            }
            380..=499 => {
                // Expect the current value (or absence), or a wrong one.
                let cur = model.get(&key).map(|(v, _)| v.clone());
                let expected = match rng.below(3) {
                    0 => cur.clone(),
                    1 => None,
                    _ => Some(b"never stored".to_vec()),
                };
                let new = rng.chance(80).then(|| value.clone());
                let r = db
                    .compare_and_swap(&key, expected.as_deref(), new.as_deref())
                    .unwrap();
                if expected == cur {
                    assert!(r.is_ok(), "{ctx}: cas should swap");
                    match new {
                        Some(n) => {
                            model.insert(key, (n, false));
                        }
                        None => {
                            model.remove(&key);
                        }
                    }
                } else {
                    let failed = r.expect_err("cas should fail");
                    assert_eq!(
                        failed.current.map(|v| v.to_vec()),
                        cur,
                        "{ctx}: cas current"
                    );
                }
            }
            500..=599 => {
                let delta = rng.below(2001) as i64 - 1000;
                let r = db.increment(&key, delta);
                match model.get_mut(&key) {
                    None => {
                        assert_eq!(r.unwrap(), delta, "{ctx}: increment of absent");
                        model.insert(key, (delta.to_le_bytes().to_vec(), false));
                    }
                    Some((v, _)) if v.len() == 8 => {
                        let n = i64::from_le_bytes(v[..].try_into().unwrap()) + delta;
                        assert_eq!(r.unwrap(), n, "{ctx}: increment");
                        *v = n.to_le_bytes().to_vec();
                    }
                    Some((v, _)) => {
                        assert!(
                            matches!(r, Err(Error::ValueSize { expected: 8, found }) if found == v.len()),
                            "{ctx}: increment of a {}-byte value: {r:?}",
                            v.len()
                        );
                    }
                }
            }
            600..=679 => {
                let t = pick_ttl(&mut rng);
                let changed = db.expire(&key, t).unwrap();
                assert_eq!(changed, model.contains_key(&key), "{ctx}: expire");
                if let Some((v, _)) = model.remove(&key) {
                    put(&mut model, key, v, t);
                }
            }
            680..=759 => {
                let left = db.time_to_live(&key).unwrap();
                match model.get(&key) {
                    Some((_, true)) => {
                        let left = left.expect("an expiry");
                        assert!(
                            left <= HOUR && left > HOUR - Duration::from_secs(600),
                            "{ctx}"
                        );
                    }
                    _ => assert_eq!(left, None, "{ctx}: time_to_live"),
                }
            }
            760..=859 => {
                let t = pick_ttl(&mut rng);
                let mut ran = false;
                let got = db
                    .get_or_insert_with(&key, t, || {
                        ran = true;
                        value.clone()
                    })
                    .unwrap();
                match model.get(&key) {
                    Some((v, _)) => {
                        assert!(!ran, "{ctx}: computed a present key");
                        assert_eq!(&*got, &v[..], "{ctx}: get_or_insert_with");
                    }
                    None => {
                        assert!(ran, "{ctx}: did not compute");
                        assert_eq!(&*got, &value[..], "{ctx}: computed value");
                        put(&mut model, key, value, t);
                    }
                }
            }
            860..=979 => {
                let got = db.get(&key).unwrap();
                assert_eq!(
                    got.as_deref(),
                    model.get(&key).map(|(v, _)| &v[..]),
                    "{ctx}: get"
                );
            }
            980..=984 => {
                db.clear().unwrap();
                model.clear();
                check_all(&db, &model, &ctx);
            }
            985..=994 => {
                db.close().unwrap();
                db = open();
                check_all(&db, &model, &ctx);
            }
            _ => check_all(&db, &model, &ctx),
        }
    }
    check_all(&db, &model, "end");
    db.close().unwrap();
}

#[test]
fn cache_face_operations_match_the_model() {
    let s = seed("cache_face_operations_match_the_model");
    for i in 0..3 {
        run(s.wrapping_add(i), 4_000);
    }
}
