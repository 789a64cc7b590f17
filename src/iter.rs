//! Iteration over every live entry.

use std::sync::Arc;

use crate::db::Follows;
use crate::engine::{self, LogScan, Seen, Step, Store};
use crate::index;
use crate::log::read::Put;
use crate::{Db, Result, Value};

/// Iterator over the live entries of a store, from [`Db::iter`].
///
/// It reads the log front to back, up to the end of the last commit
/// published when the iterator was made, and returns each entry the index
/// (as of then) still points at, copied out and checksum-verified, taking
/// no lock. Reading the log in order is sequential memory; the only random
/// loads, one slot per record, are prefetched several records ahead.
///
/// What it guarantees:
/// - Entries present for the whole iteration are returned exactly once,
///   also if they are overwritten meanwhile (then with their value as of
///   the iteration's start, or one written since).
/// - Entries inserted or removed meanwhile may or may not be returned, and
///   a value may be older than one written during the iteration. No entry
///   is returned twice.
/// - Entries come in the order they were last written (oldest first),
///   which is not a contract: it may change.
/// - An entry that fails its checks is returned as an `Err`, and iteration
///   goes on. If a record header fails its checks, the log cannot be
///   followed past it: the iterator returns one `Err` naming it and goes
///   on by the index table.
/// - After the log, the iterator walks the index table once (sequential,
///   a few milliseconds per million slots) for the slots the log did not
///   account for: a damaged slot is reported as an `Err`, as a walk of
///   the slots always did, and an entry whose slot is off its key's probe
///   path is still returned.
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
    /// The log-order scan, while it runs.
    scan: Option<LogScan>,
    /// The slot table's descriptor word, if it was valid (for the walk of
    /// the slots).
    desc: Option<u64>,
    slot: usize,
    /// Records of the slots before this one have been prefetched.
    ahead: usize,
    /// After a log-order scan: the records it found live. The slot walk
    /// that follows returns only what the scan did not account for.
    seen: Option<Seen>,
    /// After a log-order scan: keys it met overwritten after it started,
    /// returned from their current records before the slot walk.
    overwritten: Vec<Vec<u8>>,
    failed: Option<crate::Error>,
}

/// How many slots ahead of the one being read the slot walk starts
/// loading records, so that their cache misses overlap instead of queueing.
const LOOKAHEAD: usize = 64;

impl<'a> Iter<'a> {
    pub(crate) fn new(db: &'a Db) -> Iter<'a> {
        // The table of the current store; moved between the check and the
        // table: follow, then try again.
        let mut store = None;
        let res = Follows::new(db.handle.opts.lock_timeout).run(
            &db.handle.path,
            || arc_swap::Guard::into_inner(db.store()),
            |s: &Arc<Store>| -> engine::Result<(u64, Option<LogScan>)> {
                store = Some(s.clone());
                let desc = s.table()?.1.encode();
                Ok((desc, LogScan::new(s)?))
            },
            |s| db.handle.follow(s),
        );
        let store = store.unwrap_or_else(|| arc_swap::Guard::into_inner(db.store()));
        let (desc, scan, failed) = match res {
            Ok((d, scan)) => (Some(d), scan, None),
            Err(f) => (None, None, Some(f.into_error(&db.handle.path))),
        };
        Iter {
            db,
            store,
            scan,
            desc,
            slot: 0,
            ahead: 0,
            seen: None,
            overwritten: Vec::new(),
            failed,
        }
    }

    fn entry(put: Put) -> (Value, Value) {
        let key = Value::from_parts(put.key().to_vec(), 0);
        let (buf, at) = put.into_buf();
        (key, Value::from_parts(buf, at))
    }

    /// The next entry of the log-order scan; `None` once it has ended
    /// (the slot walk then looks for what it did not account for).
    fn next_in_log(&mut self, spare: &mut Vec<u8>) -> Option<Result<Put>> {
        let scan = self.scan.as_mut()?;
        match scan.next(&self.store, spare) {
            Step::Entry(put) => Some(Ok(put)),
            Step::Damaged(f) => Some(Err(self.db.note_damage(f.into_error(&self.store.path)))),
            Step::Broken(at) => {
                self.end_scan();
                Some(Err(self.db.note_damage(self.store.corrupt(
                    at,
                    "record header fails its checks: iteration goes on by the index",
                ))))
            }
            Step::Done => {
                self.end_scan();
                if self
                    .seen
                    .as_ref()
                    .is_some_and(|s| s.accounts_for_all(&self.store))
                {
                    // Nothing for the walk of the slots to find.
                    self.desc = None;
                }
                None
            }
        }
    }

    fn end_scan(&mut self) {
        if let Some((seen, overwritten)) = self.scan.take().map(LogScan::into_seen) {
            self.seen = Some(seen);
            self.overwritten = overwritten;
        }
    }

    /// Whether the slot walk skips the live slot word `word` without
    /// reading its record: the log scan found that record live already,
    /// or the walk is the whole iteration and skips nothing.
    fn accounted(&self, word: u64) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|s| s.contains(index::word_offset(word)))
    }
}

