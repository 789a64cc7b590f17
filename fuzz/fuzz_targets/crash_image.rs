//! `crash_image`: an arbitrary operation sequence plus an arbitrary choice of
//! lost and torn pages, checked against the durability contract.
//!
//! The store runs under the power-loss simulator of the test suite
//! (tests/common/powerloss.rs): it records what each msync/fsync made
//! durable and takes a crash point before every sync (in the middle of a
//! commit) and at the end. The input picks one crash point and, for every
//! page that differs between the durable and the live image, whether the
//! page is old, new, or torn at 512-byte sectors, and which file length
//! survived. The image is opened as after a reboot; it must open, pass
//! `Db::check`, and hold the state after some prefix of the commits that
//! keeps everything acknowledged as durable. The live image (a process
//! crash) must hold every commit whose call returned.

#![no_main]

#[path = "../../tests/common/powerloss.rs"]
#[allow(dead_code)]
mod powerloss;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mapkv::{Durability, Options};
use mapkv_fuzz::scratch_dir;
use powerloss::{read_state, Commit, Model, PageChoice, Progress, Simulator};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(u8, u16, u8),
    Remove(u8),
    Batch(Vec<(u8, Option<(u16, u8)>)>),
    Flush,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// 0: None, 1: Async, 2 and up: Sync.
    durability: u8,
    ops: Vec<Op>,
    /// Which crash point: before sync number `point % 256`, or at the
    /// end if there were fewer.
    point: u16,
    /// The durable file length survived (else the live one).
    durable_len: bool,
    /// One byte per dirty page: 0-95 old, 96-191 new, else torn (the byte
    /// is the sector mask).
    pages: Vec<u8>,
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k % 32]
}

fn value(len: u16, fill: u8) -> Vec<u8> {
    // Mostly small values; sometimes a few KiB so the file grows.
    vec![fill; (len % 6000) as usize]
}

fuzz_target!(|input: Input| {
    if input.ops.len() > 64 {
        return;
    }
    let dir = scratch_dir();
    let path = dir.path().join("crash.mapkv");
    let durability = match input.durability {
        0 => Durability::None,
        1 => Durability::Async,
        _ => Durability::Sync,
    };
    std::env::set_var("MAPKV_BOOT_ID", mapkv_fuzz::BASE_BOOT);
    let db = Options::new()
        .durability(durability)
        .initial_size(64 << 10)
        .growth_step(128 << 10)
        .map_reserve(1 << 24)
        .open(&path)
        .unwrap();
    let sim = Simulator::attach(&path);
    sim.capture_syncs(true);
    // The crash point: before sync number `point % 256`, or at the end if
    // there were fewer syncs. Only that one is copied.
    sim.capture_only(Some(input.point as u64 % 256));
    let mut model = Model::new();
    let mut durable = 0u64;
    for op in &input.ops {
        let committed = model.commits.len() as u64;
        let started = committed + !matches!(op, Op::Flush) as u64;
        sim.set_progress(Progress {
            durable,
            committed,
            started,
        });
        match op {
            Op::Insert(k, len, fill) => {
                let v = value(*len, *fill);
                db.insert(key(*k), &v).unwrap();
                model.push(vec![(key(*k), Some(v))]);
            }
            Op::Remove(k) => {
                if db.remove(key(*k)).unwrap() {
                    model.push(vec![(key(*k), None)]);
                }
            }
            Op::Batch(items) => {
                let mut b = db.batch();
                let mut c = Commit::new();
                for (k, v) in items.iter().take(20) {
                    match v {
                        Some((len, fill)) => {
                            let v = value(*len % 300, *fill);
                            b.insert(key(*k), &v);
                            c.push((key(*k), Some(v)));
                        }
                        None => {
                            b.remove(key(*k));
                            c.push((key(*k), None));
                        }
                    }
                }
                if !c.is_empty() {
                    b.commit().unwrap();
                    model.push(c);
                }
            }
            Op::Flush => {
                db.flush().unwrap();
                durable = model.commits.len() as u64;
            }
        }
        if durability == Durability::Sync {
            durable = model.commits.len() as u64;
        }
    }
    let n = model.commits.len() as u64;
    sim.set_progress(Progress {
        durable,
        committed: n,
        started: n,
    });
    sim.crash_point("end");
    let points = sim.take_points();
    // The chosen sync's point if it came, then the one at the end.
    let cp = &points[0];
    let p = cp.progress;

    // A process crash: the page cache, same boot.
    let live = dir.path().join("live.mapkv");
    std::fs::write(&live, &cp.live).unwrap();
    let db2 = Options::new().map_reserve(1 << 24).open(&live).unwrap();
    db2.check().unwrap();
    let (_, h) = read_state(&db2);
    assert!(
        (p.committed..=p.started).any(|k| model.hashes[k as usize] == h),
        "{}: process-crash image lost an acknowledged commit",
        cp.label
    );
    drop(db2);

    // A power loss: the chosen pages and length, after a reboot.
    let mut i = 0;
    let img = cp.build(!input.durable_len, |_| {
        let b = input.pages.get(i).copied().unwrap_or(0);
        i += 1;
        match b {
            0..=95 => PageChoice::Old,
            96..=191 => PageChoice::New,
            m => PageChoice::Torn(m),
        }
    });
    let lost = dir.path().join("lost.mapkv");
    std::fs::write(&lost, &img).unwrap();
    std::env::set_var("MAPKV_BOOT_ID", mapkv_fuzz::OTHER_BOOT);
    let db3 = Options::new()
        .map_reserve(1 << 24)
        .open(&lost)
        .unwrap_or_else(|e| panic!("{}: power-loss image does not open: {e}", cp.label));
    std::env::set_var("MAPKV_BOOT_ID", mapkv_fuzz::BASE_BOOT);
    db3.check()
        .unwrap_or_else(|e| panic!("{}: power-loss image fails check: {e}", cp.label));
    let (state, h) = read_state(&db3);
    let k = (p.durable..=p.started).find(|&k| model.hashes[k as usize] == h);
    match k {
        Some(k) => assert!(model.state_at(k as usize) == state, "hash collision"),
        None => panic!(
            "{}: power-loss image is not a prefix of the commits between {} (durable) and {} (started)",
            cp.label, p.durable, p.started
        ),
    }
    drop(db);
});
