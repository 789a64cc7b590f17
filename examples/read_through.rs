//! A read-through cache shared by worker processes, with single flight:
//! each worker asks for keys (many workers asking for the same popular
//! keys at the same time), and `Db::get_or_insert_with` computes a missing
//! key in one process while the others wait for its result instead of
//! computing it too.
//!
//! ```text
//! cargo run --release --example read_through [WORKERS]
//! ```
//!
//! Every worker asks for 400 keys drawn from 500 (skewed: a few keys are
//! hot), and each computation takes 2 ms. The parent then reports the
//! store-wide hit ratio (`Db::cache_stats`, counted by every process), how
//! many computations ran, and how many single flight saved: requests that
//! missed and waited for another worker's result instead of computing it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mapkv::Options;

const KEYS: u64 = 500;
const REQUESTS: u64 = 400;
const COMPUTE: Duration = Duration::from_millis(2);

/// The "expensive" function being cached.
fn compute(n: u64) -> Vec<u8> {
    std::thread::sleep(COMPUTE);
    format!("page {n}: {:>100}", "rendered").into_bytes()
}

/// A small, seedable PRNG (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Skewed towards small numbers: the product of two uniform draws.
    fn skewed(&mut self, n: u64) -> u64 {
        (self.next() % n) * (self.next() % n) / n
    }
}

fn main() -> mapkv::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker(&args[1], args[2].parse().expect("worker id"));
    }
    let workers: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(8);
    let dir = tempfile_dir();
    let path = dir.join("read_through.mapkv");
    let _ = std::fs::remove_file(&path);
    // The parent creates the cache; workers open it as it is.
    let cache = Options::new().capacity(16 << 20).open(&path)?;
    println!(
        "{workers} workers, {REQUESTS} requests each over {KEYS} keys, {COMPUTE:?} per computation"
    );
    let started = Instant::now();
    let exe = std::env::current_exe().expect("own path");
    let kids: Vec<_> = (0..workers)
        .map(|id| {
            Command::new(&exe)
                .args(["worker", &path.display().to_string(), &id.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    let mut computed = 0u64;
    for kid in kids {
        let out = kid.stdout.expect("worker output");
        for line in BufReader::new(out).lines() {
            let line = line.expect("worker output");
            if let Some(n) = line.strip_prefix("computed ") {
                computed += n.parse::<u64>().expect("a count");
            }
        }
    }
    let s = cache.cache_stats();
    let requests = workers * REQUESTS;
    println!("{requests} requests in {:.2?}", started.elapsed());
    println!(
        "hit ratio {:.1}% ({} hits, {} misses, counted by every process)",
        100.0 * s.hit_ratio(),
        s.hits,
        s.misses
    );
    // Every miss would have computed without single flight.
    let saved = s.misses.saturating_sub(computed);
    println!(
        "{computed} computations for {} distinct keys; single flight saved {saved} \
         (misses that waited for another worker's result instead of computing it)",
        cache.len()
    );
    assert_eq!(computed, cache.len(), "one computation per key");
    cache.close()?;
    std::fs::remove_file(&path).ok();
    Ok(())
}

fn worker(path: &str, id: u64) -> mapkv::Result<()> {
    let cache = Options::new().open(path)?;
    let mut rng = Rng(id.wrapping_mul(7919) + 1);
    let mut computed = 0u64;
    for _ in 0..REQUESTS {
        let n = rng.skewed(KEYS);
        let key = n.to_le_bytes();
        let mut ran = false;
        let v = cache.get_or_insert_with(key, None, || {
            ran = true;
            compute(n)
        })?;
        assert_eq!(v.as_slice(), &compute_fast(n)[..]);
        computed += ran as u64;
    }
    println!("computed {computed}");
    cache.close()
}

/// What `compute` returns, without the wait (to check values).
fn compute_fast(n: u64) -> Vec<u8> {
    format!("page {n}: {:>100}", "rendered").into_bytes()
}

/// Where the cache lives: tmpfs if there is one (a memory-only cache).
fn tempfile_dir() -> std::path::PathBuf {
    if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}
