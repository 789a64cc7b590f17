//! Power cuts through the real kernel: a writer process runs on the crash
//! file system, the power is cut at a random moment, and the store is
//! opened on a fresh mount of what the disk kept and checked against what
//! the writer acknowledged (see `mapkv_crashfs::harness`).
//!
//! `MAPKV_CRASHFS_SECS` (default 15) and `MAPKV_CRASHFS_ROUNDS` set the
//! length; `MAPKV_SEED` replays the loop's choices. Needs `/dev/fuse` and
//! `fusermount3` (Debian: `apt-get install fuse3`): without them the test
//! fails and says so.

use std::ffi::OsString;
use std::time::Duration;

use mapkv_crashfs::harness::{default_work, env_u64, run, Config};

fn seed() -> u64 {
    env_u64("MAPKV_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

/// The loop with `writer`, for `MAPKV_CRASHFS_SECS` (default 15).
fn power_cuts(name: &str, writer: Vec<OsString>) {
    let cfg = Config {
        writer,
        writer_name: name.into(),
        checker: env!("CARGO_BIN_EXE_crashfs-writer").into(),
        budget: Duration::from_secs(env_u64("MAPKV_CRASHFS_SECS").unwrap_or(15)),
        max_rounds: env_u64("MAPKV_CRASHFS_ROUNDS").unwrap_or(u64::MAX),
        seed: seed(),
        work: default_work(),
        rotate_bytes: 8 << 20,
        lying_disk: false,
    };
    println!("crashfs ({name}): MAPKV_SEED={}", cfg.seed);
    let f = run(&cfg);
    println!("{}", f.line(name));
    // The loop ran and the check had something to hold the store to.
    assert!(f.cuts > 0, "no power cut happened");
    assert!(f.acked > 0, "the writers acknowledged nothing");
}

#[test]
fn power_cuts_under_the_rust_writer() {
    power_cuts("rust", vec![env!("CARGO_BIN_EXE_crashfs-writer").into()]);
}

/// The same loop with the Python writer (`crashfs/python/crashfs_writer.py`,
/// the `mapkv` Python package). Run it with
/// `MAPKV_CRASHFS_PYTHON=<a python3 that imports mapkv> cargo test -p
/// mapkv-crashfs --test crashfs -- --ignored` (.ci/run does, after
/// `pip install ./python`).
#[test]
#[ignore = "needs a Python with the mapkv package: set MAPKV_CRASHFS_PYTHON"]
fn power_cuts_under_the_python_writer() {
    let py = std::env::var_os("MAPKV_CRASHFS_PYTHON")
        .expect("MAPKV_CRASHFS_PYTHON: a python3 that can import mapkv");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/crashfs_writer.py");
    power_cuts("python", vec![py, script.into()]);
}

/// The check can fail: on a disk whose FSYNC makes nothing durable, a cut
/// that drops the unsynced writes loses acknowledged `Sync` commits, and
/// the loop must say so.
#[test]
fn a_disk_that_lies_about_fsync_is_caught() {
    let cfg = Config {
        writer: vec![env!("CARGO_BIN_EXE_crashfs-writer").into()],
        writer_name: "rust, lying disk".into(),
        checker: env!("CARGO_BIN_EXE_crashfs-writer").into(),
        budget: Duration::from_secs(60),
        max_rounds: 200,
        seed: seed(),
        work: default_work(),
        rotate_bytes: 8 << 20,
        lying_disk: true,
    };
    let r = std::panic::catch_unwind(|| run(&cfg));
    let msg = match r {
        Ok(f) => panic!("a lying disk went unnoticed: {}", f.line("lying")),
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "?".into()),
    };
    assert!(
        msg.contains("holds no prefix") || msg.contains("after the cut"),
        "failed for another reason: {msg}"
    );
    println!(
        "caught, as it should be: {}",
        msg.lines().last().unwrap_or("")
    );
}
