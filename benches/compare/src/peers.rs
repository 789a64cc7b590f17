//! One adapter per store: the same operations, each done the way that
//! store's documentation recommends for the durability asked for.

use std::path::{Path, PathBuf};

use crate::workload::{key, value, Key, Val};

/// Batch size for the stores whose bulk load and removal go in batches.
pub const LOAD_BATCH: u64 = 1000;

/// Phases a store may want to prepare for (untimed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    BulkLoad,
    DurableSingle,
    DurableBatch,
    /// Durable single writes from several threads at once.
    DurableThreads,
    Unsynced,
    Reads,
    Remove,
}

/// What a read phase saw: every value's bytes go through it, so every peer
/// really reads them, and the phase can check what came back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Keys found.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Bytes of the values found.
    pub bytes: u64,
    /// An order-sensitive digest of every value and miss, in the order the
    /// keys were asked for: two ways of reading the same keys must agree.
    pub digest: u64,
}

impl Seen {
    /// Records a found value, reading all of its bytes.
    #[inline]
    pub fn hit(&mut self, v: &[u8]) {
        let mut words = v.chunks_exact(8);
        let mut sum = 0u64;
        for w in &mut words {
            sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
        }
        for (i, b) in words.remainder().iter().enumerate() {
            sum = sum.wrapping_add((*b as u64) << (8 * i));
        }
        self.hits += 1;
        self.bytes += v.len() as u64;
        self.mix(sum ^ v.len() as u64);
    }

    /// Records what a get returned.
    #[inline]
    pub fn found(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => self.hit(v),
            None => self.miss(),
        }
    }

    /// Records a key that was not found.
    #[inline]
    pub fn miss(&mut self) {
        self.misses += 1;
        self.mix(0x6d69_7373_6d69_7373);
    }

    #[inline]
    fn mix(&mut self, x: u64) {
        self.digest = (self.digest.rotate_left(23) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    /// Adds another thread's counts (the digest then means nothing).
    pub fn add(&mut self, o: Seen) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.bytes += o.bytes;
        self.digest ^= o.digest;
    }
}

pub trait Reader {
    /// Looks `key` up and records what it found in `seen`.
    fn get(&mut self, key: &[u8], seen: &mut Seen);
}

pub trait Writer {
    /// One write, durable when this returns; called from several threads,
    /// each with its own writer.
    fn durable_put(&mut self, k: &[u8], v: &[u8]);
}

pub trait Store: Sync + Sized {
    type R<'a>: Reader
    where
        Self: 'a;
    type W<'a>: Writer
    where
        Self: 'a;
    /// How each phase writes, for the output's notes.
    fn notes() -> Vec<String>;
    fn open(dir: &Path, n: u64) -> Self;
    /// Whether other processes can open the store while this one has it
    /// open (for the 2-process reads).
    const SHARED: bool = false;
    /// Opens the store that another process has open, for reading; only
    /// where `SHARED`.
    fn open_shared(_dir: &Path, _n: u64) -> Option<Self> {
        None
    }
    /// Writes keys `0..n` and makes them durable.
    fn bulk_load(&mut self, n: u64);
    /// Untimed, before each phase.
    fn prepare(&mut self, _phase: Phase) {}
    /// One write, durable when this returns.
    fn durable_put(&mut self, k: &[u8], v: &[u8]);
    /// All of `items` in one commit, durable when this returns.
    fn durable_batch(&mut self, items: &[(Key, Val)]);
    /// One write, its own commit, no sync.
    fn unsynced_put(&mut self, k: &[u8], v: &[u8]);
    /// Untimed: makes everything so far durable.
    fn settle(&mut self);
    /// A read handle for the calling thread.
    fn reader(&self) -> Self::R<'_>;
    /// Reads `keys` the way this store reads several keys at once (one
    /// call, or one read transaction), recording each in order in `seen`.
    fn get_batch(&self, keys: &[Key], seen: &mut Seen);
    /// A durable-write handle for the calling thread (phase DurableThreads).
    fn writer(&self) -> Self::W<'_>;
    /// Iterates everything: (entries, key + value bytes).
    fn scan(&self) -> (u64, u64);
    /// Removes every key with an even index in `0..n`, durable at the end.
    fn remove_half(&mut self, n: u64);
    /// Closes cleanly; returns notes on the final state, if any.
    fn close(self) -> Vec<String>;
}

