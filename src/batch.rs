//! Atomic batches of writes.

use crate::engine::Op;
use crate::log::read::expiry_after;
use crate::{Db, Durability, Error, Result};

/// Writes that become visible, and durable, together.
///
/// Operations are buffered in memory (copied) and written as one commit by
/// [`commit`](Batch::commit): after a crash either all of them are in the
/// store or none is. Dropping a batch without committing discards it.
/// Within a batch, later operations on a key win over earlier ones.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("b.mapkv"))?;
/// db.insert(b"old", b"1")?;
/// let mut b = db.batch();
/// b.insert(b"a", b"1").insert(b"b", b"2");
/// b.remove(b"old");
/// b.commit()?;
/// assert_eq!(db.len(), 2);
/// # Ok::<(), mapkv::Error>(())
/// ```
///
/// A batch borrows the handle that made it (it holds no clone of it), so
/// [`Db::close`] closes the store even while a committed batch is still in
/// scope.
#[must_use = "a batch does nothing until it is committed"]
pub struct Batch<'a> {
    db: &'a Db,
    bytes: Vec<u8>,
    /// The operations, in order; keys and values live in `bytes`.
    ops: Vec<Staged>,
    error: Option<Error>,
    /// How the commit is made durable (the handle's, unless set).
    durability: Durability,
}

/// One operation of a batch, its key and value at `start` in the batch's
/// byte buffer.
#[derive(Clone, Copy, Debug)]
enum Staged {
    Put {
        start: usize,
        key_len: usize,
        value_len: usize,
        /// The expiry time (ms since the Unix epoch), for a TTL put.
        expires: Option<u64>,
    },
    Remove {
        start: usize,
        key_len: usize,
    },
}

impl<'a> Batch<'a> {
    pub(crate) fn new(db: &'a Db) -> Batch<'a> {
        Batch {
            db,
            bytes: Vec::new(),
            ops: Vec::new(),
            durability: db.durability,
            error: None,
        }
    }

    /// Stage an operation: checked now (a key or value over the limits
    /// makes `commit` fail), its bytes copied into the batch.
    fn push(&mut self, op: Op<'_>) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = op.check() {
            self.error = Some(e);
            return;
        }
        let start = self.bytes.len();
        self.ops.push(match op {
            Op::Put(k, v) | Op::PutTtl(k, v, _) => {
                self.bytes.extend_from_slice(k);
                self.bytes.extend_from_slice(v);
                Staged::Put {
                    start,
                    key_len: k.len(),
                    value_len: v.len(),
                    expires: match op {
                        Op::PutTtl(_, _, at) => Some(at),
                        _ => None,
                    },
                }
            }
            Op::Del(k) => {
                self.bytes.extend_from_slice(k);
                Staged::Remove {
                    start,
                    key_len: k.len(),
                }
            }
        });
    }

