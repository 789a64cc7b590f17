//! The public handle: open, read, write, flush, close.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::index::{self, Desc, Table, TableFull};
use crate::log::record::{
    self, record_len, seq_gen, seq_of, BodyCrc, Header, HEADER_LEN, KIND_DEL, KIND_PUT,
    MAX_KEY_LEN, MAX_VALUE_LEN, TTL_LEN,
};
use crate::options::{Durability, Options};
use crate::recovery;
use crate::storage::control::{Control, Durable, State, NOTIFY};
use crate::storage::lock::{futex_wake_all, Held, LockError, Registration};
use crate::storage::mapping::{Arena, MapMode, OutOfBounds};
use crate::storage::meta::{Meta, FLAG_CLEAN, FORMAT_VERSION, MAGIC};
use crate::storage::{
    self, ARENA_START, CONTROL_OFFSET, FORMAT_PAGE, GRANULE, META_A_OFFSET, META_B_OFFSET,
};
use crate::OpenKind;
use crate::{Error, Result, Value};

/// A handle to an open store. Cheap to clone; clones share one mapping and
/// may be used from any number of threads. Other handles on the same file,
/// opened in this or other processes, share the store too.
///
/// Reads ([`get`](Db::get), [`contains_key`](Db::contains_key),
/// [`iter`](Db::iter), [`len`](Db::len)) take no lock and make no system
/// call. Writes from every thread and process are serialised by one writer
/// lock. The store is closed cleanly when the last read-write handle, in
/// any process, is dropped (or closed with [`close`](Db::close), which
/// reports errors).
///
/// ```
/// use mapkv::Db;
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("db.mapkv");
/// let db = Db::open(&path)?;
/// db.insert(b"apple", b"red")?;
/// assert_eq!(db.get(b"apple")?.as_deref(), Some(&b"red"[..]));
/// assert!(db.remove(b"apple")?);
/// assert!(db.get(b"apple")?.is_none());
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone)]
pub struct Db {
    pub(crate) shared: Arc<Shared>,
}

/// What the clones of one `Db` share: the store they currently use, which
/// changes when a compaction (in any process) moves the store to a new
/// file, and what it takes to follow it there.
pub(crate) struct Shared {
    /// The current store. Readers `load` it without touching a reference
    /// count; an old store lives until its last reader lets go of it.
    pub(crate) current: ArcSwap<Inner>,
    /// The real file's path, resolved once at open (symlinks followed):
    /// following a move, compaction's new file and its rename all use it,
    /// so a store opened through a symlink stays one store.
    pub(crate) path: PathBuf,
    /// The path as the caller gave it ([`Db::path`]).
    given: PathBuf,
    pub(crate) opts: Options,
    /// Serialises following a move.
    follow: Mutex<()>,
    /// An automatic compaction or a background eviction is running in
    /// this process.
    background: Arc<AtomicBool>,
    /// Cache mode: hits and misses of reads through this handle.
    pub(crate) hits: crate::cache::HitCounters,
    /// Held while a compaction through this handle (or a clone) runs: the
    /// cross-process compaction lock is per open file description, which
    /// clones share, so it cannot tell them apart.
    pub(crate) compacting: Mutex<()>,
    /// A read through this handle met a slot that disagrees with the log:
    /// the next write rebuilds the index first (see `repair`).
    pub(crate) index_suspect: AtomicBool,
}

/// How long an operation keeps following the store to new files (each
/// follow means another compaction finished meanwhile): at least
/// `MIN_FOLLOWS` times, and after that until `lock_timeout` has passed, so
/// that a storm of evictions delays an operation but does not fail it.
pub(crate) struct Follows {
    n: u32,
    timeout: std::time::Duration,
    /// Set at the first follow (reads that never follow never look at the
    /// clock).
    until: Option<std::time::Instant>,
}

const MIN_FOLLOWS: u32 = 8;

impl Follows {
    pub(crate) fn new(timeout: std::time::Duration) -> Follows {
        Follows {
            n: 0,
            timeout,
            until: None,
        }
    }

    /// Whether to follow once more.
    pub(crate) fn again(&mut self) -> bool {
        self.n += 1;
        let now = std::time::Instant::now();
        let until = *self.until.get_or_insert_with(|| now + self.timeout);
        self.n <= MIN_FOLLOWS || now < until
    }
}

impl Db {
    /// The current store, after following it if a compaction moved it.
    #[inline]
    pub(crate) fn inner(&self) -> arc_swap::Guard<Arc<Inner>> {
        let g = self.shared.current.load();
        if g.is_current() {
            g
        } else {
            self.shared.follow(&g);
            self.shared.current.load()
        }
    }

    /// Run a read against the current store (no check up front: `table`
    /// reports a move, and then the read follows and runs again).
    #[inline]
    pub(crate) fn read<R>(&self, f: impl FnMut(&Inner) -> Result<R>) -> Result<R> {
        self.following(f).map_err(|e| self.note_damage(e))
    }

    /// Run a write against the current store; if the store moved to a new
    /// file meanwhile (the writer lock says so), follow it and run again.
    /// No check up front: taking the writer lock checks.
    ///
    /// In cache mode a write that finds the file full evicts (or waits for
    /// an eviction) and runs again; after a write, an eviction may start in
    /// the background.
    pub(crate) fn write<R>(&self, mut f: impl FnMut(&Inner) -> Result<R>) -> Result<R> {
        let mut attempt = 0;
        let mut deadline = None;
        let mut repaired = false;
        self.repair_if_suspect();
        loop {
            match self.following(&mut f) {
                // A slot that disagrees with the log: rebuild the index
                // from the log and run once more.
                Err(e @ Error::Corrupted { .. }) if !repaired => {
                    repaired = true;
                    if !self.repair_after(&e) {
                        return Err(e);
                    }
                }
                Err(Error::Full { wanted, size }) => {
                    attempt += 1;
                    let until = *deadline.get_or_insert_with(|| {
                        std::time::Instant::now() + self.shared.opts.lock_timeout
                    });
                    self.make_room(wanted, size, attempt, until)?;
                }
                r => {
                    if r.is_ok() {
                        let i = self.shared.current.load();
                        if self.shared.opts.auto_compact.is_some() {
                            self.maybe_auto_compact(&i);
                        }
                        if i.cache && self.shared.opts.evict_ahead {
                            self.maybe_evict_ahead(&i);
                        }
                    }
                    return r;
                }
            }
        }
    }

    /// Run `f` on the current store, following the store to its new file
    /// and running again whenever `f` says it moved (`Error::Moved`).
    #[inline]
    pub(crate) fn following<R>(&self, mut f: impl FnMut(&Inner) -> Result<R>) -> Result<R> {
        let mut follows = Follows::new(self.shared.opts.lock_timeout);
        loop {
            let i = self.shared.current.load();
            match f(&i) {
                Err(Error::Moved) if follows.again() => self.shared.follow(&i),
                Err(Error::Moved) => {
                    return Err(i.corrupt(
                        CONTROL_OFFSET,
                        "the store says it moved to a new file, but the path still names this one",
                    ))
                }
                r => return r,
            }
        }
    }

    /// Start a compaction in a background thread if the log is mostly
    /// dead (`Options::auto_compact`).
    fn maybe_auto_compact(&self, i: &Inner) {
        let Some(fraction) = self.shared.opts.auto_compact else {
            return;
        };
        if i.read_only {
            return;
        }
        let Ok(c) = i.control() else {
            return;
        };
        let (st, _) = c.snapshot(4);
        let used = st.tail.saturating_sub(ARENA_START);
        let index = Desc::decode(st.index_desc).map_or(0, |d| d.bytes());
        let dead = used.saturating_sub(st.live_bytes).saturating_sub(index);
        if used < (1 << 20) || (dead as f64) < fraction * used as f64 {
            return;
        }
        // Errors (another process compacting, no space) just mean not
        // now; the next commit past the threshold tries again.
        self.in_background("mapkv-compact", |db| {
            let _ = db.compact();
        });
    }

    /// Run `job` on a clone of this handle in a new thread, unless a
    /// background job of this handle is running already.
    pub(crate) fn in_background(&self, name: &str, job: impl FnOnce(&Db) + Send + 'static) {
        if self.shared.background.swap(true, Ordering::AcqRel) {
            return; // one at a time
        }
        let db = self.clone();
        let flag = self.shared.background.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                job(&db);
                // Let go of the handle first: `close` waits for the flag,
                // then needs to be the last clone.
                drop(db);
                flag.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.shared.background.store(false, Ordering::Release);
        }
    }
}

