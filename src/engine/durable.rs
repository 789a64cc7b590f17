//! Durability: syncing the log, writing the meta copies, the clean close
//! and giving back the space past the tail.

use std::sync::atomic::Ordering;

use crate::index::Desc;
use crate::storage::file::{self, OpenLock};
use crate::storage::meta::{Meta, FLAG_CLEAN, FLAG_TTL, FORMAT_VERSION, MAGIC};
use crate::storage::{self, FORMAT_PAGE, GRANULE, META_A_OFFSET, META_B_OFFSET};
use crate::Error;

use super::{Failure, Result, Store, Writer};

impl Store {
    /// msync the log from the durable tail to `upto`: records and index
    /// chunk headers of every process's commits since the last sync. The
    /// current index table is skipped (it is rebuilt from the log after an
    /// OS crash, and a clean close syncs the whole file).
    pub(crate) fn sync_log(&self, wr: &Writer, upto: u64) -> Result<(), Error> {
        let (from, to) = (wr.dur.tail, upto);
        if to <= from {
            return Ok(());
        }
        let mut ranges = [(from, to), (0, 0)];
        if let Some(d) = Desc::decode(wr.st.index_desc) {
            let (ts, te) = (d.start, d.start.saturating_add(d.bytes()));
            if ts < to && te > from {
                ranges = [(from, ts.max(from)), (te.min(to), to)];
            }
        }
        for (a, b) in ranges {
            if b > a {
                if let Err(e) = self.arena.sync(a, b - a) {
                    return Err(self.poison("msync log", e));
                }
            }
        }
        Ok(())
    }

    /// Make the log durable up to `upto` with one device flush: msync of the log since the durable
    /// tail, or, if the file grew since its length was last made durable,
    /// one fsync that makes records and length durable together. No meta
    /// is synced: recovery after an OS crash finds synced commits past an
    /// older meta's tail by scanning (the meta only shortens that scan).
    /// The caller moves `wr.dur.tail` once the records are published.
    pub(crate) fn sync_to(&self, wr: &mut Writer, upto: u64) -> Result<(), Error> {
        if self.arena.len() > wr.dur.len {
            if let Err(e) = self.arena.fsync() {
                return Err(self.poison("fsync file", e));
            }
            wr.dur.len = self.arena.len();
        } else {
            self.sync_log(wr, upto)?;
        }
        Ok(())
    }

    /// Make the current state durable: sync the log, make growth durable,
    /// then write and sync a meta that points at it.
    pub(crate) fn commit_meta(&self, wr: &mut Writer, clean: bool) -> Result<(), Error> {
        self.sync_log(wr, wr.st.tail)?;
        if clean {
            // The index is trusted after a clean close, so it must be durable.
            if let Err(e) = self.arena.sync(0, self.arena.len()) {
                return Err(self.poison("msync file", e));
            }
        }
        let len = self.arena.len();
        if len > wr.dur.len {
            if let Err(e) = self.arena.fsync() {
                return Err(self.poison("fsync file length", e));
            }
            wr.dur.len = len;
        }
        wr.dur.tail = wr.st.tail;
        wr.dur.seq_gen = wr.st.seq_gen;
        self.write_meta(wr, if clean { FLAG_CLEAN } else { 0 }, true)
    }

