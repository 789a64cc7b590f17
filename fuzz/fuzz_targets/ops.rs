//! `ops`: an arbitrary sequence of operations against a store and a
//! `HashMap` model, compared after every step.
//!
//! Besides inserts, removes, gets and batches, the sequence can close and
//! reopen the store, continue on a copy of the open file (what a killed
//! process leaves: `CrashReopen`), do the same as if the machine had
//! rebooted (`Reboot`: another `MAPKV_BOOT_ID`, so the index is rebuilt from
//! the log), open such a copy read-only, or compact the store. Nothing acknowledged may be
//! lost by any of these (the copy holds the whole page cache), so the model
//! stays exact. Every reopen is followed by a full comparison and
//! `Db::check`. Any mismatch or unexpected error panics.
//!
//! With `Config::cache` the store is a 256 KiB cache (`Options::capacity`),
//! so large values and fills make it evict. The model then allows one
//! thing more: an entry may disappear (evicted), and stays gone; every value
//! the store returns must still be the model's, and the file never exceeds
//! the capacity, except right after recovering from a crash (one index).

#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mapkv::{Db, Durability, Error, OpenKind, Options};

const MAX_OPS: usize = 96;
const MAX_VALUE: usize = 2048;

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Config {
    /// 0: None, 1: Async, 2: Sync.
    durability: u8,
    /// Start with a 64 KiB file (growth happens early) instead of 1 MiB.
    small_file: bool,
    /// Reserve little address space, so growth remaps the file.
    small_reserve: bool,
    /// Cache mode: a 256 KiB capacity, so the store evicts.
    cache: bool,
}

const CAPACITY: u64 = 256 << 10;

#[derive(Arbitrary, Debug, Clone)]
enum Val {
    Bytes(Vec<u8>),
    Fill { len: u16, byte: u8 },
}

impl Val {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Val::Bytes(b) => b[..b.len().min(MAX_VALUE)].to_vec(),
            Val::Fill { len, byte } => vec![*byte; *len as usize % (MAX_VALUE + 1)],
        }
    }
}

#[derive(Arbitrary, Debug)]
enum BatchOp {
    Insert { key: u8, value: Val },
    Remove { key: u8 },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        key: u8,
        value: Val,
    },
    Remove {
        key: u8,
    },
    Get {
        key: u8,
    },
    Contains {
        key: u8,
    },
    Batch(Vec<BatchOp>),
    Flush,
    /// Clean close, then open again.
    Reopen,
    /// Continue on a copy of the open file (process crash).
    CrashReopen,
    /// As `CrashReopen`, opened under another boot id (OS crash).
    Reboot,
    /// Many keys outside the u8 key space, so the index table grows.
    Fill {
        prefix: u8,
        count: u8,
        batched: bool,
    },
    /// Open a copy of the open file read-only and compare it.
    ReadOnlyImage,
    /// One value larger than the scanner's 64 KiB read chunk.
    Large {
        key: u8,
        byte: u8,
    },
    /// Compact the store into a new file (the handle follows it).
    Compact,
    /// Insert only if absent.
    InsertIfAbsent {
        key: u8,
        value: Val,
    },
    /// Compare and swap: expect the model's value (or a wrong one), and
    /// set a new value or remove.
    Cas {
        key: u8,
        expect_current: bool,
        new: Option<Val>,
    },
    /// Add to an 8-byte counter (an error for a value of another length).
    Increment {
        key: u8,
        delta: i16,
    },
    /// Set (0: an hour, 1: zero, which removes it) or clear (else) the
    /// key's expiry.
    Expire {
        key: u8,
        how: u8,
    },
    /// Read through: the stored value, or `value` stored now.
    GetOrInsert {
        key: u8,
        value: Val,
    },
    /// Remove every entry.
    Clear,
}

/// The u8 key space, mapped to keys of different lengths (0 to 300 bytes;
/// keys over 64 bytes take another comparison path).
fn key(k: u8) -> Vec<u8> {
    match k {
        0 => Vec::new(),
        250..=255 => vec![k; 64 + 40 * (k as usize - 249)],
        _ => {
            let mut v = vec![b'k'; 1 + (k as usize % 5)];
            v.push(k);
            v
        }
    }
}

