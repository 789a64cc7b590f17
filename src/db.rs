//! The public handle: open, read, write, flush, close; following the
//! store to a new file when a compaction moves it; the statistics.
//!
//! The engine (src/engine) does the work; this file decides what runs
//! again when the engine says the store moved or the cache is full. The
//! features (compaction, cache, checks, the change feed, batches,
//! iteration) add their methods to [`Db`] in their own files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::engine::{self, bounded, Failure, Op, OpenKind, Store};
use crate::group::Group;
use crate::index::Desc;
use crate::log::read::expiry_after;
use crate::log::record::seq_of;
use crate::options::{Durability, Options};
use crate::storage::control::{Durable, State};
use crate::storage::{self, ARENA_START};
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
    pub(crate) handle: Arc<Handle>,
    /// How this handle's commits are made durable (see
    /// [`with_durability`](Db::with_durability)).
    pub(crate) durability: Durability,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.handle.current.load();
        f.debug_struct("Db")
            .field("path", &self.handle.given)
            .field("read_only", &s.read_only())
            .field("cache", &s.is_cache())
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// What the clones of one `Db` share: the store they currently use, which
/// changes when a compaction (in any process) moves the store to a new
/// file, and what it takes to follow it there.
pub(crate) struct Handle {
    /// The current store. Readers `load` it without touching a reference
    /// count; an old store lives until its last reader lets go of it.
    pub(crate) current: ArcSwap<Store>,
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
    /// Held while a compaction through this handle (or a clone) runs: the
    /// cross-process compaction lock is per open file description, which
    /// clones share, so it cannot tell them apart.
    pub(crate) compacting: Mutex<()>,
    /// A read through this handle met a slot that disagrees with the log:
    /// the next write rebuilds the index first (see `repair`).
    pub(crate) index_suspect: AtomicBool,
    /// Durable commits of this handle's threads share syncs through it.
    pub(crate) group: Group,
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
    fn again(&mut self) -> bool {
        self.n += 1;
        let now = std::time::Instant::now();
        let until = *self.until.get_or_insert_with(|| now + self.timeout);
        self.n <= MIN_FOLLOWS || now < until
    }

    /// The one retry loop: `load` what to run on (the current store),
    /// run `attempt` on it, and while it says the store moved, `follow`
    /// (open the new file) and run again, for as long as following is
    /// allowed. A store that keeps saying it moved is an error at `path`.
    pub(crate) fn run<S, R>(
        mut self,
        path: &Path,
        mut load: impl FnMut() -> S,
        mut attempt: impl FnMut(&S) -> engine::Result<R>,
        mut follow: impl FnMut(&S),
    ) -> engine::Result<R> {
        loop {
            let s = load();
            match attempt(&s) {
                Err(Failure::Moved) if self.again() => follow(&s),
                Err(Failure::Moved) => return Err(Failure::Moved.into_error(path).into()),
                r => return r,
            }
        }
    }
}

impl Db {
    /// The current store, after following it if a compaction moved it.
    #[inline]
    pub(crate) fn store(&self) -> arc_swap::Guard<Arc<Store>> {
        let g = self.handle.current.load();
        if g.is_current() {
            g
        } else {
            self.handle.follow(&g);
            self.handle.current.load()
        }
    }

    /// Run a read against the current store (no check up front: `table`
    /// reports a move, and then the read follows and runs again).
    #[inline]
    pub(crate) fn read<R>(&self, f: impl FnMut(&Arc<Store>) -> engine::Result<R>) -> Result<R> {
        self.following(f)
            .map_err(|f| self.note_damage(f.into_error(&self.handle.path)))
    }

    /// Run a write against the current store; if the store moved to a new
    /// file meanwhile (the writer lock says so), follow it and run again.
    /// No check up front: taking the writer lock checks.
    ///
    /// In cache mode a write that finds the file full evicts (or waits for
    /// an eviction) and runs again; after a write, an eviction may start in
    /// the background.
    pub(crate) fn write<R>(
        &self,
        mut f: impl FnMut(&Arc<Store>) -> engine::Result<R>,
    ) -> Result<R> {
        let mut attempt = 0;
        let mut deadline = None;
        let mut repaired = false;
        self.repair_if_suspect();
        loop {
            match self.following(&mut f) {
                // A slot that disagrees with the log: rebuild the index
                // from the log and run once more.
                Err(Failure::Error(e @ Error::Corrupted { .. })) if !repaired => {
                    repaired = true;
                    if !self.repair_after(&e) {
                        return Err(e);
                    }
                }
                Err(Failure::Full { wanted, size }) => {
                    attempt += 1;
                    let until = *deadline.get_or_insert_with(|| {
                        std::time::Instant::now() + self.handle.opts.lock_timeout
                    });
                    self.make_room(wanted, size, attempt, until)?;
                }
                Err(f) => return Err(f.into_error(&self.handle.path)),
                Ok(r) => {
                    let s = self.handle.current.load();
                    if self.handle.opts.auto_compact.is_some() {
                        self.maybe_auto_compact(&s);
                    }
                    if s.is_cache() && self.handle.opts.evict_ahead {
                        self.maybe_evict_ahead(&s);
                    }
                    return Ok(r);
                }
            }
        }
    }

