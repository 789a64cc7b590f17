//! Power-loss tests: random operations on a store, crash images built at
//! every msync/fsync and between operations (see common/powerloss.rs), each
//! opened as after a reboot and checked against a model of what was
//! acknowledged when.
//!
//! The contract checked for every image:
//! - `open` succeeds and `Db::check` passes;
//! - the store holds exactly the state after the first k commits, for some
//!   k between the commits acknowledged as durable and the commits started:
//!   nothing durable lost, nothing invented, every commit (batches too)
//!   all-or-nothing, no hole in the order (a prefix of the commits);
//! - the live image (the page cache, i.e. a process crash) opened in the
//!   same boot holds every commit whose call returned.
//!
//! For a sample of images, recovery itself is interrupted at each of its
//! syncs (a crash during recovery) and the image is recovered again: the
//! result must be the one an uninterrupted recovery gives.
//!
//! `MAPKV_POWERLOSS_OPS` (operations per mode, default 400) and
//! `MAPKV_POWERLOSS_RANDOM` (random images per crash point, default 4) scale
//! it up for soak runs; `MAPKV_SEED` replays a run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::powerloss::{read_state, Commit, CrashPoint, ImgRng, Model, Progress, Simulator};
use common::{seed, Rng};
use mapkv::testing::{add_io_hook, IoOp, Phase};
use mapkv::{Db, Durability, Options};

/// Tests in this binary change MAPKV_BOOT_ID: one at a time.
static ENV: Mutex<()> = Mutex::new(());

#[derive(Default, Debug)]
struct Tally {
    crash_points: u64,
    images: u64,
    process_images: u64,
    double_crash: u64,
    commits_lost_unsynced: u64,
    synced_lost: u64,
}

fn open_as(path: &Path, boot: &str) -> mapkv::Result<Db> {
    std::env::set_var("MAPKV_BOOT_ID", boot);
    let r = Options::new().map_reserve(1 << 26).open(path);
    std::env::set_var("MAPKV_BOOT_ID", MAIN_BOOT);
    r
}

const MAIN_BOOT: &str = "powerloss-main-boot";

/// Open `img` as after a reboot and check it against the model; returns the
/// number of commits it holds.
fn check_image(
    dir: &Path,
    name: &str,
    img: &[u8],
    lo: u64,
    hi: u64,
    model: &Model,
    boot: &str,
) -> usize {
    let path = dir.join("image.mapkv");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, img).unwrap();
    let db = open_as(&path, boot).unwrap_or_else(|e| panic!("{name}: open failed: {e}"));
    db.check()
        .unwrap_or_else(|e| panic!("{name}: check failed: {e}"));
    let (state, h) = read_state(&db);
    assert_eq!(db.len(), state.len() as u64, "{name}: len");
    let found = (lo as usize..=hi as usize)
        .rev()
        .find(|&k| model.hashes[k] == h);
    match found {
        Some(k) => {
            // Hash equality; confirm exactly for the chosen prefix.
            assert!(
                model.state_at(k) == state,
                "{name}: hash collision or mismatch at prefix {k}"
            );
            k
        }
        None => {
            let want_lo = model.state_at(lo as usize);
            let missing: Vec<_> = want_lo
                .iter()
                .filter(|(k, v)| state.get(*k) != Some(v))
                .map(|(k, _)| k.clone())
                .take(5)
                .collect();
            panic!(
                "{name}: recovered state ({} keys) is not the state after any prefix of commits {lo}..={hi}; \
                 keys differing from the durable prefix: {missing:?}",
                state.len()
            );
        }
    }
}

/// Recover `img`, but make recovery's j-th sync fail after capturing the page
/// cache then (a crash in the middle of recovery); recover that again, in the
/// same boot and after another reboot, and require the uninterrupted result.
fn double_crash(dir: &Path, name: &str, img: &[u8], expect: usize, model: &Model) -> u64 {
    let mut done = 0;
    for j in 1..=4u32 {
        let path = dir.join("dc.mapkv");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, img).unwrap();
        let seen = Arc::new(Mutex::new((0u32, None::<Vec<u8>>)));
        let s2 = seen.clone();
        let me = path.clone();
        let guard = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
            if p != me || phase != Phase::Before || !matches!(op, IoOp::Msync { .. } | IoOp::Fsync)
            {
                return None;
            }
            let mut s = s2.lock().unwrap();
            s.0 += 1;
            if s.0 == j {
                s.1 = Some(std::fs::read(&me).unwrap());
                return Some(std::io::Error::other("injected crash during recovery"));
            }
            None
        }));
        let boot = format!("dc-boot-{j}");
        let r = open_as(&path, &boot);
        drop(guard);
        let captured = seen.lock().unwrap().1.take();
        match (r, captured) {
            (Ok(db), None) => {
                // Recovery made fewer than j syncs: nothing more to test.
                drop(db);
                break;
            }
            (Err(_), Some(mid)) => {
                // Same boot: a process crash during recovery.
                let k1 = check_image(
                    dir,
                    &format!("{name} / recovery crashed at sync {j}, same boot"),
                    &mid,
                    expect as u64,
                    expect as u64,
                    model,
                    &boot,
                );
                assert_eq!(k1, expect);
                // Another reboot: recovery's unsynced work may be lost too;
                // the original image's bytes are one such outcome.
                let k2 = check_image(
                    dir,
                    &format!("{name} / recovery crashed at sync {j}, reboot"),
                    img,
                    expect as u64,
                    expect as u64,
                    model,
                    &format!("{boot}-again"),
                );
                assert_eq!(k2, expect);
                done += 1;
            }
            (Ok(_), Some(_)) => panic!("{name}: recovery ignored an injected sync failure"),
            (Err(e), None) => panic!("{name}: recovery failed without injection: {e}"),
        }
    }
    done
}

