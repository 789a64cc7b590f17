//! The engine: one open store file and everything that reads and writes
//! it. `Db` (src/db.rs) is the public handle over it; the features
//! (compaction, cache, checks, the change feed) build on it; below it are
//! the log, the index and the storage.
//!
//! | file | what |
//! | --- | --- |
//! | mod.rs | [`Store`]: identity, arena, mode, poison, clean close on drop |
//! | writer.rs | the writer lock handover and the writer's state |
//! | read.rs | the read path: table descriptor, lookup, fetch |
//! | commit.rs | operations, commit, prefetch |
//! | apply.rs | index upkeep shared by commit, replay and rebuild |
//! | grow.rs | growth policy, size limit, capacity, counters from the file |
//! | durable.rs | syncing the log, meta writes, clean close, trim |
//! | open.rs | create, validate, lock, join or start a session |
//! | recover.rs | replay and rebuild (the index brought in line with the log) |

mod apply;
mod claim;
mod commit;
mod durable;
mod grow;
mod open;
mod read;
mod recover;
mod scan;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::log::read::Records;
use crate::storage::control::Control;
use crate::storage::file::OpenLock;
use crate::storage::mapping::{Arena, MapMode, OutOfBounds};
use crate::storage::CONTROL_OFFSET;
use crate::Error;

pub(crate) use crate::error::Failure;
pub(crate) use commit::{check_key, Op};
pub(crate) use grow::{bounded, Growth, MIN_RECORD_LEN};
pub(crate) use open::resolve;
pub(crate) use recover::rebuild_index;
pub use recover::OpenKind;
pub(crate) use scan::{LogScan, Seen, Step};
pub(crate) use writer::Writer;

/// The engine's results: an [`Error`], or a [`Failure`] signal for the
/// `Db` layer (moved, full).
pub(crate) type Result<T, E = Failure> = std::result::Result<T, E>;

/// Whether a handle may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Writes, under the cross-process writer lock, on a shared mapping.
    ReadWrite,
    /// Never writes the file (the kernel holds it to that: the file is
    /// opened read-only), or writes only private memory (recovery of a
    /// store that needs it, in a private mapping).
    ReadOnly,
}

/// What the store is, as this handle found it at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// No capacity: the file grows as needed.
    Database,
    /// A capacity bounds the file; writes evict. `counts_hits`: reads
    /// mark hits in the slots (for eviction's second chance), which only a
    /// handle that may write the mapping does.
    Cache { counts_hits: bool },
}

/// One open store file. Cheap to share (`Arc`); clones of a `Db` share
/// one, and a compaction replaces it with the store in the new file.
pub(crate) struct Store {
    /// The file's path (resolved: the real file, symlinks followed).
    pub(crate) path: PathBuf,
    pub(crate) arena: Arena,
    /// The key hash's seed (random per store).
    pub(crate) hash_seed: u64,
    /// The initial value of every CRC of this store (random per store).
    pub(crate) salt: u32,
    access: Access,
    role: Role,
    limits: grow::Limits,
    writer: Mutex<Writer>,
    /// This process's id, stored in the control block while writing (for
    /// the error messages of writers that time out waiting).
    pid: u64,
    /// How long a wait for a lock may last.
    pub(crate) lock_timeout: std::time::Duration,
    /// How this handle holds the open lock: exclusively only between a
    /// sole writer's open and its stepping down, and at a close that finds
    /// it alone.
    open_lock: Mutex<OpenLock>,
    poison: Poison,
    /// Cache mode: reads through this handle not yet added to the store's
    /// counters.
    hits: read::HitCounters,
    /// Single-flight claims this process holds (see claim.rs).
    claims: Mutex<claim::Claims>,
    /// Closed (by `close_clean`), or never to be closed as ours: a
    /// compaction finished this file and moved the store on.
    closed: AtomicBool,
    opened: OpenKind,
    /// Device and inode of the file: tells whether the path still names it.
    pub(crate) file_id: (u64, u64),
    /// The meta's random file nonce: with `file_id`, names this file even
    /// after its inode number is reused by a later file.
    pub(crate) file_nonce: u32,
}

/// Why a handle refuses writes.
#[derive(Clone, Debug)]
enum PoisonCause {
    /// An msync or fsync failed: the durable state of the file is unknown.
    Sync(String),
    /// An index update failed midway: a slot disagrees with the log.
    /// Rebuilding the index from the log lifts it.
    IndexUpdate(String),
}

/// A poison, once set, makes every write of the handle fail.
#[derive(Default)]
struct Poison {
    /// Set with the cause (checked on every write without a lock).
    set: AtomicBool,
    cause: Mutex<Option<PoisonCause>>,
}

impl Store {
    #[cold]
    pub(crate) fn corrupt(&self, offset: u64, what: impl Into<String>) -> Error {
        Error::Corrupted {
            path: self.path.clone(),
            offset,
            what: what.into(),
        }
    }