impl Shared {
    /// `old` is not current any more: a compaction is finishing or has
    /// finished. If the path now names another file, open it (joining the
    /// store there) and make it current; otherwise keep `old`.
    pub(crate) fn follow(&self, old: &Arc<Inner>) {
        let _g = self.follow.lock();
        if !Arc::ptr_eq(&self.current.load(), old) {
            return; // another thread followed already
        }
        let Ok(md) = std::fs::metadata(&self.path) else {
            return;
        };
        use std::os::unix::fs::MetadataExt;
        if (md.dev(), md.ino()) == old.file_id {
            return; // not renamed yet: the old file is still the store
        }
        match Inner::open(&self.path, self.opts.clone()) {
            Ok(new) if new.hash_seed == old.hash_seed && new.salt == old.salt => {
                // The old store must not be closed as if it were ours: the
                // compactor finished it.
                old.closed.store(true, Ordering::Release);
                self.current.store(Arc::new(new));
            }
            // Something else now has the name, or it cannot be opened:
            // keep reading the old file; the next operation tries again.
            Ok(other) => {
                other.closed.store(true, Ordering::Release);
            }
            Err(_) => {}
        }
    }
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) arena: Arena,
    pub(crate) hash_seed: u64,
    pub(crate) salt: u32,
    pub(crate) durability: Durability,
    pub(crate) read_only: bool,
    pub(crate) growth_step: u64,
    max_size: u64,
    /// The store is a cache (it was when this handle opened it).
    pub(crate) cache: bool,
    /// Cache mode on a writable mapping: reads count hits in the slots.
    pub(crate) count_hits: bool,
    /// Recovery or repair is running: growth ignores the capacity.
    recovering: AtomicBool,
    writer: Mutex<Writer>,
    /// Whether writes take the cross-process writer mutex (read-write
    /// handles on a shared mapping; read-only handles never write).
    pub(crate) cross: bool,
    /// This process's id, stored in the control block while writing.
    pid: u64,
    /// How long a wait for the writer lock may last.
    pub(crate) lock_timeout: std::time::Duration,
    /// Whether this handle holds the exclusive open lock (it is alone:
    /// only between a sole writer's open and its stepping down, and at a
    /// close that finds it alone).
    exclusive: AtomicBool,
    poisoned: AtomicBool,
    poison_cause: Mutex<String>,
    pub(crate) closed: AtomicBool,
    opened: OpenKind,
    /// Device and inode of the file: tells whether the path still names it.
    pub(crate) file_id: (u64, u64),
    /// The meta's random file nonce: with `file_id`, names this file even
    /// after its inode number is reused by a later file.
    pub(crate) file_nonce: u32,
}

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
    /// This handle's registration slot (claimed at the first cross-process
    /// lock, and again in a child forked after that).
    reg: Option<Registration>,
}

/// The writer lock, held: the in-process mutex and, for read-write handles
/// on a shared store, the cross-process mutex in the mapping. Dropping it
/// stores the writer state into the control block and releases both.
pub(crate) struct WriteGuard<'a> {
    inner: &'a Inner,
    w: parking_lot::MutexGuard<'a, Writer>,
    /// The cross-process lock word as we took it (read-write handles on a
    /// shared store).
    held: Option<Held>,
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        &self.w
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Writer {
        &mut self.w
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let Some(held) = self.held else {
            return;
        };
        if let Ok(c) = self.inner.control() {
            c.set_durable(&self.w.dur);
            // An odd seqlock means a change was left half-made (an index
            // update failed); unpublished bytes past the tail would share
            // the generation of the next commit: in both cases keep the
            // writer word set so that the next holder repairs first.
            if c.version() % 2 == 0 && !self.w.unpublished {
                c.set_writer(0);
            }
        }
        // Unlocking fails only if something overwrote the lock word while
        // we held it; the word then names someone else, whom we must not
        // release. Nothing more can be done from drop.
        let _ = self.inner.arena.unlock_writer(held);
    }
}

/// One operation of a commit.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    /// A put that expires at the given time (ms since the Unix epoch).
    PutTtl(&'a [u8], &'a [u8], u64),
    Del(&'a [u8]),
}

impl Op<'_> {
    fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::PutTtl(k, _, _) | Op::Del(k) => k,
        }
    }
    /// The caller's value (without an expiry prefix).
    fn value(&self) -> &[u8] {
        match self {
            Op::Put(_, v) | Op::PutTtl(_, v, _) => v,
            Op::Del(_) => &[],
        }
    }
    fn is_put(&self) -> bool {
        !matches!(self, Op::Del(_))
    }
    /// The expiry prefix stored in front of the value, if any.
    fn prefix(&self) -> Option<[u8; TTL_LEN]> {
        match self {
            Op::PutTtl(_, _, at) => Some(at.to_le_bytes()),
            _ => None,
        }
    }
    /// Bytes of the record's value area (prefix and value).
    fn stored_len(&self) -> usize {
        self.value().len() + if self.prefix().is_some() { TTL_LEN } else { 0 }
    }
}

/// `buf` holds a key of `klen` bytes and a TTL put's value area: remove the
/// expiry prefix, leaving key and value. Returns false (and leaves `buf`
/// alone) if the entry has expired.
pub(crate) fn strip_ttl(buf: &mut Vec<u8>, klen: usize) -> bool {
    let at = expiry_of(&buf[klen.min(buf.len())..]);
    if at <= now_ms() {
        return false;
    }
    buf.drain(klen..(klen + TTL_LEN).min(buf.len()));
    true
}

/// The expiry time `ttl` from now.
pub(crate) fn expiry_after(ttl: std::time::Duration) -> u64 {
    now_ms().saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64)
}

/// Milliseconds since the Unix epoch, now (the clock expiry times use).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The expiry time of a TTL put, from the first bytes of its value area.
pub(crate) fn expiry_of(value_area: &[u8]) -> u64 {
    let mut b = [0u8; TTL_LEN];
    let n = value_area.len().min(TTL_LEN);
    b[..n].copy_from_slice(&value_area[..n]);
    u64::from_le_bytes(b)
}

/// What [`Db::stats`] reports.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("s.mapkv"))?;
/// db.insert(b"k", b"v")?;
/// db.insert(b"k", b"w")?; // the first record is now dead
/// let stats = db.stats();
/// assert_eq!(stats.keys, 1);
/// assert_eq!(stats.commits, 2);
/// assert!(stats.dead_bytes > 0);
/// assert!(stats.index_load < 0.75);
/// assert_eq!(stats.opened, mapkv::OpenKind::Clean);
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Live keys.
    pub keys: u64,
    /// Bytes of the records of live keys (headers and padding included).
    pub live_bytes: u64,
    /// Log bytes no live key uses: overwritten and removed records,
    /// tombstones, old index tables, and the header and alignment padding
    /// (up to 4 KiB) in front of the current index table.
    pub dead_bytes: u64,
    /// Bytes of the current index table.
    pub index_bytes: u64,
    /// Bytes from the start of the arena to the log tail.
    pub used_bytes: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Slots in the index table.
    pub index_capacity: u64,
    /// Occupied slots (live keys and tombstones).
    pub index_used: u64,
    /// `index_used / index_capacity`; the table is rebuilt before it passes 0.75.
    pub index_load: f64,
    /// Log tail: where the next record goes.
    pub tail: u64,
    /// Everything below this offset is on stable storage.
    pub durable_tail: u64,
    /// Commits so far (sequence number of the last commit).
    pub commits: u64,
    /// Recovery generation (bumped by every recovery from a crash).
    pub generation: u64,
    /// Times the file outgrew its address-space reservation and was remapped.
    pub remaps: u64,
    /// How the last open found the store.
    pub opened: OpenKind,
}

impl From<TableFull> for Error {
    fn from(_: TableFull) -> Error {
        // Replaced by a located error where the table is known; see corrupt().
        Error::Corrupted {
            path: PathBuf::new(),
            offset: 0,
            what: "index table has no empty slot".into(),
        }
    }
}

/// The start of the poison cause a failed index update leaves.
const INDEX_UPDATE_FAILED: &str = "index update failed";

/// The smallest record: a header and an empty key (an upper bound on how
/// many keys a log of a given length can hold).
pub(crate) const MIN_RECORD_LEN: u64 = HEADER_LEN;

/// `st` with every counter clamped to what a file of `file_len` bytes can
/// hold. The control block may hold anything (another process, a crash, an
/// attacker): a counter read from it drives a choice or an allocation only
/// after passing through here (or `recovery::plausible`).
pub(crate) fn bounded(mut st: State, file_len: u64) -> State {
    st.tail = st.tail.min(file_len).min(storage::MAX_FILE_LEN);
    let log = st.tail.saturating_sub(ARENA_START);
    st.live_bytes = st.live_bytes.min(log);
    st.live_keys = st.live_keys.min(log / MIN_RECORD_LEN);
    let slots = Desc::decode(st.index_desc).map_or(0, |d| d.capacity());
    st.index_used = st.index_used.min(slots);
    st.live_keys = st.live_keys.min(slots);
    st
}