/// Calls `f` for each chunk of `LOAD_BATCH` indexes in `range`.
fn chunks(range: std::ops::Range<u64>, step: u64, mut f: impl FnMut(std::ops::Range<u64>)) {
    let mut start = range.start;
    while start < range.end {
        let end = (start + LOAD_BATCH * step).min(range.end);
        f(start..end);
        start = end;
    }
}

// ---------------------------------------------------------------- mapkv

pub struct Mapkv {
    path: PathBuf,
    db: Option<mapkv::Db>,
    mode: mapkv::Durability,
    /// The values of the last batch: `get_many_into` reuses their buffers
    /// (as the single reads reuse theirs through `get_into`).
    batch_out: std::sync::Mutex<Vec<Option<mapkv::Value>>>,
}

impl Mapkv {
    fn db(&self) -> &mapkv::Db {
        self.db.as_ref().unwrap()
    }

    /// The durability mode is chosen at open: switching reopens the store
    /// (a clean close and an O(1) reopen, untimed).
    fn set_mode(&mut self, mode: mapkv::Durability) {
        if self.mode == mode {
            return;
        }
        if let Some(db) = self.db.take() {
            db.close().unwrap();
        }
        self.db = Some(
            mapkv::Options::new()
                .durability(mode)
                .open(&self.path)
                .unwrap(),
        );
        self.mode = mode;
    }
}

pub struct MapkvReader<'a> {
    db: &'a mapkv::Db,
    buf: Vec<u8>,
}

impl Reader for MapkvReader<'_> {
    #[inline]
    fn get(&mut self, key: &[u8], seen: &mut Seen) {
        if self.db.get_into(key, &mut self.buf).unwrap() {
            seen.hit(&self.buf);
        } else {
            seen.miss();
        }
    }
}

/// Each thread's own clone of the `Db` (opened with `Durability::Sync`).
pub struct MapkvWriter {
    db: mapkv::Db,
}

impl Writer for MapkvWriter {
    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.db.insert(k, v).unwrap();
    }
}

impl Store for Mapkv {
    type R<'a> = MapkvReader<'a>;
    type W<'a> = MapkvWriter;
    const SHARED: bool = true;

    fn notes() -> Vec<String> {
        vec![
            "default Options; bulk load and removal in batches of 1,000 with Durability::None, then flush()".into(),
            "durable phases: reopened with Durability::Sync (one msync per commit); unsynced: Durability::None".into(),
            "durable writes, N threads: one Db opened with Durability::Sync, each thread its own clone(), insert (one commit and msync each)".into(),
            "reads: get_into with a reused buffer (copies the value out); batched reads: get_many_into, reusing the buffers of the last batch's values (the values of a batch as of one commit)".into(),
            "2 processes: two more processes open the same file (default Options) while this one has it open".into(),
        ]
    }

    fn open(dir: &Path, _n: u64) -> Self {
        let path = dir.join("data.mapkv");
        let db = mapkv::Options::new()
            .durability(mapkv::Durability::None)
            .open(&path)
            .unwrap();
        Mapkv {
            path,
            db: Some(db),
            mode: mapkv::Durability::None,
            batch_out: Default::default(),
        }
    }

    fn open_shared(dir: &Path, _n: u64) -> Option<Self> {
        let path = dir.join("data.mapkv");
        let db = mapkv::Db::open(&path).unwrap();
        Some(Mapkv {
            path,
            db: Some(db),
            mode: mapkv::Durability::default(),
            batch_out: Default::default(),
        })
    }

    fn bulk_load(&mut self, n: u64) {
        let db = self.db();
        chunks(0..n, 1, |r| {
            let mut b = db.batch();
            for i in r {
                b.insert(key(i), value(i, 0));
            }
            b.commit().unwrap();
        });
        db.flush().unwrap();
    }