    /// An index table without an empty slot, located at the table.
    pub(crate) fn locate(&self, f: Failure, table: u64) -> Failure {
        match f {
            Failure::TableFull => self.corrupt(table, "index table has no empty slot").into(),
            f => f,
        }
    }

    /// The record reader of this file.
    #[inline]
    pub(crate) fn records(&self) -> Records<'_> {
        Records::new(&self.arena, self.salt, &self.path)
    }

    pub(crate) fn control(&self) -> Result<Control<'_>, Error> {
        self.arena
            .control()
            .map_err(|_| self.corrupt(CONTROL_OFFSET, "control block outside the file"))
    }

    pub(crate) fn read_only(&self) -> bool {
        self.access == Access::ReadOnly
    }

    pub(crate) fn is_cache(&self) -> bool {
        matches!(self.role, Role::Cache { .. })
    }

    fn counts_hits(&self) -> bool {
        self.role == Role::Cache { counts_hits: true }
    }

    /// How the open found the store.
    pub(crate) fn opened(&self) -> OpenKind {
        self.opened
    }

    /// Whether the store's path now names a different file than ours.
    pub(crate) fn path_names_other_file(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).is_ok_and(|md| (md.dev(), md.ino()) != self.file_id)
    }

    /// Tell waiters in every process that a commit landed.
    pub(crate) fn notify(&self) {
        let Ok(c) = self.control() else {
            return;
        };
        let word = c.notify_word();
        word.fetch_add(1, Ordering::SeqCst);
        if c.waiters().load(Ordering::SeqCst) > 0 {
            crate::storage::lock::futex_wake_all(word);
        }
    }

    /// Whether this is still the store's file: no compaction has moved it
    /// (or is moving it) to a new file. One load of a word on the control
    /// block's first cache line, which every read touches anyway.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        self.arena.mode() == MapMode::Private
            || self
                .control()
                .is_ok_and(|c| c.magic() == crate::storage::control::CONTROL_MAGIC)
    }

    pub(crate) fn check_writable(&self) -> Result<(), Error> {
        if self.read_only() {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        if self.poison.set.load(Ordering::Acquire) {
            let cause = match self.poison.cause.lock().clone() {
                Some(PoisonCause::Sync(c)) => c,
                Some(PoisonCause::IndexUpdate(c)) => format!("index update failed: {c}"),
                None => String::new(),
            };
            return Err(Error::Poisoned {
                path: self.path.clone(),
                cause,
            });
        }
        Ok(())
    }

    fn set_poison(&self, cause: PoisonCause) {
        *self.poison.cause.lock() = Some(cause);
        self.poison.set.store(true, Ordering::Release);
    }

    /// Whether the handle refuses writes because an index update failed
    /// midway (a slot that disagrees with the log), which rebuilding the
    /// index from the log fixes.
    pub(crate) fn poisoned_by_index(&self) -> bool {
        self.poison.set.load(Ordering::Acquire)
            && matches!(*self.poison.cause.lock(), Some(PoisonCause::IndexUpdate(_)))
    }

    /// After the index was rebuilt from the log: lift a poison that a
    /// failed index update set (and only that one).
    pub(crate) fn unpoison_index(&self) {
        let mut cause = self.poison.cause.lock();
        if matches!(*cause, Some(PoisonCause::IndexUpdate(_))) {
            *cause = None;
            self.poison.set.store(false, Ordering::Release);
        }
    }

    /// Record a sync failure: the handle refuses writes from now on.
    fn poison(&self, op: &'static str, e: std::io::Error) -> Error {
        self.set_poison(PoisonCause::Sync(format!("{op}: {e}")));
        Error::Io {
            op,
            path: self.path.clone(),
            source: e,
        }
    }

    fn write_bytes(&self, off: u64, data: &[u8]) -> Result<(), Error> {
        self.arena
            .write(off, data)
            .map_err(|OutOfBounds| self.corrupt(off, "write outside the file (internal error)"))
    }

    /// A compaction finished this file and moved the store to a new one
    /// (or this handle opened a file it will not use): never close it as
    /// ours.
    pub(crate) fn abandon(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// A compaction's new file becomes the store: from now on it has the
    /// store's path and its growth step (durability is the handle's).
    pub(crate) fn adopt(&mut self, path: &std::path::Path, step: u64) {
        self.path = path.to_path_buf();
        self.arena.set_path(path);
        self.limits.step = step;
    }

    /// Set the growth step (a compaction's new file, cut to its tail,
    /// grows by granules while it catches up).
    pub(crate) fn set_growth_step(&mut self, step: u64) -> u64 {
        std::mem::replace(&mut self.limits.step, step)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flush_reads();
        // Errors cannot be reported from drop; the next open recovers.
        let _ = self.close_clean();
    }
}
