//! # mapkv
//!
//! A persistent key-value store in one memory-mapped file: a fixed-slot hash
//! index and an append-only log of CRC-checked records, shared by every
//! process that maps the file.
//!
//! * **Reads** take no lock and make no system call: a hash, a slot load or
//!   two, one copy of the record, a CRC check.
//! * **Writes** append to the log under one writer lock and publish with an
//!   atomic slot store. Durability per store: [`Durability`].
//! * **Many processes** open the same file at once: readers everywhere stay
//!   lock-free and see each commit at once; writers take turns on a robust
//!   lock in the mapping that a killed process cannot leave held;
//!   [`Db::wait_for_change`] wakes waiters in any process, and
//!   [`Db::changes_after`] tells them what changed.
//! * **Crashes**: a process crash loses nothing that was acknowledged; an OS
//!   crash or power loss loses nothing acknowledged under
//!   [`Durability::Sync`] or before a [`Db::flush`] that returned. Commits,
//!   batches included, are all-or-nothing.
//! * **Soundness**: no reference into the shared mapping ever reaches your
//!   code. [`Value`] owns its bytes, which were checked after the copy, so a
//!   corrupt or hostile file yields an [`Error`], never undefined behaviour.
//!
//! ```
//! use mapkv::{Db, Durability, Options};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("example.mapkv");
//! let db = Options::new().durability(Durability::Sync).open(&path)?;
//! db.insert(b"user:1", b"ada")?;
//! let mut batch = db.batch();
//! batch.insert(b"user:2", b"grace").remove(b"user:1");
//! batch.commit()?; // both or neither, even across a power cut
//! assert_eq!(db.get(b"user:2")?.as_deref(), Some(&b"grace"[..]));
//! assert_eq!(db.len(), 1);
//! # Ok::<(), mapkv::Error>(())
//! ```
//!
//! ## A cache shared by processes
//!
//! Give the store a capacity and it never grows past it: a write that would
//! need more evicts the oldest entries (those read since they were written
//! get a second chance), in a new file every handle moves to. Entries may
//! expire ([`Db::insert_with_ttl`], [`Db::expire`]). Of several processes
//! that miss the same key at once, [`Db::get_or_insert_with`] computes it
//! in one; [`Db::insert_if_absent`], [`Db::compare_and_swap`] and
//! [`Db::increment`] are atomic across processes; [`Db::cache_stats`]
//! counts hits and misses of every process.
//!
//! ```
//! use std::time::Duration;
//! use mapkv::Options;
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("cache.mapkv");
//! // Every worker process opens the same file; the first one creates it.
//! let cache = Options::new().capacity(64 << 20).open(&path)?;
//! let page = cache.get_or_insert_with(b"/index.html", Some(Duration::from_secs(30)), || {
//!     b"<html>rendered once, by one process</html>".to_vec()
//! })?;
//! assert!(page.starts_with(b"<html>"));
//! assert_eq!(cache.increment(b"visits", 1)?, 1);
//! # Ok::<(), mapkv::Error>(())
//! ```
//!
//! ## Keeping the file small
//!
//! The log only grows: overwritten and removed entries leave dead space
//! until [`Db::compact`] rewrites the live entries into a new file, online
//! (readers never wait, writers only for the last commits), or
//! [`Options::auto_compact`] does it when the log is mostly dead.
//! [`Db::backup`] writes a compacted, consistent copy elsewhere, and
//! [`Db::clear`] empties the store for everyone.
//!
//! See `docs/ARCHITECTURE.md` and `docs/FORMAT.md` in the repository for how
//! it works and the byte layout of the file.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(all(unix, target_pointer_width = "64")))]
compile_error!("mapkv needs a 64-bit Unix target (it maps files with MAP_SHARED)");

// `db` first: rustdoc lists `Db`'s methods in this order, `open` first.
mod admin;
mod batch;
mod cache;
mod check;
mod compact;
mod db;
mod engine;
mod error;
mod evict;
mod feed;
mod flight;
mod group;
mod index;
mod iter;
mod log;
mod multi;
mod options;
mod repair;
mod rmw;
#[allow(unsafe_code)]
mod storage;
#[doc(hidden)]
pub mod testing;
mod value;

pub use batch::Batch;
/// The crate [`insert_pod`](Db::insert_pod) and [`get_pod`](Db::get_pod)
/// take their `Pod` types from, re-exported so that you need not depend on
/// it yourself. Its derives then need to be told where it is:
///
/// ```
/// use mapkv::bytemuck::{Pod, Zeroable};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "mapkv::bytemuck")]
/// #[repr(C)]
/// struct Point {
///     x: i32,
///     y: i32,
/// }
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("pod.mapkv"))?;
/// db.insert_pod(b"p", &Point { x: 1, y: -2 })?;
/// assert_eq!(db.get_pod::<Point>(b"p")?, Some(Point { x: 1, y: -2 }));
/// # Ok::<(), mapkv::Error>(())
/// ```
pub use bytemuck;
pub use cache::CacheStats;
pub use check::CheckReport;
pub use compact::CompactReport;
pub use db::{Db, Stats};
pub use engine::OpenKind;
pub use error::{Error, Result};
pub use feed::{Change, Commit, LogPosition};
pub use iter::Iter;
pub use log::record::{MAX_KEY_LEN, MAX_VALUE_LEN};
pub use multi::{ReadView, Wait};
pub use options::{Durability, Options};
pub use repair::{Dropped, RepairReport};
pub use rmw::CasFailure;
pub use value::Value;

/// A number that changes in every child forked (by `fork(2)`, from any
/// language) after this process first called it, and stays the same
/// otherwise: one atomic load, no system call. For code that keeps one
/// handle per process, such as language bindings: a handle opened under
/// another generation was inherited from a parent; open the store again
/// rather than use it (using it is safe, but the child then shares the
/// parent's open file description and its locks).
///
/// # Examples
///
/// ```
/// let g = mapkv::fork_generation();
/// assert_eq!(mapkv::fork_generation(), g); // no fork in between
/// ```
pub fn fork_generation() -> u64 {
    storage::lock::forks()
}
