//! What many processes sharing one store need beyond get and insert:
//! change notification, reads of several keys that see a commit whole, and
//! fixed-layout (`Pod`) values.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use bytemuck::Pod;

use std::cell::Cell;

use crate::db::Follows;
use crate::engine::{self, Failure, Store};
use crate::log::record::seq_of;
use crate::storage::lock::futex_wait;
use crate::storage::mapping::MapMode;
use crate::{Db, Error, Result, Value};

/// How [`Db::wait_for_change`] returned.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mapkv::Wait;
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("w.mapkv"))?;
/// let seen = db.commit_seq();
/// db.insert(b"k", b"v")?;
/// let w = db.wait_for_change(seen, Duration::from_secs(1));
/// assert_eq!(w, Wait::Changed(seen + 1));
/// assert!(!w.timed_out());
/// assert_eq!(w.seq(), db.commit_seq());
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Wait {
    /// A commit newer than `since` landed: the newest commit's sequence
    /// number.
    Changed(u64),
    /// The timeout passed with no newer commit (`since` is returned).
    TimedOut(u64),
}

impl Wait {
    /// The newest commit sequence number seen (`since` after a timeout).
    pub fn seq(self) -> u64 {
        match self {
            Wait::Changed(s) | Wait::TimedOut(s) => s,
        }
    }

    /// Whether the wait ended by its timeout.
    pub fn timed_out(self) -> bool {
        matches!(self, Wait::TimedOut(_))
    }
}

/// A consistent view for [`Db::read_consistent`]: every read through it
/// sees the store as of one commit.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("rv.mapkv"))?;
/// db.insert(b"x", b"1")?;
/// let (x, y) = db.read_consistent(|view| Ok((view.get(b"x")?, view.contains_key(b"y")?)))?;
/// assert_eq!(x.as_deref(), Some(&b"1"[..]));
/// assert!(!y);
/// # Ok::<(), mapkv::Error>(())
/// ```
pub struct ReadView<'a> {
    inner: &'a Store,
    /// A read found that the store moved to a new file: the run does not
    /// count, and `read_consistent` starts over there.
    moved: Cell<bool>,
}

impl ReadView<'_> {
    /// An engine result as the caller's closure sees it; a move is noted
    /// (and the run discarded by `read_consistent`).
    fn lift<T>(&self, r: engine::Result<T>) -> Result<T> {
        r.map_err(|f| {
            if matches!(f, Failure::Moved) {
                self.moved.set(true);
            }
            f.into_error(&self.inner.path)
        })
    }

    /// Like [`Db::get`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("rvg.mapkv"))?;
    /// db.insert(b"a", b"1")?;
    /// let v = db.read_consistent(|view| view.get(b"a"))?;
    /// assert_eq!(v.as_deref(), Some(&b"1"[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        let mut buf = Vec::new();
        let found = self.lift(self.inner.fetch(key.as_ref(), &mut buf))?;
        Ok(found.map(|at| Value::from_parts(buf, at)))
    }

    /// Look up `keys` with their misses overlapped (`Db::get_many_into`).
    fn fetch_many<K: AsRef<[u8]>>(&self, keys: &[K], out: &mut Vec<Option<Value>>) -> Result<u64> {
        self.lift(self.inner.fetch_many(keys, out))
    }

    /// Like [`Db::contains_key`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("rvc.mapkv"))?;
    /// db.insert(b"a", b"1")?;
    /// let both = db.read_consistent(|v| Ok(v.contains_key(b"a")? && v.contains_key(b"b")?))?;
    /// assert!(!both);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.lift(self.inner.lookup(key.as_ref()))?.is_some())
    }

    /// Like [`Db::get_pod`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("rvp.mapkv"))?;
    /// let mut b = db.batch();
    /// b.insert(b"x", 3u64.to_ne_bytes()).insert(b"y", 4u64.to_ne_bytes());
    /// b.commit()?;
    /// let sum = db.read_consistent(|v| {
    ///     Ok(v.get_pod::<u64>(b"x")?.unwrap_or(0) + v.get_pod::<u64>(b"y")?.unwrap_or(0))
    /// })?;
    /// assert_eq!(sum, 7);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_pod<T: Pod>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        self.lift(get_pod_from(self.inner, key.as_ref()))
    }
}