    /// Write the next meta copy from the writer's state, and msync it if
    /// `sync`. An unsynced meta may reach the disk at any time or never;
    /// either is fine, because it names only bytes that are already durable.
    pub(crate) fn write_meta(&self, wr: &mut Writer, flags: u32, sync: bool) -> Result<(), Error> {
        // The meta says whether entries with an expiry may be live (read
        // back at a clean open).
        let ttl = self.control().is_ok_and(|c| c.may_hold_ttl());
        let flags = flags | if ttl { FLAG_TTL } else { 0 };
        let m = Meta {
            magic: MAGIC,
            version: FORMAT_VERSION,
            page_size: FORMAT_PAGE as u32,
            meta_seq: wr.dur.meta_seq.wrapping_add(1),
            hash_seed: self.hash_seed,
            crc_salt: self.salt,
            flags,
            boot_id: wr.boot_id,
            file_len: wr.dur.len,
            tail: wr.dur.tail,
            seq_gen: wr.dur.seq_gen,
            generation: wr.st.generation as u32,
            file_nonce: self.file_nonce,
            index_desc: wr.st.index_desc,
            index_used: wr.st.index_used,
            live_keys: wr.st.live_keys,
            live_bytes: wr.st.live_bytes,
            capacity: self
                .control()
                .map_or(0, |c| storage::capacity_granules(c.capacity())),
            crc: 0,
        }
        .seal();
        // Always write the copy that does not hold the last synced meta, so
        // one synced copy stays intact whatever happens to this write.
        let off = if wr.dur.synced_copy == META_A_OFFSET {
            META_B_OFFSET
        } else {
            META_A_OFFSET
        };
        self.write_bytes(off, &m.encode())?;
        if sync {
            if let Err(e) = self.arena.sync(off, FORMAT_PAGE) {
                return Err(self.poison("msync meta", e));
            }
            wr.dur.synced_copy = off;
        }
        wr.dur.meta_seq = m.meta_seq;
        Ok(())
    }

    /// Close. The last read-write handle (in any process) makes everything
    /// durable and marks the store clean; if no other handle at all has the
    /// file open, it also gives back the space past the tail. Otherwise
    /// closing just lets go: the other handles carry on. In a child
    /// forked from the process that opened the handle, closing only lets
    /// go: the session is the parent's (the child never counted itself in
    /// as a writer), so it must not be counted out or marked clean.
    pub(crate) fn close_clean(&self) -> Result<(), Error> {
        if self.read_only() || self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if self.arena.opener_pid() != std::process::id() {
            return Ok(());
        }
        self.check_writable()?;
        let failed = |f: Failure| f.into_error(&self.path);
        let left = {
            let mut wr = match self.lock_writer() {
                // A compaction moved the store to a new file, which this
                // handle never joined: nothing of ours to close.
                Err(Failure::Moved) => return Ok(()),
                r => r.map_err(failed)?,
            };
            let c = self.control()?;
            let left = c.writers().load(Ordering::Acquire).saturating_sub(1);
            c.writers().store(left, Ordering::Release);
            if left == 0 {
                // Read-only handles may still have it open; they never
                // write, and a writer that joins later first clears the
                // clean flag.
                self.commit_meta(&mut wr, true)?;
            }
            left
        };
        // Alone? Converting our shared open lock to an exclusive one
        // succeeds only if no other handle has the file open. (On failure
        // the shared lock may be gone too; we are done anyway.)
        {
            let mut how = self.open_lock.lock();
            if *how != OpenLock::Exclusive {
                let alone =
                    file::open_lock(self.arena.file(), OpenLock::Exclusive).map_err(|source| {
                        Error::Io {
                            op: "lock file on close",
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                if !alone {
                    return Ok(());
                }
                *how = OpenLock::Exclusive;
            }
        }
        let mut wr = self.lock_writer().map_err(failed)?;
        if left > 0 {
            // The count included writers that crashed; alone, we know better.
            self.commit_meta(&mut wr, true)?;
        }
        self.trim_to_tail(&mut wr, FLAG_CLEAN)
    }

    /// Give back the space preallocated past the tail. Only when no other
    /// handle maps the file (a clean close that is alone, or a compaction's
    /// new file before anyone knows it), with everything durable. The meta
    /// that names the shorter length is durable before the file is cut, so
    /// a crash in between leaves a file longer than its meta says (fine),
    /// never shorter.
    pub(crate) fn trim_to_tail(&self, wr: &mut Writer, flags: u32) -> Result<(), Error> {
        let keep = storage::align_up(wr.st.tail, GRANULE).unwrap_or(u64::MAX);
        if keep < self.arena.len() {
            wr.dur.len = keep;
            self.write_meta(wr, flags, true)?;
            self.arena.trim(keep).map_err(|source| Error::Io {
                op: "trim file",
                path: self.path.clone(),
                source,
            })?;
            if let Ok(c) = self.control() {
                c.reset_file_len(keep);
            }
            // Bring the other copy up to date too, so that both name the
            // shorter length (either can then be lost to a torn write).
            self.write_meta(wr, flags, true)?;
        }
        Ok(())
    }
}
