//! Whole-store operations: empty it for every process, take a live copy,
//! change a cache's capacity. Clearing and copying are compactions
//! (src/compact.rs) that keep nothing, or that write their new file
//! somewhere else.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::compact::Plan;
use crate::engine::{self, Failure};
use crate::{CompactReport, Db, Error, Options, Result};

impl Db {
    /// Remove every entry, for every handle in every process. The store
    /// moves to a new, empty file (like a compaction that keeps nothing),
    /// so this takes about as long whatever the store holds, and the old
    /// file's space goes back to the filesystem. Commits that other
    /// handles make while it runs may survive it; everything committed
    /// before the call is gone. Waits (up to `lock_timeout`) for a
    /// compaction or eviction that is running.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a read-only handle, [`Error::Locked`] if
    /// other compactions kept running for longer than `lock_timeout`, and
    /// the errors of [`compact`](Db::compact).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("clear.mapkv");
    /// let db = mapkv::Db::open(&path)?;
    /// let other = mapkv::Db::open(&path)?; // as another process would
    /// for i in 0..1_000u32 {
    ///     db.insert(i.to_le_bytes(), b"v")?;
    /// }
    /// db.clear()?;
    /// assert!(db.is_empty());
    /// assert!(other.is_empty() && other.get(7u32.to_le_bytes())?.is_none());
    /// db.insert(b"after", b"1")?; // the store goes on
    /// assert_eq!(other.len(), 1);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn clear(&self) -> Result<()> {
        self.rewrite(Plan::Clear).map(|_| ())
    }

    /// Write a consistent, compacted copy of the store to a new file at
    /// `dest` while other handles go on reading and writing: the copy
    /// holds the store as of one commit (every commit before it whole,
    /// nothing after it), without the dead space, and it is closed cleanly
    /// and durable when this returns. Like `mdb_copy -c`. Writers are
    /// never paused; compactions and evictions wait until it is done.
    ///
    /// The copy is written beside `dest` under a hidden name
    /// (`.NAME.mapkv-compact-*`) and linked into place when complete, so
    /// `dest` may be on another file system, and a crash leaves at most
    /// that hidden file there, never a partial `dest`.
    ///
    /// # Errors
    /// [`Error::Refused`] if `dest` exists (nothing is replaced);
    /// [`Error::ReadOnly`] on a read-only handle (it takes the
    /// compaction lock); the errors of [`compact`](Db::compact).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = mapkv::Db::open(dir.path().join("live.mapkv"))?;
    /// db.insert(b"k", b"v")?;
    /// let copy = dir.path().join("backup.mapkv");
    /// let report = db.backup(&copy)?;
    /// assert_eq!(report.keys, 1);
    /// db.insert(b"later", b"not in the copy")?;
    /// let restored = mapkv::Db::open(&copy)?;
    /// assert_eq!(restored.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// assert!(!restored.contains_key(b"later")?);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<CompactReport> {
        let dest = dest.as_ref();
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(Error::Refused {
                path: dest.to_path_buf(),
                reason: "the destination exists; a backup never replaces a file".into(),
            });
        }
        self.rewrite(Plan::Copy { dest })
    }

    /// Run a clear or a copy, waiting for a compaction or eviction that
    /// is running to finish first (up to `lock_timeout`).
    fn rewrite(&self, plan: Plan<'_>) -> Result<CompactReport> {
        let deadline = Instant::now() + self.handle.opts.lock_timeout;
        loop {
            match self.run(&mut |_, _| {}, plan) {
                Err(Failure::Error(Error::Locked { .. })) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(Failure::Full { wanted, .. }) => {
                    return Err(Error::OutOfSpace {
                        path: self.handle.path.clone(),
                        wanted,
                        reason: "commits made meanwhile filled the cache's capacity".into(),
                    })
                }
                r => return r.map_err(|f| f.into_error(&self.handle.path)),
            }
        }
    }

    /// Change the store's capacity (cache mode: the bound on its file's
    /// length), for every handle in every process, durably. `bytes` is
    /// rounded as [`Options::capacity`] rounds it. A store opened without
    /// a capacity becomes a cache. If the store is larger than the new
    /// capacity, an eviction brings it under the bound before this
    /// returns.
    ///
    /// Opening a store with a capacity other than its own is refused
    /// ([`Error::CapacityMismatch`]): this is the way to change it.
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Error, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("setcap.mapkv");
    /// let cache = Options::new().capacity(4 << 20).open(&path)?;
    /// // Another process asking for another size is told, not obeyed:
    /// let e = Options::new().capacity(1 << 20).open(&path).unwrap_err();
    /// assert!(matches!(e, Error::CapacityMismatch { stored, requested, .. }
    ///     if stored == 4 << 20 && requested == 1 << 20));
    /// // Changing it is explicit:
    /// cache.set_capacity(1 << 20)?;
    /// assert_eq!(cache.cache_stats().capacity, 1 << 20);
    /// let other = Options::new().capacity(1 << 20).open(&path)?; // agrees now
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn set_capacity(&self, bytes: u64) -> Result<()> {
        let cap = Options::new().capacity(bytes).capacity.unwrap_or(bytes);
        let over = self.on_current(|s| -> engine::Result<bool> {
            s.check_writable()?;
            let mut wr = s.lock_writer()?;
            let c = s.control()?;
            c.set_capacity(cap);
            // The meta carries the capacity: durable before we return.
            s.write_meta(&mut wr, 0, true)?;
            Ok(c.tail() > cap || s.arena.refresh().unwrap_or(0) > cap)
        })?;
        if !over {
            return Ok(());
        }
        // Bring the file under the new bound now (an eviction writes a
        // new file within it).
        let deadline = Instant::now() + self.handle.opts.lock_timeout;
        loop {
            match self.evict(0) {
                Ok(_) => return Ok(()),
                Err(Failure::Error(Error::Locked { .. })) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(f) => return Err(f.into_error(&self.handle.path)),
            }
        }
    }
}
