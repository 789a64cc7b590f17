//! `Db::check`: verify the whole store against itself.

use std::collections::{HashMap, HashSet};

use crate::engine;
use crate::engine::Store;
use crate::index::{self, Desc, Table};
use crate::log::record::record_len;
use crate::log::{Item, Scanner};
use crate::storage::ARENA_START;
use crate::{Db, Error, Result};

/// What [`Db::check`] verified.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("r.mapkv"))?;
/// db.insert(b"a", b"1")?;
/// db.insert(b"a", b"2")?;
/// db.remove(b"a")?;
/// db.insert(b"b", b"3")?;
/// let report = db.check()?;
/// assert_eq!(report.commits, 4);
/// assert_eq!(report.records, 4); // three puts and one delete
/// assert_eq!(report.live_keys, db.len());
/// assert_eq!(report.live_bytes, db.stats().live_bytes);
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Records (puts and deletes) whose checksums were verified.
    pub records: u64,
    /// Complete commits in the log.
    pub commits: u64,
    /// Index chunks in the log (the current table and old ones).
    pub index_chunks: u64,
    /// Live keys, as found by replaying the log, leaving out entries whose
    /// expiry has passed; equal to `Db::len` and to what `Db::iter`
    /// returns.
    pub live_keys: u64,
    /// Entries still stored whose expiry has passed (dropped by the next
    /// compaction or eviction).
    pub expired_keys: u64,
    /// Bytes of the records of stored entries (expired ones included).
    pub live_bytes: u64,
    /// End of the verified log.
    pub tail: u64,
}

impl CheckReport {
    fn empty(tail: u64) -> CheckReport {
        CheckReport {
            records: 0,
            commits: 0,
            index_chunks: 0,
            live_keys: 0,
            expired_keys: 0,
            live_bytes: 0,
            tail,
        }
    }
}

impl Db {
    /// Verify the store: every record in the log passes its checksums and
    /// sequence rules up to the tail, and the index holds exactly the latest
    /// record of every live key, reachable from the key's home slot, with
    /// the counters to match. Writers wait while it runs; readers do not.
    /// O(size of the log): one pass that looks each record's key up in the
    /// index (about 150 ns per record on a 1 M-key store), with memory for
    /// the removed keys only. If the index disagrees with the log, a second
    /// pass with a map of every live key names the first problem.
    ///
    /// # Errors
    /// [`Error::Corrupted`](crate::Error::Corrupted) naming the first
    /// problem and its offset.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("c.mapkv"))?;
    /// db.insert(b"k", b"v")?;
    /// let report = db.check()?;
    /// assert_eq!(report.live_keys, 1);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn check(&self) -> Result<CheckReport> {
        // No `write`: checking adds nothing to the log, so it must not
        // start a compaction or an eviction either.
        self.on_current(|inner| {
            if !inner.read_only() {
                let wr = inner.lock_writer()?;
                return check_state(inner, &wr.st);
            }
            // A read-only handle cannot stop writers in other processes:
            // check a snapshot, and start again if a commit landed meanwhile.
            // Moved by a compaction? Then `table` says so and the new file
            // is checked instead.
            inner.table()?;
            let c = inner.control()?;
            for _ in 0..20 {
                let (st, consistent) = c.snapshot(1000);
                let v = c.version();
                if !consistent || v % 2 == 1 {
                    std::thread::yield_now();
                    continue;
                }
                let res = check_state(inner, &st);
                if c.version() == v {
                    return res;
                }
            }
            Err(Error::Locked {
                path: inner.path.clone(),
                detail: "the store kept changing while a read-only handle checked it; \
                         check it from a read-write handle, which holds writers off",
            }
            .into())
        })
    }
}

fn check_state(inner: &Store, st: &crate::storage::control::State) -> engine::Result<CheckReport> {
    // Another process may have grown the file.
    let _ = inner.arena.refresh();
    let st = *st;
    let mut report = CheckReport::empty(st.tail);
    // One pass over the log verifies every item and asks the index where
    // each record's key lives (`ByIndex`). Only if the index disagrees is
    // the log replayed a second time into a map of every key, to name the
    // first problem exactly.
    let mut by_index = ByIndex::new(inner, &st);
    if by_index.table.is_none() {
        // No table to ask: the key-map check reports why.
        return check_by_map(inner, &st);
    }
    walk_log(inner, &st, &mut report, |r, key| by_index.record(r, key))?;
    if let Some(agreed) = by_index.finish() {
        report.live_bytes = agreed.live_bytes;
        report.expired_keys = agreed.expired;
        return counters_match(inner, &st, agreed.live, &mut report);
    }
    check_by_map(inner, &st)
}