impl Inner {
    pub(crate) fn corrupt(&self, offset: u64, what: impl Into<String>) -> Error {
        Error::Corrupted {
            path: self.path.clone(),
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn locate(&self, e: Error, offset: u64) -> Error {
        match e {
            Error::Corrupted { path, what, .. } if path.as_os_str().is_empty() => {
                Error::Corrupted {
                    path: self.path.clone(),
                    offset,
                    what,
                }
            }
            e => e,
        }
    }

    /// Take the writer lock: the in-process mutex, then (read-write handles
    /// on a shared store) the cross-process lock, each within
    /// `lock_timeout`. Loads the writer state that the previous holder, in
    /// any process, left in the control block, and first repairs the store
    /// if that holder died or failed in the middle of a change.
    pub(crate) fn lock_writer(&self) -> Result<WriteGuard<'_>> {
        let mut g = self.take_lock()?;
        if g.held.is_none() {
            return Ok(g);
        }
        let c = self.control()?;
        match c.magic() {
            crate::storage::control::CONTROL_MAGIC => {}
            crate::storage::control::MOVED_MAGIC => return Err(Error::Moved),
            crate::storage::control::MOVING_MAGIC => {
                // A compactor set this and then died (or failed) holding the
                // lock. Did its rename happen?
                if self.path_names_other_file() {
                    c.set_magic(crate::storage::control::MOVED_MAGIC);
                    self.notify();
                    return Err(Error::Moved);
                }
                c.set_magic(crate::storage::control::CONTROL_MAGIC);
            }
            m => {
                return Err(self.corrupt(
                    CONTROL_OFFSET,
                    format!("control block magic {m:#x} is not mapkv's"),
                ))
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
        g.w.dur = c.durable();
        let dirty = c.writer() != 0;
        c.set_writer(self.pid);
        if dirty || !consistent || !self.trustworthy(&st, &g.w.dur) {
            let _r = self.recovering();
            recovery::repair_live(self, &mut g.w)?;
        } else {
            g.w.st = st;
        }
        Ok(g)
    }

    /// The writer lock, and nothing else: no look at the control block
    /// (the caller starts a session, or checks it next). Bounded by
    /// `lock_timeout` in all.
    pub(crate) fn take_lock(&self) -> Result<WriteGuard<'_>> {
        let timeout = |what, holder| Error::Timeout {
            path: self.path.clone(),
            what,
            waited: self.lock_timeout,
            holder,
        };
        // No clock unless we have to wait.
        let mut w = match self.writer.try_lock() {
            Some(w) => w,
            None => self.writer.try_lock_for(self.lock_timeout).ok_or_else(|| {
                timeout(
                    "the writer lock (another thread of this process holds it)",
                    None,
                )
            })?,
        };
        if !self.cross {
            return Ok(WriteGuard {
                inner: self,
                w,
                held: None,
            });
        }
        let ioe = |op, source| Error::Io {
            op,
            path: self.path.clone(),
            source,
        };
        if !w.reg.as_ref().is_some_and(|r| r.is_ours()) {
            w.reg = Some(
                Registration::new(&self.arena)
                    .map_err(|e| ioe("register as a writer of the store", e))?,
            );
        }
        let reg = w.reg.as_ref().expect("registered just above");
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
            inner: self,
            w,
            held: Some(held),
        })
    }

    /// Whether the writer state read from the control block can be
    /// written on: its counters and offsets within what the file holds,
    /// the durable bookkeeping at or below them. If not (a hostile or
    /// damaged word), the writer repairs the store from the log first
    /// instead of appending at an offset the file never gave it. A few
    /// compares; the file's length is looked up again only when the tail
    /// seems to be past it (another process grew the file).
    fn trustworthy(&self, st: &State, dur: &Durable) -> bool {
        let plausible = recovery::plausible(self, st)
            || (st.tail > self.arena.len()
                && self.arena.refresh().is_ok()
                && recovery::plausible(self, st));
        plausible
            && dur.tail % 8 == 0
            && dur.tail >= ARENA_START
            && dur.tail <= st.tail
            && seq_of(dur.seq_gen) <= seq_of(st.seq_gen)
            && dur.len <= storage::MAX_FILE_LEN
            && (dur.synced_copy == META_A_OFFSET || dur.synced_copy == META_B_OFFSET)
            && dur.meta_seq <= u64::MAX / 4
    }