fn seq_now(i: &Store) -> u64 {
    i.control().map(|c| seq_of(c.seq_gen())).unwrap_or(0)
}

fn get_pod_from<T: Pod>(i: &Store, key: &[u8]) -> engine::Result<Option<T>> {
    let mut out = T::zeroed();
    let found = i.fetch_exact(key, bytemuck::bytes_of_mut(&mut out))?;
    Ok(found.then_some(out))
}

/// Attempts of [`Db::read_consistent`] before a read-write handle stops
/// writers (takes the writer lock) to guarantee progress.
const OPTIMISTIC_TRIES: u32 = 64;

impl Db {
    /// The sequence number of the newest commit visible to this handle, in
    /// any process. It only grows; pass it to
    /// [`wait_for_change`](Db::wait_for_change).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("cs.mapkv"))?;
    /// let before = db.commit_seq();
    /// db.insert(b"k", b"v")?;
    /// assert_eq!(db.commit_seq(), before + 1);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn commit_seq(&self) -> u64 {
        seq_now(&self.store())
    }

    /// Block until a commit newer than `since` (a value from
    /// [`commit_seq`](Db::commit_seq)) lands, in this or any other process,
    /// or until `timeout` passes. Returns [`Wait::Changed`] with the newest
    /// commit sequence number, or [`Wait::TimedOut`].
    ///
    /// No polling on Linux: waiters sleep on a futex in the shared mapping
    /// and every commit wakes them (writers make that system call only while
    /// someone waits). A read-only handle never writes the file, so it does
    /// not register as a waiter: it sleeps on the same futex for at most
    /// 2 ms at a time and re-checks.
    ///
    /// Several commits may land before the waiter runs: compare what you
    /// read with what you had, not the number of wake-ups.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mapkv::Wait;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("wait.mapkv");
    /// let db = mapkv::Db::open(&path)?;
    /// let seen = db.commit_seq();
    /// let writer = {
    ///     let other = mapkv::Db::open(&path)?; // another handle, as another process would
    ///     std::thread::spawn(move || other.insert(b"news", b"!"))
    /// };
    /// let now = match db.wait_for_change(seen, Duration::from_secs(10)) {
    ///     Wait::Changed(now) => now,
    ///     Wait::TimedOut(_) => panic!("no commit within 10 s"),
    /// };
    /// assert!(now > seen);
    /// writer.join().unwrap()?;
    /// assert!(db.contains_key(b"news")?);
    /// // Nothing new: a timeout, told apart from a change.
    /// assert_eq!(db.wait_for_change(now, Duration::from_millis(10)), Wait::TimedOut(now));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn wait_for_change(&self, since: u64, timeout: Duration) -> Wait {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            // Resolve the store each time round: a compaction that moves it
            // wakes us through the old file's futex.
            let i = self.store();
            let Ok(c) = i.control() else {
                // No control block to wait on (a damaged file): nothing
                // can change it either.
                return Wait::TimedOut(since);
            };
            let word = c.notify_word();
            // Registering is a store into the file: read-only handles poll.
            let can_register = i.arena.mode() == MapMode::Shared && !i.read_only();
            if can_register {
                c.waiters().fetch_add(1, Ordering::SeqCst);
            }
            // Read the futex word before the state: a commit after this
            // load changes the word, so the wait below returns at once.
            let n = word.load(Ordering::SeqCst);
            let now_seq = seq_now(&i);
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            let done = now_seq != since || left.is_zero();
            if !done {
                let nap = if can_register {
                    left
                } else {
                    left.min(Duration::from_millis(2))
                };
                futex_wait(word, n, nap);
            }
            if can_register {
                c.waiters().fetch_sub(1, Ordering::SeqCst);
            }
            if done {
                return if now_seq != since {
                    Wait::Changed(now_seq)
                } else {
                    Wait::TimedOut(since)
                };
            }
        }
    }

    /// Run `f` against a view in which every read sees the store as of one
    /// commit: a batch is seen whole or not at all, across keys.
    ///
    /// How: a sequence lock over the commit counter. `f` runs without any
    /// lock; if a commit landed while it ran, it runs again. `f` may
    /// therefore run more than once: keep side effects out of it. Cost: two
    /// extra atomic loads when no commit interferes; under a steady stream of
    /// commits, retries. After 64 tries a read-write handle takes the writer
    /// lock for one last run (waiting for it up to `Options::lock_timeout`);
    /// a read-only handle keeps retrying (backing off) for up to
    /// `Options::lock_timeout`.
    ///
    /// # Errors
    /// Whatever `f` returns from a run that no commit disturbed;
    /// [`Error::Locked`] if a read-only handle could not get a quiet moment,
    /// [`Error::Timeout`] if a read-write handle could not get the writer
    /// lock, within `Options::lock_timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("rc.mapkv"))?;
    /// let mut b = db.batch();
    /// b.insert(b"from", b"90").insert(b"to", b"10"); // a transfer: both or neither
    /// b.commit()?;
    /// let total = db.read_consistent(|v| {
    ///     let n = |k: &[u8]| -> mapkv::Result<u32> {
    ///         Ok(v.get(k)?.map(|x| std::str::from_utf8(&x).unwrap().parse().unwrap()).unwrap_or(0))
    ///     };
    ///     Ok(n(b"from")? + n(b"to")?)
    /// })?;
    /// assert_eq!(total, 100);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn read_consistent<R>(&self, mut f: impl FnMut(&ReadView<'_>) -> Result<R>) -> Result<R> {
        // A compaction that moves the store meanwhile: start over on the
        // new file.
        Follows::new(self.handle.opts.lock_timeout)
            .run(
                &self.handle.path,
                || self.store(),
                |s| consistent_on(s, &mut f),
                |s| self.handle.follow(s),
            )
            .map_err(|e| e.into_error(&self.handle.path))
    }

    /// The values of several keys, as of one commit (see
    /// [`read_consistent`](Db::read_consistent)): `result[i]` is the value
    /// of `keys[i]`, or `None`.
    ///
    /// Faster than a loop of [`get`](Db::get): the lookups run in groups
    /// whose cache misses are in flight together (hash every key of a
    /// group, start loading every home slot, then every record, then copy
    /// each value out), where a loop of single gets waits for two misses
    /// per key, one after the other. Every value is still a checked copy,
    /// as with `get`. Batches of 16 keys and more gain the most.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("gm.mapkv"))?;
    /// db.insert(b"a", b"1")?;
    /// let vals = db.get_many(&[&b"a"[..], &b"b"[..]])?;
    /// assert_eq!(vals[0].as_deref(), Some(&b"1"[..]));
    /// assert!(vals[1].is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Value>>> {
        let mut out = Vec::with_capacity(keys.len());
        self.get_many_into(keys, &mut out)?;
        Ok(out)
    }

    /// Like [`get_many`](Db::get_many), into `out`: `out[i]` is the value
    /// of `keys[i]`, or `None`. Returns how many keys were found.
    ///
    /// What `out` held is replaced, and its allocations are reused: its own,
    /// and the buffers of the values it held, which receive the new values.
    /// A loop that passes the same `out` each time allocates nothing once
    /// the buffers are large enough (about 12 % faster than `get_many` for
    /// 64 random keys of 150-byte values).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("gmi.mapkv"))?;
    /// db.insert(b"user:1", b"ada")?;
    /// db.insert(b"user:2", b"grace")?;
    /// let mut out = Vec::new();
    /// let keys = [b"user:1", b"user:2", b"user:3"];
    /// assert_eq!(db.get_many_into(&keys, &mut out)?, 2);
    /// assert_eq!(out[1].as_deref(), Some(&b"grace"[..]));
    /// assert!(out[2].is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_many_into<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        out: &mut Vec<Option<Value>>,
    ) -> Result<usize> {
        let hits = self.read_consistent(|v| v.fetch_many(keys, out))?;
        // Counted once the view is settled (a run may be retried).
        self.read(|i| {
            i.count_reads(hits, keys.len() as u64 - hits);
            Ok(())
        })?;
        Ok(hits as usize)
    }

    /// Store a plain-old-data value (a `#[repr(C)]` struct deriving
    /// `bytemuck::Pod`) under `key`: its bytes, in this machine's layout and
    /// byte order. Read it back with [`get_pod`](Db::get_pod).
    ///
    /// # Examples
    ///
    /// ```
    /// use bytemuck::{Pod, Zeroable};
    ///
    /// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    /// #[repr(C)]
    /// struct Reading {
    ///     sensor: u32,
    ///     celsius_x10: i32,
    ///     at_ms: u64,
    /// }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("pod.mapkv"))?;
    /// let r = Reading { sensor: 7, celsius_x10: 215, at_ms: 1_700_000_000_000 };
    /// db.insert_pod(b"sensor:7", &r)?;
    /// assert_eq!(db.get_pod::<Reading>(b"sensor:7")?, Some(r));
    /// // The wrong type is an error, not garbage.
    /// assert!(matches!(db.get_pod::<u32>(b"sensor:7"), Err(mapkv::Error::ValueSize { .. })));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn insert_pod<T: Pod>(&self, key: impl AsRef<[u8]>, value: &T) -> Result<()> {
        self.insert(key, bytemuck::bytes_of(value))
    }

    /// Read a value stored by [`insert_pod`](Db::insert_pod) as a `T`.
    ///
    /// One copy, straight from the mapping into the returned `T` (no
    /// allocation, no intermediate buffer), checksum-verified. A reference
    /// into the mapping itself is not offered: another process may change
    /// those bytes at any time, and Rust must not hold a reference to memory
    /// that changes under it.
    ///
    /// # Errors
    /// [`Error::ValueSize`] if the stored value is not `size_of::<T>()`
    /// bytes; [`Error::Corrupted`] if the record fails its checks.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("gp.mapkv"))?;
    /// db.insert_pod(b"counts", &[1u64, 2, 3])?;
    /// assert_eq!(db.get_pod::<[u64; 3]>(b"counts")?, Some([1, 2, 3]));
    /// assert_eq!(db.get_pod::<u64>(b"missing")?, None);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_pod<T: Pod>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        let key = key.as_ref();
        self.read(|i| {
            let r = get_pod_from(i, key)?;
            self.count_read(i, r.is_some());
            Ok(r)
        })
    }
}

