//! A damaged index is repaired from the log, which is the truth: a slot
//! that disagrees with the log (points outside the file, has the wrong tag,
//! or points at another key's record) never makes the store unusable.
//! The clean open samples only 64 slots, so the damage here is in a slot
//! past the sample.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use mapkv::testing::layout::{self, meta};
use mapkv::{Db, Error, Options};

const KEYS: u32 = 3_000;

/// Little-endian word at `at`.
fn le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// How to damage a live slot word.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Its offset points past the end of the file.
    Outside,
    /// Its tag is not its key's.
    WrongTag,
    /// It is a copy of another live slot: it points at another key's
    /// record (the key hashes elsewhere), and its own key is lost.
    OtherKey,
}

/// Damage the live slot of a cleanly closed store that comes `nth` in
/// slot order (past the 64 the open samples).
fn damage_slot(path: &Path, nth: usize, how: Damage) {
    let b = std::fs::read(path).unwrap();
    let copy = layout::META_COPIES
        .map(|m| m as usize)
        .into_iter()
        .max_by_key(|&m| le(&b, m + meta::META_SEQ))
        .unwrap();
    let desc = le(&b, copy + meta::INDEX_DESC);
    let start = (desc & !layout::INDEX_DESC_LOG2_MASK) as usize;
    let cap = 1usize << (desc & layout::INDEX_DESC_LOG2_MASK);
    let live: Vec<usize> = (0..cap)
        .map(|i| start + 8 * i)
        .filter(|&at| le(&b, at) > 1)
        .collect();
    assert!(live.len() > nth + 1, "{} live slots", live.len());
    let at = live[nth];
    let w = le(&b, at);
    let bad = match how {
        Damage::Outside => w | ((1 << 36) - 1),
        Damage::WrongTag => w ^ (1 << 63),
        Damage::OtherKey => le(&b, live[nth + 1]),
    };
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&bad.to_le_bytes(), at as u64).unwrap();
}

fn build(path: &Path) {
    let db = Db::open(path).unwrap();
    for i in 0..KEYS {
        db.insert(format!("key-{i}"), format!("value-{i}")).unwrap();
    }
    db.close().unwrap();
}

fn assert_all_there(db: &Db, what: &str) {
    assert_eq!(db.len(), KEYS as u64, "{what}");
    for i in 0..KEYS {
        assert_eq!(
            db.get(format!("key-{i}")).unwrap().as_deref(),
            Some(format!("value-{i}").as_bytes()),
            "{what}: key-{i}"
        );
    }
    let mut n = 0;
    for item in db.iter() {
        item.unwrap_or_else(|e| panic!("{what}: iter: {e}"));
        n += 1;
    }
    assert_eq!(n, KEYS, "{what}: iter count");
    db.check().unwrap_or_else(|e| panic!("{what}: check: {e}"));
}

const ALL: [Damage; 3] = [Damage::Outside, Damage::WrongTag, Damage::OtherKey];

/// Compaction meets the bad slot, rebuilds the index from the log and
/// compacts: the store works and checks out afterwards. (It used to fail
/// for good, and a slot with a wrong tag or another key's word made it
/// copy a stale or duplicate entry.)
#[test]
fn compaction_repairs_a_damaged_slot_and_succeeds() {
    for how in ALL {
        let (_d, path) = common::store();
        build(&path);
        damage_slot(&path, 500, how);
        let db = Db::open(&path).unwrap();
        assert!(db.check().is_err(), "{how:?}: check sees the damage");
        let r = db
            .compact()
            .unwrap_or_else(|e| panic!("{how:?}: compact: {e}"));
        assert_eq!(r.keys, KEYS as u64, "{how:?}");
        assert_all_there(&db, &format!("{how:?} after compaction"));
        db.close().unwrap();
        assert_all_there(&Db::open(&path).unwrap(), &format!("{how:?} reopened"));
    }
}