    fn prepare(&mut self, phase: Phase) {
        use mapkv::Durability::*;
        match phase {
            Phase::DurableSingle | Phase::DurableBatch | Phase::DurableThreads => {
                self.set_mode(Sync)
            }
            Phase::BulkLoad | Phase::Unsynced | Phase::Remove => self.set_mode(None),
            Phase::Reads => {}
        }
    }

    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.db().insert(k, v).unwrap();
    }

    fn durable_batch(&mut self, items: &[(Key, Val)]) {
        let mut b = self.db().batch();
        for (k, v) in items {
            b.insert(k, v);
        }
        b.commit().unwrap();
    }

    fn unsynced_put(&mut self, k: &[u8], v: &[u8]) {
        self.db().insert(k, v).unwrap();
    }

    fn settle(&mut self) {
        self.db().flush().unwrap();
    }

    fn reader(&self) -> MapkvReader<'_> {
        MapkvReader {
            db: self.db(),
            buf: Vec::with_capacity(256),
        }
    }

    fn get_batch(&self, keys: &[Key], seen: &mut Seen) {
        let mut out = self.batch_out.lock().unwrap();
        self.db().get_many_into(keys, &mut out).unwrap();
        for v in out.iter() {
            seen.found(v.as_deref())
        }
    }

    fn writer(&self) -> MapkvWriter {
        MapkvWriter {
            db: self.db().clone(),
        }
    }

    fn scan(&self) -> (u64, u64) {
        // `for_each`: the scan without an allocation per entry (`iter`
        // returns owned copies), still copying and checking every record.
        let (mut n, mut bytes) = (0, 0);
        self.db()
            .for_each(|k, v| {
                n += 1;
                bytes += (k.len() + v.len()) as u64;
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        (n, bytes)
    }

    fn remove_half(&mut self, n: u64) {
        let db = self.db();
        chunks(0..n, 2, |r| {
            let mut b = db.batch();
            for i in r.step_by(2) {
                b.remove(key(i));
            }
            b.commit().unwrap();
        });
        db.flush().unwrap();
    }

    fn close(mut self) -> Vec<String> {
        let db = self.db.take().unwrap();
        let s = db.stats();
        let mib = |b: u64| b as f64 / 1048576.0;
        let note = format!(
            "mapkv before its clean close: {} keys; file {:.1} MiB (close truncates it to the used part): live records {:.1} MiB, dead records (overwritten, removed, tombstones; reclaimable by compaction) {:.1} MiB, index {:.1} MiB (load {:.2})",
            s.keys,
            mib(s.file_len),
            mib(s.live_bytes),
            mib(s.dead_bytes),
            mib(s.index_bytes),
            s.index_load
        );
        db.close().unwrap();
        vec![note]
    }
}

// ---------------------------------------------------------------- redb

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

pub struct Redb {
    db: redb::Database,
}

impl Redb {
    fn write(&self, durability: redb::Durability, f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>)) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(durability).unwrap();
        {
            let mut t = tx.open_table(REDB_TABLE).unwrap();
            f(&mut t);
        }
        tx.commit().unwrap();
    }
}

pub struct RedbReader {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Reader for RedbReader {
    #[inline]
    fn get(&mut self, key: &[u8], seen: &mut Seen) {
        seen.found(self.table.get(key).unwrap().as_ref().map(|g| g.value()))
    }
}

pub struct RedbWriter<'a> {
    store: &'a Redb,
}

impl Writer for RedbWriter<'_> {
    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.store.write(redb::Durability::Immediate, |t| {
            t.insert(k, v).unwrap();
        });
    }
}

impl Store for Redb {
    type R<'a> = RedbReader;
    type W<'a> = RedbWriter<'a>;

    fn notes() -> Vec<String> {
        vec![
            "default Builder (1 GiB cache); bulk load and removal: one write transaction each, Durability::Immediate".into(),
            "durable phases: one write transaction per commit, Durability::Immediate; unsynced: Durability::None per transaction".into(),
            "durable writes, N threads: each thread a write transaction per write, Durability::Immediate (redb has one writer at a time: the threads take turns)".into(),
            "reads: one read transaction for the phase (each thread its own); batched reads: a read transaction per batch, 64 gets in it".into(),
        ]
    }

    fn open(dir: &Path, _n: u64) -> Self {
        let db = redb::Database::create(dir.join("data.redb")).unwrap();
        let r = Redb { db };
        r.write(redb::Durability::Immediate, |_| {});
        r
    }