fn run(mode: Durability, seed: u64, ops: usize, random_images: usize) -> Tally {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MAPKV_BOOT_ID", MAIN_BOOT);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.mapkv");
    let db = Options::new()
        .durability(mode)
        .initial_size(64 << 10)
        .growth_step(256 << 10)
        .map_reserve(1 << 26)
        .open(&path)
        .unwrap();
    db.flush().unwrap();
    let sim = Simulator::attach(&path);
    sim.capture_syncs(true);
    let mut rng = Rng::new(seed);
    let mut irng = ImgRng(seed ^ 0x5eed);
    let mut model = Model::new();
    let mut tally = Tally::default();
    let mut durable = 0u64;
    let key = |i: u64| format!("k{i:03}").into_bytes();
    for step in 0..ops {
        let committed = model.commits.len() as u64;
        sim.set_progress(Progress {
            durable,
            committed,
            started: committed + 1,
        });
        let r = rng.below(100);
        if r < 55 {
            let k = key(rng.below(60));
            let len = if rng.chance(5) {
                3000 + rng.below(9000)
            } else {
                rng.below(200)
            } as usize;
            let v = rng.bytes(len);
            db.insert(&k, &v).unwrap();
            model.push(vec![(k, Some(v))]);
        } else if r < 70 {
            let k = key(rng.below(60));
            if db.remove(&k).unwrap() {
                model.push(vec![(k, None)]);
            }
        } else if r < 90 {
            let mut b = db.batch();
            let mut c = Commit::new();
            for _ in 0..1 + rng.below(12) {
                let k = key(rng.below(60));
                if rng.chance(75) {
                    let n = rng.below(300) as usize;
                    let v = rng.bytes(n);
                    b.insert(&k, &v);
                    c.push((k, Some(v)));
                } else {
                    b.remove(&k);
                    c.push((k, None));
                }
            }
            b.commit().unwrap();
            model.push(c);
        } else if r < 95 {
            sim.set_progress(Progress {
                durable,
                committed,
                started: committed,
            });
            db.flush().unwrap();
            durable = model.commits.len() as u64;
        } else {
            sim.set_progress(Progress {
                durable,
                committed,
                started: committed,
            });
            sim.crash_point(&format!("between ops, step {step}"));
        }
        if mode == Durability::Sync {
            durable = model.commits.len() as u64;
        }
        for cp in sim.take_points() {
            tally.crash_points += 1;
            check_point(
                dir.path(),
                &cp,
                step,
                &model,
                &mut irng,
                random_images,
                &mut tally,
            );
        }
    }
    // Every acknowledged Sync commit must have survived every image: that
    // is what `lo` enforced; count it for the report.
    drop(db);
    tally
}

fn check_point(
    dir: &Path,
    cp: &CrashPoint,
    step: usize,
    model: &Model,
    rng: &mut ImgRng,
    random: usize,
    tally: &mut Tally,
) {
    let p = cp.progress;
    // A process crash: the page cache as it is, same boot.
    let name = format!("step {step} {} / live image, same boot", cp.label);
    let k = check_image(
        dir,
        &name,
        &cp.live,
        p.committed,
        p.started,
        model,
        MAIN_BOOT,
    );
    assert!(k as u64 >= p.committed);
    tally.process_images += 1;
    for (i, (label, img)) in cp.images(rng, random).into_iter().enumerate() {
        let name = format!("step {step} {} / {label}", cp.label);
        let boot = format!("reboot-{step}-{i}-{}", rng.next());
        let k = check_image(dir, &name, &img, p.durable, p.started, model, &boot);
        tally.images += 1;
        if (k as u64) < p.committed {
            tally.commits_lost_unsynced += p.committed - k as u64;
        }
        if (k as u64) < p.durable {
            tally.synced_lost += 1;
        }
        if i == 1 && step % 7 == 0 {
            tally.double_crash += double_crash(dir, &name, &img, k, model);
        }
    }
}

fn report(mode: &str, t: &Tally) {
    println!(
        "powerloss {mode}: {} crash points, {} power-loss images, {} process-crash images, \
         {} double-crash recoveries, {} unsynced commits lost (allowed), {} synced commits lost",
        t.crash_points,
        t.images,
        t.process_images,
        t.double_crash,
        t.commits_lost_unsynced,
        t.synced_lost
    );
}

