//! Iteration over every live entry.

use std::sync::Arc;

use crate::db::Follows;
use crate::engine::{self, Store};
use crate::index;
use crate::{Db, Result, Value};

/// Iterator over the live entries of a store, from [`Db::iter`].
///
/// It walks the index table that was current when it was created, in slot
/// order, and copies each entry out (checksum-verified), taking no lock.
/// Entries present for the whole iteration are returned exactly once;
/// entries inserted, overwritten or removed meanwhile may or may not be
/// seen, and a value may be older than one written during the iteration.
/// An entry that fails its checks is returned as an `Err`, and iteration
/// goes on with the next slot.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("i.mapkv"))?;
/// db.insert(b"a", b"1")?;
/// db.insert(b"b", b"2")?;
/// let mut all = Vec::new();
/// for item in db.iter() {
///     let (k, v) = item?;
///     all.push((k.to_vec(), v.to_vec()));
/// }
/// all.sort();
/// assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
/// # Ok::<(), mapkv::Error>(())
/// ```
pub struct Iter<'a> {
    db: &'a Db,
    /// The store as it was when the iterator was made: after a compaction
    /// moves the store, the iterator finishes on the old file (which stays
    /// mapped, and unchanged, while the iterator holds it).
    store: std::sync::Arc<Store>,
    /// The slot table's descriptor word, if it was valid.
    desc: Option<u64>,
    slot: usize,
    /// Records of the slots before this one have been prefetched.
    ahead: usize,
    failed: Option<crate::Error>,
}

/// How many slots ahead of the one being read the iterator starts loading
/// records, so that their cache misses overlap instead of queueing.
const LOOKAHEAD: usize = 64;

impl<'a> Iter<'a> {
    pub(crate) fn new(db: &'a Db) -> Iter<'a> {
        // The table of the current store; moved between the check and the
        // table: follow, then try again.
        let mut store = None;
        let res = Follows::new(db.handle.opts.lock_timeout).run(
            &db.handle.path,
            || arc_swap::Guard::into_inner(db.store()),
            |s: &Arc<Store>| -> engine::Result<u64> {
                store = Some(s.clone());
                Ok(s.table()?.1.encode())
            },
            |s| db.handle.follow(s),
        );
        let store = store.unwrap_or_else(|| arc_swap::Guard::into_inner(db.store()));
        let (desc, failed) = match res {
            Ok(d) => (Some(d), None),
            Err(f) => (None, Some(f.into_error(&db.handle.path))),
        };
        Iter {
            db,
            store,
            desc,
            slot: 0,
            ahead: 0,
            failed,
        }
    }
}

impl Iterator for Iter<'_> {
    /// `(key, value)`, both owned copies.
    type Item = Result<(Value, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(self.db.note_damage(e)));
        }
        let store = &*self.store;
        let t = match store.table_at(self.desc?) {
            Ok((t, _)) => t,
            Err(f) => {
                self.desc = None;
                return Some(Err(self.db.note_damage(f.into_error(&store.path))));
            }
        };
        while let Some(word) = t.word_at(self.slot) {
            // Keep the record loads of the next slots in flight.
            while self.ahead < self.slot + LOOKAHEAD {
                match t.word_at(self.ahead) {
                    Some(a) if index::is_live(a) => {
                        store.arena.prefetch(index::word_offset(a), 256)
                    }
                    Some(_) => {}
                    None => break,
                }
                self.ahead += 1;
            }
            self.slot += 1;
            if !index::is_live(word) {
                continue;
            }
            match store.entry_at(word) {
                Ok(put) if put.expired() => continue, // expired: skipped
                Ok(put) => {
                    let key = Value::from_parts(put.key().to_vec(), 0);
                    let (buf, at) = put.into_buf();
                    return Some(Ok((key, Value::from_parts(buf, at))));
                }
                Err(f) => return Some(Err(self.db.note_damage(f.into_error(&store.path)))),
            }
        }
        None
    }
}

impl Db {
    /// Every live entry once, in no particular order. See [`Iter`](crate::Iter).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("iter.mapkv"))?;
    /// for i in 0..10u32 {
    ///     db.insert(i.to_be_bytes(), b"x")?;
    /// }
    /// let mut count = 0;
    /// for item in db.iter() {
    ///     let (key, value) = item?;
    ///     assert_eq!(key.len(), 4);
    ///     assert_eq!(&*value, b"x");
    ///     count += 1;
    /// }
    /// assert_eq!(count, 10);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn iter(&self) -> crate::Iter<'_> {
        crate::Iter::new(self)
    }
}

impl std::fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter")
            .field("store", &self.store.path)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}