    fn bulk_load(&mut self, n: u64) {
        self.write(redb::Durability::Immediate, |t| {
            for i in 0..n {
                t.insert(&key(i)[..], &value(i, 0)[..]).unwrap();
            }
        });
    }

    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.write(redb::Durability::Immediate, |t| {
            t.insert(k, v).unwrap();
        });
    }

    fn durable_batch(&mut self, items: &[(Key, Val)]) {
        self.write(redb::Durability::Immediate, |t| {
            for (k, v) in items {
                t.insert(&k[..], &v[..]).unwrap();
            }
        });
    }

    fn unsynced_put(&mut self, k: &[u8], v: &[u8]) {
        self.write(redb::Durability::None, |t| {
            t.insert(k, v).unwrap();
        });
    }

    fn settle(&mut self) {
        self.write(redb::Durability::Immediate, |_| {});
    }

    fn reader(&self) -> RedbReader {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().unwrap();
        RedbReader {
            table: tx.open_table(REDB_TABLE).unwrap(),
        }
    }

    fn get_batch(&self, keys: &[Key], seen: &mut Seen) {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(REDB_TABLE).unwrap();
        for k in keys {
            seen.found(t.get(&k[..]).unwrap().as_ref().map(|g| g.value()))
        }
    }

    fn writer(&self) -> RedbWriter<'_> {
        RedbWriter { store: self }
    }

    fn scan(&self) -> (u64, u64) {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(REDB_TABLE).unwrap();
        let (mut n, mut bytes) = (0, 0);
        for item in t.iter().unwrap() {
            let (k, v) = item.unwrap();
            n += 1;
            bytes += (k.value().len() + v.value().len()) as u64;
        }
        (n, bytes)
    }

    fn remove_half(&mut self, n: u64) {
        self.write(redb::Durability::Immediate, |t| {
            for i in (0..n).step_by(2) {
                t.remove(&key(i)[..]).unwrap();
            }
        });
    }

    fn close(self) -> Vec<String> {
        drop(self.db);
        vec![]
    }
}

// ---------------------------------------------------------------- LMDB (heed)

type LmdbDb = heed::Database<'static, heed::types::Bytes, heed::types::Bytes>;

pub struct Lmdb {
    /// Leaked: heed's databases borrow the environment. The data file is
    /// complete after every synced commit, so nothing is lost by never
    /// closing it; the child process exits right after.
    env: &'static heed::Env,
    db: LmdbDb,
    nosync: bool,
}

pub struct LmdbReader {
    txn: heed::RoTxn<'static, heed::WithTls>,
    db: LmdbDb,
}

impl Reader for LmdbReader {
    #[inline]
    fn get(&mut self, key: &[u8], seen: &mut Seen) {
        seen.found(self.db.get(&self.txn, key).unwrap())
    }
}

pub struct LmdbWriter<'a> {
    store: &'a Lmdb,
}

impl Writer for LmdbWriter<'_> {
    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        let db = self.store.db;
        self.store.write(|tx| db.put(tx, k, v).unwrap());
    }
}

impl Lmdb {
    fn open_env(dir: &Path, n: u64) -> &'static heed::Env {
        let map_size = (n as usize * 4096).max(1 << 30);
        // SAFETY: the directory is this benchmark's alone: only this process
        // and, for the 2-process reads, its own children (which only read)
        // map it, all through LMDB.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(map_size)
                .open(dir)
                .unwrap()
        };
        Box::leak(Box::new(env))
    }

    fn write(&self, f: impl FnOnce(&mut heed::RwTxn<'static>)) {
        let mut tx = self.env.write_txn().unwrap();
        f(&mut tx);
        tx.commit().unwrap();
    }

    fn set_nosync(&mut self, on: bool) {
        if self.nosync == on {
            return;
        }
        let mode = if on {
            heed::FlagSetMode::Enable
        } else {
            heed::FlagSetMode::Disable
        };
        // SAFETY: one thread, no transaction open; NO_SYNC is only on
        // during the unsynced phase, which asks for exactly that.
        unsafe { self.env.set_flags(heed::EnvFlags::NO_SYNC, mode).unwrap() };
        self.nosync = on;
    }
}

impl Store for Lmdb {
    type R<'a> = LmdbReader;
    type W<'a> = LmdbWriter<'a>;
    const SHARED: bool = true;

    fn notes() -> Vec<String> {
        vec![
            "map size max(4 KiB * N, 1 GiB), default flags; bulk load and removal: one write transaction each, synced commit".into(),
            "durable phases: one write transaction per commit (LMDB syncs each commit); unsynced: env flag NO_SYNC during that phase, one transaction per write".into(),
            "durable writes, N threads: each thread a write transaction per write, synced commit (LMDB has one writer at a time: the threads take turns)".into(),
            "reads: one read transaction for the whole phase (each thread its own); batched reads: a read transaction per batch, 64 gets in it".into(),
            "2 processes: two more processes open the same environment (same map size) while this one has it open".into(),
        ]
    }