fn fill_key(prefix: u8, i: u32) -> Vec<u8> {
    let mut k = vec![0xF0, prefix];
    k.extend_from_slice(&i.to_le_bytes());
    k
}

fn fill_value(prefix: u8, i: u32, round: u32) -> Vec<u8> {
    let n = 4 + ((i as usize * 13 + prefix as usize + round as usize) % 90);
    (0..n).map(|j| (j as u32 ^ i ^ round) as u8).collect()
}

struct Harness {
    dir: tempfile::TempDir,
    path: PathBuf,
    opts: Options,
    db: Option<Db>,
    model: HashMap<Vec<u8>, Vec<u8>>,
    boot: u32,
    files: u32,
    round: u32,
    cache: bool,
    /// Eviction runs the model has been reconciled with.
    evictions_seen: u64,
}

fn set_boot(n: u32) {
    std::env::set_var("MAPKV_BOOT_ID", format!("mapkv-fuzz-ops-boot-{n}"));
}

impl Harness {
    fn db(&self) -> &Db {
        self.db.as_ref().expect("open store")
    }

    fn next_path(&mut self) -> PathBuf {
        self.files += 1;
        self.dir.path().join(format!("s{}.store", self.files))
    }

    /// Cache mode: drop from the model what the store evicted, after
    /// checking that everything the store holds is the model's.
    fn forget_evicted(&mut self, what: &str) {
        if !self.cache {
            return;
        }
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let table = self.db().stats().index_bytes;
        assert!(
            len <= CAPACITY + table.next_multiple_of(64 << 10),
            "{what}: file of {len} bytes in a cache of {CAPACITY}"
        );
        // Entries only go by eviction: nothing to reconcile if none ran
        // since the last time (a reopen may reset the counter: any change).
        let runs = self.db().cache_stats().eviction_runs;
        if runs == self.evictions_seen {
            return;
        }
        self.evictions_seen = runs;
        let mut seen: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for item in self.db().iter() {
            let (k, v) = item.unwrap_or_else(|e| panic!("{what}: iter: {e}"));
            assert_eq!(
                self.model.get(&k[..]).map(|x| &x[..]),
                Some(&v[..]),
                "{what}: the cache holds {:?} with a value the model does not have",
                &k[..]
            );
            seen.insert(k.to_vec(), v.to_vec());
        }
        self.model = seen;
    }

    /// Evictions run so far (cache mode).
    fn runs(&self) -> u64 {
        self.db().cache_stats().eviction_runs
    }

    /// Cache mode: an eviction ran since `runs` (a write that found the
    /// cache full evicts, then runs again, reading anew): the model cannot
    /// say what the operation saw, so take the key as the store has it,
    /// and the other entries the eviction took go at the end of the step.
    fn evicted_since(&mut self, runs: u64, k: &[u8]) -> bool {
        if !self.cache || self.runs() == runs {
            return false;
        }
        match self.db().get(k).expect("get after an eviction") {
            Some(v) => self.model.insert(k.to_vec(), v.to_vec()),
            None => self.model.remove(k),
        };
        true
    }

    fn expect_get(&self, k: &[u8], what: &str) {
        let got = self
            .db()
            .get(k)
            .unwrap_or_else(|e| panic!("{what}: get {k:?}: {e}"));
        let want = self.model.get(k);
        assert_eq!(
            got.as_deref(),
            want.map(|v| &v[..]),
            "{what}: get {k:?} differs from the model"
        );
        let has = self
            .db()
            .contains_key(k)
            .unwrap_or_else(|e| panic!("{what}: contains_key {k:?}: {e}"));
        assert_eq!(has, want.is_some(), "{what}: contains_key {k:?}");
    }

    fn expect_len(&self, what: &str) {
        assert_eq!(
            self.db().len(),
            self.model.len() as u64,
            "{what}: len differs from the model"
        );
    }

    /// Every key of the model, the iterator, and `check`.
    fn verify_all(&self, what: &str) {
        let db = self.db();
        self.expect_len(what);
        for k in self.model.keys() {
            self.expect_get(k, what);
        }
        let mut seen: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for item in db.iter() {
            let (k, v) = item.unwrap_or_else(|e| panic!("{what}: iter: {e}"));
            let dup = seen.insert(k.to_vec(), v.to_vec());
            assert!(dup.is_none(), "{what}: iter returned {:?} twice", &k[..]);
        }
        assert!(seen == self.model, "{what}: iter differs from the model");
        let report = db.check().unwrap_or_else(|e| panic!("{what}: check: {e}"));
        assert_eq!(report.live_keys, self.model.len() as u64, "{what}: check");
    }

