//! Read-modify-write, atomic across threads and processes: insert if
//! absent, compare and swap, counters, and changing a key's expiry. Each
//! reads the key and writes the result under the writer lock, so no other
//! writer, in any process, comes between the read and the write.

use std::time::Duration;

use crate::engine::{self, Op, Store};
use crate::log::read::{expiry_after, now_ms, Put};
use crate::{Db, Error, Result, Value};

/// Why [`Db::compare_and_swap`] did not swap: the key's value was not the
/// one expected. `current` is what it was (`None`: absent).
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("casf.mapkv"))?;
/// db.insert(b"k", b"now")?;
/// let failed = db.compare_and_swap(b"k", Some(b"then"), Some(b"next"))?.unwrap_err();
/// assert_eq!(failed.current.as_deref(), Some(&b"now"[..]));
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasFailure {
    /// The value the key had (`None`: it was absent).
    pub current: Option<Value>,
}

impl std::fmt::Display for CasFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.current {
            Some(v) => write!(
                f,
                "compare-and-swap failed: the key holds another value ({v:?})"
            ),
            None => write!(f, "compare-and-swap failed: the key is absent"),
        }
    }
}

impl std::error::Error for CasFailure {}

/// Run `f` with the writer lock held and the key's live entry read under
/// it (`None`: absent or expired).
fn locked<R>(
    s: &Store,
    key: &[u8],
    f: impl FnOnce(&mut engine::Writer, Option<Put>) -> engine::Result<R>,
) -> engine::Result<R> {
    s.check_writable()?;
    let mut wr = s.lock_writer()?;
    let cur = s.get_entry(key)?;
    f(&mut wr, cur)
}

