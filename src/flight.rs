//! Read-through caching with single flight across threads and processes:
//! of the callers that miss the same key at the same time, one computes
//! the value and the others wait for it.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use crate::{Db, Result, Value};

/// How long a waiter sleeps between looks when no commit wakes it (the
/// computing caller may have died: then its claim is free).
const NAP: Duration = Duration::from_millis(10);

impl Db {
    /// The value of `key`; if it is absent, compute it with `f`, store it
    /// (with `ttl`, if given) and return it. A read-through cache in one
    /// call.
    ///
    /// **Single flight.** When several threads or processes call this for
    /// the same missing key at the same time, `f` runs in one of them; the
    /// others wait and return the value it stored. Precisely:
    ///
    /// - A caller that finds the key runs nothing and returns its value.
    ///   For [`cache_stats`](Db::cache_stats), a call is one read: a hit if
    ///   it found the key at once, else a miss.
    /// - Otherwise it claims the key (a lock the kernel drops if the
    ///   process dies) and runs `f` only if the claim is its own; having
    ///   claimed, it looks once more, so a value stored meanwhile is
    ///   returned instead of computed again.
    /// - A caller that finds the key claimed waits for a commit and looks
    ///   again, until the key is there, the claim is free (the computing
    ///   caller returned, panicked or died: then it claims and computes),
    ///   or `lock_timeout` has passed: then it computes without a claim.
    ///   So a caller never waits longer than `lock_timeout` before it
    ///   computes itself, and `f` runs once per missing key unless a
    ///   computation takes longer than that.
    /// - The value is stored only if the key is still absent; if another
    ///   writer stored one meanwhile, that value is returned and `f`'s is
    ///   dropped.
    /// - Claims are per key hash bucket (a million of them): two keys that
    ///   share a bucket wait for each other, and then each computes.
    ///
    /// # Errors
    /// As [`get`](Db::get) and [`insert`](Db::insert);
    /// [`Error::ReadOnly`](crate::Error::ReadOnly) on a read-only handle if
    /// the key is absent. See
    /// [`get_or_try_insert_with`](Db::get_or_try_insert_with) for an `f`
    /// that can fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("rt.mapkv"))?;
    /// let mut computed = 0;
    /// for _ in 0..3 {
    ///     let v = db.get_or_insert_with(b"user:7", Some(Duration::from_secs(60)), || {
    ///         computed += 1;
    ///         b"expensive result".to_vec()
    ///     })?;
    ///     assert_eq!(&*v, b"expensive result");
    /// }
    /// assert_eq!(computed, 1); // the later calls were hits
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_or_insert_with(
        &self,
        key: impl AsRef<[u8]>,
        ttl: Option<Duration>,
        f: impl FnOnce() -> Vec<u8>,
    ) -> Result<Value> {
        match self.get_or_try_insert_with(key, ttl, || Ok::<_, Infallible>(f()))? {
            Ok(v) => Ok(v),
            Err(never) => match never {},
        }
    }

    /// [`get_or_insert_with`](Db::get_or_insert_with) for an `f` that can
    /// fail: its error comes back as `Ok(Err(e))`, nothing is stored, and
    /// the claim is released, so that a waiting caller computes next.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("rtt.mapkv"))?;
    /// let r = db.get_or_try_insert_with(b"k", None, || Err("backend down"))?;
    /// assert_eq!(r, Err("backend down"));
    /// assert!(!db.contains_key(b"k")?); // nothing stored
    /// let v = db.get_or_try_insert_with(b"k", None, || Ok::<_, &str>(b"v".to_vec()))?;
    /// assert_eq!(v.unwrap().as_slice(), b"v");
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_or_try_insert_with<E>(
        &self,
        key: impl AsRef<[u8]>,
        ttl: Option<Duration>,
        f: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> Result<std::result::Result<Value, E>> {
        let k = key.as_ref();
        let deadline = Instant::now() + self.handle.opts.lock_timeout;
        let compute = |f: Box<dyn FnOnce() -> std::result::Result<Vec<u8>, E> + '_>| match f() {
            Ok(v) => self.insert_or_get(k, &v, ttl).map(Ok),
            Err(e) => Ok(Err(e)),
        };
        // One read for the hit ratio: a hit if the first look finds the
        // key, else a miss (the looks while waiting are not counted).
        let mut first = true;
        loop {
            let seen = self.commit_seq();
            let found = self.look(k)?;
            if first {
                self.count_read(&self.store(), found.is_some());
                first = false;
            }
            if let Some(v) = found {
                return Ok(Ok(v));
            }
            let store = arc_swap::Guard::into_inner(self.store());
            if let Some(claim) = store.try_claim(k)? {
                // Stored between our look and our claim?
                if let Some(v) = self.look(k)? {
                    return Ok(Ok(v));
                }
                let r = compute(Box::new(f));
                drop(claim);
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                // Waited long enough for the caller that holds the claim.
                return compute(Box::new(f));
            }
            // A commit (the value landing, most likely) wakes us at once.
            let _ = self.wait_for_change(seen, NAP.min(deadline - now));
        }
    }

    /// `get` without counting the read for the hit ratio.
    fn look(&self, k: &[u8]) -> Result<Option<Value>> {
        let mut buf = Vec::new();
        let found = self.read(|s| s.fetch(k, &mut buf))?;
        Ok(found.map(|at| Value::from_parts(buf, at)))
    }
}
