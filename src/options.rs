//! Open-time options and the durability modes.

/// The longest [`Options::lock_timeout`]: 100 years. Deadlines are
/// `Instant::now() + timeout`, which must not overflow.
const MAX_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// What an acknowledged write survives.
///
/// | mode | survives |
/// | --- | --- |
/// | [`None`](Durability::None) | a crash of any process (the page cache keeps it); not an OS crash or power loss |
/// | [`Async`](Durability::Async) | as `None`; write-back of the commit is started without waiting |
/// | [`Sync`](Durability::Sync) | an OS crash or power loss: the commit is on stable storage before the call returns |
///
/// In every mode, after any crash: opening succeeds, no call returns a value
/// that was never written, a commit (a batch too) is all-or-nothing, and
/// everything acknowledged under `Sync`, or before a [`Db::flush`](crate::Db::flush) that
/// returned, is there with its exact bytes.
///
/// # Examples
///
/// ```
/// use mapkv::{Durability, Options};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("d.mapkv");
/// assert_eq!(Durability::default(), Durability::None);
///
/// // Every commit on stable storage before it returns; batch writes to
/// // pay for one sync instead of many.
/// let db = Options::new().durability(Durability::Sync).open(&path)?;
/// let mut batch = db.batch();
/// for i in 0..100u32 {
///     batch.insert(i.to_be_bytes(), b"v");
/// }
/// batch.commit()?;
/// let stats = db.stats();
/// assert_eq!(stats.durable_tail, stats.tail);
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// No system call on the write path. The write is in the page cache when
    /// the call returns: it survives the crash of this or any process, but an
    /// OS crash or power loss may lose writes since the last
    /// [`Db::flush`](crate::Db::flush) or synced commit (never more, never a partial commit).
    #[default]
    None,
    /// As `None`, and write-back of the commit's bytes is started
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux) without waiting,
    /// which narrows the window an OS crash can lose but closes nothing.
    Async,
    /// The commit's records are on stable storage before the call returns
    /// (one msync, or one fsync if the file grew): the write survives an OS
    /// crash or power loss. Costs one synchronous disk flush per commit;
    /// batch writes to share it.
    Sync,
}

/// Options for opening a store. `Options::new().open(path)` equals
/// [`Db::open`](crate::Db::open).
///
/// ```
/// use mapkv::{Durability, Options};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("opts.mapkv");
/// let db = Options::new()
///     .durability(Durability::Sync)
///     .initial_size(4 << 20)
///     .expected_keys(10_000)
///     .open(&path)?;
/// db.insert(b"k", b"v")?; // on stable storage when this returns
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) read_only: bool,
    pub(crate) create: bool,
    pub(crate) initial_size: u64,
    pub(crate) growth_step: u64,
    pub(crate) max_size: u64,
    pub(crate) mode: u32,
    pub(crate) expected_keys: u64,
    pub(crate) map_reserve: u64,
    pub(crate) lock_timeout: std::time::Duration,
    pub(crate) auto_compact: Option<f64>,
    pub(crate) capacity: Option<u64>,
    pub(crate) evict_fraction: f64,
    pub(crate) evict_ahead: bool,
    /// For a compaction's new file: continue this store (not public).
    pub(crate) lineage: Option<Lineage>,
}

/// What a compaction's new file inherits from the store it replaces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lineage {
    pub hash_seed: u64,
    pub crc_salt: u32,
    /// The meta's last commit: the new file's first commit follows it.
    pub seq_gen: u64,
    pub generation: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::None,
            read_only: false,
            create: true,
            initial_size: 1 << 20,
            growth_step: 1 << 30,
            max_size: crate::storage::MAX_FILE_LEN,
            mode: 0o600,
            expected_keys: 0,
            map_reserve: 16 << 30,
            lock_timeout: std::time::Duration::from_secs(30),
            auto_compact: None,
            capacity: None,
            evict_fraction: 0.1,
            evict_ahead: true,
            lineage: None,
        }
    }
}