    /// Insert or overwrite `key` when the batch commits. A key or value over
    /// the limits makes [`commit`](Batch::commit) fail (and write nothing).
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::{Error, MAX_KEY_LEN};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("bi.mapkv"))?;
    /// let mut b = db.batch();
    /// b.insert(b"k", b"1").insert(b"k", b"2"); // the later one wins
    /// b.commit()?;
    /// assert_eq!(db.get(b"k")?.as_deref(), Some(&b"2"[..]));
    ///
    /// let mut b = db.batch();
    /// b.insert(b"ok", b"v").insert(vec![0u8; MAX_KEY_LEN + 1], b"v");
    /// assert!(matches!(b.commit(), Err(Error::KeyTooLarge { .. })));
    /// assert!(!db.contains_key(b"ok")?); // nothing of the batch was written
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Batch<'a> {
        self.push(Op::Put(key.as_ref(), value.as_ref()));
        self
    }

    /// Insert or overwrite `key` with an expiry, like
    /// [`Db::insert_with_ttl`]; the `ttl` counts from this call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("bt.mapkv"))?;
    /// let mut b = db.batch();
    /// b.insert(b"user", b"ada")
    ///     .insert_with_ttl(b"user:lock", b"held", Duration::from_secs(30));
    /// b.commit()?;
    /// assert!(db.contains_key(b"user:lock")?);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn insert_with_ttl(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: std::time::Duration,
    ) -> &mut Batch<'a> {
        let at = expiry_after(ttl);
        self.push(Op::PutTtl(key.as_ref(), value.as_ref(), at));
        self
    }

    /// Remove `key` when the batch commits (a no-op if it is absent then).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("br.mapkv"))?;
    /// db.insert(b"a", b"1")?;
    /// let mut b = db.batch();
    /// b.remove(b"a").remove(b"never-there");
    /// b.commit()?;
    /// assert!(db.is_empty());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> &mut Batch<'a> {
        self.push(Op::Del(key.as_ref()));
        self
    }

    /// Operations buffered so far.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("bl.mapkv"))?;
    /// let mut b = db.batch();
    /// b.insert(b"a", b"1").insert(b"a", b"2").remove(b"b");
    /// assert_eq!(b.len(), 3); // operations, not distinct keys
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation is buffered.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("be.mapkv"))?;
    /// let mut b = db.batch();
    /// assert!(b.is_empty());
    /// b.insert(b"k", b"v");
    /// assert!(!b.is_empty());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Make this batch's commit durable per `d`, whatever the handle's
    /// durability: one durable batch among unsynced writes, or the
    /// reverse. Under [`Durability::Sync`] the commit costs one device
    /// flush, shared with other threads committing durably at the same
    /// time (see [`Db::with_durability`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use mapkv::Durability;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("bd.mapkv"))?;
    /// let mut b = db.batch();
    /// b.insert(b"from", b"90").insert(b"to", b"10");
    /// b.durability(Durability::Sync).commit()?; // both on stable storage
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn durability(&mut self, d: Durability) -> &mut Self {
        self.durability = d;
        self
    }

    /// Write every operation as one all-or-nothing commit, with the
    /// handle's durability (or the one [`durability`](Batch::durability)
    /// chose), and empty the batch (it can be filled and committed
    /// again). An empty batch commits nothing. Takes `&mut self`, so a
    /// batch can be built and committed in one expression:
    /// `db.batch().insert(k, v).insert(k2, v2).commit()?`.
    ///
    /// # Errors
    /// The first size error of any operation, or any error of
    /// [`Db::insert`]; then nothing of the batch was applied.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("bc.mapkv"))?;
    /// let mut b = db.batch();
    /// b.insert(b"from", b"0").insert(b"to", b"100");
    /// b.commit()?; // both keys appear together
    /// assert_eq!(db.len(), 2);
    ///
    /// let mut dropped = db.batch();
    /// dropped.insert(b"lost", b"v");
    /// drop(dropped); // never committed: nothing happens
    /// assert!(!db.contains_key(b"lost")?);
    ///
    /// db.batch().insert(b"a", b"1").remove(b"from").commit()?; // in one go
    /// assert_eq!(db.len(), 2);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn commit(&mut self) -> Result<()> {
        let bytes = std::mem::take(&mut self.bytes);
        let staged = std::mem::take(&mut self.ops);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let b = &bytes;
        let ops: Vec<Op<'_>> = staged
            .iter()
            .map(|&op| match op {
                Staged::Put {
                    start,
                    key_len,
                    value_len,
                    expires,
                } => {
                    let key = &b[start..start + key_len];
                    let value = &b[start + key_len..start + key_len + value_len];
                    match expires {
                        Some(at) => Op::PutTtl(key, value, at),
                        None => Op::Put(key, value),
                    }
                }
                Staged::Remove { start, key_len } => Op::Del(&b[start..start + key_len]),
            })
            .collect();
        let d = self.durability;
        self.db.write(|i| self.db.commit_with(i, &ops, d))
    }
}

impl Db {
    /// A new, empty batch. Its operations become visible and durable
    /// together when [`Batch::commit`](crate::Batch::commit) returns;
    /// dropping it without committing does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = mapkv::Db::open(dir.path().join("batch.mapkv"))?;
    /// let mut batch = db.batch();
    /// batch.insert(b"a", b"1").insert(b"b", b"2");
    /// assert!(db.is_empty()); // nothing is visible before the commit
    /// batch.commit()?;
    /// assert_eq!(db.len(), 2);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn batch(&self) -> crate::Batch<'_> {
        crate::Batch::new(self)
    }
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("store", &self.db.path())
            .field("operations", &self.ops.len())
            .field("bytes", &self.bytes.len())
            .field("error", &self.error)
            .finish()
    }
}
