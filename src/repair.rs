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

use std::sync::atomic::Ordering;

use crate::engine;
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
        let r = self.on_current(|i| {
            // A handle poisoned by a failed index update may repair: that
            // is what the rebuild fixes. (One poisoned by a failed sync
            // may not.)
            if !i.poisoned_by_index() {
                i.check_writable()?;
            } else if i.read_only() {
                return Err(Error::ReadOnly {
                    path: i.path.clone(),
                }
                .into());
            }
            let r = engine::rebuild_index(i)?;
            i.unpoison_index();
            Ok(RepairReport {
                keys: r.keys,
                live_bytes: r.live_bytes,
                tail: r.tail,
                index_mismatches: r.index_mismatches,
                dropped: r
                    .log_ends_early
                    .map(|(stop, said)| Dropped {
                        offset: stop.bad,
                        what: format!(
                            "{} (the log ends at {}; the store said {said})",
                            stop.why, stop.at
                        ),
                    })
                    .into_iter()
                    .collect(),
            })
        });
        if r.is_ok() {
            self.handle.index_suspect.store(false, Ordering::Release);
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
            self.handle.index_suspect.store(true, Ordering::Release);
        }
        e
    }

    /// Before a write: if a read met damage, repair first (errors are left
    /// for the write to meet).
    pub(crate) fn repair_if_suspect(&self) {
        if self.handle.index_suspect.load(Ordering::Acquire) && !self.handle.opts.read_only {
            let _ = self.repair();
        }
    }

    /// A write or compaction failed with `e`: if it is damage and this
    /// handle may write, rebuild the index from the log. Returns whether
    /// the operation should run again.
    pub(crate) fn repair_after(&self, e: &Error) -> bool {
        matches!(e, Error::Corrupted { .. }) && !self.handle.opts.read_only && self.repair().is_ok()
    }
}
