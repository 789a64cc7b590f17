//! `Db::check`: verify the whole store against itself.

use std::collections::HashMap;

use crate::engine;
use crate::engine::Store;
use crate::index::{self, Desc};
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

impl Db {
    /// Verify the store: every record in the log passes its checksums and
    /// sequence rules up to the tail, and the index holds exactly the latest
    /// record of every live key, reachable from the key's home slot, with
    /// the counters to match. Writers wait while it runs; readers do not.
    /// O(size of the log), and memory for one entry per live key.
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
    let mut report = CheckReport {
        records: 0,
        commits: 0,
        index_chunks: 0,
        live_keys: 0,
        expired_keys: 0,
        live_bytes: 0,
        tail: st.tail,
    };
    // Replay the log: the latest record of every live key.
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    let rec = inner.records();
    let mut sc = Scanner::new(&inner.arena, inner.salt, ARENA_START, st.tail, None);
    while sc.pos() < st.tail {
        match sc.next_item() {
            Ok(Item::Commit { records, .. }) => {
                report.commits += 1;
                for r in records {
                    report.records += 1;
                    let key = rec.key(r.off, &r.header)?;
                    if r.header.is_put() {
                        latest.insert(key, r.off);
                    } else {
                        latest.remove(&key);
                    }
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
    // The index must hold exactly those records. The log verified: any
    // disagreement from here on is the index's, which a rebuild from the
    // log repairs.
    check_index(inner, &st, &latest, &mut report).map_err(|f| match f.into_error(&inner.path) {
        Error::Corrupted { path, offset, what } => Error::Corrupted {
            path,
            offset,
            what: format!("{what}; {INDEX_ONLY}"),
        },
        e => e,
    })?;
    Ok(report)
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
    if st.live_keys != stored || st.live_bytes != report.live_bytes {
        return Err(inner
            .corrupt(
                crate::storage::CONTROL_OFFSET,
                format!(
                    "counters say {} keys / {} bytes, the log {stored} / {}",
                    st.live_keys, st.live_bytes, report.live_bytes
                ),
            )
            .into());
    }
    report.live_keys = stored - report.expired_keys;
    Ok(())
}
