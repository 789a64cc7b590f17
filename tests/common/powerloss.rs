//! A power-loss simulator for mapkv stores (reusable by tests and fuzz
//! targets).
//!
//! It keeps a *durable image* D of a store's file: the bytes that are on
//! stable storage as far as the store has asked for (every `msync` range
//! that completed is copied from the file into D; every `fsync` copies the
//! whole file and its length). At a *crash point* it also takes the live
//! image L (the page cache: what the file reads as now). A crash image is
//! then built page by page: every 4 KiB page that differs between D and L is
//! kept old (D), new (L), or torn (each 512-byte sector from D or L), and the
//! file length is the durable one or the live one. That is the Linux fault
//! model for an OS crash or power loss with a writable shared mapping: the
//! kernel writes dirty pages back in any order, and a device may tear a page
//! at sector boundaries.
//!
//! Crash points are taken explicitly between operations, and (if enabled)
//! just before every msync/fsync the store makes, i.e. in the middle of a
//! commit, after its records were written and before they were synced.

#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use mapkv::testing::{add_io_hook, layout, HookGuard, IoOp, Phase};
use mapkv::Db;

/// The unit the simulator tracks and tears: the format page (msync ranges
/// are whole pages of it).
pub const PAGE: usize = layout::FORMAT_PAGE as usize;
pub const SECTOR: usize = 512;

/// What the test knew about its own commits when a crash point was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Commits acknowledged as durable (Sync commit returned, or a flush
    /// returned after them).
    pub durable: u64,
    /// Commits whose call returned.
    pub committed: u64,
    /// Commits started (committed, plus the one in flight, if any).
    pub started: u64,
}

/// The durable and live images at one moment.
#[derive(Clone)]
pub struct CrashPoint {
    pub label: String,
    pub durable: Vec<u8>,
    pub durable_len: u64,
    pub live: Vec<u8>,
    pub progress: Progress,
}

struct State {
    durable: Vec<u8>,
    durable_len: u64,
    progress: Progress,
    capture_syncs: bool,
    /// Take only the crash point of this sync (counted from 0), not one at
    /// every sync: a copy of the file each time is most of the cost.
    capture_only: Option<u64>,
    /// Syncs seen while capturing.
    sync_points: u64,
    points: Vec<CrashPoint>,
    syncs: u64,
}

/// Watches one store file. Dropping it removes its hook.
pub struct Simulator {
    path: PathBuf,
    state: Arc<Mutex<State>>,
    _hook: HookGuard,
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read store file")
}

fn read_range(path: &Path, off: u64, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(path).expect("open store file");
    let flen = f.metadata().unwrap().len();
    let end = (off + len).min(flen);
    if end <= off {
        return Vec::new();
    }
    let mut b = vec![0u8; (end - off) as usize];
    f.read_exact_at(&mut b, off).expect("read range");
    b
}