    fn open(dir: &Path, n: u64) -> Self {
        let env = Self::open_env(dir, n);
        let wtxn = env.write_txn().unwrap();
        let db: LmdbDb = env
            .create_databases_and_commit(wtxn, |o, wtxn| {
                o.create_database::<heed::types::Bytes, heed::types::Bytes>(wtxn, None)
                    .map(heed::CommitOrAbort::<_, ()>::Commit)
            })
            .unwrap()
            .unwrap_commit();
        Lmdb {
            env,
            db,
            nosync: false,
        }
    }

    fn open_shared(dir: &Path, n: u64) -> Option<Self> {
        let env = Self::open_env(dir, n);
        let rtxn = env.read_txn().unwrap();
        let db: LmdbDb = env
            .open_databases_and_commit(rtxn, |o, rtxn| {
                o.open_database::<heed::types::Bytes, heed::types::Bytes>(rtxn, None)
                    .map(heed::CommitOrAbort::<_, ()>::Commit)
            })
            .unwrap()
            .unwrap_commit()
            .expect("the unnamed database exists");
        Some(Lmdb {
            env,
            db,
            nosync: false,
        })
    }

    fn bulk_load(&mut self, n: u64) {
        let db = self.db;
        self.write(|tx| {
            for i in 0..n {
                db.put(tx, &key(i), &value(i, 0)).unwrap();
            }
        });
    }

    fn prepare(&mut self, phase: Phase) {
        self.set_nosync(phase == Phase::Unsynced);
    }

    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        let db = self.db;
        self.write(|tx| db.put(tx, k, v).unwrap());
    }

    fn durable_batch(&mut self, items: &[(Key, Val)]) {
        let db = self.db;
        self.write(|tx| {
            for (k, v) in items {
                db.put(tx, k, v).unwrap();
            }
        });
    }

    fn unsynced_put(&mut self, k: &[u8], v: &[u8]) {
        let db = self.db;
        self.write(|tx| db.put(tx, k, v).unwrap());
    }

    fn settle(&mut self) {
        self.set_nosync(false);
        self.env.force_sync().unwrap();
    }

    fn reader(&self) -> LmdbReader {
        LmdbReader {
            txn: self.env.read_txn().unwrap(),
            db: self.db,
        }
    }

    fn get_batch(&self, keys: &[Key], seen: &mut Seen) {
        let tx = self.env.read_txn().unwrap();
        for k in keys {
            seen.found(self.db.get(&tx, k).unwrap())
        }
    }

    fn writer(&self) -> LmdbWriter<'_> {
        LmdbWriter { store: self }
    }

    fn scan(&self) -> (u64, u64) {
        let tx = self.env.read_txn().unwrap();
        let (mut n, mut bytes) = (0, 0);
        for item in self.db.iter(&tx).unwrap() {
            let (k, v) = item.unwrap();
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        (n, bytes)
    }

    fn remove_half(&mut self, n: u64) {
        let db = self.db;
        self.write(|tx| {
            for i in (0..n).step_by(2) {
                db.delete(tx, &key(i)).unwrap();
            }
        });
    }

    fn close(self) -> Vec<String> {
        self.env.force_sync().unwrap();
        vec![]
    }
}

// ---------------------------------------------------------------- sled

pub struct Sled {
    db: sled::Db,
}

pub struct SledReader<'a> {
    db: &'a sled::Db,
}

impl Reader for SledReader<'_> {
    #[inline]
    fn get(&mut self, key: &[u8], seen: &mut Seen) {
        seen.found(self.db.get(key).unwrap().as_deref())
    }
}

pub struct SledWriter<'a> {
    db: &'a sled::Db,
}

impl Writer for SledWriter<'_> {
    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.db.insert(k, v).unwrap();
        self.db.flush().unwrap();
    }
}

impl Store for Sled {
    type R<'a> = SledReader<'a>;
    type W<'a> = SledWriter<'a>;

    fn notes() -> Vec<String> {
        vec![
            "default Config (1 GB cache, background flush every 500 ms); bulk load and removal: apply_batch of 1,000, then flush()".into(),
            "durable phases: insert/apply_batch then flush() each time; unsynced: insert only".into(),
            "durable writes, N threads: each thread insert then flush()".into(),
            "batched reads: sled has no multi-get: 64 gets in a row (no snapshot)".into(),
        ]
    }

