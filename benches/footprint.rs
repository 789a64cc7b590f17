//! Memory and file footprint of the comparison workload (1 M keys of 24
//! bytes, 150-byte values): loads a store, closes it, reopens it, reads every
//! key in random order, and prints the file size and the process's peak
//! memory (anonymous memory and mapped file pages counted apart).
//!
//! ```text
//! cargo bench --bench footprint
//! ```

use mapkv::Db;

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[path = "common/workload.rs"]
mod workload;
use workload::key;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for the list of benchmarks
    }
    let n = 1_000_000u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("footprint.mapkv");
    {
        let db = Db::open(&path).unwrap();
        let mut b = db.batch();
        for i in 0..n {
            b.insert(key(i), [(i % 251) as u8; 150]);
            if b.len() == 1000 {
                std::mem::replace(&mut b, db.batch()).commit().unwrap();
            }
        }
        b.commit().unwrap();
    }
    let file = std::fs::metadata(&path).unwrap().len();
    let db = Db::open(&path).unwrap();
    let mut x = 1u64;
    let mut buf = Vec::new();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert!(db.get_into(key(x % n), &mut buf).unwrap());
    }
    let raw = n * (24 + 150);
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("keys: {n}, raw keys+values: {:.1} MiB", mib(raw));
    println!(
        "file after close: {:.1} MiB ({:.3}x raw)",
        mib(file),
        file as f64 / raw as f64
    );
    println!(
        "peak resident: {:.1} MiB (VmHWM; mapped file pages included)",
        mib(status("VmHWM:") * 1024)
    );
    println!(
        "now: anonymous {:.1} MiB, mapped file {:.1} MiB",
        mib(status("RssAnon:") * 1024),
        mib(status("RssFile:") * 1024)
    );
}