/// Iteration (what `mapkv dump` does) meets the bad slot and reports it;
/// the handle's next write rebuilds the index first; then iteration,
/// gets and check all work.
#[test]
fn the_next_write_repairs_what_a_read_met() {
    for how in [Damage::Outside, Damage::WrongTag] {
        let (_d, path) = common::store();
        build(&path);
        damage_slot(&path, 700, how);
        let db = Db::open(&path).unwrap();
        let errors = db.iter().filter(|r| r.is_err()).count();
        assert_eq!(errors, 1, "{how:?}: iteration reports the bad slot");
        db.insert("after", "repair").unwrap();
        db.remove("after").unwrap();
        assert_all_there(&db, &format!("{how:?} after the write"));
    }
}

/// A write that itself meets a bad slot (an overwrite of the key whose
/// slot points outside the file) repairs and succeeds.
#[test]
fn a_write_that_meets_a_bad_slot_repairs_and_succeeds() {
    let (_d, path) = common::store();
    build(&path);
    damage_slot(&path, 300, Damage::Outside);
    let db = Db::open(&path).unwrap();
    // Overwrite every key: one of them probes the bad slot.
    for i in 0..KEYS {
        db.insert(format!("key-{i}"), format!("value-{i}")).unwrap();
    }
    assert_all_there(&db, "after overwriting");
}

/// `Db::repair` rebuilds the index and says what it kept and what
/// disagreed; `check` says the log verifies and names the fix.
#[test]
fn repair_rebuilds_the_index_and_reports_it() {
    let (_d, path) = common::store();
    build(&path);
    damage_slot(&path, 1_000, Damage::OtherKey);
    let db = Db::open(&path).unwrap();
    match db.check() {
        Err(Error::Corrupted { what, .. }) => {
            assert!(what.contains("the log verifies"), "{what}")
        }
        other => panic!("check: {other:?}"),
    }
    let r = db.repair().unwrap();
    assert_eq!(r.keys, KEYS as u64);
    assert!(r.index_mismatches >= 1, "{r:?}");
    assert!(r.dropped.is_empty(), "{r:?}");
    assert!(r.live_bytes > 0);
    assert_all_there(&db, "after repair");
    // Nothing left to repair.
    assert_eq!(db.repair().unwrap().index_mismatches, 0);
    db.close().unwrap();
    assert_all_there(&Db::open(&path).unwrap(), "reopened");
}

/// A read-only handle that meets a bad slot gets `Corrupted` and writes
/// nothing; once a writer (another handle) repairs, its reads work.
#[test]
fn readers_get_an_error_until_a_writer_repairs() {
    let (_d, path) = common::store();
    build(&path);
    damage_slot(&path, 400, Damage::Outside);
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert!(ro.iter().any(|r| r.is_err()));
    assert!(matches!(ro.repair(), Err(Error::ReadOnly { .. })));
    let rw = Db::open(&path).unwrap();
    rw.repair().unwrap();
    assert_all_there(&ro, "read-only handle after the writer's repair");
}

/// A control block whose generation word holds the largest value (another
/// process wrote it, or damage) is repaired, not a panic: generations are
/// 16 bits and wrap. Found by the `control_words` fuzz target
/// (fuzz/regressions/control_words/generation-max-repair).
#[test]
fn a_generation_word_at_its_maximum_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gen.mapkv");
    build(&path);
    let db = Db::open(&path).unwrap();
    let other = Db::open(&path).unwrap(); // keeps the session live
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let word = |field: usize, v: u64| {
        f.write_all_at(&v.to_le_bytes(), layout::CONTROL_OFFSET + field as u64)
            .unwrap()
    };
    word(layout::control::GENERATION, u64::MAX);
    // An explicit repair rebuilds the index from the log.
    db.repair().unwrap();
    assert_all_there(&db, "after repair");
    // A writer that finds the writer word set repairs before it writes.
    word(layout::control::GENERATION, u64::MAX);
    word(layout::control::WRITER, 1);
    other.insert(b"after", b"1").unwrap();
    assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"1"[..]));
    other.remove(b"after").unwrap();
    assert_all_there(&other, "after the writer's repair");
}