impl Simulator {
    /// Start watching `path`. The file as it is now is taken as durable, so
    /// attach right after a `flush()` (or a fresh create).
    pub fn attach(path: &Path) -> Simulator {
        let durable = read_file(path);
        let state = Arc::new(Mutex::new(State {
            durable_len: durable.len() as u64,
            durable,
            progress: Progress::default(),
            capture_syncs: false,
            capture_only: None,
            sync_points: 0,
            points: Vec::new(),
            syncs: 0,
        }));
        let st = state.clone();
        let me = path.to_path_buf();
        let hook = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
            if p != me {
                return None;
            }
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            match (phase, op) {
                (Phase::Before, IoOp::Msync { .. } | IoOp::Fsync | IoOp::Trim { .. })
                    if s.capture_syncs =>
                {
                    let n = s.sync_points;
                    s.sync_points += 1;
                    if s.capture_only.is_some_and(|k| k != n) {
                        return None;
                    }
                    let cp = CrashPoint {
                        label: format!("before {op:?}"),
                        durable: s.durable.clone(),
                        durable_len: s.durable_len,
                        live: read_file(&me),
                        progress: s.progress,
                    };
                    s.points.push(cp);
                }
                (Phase::After, IoOp::Msync { off, len }) => {
                    s.syncs += 1;
                    let bytes = read_range(&me, off, len);
                    let end = off as usize + bytes.len();
                    if s.durable.len() < end {
                        s.durable.resize(end, 0);
                    }
                    s.durable[off as usize..end].copy_from_slice(&bytes);
                }
                (Phase::After, IoOp::Fsync | IoOp::Trim { .. }) => {
                    s.syncs += 1;
                    s.durable = read_file(&me);
                    s.durable_len = s.durable.len() as u64;
                }
                _ => {}
            }
            None
        }));
        Simulator {
            path: path.to_path_buf(),
            state,
            _hook: hook,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Also take a crash point before every msync/fsync of the store.
    pub fn capture_syncs(&self, on: bool) {
        self.lock().capture_syncs = on;
    }

    /// With `capture_syncs`, take the crash point of sync `k` only
    /// (counted from 0 since attaching); `None`: of every sync.
    pub fn capture_only(&self, k: Option<u64>) {
        self.lock().capture_only = k;
    }

    /// Tell the simulator what the test knows about its commits (recorded
    /// with every crash point).
    pub fn set_progress(&self, p: Progress) {
        self.lock().progress = p;
    }

    /// Take a crash point now.
    pub fn crash_point(&self, label: &str) {
        let live = read_file(&self.path);
        let mut s = self.lock();
        let cp = CrashPoint {
            label: label.to_string(),
            durable: s.durable.clone(),
            durable_len: s.durable_len,
            live,
            progress: s.progress,
        };
        s.points.push(cp);
    }

    /// The crash points taken since the last call.
    pub fn take_points(&self) -> Vec<CrashPoint> {
        std::mem::take(&mut self.lock().points)
    }

    /// Syncs observed so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }
}

/// A small deterministic PRNG for image choices (SplitMix64).
pub struct ImgRng(pub u64);

impl ImgRng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How to build one page of a crash image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageChoice {
    Old,
    New,
    /// Sector `i` is new if bit `i` is set.
    Torn(u8),
}

fn page_of(img: &[u8], p: usize) -> [u8; PAGE] {
    let mut out = [0u8; PAGE];
    let start = p * PAGE;
    if start < img.len() {
        let end = (start + PAGE).min(img.len());
        out[..end - start].copy_from_slice(&img[start..end]);
    }
    out
}

impl CrashPoint {
    /// Pages that differ between the durable and the live image.
    pub fn dirty_pages(&self) -> Vec<usize> {
        let n = self.durable.len().max(self.live.len()).div_ceil(PAGE);
        (0..n)
            .filter(|&p| page_of(&self.durable, p) != page_of(&self.live, p))
            .collect()
    }

    /// Build the image: `choose(page)` for every dirty page, and the file
    /// length (durable or live).
    pub fn build(&self, live_len: bool, mut choose: impl FnMut(usize) -> PageChoice) -> Vec<u8> {
        let len = if live_len {
            self.live.len().max(self.durable_len as usize)
        } else {
            self.durable_len as usize
        };
        let mut img = vec![0u8; len];
        let n = len.div_ceil(PAGE);
        for p in 0..n {
            let old = page_of(&self.durable, p);
            let new = page_of(&self.live, p);
            let page = if old == new {
                old
            } else {
                match choose(p) {
                    PageChoice::Old => old,
                    PageChoice::New => new,
                    PageChoice::Torn(mask) => {
                        let mut t = old;
                        for s in 0..PAGE / SECTOR {
                            if mask & (1 << s) != 0 {
                                t[s * SECTOR..(s + 1) * SECTOR]
                                    .copy_from_slice(&new[s * SECTOR..(s + 1) * SECTOR]);
                            }
                        }
                        t
                    }
                }
            };
            let start = p * PAGE;
            let end = (start + PAGE).min(len);
            img[start..end].copy_from_slice(&page[..end - start]);
        }
        img
    }