impl Db {
    /// Insert `key` with `value` only if the key is absent (or its entry
    /// has expired). Returns whether it inserted. Atomic across threads
    /// and processes: of many callers racing on one absent key, exactly
    /// one inserts.
    ///
    /// # Errors
    /// As [`insert`](Db::insert).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("ifa.mapkv"))?;
    /// assert!(db.insert_if_absent(b"job:7", b"worker-1")?); // claimed
    /// assert!(!db.insert_if_absent(b"job:7", b"worker-2")?); // already there
    /// assert_eq!(db.get(b"job:7")?.as_deref(), Some(&b"worker-1"[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn insert_if_absent(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<bool> {
        let (k, v) = (key.as_ref(), value.as_ref());
        Op::Put(k, v).check()?;
        self.write(|s| {
            let s: &Store = s;
            locked(s, k, |wr, cur| {
                if cur.is_some() {
                    return Ok(false);
                }
                s.commit_locked(wr, &[Op::Put(k, v)], self.durability)?;
                Ok(true)
            })
        })
    }

    /// [`insert_if_absent`](Db::insert_if_absent) for an entry that
    /// expires `ttl` from now (like [`insert_with_ttl`](Db::insert_with_ttl)).
    /// Returns whether it inserted; atomic across threads and processes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("ifat.mapkv"))?;
    /// let lease = Duration::from_secs(30);
    /// assert!(db.insert_if_absent_with_ttl(b"lock:job7", b"worker-1", lease)?);
    /// assert!(!db.insert_if_absent_with_ttl(b"lock:job7", b"worker-2", lease)?);
    /// assert!(db.time_to_live(b"lock:job7")?.is_some());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn insert_if_absent_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<bool> {
        let (k, v) = (key.as_ref(), value.as_ref());
        let at = expiry_after(ttl);
        Op::PutTtl(k, v, at).check()?;
        self.write(|s| {
            let s: &Store = s;
            locked(s, k, |wr, cur| {
                if cur.is_some() {
                    return Ok(false);
                }
                s.commit_locked(wr, &[Op::PutTtl(k, v, at)], self.durability)?;
                Ok(true)
            })
        })
    }

    /// [`insert_if_absent`](Db::insert_if_absent) with an optional expiry,
    /// which returns the entry that is there afterwards: the one found, or
    /// the one inserted. Used by [`get_or_insert_with`](Db::get_or_insert_with).
    pub(crate) fn insert_or_get(&self, k: &[u8], v: &[u8], ttl: Option<Duration>) -> Result<Value> {
        let op = |at: Option<u64>| match at {
            Some(at) => Op::PutTtl(k, v, at),
            None => Op::Put(k, v),
        };
        op(ttl.map(expiry_after)).check()?;
        self.write(|s| {
            let s: &Store = s;
            locked(s, k, |wr, cur| {
                if let Some(put) = cur {
                    let (buf, at) = put.into_buf();
                    return Ok(Value::from_parts(buf, at));
                }
                s.commit_locked(wr, &[op(ttl.map(expiry_after))], self.durability)?;
                Ok(Value::from_parts(v.to_vec(), 0))
            })
        })
    }

    /// Set `key` to `new` only if its value is `expected`, atomically
    /// across threads and processes. `None` as `expected` means "absent";
    /// `None` as `new` removes the key. A value written by a swap has no
    /// expiry (set one with [`expire`](Db::expire)).
    ///
    /// Returns `Ok(Ok(()))` if it swapped, `Ok(Err(CasFailure))` with the
    /// current value if not, and `Err` for an error (nothing written).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("cas.mapkv"))?;
    /// // Create only if absent, then update only from the value we read.
    /// db.compare_and_swap(b"leader", None, Some(b"node-a"))?.expect("was absent");
    /// assert!(db.compare_and_swap(b"leader", None, Some(b"node-b"))?.is_err());
    /// db.compare_and_swap(b"leader", Some(b"node-a"), Some(b"node-b"))?.expect("swapped");
    /// // Remove only if it still holds what we expect.
    /// db.compare_and_swap(b"leader", Some(b"node-b"), None)?.expect("removed");
    /// assert!(db.get(b"leader")?.is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<std::result::Result<(), CasFailure>> {
        let k = key.as_ref();
        Op::Put(k, new.unwrap_or_default()).check()?;
        self.write(|s| {
            let s: &Store = s;
            locked(s, k, |wr, cur| {
                let same = match (&cur, expected) {
                    (None, None) => true,
                    (Some(p), Some(e)) => p.value() == e,
                    _ => false,
                };
                if !same {
                    let current = cur.map(|p| {
                        let (buf, at) = p.into_buf();
                        Value::from_parts(buf, at)
                    });
                    return Ok(Err(CasFailure { current }));
                }
                match (new, &cur) {
                    (Some(n), _) => s.commit_locked(wr, &[Op::Put(k, n)], self.durability)?,
                    (None, Some(_)) => s.commit_locked(wr, &[Op::Del(k)], self.durability)?,
                    (None, None) => {}
                }
                Ok(Ok(()))
            })
        })
    }

    /// Add `delta` to the counter at `key` and return the new value,
    /// atomically across threads and processes. A counter is an 8-byte
    /// little-endian `i64`; a missing key counts as 0. The entry keeps its
    /// expiry, if it has one.
    ///
    /// # Errors
    /// [`Error::ValueSize`] if the key holds a value that is not 8 bytes;
    /// [`Error::Overflow`] if the sum does not fit in an `i64` (nothing is
    /// written); otherwise as [`insert`](Db::insert).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("incr.mapkv"))?;
    /// assert_eq!(db.increment(b"hits", 1)?, 1);
    /// assert_eq!(db.increment(b"hits", 10)?, 11);
    /// assert_eq!(db.increment(b"hits", -2)?, 9);
    /// assert_eq!(db.get(b"hits")?.as_deref(), Some(&9i64.to_le_bytes()[..]));
    /// db.insert(b"name", b"ada")?;
    /// assert!(matches!(db.increment(b"name", 1), Err(mapkv::Error::ValueSize { expected: 8, found: 3 })));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<i64> {
        let k = key.as_ref();
        Op::Put(k, &[0; 8]).check()?;
        self.write(|s| {
            let s: &Store = s;
            locked(s, k, |wr, cur| {
                let old = match &cur {
                    None => 0,
                    Some(p) => {
                        let b: [u8; 8] = p.value().try_into().map_err(|_| Error::ValueSize {
                            expected: 8,
                            found: p.value().len(),
                        })?;
                        i64::from_le_bytes(b)
                    }
                };
                let new = old.checked_add(delta).ok_or(Error::Overflow {
                    current: old,
                    delta,
                })?;
                let bytes = new.to_le_bytes();
                let op = match cur.as_ref().and_then(|p| p.expires()) {
                    Some(at) => Op::PutTtl(k, &bytes, at),
                    None => Op::Put(k, &bytes),
                };
                s.commit_locked(wr, &[op], self.durability)?;
                Ok(new)
            })
        })
    }

    /// Set (`Some(ttl)`: it expires `ttl` from now) or clear (`None`) the
    /// expiry of `key`, keeping its value. Returns `false` if the key is
    /// absent (or already expired). Atomic across processes, like
    /// [`compare_and_swap`](Db::compare_and_swap). The entry is written
    /// again (a new record with the same value).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("exp.mapkv"))?;
    /// db.insert(b"session", b"token")?;
    /// assert!(db.expire(b"session", Some(Duration::from_secs(60)))?);
    /// assert!(db.time_to_live(b"session")?.unwrap() <= Duration::from_secs(60));
    /// assert!(db.expire(b"session", None)?); // permanent again
    /// assert_eq!(db.time_to_live(b"session")?, None);
    /// assert!(!db.expire(b"missing", Some(Duration::from_secs(1)))?);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn expire(&self, key: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<bool> {
        let k = key.as_ref();
        self.write(|s| {
            let s: &Store = s;
            locked(s, k, |wr, cur| {
                let Some(p) = cur else {
                    return Ok(false);
                };
                let op = match ttl {
                    Some(ttl) => Op::PutTtl(k, p.value(), expiry_after(ttl)),
                    None => Op::Put(k, p.value()),
                };
                op.check()?;
                s.commit_locked(wr, &[op], self.durability)?;
                Ok(true)
            })
        })
    }

    /// How long `key` has until it expires. `None` both when the key has
    /// no expiry and when it is absent (or expired): tell them apart with
    /// [`contains_key`](Db::contains_key). Takes no lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("ttlq.mapkv"))?;
    /// db.insert_with_ttl(b"k", b"v", Duration::from_secs(30))?;
    /// let left = db.time_to_live(b"k")?.expect("has an expiry");
    /// assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
    /// db.insert(b"forever", b"v")?;
    /// assert_eq!(db.time_to_live(b"forever")?, None);
    /// assert_eq!(db.time_to_live(b"missing")?, None);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn time_to_live(&self, key: impl AsRef<[u8]>) -> Result<Option<Duration>> {
        let k = key.as_ref();
        let entry = self.read(|s| s.get_entry(k))?;
        Ok(entry
            .and_then(|p| p.expires())
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms()))))
    }
}
