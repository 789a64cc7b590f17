//! The one error type of mapkv.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong, with what and where.
///
/// # Examples
///
/// Match on the variants to handle particular failures:
///
/// ```
/// use mapkv::{Db, Error, Options, MAX_KEY_LEN};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("e.mapkv");
/// let db = Db::open(&path)?;
///
/// // A key over the limit: nothing is written.
/// let err = db.insert(vec![0u8; MAX_KEY_LEN + 1], b"v").unwrap_err();
/// assert!(matches!(err, Error::KeyTooLarge { max: MAX_KEY_LEN, .. }));
///
/// // A stored value read back as a type of another size.
/// db.insert(b"n", 7u32.to_le_bytes())?;
/// assert!(matches!(db.get_pod::<u64>(b"n"), Err(Error::ValueSize { expected: 8, found: 4 })));
/// db.close()?;
///
/// // A write through a read-only handle.
/// let ro = Options::new().read_only(true).open(&path)?;
/// match ro.insert(b"k", b"v") {
///     Err(Error::ReadOnly { path: p }) => assert_eq!(p, path),
///     other => panic!("expected ReadOnly, got {other:?}"),
/// }
///
/// // A file that is not a store.
/// let txt = dir.path().join("notes.txt");
/// std::fs::write(&txt, b"just some text")?;
/// let err = Db::open(&txt).err().expect("not a store");
/// assert!(matches!(err, Error::NotMapkv { .. }));
/// println!("{err}"); // "<path>: not a mapkv store: <reason>"
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// What mapkv was doing.
        op: &'static str,
        /// The store's file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The file is not a mapkv store (wrong magic, too short, empty when
    /// opened read-only). The file was not modified.
    #[error("{path}: not a mapkv store: {reason}")]
    NotMapkv {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },

    /// mapkv refused to go on because doing so would change who can read
    /// or write the store: an existing empty file it did not create (owned
    /// by another user, or more open than `Options::mode`), a compaction
    /// that cannot give the new file the old one's owner, group and mode,
    /// or a store with a second hard link. Nothing was changed.
    #[error("{path}: refused: {reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why, and what to do about it.
        reason: String,
    },

    /// The file is a mapkv store of a format version this build cannot read.
    #[error("{path}: mapkv format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },

    /// A header, slot or record failed its checks.
    #[error("{path}: corrupted at offset {offset}: {what}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damaged structure.
        offset: u64,
        /// What is wrong.
        what: String,
    },

    /// A key longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    #[error("key of {len} bytes is too large (at most {max})")]
    KeyTooLarge {
        /// Length given.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A value longer than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN).
    #[error("value of {len} bytes is too large (at most {max})")]
    ValueTooLarge {
        /// Length given.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// [`Db::get_pod`](crate::Db::get_pod) found a value whose length is not
    /// the size of the requested type.
    #[error("the value is {found} bytes, but the requested type is {expected} bytes")]
    ValueSize {
        /// `size_of` the requested type.
        expected: usize,
        /// Length of the stored value.
        found: usize,
    },

    /// [`Db::increment`](crate::Db::increment) would take the counter past
    /// the range of an `i64`. Nothing was written.
    #[error("the counter holds {current}: adding {delta} would overflow an i64")]
    Overflow {
        /// The counter's value.
        current: i64,
        /// The increment asked for.
        delta: i64,
    },

    /// The store was opened with a capacity ([`Options::capacity`](crate::Options::capacity))
    /// other than the one it has: a second process must not shrink or grow
    /// a shared cache by accident. Open it without a capacity (it keeps its
    /// own), with the same one, or change it on purpose with
    /// [`Db::set_capacity`](crate::Db::set_capacity).
    #[error(
        "{path}: the store's capacity is {}, but it was opened with a capacity of {requested} bytes; \
         open it without one to use the store's, or change it with Db::set_capacity",
        if *stored == 0 { "none (it is not a cache)".to_string() } else { format!("{stored} bytes") }
    )]
    CapacityMismatch {
        /// The file.
        path: PathBuf,
        /// The store's capacity in bytes (0: it is not a cache).
        stored: u64,
        /// The capacity asked for, in bytes (as rounded by `Options::capacity`).
        requested: u64,
    },

    /// [`Db::changes_after`](crate::Db::changes_after) was given a log
    /// position that this store's log does not have.
    #[error(
        "{path}: log position {position} cannot be used ({reason}; the log ends at {tail}); \
         start again from Db::log_position"
    )]
    BadPosition {
        /// The file.
        path: std::path::PathBuf,
        /// The position given (its byte offset).
        position: u64,
        /// Where the log ends now.
        tail: u64,
        /// Why it cannot be used.
        reason: &'static str,
    },

    /// A write on a handle opened with `Options::read_only(true)`.
    #[error("{path}: the store was opened read-only")]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },

    /// Another handle (in this or another process) held the store
    /// exclusively for longer than `Options::lock_timeout`: it was
    /// recovering the store after a crash. Or the store is in format 1 and
    /// a process (an older mapkv) has it open. (Handles normally share a
    /// store; this is not "another process has it open".)
    #[error("{path}: the store is locked by another handle ({detail})")]
    Locked {
        /// The file.
        path: PathBuf,
        /// Which lock could not be taken.
        detail: &'static str,
    },

    /// A wait ran out: another writer kept the writer lock for longer than
    /// `Options::lock_timeout`. The holder is alive (the kernel still
    /// holds its registration), perhaps stopped (SIGSTOP, a debugger, a
    /// paused container or VM) or busy; a live holder is never robbed of
    /// the lock, so nothing was written. Retry later, or find the holder.
    #[error(
        "{path}: gave up after {waited:?} waiting for {what}{}",
        holder.map_or(String::new(), |p| format!(
            " (held by pid {p}, as seen in its own PID namespace)"
        ))
    )]
    Timeout {
        /// The file.
        path: PathBuf,
        /// What the call waited for.
        what: &'static str,
        /// How long it waited.
        waited: std::time::Duration,
        /// The holder's process id as it recorded it in the store, if it
        /// did (in a container, a pid of that container's namespace).
        holder: Option<u64>,
    },

    /// The file could not grow: the disk is full, a size limit was reached,
    /// or `Options::max_size` would be exceeded. Nothing was written; the
    /// store stays usable for reads and for writes that fit.
    #[error("{path}: out of space: cannot grow the file to {wanted} bytes: {reason}")]
    OutOfSpace {
        /// The file.
        path: PathBuf,
        /// The length the file would have needed.
        wanted: u64,
        /// Why it could not grow.
        reason: String,
    },

    /// A read-only open found a store that was not closed cleanly and
    /// whose repair needs to write to the file. Open it read-write once.
    #[error("{path}: the store needs recovery: {reason}")]
    NeedsRecovery {
        /// The file.
        path: PathBuf,
        /// Why the repair cannot happen in memory.
        reason: String,
    },

    /// An earlier msync or fsync failed; the durable state of the file is
    /// unknown, so this handle refuses further writes. Reopen the store to
    /// recover.
    #[error(
        "{path}: the handle is poisoned by an earlier I/O failure ({cause}); reopen the store"
    )]
    Poisoned {
        /// The file.
        path: PathBuf,
        /// The failure that poisoned it.
        cause: String,
    },
}