    /// [`following`](Db::following), with what it did not handle (a store
    /// that kept moving) reported as an [`Error`].
    pub(crate) fn on_current<R>(
        &self,
        f: impl FnMut(&Arc<Store>) -> engine::Result<R>,
    ) -> Result<R> {
        self.following(f)
            .map_err(|f| f.into_error(&self.handle.path))
    }

    /// Run `f` on the current store, following the store to its new file
    /// and running again whenever `f` says it moved.
    #[inline]
    pub(crate) fn following<R>(
        &self,
        mut f: impl FnMut(&Arc<Store>) -> engine::Result<R>,
    ) -> engine::Result<R> {
        Follows::new(self.handle.opts.lock_timeout).run(
            &self.handle.path,
            || self.handle.current.load(),
            |s| f(s),
            |s| self.handle.follow(s),
        )
    }

    /// Start a compaction in a background thread if the log is mostly
    /// dead (`Options::auto_compact`).
    fn maybe_auto_compact(&self, i: &Store) {
        let Some(fraction) = self.handle.opts.auto_compact else {
            return;
        };
        if i.read_only() {
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
        if self.handle.background.swap(true, Ordering::AcqRel) {
            return; // one at a time
        }
        let db = self.clone();
        let flag = self.handle.background.clone();
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
            self.handle.background.store(false, Ordering::Release);
        }
    }
}

impl Handle {
    /// `old` is not current any more: a compaction is finishing or has
    /// finished. If the path now names another file, open it (joining the
    /// store there) and make it current; otherwise keep `old`.
    pub(crate) fn follow(&self, old: &Arc<Store>) {
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
        match Store::open(&self.path, self.opts.clone()) {
            Ok(new) if new.hash_seed == old.hash_seed && new.salt == old.salt => {
                // The old store must not be closed as if it were ours: the
                // compactor finished it.
                old.abandon();
                old.hand_reads_to(&new);
                self.current.store(Arc::new(new));
            }
            // Something else now has the name, or it cannot be opened:
            // keep reading the old file; the next operation tries again.
            Ok(other) => {
                other.abandon();
            }
            Err(_) => {}
        }
    }
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
    /// Live keys: what [`Db::len`] says and [`Db::iter`] returns.
    pub keys: u64,
    /// Entries still stored whose expiry has passed: invisible to reads,
    /// dropped by the next compaction or eviction. Counted (by looking at
    /// every entry) only if the store may hold entries with an expiry.
    pub expired_keys: u64,
    /// Bytes of the records of stored entries, expired ones included
    /// (headers and padding included).
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

// Here rather than in options.rs, which then needs nothing of `Db`.
impl Options {
    /// Open (or create) the store at `path` with these options.
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Durability, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("open.mapkv");
    /// let opts = Options::new().durability(Durability::Async);
    /// let db = opts.clone().open(&path)?;
    /// db.insert(b"k", b"v")?;
    /// db.close()?;
    /// let db = opts.open(&path)?; // the same options open it again
    /// assert!(db.contains_key(b"k")?);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn open(self, path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(path.as_ref(), self)
    }
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
        let real = engine::resolve(given)?;
        let path = real.as_path();
        // A compaction may finish (rename the store) while we join the old
        // file: then open the name again.
        let store = Follows::new(opts.lock_timeout)
            .run(path, || (), |_| Store::open(path, opts.clone()), |_| {})
            .map_err(|f| f.into_error(path))?;
        Ok(Db {
            durability: opts.durability,
            handle: Arc::new(Handle {
                current: ArcSwap::from_pointee(store),
                path: path.to_path_buf(),
                given: given.to_path_buf(),
                opts,
                follow: Mutex::new(()),
                background: Arc::new(AtomicBool::new(false)),
                compacting: Mutex::new(()),
                index_suspect: AtomicBool::new(false),
                group: Group::default(),
            }),
        })
    }
}