/// The check that keeps a map of every live key: replay the log into the
/// map, then walk the index's slots against it. Slower than `ByIndex` and
/// memory for every live key, but it names exactly what is wrong.
fn check_by_map(inner: &Store, st: &crate::storage::control::State) -> engine::Result<CheckReport> {
    let mut report = CheckReport::empty(st.tail);
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    walk_log(inner, st, &mut report, |r, key| {
        if r.header.is_put() {
            latest.insert(key.to_vec(), r.off);
        } else {
            latest.remove(key);
        }
    })?;
    // The log verified: any disagreement from here on is the index's, which
    // a rebuild from the log repairs.
    check_index(inner, st, &latest, &mut report).map_err(|f| match f.into_error(&inner.path) {
        Error::Corrupted { path, offset, what } => Error::Corrupted {
            path,
            offset,
            what: format!("{what}; {INDEX_ONLY}"),
        },
        e => e,
    })?;
    counters_match(inner, st, latest.len() as u64, &mut report)
}

/// Verify the log up to the tail, counting items into `report` and
/// handing every record and its key to `each`, in log order.
fn walk_log(
    inner: &Store,
    st: &crate::storage::control::State,
    report: &mut CheckReport,
    mut each: impl FnMut(&crate::log::RecordRef, &[u8]),
) -> engine::Result<()> {
    let rec = inner.records();
    let mut key = Vec::new();
    let mut sc = Scanner::new(&inner.arena, inner.salt, ARENA_START, st.tail, None);
    while sc.pos() < st.tail {
        match sc.next_item() {
            Ok(Item::Commit { records, .. }) => {
                report.commits += 1;
                for r in &records {
                    report.records += 1;
                    rec.key_into(r.off, &r.header, &mut key)?;
                    each(r, &key);
                }
            }
            Ok(Item::Index { .. }) => report.index_chunks += 1,
            Err(stop) => {
                return Err(inner
                    .corrupt(stop.bad, format!("log check: {}", stop.why))
                    .into());
            }
        }
    }
    if sc.pos() != st.tail {
        return Err(inner
            .corrupt(sc.pos(), "the last log item runs past the tail")
            .into());
    }
    Ok(())
}

/// The control block's counters against what the log holds: `live` keys
/// and `report.live_bytes` bytes.
fn counters_match(
    inner: &Store,
    st: &crate::storage::control::State,
    live: u64,
    report: &mut CheckReport,
) -> engine::Result<CheckReport> {
    if st.live_keys != live || st.live_bytes != report.live_bytes {
        return Err(inner
            .corrupt(
                crate::storage::CONTROL_OFFSET,
                format!(
                    "counters say {} keys / {} bytes, the log {live} / {}",
                    st.live_keys, st.live_bytes, report.live_bytes
                ),
            )
            .into());
    }
    report.live_keys = live - report.expired_keys;
    Ok(report.clone())
}

/// The index checked against the log without a map of every key.
///
/// For each record of the log, in order, the index is asked where the
/// record's key lives. The answer `f` is the same for every record of one
/// key, and the index is right if and only if:
///
/// 1. `f` is never older than a record of its key (so if `f` is the record
///    itself, the record is its key's latest);
/// 2. a record that `f` names is a put;
/// 3. a key the index does not hold ends with a delete: its puts wait in
///    `unindexed` until a delete of the key takes them out;
/// 4. as many live slots as records named by `f` (each named record is
///    reachable from its key's home slot, by the lookup that found it; any
///    other live slot, a second one for a key, or one with another key's
///    tag, makes the counts differ).
///
/// Memory: one entry per key that was written and is not in the index
/// (removed keys), not one per live key.
struct ByIndex<'a> {
    inner: &'a Store,
    table: Option<Table<'a>>,
    rec: crate::log::read::Records<'a>,
    now: u64,
    /// Records that the index names (the live keys).
    named: u64,
    live_bytes: u64,
    expired: u64,
    unindexed: HashSet<Vec<u8>>,
}

/// What the log and the index agreed on.
struct Agreed {
    live: u64,
    live_bytes: u64,
    expired: u64,
}

