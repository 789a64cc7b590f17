//! Several worker processes share one store as a cache: each looks a key
//! up, and on a miss computes the value (slowly) and inserts it, so the
//! other workers find it. The store is on tmpfs (`/dev/shm`) when there is
//! one: a memory-only cache with no disk I/O. It is a bounded cache
//! (`Options::capacity`, 1 MiB, smaller than all the values together), so
//! it evicts the entries nobody read lately, and every entry expires after
//! a minute.
//!
//! ```text
//! cargo run --release --example shared_cache [WORKERS]
//! ```
//! Each worker asks for 5,000 keys drawn from 20,000 (skewed towards small
//! ones); a worker that misses a key computes it and inserts it. (Two
//! workers that miss the same key at the same moment both compute it; the
//! later insert wins, with the same value.) Workers check a sample of the
//! values they get against a fresh computation.

use std::process::Command;
use std::time::{Duration, Instant};

use mapkv::{Db, Options};

const KEYS: u64 = 20_000;
const REQUESTS: u64 = 5_000;

/// The "expensive" function being cached.
fn compute(n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    format!(
        "f({n}) = {x:016x} {:>80}",
        "(padding, as if the result were big)"
    )
    .into_bytes()
}

fn main() -> mapkv::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker(&args[1], args[2].parse().expect("worker id"));
    }
    let workers: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(4);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    let path = dir.path().join("cache.mapkv");
    // The capacity is stored in the file: the workers' plain opens keep to it.
    let db = Options::new().capacity(1 << 20).open(&path)?;
    println!("cache: {} ({workers} worker processes)", path.display());
    let started = Instant::now();
    let children: Vec<_> = (0..workers)
        .map(|id| {
            Command::new(std::env::current_exe().expect("own path"))
                .args([
                    "worker",
                    path.to_str().expect("UTF-8 path"),
                    &id.to_string(),
                ])
                .spawn()
                .expect("start worker")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("worker exit").success(), "a worker failed");
    }
    let s = db.cache_stats();
    println!(
        "all workers done in {:?}; the cache holds {} entries in {} KiB of {} KiB; \
         {} evicted in {} evictions",
        started.elapsed(),
        db.len(),
        s.file_len >> 10,
        s.capacity >> 10,
        s.evictions,
        s.eviction_runs
    );
    assert!(s.file_len <= s.capacity);
    Ok(())
}

fn worker(path: &str, id: u32) -> mapkv::Result<()> {
    let db = Db::open(path)?;
    let mut x = 0x2545_f491_4f6c_dd1d ^ (id as u64) << 32;
    for i in 0..REQUESTS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Skewed: small keys are asked for far more often.
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let k = ((u * u * u) * KEYS as f64) as u64;
        let key = format!("f:{k}");
        let value = match db.get(&key)? {
            Some(v) => v.to_vec(),
            None => {
                let v = compute(k);
                db.insert_with_ttl(&key, &v, Duration::from_secs(60))?;
                v
            }
        };
        if i % 97 == 0 {
            assert_eq!(value, compute(k), "worker {id}: wrong value for {key}");
        }
    }
    let s = db.cache_stats(); // this handle's hits and misses
    println!(
        "worker {id} (pid {}): {} hits, {} misses ({:.0}% hit ratio)",
        std::process::id(),
        s.hits,
        s.misses,
        100.0 * s.hit_ratio()
    );
    Ok(())
}