fn ops() -> usize {
    std::env::var("MAPKV_POWERLOSS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

fn randoms() -> usize {
    std::env::var("MAPKV_POWERLOSS_RANDOM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

#[test]
fn power_loss_sync_mode() {
    let t = run(Durability::Sync, seed("powerloss_sync"), ops(), randoms());
    report("Sync", &t);
    assert!(t.images > 1000, "too few images: {t:?}");
    assert_eq!(t.synced_lost, 0);
}

#[test]
fn power_loss_none_mode_with_flushes() {
    let t = run(Durability::None, seed("powerloss_none"), ops(), randoms());
    report("None", &t);
    assert!(t.images > 100, "too few images: {t:?}");
    assert_eq!(t.synced_lost, 0);
}

#[test]
fn power_loss_async_mode() {
    let t = run(
        Durability::Async,
        seed("powerloss_async"),
        ops() / 2,
        randoms(),
    );
    report("Async", &t);
    assert!(t.images > 50, "too few images: {t:?}");
    assert_eq!(t.synced_lost, 0);
}

/// Compaction under power loss. A `Sync` store takes random commits, then
/// compacts; crash points are taken before every sync of the compaction's
/// new file and right before the rename, and each is checked like the
/// others (the page cache in the same boot, and old/new/torn page mixes of
/// the store's file after a reboot): until the rename the store's name is
/// the old file, which compaction never writes durably, so every
/// acknowledged commit must be there. After the rename the name is the new
/// file, durable as a whole: opened after a reboot it must hold exactly the
/// acknowledged state. Then the simulator follows the new file and the
/// rounds go on.
#[test]
fn power_loss_during_compaction() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MAPKV_BOOT_ID", MAIN_BOOT);
    let s = seed("powerloss_compaction");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.mapkv");
    let db = Options::new()
        .durability(Durability::Sync)
        .initial_size(64 << 10)
        .growth_step(256 << 10)
        .map_reserve(1 << 26)
        .open(&path)
        .unwrap();
    db.flush().unwrap();
    let mut rng = Rng::new(s);
    let mut irng = ImgRng(s ^ 0xc0de);
    let mut model = Model::new();
    let mut tally = Tally::default();
    let key = |i: u64| format!("k{i:03}").into_bytes();
    let mut compactions = 0;
    for round in 0..6 {
        let sim = Simulator::attach(&path);
        for _ in 0..40 + rng.below(40) {
            let k = key(rng.below(60));
            if rng.chance(70) {
                let n = rng.below(400) as usize;
                let v = rng.bytes(n);
                db.insert(&k, &v).unwrap();
                model.push(vec![(k, Some(v))]);
            } else if db.remove(&k).unwrap() {
                model.push(vec![(k, None)]);
            }
        }
        let done = model.commits.len() as u64;
        // Every commit is Sync: the simulator must have seen its syncs
        // (after a compaction too: the handle keeps its durability).
        assert!(sim.syncs() > 0, "round {round}: no sync seen");
        sim.set_progress(Progress {
            durable: done,
            committed: done,
            started: done,
        });
        // Crash points while the compaction runs.
        let new_file = ".store.mapkv.mapkv-compact-".to_string();
        let (p, sim) = (path.clone(), Arc::new(sim));
        let s2 = sim.clone();
        let hook = add_io_hook(Arc::new(move |hp: &Path, op: IoOp, phase: Phase| {
            let ours = hp
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&new_file));
            let point = phase == Phase::Before
                && ((ours && matches!(op, IoOp::Msync { .. } | IoOp::Fsync | IoOp::Trim { .. }))
                    || (hp == p.as_path() && op == IoOp::Rename));
            if point {
                s2.crash_point(&format!("compaction round {round}: before {op:?}"));
            }
            None
        }));
        let r = db.compact().unwrap();
        drop(hook);
        compactions += 1;
        assert_eq!(r.keys, model.state.len() as u64);
        let points = sim.take_points();
        assert!(points.len() >= 3, "too few crash points: {}", points.len());
        for cp in points {
            tally.crash_points += 1;
            check_point(dir.path(), &cp, round, &model, &mut irng, 2, &mut tally);
        }
        drop(sim);
        // After the rename: the new file as it is on disk, after a reboot.
        let img = std::fs::read(&path).unwrap();
        let k = check_image(
            dir.path(),
            &format!("round {round}: the compacted file after a reboot"),
            &img,
            done,
            done,
            &model,
            &format!("after-compaction-{round}"),
        );
        assert_eq!(k as u64, done);
        tally.images += 1;
    }
    eprintln!(
        "power loss during compaction: {compactions} compactions, {} crash points, {} images, \
         {} process-crash images, 0 acknowledged commits lost, MAPKV_SEED={s}",
        tally.crash_points, tally.images, tally.process_images
    );
}

// ---------------------------------------------------------------------------
// Eviction under power loss.

/// The cache's capacity in `power_loss_during_eviction` (the smallest one).
const EV_CAP: u64 = 256 << 10;
/// Keys the eviction test writes: about twice what fits.
const EV_KEYS: u64 = 1_600;

/// Which file a crash point is an image of, and what it must hold.
#[derive(Clone, Copy, Debug)]
enum EvTag {
    /// The file the store's name points at in epoch `e` (epoch `e + 1`
    /// begins with the `e + 1`-th eviction's rename): it must hold exactly
    /// a prefix of that epoch's commits, everything acknowledged included.
    Store(u64),
    /// The new file of the eviction that begins epoch `e`, just before its
    /// rename: if the rename survives the crash, that file is the store, so
    /// it must already be durable: after a reboot, exactly the state the
    /// eviction left (its base).
    NewBeforeRename(u64),
    /// The store's file right after the rename that begins epoch `e`: its
    /// state is the epoch's base, which must be a subset of the state before,
    /// with the same values (nothing stale, nothing invented).
    AfterRename(u64),
}

/// What the hooks of the eviction test keep: one simulator for the store's
/// file (replaced at each rename), one for each eviction's new file, and
/// the crash points taken.
struct EvState {
    store_path: PathBuf,
    /// `.NAME.mapkv-compact-`: an eviction's new file.
    new_prefix: String,
    store: Option<Simulator>,
    epoch: u64,
    /// Simulators of new files being built (at most one at a time).
    new_files: Vec<(PathBuf, Simulator)>,
    progress: Progress,
    capture_commits: bool,
    points: Vec<(EvTag, CrashPoint)>,
    /// Syncs of the store's name (a Sync commit makes one): the epoch of
    /// the last one says which file a commit went to.
    last_sync_epoch: u64,
    /// Syncs of the store's name.
    store_syncs: u64,
    /// Crash points taken at the syncs of new files and at renames.
    eviction_points: u64,
}

impl EvState {
    fn drain_store(&mut self) {
        if let Some(s) = &self.store {
            let e = self.epoch;
            let pts = s.take_points();
            self.points
                .extend(pts.into_iter().map(|cp| (EvTag::Store(e), cp)));
        }
    }
}

struct EvSims {
    state: Arc<Mutex<EvState>>,
    _hook: mapkv::testing::HookGuard,
}

impl Drop for EvSims {
    fn drop(&mut self) {
        // Drop the simulators before the hook: dropping the hook drops the
        // state it holds, and a simulator dropped then would remove its own
        // hook while the hook list is locked.
        let (store, new_files) = {
            let mut s = self.lock();
            (s.store.take(), std::mem::take(&mut s.new_files))
        };
        drop(store);
        drop(new_files);
    }
}

impl EvSims {
    fn attach(path: &Path) -> EvSims {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let state = Arc::new(Mutex::new(EvState {
            store_path: path.to_path_buf(),
            new_prefix: format!(".{name}.mapkv-compact-"),
            store: Some(Simulator::attach(path)),
            epoch: 0,
            new_files: Vec::new(),
            progress: Progress::default(),
            capture_commits: false,
            points: Vec::new(),
            last_sync_epoch: 0,
            store_syncs: 0,
            eviction_points: 0,
        }));
        let st = state.clone();
        let hook = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            let is_new = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&s.new_prefix));
            if is_new && phase == Phase::Before {
                if !s.new_files.iter().any(|(q, _)| q == p) {
                    // The new file's first sync: it was created and synced
                    // by the open that made it, so it is durable as it is
                    // (but for the control block, which no reboot trusts).
                    let sim = Simulator::attach(p);
                    sim.set_progress(s.progress);
                    s.new_files.push((p.to_path_buf(), sim));
                }
                if matches!(op, IoOp::Msync { .. } | IoOp::Fsync | IoOp::Trim { .. }) {
                    // A crash here leaves the old file as the store.
                    s.eviction_points += 1;
                    let label = format!(
                        "eviction {} (epoch {}): before {op:?} of the new file",
                        s.epoch + 1,
                        s.epoch
                    );
                    s.store.as_ref().unwrap().crash_point(&label);
                }
                return None;
            }
            if p != s.store_path {
                return None;
            }
            match (op, phase) {
                (IoOp::Msync { .. } | IoOp::Fsync, Phase::After) => {
                    s.last_sync_epoch = s.epoch;
                    s.store_syncs += 1;
                }
                (IoOp::Rename, Phase::Before) => {
                    s.eviction_points += 2;
                    let e = s.epoch;
                    s.store.as_ref().unwrap().crash_point(&format!(
                        "eviction {} (epoch {e}): before the rename",
                        e + 1
                    ));
                    let (_, new) = s.new_files.last().expect("a rename without a new file");
                    new.crash_point(&format!(
                        "eviction {}: the new file before the rename",
                        e + 1
                    ));
                    let pts = new.take_points();
                    s.points.extend(
                        pts.into_iter()
                            .map(|cp| (EvTag::NewBeforeRename(e + 1), cp)),
                    );
                }
                (IoOp::Rename, Phase::After) => {
                    // The name now points at the new file, durably (the
                    // directory was synced). Follow it.
                    s.drain_store();
                    s.store = None;
                    s.new_files.clear();
                    s.epoch += 1;
                    s.eviction_points += 1;
                    let sim = Simulator::attach(&s.store_path);
                    sim.capture_syncs(s.capture_commits);
                    sim.set_progress(s.progress);
                    sim.crash_point(&format!("eviction {}: right after the rename", s.epoch));
                    let e = s.epoch;
                    let pts = sim.take_points();
                    s.points
                        .extend(pts.into_iter().map(|cp| (EvTag::AfterRename(e), cp)));
                    s.store = Some(sim);
                }
                _ => {}
            }
            None
        }));
        EvSims { state, _hook: hook }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EvState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_progress(&self, p: Progress) {
        let mut s = self.lock();
        s.progress = p;
        if let Some(sim) = &s.store {
            sim.set_progress(p);
        }
        for (_, sim) in &s.new_files {
            sim.set_progress(p);
        }
    }

    fn capture_commits(&self, on: bool) {
        let mut s = self.lock();
        s.capture_commits = on;
        if let Some(sim) = &s.store {
            sim.capture_syncs(on);
        }
    }

    fn crash_point(&self, label: &str) {
        self.lock().store.as_ref().unwrap().crash_point(label);
    }

    fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The epoch of the last sync of the store's name, and how many there
    /// were.
    fn syncs(&self) -> (u64, u64) {
        let s = self.lock();
        (s.last_sync_epoch, s.store_syncs)
    }

    fn take_points(&self) -> Vec<(EvTag, CrashPoint)> {
        let mut s = self.lock();
        s.drain_store();
        std::mem::take(&mut s.points)
    }
}

