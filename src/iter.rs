//! Iteration over every live entry.

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
    inner: std::sync::Arc<crate::db::Inner>,
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
        let mut inner = arc_swap::Guard::into_inner(db.inner());
        let mut res = inner.table().map(|(_, d)| d.encode());
        let mut follows = crate::db::Follows::new(db.shared.opts.lock_timeout);
        while matches!(res, Err(crate::Error::Moved)) && follows.again() {
            // Moved between the check and the table: follow, then retry.
            db.shared.follow(&inner);
            inner = arc_swap::Guard::into_inner(db.inner());
            res = inner.table().map(|(_, d)| d.encode());
        }
        let (desc, failed) = match res {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        };
        Iter {
            db,
            inner,
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
        let inner = &*self.inner;
        let t = match inner.table_at(self.desc?) {
            Ok((t, _)) => t,
            Err(e) => {
                self.desc = None;
                return Some(Err(self.db.note_damage(e)));
            }
        };
        while let Some(w) = t.word_at(self.slot) {
            // Keep the record loads of the next slots in flight.
            while self.ahead < self.slot + LOOKAHEAD {
                match t.word_at(self.ahead) {
                    Some(a) if index::is_live(a) => {
                        inner.arena.prefetch(index::word_offset(a), 256)
                    }
                    Some(_) => {}
                    None => break,
                }
                self.ahead += 1;
            }
            self.slot += 1;
            if !index::is_live(w) {
                continue;
            }
            let off = index::word_offset(w);
            let item = inner.header_at(off).and_then(|h| {
                let mut buf = inner.read_record(off, &h)?;
                let k = h.key_len as usize;
                // A slot whose tag is not its key's lies about where the
                // key lives: the index disagrees with the log.
                if !index::same_tag(w, index::hash(inner.hash_seed, &buf[..k])) {
                    return Err(inner.corrupt(
                        off,
                        "a slot's tag does not match the key of the record it points at",
                    ));
                }
                if h.has_ttl() && !crate::db::strip_ttl(&mut buf, k) {
                    return Ok(None); // expired: skipped
                }
                let key = Value::from_parts(buf[..k].to_vec(), 0);
                Ok(Some((key, Value::from_parts(buf, k))))
            });
            match item {
                Ok(None) => continue,
                Ok(Some(kv)) => return Some(Ok(kv)),
                Err(e) => return Some(Err(self.db.note_damage(e))),
            }
        }
        None
    }
}
