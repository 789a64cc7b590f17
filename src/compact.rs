//! Online compaction: rewrite the live entries into a new file, rename it
//! over the store's name, and move every handle, in every process, to it.
//!
//! 1. Take the compaction lock (an OFD `fcntl` lock on the store file: one
//!    compaction at a time, released if the compactor dies).
//! 2. Snapshot the control block (tail `T0`, last commit `S0`) and collect
//!    the record offsets of the live slots of the current table. Records
//!    are immutable, so they can be read at leisure while writers go on.
//! 3. Create the new file next to the store (a hidden name), continuing the
//!    store's lineage: same hash seed and CRC salt, and commit sequence
//!    numbers that end at `S0` for the copied entries. Copy the entries in
//!    batches (each record checksum-verified on the way).
//! 4. Catch up without any lock: replay the commits past `T0` from the old
//!    log into the new file, commit for commit (same sequence numbers), in
//!    rounds, until little is left.
//! 5. Make the new file durable (msync, fsync, synced meta) and cut its
//!    preallocated tail, still without any lock.
//! 6. Take the old store's writer lock (writers everywhere now wait; readers
//!    do not), replay the last commits and sync them, mark the old control
//!    block MOVING, rename the new file over the store's name, sync the
//!    directory, mark it MOVED, wake every waiter, release the lock. This is
//!    the writers' pause.
//! 7. Handles follow on their next operation: the old control block says
//!    MOVED (or MOVING, and the name already points elsewhere), so they open
//!    the new file, joining the store there. The old file's pages stay
//!    mapped while a reader in this process uses them, and its disk space
//!    is freed when the last process lets go of it.
//!
//! A crash before the rename leaves the old file as the store (the new one
//! is a hidden leftover, removed by the next compaction or open); after it,
//! the new file is the store, complete and durable. A compactor that dies
//! holding the writer lock between MOVING and MOVED is finished by the next
//! writer, which sees MOVING, checks where the name points, and sets MOVED
//! or clears MOVING.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{self, Failure, Op, Store};
use crate::evict::Entry;
use crate::index;
use crate::log::read::now_ms;
use crate::log::record::{seq_gen, seq_of};
use crate::log::{Item, Scanner};
use crate::options::Lineage;
use crate::storage::control::{MOVED_MAGIC, MOVING_MAGIC};
use crate::storage::hooks::{self, IoOp, Phase};
use crate::storage::{self, GRANULE};
use crate::{Db, Durability, Error, Options, Result};

/// What [`Db::compact`] did.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("cr.mapkv"))?;
/// db.insert(b"k", b"old")?;
/// db.insert(b"k", b"new")?; // "old" is now dead space
/// let r = db.compact()?;
/// assert_eq!(r.keys, 1);
/// println!(
///     "{} -> {} bytes in {:?}, writers paused {:?}",
///     r.len_before, r.len_after, r.duration, r.writer_pause
/// );
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Live keys in the compacted store.
    pub keys: u64,
    /// File length before.
    pub len_before: u64,
    /// File length after.
    pub len_after: u64,
    /// Bytes of live records after.
    pub live_bytes: u64,
    /// Entries left behind because they had expired
    /// ([`Db::insert_with_ttl`]).
    pub expired: u64,
    /// Entries evicted to make room (cache mode; see
    /// [`Options::capacity`](crate::Options::capacity)). 0 for
    /// [`Db::compact`].
    pub evicted: u64,
    /// Commits replayed from the old log because they landed while the
    /// compaction ran.
    pub caught_up: u64,
    /// How long writers (in every process) waited: the final catch-up, the
    /// syncs and the rename, with the writer lock held.
    pub writer_pause: Duration,
    /// The whole compaction.
    pub duration: Duration,
}

/// What a compaction does with the live entries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Plan<'a> {
    /// Keep them all ([`Db::compact`]).
    Compact,
    /// Cache mode: evict the oldest to free enough room (at least
    /// `min_free` bytes), second chance for those read.
    Evict { min_free: u64 },
    /// Keep none ([`Db::clear`]): the new file starts empty, with only
    /// the commits that land while it is made.
    Clear,
    /// Keep them all, in a new file at `dest` that stays apart: the store
    /// does not move ([`Db::backup`]).
    Copy { dest: &'a Path },
}