/// The commits that went to one file of the store: its state when it
/// became the store (commit 0 of `model`), then commits `base_n + 1 ..`.
struct Epoch {
    base_n: u64,
    model: Model,
}

impl Epoch {
    fn new(base_n: u64, base: &BTreeMap<Vec<u8>, Vec<u8>>) -> Epoch {
        let mut model = Model::new();
        model.push(
            base.iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
        );
        Epoch { base_n, model }
    }

    /// The model's index for the state after global commit `n` (the base
    /// for commits it already holds).
    fn index(&self, n: u64) -> u64 {
        (n.saturating_sub(self.base_n) + 1).min(self.model.commits.len() as u64)
    }
}

#[derive(Default, Debug)]
struct EvTally {
    ops: u64,
    commits: u64,
    evictions: u64,
    background: u64,
    inline: u64,
    evicted: u64,
    crash_points: u64,
    eviction_points: u64,
    images: u64,
    process_images: u64,
    double_crash: u64,
    /// Images whose recovered file was longer than the capacity: after a
    /// reboot, after a process crash; the longest file, the furthest log
    /// tail.
    overshoots: u64,
    overshoots_same_boot: u64,
    max_file_len: u64,
    max_tail: u64,
    refills: u64,
    gets: u64,
}

/// Threads of this process other than the ones in `before`, among those an
/// eviction in the background may be running in.
/// Threads started since `before` by this test: mapkv's background
/// threads (named `mapkv-evict`, `mapkv-compact`), and threads that still
/// carry the calling thread's name (a thread just spawned has not named
/// itself yet). Not the other tests of this binary, which run in threads
/// named after them: one that started after `before` was taken and ran
/// longer than the wait made `wait_for_threads` fail (found by
/// scripts/soak, MAPKV_SEED=13040142810819971422).
fn new_threads(before: &BTreeSet<u64>) -> Vec<u64> {
    let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .filter(|t| !before.contains(t))
        .filter(|t| {
            // A thread that ended between the listing and this read has
            // no comm: it is not running.
            std::fs::read_to_string(format!("/proc/self/task/{t}/comm"))
                .is_ok_and(|c| c.starts_with("mapkv-") || c == me)
        })
        .collect()
}