impl Iter<'_> {
    /// The next entry, as a checked copy of its record (in `spare`'s
    /// allocation when it comes from the log walk).
    fn next_put(&mut self, spare: &mut Vec<u8>) -> Option<Result<Put>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(self.db.note_damage(e)));
        }
        if self.scan.is_some() {
            if let Some(item) = self.next_in_log(spare) {
                return Some(item);
            }
        }
        let store = &*self.store;
        // Keys overwritten during the scan: present when it started, not
        // returned by it; their current records lie past the scan's end,
        // where the slot walk below skips them.
        while let Some(key) = self.overwritten.pop() {
            match store.entry_here(&key) {
                Ok(Some(put)) => return Some(Ok(put)),
                Ok(None) => {} // removed (or expired) since
                Err(f) => return Some(Err(self.db.note_damage(f.into_error(&store.path)))),
            }
        }
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
                    Some(a) if index::is_live(a) && !self.accounted(a) => {
                        store.arena.prefetch(index::word_offset(a), 256)
                    }
                    Some(_) => {}
                    None => break,
                }
                self.ahead += 1;
            }
            self.slot += 1;
            if !index::is_live(word) || self.accounted(word) {
                continue;
            }
            // After a log scan, a slot it did not account for is damage
            // (reported, as the slot walk always did), a record off its
            // key's probe path (returned: the scan could not see it), or
            // a commit made during the iteration (past the scan's end:
            // skipped, like everything written meanwhile).
            let past_end = self
                .seen
                .as_ref()
                .is_some_and(|s| index::word_offset(word) >= s.end());
            match store.entry_at(word) {
                Ok(_) if past_end => continue,
                Ok(put) if put.expired() => continue, // expired: skipped
                Ok(put) => return Some(Ok(put)),
                Err(f) => return Some(Err(self.db.note_damage(f.into_error(&store.path)))),
            }
        }
        None
    }
}

impl Iterator for Iter<'_> {
    /// `(key, value)`, both owned copies.
    type Item = Result<(Value, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_put(&mut Vec::new()).map(|r| r.map(Self::entry))
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

    /// Visit every live entry once, as [`iter`](Db::iter) does (the same
    /// entries and guarantees), without allocating for each one: `f` sees
    /// the key and the value in a buffer that the next entry reuses, so it
    /// must copy what it keeps. Every record is still copied out of the
    /// file and its checksum checked before `f` sees it.
    ///
    /// `f` returns [`ControlFlow::Break`](std::ops::ControlFlow::Break) to
    /// stop early. Entries that cannot be read (damage, see
    /// [`Error::Corrupted`](crate::Error::Corrupted)) are skipped and the
    /// visit goes on, as `iter` goes on after an `Err`; the first such
    /// error is returned at the end, after every readable entry has been
    /// visited.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("for-each.mapkv"))?;
    /// for i in 0..10u32 {
    ///     db.insert(i.to_be_bytes(), b"value")?;
    /// }
    /// let mut bytes = 0;
    /// db.for_each(|key, value| {
    ///     bytes += key.len() + value.len();
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(bytes, 10 * (4 + 5));
    ///
    /// // Stop at the first entry whose key ends in an odd byte.
    /// let mut found = None;
    /// db.for_each(|key, _| {
    ///     if key[3] % 2 == 1 {
    ///         found = Some(key.to_vec());
    ///         return ControlFlow::Break(());
    ///     }
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert!(found.is_some_and(|k| k[3] % 2 == 1));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn for_each(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> std::ops::ControlFlow<()>,
    ) -> Result<()> {
        let mut it = self.iter();
        let mut spare = Vec::new();
        let mut first_error = None;
        while let Some(item) = it.next_put(&mut spare) {
            match item {
                Ok(put) => {
                    let flow = f(put.key(), put.value());
                    spare = put.into_buf().0;
                    if flow.is_break() {
                        break;
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
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