impl<'a> ByIndex<'a> {
    fn new(inner: &'a Store, st: &crate::storage::control::State) -> ByIndex<'a> {
        ByIndex {
            inner,
            table: inner.table_at(st.index_desc).ok().map(|(t, _)| t),
            rec: inner.records(),
            now: crate::log::read::now_ms(),
            named: 0,
            live_bytes: 0,
            expired: 0,
            unindexed: HashSet::new(),
        }
    }

    fn record(&mut self, r: &crate::log::RecordRef, key: &[u8]) {
        let Some(t) = self.table else { return };
        let rec = &self.rec;
        let hash = index::hash(self.inner.hash_seed, key);
        let found = t.find(hash, |o| -> engine::Result<bool> {
            Ok(rec.key_eq(o, key)?)
        });
        let agrees = match found {
            // Damage on the probe path: the slow path names it.
            Err(_) => false,
            Ok(None) => {
                if r.header.is_put() {
                    self.unindexed.insert(key.to_vec());
                } else {
                    self.unindexed.remove(key);
                }
                true
            }
            Ok(Some((_, w))) => {
                let f = index::word_offset(w);
                if f == r.off {
                    self.named += 1;
                    self.live_bytes = self.live_bytes.saturating_add(record_len(
                        r.header.key_len as usize,
                        r.header.val_len as usize,
                    ));
                    match rec.expired_at(r.off, &r.header, self.now) {
                        Ok(true) => self.expired += 1,
                        Ok(false) => {}
                        Err(_) => self.table = None,
                    }
                    r.header.is_put()
                } else {
                    f > r.off
                }
            }
        };
        if !agrees {
            self.table = None;
        }
    }

    /// `None` if the index disagrees with the log anywhere.
    fn finish(self) -> Option<Agreed> {
        let t = self.table?;
        if !self.unindexed.is_empty() || t.live_words().count() as u64 != self.named {
            return None;
        }
        Some(Agreed {
            live: self.named,
            live_bytes: self.live_bytes,
            expired: self.expired,
        })
    }
}

/// The end of a `check` error whose log verified but whose index does not
/// agree with it (`mapkv check` looks for it to suggest `mapkv repair`).
pub(crate) const INDEX_ONLY: &str =
    "the log verifies: rebuilding the index from it repairs this (Db::repair, mapkv repair)";

fn check_index(
    inner: &Store,
    st: &crate::storage::control::State,
    latest: &HashMap<Vec<u8>, u64>,
    report: &mut CheckReport,
) -> engine::Result<()> {
    let (t, d) = inner.table_at(st.index_desc)?;
    let rec = inner.records();
    let now = crate::log::read::now_ms();
    let d: Desc = d;
    let mut seen = 0u64;
    let mut offsets = std::collections::HashSet::new();
    for word in t.live_words() {
        let off = index::word_offset(word);
        if !offsets.insert(off) {
            return Err(inner
                .corrupt(d.start, format!("two slots point at the record at {off}"))
                .into());
        }
        let h = rec.header(off)?;
        let key = rec.key(off, &h)?;
        if latest.get(&key) != Some(&off) {
            return Err(inner
                .corrupt(
                    off,
                    "index slot points at a record that is not the latest of a live key",
                )
                .into());
        }
        let hash = index::hash(inner.hash_seed, &key);
        if !index::same_tag(word, hash) {
            return Err(inner
                .corrupt(d.start, format!("slot tag does not match the key at {off}"))
                .into());
        }
        let found = t
            .find(hash, |o| -> engine::Result<bool> {
                Ok(rec.key_eq(o, &key)?)
            })
            .map_err(|f| inner.locate(f, d.start))?;
        // Compare where the slots point: readers of a cache change the hit
        // count bits of a word at any time, without any lock.
        if found.map(|(_, w)| index::word_offset(w)) != Some(off) {
            return Err(inner
                .corrupt(
                    d.start,
                    format!("key at {off} is not reachable from its home slot"),
                )
                .into());
        }
        report.live_bytes = report
            .live_bytes
            .saturating_add(record_len(h.key_len as usize, h.val_len as usize));
        if rec.expired_at(off, &h, now)? {
            report.expired_keys += 1;
        }
        seen += 1;
    }
    let stored = latest.len() as u64;
    if seen != stored {
        return Err(inner
            .corrupt(
                d.start,
                format!("index holds {seen} live keys, the log {stored}"),
            )
            .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use proptest::prelude::*;

    use super::*;
    use crate::index::{EMPTY, TOMBSTONE};

    /// Damage to one or two slots of the index (indices are taken modulo
    /// the live or empty slots there are).
    #[derive(Clone, Debug)]
    enum Damage {
        /// A live slot emptied, or made a tombstone: its key is lost.
        Empty(u16),
        Tombstone(u16),
        /// A live slot's tag no longer its key's.
        FlipTag(u16, u8),
        /// A live slot's offset past the end of the file.
        Outside(u16),
        /// A live slot overwritten with another's word.
        CopyLive(u16, u16),
        /// A live word copied into an empty slot (a second slot for a key).
        Duplicate(u16, u16),
        /// A live slot pointed at an older record of its key.
        Stale(u16),
        /// A removed key's last put put back into the index, on its probe
        /// path.
        Resurrect(u16),
        /// Two live slots swapped.
        Swap(u16, u16),
        /// Any word in any slot.
        Word(u16, u64),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<u16>().prop_map(Damage::Empty),
            any::<u16>().prop_map(Damage::Tombstone),
            (any::<u16>(), 0u8..28).prop_map(|(a, b)| Damage::FlipTag(a, b)),
            any::<u16>().prop_map(Damage::Outside),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Damage::CopyLive(a, b)),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Damage::Duplicate(a, b)),
            any::<u16>().prop_map(Damage::Stale),
            any::<u16>().prop_map(Damage::Resurrect),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Damage::Swap(a, b)),
            (any::<u16>(), any::<u64>()).prop_map(|(a, b)| Damage::Word(a, b)),
        ]
    }

    /// Every record of the log: (key, offset, is a put), in log order.
    fn log_records(
        inner: &Store,
        st: &crate::storage::control::State,
    ) -> Vec<(Vec<u8>, u64, bool)> {
        let mut all = Vec::new();
        let mut report = CheckReport::empty(st.tail);
        walk_log(inner, st, &mut report, |r, key| {
            all.push((key.to_vec(), r.off, r.header.is_put()))
        })
        .unwrap();
        all
    }

    /// Apply `d` to the index of `inner`. Returns the slots it changed, and
    /// the slots it read or wrote (its source and its target).
    fn apply(
        inner: &Store,
        st: &crate::storage::control::State,
        d: &Damage,
    ) -> (Vec<usize>, Vec<usize>) {
        let (_, desc) = inner.table_at(st.index_desc).unwrap();
        let slots = inner.arena.atomics(desc.start, desc.capacity()).unwrap();
        let word = |i: usize| slots[i].load(Ordering::Relaxed);
        let set = |i: usize, w: u64| slots[i].store(w, Ordering::Relaxed);
        let live: Vec<usize> = (0..slots.len())
            .filter(|&i| index::is_live(word(i)))
            .collect();
        let empty: Vec<usize> = (0..slots.len()).filter(|&i| word(i) == EMPTY).collect();
        let pick = |v: &[usize], n: u16| (!v.is_empty()).then(|| v[n as usize % v.len()]);
        let records = log_records(inner, st);
        let before: Vec<u64> = slots.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        let mut involved = Vec::new();
        match *d {
            Damage::Empty(a) | Damage::Tombstone(a) => {
                if let Some(i) = pick(&live, a) {
                    involved.push(i);
                    set(
                        i,
                        if matches!(d, Damage::Empty(_)) {
                            EMPTY
                        } else {
                            TOMBSTONE
                        },
                    );
                }
            }
            Damage::FlipTag(a, bit) => {
                if let Some(i) = pick(&live, a) {
                    set(i, word(i) ^ (1 << (63 - bit as u32)));
                }
            }
            Damage::Outside(a) => {
                if let Some(i) = pick(&live, a) {
                    involved.push(i);
                    set(i, word(i) | ((1 << 36) - 1));
                }
            }
            Damage::CopyLive(a, b) => {
                if let (Some(i), Some(j)) = (pick(&live, a), pick(&live, b)) {
                    set(i, word(j));
                }
            }
            Damage::Duplicate(a, b) => {
                if let (Some(i), Some(j)) = (pick(&live, a), pick(&empty, b)) {
                    involved.extend([i, j]);
                    set(j, word(i));
                }
            }
            Damage::Swap(a, b) => {
                if let (Some(i), Some(j)) = (pick(&live, a), pick(&live, b)) {
                    let (wi, wj) = (word(i), word(j));
                    set(i, wj);
                    set(j, wi);
                }
            }
            Damage::Stale(a) => {
                if let Some(i) = pick(&live, a) {
                    let w = word(i);
                    let off = index::word_offset(w);
                    // (An earlier damage may have left the slot pointing
                    // at no record.)
                    if let Some((key, _, _)) = records.iter().find(|r| r.1 == off) {
                        let older = records.iter().find(|r| &r.0 == key && r.2 && r.1 < off);
                        if let Some(old) = older {
                            let h = index::hash(inner.hash_seed, key);
                            set(i, index::make_word(h, old.1));
                        }
                    }
                }
            }
            Damage::Resurrect(a) => {
                // Keys whose last record is a delete, with their last put.
                let mut last: HashMap<&[u8], (u64, bool, Option<u64>)> = HashMap::new();
                for (k, off, put) in &records {
                    let e = last.entry(k).or_insert((0, false, None));
                    *e = (*off, *put, if *put { Some(*off) } else { e.2 });
                }
                let mut removed: Vec<(&[u8], u64)> = last
                    .into_iter()
                    .filter_map(|(k, (_, put, p))| (!put).then_some((k, p?)))
                    .collect();
                removed.sort();
                if !removed.is_empty() {
                    let (key, put) = removed[a as usize % removed.len()];
                    let h = index::hash(inner.hash_seed, key);
                    let (t, _) = inner.table_at(st.index_desc).unwrap();
                    let mut i = t.home(h);
                    while index::is_live(word(i)) {
                        i = (i + 1) % slots.len();
                    }
                    involved.push(i);
                    set(i, index::make_word(h, put));
                }
            }
            Damage::Word(a, w) => set(a as usize % slots.len(), w),
        }
        let changed = (0..slots.len()).filter(|&i| word(i) != before[i]).collect();
        (changed, involved)
    }

    fn both(
        db: &Db,
        damage: &[Damage],
    ) -> (
        bool,
        Result<CheckReport, String>,
        Result<CheckReport, String>,
    ) {
        db.on_current(|inner| {
            let wr = inner.lock_writer()?;
            let (_, desc) = inner.table_at(wr.st.index_desc).unwrap();
            let slots = inner.arena.atomics(desc.start, desc.capacity()).unwrap();
            let words =
                || -> Vec<u64> { slots.iter().map(|s| s.load(Ordering::Relaxed)).collect() };
            let before = words();
            let effects: Vec<_> = damage.iter().map(|d| apply(inner, &wr.st, d)).collect();
            let after = words();
            // Whatever did it, a live word gone from the index loses its key.
            let key_lost = (0..before.len()).any(|i| {
                index::is_live(before[i])
                    && (after[i] == EMPTY || after[i] == TOMBSTONE)
                    && !after.contains(&before[i])
            });
            // Damage that changes a live slot's meaning must be caught
            // (swapping two slots, or a word equal to the old one, may not
            // change anything a reader sees) unless another damage touched
            // the same slots (an `Empty` may remove the word a `Word` just
            // wrote into an empty slot, leaving the index as it was).
            let must_catch =
                damage
                    .iter()
                    .zip(&effects)
                    .enumerate()
                    .any(|(n, (d, (changed, involved)))| {
                        matches!(
                            d,
                            Damage::Empty(_)
                                | Damage::Outside(_)
                                | Damage::Duplicate(..)
                                | Damage::Resurrect(_)
                        ) && !changed.is_empty()
                            && effects.iter().enumerate().all(|(m, (other, _))| {
                                m == n || involved.iter().all(|i| !other.contains(i))
                            })
                    });
            let text = |f: engine::Failure| f.into_error(&inner.path).to_string();
            let fast = check_state(inner, &wr.st).map_err(text);
            let slow = check_by_map(inner, &wr.st).map_err(text);
            Ok((must_catch || key_lost, fast, slow))
        })
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The one-pass check and the key-map check reach the same verdict
        /// (and the same report) on any store with any damage to its
        /// index, and the undamaged store passes both.
        #[test]
        fn one_pass_and_key_map_checks_agree(
            ops in prop::collection::vec((0u16..160, any::<bool>(), 0usize..40), 1..400),
            damage in prop::collection::vec(damage(), 0..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::Options::new()
                .initial_size(64 << 10)
                .open(dir.path().join("c.mapkv"))
                .unwrap();
            for (k, put, len) in &ops {
                let key = format!("key-{k}");
                if *put {
                    db.insert(&key, vec![*k as u8; *len]).unwrap();
                } else {
                    db.remove(&key).unwrap();
                }
            }
            let (_, fast, slow) = both(&db, &[]);
            prop_assert!(fast.is_ok(), "intact store: {fast:?}");
            prop_assert_eq!(&fast, &slow);
            let (must_catch, fast, slow) = both(&db, &damage);
            prop_assert_eq!(fast.is_ok(), slow.is_ok(), "fast {:?}, slow {:?}", fast, slow);
            if fast.is_ok() {
                prop_assert_eq!(&fast, &slow);
            }
            if let Err(e) = &fast {
                // The error is the key-map check's, naming the problem.
                prop_assert_eq!(Some(e), slow.as_ref().err());
            }
            if must_catch {
                prop_assert!(fast.is_err(), "{damage:?} went unnoticed");
            }
        }
    }
}