    fn open(dir: &Path, _n: u64) -> Self {
        Sled {
            db: sled::Config::new().path(dir).open().unwrap(),
        }
    }

    fn bulk_load(&mut self, n: u64) {
        let db = &self.db;
        chunks(0..n, 1, |r| {
            let mut b = sled::Batch::default();
            for i in r {
                b.insert(&key(i)[..], &value(i, 0)[..]);
            }
            db.apply_batch(b).unwrap();
        });
        db.flush().unwrap();
    }

    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.db.insert(k, v).unwrap();
        self.db.flush().unwrap();
    }

    fn durable_batch(&mut self, items: &[(Key, Val)]) {
        let mut b = sled::Batch::default();
        for (k, v) in items {
            b.insert(&k[..], &v[..]);
        }
        self.db.apply_batch(b).unwrap();
        self.db.flush().unwrap();
    }

    fn unsynced_put(&mut self, k: &[u8], v: &[u8]) {
        self.db.insert(k, v).unwrap();
    }

    fn settle(&mut self) {
        self.db.flush().unwrap();
    }

    fn reader(&self) -> SledReader<'_> {
        SledReader { db: &self.db }
    }

    fn get_batch(&self, keys: &[Key], seen: &mut Seen) {
        for k in keys {
            seen.found(self.db.get(k).unwrap().as_deref())
        }
    }

    fn writer(&self) -> SledWriter<'_> {
        SledWriter { db: &self.db }
    }

    fn scan(&self) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for item in self.db.iter() {
            let (k, v) = item.unwrap();
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        (n, bytes)
    }

    fn remove_half(&mut self, n: u64) {
        let db = &self.db;
        chunks(0..n, 2, |r| {
            let mut b = sled::Batch::default();
            for i in r.step_by(2) {
                b.remove(&key(i)[..]);
            }
            db.apply_batch(b).unwrap();
        });
        db.flush().unwrap();
    }

    fn close(self) -> Vec<String> {
        self.db.flush().unwrap();
        drop(self.db);
        vec![]
    }
}

// ---------------------------------------------------------------- fjall

pub struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

pub struct FjallReader<'a> {
    ks: &'a fjall::Keyspace,
}

impl Reader for FjallReader<'_> {
    #[inline]
    fn get(&mut self, key: &[u8], seen: &mut Seen) {
        seen.found(self.ks.get(key).unwrap().as_deref())
    }
}

pub struct FjallWriter<'a> {
    db: &'a fjall::Database,
    ks: &'a fjall::Keyspace,
}

impl Writer for FjallWriter<'_> {
    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.ks.insert(k, v).unwrap();
        self.db.persist(FJALL_SYNC).unwrap();
    }
}

const FJALL_SYNC: fjall::PersistMode = fjall::PersistMode::SyncAll;

impl Store for Fjall {
    type R<'a> = FjallReader<'a>;
    type W<'a> = FjallWriter<'a>;

    fn notes() -> Vec<String> {
        vec![
            "block cache 1 GiB (as redb's and sled's defaults; fjall's default is 32 MiB), otherwise default options (LZ4, background flush/compaction threads); bulk load and removal: WriteBatch of 1,000, then persist(SyncAll)".into(),
            "durable phases: insert then persist(SyncAll), batches with durability(Some(SyncAll)); unsynced: insert (journal written to the OS, no sync)".into(),
            "durable writes, N threads: each thread insert then persist(SyncAll)".into(),
            "batched reads: fjall has no multi-get: a snapshot per batch, 64 gets in it".into(),
        ]
    }

    fn open(dir: &Path, _n: u64) -> Self {
        // A 1 GiB block cache, as redb and sled have by default (fjall's
        // default is 32 MiB; its docs advise more when the data fits in memory).
        let db = fjall::Database::builder(dir)
            .cache_size(1 << 30)
            .open()
            .unwrap();
        let ks = db
            .keyspace("kv", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        Fjall { db, ks }
    }

    fn bulk_load(&mut self, n: u64) {
        let (db, ks) = (&self.db, &self.ks);
        chunks(0..n, 1, |r| {
            let mut b = db.batch();
            for i in r {
                b.insert(ks, &key(i)[..], &value(i, 0)[..]);
            }
            b.commit().unwrap();
        });
        db.persist(FJALL_SYNC).unwrap();
    }

    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.ks.insert(k, v).unwrap();
        self.db.persist(FJALL_SYNC).unwrap();
    }

