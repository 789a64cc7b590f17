//! Reading the log back as a feed of commits: what changed, in order, in
//! any process. `mapkv watch` is built on it.

use crate::engine::Store;
use crate::log::record::seq_of;
use crate::log::{Item, Scanner};
use crate::storage::ARENA_START;
use crate::{Db, Error, Result, Value};

/// One operation of a [`Commit`], read back from the log.
///
/// # Examples
///
/// ```
/// use mapkv::Change;
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("ch.mapkv"))?;
/// let pos = db.log_position();
/// db.insert(b"k", b"v")?;
/// let (commits, _) = db.changes_after(pos, 10)?;
/// match &commits[0].changes[0] {
///     Change::Put { key, value } => assert_eq!((&key[..], &value[..]), (&b"k"[..], &b"v"[..])),
///     Change::Remove { key } => panic!("unexpected removal of {key:?}"),
///     _ => unreachable!("a change kind added after this example"),
/// }
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// `key` was set to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value it was given.
        value: Value,
    },
    /// `key` was removed.
    Remove {
        /// The key.
        key: Vec<u8>,
    },
}

impl Change {
    /// The key this change is about.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("chk.mapkv"))?;
    /// let pos = db.log_position();
    /// db.insert(b"k", b"v")?;
    /// db.remove(b"k")?;
    /// let (commits, _) = db.changes_after(pos, 10)?;
    /// assert!(commits.iter().all(|c| c.changes[0].key() == b"k"));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Put { key, .. } | Change::Remove { key } => key,
        }
    }
}

/// A position in a store's log, from [`Db::log_position`] or
/// [`Db::changes_after`]. It names the file too: after a compaction moved
/// the store to a new file, old positions are refused
/// ([`Error::BadPosition`]).
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("lpo.mapkv"))?;
/// let a = db.log_position();
/// db.insert(b"k", b"v")?;
/// let b = db.log_position();
/// assert!(b.offset() > a.offset());
/// assert_ne!(a, b);
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// Device, inode and the meta's file nonce (inode numbers are reused).
    file: (u64, u64, u32),
    offset: u64,
}

impl LogPosition {
    /// The byte offset in the store's file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("lpf.mapkv"))?;
    /// assert!(db.log_position().offset() <= db.stats().file_len);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// A commit read back by [`Db::changes_after`]: its sequence number (as
/// [`Db::commit_seq`] counts) and its operations, in the order written.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("cm.mapkv"))?;
/// let pos = db.log_position();
/// let mut b = db.batch();
/// b.insert(b"a", b"1").insert(b"b", b"2");
/// b.commit()?;
/// let (commits, _) = db.changes_after(pos, 10)?;
/// assert_eq!(commits.len(), 1); // one batch, one commit
/// assert_eq!(commits[0].seq, db.commit_seq());
/// assert_eq!(commits[0].changes.len(), 2);
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Commit {
    /// Sequence number of the commit.
    pub seq: u64,
    /// What it did.
    pub changes: Vec<Change>,
}

impl Db {
    /// The log position just past the newest commit: a cursor for
    /// [`changes_after`](Db::changes_after).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("lp.mapkv"))?;
    /// let before = db.log_position();
    /// db.insert(b"k", b"v")?;
    /// assert!(db.log_position().offset() > before.offset());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn log_position(&self) -> LogPosition {
        let i = self.store();
        LogPosition {
            file: file_of(&i),
            offset: tail_of(&i),
        }
    }

    /// The commits that landed after log position `from` (a value from
    /// [`log_position`](Db::log_position) or from an earlier call), at most
    /// `max` of them, oldest first, each checksum-verified; and the position
    /// to continue from. Commits from every process appear, in the order
    /// they were made. Together with [`wait_for_change`](Db::wait_for_change)
    /// this is a change feed:
    ///
    /// # Errors
    /// [`Error::BadPosition`] if `from` is not a position this store's log
    /// has (not from `log_position`, from another store, or from before a
    /// compaction moved the store to a new file: start again from
    /// `log_position`, or read the whole store);
    /// [`Error::Corrupted`] if the log fails its checks.
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::Change;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("feed.mapkv"))?;
    /// let mut pos = db.log_position();
    /// db.insert(b"a", b"1")?;
    /// db.remove(b"a")?;
    /// let (commits, next) = db.changes_after(pos, 100)?;
    /// assert_eq!(commits.len(), 2);
    /// assert!(matches!(&commits[0].changes[0], Change::Put { key, value } if key == b"a" && &**value == b"1"));
    /// assert!(matches!(&commits[1].changes[0], Change::Remove { key } if key == b"a"));
    /// pos = next;
    /// assert!(db.changes_after(pos, 100)?.0.is_empty()); // nothing new
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn changes_after(
        &self,
        from: LogPosition,
        max: usize,
    ) -> Result<(Vec<Commit>, LogPosition)> {
        let i = self.store();
        let tail = tail_of(&i);
        let bad = |reason| Error::BadPosition {
            path: i.path.clone(),
            position: from.offset,
            tail,
            reason,
        };
        if from.file != file_of(&i) {
            return Err(bad(
                "it is from another file: the store was compacted since",
            ));
        }
        let from = from.offset;
        if from < ARENA_START || from > tail || from % 8 != 0 {
            return Err(bad("outside the log"));
        }
        if !i.records().within_file(tail) {
            return Err(i.corrupt(tail, "log tail past the end of the file"));
        }
        let mut out = Vec::new();
        let mut sc = Scanner::new(&i.arena, i.salt, from, tail, None);
        while sc.pos() < tail && out.len() < max {
            match sc.next_item() {
                Ok(Item::Commit {
                    records, seq_gen, ..
                }) => {
                    let mut changes = Vec::with_capacity(records.len());
                    let rec = i.records();
                    for r in records {
                        changes.push(if r.header.is_put() {
                            // The feed reports the value; an entry that has
                            // expired since still shows as put.
                            let put = rec.put(r.off, &r.header)?;
                            let key = put.key().to_vec();
                            let (buf, at) = put.into_buf();
                            Change::Put {
                                key,
                                value: Value::from_parts(buf, at),
                            }
                        } else {
                            Change::Remove {
                                key: rec.key(r.off, &r.header)?,
                            }
                        });
                    }
                    out.push(Commit {
                        seq: seq_of(seq_gen),
                        changes,
                    });
                }
                Ok(Item::Index { .. }) => {}
                Err(stop) if sc.pos() == from && out.is_empty() => {
                    // Nothing valid starts here: not a position of this log.
                    let _ = stop;
                    return Err(bad("no commit starts there"));
                }
                Err(stop) => {
                    return Err(i.corrupt(stop.bad, format!("change feed: {}", stop.why)));
                }
            }
        }
        let next = LogPosition {
            file: file_of(&i),
            offset: sc.pos(),
        };
        Ok((out, next))
    }
}

fn file_of(i: &Store) -> (u64, u64, u32) {
    (i.file_id.0, i.file_id.1, i.file_nonce)
}

fn tail_of(i: &Store) -> u64 {
    i.control()
        .map(|c| c.snapshot(1000).0.tail)
        .unwrap_or(ARENA_START)
}