/// Cache mode: carry over the hits readers counted in the old table while
/// the entries were being copied (an eviction takes long enough for most
/// of a run's hits to land in it). Entries whose slot changed since (an
/// overwrite, or a rebuild of the old table) are left as they are.
fn carry_late_hits(
    old: &Store,
    new: &Store,
    ot: &index::Table<'_>,
    desc: u64,
    kept: &[Entry],
) -> engine::Result<()> {
    if old.control()?.index_desc() != desc {
        return Ok(());
    }
    for e in kept {
        let Some(word) = ot.word_at(e.slot) else {
            continue;
        };
        let now = index::word_freq(word);
        if index::word_offset(word) != e.off || now <= e.hits {
            continue;
        }
        let rec = old.records();
        let h = rec.header(e.off)?;
        let key = rec.key(e.off, &h)?;
        new.set_freq(&key, (e.freq + now - e.hits).min(index::FREQ_MAX))?;
    }
    Ok(())
}

/// Entries copied per commit of the new file, at most.
const COPY_BATCH: u64 = 1024;
/// Stop catching up without the lock once less than this is left.
const CATCH_UP_SLACK: u64 = 256 << 10;
/// At most this many lock-free catch-up rounds.
const CATCH_UP_ROUNDS: u32 = 16;

impl Db {
    /// Rewrite the live entries into a new, compact file and give the old
    /// file's space back to the filesystem. Online: readers in every
    /// process keep reading throughout; writers in every process wait only
    /// for the final catch-up (see [`CompactReport::writer_pause`]); other
    /// handles, in this and other processes, move to the new file by
    /// themselves on their next operation.
    ///
    /// Crash-safe at every step: a crash leaves either the old store or the
    /// new one, complete, with nothing acknowledged lost. It needs free disk
    /// space for the live data while it runs.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a read-only handle; [`Error::Locked`] if
    /// another compaction of this store is running; [`Error::OutOfSpace`]
    /// if the new file does not fit (the store is left as it was);
    /// [`Error::Corrupted`] if a record fails its checks (nothing changes);
    /// [`Error::Refused`] if the store file has a second hard link, or if
    /// the new file cannot be given the old one's owner, group and mode
    /// (only root may give a file to another user; nothing changes).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("compact.mapkv");
    /// let db = mapkv::Db::open(&path)?;
    /// for i in 0..10_000u32 {
    ///     db.insert(i.to_le_bytes(), [7u8; 100])?;
    /// }
    /// for i in 0..9_000u32 {
    ///     db.remove(i.to_le_bytes())?;
    /// }
    /// let report = db.compact()?;
    /// assert_eq!(report.keys, 1_000);
    /// assert!(report.len_after < report.len_before);
    /// assert_eq!(db.get(9_999u32.to_le_bytes())?.as_deref(), Some(&[7u8; 100][..]));
    /// assert!(db.stats().dead_bytes < 8192); // only alignment padding is left
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn compact(&self) -> Result<CompactReport> {
        self.compact_with_progress(&mut |_, _| {})
    }

    /// [`compact`](Db::compact), calling `progress(copied, total)` as
    /// entries are copied (for a progress bar).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("cp.mapkv"))?;
    /// for i in 0..5_000u32 {
    ///     db.insert(i.to_le_bytes(), b"v")?;
    /// }
    /// let mut last = (0, 0);
    /// db.compact_with_progress(&mut |done, total| last = (done, total))?;
    /// assert_eq!(last, (5_000, 5_000));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn compact_with_progress(
        &self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CompactReport> {
        match self.run(progress, Plan::Compact) {
            // A cache's new file cannot fill up with the live entries
            // alone, but it can with commits made meanwhile.
            Err(Failure::Full { wanted, .. }) => Err(Error::OutOfSpace {
                path: self.handle.path.clone(),
                wanted,
                reason: "commits made during the compaction filled the cache's capacity".into(),
            }),
            r => r.map_err(|f| f.into_error(&self.handle.path)),
        }
    }