fn threads() -> BTreeSet<u64> {
    new_threads(&BTreeSet::new()).into_iter().collect()
}

/// Open a crash image of a cache after a reboot (or, with `boot` =
/// `MAIN_BOOT`, after a process crash), check it, and find the prefix of
/// `epoch`'s commits in `lo..=hi` (model indices) it holds. Also notes
/// whether recovery left the file past the capacity, and for some images
/// writes on until an eviction ran, which must bring it back.
#[allow(clippy::too_many_arguments)]
fn check_cache_image(
    dir: &Path,
    name: &str,
    img: &[u8],
    lo: u64,
    hi: u64,
    model: &Model,
    boot: &str,
    refill: bool,
    tally: &mut EvTally,
) -> usize {
    let path = dir.join("image.mapkv");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, img).unwrap();
    let me = threads();
    let db = open_cache_as(&path, boot).unwrap_or_else(|e| panic!("{name}: open failed: {e}"));
    // Alone on a copy: nothing to join.
    assert_ne!(db.stats().opened, mapkv::OpenKind::Joined, "{name}");
    db.check()
        .unwrap_or_else(|e| panic!("{name}: check failed: {e}"));
    let (state, h) = read_state(&db);
    assert_eq!(db.len(), state.len() as u64, "{name}: len");
    let k = (lo as usize..=hi as usize)
        .rev()
        .find(|&k| model.hashes[k] == h && model.state_at(k) == state)
        .unwrap_or_else(|| {
            let kept = keep_image(name, img);
            let want = model.state_at(lo as usize);
            let missing: Vec<_> = want
                .iter()
                .filter(|(k, v)| state.get(*k) != Some(v))
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .take(5)
                .collect();
            let extra: Vec<_> = state
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .take(5)
                .collect();
            panic!(
                "{name}: recovered state ({} keys) is not the state after any prefix {lo}..={hi} \
                 of the epoch's commits ({} keys after {lo}); keys missing or different: \
                 {missing:?}; keys not expected or different: {extra:?}; image kept as {}",
                state.len(),
                want.len(),
                kept.display()
            )
        });
    let cs = db.cache_stats();
    assert_eq!(cs.capacity, EV_CAP, "{name}: the capacity did not survive");
    if cs.file_len > EV_CAP {
        // Recovery may need room for the index it rebuilds, but no more
        // than that: the file ends at the granule after the log. (It once
        // doubled the file, as growth does outside a cache.)
        assert!(
            cs.file_len <= cs.used_bytes.next_multiple_of(64 << 10),
            "{name}: recovery grew the file to {} bytes for a log of {} in a cache of {EV_CAP}",
            cs.file_len,
            cs.used_bytes
        );
        if boot == MAIN_BOOT {
            tally.overshoots_same_boot += 1;
        } else {
            tally.overshoots += 1;
        }
        tally.max_file_len = tally.max_file_len.max(cs.file_len);
        tally.max_tail = tally.max_tail.max(cs.used_bytes);
    }
    if refill {
        // Write on: the next eviction must bring the file within the
        // capacity, whatever recovery left.
        let mut i = 0u64;
        while db.cache_stats().eviction_runs < 1 {
            db.insert(format!("refill{i}"), [7u8; 300])
                .unwrap_or_else(|e| panic!("{name}: write after recovery: {e}"));
            i += 1;
            assert!(i < 20_000, "{name}: no eviction after {i} writes");
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            db.cache_stats().file_len <= EV_CAP && len <= EV_CAP,
            "{name}: the file is {len} bytes after an eviction, past the capacity {EV_CAP}"
        );
        db.check()
            .unwrap_or_else(|e| panic!("{name}: check after refill: {e}"));
        tally.refills += 1;
    }
    drop(db);
    // An eviction the writes above started in the background must be over
    // before the next image takes this file's name.
    wait_for_threads(&me, name);
    k
}

