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

use std::path::Path;
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
