//! How long `open` takes on a 1 M-key store (24-byte keys, 150-byte
//! values) after a clean close, after a process crash (the file as the page
//! cache holds it while the store is open) and after a simulated power loss
//! (the same bytes, opened with another boot id, so the index is rebuilt
//! from the log).
//!
//! ```text
//! cargo bench --bench recovery
//! ```

use std::time::{Duration, Instant};

use mapkv::{Db, OpenKind};

#[path = "common/workload.rs"]
mod workload;
use workload::key;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_open(path: &std::path::Path, boot: Option<&str>, want: OpenKind, n: u64) -> Duration {
    match boot {
        Some(b) => std::env::set_var("MAPKV_BOOT_ID", b),
        None => std::env::remove_var("MAPKV_BOOT_ID"),
    }
    let t = Instant::now();
    let db = Db::open(path).unwrap();
    let d = t.elapsed();
    std::env::remove_var("MAPKV_BOOT_ID");
    assert_eq!(db.stats().opened, want);
    assert_eq!(db.len(), n);
    // Do not close cleanly: keep the image as it was for the next run.
    std::mem::forget(db);
    d
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = 1_000_000u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.mapkv");
    let db = Db::open(&path).unwrap();
    let mut b = db.batch();
    for i in 0..n {
        b.insert(key(i), [(i % 251) as u8; 150]);
        if b.len() == 1000 {
            std::mem::replace(&mut b, db.batch()).commit().unwrap();
        }
    }
    b.commit().unwrap();
    // A process crash: copy what the page cache holds while the store is
    // open, with the last 1000 commits not yet in the index's checkpoint.
    let crash = dir.path().join("crash.mapkv");
    std::fs::copy(&path, &crash).unwrap();
    db.close().unwrap();

    let runs = 5;
    let mut clean = vec![];
    let mut replay = vec![];
    let mut rebuild = vec![];
    for i in 0..runs {
        let c = dir.path().join(format!("clean{i}.mapkv"));
        std::fs::copy(&path, &c).unwrap();
        clean.push(time_open(&c, None, OpenKind::Clean, n));
        let p = dir.path().join(format!("crash{i}.mapkv"));
        std::fs::copy(&crash, &p).unwrap();
        replay.push(time_open(&p, None, OpenKind::Replayed, n));
        let r = dir.path().join(format!("reboot{i}.mapkv"));
        std::fs::copy(&crash, &r).unwrap();
        rebuild.push(time_open(
            &r,
            Some(&format!("bench-reboot-{i}")),
            OpenKind::Rebuilt,
            n,
        ));
    }
    println!(
        "open of a 1 M-key store ({} MiB), median of {runs}:",
        std::fs::metadata(&path).unwrap().len() >> 20
    );
    println!("  after a clean close:                 {:?}", median(clean));
    println!(
        "  after a process crash (replay):      {:?}",
        median(replay)
    );
    println!(
        "  after a power loss (index rebuilt):  {:?}",
        median(rebuild)
    );
}