    /// A spread of crash images: every dirty page old, every page new,
    /// the meta pages new with the log old (and the reverse), each dirty page
    /// alone new (when few are dirty), and `random` random mixes with torn
    /// pages and either file length.
    pub fn images(&self, rng: &mut ImgRng, random: usize) -> Vec<(String, Vec<u8>)> {
        let dirty = self.dirty_pages();
        let mut out = vec![
            (
                "all-old".to_string(),
                self.build(false, |_| PageChoice::Old),
            ),
            ("all-new".to_string(), self.build(true, |_| PageChoice::New)),
            (
                "header-new-rest-old".to_string(),
                self.build(true, |p| {
                    if p < 3 {
                        PageChoice::New
                    } else {
                        PageChoice::Old
                    }
                }),
            ),
            (
                "header-old-rest-new".to_string(),
                self.build(true, |p| {
                    if p < 3 {
                        PageChoice::Old
                    } else {
                        PageChoice::New
                    }
                }),
            ),
        ];
        if dirty.len() <= 6 {
            for &d in &dirty {
                out.push((
                    format!("only-page-{d}-new"),
                    self.build(true, |p| {
                        if p == d {
                            PageChoice::New
                        } else {
                            PageChoice::Old
                        }
                    }),
                ));
            }
        }
        for i in 0..random {
            let live_len = rng.below(2) == 0;
            let torn_pct = rng.below(40);
            let new_pct = rng.below(101);
            let mut choices = Vec::new();
            let img = self.build(live_len, |_| {
                let c = if rng.below(100) < torn_pct {
                    PageChoice::Torn(rng.next() as u8)
                } else if rng.below(100) < new_pct {
                    PageChoice::New
                } else {
                    PageChoice::Old
                };
                choices.push(c);
                c
            });
            out.push((
                format!(
                    "random-{i}(len {}, new {new_pct}%, torn {torn_pct}%)",
                    if live_len { "live" } else { "durable" }
                ),
                img,
            ));
        }
        out
    }
}

pub type Commit = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Order-independent hash of a key-value state.
pub fn entry_hash(k: &[u8], v: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    v.hash(&mut h);
    h.finish()
}

/// A model of a store's commits: every commit in order, and the state hash after each prefix.
pub struct Model {
    pub commits: Vec<Commit>,
    pub hashes: Vec<u64>,
    pub state: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Default for Model {
    fn default() -> Model {
        Model::new()
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            commits: Vec::new(),
            hashes: vec![0],
            state: BTreeMap::new(),
        }
    }

    fn apply(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, hash: &mut u64, c: &Commit) {
        for (k, v) in c {
            if let Some(old) = state.remove(k) {
                *hash = hash.wrapping_sub(entry_hash(k, &old));
            }
            if let Some(v) = v {
                *hash = hash.wrapping_add(entry_hash(k, v));
                state.insert(k.clone(), v.clone());
            }
        }
    }

    pub fn push(&mut self, c: Commit) {
        let mut h = *self.hashes.last().unwrap();
        Model::apply(&mut self.state, &mut h, &c);
        self.hashes.push(h);
        self.commits.push(c);
    }

    pub fn state_at(&self, k: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut s = BTreeMap::new();
        let mut h = 0;
        for c in &self.commits[..k] {
            Model::apply(&mut s, &mut h, c);
        }
        s
    }
}

/// Every entry of `db`, and the order-independent hash `Model` uses.
pub fn read_state(db: &Db) -> (BTreeMap<Vec<u8>, Vec<u8>>, u64) {
    let mut s = BTreeMap::new();
    let mut h = 0u64;
    for item in db.iter() {
        let (k, v) = item.expect("iter after recovery");
        h = h.wrapping_add(entry_hash(&k, &v));
        s.insert(k.to_vec(), v.to_vec());
    }
    (s, h)
}