    fn durable_batch(&mut self, items: &[(Key, Val)]) {
        let mut b = self.db.batch().durability(Some(FJALL_SYNC));
        for (k, v) in items {
            b.insert(&self.ks, &k[..], &v[..]);
        }
        b.commit().unwrap();
    }

    fn unsynced_put(&mut self, k: &[u8], v: &[u8]) {
        self.ks.insert(k, v).unwrap();
    }

    fn settle(&mut self) {
        self.db.persist(FJALL_SYNC).unwrap();
    }

    fn reader(&self) -> FjallReader<'_> {
        FjallReader { ks: &self.ks }
    }

    fn get_batch(&self, keys: &[Key], seen: &mut Seen) {
        use fjall::Readable;
        let snap = self.db.snapshot();
        for k in keys {
            seen.found(snap.get(&self.ks, k).unwrap().as_deref())
        }
    }

    fn writer(&self) -> FjallWriter<'_> {
        FjallWriter {
            db: &self.db,
            ks: &self.ks,
        }
    }

    fn scan(&self) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for g in self.ks.iter() {
            let (k, v) = g.into_inner().unwrap();
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        (n, bytes)
    }

    fn remove_half(&mut self, n: u64) {
        let (db, ks) = (&self.db, &self.ks);
        chunks(0..n, 2, |r| {
            let mut b = db.batch();
            for i in r.step_by(2) {
                b.remove(ks, &key(i)[..]);
            }
            b.commit().unwrap();
        });
        db.persist(FJALL_SYNC).unwrap();
    }

    fn close(self) -> Vec<String> {
        self.db.persist(FJALL_SYNC).unwrap();
        drop(self.ks);
        drop(self.db);
        vec![]
    }
}

// ---------------------------------------------------------------- RocksDB

/// RocksDB through the `rocksdb` crate, linked to the system's library
/// (Debian's librocksdb-dev); only with the `rocksdb` feature.
#[cfg(feature = "rocksdb")]
pub struct Rocks {
    db: rocksdb::DB,
    /// `sync = true`: the WAL is synced (fdatasync) before the write returns.
    sync: rocksdb::WriteOptions,
    /// The default: WAL written to the OS, not synced.
    nosync: rocksdb::WriteOptions,
}

#[cfg(feature = "rocksdb")]
impl Rocks {
    /// Writes the WAL out and syncs it: everything so far is durable.
    fn sync_wal(&self) {
        self.db.flush_wal(true).unwrap();
    }

    fn write_batches(&self, range: std::ops::Range<u64>, step: u64, remove: bool) {
        chunks(range, step, |r| {
            let mut b = rocksdb::WriteBatch::default();
            for i in r.step_by(step as usize) {
                if remove {
                    b.delete(key(i));
                } else {
                    b.put(key(i), value(i, 0));
                }
            }
            self.db.write_opt(b, &self.nosync).unwrap();
        });
        self.sync_wal();
    }

    fn int_property(&self, name: &str) -> u64 {
        self.db.property_int_value(name).unwrap().unwrap_or(0)
    }

    /// Waits (untimed) until no flush or compaction runs or is due, so that
    /// background work from the writes does not land in the reads.
    fn quiesce(&self) {
        let t = std::time::Instant::now();
        loop {
            let busy = self.int_property("rocksdb.num-running-flushes")
                + self.int_property("rocksdb.num-running-compactions")
                + self.int_property("rocksdb.mem-table-flush-pending")
                + self.int_property("rocksdb.compaction-pending");
            if busy == 0 || t.elapsed().as_secs() > 120 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[cfg(feature = "rocksdb")]
pub struct RocksReader<'a> {
    db: &'a rocksdb::DB,
}

#[cfg(feature = "rocksdb")]
impl Reader for RocksReader<'_> {
    #[inline]
    fn get(&mut self, key: &[u8], seen: &mut Seen) {
        seen.found(self.db.get_pinned(key).unwrap().as_deref())
    }
}

#[cfg(feature = "rocksdb")]
pub struct RocksWriter<'a> {
    store: &'a Rocks,
}

#[cfg(feature = "rocksdb")]
impl Writer for RocksWriter<'_> {
    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.store.db.put_opt(k, v, &self.store.sync).unwrap();
    }
}