    /// Cache mode: evict to make room. Frees the evict fraction of the
    /// capacity, and at least `min_free` bytes. Fails with `Error::Locked`
    /// if a compaction or eviction is running.
    pub(crate) fn evict(&self, min_free: u64) -> engine::Result<CompactReport> {
        self.run(&mut |_, _| {}, Plan::Evict { min_free })
    }

    /// One compaction or eviction at a time per handle; if another one
    /// moved the store meanwhile, start over on the new file.
    pub(crate) fn run(
        &self,
        progress: &mut dyn FnMut(u64, u64),
        plan: Plan<'_>,
    ) -> engine::Result<CompactReport> {
        self.repair_if_suspect();
        let Some(_one) = self.handle.compacting.try_lock() else {
            return Err(Error::Locked {
                path: self.handle.path.clone(),
                detail: "another compaction of this store is running",
            }
            .into());
        };
        let mut repaired = false;
        for _ in 0..5 {
            match self.compact_once(progress, plan) {
                Err(Failure::Moved) => continue,
                // A slot that disagrees with the log: rebuild the index
                // from the log and start again.
                Err(Failure::Error(e @ Error::Corrupted { .. })) if !repaired => {
                    repaired = true;
                    if !self.repair_after(&e) {
                        return Err(e.into());
                    }
                }
                r => return r,
            }
        }
        Err(Error::Locked {
            path: self.handle.path.clone(),
            detail: "other compactions kept moving the store to new files",
        }
        .into())
    }