/// `Result` with mapkv's [`Error`].
///
/// # Examples
///
/// ```
/// fn count(path: &std::path::Path) -> mapkv::Result<u64> {
///     let db = mapkv::Db::open(path)?;
///     Ok(db.len())
/// }
/// # let dir = tempfile::tempdir().unwrap();
/// assert_eq!(count(&dir.path().join("count.mapkv"))?, 0);
/// # Ok::<(), mapkv::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How an operation inside the crate ends early: with an [`Error`] for the
/// caller, or with a signal that the `Db` layer acts on before it runs the
/// operation again. Never leaves the crate: the public API returns
/// [`Error`] only (see [`Failure::into_error`]).
#[derive(Debug)]
pub(crate) enum Failure {
    /// An error to report.
    Error(Error),
    /// The store moved to a new file (a compaction finished): follow it
    /// and run again.
    Moved,
    /// A cache-mode write needs the file to grow to `wanted` bytes, past
    /// its capacity (`size`: bytes past the log's end): evict, then run
    /// again.
    Full {
        /// The file length the write needed.
        wanted: u64,
        /// How many bytes past the log's end the write needed.
        size: u64,
    },
    /// An index table had no empty slot where one was needed: the table
    /// disagrees with its counters. Located (turned into
    /// [`Error::Corrupted`] with the table's offset) by the engine.
    TableFull,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

impl From<crate::index::TableFull> for Failure {
    fn from(_: crate::index::TableFull) -> Failure {
        Failure::TableFull
    }
}

impl Failure {
    /// The error to report for a failure that its handler did not take
    /// care of: a move that kept happening, a cache that stayed full, a
    /// table that was full.
    pub(crate) fn into_error(self, path: &std::path::Path) -> Error {
        match self {
            Failure::Error(e) => e,
            Failure::Moved => Error::Corrupted {
                path: path.to_path_buf(),
                offset: crate::storage::CONTROL_OFFSET,
                what: "the store keeps saying it moved to a new file, but the path still names this one".into(),
            },
            Failure::Full { wanted, .. } => Error::OutOfSpace {
                path: path.to_path_buf(),
                wanted,
                reason: "the write does not fit in the cache's capacity".into(),
            },
            Failure::TableFull => Error::Corrupted {
                path: path.to_path_buf(),
                offset: 0,
                what: "index table has no empty slot".into(),
            },
        }
    }
}