/// The block cache: 1 GiB, as redb's and sled's defaults and fjall's here.
#[cfg(feature = "rocksdb")]
const ROCKS_CACHE: usize = 1 << 30;

#[cfg(feature = "rocksdb")]
impl Store for Rocks {
    type R<'a> = RocksReader<'a>;
    type W<'a> = RocksWriter<'a>;

    fn notes() -> Vec<String> {
        vec![
            format!(
                "library: {}",
                crate::rocksdb_library().unwrap_or_else(|| "not found in /proc/self/maps (linked statically?)".into())
            ),
            "default Options (WAL on, 64 MiB memtable, 2 background jobs, the library's default compression) except: block cache 1 GiB LRU (as redb's and sled's defaults and fjall here), bloom filter 10 bits per key (RocksDB's advice for point lookups; fjall has them by default)".into(),
            "bulk load and removal: WriteBatch of 1,000 (sync off), then flush_wal(true) (the WAL synced)".into(),
            "durable phases: put_opt / write_opt(WriteBatch) with WriteOptions::set_sync(true) (WAL fdatasync'd per write); unsynced: default WriteOptions (WAL written to the OS, no sync)".into(),
            "durable writes, N threads: each thread put_opt with set_sync(true) on the one DB (RocksDB groups concurrent writers' WAL syncs)".into(),
            "after the unsynced phase (untimed): flush_wal(true), then waited until no flush or compaction ran or was pending".into(),
            "reads: get_pinned (no copy); batched reads: batched_multi_get_cf on the default column family (RocksDB's batched MultiGet)".into(),
        ]
    }

    fn open(dir: &Path, _n: u64) -> Self {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let cache = rocksdb::Cache::new_lru_cache(ROCKS_CACHE).unwrap();
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        // The default column family named, with these options, so that it
        // has a handle for batched_multi_get_cf.
        let default =
            rocksdb::ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone());
        let db = rocksdb::DB::open_cf_descriptors(&opts, dir, [default]).unwrap();
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        Rocks {
            db,
            sync,
            nosync: rocksdb::WriteOptions::default(),
        }
    }

    fn bulk_load(&mut self, n: u64) {
        self.write_batches(0..n, 1, false);
    }

    fn durable_put(&mut self, k: &[u8], v: &[u8]) {
        self.db.put_opt(k, v, &self.sync).unwrap();
    }

    fn durable_batch(&mut self, items: &[(Key, Val)]) {
        let mut b = rocksdb::WriteBatch::default();
        for (k, v) in items {
            b.put(k, v);
        }
        self.db.write_opt(b, &self.sync).unwrap();
    }

    fn unsynced_put(&mut self, k: &[u8], v: &[u8]) {
        self.db.put_opt(k, v, &self.nosync).unwrap();
    }

    fn settle(&mut self) {
        self.sync_wal();
        self.quiesce();
    }

    fn reader(&self) -> RocksReader<'_> {
        RocksReader { db: &self.db }
    }

    fn get_batch(&self, keys: &[Key], seen: &mut Seen) {
        let cf = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .unwrap();
        for v in self.db.batched_multi_get_cf(cf, keys, false) {
            seen.found(v.unwrap().as_deref())
        }
    }

    fn writer(&self) -> RocksWriter<'_> {
        RocksWriter { store: self }
    }

    fn scan(&self) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        let mut it = self.db.raw_iterator();
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            n += 1;
            bytes += (k.len() + v.len()) as u64;
            it.next();
        }
        it.status().unwrap();
        (n, bytes)
    }

    fn remove_half(&mut self, n: u64) {
        self.write_batches(0..n, 2, true);
    }

    fn close(self) -> Vec<String> {
        self.sync_wal();
        let mib = |b: u64| b as f64 / 1048576.0;
        let note = format!(
            "RocksDB before its close: SST files {:.1} MiB (live data estimated at {:.1} MiB), memtables {:.1} MiB (their writes are in the WAL), {} keys estimated",
            mib(self.int_property("rocksdb.total-sst-files-size")),
            mib(self.int_property("rocksdb.estimate-live-data-size")),
            mib(self.int_property("rocksdb.cur-size-all-mem-tables")),
            self.int_property("rocksdb.estimate-num-keys"),
        );
        drop(self.db);
        vec![note]
    }
}