    fn compact_once(
        &self,
        progress: &mut dyn FnMut(u64, u64),
        plan: Plan<'_>,
    ) -> engine::Result<CompactReport> {
        let started = Instant::now();
        let old = arc_swap::Guard::into_inner(self.store());
        if old.read_only() {
            return Err(Error::ReadOnly {
                path: old.path.clone(),
            }
            .into());
        }
        old.check_writable()?;
        let owner = owner_of(&old)?;
        let lock = CompactLock::take(&old)?;
        if !old.is_current() {
            // Another compaction finished just before we took the lock.
            drop(lock);
            self.handle.follow(&old);
            return Err(Failure::Moved);
        }
        storage::file::remove_compact_leftovers(&self.handle.path);
        let c = old.control()?;
        let (st0, _) = c.snapshot(1_000_000);
        let len_before = old.arena.len();
        // Its counters size allocations and the new file: never more than
        // the file can hold, whatever the control block says.
        // (The file may have grown in another process since this handle
        // last looked: ask for its length now.)
        let st0 = engine::bounded(st0, old.arena.refresh().unwrap_or(len_before));

        // Live entries of the current table, as of now; entries that have
        // expired are left behind (that is their space coming back).
        let (ot, d0) = old.table_at(st0.index_desc)?;
        let capacity = c.capacity();
        let now = now_ms();
        let mut live = Vec::with_capacity(st0.live_keys.min(d0.capacity()) as usize);
        let mut expired = 0u64;
        // Headers are scattered over the log: keep the loads of the next
        // slots' headers in flight while this one is read.
        const AHEAD: usize = 16;
        // A clear keeps nothing: no need to look.
        let cap = match plan {
            Plan::Clear => 0,
            _ => d0.capacity() as usize,
        };
        let prefetch = |slot: usize| {
            if let Some(w) = ot.word_at(slot).filter(|&w| index::is_live(w)) {
                old.arena.prefetch(index::word_offset(w), 32);
            }
        };
        (0..AHEAD.min(cap)).for_each(prefetch);
        for slot in 0..cap {
            prefetch(slot + AHEAD);
            let w = ot.word_at(slot).unwrap_or(index::EMPTY);
            if !index::is_live(w) {
                continue;
            }
            let off = index::word_offset(w);
            let h = old.records().header(off)?;
            if old.records().expired_at(off, &h, now)? {
                expired += 1;
                continue;
            }
            // Hit counts matter in cache mode only (elsewhere those bits
            // may hold old tag bits).
            let freq = if capacity != 0 {
                index::word_freq(w)
            } else {
                0
            };
            let len = crate::log::record::record_len(h.key_len as usize, h.val_len as usize);
            live.push(Entry {
                off,
                word: w,
                slot,
                hits: freq,
                freq,
                len,
            });
        }
        if capacity != 0 {
            // A cache keeps its entries in the order they were written, so
            // that the next eviction again takes the oldest first (and
            // eviction puts the ones it gives a second chance last).
            live.sort_unstable_by_key(|e| e.off);
        }
        let mut evicted = 0;
        if let (Plan::Evict { min_free }, true) = (plan, capacity != 0) {
            // The new file (index included, sized like the old one so that
            // refilling needs no rebuild) must stay within the capacity less
            // the share to free. The commits the old file takes meanwhile
            // come on top: at most what it had left, which is less than the
            // share (a background eviction starts at `1 - f/4`), so the new
            // file ends below the point where the next one starts.
            let fraction = self.handle.opts.evict_fraction;
            let budget = ((capacity as f64) * (1.0 - fraction)) as u64;
            let overhead = storage::ARENA_START + 2 * storage::FORMAT_PAGE + d0.bytes();
            let keep = budget.saturating_sub(overhead);
            let total = live.iter().fold(0u64, |a, e| a.saturating_add(e.len));
            let need = total.saturating_sub(keep).max(min_free);
            evicted = crate::evict::select_for_eviction(&mut live, need);
        }
        let n = live.len() as u64;
        let s0 = seq_of(st0.seq_gen);
        // The copied entries are commits S0-K+1 ..= S0 of the new file.
        let k = if n == 0 {
            0
        } else {
            n.div_ceil(COPY_BATCH).min(s0)
        };
        let per = if k == 0 { 1 } else { n.div_ceil(k) };
        let generation = st0.generation as u16;
        // A clear's new file is sized for nothing (a cache's keeps its table).
        let sizing = match plan {
            Plan::Clear => crate::storage::control::State {
                live_keys: 0,
                live_bytes: 0,
                ..st0
            },
            _ => st0,
        };
        let opts = self.new_file_options(&old, &sizing, s0 - k, generation)?;
        // The new file is made next to where it ends up: beside the store,
        // or beside a backup's destination (which may be on another file
        // system: it is linked into place, and a link cannot cross one).
        let tmp = match plan {
            Plan::Copy { dest } => storage::file::compact_temp_name(dest),
            _ => storage::file::compact_temp_name(&self.handle.path),
        };
        let mut new = match Store::open(&tmp, opts) {
            Ok(i) => i,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Before anything is copied: the new file gets the old one's owner,
        // group and mode, or the compaction does not happen.
        // (A backup is the caller's own file, like any copy.)
        let given = match plan {
            Plan::Copy { .. } => Ok(()),
            _ => owner.give_to(&new, &old.path),
        };
        if let Err(e) = given {
            discard(new, &tmp);
            return Err(e.into());
        }
        let result = (|| -> engine::Result<(u64, u64)> {
            let mut copied = 0u64;
            for chunk in live.chunks(per as usize) {
                let mut bufs = Vec::with_capacity(chunk.len());
                for e in chunk.iter().take(AHEAD) {
                    old.arena.prefetch(e.off, 256);
                }
                for (i, &Entry { word, .. }) in chunk.iter().enumerate() {
                    if let Some(e) = chunk.get(i + AHEAD) {
                        old.arena.prefetch(e.off, 256);
                    }
                    bufs.push(old.entry_at(word)?);
                }
                let ops: Vec<Op<'_>> = bufs.iter().map(Op::from_put).collect();
                new.commit(&ops, Durability::None)?;
                // Carry the hit counts over (cache mode).
                for (e, put) in chunk.iter().zip(&bufs) {
                    if e.freq > 0 {
                        new.set_freq(put.key(), e.freq)?;
                    }
                }
                copied += chunk.len() as u64;
                progress(copied, n);
            }
            // Two slots of the old table for one key (one of them stale):
            // the copy holds fewer keys than it copied.
            let keys = new.control()?.live_keys();
            if keys != copied {
                return Err(old
                    .corrupt(
                        d0.start,
                        format!("the index holds {copied} live slots for {keys} distinct keys"),
                    )
                    .into());
            }
            // Catch up without the lock while much is left.
            let mut pos = st0.tail;
            let mut caught_up = 0;
            for _ in 0..CATCH_UP_ROUNDS {
                let t = c.snapshot(1_000_000).0.tail;
                if t.saturating_sub(pos) <= CATCH_UP_SLACK {
                    break;
                }
                caught_up += replay(&old, &new, pos, t)?;
                pos = t;
            }
            if capacity != 0 {
                carry_late_hits(&old, &new, &ot, st0.index_desc, &live)?;
            }
            // Make everything so far durable (and cut the preallocated
            // tail) before taking the lock, so that the pause only syncs
            // the last few commits.
            let mut nw = new.lock_writer()?;
            new.commit_meta(&mut nw, false)?;
            new.trim_to_tail(&mut nw, 0)?;
            Ok((pos, caught_up))
        })();
        let (pos, mut caught_up) = match result {
            Ok(x) => x,
            Err(e) => {
                discard(new, &tmp);
                return Err(e);
            }
        };

        if let Plan::Copy { dest } = plan {
            return finish_copy(&old, new, &tmp, dest, pos).map(|(n, len_after)| CompactReport {
                keys: n.live_keys,
                len_before,
                len_after,
                live_bytes: n.live_bytes,
                expired,
                evicted: 0,
                caught_up: caught_up + n.caught_up,
                writer_pause: Duration::ZERO,
                duration: started.elapsed(),
            });
        }
        // The file was cut to its tail: let the last commits grow it by
        // granules rather than by doubling.
        let growth_step = new.set_growth_step(GRANULE);
        // The pause: writers everywhere wait from here to the release.
        let paused = Instant::now();
        let wg = match old.lock_writer() {
            Ok(g) => g,
            Err(e) => {
                discard(new, &tmp);
                return Err(e);
            }
        };
        let finish = (|| -> engine::Result<()> {
            caught_up += replay(&old, &new, pos, wg.st.tail)?;
            {
                // The last commits durable too (one msync, an fsync only if
                // they made the file grow, and the meta).
                let mut nw = new.lock_writer()?;
                new.commit_meta(&mut nw, false)?;
            }
            let fire = |phase| hooks::fire(&self.handle.path, IoOp::Rename, phase);
            fire(Phase::Before).map_err(|source| io_err(&old.path, "rename", source))?;
            // The cache counters move with the store.
            let [ev, ex, runs, hits, misses] = c.cache_counters();
            let is_evict = matches!(plan, Plan::Evict { .. }) as u64;
            new.control()?.set_cache_counters([
                ev.saturating_add(evicted),
                ex.saturating_add(expired),
                runs.saturating_add(is_evict),
                hits,
                misses,
            ]);
            c.set_magic(MOVING_MAGIC);
            if let Err(source) = std::fs::rename(&tmp, &self.handle.path) {
                c.set_magic(crate::storage::control::CONTROL_MAGIC);
                return Err(io_err(&old.path, "rename the compacted file", source).into());
            }
            // From here the new file is the store; a failure to sync the
            // directory only means the rename may not survive a power cut
            // (the old file, intact, is then the store).
            let synced = storage::file::sync_parent(&self.handle.path);
            c.set_magic(MOVED_MAGIC);
            old.notify();
            synced.map_err(|source| io_err(&old.path, "sync directory after rename", source))?;
            fire(Phase::After).map_err(|source| io_err(&old.path, "rename", source).into())
        })();
        let moved = c.magic() == MOVED_MAGIC;
        // Releasing the old writer lock lets waiting writers see MOVED.
        drop(wg);
        let writer_pause = paused.elapsed();
        drop(lock);
        if !moved {
            discard(new, &tmp);
            return Err(finish.err().unwrap_or_else(|| {
                old.corrupt(0, "compaction: the store did not move (internal error)")
                    .into()
            }));
        }
        // Ours now. The old store is finished: never close it as ours.
        // It was built unsynced; from now on it has the handle's durability.
        new.adopt(&self.handle.path, growth_step);
        old.abandon();
        old.hand_reads_to(&new);
        let nc = new.control()?;
        let (st1, _) = nc.snapshot(1_000_000);
        let len_after = new.arena.len();
        self.handle.current.store(Arc::new(new));
        finish?;
        Ok(CompactReport {
            keys: st1.live_keys,
            len_before,
            len_after,
            live_bytes: st1.live_bytes,
            expired,
            evicted,
            caught_up,
            writer_pause,
            duration: started.elapsed(),
        })
    }

    /// Options for a compaction's new file: sized for the live data,
    /// continuing the store's lineage, same limits and mode as the old file.
    fn new_file_options(
        &self,
        old: &Store,
        st0: &crate::storage::control::State,
        start_seq: u64,
        generation: u16,
    ) -> Result<Options> {
        use std::os::unix::fs::PermissionsExt;
        let mode = old
            .arena
            .file()
            .metadata()
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o600);
        let base = &self.handle.opts;
        let table = 8u64 << index::log2cap_for(st0.live_keys.saturating_mul(3) / 2);
        let estimate = storage::ARENA_START + 2 * crate::log::record::HEADER_LEN + table;
        let estimate =
            storage::align_up(estimate.saturating_add(st0.live_bytes), GRANULE).unwrap_or(u64::MAX);
        let capacity = old.control()?.capacity();
        let estimate = if capacity != 0 {
            estimate.min(capacity)
        } else {
            estimate
        };
        let mut o = base
            .clone()
            .read_only(false)
            .create(true)
            .durability(Durability::None)
            .mode(mode)
            .expected_keys(if capacity != 0 {
                // A cache refills: keep the table's size.
                (index::Desc::decode(st0.index_desc).map_or(0, |d| d.capacity()) * 3 / 4)
                    .saturating_sub(1)
                    .max(st0.live_keys)
            } else {
                st0.live_keys
            })
            .initial_size(estimate);
        o.capacity = (capacity != 0).then_some(capacity);
        o.lineage = Some(Lineage {
            hash_seed: old.hash_seed,
            crc_salt: old.salt,
            seq_gen: seq_gen(start_seq, generation),
            generation: generation as u32,
        });
        Ok(o)
    }
}