impl Db {
    /// Insert `key` with `value`, replacing any previous value.
    ///
    /// With [`Durability::Sync`](crate::Durability::Sync) the write is on stable storage when this
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
        self.write(|i| self.commit(i, &[Op::Put(k, v)]))
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
        self.write(|i| self.commit(i, &[Op::PutTtl(k, v, at)]))
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
        Op::Del(key).check()?;
        self.write(|i| {
            i.check_writable()?;
            // The check and the tombstone are one step under the writer lock.
            let mut wr = i.lock_writer()?;
            if i.lookup(key)?.is_none() {
                return Ok(false);
            }
            i.commit_locked(&mut wr, &[Op::Del(key)], self.durability)?;
            Ok(true)
        })
    }

    /// Number of live keys: the entries [`iter`](Db::iter) returns, so
    /// entries whose expiry has passed are left out.
    ///
    /// Cost: one load, unless the store may hold entries with an expiry
    /// (a TTL put was made since its last compaction): then it looks at
    /// every entry's header, O(entries) like a scan without the copies.
    /// [`Stats::expired_keys`] says how many expired entries are still
    /// stored.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("len.mapkv"))?;
    /// db.insert(b"a", b"1")?;
    /// db.insert(b"b", b"2")?;
    /// db.insert(b"a", b"3")?; // an overwrite is not a new key
    /// assert_eq!(db.len(), 2);
    /// db.insert_with_ttl(b"flash", b"gone", Duration::ZERO)?; // expires at once
    /// assert_eq!(db.len(), 2);
    /// assert_eq!(db.len(), db.iter().count() as u64);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        let i = self.store();
        let Ok(c) = i.control() else {
            return 0;
        };
        // Never more keys than the log could hold.
        let log = c
            .tail()
            .min(storage::MAX_FILE_LEN)
            .saturating_sub(ARENA_START);
        let stored = c.live_keys().min(log / engine::MIN_RECORD_LEN);
        if !c.may_hold_ttl() {
            return stored;
        }
        i.count_entries().map_or(stored, |(live, _)| live)
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

    /// Make every write so far durable: one device flush (an msync of the
    /// log written since the last sync, or one fsync if the file grew).
    /// After it returns, everything written before the call survives an
    /// OS crash or power loss. For one durable write among unsynced ones,
    /// [`with_durability`](Db::with_durability) costs the same sync and
    /// says so where the write is made.
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
        self.on_current(|i| {
            if i.read_only() {
                return Ok(());
            }
            i.check_writable()?;
            let mut wr = i.lock_writer()?;
            if wr.dur.tail == wr.st.tail && wr.dur.len >= i.arena.len() {
                return Ok(());
            }
            let tail = wr.st.tail;
            i.sync_to(&mut wr, tail)?;
            // The meta need not be synced: recovery after an OS crash finds
            // the synced commits past an older meta's tail by scanning.
            wr.dur.tail = wr.st.tail;
            wr.dur.seq_gen = wr.st.seq_gen;
            Ok(i.write_meta(&mut wr, 0, false)?)
        })
    }

    /// A handle on the same open store whose writes commit with
    /// durability `d`: choose per write, with no second open. Cheap (a
    /// clone of this handle).
    ///
    /// Under [`Durability::Sync`] a commit costs one device flush (an
    /// msync of its records), and threads committing durably through
    /// clones of one handle at the same time share it: while one group of
    /// commits syncs, the next one gathers, and a whole group then costs
    /// one sync (group commit).
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Db, Durability};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("wd.mapkv");
    /// let db = Db::open(&path)?; // Durability::None by default
    /// db.insert(b"page-view", b"1")?; // survives a process crash
    /// let durable = db.with_durability(Durability::Sync);
    /// durable.insert(b"order:17", b"paid")?; // on stable storage on return
    /// assert_eq!(durable.durability(), Durability::Sync);
    /// assert_eq!(db.get(b"order:17")?.as_deref(), Some(&b"paid"[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn with_durability(&self, d: Durability) -> Db {
        Db {
            handle: self.handle.clone(),
            durability: d,
        }
    }

    /// How this handle's writes are made durable (see
    /// [`with_durability`](Db::with_durability)).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Commit `ops` on `store` with this handle's durability: durable
    /// commits go through the group commit.
    pub(crate) fn commit(&self, store: &Store, ops: &[Op<'_>]) -> engine::Result<()> {
        self.commit_with(store, ops, self.durability)
    }

    /// `commit` with durability `d`.
    pub(crate) fn commit_with(
        &self,
        store: &Store,
        ops: &[Op<'_>],
        d: Durability,
    ) -> engine::Result<()> {
        match d {
            Durability::Sync => self.handle.group.commit(store, ops),
            d => store.commit(ops, d),
        }
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
        let i = self.store();
        let file_len = i.arena.refresh().unwrap_or_else(|_| i.arena.len());
        let (st, dur) = match i.control() {
            Ok(c) => (bounded(c.snapshot(1000).0, file_len), c.durable()),
            Err(_) => (State::default(), Durable::default()),
        };
        let d = Desc::decode(st.index_desc);
        let cap = d.map(|d| d.capacity()).unwrap_or(0);
        let index_bytes = d.map(|d| d.bytes()).unwrap_or(0);
        let used_bytes = st.tail.saturating_sub(ARENA_START);
        let (keys, expired_keys) = match i.control() {
            Ok(c) if c.may_hold_ttl() => i.count_entries().unwrap_or((st.live_keys, 0)),
            _ => (st.live_keys, 0),
        };
        Stats {
            keys,
            expired_keys,
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
            opened: i.opened(),
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
        &self.handle.given
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
        let deadline = std::time::Instant::now() + self.handle.opts.lock_timeout;
        while self.handle.background.load(Ordering::Acquire) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let Ok(handle) = Arc::try_unwrap(self.handle) else {
            return Ok(()); // other clones remain
        };
        match Arc::try_unwrap(handle.current.into_inner()) {
            Ok(inner) => inner.close_clean(),
            // A reader elsewhere in this process still holds the store (an
            // iterator); it closes when that lets go.
            Err(_) => Ok(()),
        }
    }
}
