//! Open-time options and the durability modes.

use std::path::Path;

use crate::{Db, Result};

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
/// everything acknowledged under `Sync`, or before a [`Db::flush`] that
/// returned, is there with its exact bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// No system call on the write path. The write is in the page cache when
    /// the call returns: it survives the crash of this or any process, but an
    /// OS crash or power loss may lose writes since the last
    /// [`Db::flush`] or synced commit (never more, never a partial commit).
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
/// [`Db::open`].
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
        }
    }
}

impl Options {
    /// Default options: `Durability::None`, read-write, create if missing,
    /// 1 MiB initial file, growth doubling up to 1 GiB steps, mode 0o600.
    pub fn new() -> Options {
        Options::default()
    }

    /// What an acknowledged write survives (default [`Durability::None`]).
    pub fn durability(mut self, d: Durability) -> Options {
        self.durability = d;
        self
    }

    /// Open without ever writing the file (default `false`). Writes return
    /// [`Error::ReadOnly`](crate::Error::ReadOnly). If the store was not
    /// closed cleanly, the index is repaired in private memory; the file is
    /// left as it is.
    pub fn read_only(mut self, yes: bool) -> Options {
        self.read_only = yes;
        self
    }

    /// Create the file if it does not exist (default `true`). An existing
    /// empty (0-byte) file is also initialised; any other existing file must
    /// be a mapkv store.
    pub fn create(mut self, yes: bool) -> Options {
        self.create = yes;
        self
    }

    /// Length of a newly created file, rounded up to 64 KiB (default 1 MiB).
    pub fn initial_size(mut self, bytes: u64) -> Options {
        self.initial_size = bytes;
        self
    }

    /// Growth doubles the file until a step would exceed this, then grows by
    /// this much (default 1 GiB). Rounded up to 64 KiB.
    pub fn growth_step(mut self, bytes: u64) -> Options {
        self.growth_step = bytes.max(crate::storage::GRANULE);
        self
    }

    /// The file never grows past this many bytes: a write that would need
    /// more fails with [`Error::OutOfSpace`](crate::Error::OutOfSpace)
    /// (default and maximum: 512 GiB, the format's limit).
    pub fn max_size(mut self, bytes: u64) -> Options {
        self.max_size = bytes.min(crate::storage::MAX_FILE_LEN);
        self
    }

    /// Permission bits for a newly created file (default `0o600`: only the
    /// owner can read or write it; the umask still applies).
    pub fn mode(mut self, mode: u32) -> Options {
        self.mode = mode;
        self
    }

    /// Size the index of a new store for this many keys, so that loading
    /// them needs no index rebuild (default 0: start small and grow).
    pub fn expected_keys(mut self, n: u64) -> Options {
        self.expected_keys = n;
        self
    }

    /// Address space to reserve for the mapping up front (default 16 GiB;
    /// no memory or disk is used for it). The file grows in place up to this
    /// size; past it the file is mapped again at twice the size, and the old
    /// mapping stays until the store is closed.
    pub fn map_reserve(mut self, bytes: u64) -> Options {
        self.map_reserve = bytes;
        self
    }

    /// Open (or create) the store at `path` with these options.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(path.as_ref(), self)
    }
}
