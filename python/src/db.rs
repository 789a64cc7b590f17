//! `mapkv.Db`: a handle to a store.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mapkv::{Db, Durability, Options, Wait};
use parking_lot::RwLock;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::batch::PyBatch;
use crate::convert::{bytes_of, opt_seconds, seconds};
use crate::errors::{closed, to_py};
use crate::fork;
use crate::iter::{Kind, PyIter};

/// A value at least this long is copied with the GIL released.
const LARGE: usize = 64 << 10;
/// A thread's read buffer keeps its allocation up to this size.
const KEEP: usize = 1 << 20;
/// How long a wait sleeps between checks for signals (Ctrl-C).
const SLICE: Duration = Duration::from_millis(50);

thread_local! {
    /// Each thread reads values into one reused buffer, then copies them
    /// into a new `bytes`: no allocation of its own per read.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last value this thread read was large: read the next one with
    /// the GIL released too. (The library cannot tell a value's length
    /// before copying it, so the first large value of a thread is copied
    /// with the GIL held.)
    static LAST_LARGE: Cell<bool> = const { Cell::new(false) };
}

/// The handle of this process.
struct Open {
    db: Db,
    /// The fork generation it was opened in (`fork::generation`).
    generation: u64,
}

/// A handle to a mapkv store: a persistent key-value store in one
/// memory-mapped file that many processes share.
#[pyclass(frozen, name = "Db", module = "mapkv")]
pub(crate) struct PyDb {
    /// `None` once closed.
    state: RwLock<Option<Open>>,
    /// How to open the store again in a forked child: as at first, but
    /// keeping the store's own capacity.
    reopen: Options,
    path: PathBuf,
    durability: &'static str,
    read_only: bool,
    lock_timeout: Option<f64>,
}

impl Drop for PyDb {
    fn drop(&mut self) {
        if let Some(open) = self.state.get_mut().take() {
            if open.generation != fork::generation() {
                // Inherited from the parent: the child must neither use nor
                // close it.
                std::mem::forget(open);
            }
        }
    }
}

fn durability_of(name: &str) -> PyResult<(Durability, &'static str)> {
    match name {
        "none" => Ok((Durability::None, "none")),
        "async" => Ok((Durability::Async, "async")),
        "sync" => Ok((Durability::Sync, "sync")),
        _ => Err(PyValueError::new_err(format!(
            "durability must be \"none\", \"async\" or \"sync\", not {name:?}"
        ))),
    }
}

impl PyDb {
    /// Run `f` on this process's handle, with the GIL held (for calls that
    /// take no lock and cannot block). Reopens the store first in a child
    /// forked since the handle was opened.
    pub(crate) fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&Db) -> R) -> PyResult<R> {
        {
            let state = self.state.read();
            match &*state {
                None => return Err(closed(py)),
                Some(open) if open.generation == fork::generation() => return Ok(f(&open.db)),
                Some(_) => {}
            }
        }
        self.reopen(py)?;
        self.with(py, f)
    }

    /// A clone of this process's handle, for a call made with the GIL
    /// released. (The lock on the state is never held without the GIL, so
    /// a fork never copies it held.)
    pub(crate) fn db(&self, py: Python<'_>) -> PyResult<Db> {
        self.with(py, Db::clone)
    }

    /// In a forked child: open the store for this process, and leak the
    /// inherited handle.
    #[cold]
    fn reopen(&self, py: Python<'_>) -> PyResult<()> {
        let (opts, path) = (&self.reopen, &self.path);
        let fresh = py.detach(|| opts.clone().open(path)).map_err(to_py)?;
        let generation = fork::generation();
        let mut state = self.state.write();
        match &*state {
            None => Err(closed(py)),
            // Another thread got there first; `fresh` just lets go.
            Some(open) if open.generation == generation => Ok(()),
            Some(_) => {
                let inherited = state.replace(Open {
                    db: fresh,
                    generation,
                });
                std::mem::forget(inherited);
                Ok(())
            }
        }
    }

    /// Run a call that may block (the writer lock, a sync) with the GIL
    /// released.
    fn blocking<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Db) -> mapkv::Result<R> + Send,
    ) -> PyResult<R> {
        let db = self.db(py)?;
        py.detach(|| f(&db)).map_err(to_py)
    }

    /// The value of `key` as `bytes`, or `None`.
    fn read<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let k = bytes_of(key)?;
        BUF.with_borrow_mut(|buf| {
            let found = if LAST_LARGE.get() {
                let db = self.db(py)?;
                py.detach(|| db.get_into(&k, buf))
            } else {
                self.with(py, |db| db.get_into(&k, buf))?
            }
            .map_err(to_py)?;
            let large = buf.len() >= LARGE;
            LAST_LARGE.set(large);
            let out = if !found {
                None
            } else if large {
                let src: &[u8] = buf;
                Some(PyBytes::new_with(py, src.len(), |dst| {
                    py.detach(|| dst.copy_from_slice(src));
                    Ok(())
                })?)
            } else {
                Some(PyBytes::new(py, buf))
            };
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            Ok(out)
        })
    }
}