/// `read_consistent` on one store: `Failure::Moved` if a compaction moved
/// it to a new file meanwhile.
fn consistent_on<R>(
    i: &Store,
    f: &mut impl FnMut(&ReadView<'_>) -> Result<R>,
) -> engine::Result<R> {
    let c = i.control()?;
    let view = ReadView {
        inner: i,
        moved: Cell::new(false),
    };
    let run = |f: &mut dyn FnMut(&ReadView<'_>) -> Result<R>| -> engine::Result<R> {
        let res = f(&view);
        if view.moved.get() {
            view.moved.set(false);
            return Err(Failure::Moved);
        }
        Ok(res?)
    };
    let started = Instant::now();
    let mut tries = 0u32;
    loop {
        let v1 = c.version();
        if v1 % 2 == 0 {
            let res = run(f);
            fence(Ordering::Acquire);
            if matches!(res, Err(Failure::Moved)) || c.version() == v1 {
                return res;
            }
        }
        tries += 1;
        if tries >= OPTIMISTIC_TRIES && !i.read_only() {
            // Stop writers for one run: nothing can change under it (and
            // taking the lock says whether the store moved).
            let _wr = i.lock_writer()?;
            return run(f);
        }
        if i.read_only() && started.elapsed() > i.lock_timeout {
            return Err(Error::Locked {
                path: i.path.clone(),
                detail: "commits kept landing (or a writer died mid-commit and no writer \
                         has repaired the store yet) while a read-only handle tried to \
                         read a consistent view",
            }
            .into());
        }
        if tries < 16 {
            std::hint::spin_loop();
        } else if tries < OPTIMISTIC_TRIES {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}
