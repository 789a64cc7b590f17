//! Index repair: rebuild the slot table from the log, which is the truth.
//!
//! The index is an accelerator. A slot that disagrees with the log (a wrong
//! tag, an offset outside the file or at something that is not the latest
//! record of its key, a record that fails its checksum) must never make the
//! store unusable while the log verifies. A writer that meets one (a write,
//! a compaction or eviction) rebuilds the index from the log and tries once
//! more; a read that meets one reports `Error::Corrupted` and marks the
//! handle, and the handle's next write repairs first. `Db::repair` (and
//! `mapkv repair`) does it on demand.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::db::Inner;
use crate::index;
use crate::recovery;
use crate::{Db, Error, Result};

/// What [`Db::repair`] did.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("rep.mapkv"))?;
/// db.insert(b"k", b"v")?;
/// let r = db.repair()?;
/// assert_eq!((r.keys, r.index_mismatches), (1, 0));
/// assert!(r.dropped.is_empty());
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Live keys kept (found by replaying the log).
    pub keys: u64,
    /// Bytes of their records.
    pub live_bytes: u64,
    /// End of the verified log after the repair (the new index table sits
    /// there).
    pub tail: u64,
    /// Slots of the old index that disagreed with the log (pointing at
    /// something else than the latest record of a live key, or with the
    /// wrong tag), plus live keys the old index had lost.
    pub index_mismatches: u64,
    /// Damaged log items that were left out: commits past the last one
    /// that verifies, which the control block said were published (none
    /// below the durable tail: damage there fails the repair instead).
    pub dropped: Vec<Dropped>,
}

/// A damaged log item that a repair left out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// File offset of the damaged record or header.
    pub offset: u64,
    /// What is wrong with it.
    pub what: String,
}

impl Db {
    /// Rebuild the index from the log. The log is verified record by
    /// record (as an open after an OS crash does); the new slot table is
    /// written at the end of the log and replaces the old one at once, so
    /// readers in every process keep reading throughout. Writers wait.
    ///
    /// Writers call this by themselves when an operation meets a slot that
    /// disagrees with the log; call it directly after [`Db::check`]
    /// reported a damaged index over a log that verifies.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a read-only handle; [`Error::Corrupted`] if
    /// the log itself is damaged below its durable tail (nothing changes
    /// then).
    pub fn repair(&self) -> Result<RepairReport> {
        let r = self.following(|i| {
            // A handle poisoned by a failed index update may repair: that
            // is what the rebuild fixes. (One poisoned by a failed sync
            // may not.)
            if !i.poisoned_by_index() {
                i.check_writable()?;
            } else if i.read_only {
                return Err(Error::ReadOnly {
                    path: i.path.clone(),
                });
            }
            let r = repair_index(i)?;
            i.unpoison_index();
            Ok(r)
        });
        if r.is_ok() {
            self.shared.index_suspect.store(false, Ordering::Release);
        }
        r
    }

    /// A read or write through this handle met damage (`e`): remember that
    /// the index may disagree with the log, so that the next write repairs
    /// it first. Returns `e`. Out of line: reads only come here on errors.
    #[cold]
    #[inline(never)]
    pub(crate) fn note_damage(&self, e: Error) -> Error {
        if matches!(e, Error::Corrupted { .. }) {
            self.shared.index_suspect.store(true, Ordering::Release);
        }
        e
    }

    /// Before a write: if a read met damage, repair first (errors are left
    /// for the write to meet).
    pub(crate) fn repair_if_suspect(&self) {
        if self.shared.index_suspect.load(Ordering::Acquire) && !self.shared.opts.read_only {
            let _ = self.repair();
        }
    }

    /// A write or compaction failed with `e`: if it is damage and this
    /// handle may write, rebuild the index from the log. Returns whether
    /// the operation should run again.
    pub(crate) fn repair_after(&self, e: &Error) -> bool {
        matches!(e, Error::Corrupted { .. }) && !self.shared.opts.read_only && self.repair().is_ok()
    }
}

/// Rebuild the index of a live store from its log, with the writer lock
/// held, into a new table (readers in other processes may be reading any
/// old one).
pub(crate) fn repair_index(inner: &Inner) -> Result<RepairReport> {
    let mut g = inner.lock_writer()?;
    let c = inner.control()?;
    let _ = inner.arena.refresh();
    let meta = recovery::durable_meta(inner)?;
    let scanned = recovery::scan_log(inner, &meta)?;
    // What the old table says, compared with the log.
    let mut latest: HashMap<u64, u64> = HashMap::new();
    for w in &scanned.heap {
        let w = w.load(Ordering::Relaxed);
        if index::is_live(w) {
            latest.insert(index::word_offset(w), w);
        }
    }
    // Each record of the log may be matched by one slot only: a second
    // slot for it is a mismatch too, and the records left unmatched are
    // live keys the old index had lost.
    let mut mismatches = 0u64;
    if let Ok((t, _)) = inner.table_at(g.st.index_desc) {
        for w in t.live_words() {
            let off = index::word_offset(w);
            match latest.get(&off) {
                Some(&l) if index::same_tag(w, l) => {
                    latest.remove(&off);
                }
                _ => mismatches += 1,
            }
        }
    }
    mismatches += latest.len() as u64;
    let mut dropped = Vec::new();
    let stop = scanned.stop;
    if stop.at < g.st.tail && stop.at < inner.arena.len() {
        dropped.push(Dropped {
            offset: stop.bad,
            what: format!(
                "{} (the log ends at {}; the store said {})",
                stop.why, stop.at, g.st.tail
            ),
        });
    }
    let (old, consistent) = c.snapshot(1);
    let generation = if consistent {
        old.generation.max(scanned.st.generation)
    } else {
        scanned.st.generation
    };
    {
        let _r = inner.recovering_guard();
        recovery::mark_changing(inner);
        recovery::install(inner, &mut g, scanned, false)?;
    }
    g.st.generation = (g.st.generation.max(generation) + 1) & 0xffff;
    if g.dur.tail > g.st.tail {
        g.dur.tail = meta.tail;
        g.dur.seq_gen = meta.seq_gen;
    }
    recovery::publish(inner, &g);
    inner.write_meta(&mut g, 0, true)?;
    Ok(RepairReport {
        keys: g.st.live_keys,
        live_bytes: g.st.live_bytes,
        tail: g.st.tail,
        index_mismatches: mismatches,
        dropped,
    })
}