#[pymethods]
impl PyDb {
    /// Open (or create) the store at `path`.
    ///
    /// durability: "none" (a write survives the crash of any process),
    /// "async" (and its write-back starts at once), or "sync" (it survives
    /// an OS crash or power loss: synced before the call returns).
    /// capacity: a bound in bytes on the file (a cache: the oldest entries
    /// are evicted to make room); None keeps the store's own.
    /// read_only: open without writing to the file.
    /// lock_timeout: seconds any wait may last (default 30).
    #[new]
    #[pyo3(signature = (path, durability = "none", capacity = None, read_only = false, lock_timeout = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        durability: &str,
        capacity: Option<u64>,
        read_only: bool,
        lock_timeout: Option<f64>,
    ) -> PyResult<PyDb> {
        let (d, durability) = durability_of(durability)?;
        let mut opts = Options::new().durability(d).read_only(read_only);
        if let Some(t) = opt_seconds(lock_timeout, "lock_timeout")? {
            opts = opts.lock_timeout(t);
        }
        let reopen = opts.clone();
        if let Some(c) = capacity {
            opts = opts.capacity(c);
        }
        let db = py.detach(|| opts.open(&path)).map_err(to_py)?;
        Ok(PyDb {
            state: RwLock::new(Some(Open {
                db,
                generation: fork::generation(),
            })),
            reopen,
            path,
            durability,
            read_only,
            lock_timeout,
        })
    }

    /// The value of `key` (bytes), or `default` if it is absent.
    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(match self.read(py, key)? {
            Some(v) => Some(v.into_any()),
            None => default,
        })
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.read(py, key)?
            .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    /// Set `key` to `value`; with `ttl` (seconds) it expires after that.
    #[pyo3(signature = (key, value, ttl = None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
    ) -> PyResult<()> {
        let (k, v) = (bytes_of(key)?, bytes_of(value)?);
        match opt_seconds(ttl, "ttl")? {
            None => self.blocking(py, |db| db.insert(&k, &v)),
            Some(t) => self.blocking(py, |db| db.insert_with_ttl(&k, &v, t)),
        }
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.set(py, key, value, None)
    }

    /// Remove `key`; returns whether it was there.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = bytes_of(key)?;
        self.blocking(py, |db| db.remove(&k))
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.delete(py, key)? {
            Ok(())
        } else {
            Err(PyKeyError::new_err(key.clone().unbind()))
        }
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = bytes_of(key)?;
        self.with(py, |db| db.contains_key(&k))?.map_err(to_py)
    }

    /// Live keys (expired entries left out: with entries that expire this
    /// looks at every entry).
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let db = self.db(py)?;
        Ok(py.detach(|| db.len()) as usize)
    }

    fn __iter__(&self, py: Python<'_>) -> PyResult<PyIter> {
        PyIter::new(self.db(py)?, Kind::Keys)
    }

    /// An iterator over the keys, in no particular order.
    fn keys(&self, py: Python<'_>) -> PyResult<PyIter> {
        PyIter::new(self.db(py)?, Kind::Keys)
    }

    /// An iterator over the values.
    fn values(&self, py: Python<'_>) -> PyResult<PyIter> {
        PyIter::new(self.db(py)?, Kind::Values)
    }

    /// An iterator over `(key, value)` pairs.
    fn items(&self, py: Python<'_>) -> PyResult<PyIter> {
        PyIter::new(self.db(py)?, Kind::Items)
    }

    /// Set `key` to `value` only if it is absent (or expired); returns
    /// whether it did. Atomic across threads and processes.
    #[pyo3(signature = (key, value, ttl = None))]
    fn add(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
    ) -> PyResult<bool> {
        let (k, v) = (bytes_of(key)?, bytes_of(value)?);
        let Some(ttl) = opt_seconds(ttl, "ttl")? else {
            return self.blocking(py, |db| db.insert_if_absent(&k, &v));
        };
        self.blocking(py, |db| db.insert_if_absent_with_ttl(&k, &v, ttl))
    }

    /// Add `delta` to the counter at `key` (an 8-byte little-endian signed
    /// integer; absent counts as 0) and return the new value. Atomic
    /// across threads and processes.
    #[pyo3(signature = (key, delta = 1))]
    fn incr(&self, py: Python<'_>, key: &Bound<'_, PyAny>, delta: i64) -> PyResult<i64> {
        let k = bytes_of(key)?;
        self.blocking(py, |db| db.increment(&k, delta))
    }

    /// Set `key` to `new` only if its value is `expected`; None as
    /// `expected` means absent, None as `new` removes the key. Returns
    /// whether it swapped. Atomic across threads and processes.
    fn cas(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        expected: Option<Bound<'_, PyAny>>,
        new: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let k = bytes_of(key)?;
        let e = expected.as_ref().map(bytes_of).transpose()?;
        let n = new.as_ref().map(bytes_of).transpose()?;
        self.blocking(py, |db| {
            Ok(db.compare_and_swap(&k, e.as_deref(), n.as_deref())?.is_ok())
        })
    }

    /// The value of `key`; if absent, call `fn()` (which returns bytes or
    /// str), store its result (with `ttl`) and return it. Of the callers in
    /// every process that miss the same key at once, one runs `fn`; the
    /// others wait for its value. If `fn` raises, nothing is stored and the
    /// exception propagates.
    #[pyo3(signature = (key, r#fn, ttl = None))]
    fn get_or_set<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        r#fn: Bound<'py, PyAny>,
        ttl: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let k = bytes_of(key)?;
        let ttl = opt_seconds(ttl, "ttl")?;
        let compute = r#fn.unbind();
        let db = self.db(py)?;
        let r = py.detach(|| {
            db.get_or_try_insert_with(&k, ttl, || {
                Python::attach(|py| -> PyResult<Vec<u8>> {
                    let v = compute.bind(py).call0()?;
                    Ok(bytes_of(&v)?.into_owned())
                })
            })
        });
        match r.map_err(to_py)? {
            Ok(v) => Ok(PyBytes::new(py, &v)),
            Err(e) => Err(e),
        }
    }

    /// Set (`ttl` seconds from now) or clear (None) the expiry of `key`,
    /// keeping its value. Returns False if the key is absent.
    fn expire(&self, py: Python<'_>, key: &Bound<'_, PyAny>, ttl: Option<f64>) -> PyResult<bool> {
        let k = bytes_of(key)?;
        let t = opt_seconds(ttl, "ttl")?;
        self.blocking(py, |db| db.expire(&k, t))
    }

    /// Seconds until `key` expires, or None if it is absent or never
    /// expires.
    fn ttl(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let k = bytes_of(key)?;
        Ok(self
            .with(py, |db| db.time_to_live(&k))?
            .map_err(to_py)?
            .map(|d| d.as_secs_f64()))
    }

    /// A batch of writes applied all-or-nothing by `commit()`, or by the
    /// end of a `with` block that raised nothing.
    fn batch(slf: &Bound<'_, PyDb>) -> PyBatch {
        let me: Py<PyDb> = slf.clone().unbind();
        PyBatch::new(Box::new(move |py| me.get().db(py)))
    }

    /// Make every acknowledged write durable (survive an OS crash).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.blocking(py, |db| db.flush())
    }

    /// Rewrite the live entries into a new file, online; returns a report.
    fn compact<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = self.blocking(py, |db| db.compact())?;
        compact_report(py, &r)
    }

    /// Write a compacted, consistent copy of the store to `dest`.
    fn backup<'py>(&self, py: Python<'py>, dest: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let r = self.blocking(py, |db| db.backup(&dest))?;
        compact_report(py, &r)
    }

    /// Remove every entry, for every process.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.blocking(py, |db| db.clear())
    }

    /// Change the store's capacity (bytes; 0: no bound).
    fn set_capacity(&self, py: Python<'_>, capacity: u64) -> PyResult<()> {
        self.blocking(py, |db| db.set_capacity(capacity))
    }

    /// Statistics of the store (sizes, counts, how it was opened).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.blocking(py, |db| Ok(db.stats()))?;
        let d = PyDict::new(py);
        d.set_item("keys", s.keys)?;
        d.set_item("expired_keys", s.expired_keys)?;
        d.set_item("live_bytes", s.live_bytes)?;
        d.set_item("dead_bytes", s.dead_bytes)?;
        d.set_item("index_bytes", s.index_bytes)?;
        d.set_item("used_bytes", s.used_bytes)?;
        d.set_item("file_len", s.file_len)?;
        d.set_item("index_capacity", s.index_capacity)?;
        d.set_item("index_used", s.index_used)?;
        d.set_item("index_load", s.index_load)?;
        d.set_item("tail", s.tail)?;
        d.set_item("durable_tail", s.durable_tail)?;
        d.set_item("commits", s.commits)?;
        d.set_item("generation", s.generation)?;
        d.set_item("remaps", s.remaps)?;
        d.set_item("opened", format!("{:?}", s.opened).to_lowercase())?;
        Ok(d)
    }

    /// Cache statistics: capacity, space in use, hits and misses of every
    /// process, evictions and expirations.
    fn cache_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.blocking(py, |db| Ok(db.cache_stats()))?;
        let d = PyDict::new(py);
        d.set_item("capacity", s.capacity)?;
        d.set_item("file_len", s.file_len)?;
        d.set_item("used_bytes", s.used_bytes)?;
        d.set_item("live_bytes", s.live_bytes)?;
        d.set_item("keys", s.keys)?;
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("hit_ratio", s.hit_ratio())?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("expirations", s.expirations)?;
        d.set_item("eviction_runs", s.eviction_runs)?;
        Ok(d)
    }

    /// Verify every record and the index; raises CorruptedError naming the
    /// first problem, else returns a report.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = self.blocking(py, |db| db.check())?;
        let d = PyDict::new(py);
        d.set_item("records", r.records)?;
        d.set_item("commits", r.commits)?;
        d.set_item("index_chunks", r.index_chunks)?;
        d.set_item("live_keys", r.live_keys)?;
        d.set_item("expired_keys", r.expired_keys)?;
        d.set_item("live_bytes", r.live_bytes)?;
        d.set_item("tail", r.tail)?;
        Ok(d)
    }

    /// The sequence number of the newest commit.
    fn commit_seq(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |db| db.commit_seq())
    }

    /// Block until a commit newer than `since` lands (in any process) or
    /// `timeout` seconds pass; returns the newest commit sequence number
    /// (`since` after a timeout). Ctrl-C interrupts the wait.
    fn wait_for_change(&self, py: Python<'_>, since: u64, timeout: f64) -> PyResult<u64> {
        // float("inf") waits for ever.
        let deadline = match timeout {
            t if t == f64::INFINITY => None,
            t => Instant::now().checked_add(seconds(t, "timeout")?),
        };
        let db = self.db(py)?;
        loop {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let w = py.detach(|| db.wait_for_change(since, left.min(SLICE)));
            match w {
                Wait::Changed(seq) => return Ok(seq),
                Wait::TimedOut(seq) if left <= SLICE => return Ok(seq),
                Wait::TimedOut(_) => py.check_signals()?,
            }
        }
    }

    /// Close the handle (the store stays for other handles). Further calls
    /// raise ClosedError. Closing twice is fine.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(open) = self.state.write().take() else {
            return Ok(());
        };
        if open.generation != fork::generation() {
            std::mem::forget(open);
            return Ok(());
        }
        py.detach(|| open.db.close()).map_err(to_py)
    }

    fn __enter__<'py>(slf: &Bound<'py, PyDb>) -> Bound<'py, PyDb> {
        slf.clone()
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// The path the store was opened with.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Whether the handle was opened read-only.
    #[getter]
    fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.state.read().is_none()
    }

    fn __repr__(&self) -> String {
        format!(
            "mapkv.Db({:?}, durability={:?}{}{})",
            self.path,
            self.durability,
            if self.read_only {
                ", read_only=True"
            } else {
                ""
            },
            if self.state.read().is_none() {
                ", closed"
            } else {
                ""
            },
        )
    }

    /// Pickled as the arguments that open the store again (for
    /// multiprocessing's spawn and forkserver start methods).
    fn __reduce__<'py>(slf: &Bound<'py, PyDb>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let me = slf.get();
        let args = (
            me.path.clone(),
            me.durability,
            None::<u64>,
            me.read_only,
            me.lock_timeout,
        );
        PyTuple::new(
            py,
            [
                slf.get_type().into_any(),
                args.into_pyobject(py)?.into_any(),
            ],
        )
    }
}

fn compact_report<'py>(py: Python<'py>, r: &mapkv::CompactReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("keys", r.keys)?;
    d.set_item("len_before", r.len_before)?;
    d.set_item("len_after", r.len_after)?;
    d.set_item("live_bytes", r.live_bytes)?;
    d.set_item("expired", r.expired)?;
    d.set_item("evicted", r.evicted)?;
    d.set_item("caught_up", r.caught_up)?;
    d.set_item("writer_pause", r.writer_pause.as_secs_f64())?;
    d.set_item("duration", r.duration.as_secs_f64())?;
    Ok(d)
}