    /// Whether the store's path now names a different file than ours.
    pub(crate) fn path_names_other_file(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).is_ok_and(|md| (md.dev(), md.ino()) != self.file_id)
    }

    /// Tell waiters in every process that a commit landed.
    pub(crate) fn notify(&self) {
        if let Ok(word) = self.arena.atomic_u32(CONTROL_OFFSET + NOTIFY) {
            word.fetch_add(1, Ordering::SeqCst);
            let waiting = self
                .control()
                .map(|c| c.waiters().load(Ordering::SeqCst))
                .unwrap_or(1);
            if waiting > 0 {
                futex_wake_all(word);
            }
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

    pub(crate) fn control(&self) -> Result<Control<'_>> {
        Control::new(&self.arena)
            .map_err(|_| self.corrupt(CONTROL_OFFSET, "control block outside the file"))
    }

    /// The current slot table, checked against the file. `Error::Moved`
    /// if a compaction moved the store to a new file (the caller follows
    /// it): the magic word shares a cache line with the descriptor, so
    /// this check costs readers nothing measurable.
    #[inline]
    pub(crate) fn table(&self) -> Result<(Table<'_>, Desc)> {
        let c = self.control()?;
        let magic = c.magic();
        if magic != crate::storage::control::CONTROL_MAGIC && self.arena.mode() != MapMode::Private
        {
            self.moved_check(magic)?;
        }
        self.table_at(c.index_desc())
    }

    /// Slow path of `table`: MOVED means moved; MOVING means moved only once
    /// the name names another file (until then this file is still the
    /// store); anything else is damage, reported by the descriptor checks.
    #[cold]
    fn moved_check(&self, magic: u64) -> Result<()> {
        use crate::storage::control::{MOVED_MAGIC, MOVING_MAGIC};
        if magic == MOVED_MAGIC || (magic == MOVING_MAGIC && self.path_names_other_file()) {
            return Err(Error::Moved);
        }
        Ok(())
    }

    pub(crate) fn table_at(&self, w: u64) -> Result<(Table<'_>, Desc)> {
        let d = Desc::decode(w)
            .filter(|d| d.start >= ARENA_START)
            .ok_or_else(|| {
                self.corrupt(CONTROL_OFFSET + 32, format!("bad index descriptor {w:#x}"))
            })?;
        let slots = self
            .arena
            .atomics(d.start, d.capacity())
            .map_err(|_| self.corrupt(d.start, "index table runs past the end of the file"))?;
        Ok((Table::new(slots, d.log2cap), d))
    }

    /// Read and check the header of the record a slot points at.
    #[inline]
    pub(crate) fn header_at(&self, off: u64) -> Result<Header> {
        if off < ARENA_START {
            return Err(self.corrupt(off, "slot points into the file header"));
        }
        let mut b = [0u8; HEADER_LEN as usize];
        self.arena
            .read(off, &mut b)
            .map_err(|_| self.corrupt(off, "slot points past the end of the file"))?;
        Ok(Header::from_bytes(&b))
    }

    /// Does the record at `off` hold `key`? Reads the header and key only.
    pub(crate) fn key_eq(&self, off: u64, key: &[u8]) -> Result<bool> {
        let h = self.header_at(off)?;
        if h.kind != KIND_PUT {
            return Err(self.corrupt(off, "slot points at something that is not a live record"));
        }
        if h.key_len as usize != key.len() {
            return Ok(false);
        }
        let mut small = [0u8; 64];
        let mut big;
        let buf: &mut [u8] = if key.len() <= small.len() {
            &mut small[..key.len()]
        } else {
            big = vec![0u8; key.len()];
            &mut big
        };
        self.arena
            .read(off + HEADER_LEN, buf)
            .map_err(|_| self.corrupt(off, "record runs past the end of the file"))?;
        Ok(buf == key)
    }

    /// Copy the key and value of the put record at `off` into one buffer
    /// (key first) and verify the record's CRC over the copy.
    pub(crate) fn read_record(&self, off: u64, h: &Header) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_record_into(off, h, &mut buf)?;
        Ok(buf)
    }

    fn read_record_into(&self, off: u64, h: &Header, buf: &mut Vec<u8>) -> Result<()> {
        self.copy_record(off, h, buf)?;
        self.verify_record(off, h, buf)
    }

    /// Copy the key and value of the put record at `off` into `buf` (key
    /// first), after checking its kind and that it lies inside the file;
    /// nothing is allocated for a length the file cannot hold.
    fn copy_record(&self, off: u64, h: &Header, buf: &mut Vec<u8>) -> Result<()> {
        if h.kind != KIND_PUT {
            return Err(self.corrupt(off, "slot points at something that is not a live record"));
        }
        let n = h.key_len as usize + h.val_len as usize;
        if !self.within_file((off + HEADER_LEN).saturating_add(n as u64)) {
            return Err(self.corrupt(off, "record runs past the end of the file"));
        }
        buf.clear();
        buf.resize(n, 0);
        self.arena
            .read(off + HEADER_LEN, buf)
            .map_err(|_| self.corrupt(off, "record runs past the end of the file"))
    }

    /// Whether the file has at least `end` bytes: the verified length, or,
    /// if that is shorter (another process may have grown the file), what
    /// `fstat` says now.
    #[inline]
    pub(crate) fn within_file(&self, end: u64) -> bool {
        end <= self.arena.len() || self.arena.refresh().is_ok_and(|l| end <= l)
    }

    /// Check the record CRC over a copy made by `copy_record`.
    fn verify_record(&self, off: u64, h: &Header, copy: &[u8]) -> Result<()> {
        let mut crc = BodyCrc::new(self.salt, off, &h.tail_bytes());
        crc.update(copy);
        if crc.finish() != h.crc {
            return Err(self.corrupt(off, "record fails its checksum"));
        }
        Ok(())
    }

    /// The key of the record at `off` (header already read), unverified.
    pub(crate) fn read_key(&self, off: u64, h: &Header) -> Result<Vec<u8>> {
        let mut k = vec![0u8; h.key_len as usize];
        self.arena
            .read(off + HEADER_LEN, &mut k)
            .map_err(|_| self.corrupt(off, "record runs past the end of the file"))?;
        Ok(k)
    }

    /// The full hash of the key a live slot word points at.
    pub(crate) fn rehash(&self, word: u64) -> Result<u64> {
        let o = index::word_offset(word);
        let h = self.header_at(o)?;
        Ok(index::hash(self.hash_seed, &self.read_key(o, &h)?))
    }

    /// Length of the live record at `off` (for accounting).
    fn live_len(&self, off: u64) -> Result<u64> {
        let h = self.header_at(off)?;
        if h.kind != KIND_PUT {
            return Err(self.corrupt(off, "slot points at something that is not a live record"));
        }
        Ok(record_len(h.key_len as usize, h.val_len as usize))
    }

    /// The read path: find `key` and copy its record's key and value into
    /// `buf` (key first), verified by CRC. Returns the key length.
    #[inline]
    pub(crate) fn fetch(&self, key: &[u8], buf: &mut Vec<u8>) -> Result<Option<usize>> {
        let (t, d) = self.table()?;
        let h = index::hash(self.hash_seed, key);
        let mut ttl = false;
        let found = t
            .find(h, |off| {
                // Start all of the record's cache lines loading at once.
                self.arena
                    .prefetch(off, HEADER_LEN + (key.len() as u64) + 256);
                let hd = self.header_at(off)?;
                if hd.kind == KIND_PUT && hd.key_len as usize != key.len() {
                    return Ok(false);
                }
                self.copy_record(off, &hd, buf)?;
                if &buf[..key.len()] != key {
                    return Ok(false);
                }
                self.verify_record(off, &hd, buf)?;
                ttl = hd.has_ttl();
                Ok(true)
            })
            .map_err(|e| self.locate(e, d.start))?;
        if let (Some((slot, w)), true) = (found, self.count_hits) {
            t.touch(slot, w); // cache mode: a hit earns a second chance
        }
        if found.is_some() && ttl && !strip_ttl(buf, key.len()) {
            return Ok(None); // expired: invisible
        }
        Ok(found.map(|_| key.len()))
    }

    /// Mark recovery as running until the guard drops.
    pub(crate) fn recovering_guard(&self) -> impl Drop + '_ {
        self.recovering()
    }

    fn recovering(&self) -> impl Drop + '_ {
        struct Recovering<'a>(&'a AtomicBool);
        impl Drop for Recovering<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.recovering.store(true, Ordering::Release);
        Recovering(&self.recovering)
    }

    /// Set the hit count of `key`'s entry (compaction carries counts over
    /// to its new file, which nobody else writes yet).
    pub(crate) fn set_freq(&self, key: &[u8], f: u64) -> Result<()> {
        let (t, d) = self.table()?;
        let h = index::hash(self.hash_seed, key);
        if let Some((slot, w)) = t
            .find(h, |off| self.key_eq(off, key))
            .map_err(|e| self.locate(e, d.start))?
        {
            t.set_freq(slot, w, f);
        }
        Ok(())
    }

    /// Whether the put at `off` (header `hd`) has an expiry and it is at or
    /// before `now` (reads the 8-byte prefix; not CRC-checked, like a key
    /// comparison).
    pub(crate) fn expired_at(&self, off: u64, hd: &Header, now: u64) -> Result<bool> {
        if !hd.has_ttl() {
            return Ok(false);
        }
        let mut at = [0u8; TTL_LEN];
        self.arena
            .read(off + HEADER_LEN + hd.key_len as u64, &mut at)
            .map_err(|_| self.corrupt(off, "record runs past the end of the file"))?;
        Ok(expiry_of(&at) <= now)
    }

    /// Read a key's record: `Some((record offset, header))`; `None` if the
    /// key is absent or its entry has expired.
    #[inline]
    pub(crate) fn lookup(&self, key: &[u8]) -> Result<Option<(u64, Header)>> {
        let (t, d) = self.table()?;
        let h = index::hash(self.hash_seed, key);
        let found = t
            .find(h, |off| self.key_eq(off, key))
            .map_err(|e| self.locate(e, d.start))?;
        match found {
            None => Ok(None),
            Some((_, w)) => {
                let off = index::word_offset(w);
                let hd = self.header_at(off)?;
                if self.expired_at(off, &hd, now_ms())? {
                    return Ok(None);
                }
                Ok(Some((off, hd)))
            }
        }
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                path: self.path.clone(),
                cause: self.poison_cause.lock().clone(),
            });
        }
        Ok(())
    }

    /// Whether the handle refuses writes because an index update failed
    /// midway (a slot that disagrees with the log), which rebuilding the
    /// index from the log fixes.
    pub(crate) fn poisoned_by_index(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
            && self.poison_cause.lock().starts_with(INDEX_UPDATE_FAILED)
    }

    /// After the index was rebuilt from the log: lift a poison that a
    /// failed index update set (and only that one).
    pub(crate) fn unpoison_index(&self) {
        let mut cause = self.poison_cause.lock();
        if cause.starts_with(INDEX_UPDATE_FAILED) {
            cause.clear();
            self.poisoned.store(false, Ordering::Release);
        }
    }

    /// Record a sync failure: the handle refuses writes from now on.
    fn poison(&self, op: &'static str, e: io::Error) -> Error {
        *self.poison_cause.lock() = format!("{op}: {e}");
        self.poisoned.store(true, Ordering::Release);
        Error::Io {
            op,
            path: self.path.clone(),
            source: e,
        }
    }

    /// Make sure the file is at least `end` bytes long.
    pub(crate) fn ensure_space(&self, end: u64) -> Result<()> {
        let len = self.arena.len();
        if end <= len {
            return Ok(());
        }
        let out_of_space = |wanted, reason: String| Error::OutOfSpace {
            path: self.path.clone(),
            wanted,
            reason,
        };
        let c = self.control().ok();
        let mut cap = c.map_or(0, |c| c.capacity());
        if cap != 0 && end > cap && end <= self.max_size {
            if self.recovering.load(Ordering::Acquire) {
                // Recovery may overshoot a cache's capacity by the index
                // table it rebuilds (no more: no doubling); the next
                // eviction gives the space back.
                cap = storage::align_up(end, GRANULE).unwrap_or(end);
            } else {
                // Cache mode: eviction makes room (see Db::write).
                let tail = c.map_or(0, |c| c.tail());
                return Err(Error::Full {
                    wanted: end,
                    size: end.saturating_sub(tail),
                });
            }
        }
        let limit = if cap != 0 {
            cap.min(self.max_size)
        } else {
            self.max_size
        };
        if end > self.max_size {
            return Err(out_of_space(
                end,
                format!("the size limit is {} bytes", self.max_size),
            ));
        }
        let mut new_len = storage::next_file_len(len, end, self.growth_step)
            .ok_or_else(|| out_of_space(end, "length overflows".into()))?;
        if new_len > limit {
            new_len = storage::align_up(end, GRANULE)
                .filter(|&n| n <= limit)
                .unwrap_or(limit);
        }
        if self.arena.mode() == MapMode::Private {
            // Only recovery on a read-only handle gets here.
            return Err(Error::NeedsRecovery {
                path: self.path.clone(),
                reason: "the index must be rebuilt into new space, which a read-only handle cannot add; \
                         open the store read-write once"
                    .into(),
            });
        }
        self.arena
            .grow(new_len)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT) => {
                    out_of_space(new_len, e.to_string())
                }
                _ => Error::Io {
                    op: "grow file",
                    path: self.path.clone(),
                    source: e,
                },
            })?;
        if let Ok(c) = self.control() {
            c.set_file_len(new_len);
        }
        Ok(())
    }

    fn write_bytes(&self, off: u64, data: &[u8]) -> Result<()> {
        self.arena
            .write(off, data)
            .map_err(|OutOfBounds| self.corrupt(off, "write outside the file (internal error)"))
    }

    /// Apply one put/delete record at `off` to table `t`, updating `st`.
    /// Shared by the write path and recovery.
    pub(crate) fn apply(
        &self,
        t: &Table<'_>,
        st: &mut State,
        off: u64,
        h: &Header,
        key: &[u8],
    ) -> Result<()> {
        let hash = index::hash(self.hash_seed, key);
        match h.kind {
            KIND_PUT => {
                let up = t.upsert(hash, index::make_word(hash, off), |o| self.key_eq(o, key))?;
                st.index_used = st.index_used.saturating_add(up.took_empty as u64);
                match up.old {
                    Some(w) => {
                        let old = self.live_len(index::word_offset(w))?;
                        st.live_bytes = st.live_bytes.saturating_sub(old);
                    }
                    None => st.live_keys = st.live_keys.saturating_add(1),
                }
                st.live_bytes = st
                    .live_bytes
                    .saturating_add(record_len(h.key_len as usize, h.val_len as usize));
            }
            _ => {
                if let Some((slot, w)) = t.find(hash, |o| self.key_eq(o, key))? {
                    let old = self.live_len(index::word_offset(w))?;
                    t.remove_at(slot);
                    st.live_keys = st.live_keys.saturating_sub(1);
                    st.live_bytes = st.live_bytes.saturating_sub(old);
                }
            }
        }
        Ok(())
    }

    /// Rebuild the index into a larger (or tombstone-free) table if `more`
    /// new entries would push it past 3/4 load. The new table is an index
    /// chunk appended at the tail; readers switch to it atomically.
    ///
    /// `then` is the number of bytes the caller appends after the table
    /// (the commit's records): the file is grown for both at once, so that
    /// running out of space fails before anything is written.
    pub(crate) fn ensure_index_room(&self, w: &mut Writer, more: u64, then: u64) -> Result<()> {
        let (old, d) = self.table_at(w.st.index_desc)?;
        if index::fits(d.capacity(), w.st.index_used, more) {
            return Ok(());
        }
        let log2 = index::log2cap_for(w.st.live_keys.saturating_add(more).saturating_mul(3) / 2);
        let off = w.st.tail;
        let start =
            record::index_table_start(off).ok_or_else(|| self.corrupt(off, "tail overflows"))?;
        let new = Desc {
            start,
            log2cap: log2,
        };
        let end = start + new.bytes();
        self.ensure_space(
            end.checked_add(then)
                .ok_or_else(|| self.corrupt(off, "tail overflows"))?,
        )?;
        let hdr = record::encode_index(self.salt, off, log2);
        w.unpublished = true;
        self.write_bytes(off, &hdr.to_bytes())?;
        self.arena.advise_hugepage(start, new.bytes());
        self.arena
            .zero(start, new.bytes())
            .map_err(|_| self.corrupt(start, "index table outside the file"))?;
        let (nt, _) = self.table_at(new.encode())?;
        let n = old.copy_into(&nt, |word| self.rehash(word))?;
        // Not published here: the caller publishes the new descriptor with
        // the commit that needed it (control block begin/end).
        w.st.index_desc = new.encode();
        w.st.index_used = n;
        w.st.tail = end;
        Ok(())
    }

    /// Start the cache misses of a batch in parallel: first every key's home
    /// slot, then the record each home slot points at (when its tag
    /// matches). Applying the batch then finds most lines in cache instead
    /// of waiting for two misses per key, one after the other.
    fn prefetch_keys<'k>(&self, t: &Table<'_>, d: Desc, keys: impl Iterator<Item = &'k [u8]>) {
        let hashes: Vec<u64> = keys.map(|k| index::hash(self.hash_seed, k)).collect();
        for &h in &hashes {
            self.arena.prefetch(d.start + 8 * t.home(h) as u64, 8);
        }
        for &h in &hashes {
            if let Some(w) = t.word_at(t.home(h)) {
                if index::is_live(w) && index::same_tag(w, h) {
                    self.arena.prefetch(index::word_offset(w), 64);
                }
            }
        }
    }

    /// Write, publish and (per durability) sync one commit.
    pub(crate) fn commit(&self, ops: &[Op<'_>]) -> Result<()> {
        for op in ops {
            check_key(op.key())?;
            if op.stored_len() > MAX_VALUE_LEN {
                return Err(Error::ValueTooLarge {
                    len: op.value().len(),
                    max: MAX_VALUE_LEN - (op.stored_len() - op.value().len()),
                });
            }
        }
        self.check_writable()?;
        if ops.is_empty() {
            return Ok(());
        }
        let mut w = self.lock_writer()?;
        self.commit_locked(&mut w, ops)
    }

    /// `commit` with the writer lock held.
    pub(crate) fn commit_locked(&self, w: &mut Writer, ops: &[Op<'_>]) -> Result<()> {
        self.check_writable()?;
        let puts = ops.iter().filter(|o| o.is_put()).count() as u64;
        let total: u64 = ops
            .iter()
            .map(|o| record_len(o.key().len(), o.stored_len()))
            .sum();
        self.ensure_index_room(w, puts, total)?;
        let start = w.st.tail;
        let end = start
            .checked_add(total)
            .ok_or_else(|| self.corrupt(start, "tail overflows"))?;
        self.ensure_space(end)?;
        let sg = seq_gen(seq_of(w.st.seq_gen) + 1, w.st.generation as u16);
        w.unpublished = true;
        let mut off = start;
        let last = ops.len() - 1;
        for (i, op) in ops.iter().enumerate() {
            let kind = if op.is_put() { record::Kind::Put } else { record::Kind::Del };
            let (k, v) = (op.key(), op.value());
            let prefix = op.prefix();
            let p: &[u8] = prefix.as_ref().map_or(&[], |p| &p[..]);
            let h = record::encode(self.salt, off, kind, i == last, k, p, v, sg);
            self.write_bytes(off, &h.to_bytes())?;
            self.write_bytes(off + HEADER_LEN, k)?;
            self.write_bytes(off + HEADER_LEN + k.len() as u64, p)?;
            self.write_bytes(off + HEADER_LEN + (k.len() + p.len()) as u64, v)?;
            let body_end = off + HEADER_LEN + (k.len() + p.len() + v.len()) as u64;
            let rec_end = off + record_len(k.len(), op.stored_len());
            if rec_end > body_end {
                self.write_bytes(body_end, &[0u8; 8][..(rec_end - body_end) as usize])?;
            }
            off = rec_end;
        }
        debug_assert_eq!(off, end);
        if self.durability == Durability::Sync {
            // Publish order: the records are on stable storage before any
            // slot points at them. One sync per commit: msync of the new
            // records, or, if the file grew since the last durable length,
            // one fsync that makes records and length durable together.
            if self.arena.len() > w.dur.len {
                if let Err(e) = self.arena.fsync() {
                    return Err(self.poison("fsync file", e));
                }
                w.dur.len = self.arena.len();
            } else {
                self.sync_log(w, end)?;
            }
        }
        let (t, d) = self.table_at(w.st.index_desc)?;
        if ops.len() > 1 {
            self.prefetch_keys(&t, d, ops.iter().map(|o| o.key()));
        }
        let c = self.control()?;
        c.begin();
        let mut st = w.st;
        let mut off = start;
        let mut res = Ok(());
        for op in ops {
            let k = op.key();
            let h = Header {
                kind: if op.is_put() { KIND_PUT } else { KIND_DEL },
                key_len: k.len() as u16,
                val_len: op.stored_len() as u32,
                ..Header::from_bytes(&[0; 24])
            };
            if let Err(e) = self.apply(&t, &mut st, off, &h, k) {
                res = Err(self.locate(e, d.start));
                break;
            }
            off += record_len(k.len(), op.stored_len());
        }
        // On an error the index may hold part of this commit: leave the
        // control block odd, so that the next open rebuilds the index from
        // the log, and refuse further writes on this handle.
        if let Err(e) = res {
            *self.poison_cause.lock() = format!("{INDEX_UPDATE_FAILED}: {e}");
            self.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        st.tail = end;
        st.seq_gen = sg;
        w.st = st;
        c.end(&w.st);
        w.unpublished = false;
        self.notify();
        match self.durability {
            Durability::Sync => {
                // The records are durable, so a meta may name them. It is not
                // synced: recovery after an OS crash finds synced commits
                // past an older meta's tail by scanning; the meta only
                // shortens that scan.
                w.dur.tail = w.st.tail;
                w.dur.seq_gen = w.st.seq_gen;
                self.write_meta(w, 0, false)?;
            }
            Durability::Async => {
                if let Err(e) = self.arena.start_writeback(start, end - start) {
                    return Err(self.poison("start write-back", e));
                }
            }
            Durability::None => {}
        }
        Ok(())
    }

    /// msync the log from the durable tail to `upto`: records and index
    /// chunk headers of every process's commits since the last sync. The
    /// current index table is skipped (it is rebuilt from the log after an
    /// OS crash, and a clean close syncs the whole file).
    fn sync_log(&self, w: &Writer, upto: u64) -> Result<()> {
        let (from, to) = (w.dur.tail, upto);
        if to <= from {
            return Ok(());
        }
        let mut ranges = [(from, to), (0, 0)];
        if let Some(d) = Desc::decode(w.st.index_desc) {
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

    /// Make the current state durable: sync the log, make growth durable,
    /// then write and sync a meta that points at it.
    pub(crate) fn commit_meta(&self, w: &mut Writer, clean: bool) -> Result<()> {
        self.sync_log(w, w.st.tail)?;
        if clean {
            // The index is trusted after a clean close, so it must be durable.
            if let Err(e) = self.arena.sync(0, self.arena.len()) {
                return Err(self.poison("msync file", e));
            }
        }
        let len = self.arena.len();
        if len > w.dur.len {
            if let Err(e) = self.arena.fsync() {
                return Err(self.poison("fsync file length", e));
            }
            w.dur.len = len;
        }
        w.dur.tail = w.st.tail;
        w.dur.seq_gen = w.st.seq_gen;
        self.write_meta(w, if clean { FLAG_CLEAN } else { 0 }, true)
    }

    /// Write the next meta copy from the writer's state, and msync it if
    /// `sync`. An unsynced meta may reach the disk at any time or never;
    /// either is fine, because it names only bytes that are already durable.
    pub(crate) fn write_meta(&self, w: &mut Writer, flags: u32, sync: bool) -> Result<()> {
        let m = Meta {
            magic: MAGIC,
            version: FORMAT_VERSION,
            page_size: FORMAT_PAGE as u32,
            meta_seq: w.dur.meta_seq.wrapping_add(1),
            hash_seed: self.hash_seed,
            crc_salt: self.salt,
            flags,
            boot_id: w.boot_id,
            file_len: w.dur.len,
            tail: w.dur.tail,
            seq_gen: w.dur.seq_gen,
            generation: w.st.generation as u32,
            file_nonce: self.file_nonce,
            index_desc: w.st.index_desc,
            index_used: w.st.index_used,
            live_keys: w.st.live_keys,
            live_bytes: w.st.live_bytes,
            capacity: self
                .control()
                .map_or(0, |c| storage::capacity_granules(c.capacity())),
            crc: 0,
        }
        .seal();
        // Always write the copy that does not hold the last synced meta, so
        // one synced copy stays intact whatever happens to this write.
        let off = if w.dur.synced_copy == META_A_OFFSET {
            META_B_OFFSET
        } else {
            META_A_OFFSET
        };
        self.write_bytes(off, &m.encode())?;
        if sync {
            if let Err(e) = self.arena.sync(off, FORMAT_PAGE) {
                return Err(self.poison("msync meta", e));
            }
            w.dur.synced_copy = off;
        }
        w.dur.meta_seq = m.meta_seq;
        Ok(())
    }

    /// Close. The last read-write handle (in any process) makes everything
    /// durable and marks the store clean; if no other handle at all has the
    /// file open, it also gives back the space past the tail. Otherwise
    /// closing just lets go: the other handles carry on.
    fn close_clean(&self) -> Result<()> {
        if self.read_only || self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.check_writable()?;
        let left = {
            let mut w = match self.lock_writer() {
                // A compaction moved the store to a new file, which this
                // handle never joined: nothing of ours to close.
                Err(Error::Moved) => return Ok(()),
                r => r?,
            };
            let c = self.control()?;
            let left = c.writers().load(Ordering::Acquire).saturating_sub(1);
            c.writers().store(left, Ordering::Release);
            if left == 0 {
                // Read-only handles may still have it open; they never
                // write, and a writer that joins later first clears the
                // clean flag.
                self.commit_meta(&mut w, true)?;
            }
            left
        };
        // Alone? Converting our shared open lock to an exclusive one
        // succeeds only if no other handle has the file open. (On failure
        // the shared lock may be gone too; we are done anyway.)
        if !self.exclusive.load(Ordering::Acquire) {
            let alone =
                storage::file::open_lock(self.arena.file(), storage::file::OpenLock::Exclusive)
                    .map_err(|source| Error::Io {
                        op: "lock file on close",
                        path: self.path.clone(),
                        source,
                    })?;
            if !alone {
                return Ok(());
            }
            self.exclusive.store(true, Ordering::Release);
        }
        let mut w = self.lock_writer()?;
        if left > 0 {
            // The count included writers that crashed; alone, we know better.
            self.commit_meta(&mut w, true)?;
        }
        self.trim_to_tail(&mut w, FLAG_CLEAN)
    }

    /// Give back the space preallocated past the tail. Only when no other
    /// handle maps the file (a clean close that is alone, or a compaction's
    /// new file before anyone knows it), with everything durable. The meta
    /// that names the shorter length is durable before the file is cut, so
    /// a crash in between leaves a file longer than its meta says (fine),
    /// never shorter.
    pub(crate) fn trim_to_tail(&self, w: &mut Writer, flags: u32) -> Result<()> {
        let keep = storage::align_up(w.st.tail, GRANULE).unwrap_or(u64::MAX);
        if keep < self.arena.len() {
            w.dur.len = keep;
            self.write_meta(w, flags, true)?;
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
            self.write_meta(w, flags, true)?;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; the next open recovers.
        let _ = self.close_clean();
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    check_sizes(key, &[])
}

fn check_sizes(key: &[u8], value: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

impl Db {
    /// Open the store at `path` with default [`Options`], creating it if it
    /// does not exist.
    ///
    /// # Errors
    /// [`Error::NotMapkv`] if the file is something else (it is left
    /// untouched), [`Error::UnsupportedVersion`], [`Error::Corrupted`] if
    /// the store is damaged where it cannot be repaired, [`Error::Locked`]
    /// if another handle held it exclusively (while recovering it) for
    /// longer than [`Options::lock_timeout`], [`Error::Refused`] for an
    /// existing empty file that is another user's or more open than
    /// [`Options::mode`], [`Error::OutOfSpace`] if the file has holes (a
    /// sparse copy) that the disk cannot fill, [`Error::Io`] (also for a
    /// symlink whose target does not exist). Other handles having it open
    /// is fine: this one joins them.
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Db, Error};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("open.mapkv");
    /// let db = Db::open(&path)?; // created: it did not exist
    /// db.insert(b"k", b"v")?;
    /// db.close()?;
    ///
    /// let db = Db::open(&path)?; // opened again: the data is there
    /// assert_eq!(db.get(b"k")?.as_deref(), Some(&b"v"[..]));
    ///
    /// // A file that is not a store is refused, and left untouched.
    /// let other = dir.path().join("notes.txt");
    /// std::fs::write(&other, b"hello, not a store")?;
    /// assert!(matches!(Db::open(&other), Err(Error::NotMapkv { .. })));
    /// assert_eq!(std::fs::read(&other)?, b"hello, not a store");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(path.as_ref(), Options::default())
    }

    pub(crate) fn open_with(given: &Path, opts: Options) -> Result<Db> {
        let real = recovery::resolve(given)?;
        let path = real.as_path();
        // A compaction may finish (rename the store) while we join the old
        // file: then open the name again.
        let mut follows = Follows::new(opts.lock_timeout);
        let inner = loop {
            match Inner::open(path, opts.clone()) {
                Err(Error::Moved) if follows.again() => {}
                Err(Error::Moved) => {
                    return Err(Error::Corrupted {
                        path: path.to_path_buf(),
                        offset: CONTROL_OFFSET,
                        what: "the store keeps saying it moved to a new file".into(),
                    })
                }
                r => break r?,
            }
        };
        Ok(Db {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(inner),
                path: path.to_path_buf(),
                given: given.to_path_buf(),
                opts,
                follow: Mutex::new(()),
                background: Arc::new(AtomicBool::new(false)),
                hits: Default::default(),
                compacting: Mutex::new(()),
                index_suspect: AtomicBool::new(false),
            }),
        })
    }
}

impl Inner {
    /// Open the store at `path`: create, lock, validate, recover or join.
    pub(crate) fn open(path: &Path, opts: Options) -> Result<Inner> {
        let recovery::Opened {
            arena,
            meta,
            meta_copy,
            boot_id,
            sole,
            live,
            upgrade,
        } = recovery::open_file(path, &opts)?;
        let mode = arena.mode();
        let file_id = {
            use std::os::unix::fs::MetadataExt;
            let md = arena.file().metadata().map_err(|source| Error::Io {
                op: "stat",
                path: path.to_path_buf(),
                source,
            })?;
            (md.dev(), md.ino())
        };
        let mut inner = Inner {
            path: path.to_path_buf(),
            hash_seed: meta.hash_seed,
            salt: meta.crc_salt,
            durability: opts.durability,
            read_only: opts.read_only,
            growth_step: opts.growth_step,
            max_size: opts.max_size,
            cache: false,
            count_hits: false,
            recovering: AtomicBool::new(false),
            writer: Mutex::new(Writer {
                st: State::default(),
                dur: Durable {
                    tail: meta.tail,
                    seq_gen: meta.seq_gen,
                    // Never more than the file has (see recovery::open_file).
                    len: meta.file_len.min(arena.len()),
                    meta_seq: meta.meta_seq,
                    synced_copy: meta_copy,
                },
                boot_id,
                unpublished: false,
                reg: None,
            }),
            cross: !opts.read_only && mode == MapMode::Shared,
            pid: std::process::id() as u64,
            lock_timeout: opts.lock_timeout,
            exclusive: AtomicBool::new(sole),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(String::new()),
            // Until recovery is done, dropping must not write a clean meta.
            closed: AtomicBool::new(true),
            opened: OpenKind::Clean,
            file_id,
            file_nonce: meta.file_nonce,
            arena,
        };
        let ioe = |op: &'static str| {
            move |source| Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        if inner.cross {
            // Registered from the start, so that every opener sees a writer
            // has the store open (the kernel's word) as soon as it can open.
            let reg = Registration::new(&inner.arena).map_err(ioe("register as a writer"))?;
            inner.writer.get_mut().reg = Some(reg);
        }
        let opened = if live {
            inner.join_session(&meta, &opts)?
        } else if mode == MapMode::Private {
            // Read-only, on a store that needs recovery, and no writer has
            // it open: recover in private memory. (A read-only handle opens
            // the file read-only, so it never holds the open lock
            // exclusively: a writer may start a session meanwhile.)
            let mut w = inner.writer.lock();
            let _r = inner.recovering();
            recovery::recover(&inner, &mut w, &meta, boot_id, true)?
        } else if opts.read_only {
            // Read-only on a cleanly closed store whose control block
            // matches its meta: share the live mapping.
            OpenKind::Clean
        } else {
            match inner.start_session(&meta, &opts, sole, upgrade)? {
                Some(opened) => opened,
                // Another writer started one while we waited for the lock.
                None => inner.join_session(&meta, &opts)?,
            }
        };
        if sole && mode != MapMode::Private {
            // Let others in (converting the lock is atomic).
            storage::file::open_lock(inner.arena.file(), storage::file::OpenLock::Shared)
                .map_err(ioe("lock"))?;
            inner.exclusive = AtomicBool::new(false);
        }
        inner.opened = opened;
        // Readers count hits for eviction only in cache mode, and only
        // where they may write the mapping.
        inner.cache = inner.control().is_ok_and(|c| c.capacity() != 0);
        inner.count_hits = inner.cache && mode == MapMode::Shared && !opts.read_only;
        inner.closed = AtomicBool::new(false);
        Ok(inner)
    }
}

impl Inner {
    /// Join the live session another handle runs. Taking the writer lock
    /// repairs the store if a writer died mid-change. If the store still
    /// says it was closed cleanly (only read-only handles had it open),
    /// say otherwise before anything is written.
    fn join_session(&self, meta: &Meta, opts: &Options) -> Result<OpenKind> {
        recovery::join(self)?;
        if opts.read_only {
            return Ok(OpenKind::Joined);
        }
        let mut w = self.lock_writer()?;
        let c = self.control()?;
        c.writers().fetch_add(1, Ordering::AcqRel);
        // A capacity given now replaces the store's.
        let recap = opts.capacity.filter(|&b| b != c.capacity());
        if let Some(b) = recap {
            c.set_capacity(b);
        }
        // Re-read under the lock: the last writer may have closed cleanly
        // since we read the meta.
        if meta.is_clean() || recovery::live_meta_is_clean(self) || recap.is_some() {
            self.write_meta(&mut w, 0, true)?;
        }
        Ok(OpenKind::Joined)
    }

    /// Start a session: no writer has the store open (or it is the first
    /// open since boot). Recover the store under the writer lock, then
    /// mark the control block as this boot's live state. `None` if another
    /// writer started a session while this one waited for the lock.
    ///
    /// Alone (`sole`), nobody can hold the lock or read the store: the
    /// lock word is set free first, and a compaction's leftovers go. Not
    /// alone, the others are read-only handles or not mapkv at all (a
    /// process that holds a read lock on the file): the lock keeps two
    /// starting writers apart.
    fn start_session(
        &self,
        meta: &Meta,
        opts: &Options,
        sole: bool,
        upgrade: bool,
    ) -> Result<Option<OpenKind>> {
        let ioe = |op: &'static str| {
            move |source| Error::Io {
                op,
                path: self.path.clone(),
                source,
            }
        };
        let boot_id = storage::file::boot_id();
        if self.path_names_other_file() {
            // A compaction moved the store to a new file after we opened
            // this one (which it then let go of): open the name again.
            return Err(Error::Moved);
        }
        let start = |w: &mut Writer, meta: &Meta| -> Result<OpenKind> {
            let c = self.control()?;
            let opened = {
                let _r = self.recovering();
                // Not alone, readers may be in the current table: a rebuild
                // writes a new one.
                recovery::recover(self, w, meta, boot_id, sole)?
            };
            // The capacity given now, or the store's (0: not a cache).
            c.set_capacity(opts.capacity.unwrap_or(meta.capacity as u64 * GRANULE));
            if opened == OpenKind::Rebuilt {
                // After an OS crash the control block may hold anything.
                c.set_cache_counters([0; 3]);
            }
            // Clear the clean flag, and record this boot and the new
            // generation, durably before anything else is written.
            self.write_meta(w, 0, true)?;
            if upgrade {
                // Both copies in the new format before an older mapkv may
                // look.
                self.write_meta(w, 0, true)?;
                storage::file::legacy_unlock(self.arena.file()).map_err(ioe("unlock"))?;
            }
            c.set_durable(&w.dur);
            c.writers().store(1, Ordering::Release);
            c.set_session_boot(&boot_id);
            Ok(opened)
        };
        if sole {
            // Nobody else has the file open: nobody can hold the writer
            // lock or be inside a change, and no compaction of this store
            // is running anywhere (it would hold the store open), so a new
            // file left by one that crashed is garbage. Nothing is written
            // before recovery succeeds (a store that fails to open is left
            // as it was).
            let mut w = self.writer.lock();
            let opened = start(&mut w, meta)?;
            crate::compact::remove_leftovers(&self.path);
            let c = self.control()?;
            c.reset_session();
            c.writers().store(1, Ordering::Release);
            self.arena
                .init_writer_lock()
                .map_err(ioe("initialise the writer lock"))?;
            return Ok(Some(opened));
        }
        let mut g = self.take_lock()?;
        // Did another writer start a session while we waited? (Its
        // registration says it is still there; our own does not count.)
        if self.control()?.is_session_of(&boot_id)
            && storage::file::writer_registered(self.arena.file()).map_err(ioe("lock"))?
        {
            return Ok(None);
        }
        // Re-read under the lock: a session that started and ended while
        // we waited may have written a newer one.
        let (m, copy) = recovery::durable_meta_and_copy(self)?;
        g.dur = Durable {
            tail: m.tail,
            seq_gen: m.seq_gen,
            len: m.file_len.min(self.arena.len()),
            meta_seq: m.meta_seq,
            synced_copy: copy,
        };
        let opened = start(&mut g, &m)?;
        self.control()?.set_writer(0);
        Ok(Some(opened))
    }
}

impl Db {
    /// Insert `key` with `value`, replacing any previous value.
    ///
    /// With [`Durability::Sync`] the write is on stable storage when this
    /// returns; otherwise it survives a process crash but not an OS crash
    /// until the next [`flush`](Db::flush).
    ///
    /// # Errors
    /// [`Error::KeyTooLarge`], [`Error::ValueTooLarge`], [`Error::ReadOnly`],
    /// [`Error::OutOfSpace`], [`Error::Poisoned`], [`Error::Io`].
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Error, MAX_KEY_LEN};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("ins.mapkv"))?;
    /// db.insert(b"color", b"red")?;
    /// db.insert(b"color", b"blue")?; // replaces the old value
    /// assert_eq!(db.get(b"color")?.as_deref(), Some(&b"blue"[..]));
    /// assert_eq!(db.len(), 1);
    ///
    /// let long_key = vec![0u8; MAX_KEY_LEN + 1];
    /// assert!(matches!(db.insert(&long_key, b"v"), Err(Error::KeyTooLarge { .. })));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (k, v) = (key.as_ref(), value.as_ref());
        self.write(|i| i.commit(&[Op::Put(k, v)]))
    }

    /// Insert `key` with `value` for `ttl`: once it has passed, the entry
    /// is invisible to every read, in every process (`get`, `contains_key`,
    /// `iter`, ...), and the next compaction drops it. Expiry uses the wall
    /// clock (`SystemTime`, millisecond precision); a `ttl` of zero expires
    /// at once. [`len`](Db::len) counts expired entries until a compaction
    /// or an overwrite removes them. Overwriting the key with `insert`
    /// makes it permanent again.
    ///
    /// # Errors
    /// As [`insert`](Db::insert).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("ttl.mapkv"))?;
    /// db.insert_with_ttl(b"session", b"token", Duration::from_secs(3600))?;
    /// assert_eq!(db.get(b"session")?.as_deref(), Some(&b"token"[..]));
    /// db.insert_with_ttl(b"flash", b"gone", Duration::ZERO)?; // expires at once
    /// assert!(db.get(b"flash")?.is_none());
    /// assert!(!db.contains_key(b"flash")?);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn insert_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: std::time::Duration,
    ) -> Result<()> {
        let (k, v) = (key.as_ref(), value.as_ref());
        let at = expiry_after(ttl);
        self.write(|i| i.commit(&[Op::PutTtl(k, v, at)]))
    }

    /// The value of `key`, copied out and checksum-verified.
    ///
    /// Takes no lock and makes no system call.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the record fails its checks.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("get.mapkv"))?;
    /// db.insert(b"k", b"value")?;
    /// let v = db.get(b"k")?.expect("present");
    /// assert_eq!(&*v, b"value");
    /// assert!(db.get(b"missing")?.is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    #[inline]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        let key = key.as_ref();
        let mut buf = Vec::new();
        let found = self.read(|i| {
            let r = i.fetch(key, &mut buf)?;
            self.count_read(i, r.is_some());
            Ok(r)
        })?;
        Ok(found.map(|k| Value::from_parts(buf, k)))
    }

    /// Like [`get`](Db::get), but copies the value into `buf` (cleared
    /// first), reusing its allocation. Returns whether the key was found.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("gi.mapkv"))?;
    /// db.insert(b"a", b"first")?;
    /// let mut buf = Vec::with_capacity(64);
    /// assert!(db.get_into(b"a", &mut buf)?);
    /// assert_eq!(buf, b"first");
    /// assert!(!db.get_into(b"missing", &mut buf)?);
    /// assert!(buf.is_empty()); // cleared when the key is absent
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_into(&self, key: impl AsRef<[u8]>, buf: &mut Vec<u8>) -> Result<bool> {
        let key = key.as_ref();
        let found = self.read(|i| {
            let r = i.fetch(key, buf)?;
            self.count_read(i, r.is_some());
            Ok(r)
        })?;
        match found {
            Some(k) => {
                buf.drain(..k);
                Ok(true)
            }
            None => {
                buf.clear();
                Ok(false)
            }
        }
    }

    /// Whether `key` has a value. Cheaper than `get`: the value is not read.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("ck.mapkv"))?;
    /// db.insert(b"here", b"")?; // an empty value still counts
    /// assert!(db.contains_key(b"here")?);
    /// assert!(!db.contains_key(b"gone")?);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        Ok(self.read(|i| i.lookup(key))?.is_some())
    }

    /// Remove `key`. Returns whether it was present.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("rm.mapkv"))?;
    /// db.insert(b"k", b"v")?;
    /// assert!(db.remove(b"k")?); // it was there
    /// assert!(!db.remove(b"k")?); // not any more
    /// assert!(db.get(b"k")?.is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        check_sizes(key, &[])?;
        self.write(|i| {
            i.check_writable()?;
            // The check and the tombstone are one step under the writer lock.
            let mut w = i.lock_writer()?;
            if i.lookup(key)?.is_none() {
                return Ok(false);
            }
            i.commit_locked(&mut w, &[Op::Del(key)])?;
            Ok(true)
        })
    }

    /// Number of live keys.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("len.mapkv"))?;
    /// db.insert(b"a", b"1")?;
    /// db.insert(b"b", b"2")?;
    /// db.insert(b"a", b"3")?; // an overwrite is not a new key
    /// assert_eq!(db.len(), 2);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        let i = self.inner();
        let Ok(c) = i.control() else {
            return 0;
        };
        // Never more keys than the log could hold.
        let log = c
            .tail()
            .min(storage::MAX_FILE_LEN)
            .saturating_sub(ARENA_START);
        c.live_keys().min(log / MIN_RECORD_LEN)
    }

    /// Whether the store has no keys.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("empty.mapkv"))?;
    /// assert!(db.is_empty());
    /// db.insert(b"k", b"v")?;
    /// assert!(!db.is_empty());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new, empty batch. Its operations become visible and durable
    /// together when [`Batch::commit`](crate::Batch::commit) returns;
    /// dropping it without committing does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("batch.mapkv"))?;
    /// let mut batch = db.batch();
    /// batch.insert(b"a", b"1").insert(b"b", b"2");
    /// assert!(db.is_empty()); // nothing is visible before the commit
    /// batch.commit()?;
    /// assert_eq!(db.len(), 2);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn batch(&self) -> crate::Batch {
        crate::Batch::new(self.clone())
    }

    /// Make every write so far durable (msync of the log, fsync of growth,
    /// and a synced meta). After it returns, everything written before the
    /// call survives an OS crash or power loss.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("flush.mapkv"))?;
    /// db.insert(b"k", b"v")?; // Durability::None: not yet on stable storage
    /// db.flush()?;
    /// let stats = db.stats();
    /// assert_eq!(stats.durable_tail, stats.tail); // everything is durable
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        // Not `write`: a flush adds nothing to the log, so it must not start
        // a compaction or an eviction.
        self.following(|i| {
            if i.read_only {
                return Ok(());
            }
            i.check_writable()?;
            let mut w = i.lock_writer()?;
            if w.dur.tail == w.st.tail && w.dur.len >= i.arena.len() {
                return Ok(());
            }
            i.commit_meta(&mut w, false)
        })
    }

    /// Counters and sizes.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("stats.mapkv"))?;
    /// db.insert(b"k", b"v")?;
    /// let stats = db.stats();
    /// assert_eq!(stats.keys, 1);
    /// assert!(stats.live_bytes > 0);
    /// assert!(stats.file_len >= stats.tail);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let i = self.inner();
        let file_len = i.arena.refresh().unwrap_or_else(|_| i.arena.len());
        let (st, dur) = match i.control() {
            Ok(c) => (bounded(c.snapshot(1000).0, file_len), c.durable()),
            Err(_) => (State::default(), Durable::default()),
        };
        let d = Desc::decode(st.index_desc);
        let cap = d.map(|d| d.capacity()).unwrap_or(0);
        let index_bytes = d.map(|d| d.bytes()).unwrap_or(0);
        let used_bytes = st.tail.saturating_sub(ARENA_START);
        Stats {
            keys: st.live_keys,
            live_bytes: st.live_bytes,
            dead_bytes: used_bytes
                .saturating_sub(st.live_bytes)
                .saturating_sub(index_bytes),
            index_bytes,
            used_bytes,
            file_len,
            index_capacity: cap,
            index_used: st.index_used,
            index_load: if cap > 0 {
                st.index_used as f64 / cap as f64
            } else {
                0.0
            },
            tail: st.tail,
            durable_tail: dur.tail,
            commits: seq_of(st.seq_gen),
            generation: st.generation,
            remaps: i.arena.remaps() as u64,
            opened: i.opened,
        }
    }

    /// The store's file, as the path given to open (a symlink stays a
    /// symlink here; the handle uses the real file it named at open).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("path.mapkv");
    /// let db = mapkv::Db::open(&path)?;
    /// assert_eq!(db.path(), path.as_path());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    // The caller's path, on purpose: `shared.path` is the resolved one.
    #[allow(clippy::misnamed_getters)]
    pub fn path(&self) -> &Path {
        &self.shared.given
    }

    /// Close this handle and report any error. Only the last clone closes;
    /// on other clones this just drops the handle. If no other read-write
    /// handle (in any process) has the store open, it is made durable and
    /// marked clean; if no handle at all has it open, the space
    /// preallocated past the log is given back too. Dropping the last clone
    /// does the same but cannot report errors.
    ///
    /// It first waits (up to `lock_timeout`) for a background compaction or
    /// eviction started through this handle to finish, so that a process
    /// exiting after `close` does not cut one off midway.
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Db, OpenKind};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("close.mapkv");
    /// let db = Db::open(&path)?;
    /// db.insert(b"k", b"v")?;
    /// let clone = db.clone();
    /// clone.close()?; // not the last handle: the store stays open
    /// assert!(db.contains_key(b"k")?);
    /// db.close()?; // the last handle: closed cleanly
    ///
    /// let db = Db::open(&path)?;
    /// assert_eq!(db.stats().opened, OpenKind::Clean); // nothing to recover
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn close(self) -> Result<()> {
        // A background compaction or eviction holds a clone: let it finish,
        // so that closing (and then exiting) does not cut it off midway.
        let deadline = std::time::Instant::now() + self.shared.opts.lock_timeout;
        while self.shared.background.load(Ordering::Acquire) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let Ok(shared) = Arc::try_unwrap(self.shared) else {
            return Ok(()); // other clones remain
        };
        match Arc::try_unwrap(shared.current.into_inner()) {
            Ok(inner) => inner.close_clean(),
            // A reader elsewhere in this process still holds the store (an
            // iterator); it closes when that lets go.
            Err(_) => Ok(()),
        }
    }

    /// Every live entry once, in no particular order. See [`Iter`](crate::Iter).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("iter.mapkv"))?;
    /// for i in 0..10u32 {
    ///     db.insert(i.to_be_bytes(), b"x")?;
    /// }
    /// let mut count = 0;
    /// for item in db.iter() {
    ///     let (key, value) = item?;
    ///     assert_eq!(key.len(), 4);
    ///     assert_eq!(&*value, b"x");
    ///     count += 1;
    /// }
    /// assert_eq!(count, 10);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn iter(&self) -> crate::Iter<'_> {
        crate::Iter::new(self)
    }
}
