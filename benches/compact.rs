//! Compaction on the comparison workload: 1 M keys of 24 bytes with
//! 150-byte values, half of them removed, then `Db::compact`.
//!
//! ```text
//! cargo bench --bench compact
//! ```
//! Reports the file before and after, after / live key+value bytes (the
//! target is at most 1.3), how long compaction took, and how long writers
//! waited (the final catch-up under the writer lock). Then the same again
//! while another handle writes (a steady 20 k inserts/s, as another process
//! would) and a reader measures `get` latency throughout: readers must
//! never wait. `MAPKV_COMPACT_KEYS` changes N.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mapkv::{Db, Options};

#[path = "common/workload.rs"]
mod workload;
use workload::{key, value, VALUE};

fn build(path: &std::path::Path, n: u64) -> Db {
    let db = Options::new().expected_keys(n).open(path).unwrap();
    let mut b = db.batch();
    for i in 0..n {
        b.insert(key(i), value(i));
        if i % 1000 == 999 {
            b.commit().unwrap();
            b = db.batch();
        }
    }
    b.commit().unwrap();
    let mut b = db.batch();
    for i in (0..n).step_by(2) {
        b.remove(key(i));
        if i % 2000 == 1998 {
            b.commit().unwrap();
            b = db.batch();
        }
    }
    b.commit().unwrap();
    db.flush().unwrap();
    db
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of benchmarks
    }
    let n: u64 = std::env::var("MAPKV_COMPACT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let live_kv = (n / 2) * (24 + VALUE as u64);
    println!("compact: {n} keys of 24 bytes, {VALUE}-byte values, every other key removed");
    println!();
    println!("| scenario | file before | file after | after / live key+value bytes | compaction | writers waited | max get latency during it |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");

    // 1. Quiet store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.mapkv");
    let db = build(&path, n);
    let r = db.compact().unwrap();
    for i in [1, n - 1, n / 2 + 1] {
        assert_eq!(db.get(key(i)).unwrap().as_deref(), Some(&value(i)[..]));
    }
    assert!(db.get(key(0)).unwrap().is_none());
    println!(
        "| quiet | {:.1} MiB | {:.1} MiB | {:.3} | {:.0?} | {:.1?} | |",
        mib(r.len_before),
        mib(r.len_after),
        r.len_after as f64 / live_kv as f64,
        r.duration,
        r.writer_pause
    );
    drop(db);

    // 2. With a writer and a reader on another handle.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.mapkv");
    let db = build(&path, n);
    let other = Db::open(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (other, stop) = (other.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 1;
            let start = Instant::now();
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // 20 k inserts/s: 20 per millisecond.
                for _ in 0..20 {
                    other.insert(key(i), value(i + 7)).unwrap();
                    i = (i + 2) % n;
                    done += 1;
                }
                let due = Duration::from_micros(done * 50);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            done
        })
    };
    let reader = {
        let (other, stop) = (other.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut i = 1u64;
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let v = other.get(key(i)).unwrap();
                worst = worst.max(t.elapsed());
                assert!(v.is_some());
                i = ((i + 2 * 7919) % n) | 1;
                reads += 1;
            }
            (worst, reads)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let r = db.compact().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let (worst, reads) = reader.join().unwrap();
    println!(
        "| 20 k inserts/s and a reader on another handle | {:.1} MiB | {:.1} MiB | {:.3} | {:.0?} | {:.1?} ({} commits caught up) | {:.1?} ({reads} gets) |",
        mib(r.len_before),
        mib(r.len_after),
        r.len_after as f64 / live_kv as f64,
        r.duration,
        r.writer_pause,
        r.caught_up,
        worst
    );
    let _ = written;
    db.check().unwrap();
}
