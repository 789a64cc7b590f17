//! Cache mode ([`Options::capacity`](crate::Options::capacity)): the file
//! never grows past a bound; a write that would need more evicts first.
//!
//! Eviction is a compaction (src/compact.rs) that copies only the entries
//! to keep into a new file and moves every handle there, so no reader, in
//! any process, ever sees bytes reused under it. The entries to drop are
//! chosen by FIFO with second chance: the oldest records go first, except
//! those read since they were written, which readers mark in their slot
//! word (src/index). Expired entries always go.
//!
//! Writers never wait for an eviction while there is room: one starts in a
//! background thread when the log passes `1 - f/4` of the capacity (`f`:
//! the evict fraction). Only a write that finds the file full waits, for
//! its own eviction or for the one another thread or process is running.

use std::time::{Duration, Instant};

use crate::engine::{Failure, Store};
use crate::index::Desc;
use crate::storage::{self, GRANULE};
use crate::{Db, Error, Result};

/// Cache statistics: see [`Db::cache_stats`].
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("cs.mapkv");
/// let cache = mapkv::Options::new().capacity(1 << 20).open(&path)?;
/// cache.insert(b"a", b"1")?;
/// cache.get(b"a")?; // a hit
/// cache.get(b"b")?; // a miss
/// let other = mapkv::Db::open(&path)?; // another handle, as another process would
/// other.get(b"a")?; // another hit
/// drop(other); // a closing handle adds the reads it has not added yet
/// let s = cache.cache_stats();
/// assert_eq!((s.hits, s.misses), (2, 1)); // store-wide
/// assert_eq!(s.hit_ratio(), 2.0 / 3.0);
/// assert_eq!(s.capacity, 1 << 20);
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// The bound on the file's length in bytes; 0 if the store is not a
    /// cache.
    pub capacity: u64,
    /// Length of the file now.
    pub file_len: u64,
    /// Bytes in use: from the start of the file to the end of the log
    /// (headers, index and records, dead ones included). Eviction starts
    /// before this reaches `capacity`.
    pub used_bytes: u64,
    /// Bytes of the records of live entries.
    pub live_bytes: u64,
    /// Live entries, as [`Db::len`] counts them (expired ones left out).
    pub keys: u64,
    /// Reads that found their key ([`Db::get`], [`Db::get_into`],
    /// [`Db::get_pod`]), through every read-write handle in every process,
    /// since the store was created; counted in cache mode only. Each handle
    /// adds its reads in batches of 64 per thread, and the rest when it
    /// reports `cache_stats` or closes, so another process's latest reads
    /// may not show yet. A read-only handle cannot write the store's
    /// counters: its reads show in its own `cache_stats` only.
    pub hits: u64,
    /// Reads that did not find their key, counted like `hits`.
    pub misses: u64,
    /// Entries evicted to make room, by every process, since the store was
    /// created (kept in the file's control block, which is not synced: an
    /// OS crash may set it back, and a recovery that cannot trust it
    /// starts again from 0).
    pub evictions: u64,
    /// Expired entries whose space was taken back (by evictions and
    /// compactions), counted like `evictions`.
    pub expirations: u64,
    /// Evictions run, counted like `evictions`.
    pub eviction_runs: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 before any read.
    pub fn hit_ratio(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

impl Db {
    /// Cache statistics: the capacity, the space in use, hits and misses of
    /// every handle in every process, and the store's evictions and
    /// expirations. All zero but
    /// the sizes if the store is not a cache
    /// ([`Options::capacity`](crate::Options::capacity)).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("stats.mapkv");
    /// let cache = mapkv::Options::new().capacity(1 << 20).open(&path)?;
    /// for i in 0..50_000u32 {
    ///     cache.insert(i.to_le_bytes(), [1u8; 40])?;
    /// }
    /// let s = cache.cache_stats();
    /// assert!(s.evictions > 0 && s.eviction_runs > 0);
    /// assert!(s.used_bytes <= s.capacity && s.file_len <= s.capacity);
    /// assert_eq!(s.keys, cache.len());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn cache_stats(&self) -> CacheStats {
        let i = self.store();
        i.flush_reads();
        let mut s = CacheStats {
            file_len: i.arena.len(),
            ..CacheStats::default()
        };
        if let Ok(c) = i.control() {
            let (st, _) = c.snapshot(1000);
            let st = crate::engine::bounded(st, i.arena.refresh().unwrap_or(s.file_len));
            let [evictions, expirations, runs, hits, misses] = c.cache_counters();
            // A read-only handle's reads are its own (it cannot write the
            // store's counters).
            let (own_hits, own_misses) = i.own_reads();
            s.hits = hits.saturating_add(own_hits);
            s.misses = misses.saturating_add(own_misses);
            s.capacity = c.capacity();
            s.used_bytes = st.tail;
            s.live_bytes = st.live_bytes;
            s.keys = if c.may_hold_ttl() {
                i.count_entries().map_or(st.live_keys, |(live, _)| live)
            } else {
                st.live_keys
            };
            s.evictions = evictions;
            s.expirations = expirations;
            s.eviction_runs = runs;
        }
        s
    }

    /// Count a read for [`CacheStats`] (cache mode only).
    #[inline]
    pub(crate) fn count_read(&self, i: &Store, hit: bool) {
        i.count_read(hit);
    }

    /// A write found the cache full: it needs the file to reach `wanted`
    /// bytes, `size` bytes past the log's end. Evict, or wait for the
    /// eviction another thread or process is running, so that the write can
    /// run again. `attempt` counts the calls for this write: each asks to
    /// free twice as much as the last (other writers may take the room
    /// first). The write gives up at once if it could not fit even in an
    /// empty cache (anything smaller fits once an eviction has emptied it),
    /// and at `deadline`, the lock timeout after it first found the cache
    /// full, if other writers keep taking the room.
    pub(crate) fn make_room(
        &self,
        wanted: u64,
        size: u64,
        attempt: u32,
        deadline: Instant,
    ) -> Result<()> {
        let i = self.store();
        let c = i.control()?;
        let cap = c.capacity();
        let table = Desc::decode(c.index_desc()).map_or(0, |d| d.bytes());
        // What an empty cache has room for, roughly.
        let room = cap.saturating_sub(storage::ARENA_START + table + GRANULE);
        let out_of_space = |why: &str| Error::OutOfSpace {
            path: self.handle.path.clone(),
            wanted,
            reason: format!(
                "the write ({size} bytes) does not fit in the cache's capacity of {cap} bytes{why}"
            ),
        };
        if cap == 0 || size > room {
            return Err(out_of_space(""));
        }
        if Instant::now() >= deadline {
            return Err(out_of_space(
                ": other writers kept filling it faster than evictions freed it",
            ));
        }
        drop(i);
        let mut more = size.saturating_mul(1 << (attempt - 1).min(20)).min(cap);
        loop {
            // Another thread or process may have made room already.
            if self.fits_now(size) {
                return Ok(());
            }
            match self.evict(more) {
                Ok(_) => return Ok(()),
                // The new file filled up with the commits made meanwhile:
                // free more.
                Err(Failure::Full { .. }) if more < cap => more = (more.max(GRANULE) * 2).min(cap),
                Err(Failure::Full { .. }) => {
                    return Err(out_of_space(": eviction could not make room"))
                }
                Err(Failure::Error(Error::Locked { .. })) => {
                    // Another eviction (or compaction) is running. Once it
                    // has moved the store, the write may fit.
                    if Instant::now() >= deadline {
                        return Err(Error::Locked {
                            path: self.handle.path.clone(),
                            detail: "the cache is full and the eviction running elsewhere did not \
                                     finish within the lock timeout",
                        });
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(f) => return Err(f.into_error(&self.handle.path)),
            }
        }
    }

    /// Whether a write of `size` bytes fits in the current store now.
    fn fits_now(&self, size: u64) -> bool {
        let i = self.store();
        let Ok(c) = i.control() else {
            return false;
        };
        c.tail().saturating_add(size) <= c.capacity()
    }

    /// After a write in cache mode: start an eviction in a background
    /// thread once the log passes `1 - f/4` of the capacity, so that
    /// writers rarely find the file full.
    pub(crate) fn maybe_evict_ahead(&self, i: &Store) {
        let Ok(c) = i.control() else {
            return;
        };
        let cap = c.capacity();
        if cap == 0 || i.read_only() {
            return;
        }
        let ahead = (cap as f64 * self.handle.opts.evict_fraction / 4.0) as u64;
        if c.tail() < cap.saturating_sub(ahead) {
            return;
        }
        self.in_background("mapkv-evict", move |db| {
            let deadline = Instant::now() + Duration::from_secs(1);
            // Another thread or process may be evicting: wait for it
            // (and then see whether room is still short) rather than
            // letting every write start a thread that finds it busy.
            while !db.fits_now(ahead) {
                match db.evict(0) {
                    Err(Failure::Error(Error::Locked { .. })) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    _ => break,
                }
            }
        });
    }
}