/// Open a crash image of a cache as after a reboot (`boot`), or after a
/// process crash (`MAIN_BOOT`). Without evicting ahead: `Db::check` goes
/// through the write path, and on a cache past the evict-ahead threshold
/// (recovery after a reboot leaves it there) it would start an eviction in
/// the background that changes the state while it is read. Writes that
/// find the cache full still evict, in the writing thread.
fn open_cache_as(path: &Path, boot: &str) -> mapkv::Result<Db> {
    std::env::set_var("MAPKV_BOOT_ID", boot);
    let r = Options::new()
        .map_reserve(1 << 26)
        .evict_ahead(false)
        .open(path);
    std::env::set_var("MAPKV_BOOT_ID", MAIN_BOOT);
    r
}

/// `double_crash` for a cache image: recovery of `img` after a reboot is
/// made to fail at its j-th sync, after the page cache is captured then;
/// that capture (same boot) and the original image (another reboot) must
/// both recover to the state an uninterrupted recovery gave (`expect`).
fn cache_double_crash(
    dir: &Path,
    name: &str,
    img: &[u8],
    expect: usize,
    model: &Model,
    tally: &mut EvTally,
) {
    for j in 1..=4u32 {
        let path = dir.join("dc.mapkv");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, img).unwrap();
        let seen = Arc::new(Mutex::new((0u32, None::<Vec<u8>>)));
        let s2 = seen.clone();
        let me = path.clone();
        let guard = add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
            if p != me || phase != Phase::Before || !matches!(op, IoOp::Msync { .. } | IoOp::Fsync)
            {
                return None;
            }
            let mut s = s2.lock().unwrap();
            s.0 += 1;
            if s.0 == j {
                s.1 = Some(std::fs::read(&me).unwrap());
                return Some(std::io::Error::other("injected crash during recovery"));
            }
            None
        }));
        let boot = format!("dc-ev-boot-{j}");
        let r = open_cache_as(&path, &boot);
        drop(guard);
        let captured = seen.lock().unwrap().1.take();
        match (r, captured) {
            (Ok(db), None) => {
                drop(db);
                break;
            }
            (Err(_), Some(mid)) => {
                let e = expect as u64;
                let what = format!("{name} / recovery crashed at sync {j}");
                let k1 = check_cache_image(
                    dir,
                    &format!("{what}, same boot"),
                    &mid,
                    e,
                    e,
                    model,
                    &boot,
                    false,
                    tally,
                );
                let k2 = check_cache_image(
                    dir,
                    &format!("{what}, reboot"),
                    img,
                    e,
                    e,
                    model,
                    &format!("{boot}-again"),
                    false,
                    tally,
                );
                assert_eq!((k1, k2), (expect, expect), "{what}");
                tally.double_crash += 1;
            }
            (Ok(_), Some(_)) => panic!("{name}: recovery ignored an injected sync failure"),
            (Err(e), None) => panic!("{name}: recovery failed without injection: {e}"),
        }
    }
}

/// Keep a crash image that failed its check, for a post-mortem.
fn keep_image(name: &str, img: &[u8]) -> PathBuf {
    let n: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(80)
        .collect();
    let p = std::env::temp_dir().join(format!("mapkv-eviction-{}-{n}.mapkv", std::process::id()));
    let _ = std::fs::write(&p, img);
    p
}

