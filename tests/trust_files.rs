//! File-level trust (issue 11): sparse files and SIGBUS, who can open a
//! store after compaction, symlinks and hard links, squatted empty files,
//! open never looping, and options that never panic.

mod common;

use std::time::Duration;

use mapkv::{Db, Options};

/// Every option at its extremes: opening a new store, opening it again
/// while it is open (the joining path), writing, growing, compacting and
/// closing either work or return an `Err`; nothing panics.
#[test]
fn extreme_options_never_panic() {
    type Set = fn(Options) -> Options;
    // Sizes that would really allocate gigabytes are paired with a small
    // `max_size`: the arithmetic is the same, the disk (shared with other
    // builds) is spared.
    const SMALL: u64 = 64 << 20;
    let table: &[(&str, Set)] = &[
        ("initial_size(0)", |o| o.initial_size(0)),
        ("initial_size(u64::MAX)", |o| o.initial_size(u64::MAX).max_size(SMALL)),
        ("initial_size(1 << 63)", |o| o.initial_size(1 << 63).max_size(SMALL)),
        ("growth_step(0)", |o| o.growth_step(0)),
        ("growth_step(u64::MAX)", |o| o.growth_step(u64::MAX)),
        ("max_size(0)", |o| o.max_size(0)),
        ("max_size(u64::MAX)", |o| o.max_size(u64::MAX)),
        ("map_reserve(0)", |o| o.map_reserve(0)),
        ("map_reserve(u64::MAX)", |o| o.map_reserve(u64::MAX)),
        ("map_reserve(1 << 62)", |o| o.map_reserve(1 << 62)),
        ("capacity(0)", |o| o.capacity(0)),
        ("capacity(u64::MAX)", |o| o.capacity(u64::MAX)),
        ("expected_keys(u64::MAX)", |o| o.expected_keys(u64::MAX).max_size(SMALL)),
        ("expected_keys(1 << 40)", |o| o.expected_keys(1 << 40).max_size(SMALL)),
        ("evict_fraction(NaN)", |o| {
            o.capacity(1 << 20).evict_fraction(f64::NAN)
        }),
        ("evict_fraction(inf)", |o| {
            o.capacity(1 << 20).evict_fraction(f64::INFINITY)
        }),
        ("evict_fraction(-inf)", |o| {
            o.capacity(1 << 20).evict_fraction(f64::NEG_INFINITY)
        }),
        ("auto_compact(NaN)", |o| o.auto_compact(Some(f64::NAN))),
        ("auto_compact(inf)", |o| o.auto_compact(Some(f64::INFINITY))),
        ("lock_timeout(Duration::MAX)", |o| {
            o.lock_timeout(Duration::MAX)
        }),
        ("lock_timeout(0)", |o| o.lock_timeout(Duration::ZERO)),
        ("mode(0)", |o| o.mode(0)),
        ("mode(u32::MAX)", |o| o.mode(u32::MAX)),
        ("everything at once", |o| {
            o.initial_size(u64::MAX)
                .growth_step(u64::MAX)
                .map_reserve(u64::MAX)
                .lock_timeout(Duration::MAX)
                .capacity(u64::MAX)
                .evict_fraction(f64::NAN)
                .auto_compact(Some(f64::NAN))
                .mode(u32::MAX)
                .max_size(SMALL)
        }),
    ];
    let mut failures = Vec::new();
    for (name, set) in table {
        let (_dir, path) = common::store();
        let run = std::panic::catch_unwind(|| -> Result<(), mapkv::Error> {
            let opts = set(Options::new());
            let db = opts.clone().open(&path)?;
            // A second handle joins the open store (the shared open lock
            // and the writer lock use the timeout).
            let other = opts.clone().open(&path)?;
            for i in 0..2_000u32 {
                db.insert(i.to_le_bytes(), [1u8; 300])?;
            }
            other.insert(b"other", b"v")?;
            assert_eq!(db.get(b"other")?.as_deref(), Some(&b"v"[..]));
            db.compact()?;
            drop(other);
            db.close()?;
            // And opening the existing store with the same options.
            let again = opts.open(&path)?;
            assert_eq!(again.get(b"other")?.as_deref(), Some(&b"v"[..]));
            again.close()
        });
        match run {
            Ok(r) => eprintln!("{name}: {:?}", r.map_err(|e| e.to_string())),
            Err(_) => failures.push(*name),
        }
    }
    assert!(failures.is_empty(), "these options panicked: {failures:?}");
}