    fn open(&mut self, path: &Path, want: OpenKind, what: &str) {
        let db = self
            .opts
            .clone()
            .open(path)
            .unwrap_or_else(|e| panic!("{what}: open: {e}"));
        assert_eq!(db.stats().opened, want, "{what}: opened as");
        self.db = Some(db);
        self.path = path.to_path_buf();
        self.forget_evicted(what);
        self.verify_all(what);
    }

    /// A copy of the open store's file: what a killed process leaves.
    fn image(&mut self) -> PathBuf {
        let to = self.next_path();
        std::fs::copy(&self.path, &to).expect("copy image");
        to
    }

    /// One operation, then (in cache mode) what evictions took leaves the
    /// model, and `len` must agree. The reconciling comes after every
    /// operation, including those that return early because an eviction
    /// ran during them (it used to be skipped then, and the end of a run
    /// whose last operation did so compared `len` with a model that still
    /// held the evicted entries).
    fn step(&mut self, op: &Op) {
        self.apply(op);
        self.forget_evicted("after step");
        self.expect_len("after step");
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Insert { key: k, value } => {
                let (k, v) = (key(*k), value.bytes());
                self.db().insert(&k, &v).expect("insert");
                self.model.insert(k.clone(), v);
                self.expect_get(&k, "after insert");
            }
            Op::Remove { key: k } => {
                let k = key(*k);
                self.forget_evicted("before remove");
                let was = self.db().remove(&k).expect("remove");
                assert_eq!(
                    was,
                    self.model.remove(&k).is_some(),
                    "remove {k:?}: wrong return value"
                );
                self.expect_get(&k, "after remove");
            }
            Op::Get { key: k } => {
                self.forget_evicted("before get");
                self.expect_get(&key(*k), "get")
            }
            Op::Contains { key: k } => {
                self.forget_evicted("before contains_key");
                let k = key(*k);
                let has = self.db().contains_key(&k).expect("contains_key");
                assert_eq!(has, self.model.contains_key(&k), "contains_key {k:?}");
            }
            Op::Batch(ops) => {
                let mut b = self.db().batch();
                let mut touched = Vec::new();
                let mut after = self.model.clone();
                for op in ops {
                    match op {
                        BatchOp::Insert { key: k, value } => {
                            let (k, v) = (key(*k), value.bytes());
                            b.insert(&k, &v);
                            after.insert(k.clone(), v);
                            touched.push(k);
                        }
                        BatchOp::Remove { key: k } => {
                            let k = key(*k);
                            b.remove(&k);
                            after.remove(&k);
                            touched.push(k);
                        }
                    }
                }
                match b.commit() {
                    Err(Error::OutOfSpace { .. }) if self.cache => return,
                    r => r.expect("batch commit"),
                }
                self.model = after;
                for k in &touched {
                    self.expect_get(k, "after batch");
                }
            }
            Op::Flush => {
                self.db().flush().expect("flush");
            }
            Op::Compact => {
                self.forget_evicted("before compact");
                let r = self.db().compact().expect("compact");
                assert_eq!(r.keys, self.model.len() as u64, "compact: keys");
                self.verify_all("after compact");
                self.db().check().expect("check after compact");
            }
            Op::Reopen => {
                self.db.take().unwrap().close().expect("close");
                let p = self.path.clone();
                self.open(&p, OpenKind::Clean, "reopen after close");
            }
            Op::CrashReopen => {
                let img = self.image();
                drop(self.db.take());
                self.open(&img, OpenKind::Replayed, "crash image");
            }
            Op::Reboot => {
                let img = self.image();
                drop(self.db.take());
                self.boot += 1;
                set_boot(self.boot);
                self.open(&img, OpenKind::Rebuilt, "reboot image");
            }
            Op::Fill {
                prefix,
                count,
                batched,
            } => {
                self.round += 1;
                // A cache gets more, so that fills make it evict.
                let n = *count as u32 * if self.cache { 8 } else { 2 };
                let kv: Vec<_> = (0..n)
                    .map(|i| (fill_key(*prefix, i), fill_value(*prefix, i, self.round)))
                    .collect();
                if *batched {
                    let mut b = self.db().batch();
                    for (k, v) in &kv {
                        b.insert(k, v);
                    }
                    match b.commit() {
                        // A batch larger than the cache is refused whole.
                        Err(Error::OutOfSpace { .. }) if self.cache => return,
                        r => r.expect("fill batch"),
                    }
                } else {
                    for (k, v) in &kv {
                        self.db().insert(k, v).expect("fill insert");
                    }
                }
                for (k, v) in kv {
                    self.model.insert(k, v);
                }
                if n > 0 && !self.cache {
                    self.expect_get(&fill_key(*prefix, n - 1), "after fill");
                }
            }
            Op::ReadOnlyImage => {
                let img = self.image();
                match self.opts.clone().read_only(true).open(&img) {
                    // Repair may need space a read-only handle cannot add.
                    Err(Error::NeedsRecovery { .. }) => {}
                    Err(e) => panic!("read-only image: open: {e}"),
                    Ok(ro) => {
                        assert_ne!(ro.stats().opened, OpenKind::Clean);
                        let rw = self.db.replace(ro);
                        self.verify_all("read-only image");
                        assert!(matches!(
                            self.db().insert(b"x", b"y"),
                            Err(Error::ReadOnly { .. })
                        ));
                        self.db = rw;
                    }
                }
            }
            Op::InsertIfAbsent { key: k, value } => {
                let (k, v) = (key(*k), value.bytes());
                self.forget_evicted("before insert_if_absent");
                let runs = self.runs();
                let r = match self.db().insert_if_absent(&k, &v) {
                    Err(Error::OutOfSpace { .. }) if self.cache => return,
                    r => r.expect("insert_if_absent"),
                };
                if self.evicted_since(runs, &k) {
                    return;
                }
                assert_eq!(r, !self.model.contains_key(&k), "insert_if_absent {k:?}");
                if r {
                    self.model.insert(k.clone(), v);
                }
                self.expect_get(&k, "after insert_if_absent");
            }
            Op::Cas {
                key: k,
                expect_current,
                new,
            } => {
                let k = key(*k);
                self.forget_evicted("before compare_and_swap");
                let cur = self.model.get(&k).cloned();
                let expected = if *expect_current {
                    cur.clone()
                } else {
                    Some(b"\xffnever stored".to_vec())
                };
                let new = new.as_ref().map(|v| v.bytes());
                let runs = self.runs();
                let r = match self
                    .db()
                    .compare_and_swap(&k, expected.as_deref(), new.as_deref())
                {
                    Err(Error::OutOfSpace { .. }) if self.cache => return,
                    r => r.expect("compare_and_swap"),
                };
                if self.evicted_since(runs, &k) {
                    return;
                }
                if expected == cur {
                    assert!(r.is_ok(), "compare_and_swap {k:?} should swap");
                    match new {
                        Some(n) => self.model.insert(k.clone(), n),
                        None => self.model.remove(&k),
                    };
                } else {
                    let failed = r.expect_err("compare_and_swap should fail");
                    assert_eq!(failed.current.map(|v| v.to_vec()), cur, "cas current");
                }
                self.expect_get(&k, "after compare_and_swap");
            }
            Op::Increment { key: k, delta } => {
                let k = key(*k);
                self.forget_evicted("before increment");
                let delta = *delta as i64;
                let runs = self.runs();
                let r = self.db().increment(&k, delta);
                if matches!(r, Err(Error::OutOfSpace { .. })) && self.cache {
                    return;
                }
                if self.evicted_since(runs, &k) {
                    return;
                }
                match self.model.get(&k) {
                    None => {
                        assert_eq!(r.expect("increment"), delta);
                        self.model.insert(k.clone(), delta.to_le_bytes().to_vec());
                    }
                    Some(v) if v.len() == 8 => {
                        let old = i64::from_le_bytes(v[..].try_into().unwrap());
                        match old.checked_add(delta) {
                            Some(n) => {
                                assert_eq!(r.expect("increment"), n);
                                self.model.insert(k.clone(), n.to_le_bytes().to_vec());
                            }
                            None => assert!(matches!(r, Err(Error::Overflow { .. })), "{r:?}"),
                        }
                    }
                    Some(v) => assert!(
                        matches!(r, Err(Error::ValueSize { expected: 8, found }) if found == v.len()),
                        "increment of a {}-byte value: {r:?}",
                        v.len()
                    ),
                }
                self.expect_get(&k, "after increment");
            }
            Op::Expire { key: k, how } => {
                let k = key(*k);
                self.forget_evicted("before expire");
                let ttl = match how % 3 {
                    0 => Some(std::time::Duration::from_secs(3600)),
                    1 => Some(std::time::Duration::ZERO),
                    _ => None,
                };
                let runs = self.runs();
                let r = match self.db().expire(&k, ttl) {
                    Err(Error::OutOfSpace { .. }) if self.cache => return,
                    r => r.expect("expire"),
                };
                if self.evicted_since(runs, &k) {
                    return;
                }
                assert_eq!(r, self.model.contains_key(&k), "expire {k:?}");
                if ttl == Some(std::time::Duration::ZERO) {
                    self.model.remove(&k);
                }
                let left = self.db().time_to_live(&k).expect("time_to_live");
                assert_eq!(left.is_some(), r && how % 3 == 0, "time_to_live {k:?}");
                self.expect_get(&k, "after expire");
            }
            Op::GetOrInsert { key: k, value } => {
                let (k, v) = (key(*k), value.bytes());
                self.forget_evicted("before get_or_insert_with");
                let runs = self.runs();
                let mut ran = false;
                let got = match self.db().get_or_insert_with(&k, None, || {
                    ran = true;
                    v.clone()
                }) {
                    Err(Error::OutOfSpace { .. }) if self.cache => return,
                    r => r.expect("get_or_insert_with"),
                };
                if self.evicted_since(runs, &k) {
                    return;
                }
                match self.model.get(&k) {
                    Some(old) => {
                        assert!(!ran, "get_or_insert_with computed a present key");
                        assert_eq!(&got[..], &old[..]);
                    }
                    None => {
                        assert!(ran, "get_or_insert_with did not compute");
                        assert_eq!(&got[..], &v[..]);
                        self.model.insert(k.clone(), v);
                    }
                }
                self.expect_get(&k, "after get_or_insert_with");
            }
            Op::Clear => {
                self.db().clear().expect("clear");
                self.model.clear();
                self.verify_all("after clear");
            }
            Op::Large { key: k, byte } => {
                let (k, v) = (key(*k), vec![*byte; 70_000 + *byte as usize]);
                self.db().insert(&k, &v).expect("insert large");
                self.model.insert(k.clone(), v);
                self.expect_get(&k, "after large insert");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    if std::env::var_os("MAPKV_FUZZ_DEBUG").is_some() {
        eprintln!("{input:?}");
    }
    set_boot(0);
    let durability = match input.config.durability % 3 {
        0 => Durability::None,
        1 => Durability::Async,
        _ => Durability::Sync,
    };
    let mut opts = Options::new().durability(durability);
    if input.config.small_file {
        opts = opts.initial_size(64 << 10);
    }
    opts = opts.map_reserve(if input.config.small_reserve {
        1 << 18
    } else {
        1 << 24
    });
    if input.config.cache {
        // No background eviction: evictions happen where the input puts
        // them, so the model can follow.
        opts = opts.capacity(CAPACITY).evict_ahead(false);
    }
    let dir = mapkv_fuzz::scratch_dir();
    let path = dir.path().join("s0.store");
    let mut h = Harness {
        dir,
        path: path.clone(),
        opts,
        db: None,
        model: HashMap::new(),
        boot: 0,
        files: 0,
        round: 0,
        cache: input.config.cache,
        evictions_seen: 0,
    };
    h.open(&path, OpenKind::Clean, "create");
    for op in input.ops.iter().take(MAX_OPS) {
        h.step(op);
    }
    h.verify_all("end");
    if h.cache && std::env::var_os("MAPKV_FUZZ_STATS").is_some() {
        eprintln!("cache: {:?}", h.db().cache_stats());
    }
    h.db.take().unwrap().close().expect("final close");
    let p = h.path.clone();
    h.open(&p, OpenKind::Clean, "final reopen");
});