/// Wait until the threads started since `before` (evictions in the
/// background) have ended.
fn wait_for_threads(before: &BTreeSet<u64>, what: &str) {
    let waited = std::time::Instant::now();
    while !new_threads(before).is_empty() {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(30),
            "{what}: a background eviction did not finish"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

fn evict_ops() -> usize {
    std::env::var("MAPKV_POWERLOSS_EVICT_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(900)
}

/// Eviction under power loss. A cache (`Sync`, 256 KiB) takes random
/// inserts (some with a TTL), removes, batches (some large enough that the
/// write itself must evict) and reads over twice as many keys as fit, so
/// that evictions run, in the background after a write or inside one.
/// Crash points are taken before every sync of each eviction's new file,
/// right before and right after its rename, at a sample of the commits'
/// syncs and between operations. Each crash point is checked as a process
/// crash (the page cache, same boot) and as power losses (old, new and
/// torn pages, either length, after a reboot):
///
/// - an image of the store's file as it was before a rename (the old
///   file) must hold exactly a prefix of its commits that includes every
///   acknowledged one: the old file's key set as acknowledged is intact,
///   eviction changes nothing in it;
/// - an image of the eviction's new file taken before the rename must,
///   after a reboot, hold exactly what the new file holds at the rename
///   (it must be durable before the name points at it);
/// - the new file at the rename holds a subset of the acknowledged state
///   with exactly the acknowledged values (an evicted key is absent, never
///   stale), and the store, read live afterwards, holds exactly that plus
///   the commits made since.
///
/// Every image must open, pass `Db::check`, keep the capacity, and for a
/// sample, writes after the recovery must bring the file back within the
/// capacity. `MAPKV_POWERLOSS_EVICT_OPS` (default 900) scales it.
#[test]
fn power_loss_during_eviction() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MAPKV_BOOT_ID", MAIN_BOOT);
    let s = seed("powerloss_eviction");
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.mapkv");
    let db = Options::new()
        .durability(Durability::Sync)
        .capacity(EV_CAP)
        .initial_size(64 << 10)
        .growth_step(64 << 10)
        .map_reserve(1 << 26)
        .open(&path)
        .unwrap();
    db.flush().unwrap();
    let mut rng = Rng::new(s);
    let mut irng = ImgRng(s ^ 0xe71c);
    let mut t = EvTally::default();
    let key = |i: u64| format!("k{i:04}").into_bytes();
    let value = |rng: &mut Rng, lo: u64, hi: u64| {
        let n = (lo + rng.below(hi - lo)) as usize;
        rng.bytes(n)
    };
    let ttl = std::time::Duration::from_secs(3600);

    // Fill the cache to near its first eviction, unobserved.
    let mut epochs: BTreeMap<u64, Epoch> = BTreeMap::new();
    epochs.insert(0, Epoch::new(0, &BTreeMap::new()));
    let mut n = 0u64;
    while db.cache_stats().used_bytes < EV_CAP * 3 / 4 {
        let mut b = db.batch();
        let mut c = Commit::new();
        for _ in 0..40 {
            let k = key(rng.below(EV_KEYS));
            let v = value(&mut rng, 50, 400);
            b.insert(&k, &v);
            c.push((k, Some(v)));
        }
        b.commit().unwrap();
        epochs.get_mut(&0).unwrap().model.push(c);
        n += 1;
    }
    assert_eq!(db.cache_stats().eviction_runs, 0, "evicted while filling");
    db.flush().unwrap();
    let sims = EvSims::attach(&path);
    let me = threads();
    for step in 0..evict_ops() {
        t.ops += 1;
        sims.set_progress(Progress {
            durable: n,
            committed: n,
            started: n + 1,
        });
        sims.capture_commits(rng.chance(15));
        let epoch_before = sims.epoch();
        let syncs_before = sims.syncs().1;
        let mut commit: Option<Commit> = None;
        let r = rng.below(100);
        if r < 40 {
            let k = key(rng.below(EV_KEYS));
            let v = value(&mut rng, 20, 500);
            if rng.chance(15) {
                db.insert_with_ttl(&k, &v, ttl).unwrap();
            } else {
                db.insert(&k, &v).unwrap();
            }
            commit = Some(vec![(k, Some(v))]);
        } else if r < 50 {
            let k = key(rng.below(EV_KEYS));
            if db.remove(&k).unwrap() {
                commit = Some(vec![(k, None)]);
            }
        } else if r < 70 {
            // A batch; 1 in 5 too large for the room eviction keeps ahead,
            // so that the write itself finds the cache full and evicts.
            let big = r >= 66;
            let mut b = db.batch();
            let mut c = Commit::new();
            let n_ops = if big {
                25 + rng.below(20)
            } else {
                1 + rng.below(12)
            };
            for j in 0..n_ops {
                let k = key(rng.below(EV_KEYS));
                if j > 0 && !big && rng.chance(25) {
                    b.remove(&k);
                    c.push((k, None));
                } else {
                    let v = value(&mut rng, if big { 200 } else { 20 }, 450);
                    if rng.chance(10) {
                        b.insert_with_ttl(&k, &v, ttl);
                    } else {
                        b.insert(&k, &v);
                    }
                    c.push((k, Some(v)));
                }
            }
            b.commit().unwrap();
            commit = Some(c);
        } else if r < 92 {
            // A read (it also marks the entry for a second chance); the
            // live store is exact between evictions.
            let k = key(rng.below(EV_KEYS));
            let got = db.get(&k).unwrap();
            let e = epochs.values().next_back().unwrap();
            assert_eq!(
                got.as_deref(),
                e.model.state.get(&k).map(|v| &v[..]),
                "step {step}: get {} (MAPKV_SEED={s})",
                String::from_utf8_lossy(&k)
            );
            t.gets += 1;
        } else {
            sims.crash_point(&format!("between ops, step {step}"));
        }
        let (sync_epoch, syncs_after) = sims.syncs();
        if commit.is_some() {
            // Every Sync commit syncs the file it went to.
            assert!(
                syncs_after > syncs_before,
                "step {step}: a commit without a sync"
            );
            sims.set_progress(Progress {
                durable: n + 1,
                committed: n + 1,
                started: n + 1,
            });
        }
        // Let an eviction started in the background by this write finish
        // (so that every crash point sees one writer at a time).
        wait_for_threads(&me, &format!("step {step} (MAPKV_SEED={s})"));
        let epoch_after = sims.epoch();
        if let Some(c) = &commit {
            t.commits += 1;
            if sync_epoch == epoch_before {
                epochs.get_mut(&epoch_before).unwrap().model.push(c.clone());
            }
        }
        let points = sims.take_points();
        // New epochs first: each begins with the state its rename left.
        for (tag, cp) in &points {
            let EvTag::AfterRename(e) = *tag else {
                continue;
            };
            let p = cp.progress;
            let name = format!("step {step} {}", cp.label);
            // The new file as a crashed process leaves it (same boot), and
            // after a reboot: the same state, read back.
            let path_img = dir.path().join("image.mapkv");
            let _ = std::fs::remove_file(&path_img);
            std::fs::write(&path_img, &cp.live).unwrap();
            let base = {
                let db = open_cache_as(&path_img, MAIN_BOOT)
                    .unwrap_or_else(|err| panic!("{name}: open failed: {err}"));
                db.check()
                    .unwrap_or_else(|err| panic!("{name}: check failed: {err}"));
                read_state(&db).0
            };
            t.process_images += 1;
            // The new file holds the state after some commit between the
            // acknowledged and the started ones (an eviction in the
            // background may have begun before the writer said it was
            // done), less what was evicted; every value as it was then.
            let prev = &epochs[&(e - 1)];
            let (lo, hi) = (prev.index(p.committed), prev.index(p.started));
            let at = (lo..=hi)
                .rev()
                .map(|i| (i, prev.model.state_at(i as usize)))
                .find(|(_, before)| base.iter().all(|(k, v)| before.get(k) == Some(v)));
            let Some((at, before)) = at else {
                let before = prev.model.state_at(hi as usize);
                let bad: Vec<_> = base
                    .iter()
                    .filter(|(k, v)| before.get(*k) != Some(*v))
                    .map(|(k, v)| {
                        let was = prev.model.state_at(lo as usize).get(k).map(|w| w.len());
                        format!(
                            "{} ({} bytes; before the eviction: {:?} bytes)",
                            String::from_utf8_lossy(k),
                            v.len(),
                            before.get(k).map(|w| w.len()).or(was)
                        )
                    })
                    .take(5)
                    .collect();
                panic!(
                    "{name}: the new file holds keys with values they did not have before the \
                     eviction (stale or invented): {bad:?} (MAPKV_SEED={s})"
                );
            };
            t.evicted += (before.len() - base.len()) as u64;
            t.evictions += 1;
            let base_n = prev.base_n + at - 1;
            let ep = Epoch::new(base_n, &base);
            let k = check_cache_image(
                dir.path(),
                &format!("{name} / after a reboot"),
                &cp.live,
                1,
                1,
                &ep.model,
                &format!("after-rename-{step}-{e}"),
                false,
                &mut t,
            );
            assert_eq!(k, 1);
            t.images += 1;
            epochs.insert(e, ep);
        }
        if epoch_after > epoch_before {
            if let Some(c) = &commit {
                if sync_epoch > epoch_before {
                    // The write evicted, then went to the new file.
                    t.inline += 1;
                    assert_eq!(sync_epoch, epoch_after, "step {step}");
                    epochs.get_mut(&sync_epoch).unwrap().model.push(c.clone());
                } else {
                    t.background += 1;
                }
            }
        }
        if commit.is_some() {
            n += 1;
        }
        for (tag, cp) in &points {
            t.crash_points += 1;
            let p = cp.progress;
            match *tag {
                EvTag::AfterRename(_) => {}
                EvTag::Store(e) => {
                    let ep = &epochs[&e];
                    let lo = ep.index(p.durable);
                    let hi = ep.index(p.started);
                    let name = format!("step {step} {} (epoch {e})", cp.label);
                    let k = check_cache_image(
                        dir.path(),
                        &format!("{name} / live image, same boot"),
                        &cp.live,
                        ep.index(p.committed),
                        hi,
                        &ep.model,
                        MAIN_BOOT,
                        false,
                        &mut t,
                    );
                    assert!(k as u64 >= ep.index(p.committed));
                    t.process_images += 1;
                    for (i, (label, img)) in cp.images(&mut irng, 2).into_iter().enumerate() {
                        let name = format!("{name} / {label}");
                        let boot = format!("reboot-ev-{step}-{i}-{}", irng.next());
                        let refill = i == 1 && irng.below(4) == 0;
                        let k = check_cache_image(
                            dir.path(),
                            &name,
                            &img,
                            lo,
                            hi,
                            &ep.model,
                            &boot,
                            refill,
                            &mut t,
                        );
                        t.images += 1;
                        if i == 0 && irng.below(8) == 0 {
                            cache_double_crash(dir.path(), &name, &img, k, &ep.model, &mut t);
                        }
                    }
                }
                EvTag::NewBeforeRename(e) => {
                    let Some(ep) = epochs.get(&e) else {
                        panic!("step {step}: {}: the rename did not happen", cp.label)
                    };
                    let name = format!("step {step} {}", cp.label);
                    for (i, (label, img)) in cp.images(&mut irng, 2).into_iter().enumerate() {
                        let boot = format!("reboot-new-{step}-{i}-{}", irng.next());
                        let k = check_cache_image(
                            dir.path(),
                            &format!("{name} / {label}"),
                            &img,
                            1,
                            1,
                            &ep.model,
                            &boot,
                            false,
                            &mut t,
                        );
                        assert_eq!(k, 1);
                        t.images += 1;
                    }
                }
            }
        }
        if epoch_after > epoch_before {
            // The live store holds exactly the new epoch's state.
            let (state, _) = read_state(&db);
            let cur = &epochs[&epoch_after].model.state;
            assert!(
                &state == cur,
                "step {step}: after the eviction the store holds {} keys, the model {} \
                 (MAPKV_SEED={s})",
                state.len(),
                cur.len()
            );
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= EV_CAP, "step {step}: file {len} > capacity");
            epochs.retain(|&e, _| e >= epoch_after);
        }
    }
    let cs = db.cache_stats();
    t.eviction_points = sims.lock().eviction_points;
    drop(sims);
    db.check().unwrap();
    assert!(cs.file_len <= EV_CAP, "{cs:?}");
    eprintln!(
        "power loss during eviction: {} ops, {} commits, {} evictions ({} in the background \
         after a write, {} inside a write; {} entries evicted; store's count {}), {} crash points \
         ({} at the syncs and renames of evictions), {} power-loss images, {} process-crash \
         images, {} double-crash recoveries; recovery left the file past the capacity of {} bytes \
         in {} images after a reboot and {} after a process crash (file up to {} bytes, log \
         tail up to {}), {} refills after recovery back within it; {} gets; 0 acknowledged \
         commits lost, {:.1?}, MAPKV_SEED={s}",
        t.ops,
        t.commits,
        t.evictions,
        t.background,
        t.inline,
        t.evicted,
        cs.eviction_runs,
        t.crash_points,
        t.eviction_points,
        t.images,
        t.process_images,
        t.double_crash,
        EV_CAP,
        t.overshoots,
        t.overshoots_same_boot,
        t.max_file_len,
        t.max_tail,
        t.refills,
        t.gets,
        started.elapsed()
    );
    assert!(t.evictions >= 3, "too few evictions: {t:?}");
    assert!(t.inline >= 1 && t.background >= 1, "{t:?}");
}