impl Options {
    /// Default options: `Durability::None`, read-write, create if missing,
    /// 1 MiB initial file, growth by a sixteenth of the file (at most 1 GiB
    /// at a time), mode 0o600.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("new.mapkv");
    /// let db = mapkv::Options::new().open(&path)?; // the same as Db::open(&path)
    /// assert!(db.is_empty());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn new() -> Options {
        Options::default()
    }

    /// What an acknowledged write survives (default [`Durability::None`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Durability, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("dur.mapkv");
    /// let db = Options::new().durability(Durability::Sync).open(&path)?;
    /// db.insert(b"k", b"v")?; // durable when this returns
    /// let stats = db.stats();
    /// assert_eq!(stats.durable_tail, stats.tail);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn durability(mut self, d: Durability) -> Options {
        self.durability = d;
        self
    }

    /// Open without ever writing the file (default `false`). Writes return
    /// [`Error::ReadOnly`](crate::Error::ReadOnly). If the store was not
    /// closed cleanly, the index is repaired in private memory; the file is
    /// left as it is.
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Db, Error, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("ro.mapkv");
    /// let db = Db::open(&path)?;
    /// db.insert(b"k", b"v")?;
    /// db.close()?;
    ///
    /// let ro = Options::new().read_only(true).open(&path)?;
    /// assert_eq!(ro.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// assert!(matches!(ro.insert(b"k", b"w"), Err(Error::ReadOnly { .. })));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn read_only(mut self, yes: bool) -> Options {
        self.read_only = yes;
        self
    }

    /// Create the file if it does not exist (default `true`). An existing
    /// empty (0-byte) file is also initialised, if it is the opener's own
    /// and no more open than [`mode`](Options::mode) (else
    /// [`Error::Refused`](crate::Error::Refused)); any other existing file
    /// must be a mapkv store. A symlink whose target does not exist is an
    /// error: mapkv does not create a store through it.
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Error, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let missing = dir.path().join("missing.mapkv");
    /// let err = Options::new().create(false).open(&missing).err().expect("missing");
    /// assert!(matches!(err, Error::Io { .. }));
    /// assert!(!missing.exists()); // nothing was created
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn create(mut self, yes: bool) -> Options {
        self.create = yes;
        self
    }

    /// Length of a newly created file, rounded up to 64 KiB (default 1 MiB).
    /// Clamped to the format's limit (512 GiB) and to
    /// [`max_size`](Options::max_size). The disk blocks are reserved when the
    /// file is created: a size the disk cannot hold fails the open with
    /// [`Error::OutOfSpace`](crate::Error::OutOfSpace).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("init.mapkv");
    /// let db = mapkv::Options::new().initial_size(8 << 20).open(&path)?;
    /// assert_eq!(db.stats().file_len, 8 << 20);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn initial_size(mut self, bytes: u64) -> Options {
        self.initial_size = bytes.min(crate::storage::MAX_FILE_LEN);
        self
    }

    /// The most one growth adds to the file (default 1 GiB). A growth adds
    /// a sixteenth of the file (at least 64 KiB) or what the write needs,
    /// whichever is more, but no more than this step beyond what the
    /// write needs: an open store carries at most about 6% of its size in
    /// space allocated ahead. Rounded up to 64 KiB; any value works
    /// (growth never goes past [`max_size`](Options::max_size)).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("grow.mapkv");
    /// let db = mapkv::Options::new()
    ///     .initial_size(1 << 20)
    ///     .growth_step(256 << 10)
    ///     .open(&path)?;
    /// db.insert(b"big", vec![7u8; 1 << 20])?; // needs more than 1 MiB
    /// let len = db.stats().file_len;
    /// // Grown to fit, by whole 64 KiB granules, not doubled to 2 MiB.
    /// assert!(len > 1 << 20 && len < (2 << 20) + (256 << 10));
    /// assert_eq!(len % (64 << 10), 0);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn growth_step(mut self, bytes: u64) -> Options {
        self.growth_step = bytes.max(crate::storage::GRANULE);
        self
    }

    /// The file never grows past this many bytes: a write that would need
    /// more fails with [`Error::OutOfSpace`](crate::Error::OutOfSpace)
    /// (default and maximum: 512 GiB, the format's limit).
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Error, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("max.mapkv");
    /// let db = Options::new().max_size(2 << 20).open(&path)?;
    /// let err = db.insert(b"big", vec![0u8; 4 << 20]).unwrap_err();
    /// assert!(matches!(err, Error::OutOfSpace { .. }));
    /// db.insert(b"small", b"fits")?; // still usable
    /// assert!(db.stats().file_len <= 2 << 20);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn max_size(mut self, bytes: u64) -> Options {
        self.max_size = bytes.min(crate::storage::MAX_FILE_LEN);
        self
    }

    /// Permission bits for a newly created file (default `0o600`: only the
    /// owner can read or write it; the umask still applies). Bits above
    /// `0o7777` are ignored.
    ///
    /// It also bounds which existing empty file mapkv adopts as a new
    /// store: only one owned by the opener's effective user and no more
    /// open to group and others than `mode`; any other is refused with
    /// [`Error::Refused`](crate::Error::Refused) (someone else may have
    /// made it to read what the store will hold).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("mode.mapkv");
    /// let db = mapkv::Options::new().mode(0o640).open(&path)?;
    /// let mode = std::fs::metadata(db.path())?.permissions().mode() & 0o777;
    /// assert_eq!(mode & !0o640, 0); // no bits beyond the ones asked for
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mode(mut self, mode: u32) -> Options {
        self.mode = mode & 0o7777;
        self
    }

    /// Size the index of a new store for this many keys, so that loading
    /// them needs no index rebuild (default 0: start small and grow).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("keys.mapkv");
    /// let db = mapkv::Options::new().expected_keys(10_000).open(&path)?;
    /// let stats = db.stats();
    /// assert!(stats.index_capacity * 3 / 4 >= 10_000); // room without a rebuild
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn expected_keys(mut self, n: u64) -> Options {
        self.expected_keys = n;
        self
    }

    /// Address space to reserve for the mapping up front (default 16 GiB;
    /// no memory or disk is used for it). The file grows in place up to this
    /// size; past it the file is mapped again at twice the size, and the old
    /// mapping stays until the store is closed. Clamped to 512 GiB, the
    /// largest file the format allows.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("reserve.mapkv");
    /// let db = mapkv::Options::new()
    ///     .initial_size(1 << 20)
    ///     .map_reserve(1 << 20)
    ///     .open(&path)?;
    /// db.insert(b"big", vec![1u8; 2 << 20])?; // the file outgrows the reservation
    /// assert!(db.stats().remaps >= 1);
    /// assert_eq!(db.get(b"big")?.map(|v| v.len()), Some(2 << 20));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn map_reserve(mut self, bytes: u64) -> Options {
        self.map_reserve = bytes.min(crate::storage::MAX_FILE_LEN);
        self
    }

    /// The bound on every wait of this handle. Default 30 s.
    ///
    /// - The writer lock, which every write, a read-write open that joins
    ///   other handles, [`flush`](crate::Db::flush), [`close`](crate::Db::close),
    ///   compaction and eviction take: when another writer (in any process,
    ///   container or PID namespace) keeps it this long, the call gives up
    ///   with [`Error::Timeout`](crate::Error::Timeout), which names that
    ///   writer's pid. A writer that died is noticed within milliseconds
    ///   and never waited for; one that is stopped or paused is never
    ///   taken for dead.
    /// - [`open`](Options::open) waiting for a handle that holds the store
    ///   exclusively ([`Error::Locked`](crate::Error::Locked)). Handles
    ///   share a store freely; a handle holds it exclusively only while it
    ///   recovers the store after a crash (it was the first to open it).
    /// - A write that finds a cache full waiting for an eviction, and
    ///   [`read_consistent`](crate::Db::read_consistent) on a read-only
    ///   handle waiting for a quiet moment.
    ///
    /// Longer than 100 years (such as `Duration::MAX`) is clamped to 100
    /// years: wait for ever, in practice.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("lt.mapkv");
    /// let db = mapkv::Options::new()
    ///     .lock_timeout(Duration::from_secs(5))
    ///     .open(&path)?;
    /// let other = mapkv::Db::open(&path)?; // shared: no waiting
    /// other.insert(b"k", b"v")?;
    /// assert!(db.contains_key(b"k")?);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn lock_timeout(mut self, timeout: std::time::Duration) -> Options {
        self.lock_timeout = timeout.min(MAX_LOCK_TIMEOUT);
        self
    }

    /// Compact automatically: when a commit leaves more than `fraction` of
    /// the log dead (overwritten or removed data, old index tables) and the
    /// log is over 1 MiB, a background thread runs [`Db::compact`](crate::Db::compact). `None`
    /// (the default) never compacts by itself. Values are clamped to
    /// 0.1..=0.95; NaN means `None`.
    ///
    /// The thread compacts online: readers never wait, writers wait only
    /// for the final catch-up. Compaction rewrites the live data into a new
    /// file, so it needs free disk space for it while it runs.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("auto.mapkv");
    /// let db = mapkv::Options::new().auto_compact(Some(0.5)).open(&path)?;
    /// db.insert(b"k", b"v")?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn auto_compact(mut self, fraction: Option<f64>) -> Options {
        self.auto_compact = fraction.filter(|f| !f.is_nan()).map(|f| f.clamp(0.1, 0.95));
        self
    }

    /// Cache mode: the file never grows past `bytes`. When a write would
    /// need more, the oldest entries are evicted to make room, except those
    /// read since they were written (second chance; see
    /// [`evict_fraction`](Options::evict_fraction)), and expired entries
    /// ([`Db::insert_with_ttl`](crate::Db::insert_with_ttl)) go first.
    /// Eviction starts in a background thread shortly before the file is
    /// full; a write that finds it full waits for it.
    ///
    /// The bound is stored in the file, so every handle in every process
    /// keeps to it, including ones opened without this option; opening
    /// with a different bound changes it. `bytes` is rounded down to a
    /// multiple of 64 KiB, and raised to at least 256 KiB.
    ///
    /// Reads return copies ([`Value`](crate::Value) owns its bytes), so an
    /// eviction never changes a value a reader holds: evicting rewrites the
    /// entries that stay into a new file, the same way
    /// [`Db::compact`](crate::Db::compact) does, and the old file's pages
    /// stay mapped until the last reader lets go of them. While an eviction
    /// runs, the disk holds both files.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("cache.mapkv");
    /// let cache = mapkv::Options::new().capacity(1 << 20).open(&path)?;
    /// for i in 0..20_000u32 {
    ///     cache.insert(i.to_le_bytes(), [0u8; 100])?; // 2.5 MB in all
    /// }
    /// let stats = cache.cache_stats();
    /// assert!(stats.file_len <= 1 << 20);
    /// assert!(stats.evictions > 0);
    /// assert!(cache.get(19_999u32.to_le_bytes())?.is_some()); // the newest stay
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn capacity(mut self, bytes: u64) -> Options {
        let b = bytes.min(crate::storage::MAX_FILE_LEN) / crate::storage::GRANULE
            * crate::storage::GRANULE;
        self.capacity = Some(b.max(crate::storage::MIN_CAPACITY));
        self
    }

    /// Cache mode: the share of the capacity an eviction frees (default
    /// 0.1; clamped to 0.02..=0.5; NaN means the default). Each eviction
    /// rewrites the entries that
    /// stay, so a smaller share means fewer entries lost per eviction but
    /// more copying per byte written: about `(1 - f) / f` bytes copied per
    /// byte inserted.
    ///
    /// Which entries go: the oldest first, in the order they were written.
    /// An entry read since it was written or last kept gets another chance
    /// (it is kept, moved to the new end, and its read count, which
    /// saturates at 3, goes down by one). Expired entries always go.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("frac.mapkv");
    /// let cache = mapkv::Options::new()
    ///     .capacity(4 << 20)
    ///     .evict_fraction(0.25)
    ///     .open(&path)?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn evict_fraction(mut self, f: f64) -> Options {
        self.evict_fraction = if f.is_nan() { 0.1 } else { f.clamp(0.02, 0.5) };
        self
    }

    /// Cache mode: start evicting in a background thread shortly before
    /// the cache is full (default `true`), so that writes rarely wait.
    /// With `false` this handle never starts a thread: the write that
    /// finds the cache full evicts in its own thread, and evictions happen
    /// at the same points of a run every time.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("sync-evict.mapkv");
    /// let cache = mapkv::Options::new()
    ///     .capacity(1 << 20)
    ///     .evict_ahead(false)
    ///     .open(&path)?;
    /// for i in 0..20_000u32 {
    ///     cache.insert(i.to_le_bytes(), [0u8; 100])?; // some of these evict
    /// }
    /// assert!(cache.cache_stats().eviction_runs > 0);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn evict_ahead(mut self, yes: bool) -> Options {
        self.evict_ahead = yes;
        self
    }

    /// The file's length limit: `max_size`, or the capacity if smaller.
    pub(crate) fn size_limit(&self) -> u64 {
        self.capacity
            .map_or(self.max_size, |c| c.min(self.max_size))
    }
}
