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
    Unsynced,
    Reads,
    Remove,
}

pub trait Reader {
    /// Looks `key` up. On a hit, returns something computed from the value's
    /// bytes (its length plus its first byte), so every peer touches them.
    fn get(&mut self, key: &[u8]) -> Option<u64>;
}

pub trait Store: Sync + Sized {
    type R<'a>: Reader
    where
        Self: 'a;
    /// How each phase writes, for the output's notes.
    fn notes() -> Vec<String>;
    fn open(dir: &Path, n: u64) -> Self;
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
    /// Iterates everything: (entries, key + value bytes).
    fn scan(&self) -> (u64, u64);
    /// Removes every key with an even index in `0..n`, durable at the end.
    fn remove_half(&mut self, n: u64);
    /// Closes cleanly; returns notes on the final state, if any.
    fn close(self) -> Vec<String>;
}

#[inline]
fn touch(v: &[u8]) -> u64 {
    v.len() as u64 + v.first().copied().unwrap_or(0) as u64
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
    fn get(&mut self, key: &[u8]) -> Option<u64> {
        if self.db.get_into(key, &mut self.buf).unwrap() {
            Some(touch(&self.buf))
        } else {
            None
        }
    }
}

impl Store for Mapkv {
    type R<'a> = MapkvReader<'a>;

    fn notes() -> Vec<String> {
        vec![
            "default Options; bulk load and removal in batches of 1,000 with Durability::None, then flush()".into(),
            "durable phases: reopened with Durability::Sync (one msync per commit); unsynced: Durability::None".into(),
            "reads: get_into with a reused buffer (copies the value out)".into(),
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
        }
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
            Phase::DurableSingle | Phase::DurableBatch => self.set_mode(Sync),
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

    fn scan(&self) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for item in self.db().iter() {
            let (k, v) = item.unwrap();
            n += 1;
            bytes += (k.as_ref().len() + v.as_ref().len()) as u64;
        }
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
    fn get(&mut self, key: &[u8]) -> Option<u64> {
        self.table.get(key).unwrap().map(|g| touch(g.value()))
    }
}

impl Store for Redb {
    type R<'a> = RedbReader;

    fn notes() -> Vec<String> {
        vec![
            "default Builder (1 GiB cache); bulk load and removal: one write transaction each, Durability::Immediate".into(),
            "durable phases: one write transaction per commit, Durability::Immediate; unsynced: Durability::None per transaction".into(),
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
    fn get(&mut self, key: &[u8]) -> Option<u64> {
        self.db.get(&self.txn, key).unwrap().map(touch)
    }
}

impl Lmdb {
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

    fn notes() -> Vec<String> {
        vec![
            "map size max(4 KiB * N, 1 GiB), default flags; bulk load and removal: one write transaction each, synced commit".into(),
            "durable phases: one write transaction per commit (LMDB syncs each commit); unsynced: env flag NO_SYNC during that phase, one transaction per write".into(),
        ]
    }

    fn open(dir: &Path, n: u64) -> Self {
        let map_size = (n as usize * 4096).max(1 << 30);
        // SAFETY: the directory is ours alone; nothing else maps it.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(map_size)
                .open(dir)
                .unwrap()
        };
        let env: &'static heed::Env = Box::leak(Box::new(env));
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
    fn get(&mut self, key: &[u8]) -> Option<u64> {
        self.db.get(key).unwrap().map(|v| touch(&v))
    }
}

impl Store for Sled {
    type R<'a> = SledReader<'a>;

    fn notes() -> Vec<String> {
        vec![
            "default Config (1 GB cache, background flush every 500 ms); bulk load and removal: apply_batch of 1,000, then flush()".into(),
            "durable phases: insert/apply_batch then flush() each time; unsynced: insert only".into(),
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
    fn get(&mut self, key: &[u8]) -> Option<u64> {
        self.ks.get(key).unwrap().map(|v| touch(&v))
    }
}

const FJALL_SYNC: fjall::PersistMode = fjall::PersistMode::SyncAll;

impl Store for Fjall {
    type R<'a> = FjallReader<'a>;

    fn notes() -> Vec<String> {
        vec![
            "block cache 1 GiB (as redb's and sled's defaults; fjall's default is 32 MiB), otherwise default options (LZ4, background flush/compaction threads); bulk load and removal: WriteBatch of 1,000, then persist(SyncAll)".into(),
            "durable phases: insert then persist(SyncAll), batches with durability(Some(SyncAll)); unsynced: insert (journal written to the OS, no sync)".into(),
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