/// Who can open the store: the old file's owner, group and mode, which the
/// new file must keep.
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// The store file's owner, group and mode. Refuses a store with a second
/// hard link: the rename would replace one name only, and the two names
/// would then be two different stores.
fn owner_of(old: &Store) -> Result<Owner> {
    use std::os::unix::fs::MetadataExt;
    let md = old
        .arena
        .file()
        .metadata()
        .map_err(|source| io_err(&old.path, "stat", source))?;
    if md.nlink() > 1 {
        return Err(Error::Refused {
            path: old.path.clone(),
            reason: format!(
                "the store file has {} hard links; compaction replaces the file under one name \
                 only, which would split it into two stores: remove the other links first",
                md.nlink()
            ),
        });
    }
    Ok(Owner {
        uid: md.uid(),
        gid: md.gid(),
        mode: md.mode() & 0o7777,
    })
}

impl Owner {
    /// Give the compaction's new file this owner, group and mode (chown
    /// first: it may clear the set-id bits, which chmod then restores).
    /// A process that may not (EPERM: only root can give a file away)
    /// gets `Error::Refused`.
    fn give_to(&self, new: &Store, store: &Path) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let f = new.arena.file();
        let refuse = |what: String, e: std::io::Error| Error::Refused {
            path: store.to_path_buf(),
            reason: format!(
                "compaction would change who can open the store: its new file cannot get {what} \
                 ({e}); compact it as the store's owner or as root"
            ),
        };
        let md = f
            .metadata()
            .map_err(|source| io_err(&new.path, "stat", source))?;
        if (md.uid(), md.gid()) != (self.uid, self.gid) {
            std::os::unix::fs::fchown(f, Some(self.uid), Some(self.gid)).map_err(|e| {
                refuse(
                    format!("the owner uid {} and group gid {}", self.uid, self.gid),
                    e,
                )
            })?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| refuse(format!("the mode {:04o}", self.mode), e))
    }
}

