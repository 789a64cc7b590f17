//! The writer lock, handed over between threads and processes, and the
//! writer's view of the store that travels with it.

use crate::log::record::seq_of;
use crate::storage::control::{Durable, State, CONTROL_MAGIC, MOVED_MAGIC, MOVING_MAGIC};
use crate::storage::lock::{Held, LockError, Registration};
use crate::storage::{self, ARENA_START, CONTROL_OFFSET, META_A_OFFSET, META_B_OFFSET};
use crate::Error;

use super::{recover, Failure, Result, Store};

/// The writer's view of the store, valid while the writer lock is held:
/// loaded from the control block when the lock is taken (another process
/// may have written since) and stored back before it is released.
pub(crate) struct Writer {
    pub(crate) st: State,
    /// Durable bookkeeping: everything below `dur.tail` is on stable
    /// storage; `dur.len` bytes of file length are; which meta copy holds
    /// the newest synced meta.
    pub(crate) dur: Durable,
    pub(crate) boot_id: [u8; 16],
    /// Bytes were written past the published tail and not (yet) published.
    /// If the lock is released like this (an error), the next holder must
    /// repair: those bytes carry the current generation.
    pub(crate) unpublished: bool,
    /// This handle's registration slot (claimed at open, and again in a
    /// child forked after that).
    pub(crate) reg: Option<Registration>,
}

impl Writer {
    /// The state a new handle starts from: what its meta says is durable.
    pub(crate) fn new(dur: Durable, boot_id: [u8; 16]) -> Writer {
        Writer {
            st: State::default(),
            dur,
            boot_id,
            unpublished: false,
            reg: None,
        }
    }
}

/// The writer lock, held: the in-process mutex and, for read-write handles,
/// the cross-process lock word in the mapping. Dropping it stores the
/// writer state into the control block and releases both.
pub(crate) struct WriteGuard<'a> {
    store: &'a Store,
    wr: parking_lot::MutexGuard<'a, Writer>,
    /// The cross-process lock word as we took it (read-write handles).
    held: Option<Held>,
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        &self.wr
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Writer {
        &mut self.wr
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let Some(held) = self.held else {
            return;
        };
        if let Ok(c) = self.store.control() {
            c.set_durable(&self.wr.dur);
            // An odd seqlock means a change was left half-made (an index
            // update failed); unpublished bytes past the tail would share
            // the generation of the next commit: in both cases keep the
            // writer word set so that the next holder repairs first.
            if c.version() % 2 == 0 && !self.wr.unpublished {
                c.set_writer(0);
            }
        }
        // Unlocking fails only if something overwrote the lock word while
        // we held it; the word then names someone else, whom we must not
        // release. Nothing more can be done from drop.
        let _ = self.store.arena.unlock_writer(held);
    }
}

impl Store {
    /// Take the writer lock: the in-process mutex, then (read-write
    /// handles) the cross-process lock, each within `lock_timeout`. Loads
    /// the writer state that the previous holder, in any process, left in
    /// the control block, and first repairs the store if that holder died
    /// or failed in the middle of a change.
    pub(crate) fn lock_writer(&self) -> Result<WriteGuard<'_>> {
        let mut g = self.take_lock()?;
        if g.held.is_none() {
            return Ok(g);
        }
        let c = self.control()?;
        match c.magic() {
            CONTROL_MAGIC => {}
            MOVED_MAGIC => return Err(Failure::Moved),
            MOVING_MAGIC => {
                // A compactor set this and then died (or failed) holding the
                // lock. Did its rename happen?
                if self.path_names_other_file() {
                    c.set_magic(MOVED_MAGIC);
                    self.notify();
                    return Err(Failure::Moved);
                }
                c.set_magic(CONTROL_MAGIC);
            }
            m => {
                return Err(self
                    .corrupt(
                        CONTROL_OFFSET,
                        format!("control block magic {m:#x} is not mapkv's"),
                    )
                    .into())
            }
        }
        if c.file_len() > self.arena.len() {
            self.arena.refresh().map_err(|source| Error::Io {
                op: "follow file growth",
                path: self.path.clone(),
                source,
            })?;
        }
        let (st, consistent) = c.snapshot(1);
        g.wr.dur = c.durable();
        let dirty = c.writer() != 0;
        c.set_writer(self.pid);
        if dirty || !consistent || !self.trustworthy(&st, &g.wr.dur) {
            recover::repair_live(self, &mut g.wr)?;
        } else {
            g.wr.st = st;
        }
        Ok(g)
    }

    /// The writer lock, and nothing else: no look at the control block
    /// (the caller starts a session, or checks it next). Bounded by
    /// `lock_timeout` in all.
    pub(crate) fn take_lock(&self) -> Result<WriteGuard<'_>, Error> {
        let timeout = |what, holder| Error::Timeout {
            path: self.path.clone(),
            what,
            waited: self.lock_timeout,
            holder,
        };
        // No clock unless we have to wait.
        let mut wr = match self.writer.try_lock() {
            Some(wr) => wr,
            None => self.writer.try_lock_for(self.lock_timeout).ok_or_else(|| {
                timeout(
                    "the writer lock (another thread of this process holds it)",
                    None,
                )
            })?,
        };
        if self.read_only() {
            return Ok(WriteGuard {
                store: self,
                wr,
                held: None,
            });
        }
        let ioe = |op, source| Error::Io {
            op,
            path: self.path.clone(),
            source,
        };
        if !wr.reg.as_ref().is_some_and(|r| r.is_ours()) {
            wr.reg = Some(
                Registration::new(&self.arena)
                    .map_err(|e| ioe("register as a writer of the store", e))?,
            );
        }
        let reg = wr.reg.as_ref().expect("registered just above");
        let held = match self.arena.lock_writer(reg, self.lock_timeout) {
            Ok((held, _how)) => held,
            Err(LockError::TimedOut) => {
                let pid = self.control().map_or(0, |c| c.writer());
                return Err(timeout(
                    "the writer lock (another writer holds it and is alive)",
                    (pid != 0).then_some(pid),
                ));
            }
            Err(LockError::Io(e)) => return Err(ioe("take the writer lock", e)),
        };
        Ok(WriteGuard {
            store: self,
            wr,
            held: Some(held),
        })
    }

    /// The writer state of a handle that is alone or recovering in
    /// private memory: nobody else can hold the lock.
    pub(crate) fn writer_alone(&self) -> parking_lot::MutexGuard<'_, Writer> {
        self.writer.lock()
    }

    /// Whether the writer state read from the control block can be
    /// written on: its counters and offsets within what the file holds,
    /// the durable bookkeeping at or below them. If not (a hostile or
    /// damaged word), the writer repairs the store from the log first
    /// instead of appending at an offset the file never gave it. A few
    /// compares; the file's length is looked up again only when the tail
    /// seems to be past it (another process grew the file).
    fn trustworthy(&self, st: &State, dur: &Durable) -> bool {
        let plausible = recover::plausible(self, st)
            || (st.tail > self.arena.len()
                && self.arena.refresh().is_ok()
                && recover::plausible(self, st));
        plausible
            && dur.tail % 8 == 0
            && dur.tail >= ARENA_START
            && dur.tail <= st.tail
            && seq_of(dur.seq_gen) <= seq_of(st.seq_gen)
            && dur.len <= storage::MAX_FILE_LEN
            && (dur.synced_copy == META_A_OFFSET || dur.synced_copy == META_B_OFFSET)
            && dur.meta_seq <= u64::MAX / 4
    }
}