/// Replay the old log's commits in `[from, to)` into `new`, one commit for
/// one commit. Returns how many.
fn replay(old: &Store, new: &Store, from: u64, to: u64) -> engine::Result<u64> {
    if to <= from {
        return Ok(0);
    }
    let rec = old.records();
    if !rec.within_file(to) {
        return Err(old.corrupt(to, "log tail past the end of the file").into());
    }
    let mut sc = Scanner::new(&old.arena, old.salt, from, to, None);
    let mut n = 0;
    // One hold of the new file's writer lock for the whole round (nobody
    // else writes the new file; this only saves the lock traffic).
    let mut nw = new.lock_writer()?;
    while sc.pos() < to {
        match sc.next_item() {
            Ok(Item::Commit {
                records, seq_gen, ..
            }) => {
                /// A record read back: a put whole, a delete's key.
                enum Read {
                    Put(crate::log::read::Put),
                    Del(Vec<u8>),
                }
                let mut reads = Vec::with_capacity(records.len());
                for r in &records {
                    reads.push(if r.header.is_put() {
                        Read::Put(rec.put(r.off, &r.header)?)
                    } else {
                        Read::Del(rec.key(r.off, &r.header)?)
                    });
                }
                let ops: Vec<Op<'_>> = reads
                    .iter()
                    .map(|r| match r {
                        Read::Put(p) => Op::from_put(p),
                        Read::Del(k) => Op::Del(k),
                    })
                    .collect();
                let expect = seq_of(seq_gen);
                let next = seq_of(nw.st.seq_gen) + 1;
                if next != expect {
                    return Err(old
                        .corrupt(
                            sc.pos(),
                            format!(
                                "compaction: commit {expect} would become {next} in the new file"
                            ),
                        )
                        .into());
                }
                new.commit_locked(&mut nw, &ops, Durability::None)?;
                n += 1;
            }
            Ok(Item::Index { .. }) => {}
            Err(stop) => {
                return Err(old
                    .corrupt(stop.bad, format!("compaction catch-up: {}", stop.why))
                    .into())
            }
        }
    }
    Ok(n)
}

/// What the last catch-up of a backup left in the copy.
struct Copied {
    live_keys: u64,
    live_bytes: u64,
    caught_up: u64,
}

/// A backup's end: catch up with the old log once more (no lock: the copy
/// is then the store as of that commit, whole), close the copy cleanly and
/// give it its name. Returns what it holds and its length.
fn finish_copy(
    old: &Store,
    new: Store,
    tmp: &Path,
    dest: &Path,
    pos: u64,
) -> engine::Result<(Copied, u64)> {
    let done = (|| -> engine::Result<Copied> {
        let tail = old.control()?.snapshot(1_000_000).0.tail;
        let caught_up = replay(old, &new, pos, tail)?;
        let (st, _) = new.control()?.snapshot(1_000_000);
        new.close_clean()?;
        Ok(Copied {
            live_keys: st.live_keys,
            live_bytes: st.live_bytes,
            caught_up,
        })
    })();
    let copied = match done {
        Ok(c) => c,
        Err(e) => {
            discard(new, tmp);
            return Err(e);
        }
    };
    let len = new.arena.len();
    drop(new);
    let published =
        storage::file::publish(tmp, dest).map_err(|e| io_err(dest, "name the copy", e))?;
    if !published {
        return Err(Error::Refused {
            path: dest.to_path_buf(),
            reason: "the destination appeared while the copy was made; nothing was replaced".into(),
        }
        .into());
    }
    Ok((copied, len))
}

/// Close and delete an unfinished new file.
fn discard(new: Store, tmp: &Path) {
    new.abandon();
    drop(new);
    let _ = std::fs::remove_file(tmp);
}

fn io_err(path: &Path, op: &'static str, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The compaction lock, held.
struct CompactLock {
    inner: Arc<Store>,
}

impl CompactLock {
    fn take(inner: &Arc<Store>) -> Result<CompactLock> {
        match storage::file::compact_lock(inner.arena.file(), true) {
            Ok(true) => Ok(CompactLock {
                inner: inner.clone(),
            }),
            Ok(false) => Err(Error::Locked {
                path: inner.path.clone(),
                detail: "another compaction of this store is running",
            }),
            Err(source) => Err(io_err(&inner.path, "take the compaction lock", source)),
        }
    }
}

impl Drop for CompactLock {
    fn drop(&mut self) {
        let _ = storage::file::compact_lock(self.inner.arena.file(), false);
    }
}
