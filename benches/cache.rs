//! Cache mode (`Options::capacity`) on a Zipf-distributed trace: mapkv's
//! hit ratio against an exact LRU of the same size, and the throughput of
//! the cache with 1 and 2 processes sharing it.
//!
//! ```text
//! cargo bench --bench cache                                        # 1 M keys, 10 M requests (a few minutes)
//! MAPKV_CACHE_KEYS=100000 MAPKV_CACHE_REQUESTS=1000000 cargo bench --bench cache
//! MAPKV_CACHE_REPEATS=1 cargo bench --bench cache                  # one throughput run instead of 3
//! ```
//!
//! Run without `--bench` (`cargo test --benches`) it is a smoke test:
//! 20,000 keys, 200,000 requests, one run.
//!
//! **The trace.** N keys (`MAPKV_CACHE_KEYS`, default 1,000,000) and R
//! requests (`MAPKV_CACHE_REQUESTS`, default 10,000,000) for alpha 0.8 and
//! 1.0. Rank r (0-based) is drawn with probability proportional to
//! `1 / (r + 1)^alpha` by inverting the CDF (a table of N doubles, a guide
//! table of N buckets and a binary search within the bucket), and mapped to
//! a key id through a fixed random permutation of 0..N, so the hot keys are
//! spread over the key space. Everything is seeded SplitMix64: the same
//! trace on every run and in every process.
//!
//! **The reference.** An exact LRU (a HashMap from key to node and a doubly
//! linked list over Vec indices; O(1) per request) of N/10 entries runs the
//! whole trace, cold start included. For reference only, two more LRU runs:
//! one sized to the mean number of keys mapkv held, and one over the two
//! 2-process traces interleaved request by request.
//!
//! **mapkv.** The same trace, cache-aside: `get_into` (the buffer-reusing
//! `get`); on a miss, `insert` the key (8 bytes: the key id, little endian)
//! with a 100-byte value derived from the key id, so every hit is checked
//! against the value it must have (a wrong value fails the benchmark). The
//! capacity is chosen so that a full cache holds N/10 entries: the 12 KiB
//! header, the index table mapkv uses for N/10 keys (8 bytes per slot; the
//! smallest power of two that keeps them at or below 3/4 load, as
//! `log2cap_for` in src/index/mod.rs), and N/10 records of 24 + 8 + 100
//! bytes rounded up to 8 (136). `Options::capacity` rounds it down to
//! 64 KiB. Default evict fraction (0.1). `cache_stats()` (resident keys,
//! file length against the capacity, also on disk) and `stats()` (index
//! size, dead bytes) are sampled every 100,000 requests (every R/100 for
//! short traces); this run also times every insert (a write that finds the
//! cache full waits for an eviction). The store lives in /dev/shm when it
//! exists, else in a temporary directory.
//!
//! **Throughput.** Each run gets a fresh, empty cache file and child
//! processes (this binary re-executed with `MAPKV_CACHE_ROLE` set): one
//! process running the whole trace, or two processes each running its own
//! trace of R/2 requests (other seeds, same keys). Each child builds its
//! trace and opens the store, says `ready` and waits for a line on stdin;
//! the parent sends the start line to all of them at once. Throughput is
//! all requests over the slowest worker's time; `MAPKV_CACHE_REPEATS` runs
//! (default 3) of each, median shown. "Other CPU" is the share of the
//! machine that other programs used while a run measured (from /proc/stat,
//! less the workers' own CPU time); above a few percent the run was
//! disturbed.

#[path = "common/workload.rs"]
mod workload;
use workload::Rng;
#[path = "common/kids.rs"]
mod kids;
use kids::{
    await_start, child_env, clock_ticks_per_s, env_num, own_cpu_ticks, CpuStat, Fields, Kids,
};
#[path = "common/fmt.rs"]
mod fmt;
use fmt::{fmt_rate, mib};

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mapkv::{CacheStats, Db, Options, Stats};

const ENV_KEYS: &str = "MAPKV_CACHE_KEYS";
const ENV_REQUESTS: &str = "MAPKV_CACHE_REQUESTS";
const ENV_REPEATS: &str = "MAPKV_CACHE_REPEATS";
// Child side.
const ENV_ROLE: &str = "MAPKV_CACHE_ROLE";
const ENV_PATH: &str = "MAPKV_CACHE_PATH";
const ENV_ALPHA: &str = "MAPKV_CACHE_ALPHA";
const ENV_SEED: &str = "MAPKV_CACHE_SEED";
const ENV_COUNT: &str = "MAPKV_CACHE_COUNT";
const ENV_CAPACITY: &str = "MAPKV_CACHE_CAPACITY";
const ENV_SAMPLE: &str = "MAPKV_CACHE_SAMPLE";

const ALPHAS: [f64; 2] = [0.8, 1.0];
/// Value bytes per entry.
const VALUE_LEN: usize = 100;
/// Key bytes per entry.
const KEY_LEN: u64 = 8;
/// The record header of mapkv's log.
const RECORD_HEADER: u64 = 24;
/// Meta A, meta B and the control block.
const FILE_HEADER: u64 = 12 * 1024;
/// Seed of the rank -> key permutation (the same in every process).
const PERM_SEED: u64 = 0x7065_726d_7574_6521;
/// Trace seeds: the 1-process trace (also the one the LRU and the hit
/// ratio run use), and the two traces of the 2-process runs.
const SEED_MAIN: u64 = 1;
const SEED_PAIR: [u64; 2] = [2, 3];

// ---------------------------------------------------------------------------
// The Zipf trace

/// Inverse-CDF sampling of Zipf ranks 0..n.
struct Zipf {
    /// `cdf[r]` = P(rank <= r); the last is exactly 1.
    cdf: Vec<f64>,
    /// `guide[j]` = the number of ranks whose cdf is <= j / n: the search
    /// for a u in [j/n, (j+1)/n) starts there. n + 1 entries.
    guide: Vec<u32>,
}

impl Zipf {
    fn new(n: usize, alpha: f64) -> Zipf {
        assert!(n > 0 && n < u32::MAX as usize);
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0f64;
        for r in 0..n {
            sum += ((r + 1) as f64).powf(-alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        cdf[n - 1] = 1.0;
        let g = n;
        let mut guide = Vec::with_capacity(g + 1);
        let mut r = 0usize;
        for j in 0..=g {
            let t = j as f64 / g as f64;
            while r < n && cdf[r] <= t {
                r += 1;
            }
            guide.push(r as u32);
        }
        Zipf { cdf, guide }
    }

    /// The rank for u in [0, 1): the smallest r with `cdf[r] > u`.
    #[inline]
    fn rank(&self, u: f64) -> usize {
        let n = self.cdf.len();
        let g = self.guide.len() - 1;
        let j = ((u * g as f64) as usize).min(g - 1);
        let lo = self.guide[j] as usize;
        let hi = (self.guide[j + 1] as usize + 1).min(n);
        let r = (lo + self.cdf[lo..hi].partition_point(|&c| c <= u)).min(n - 1);
        // Rounding at a bucket edge: fall back to a search of the whole table.
        if self.cdf[r] > u && (r == 0 || self.cdf[r - 1] <= u) {
            r
        } else {
            self.cdf.partition_point(|&c| c <= u).min(n - 1)
        }
    }
}

/// A fixed random permutation of 0..n (Fisher-Yates).
fn permutation(n: usize) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng(PERM_SEED);
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// `count` key ids drawn from `zipf`, ranks mapped through `perm`.
fn trace(zipf: &Zipf, perm: &[u32], count: u64, seed: u64) -> Vec<u32> {
    // Spread the small seeds over the state space.
    let mut rng = Rng(Rng(seed ^ 0x5eed_f7ac).next());
    (0..count)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            perm[zipf.rank(u)]
        })
        .collect()
}

/// The key of key id `k`.
#[inline]
fn cache_key(k: u32) -> [u8; KEY_LEN as usize] {
    (k as u64).to_le_bytes()
}

/// The value of key id `k`: the id, then bytes derived from it.
#[inline]
fn cache_value(k: u32) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    v[..8].copy_from_slice(&(k as u64).to_le_bytes());
    let mut r = Rng(k as u64 ^ 0xcace_f00d);
    for c in v[8..].chunks_mut(8) {
        let x = r.next().to_le_bytes();
        c.copy_from_slice(&x[..c.len()]);
    }
    v
}

// ---------------------------------------------------------------------------
// Exact LRU

const NIL: u32 = u32::MAX;

/// An exact LRU cache of key ids: a HashMap from key to node, and a doubly
/// linked list (most recent at the head) over Vec indices.
struct Lru {
    cap: usize,
    map: HashMap<u32, u32>,
    key: Vec<u32>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
}

impl Lru {
    fn new(cap: usize) -> Lru {
        let cap = cap.max(1);
        Lru {
            cap,
            map: HashMap::with_capacity(cap),
            key: Vec::with_capacity(cap),
            prev: Vec::with_capacity(cap),
            next: Vec::with_capacity(cap),
            head: NIL,
            tail: NIL,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (p, n) = (self.prev[i as usize], self.next[i as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
    }

    fn push_front(&mut self, i: u32) {
        self.prev[i as usize] = NIL;
        self.next[i as usize] = self.head;
        if self.head != NIL {
            self.prev[self.head as usize] = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// Request `k`: whether it was a hit. A miss inserts it, evicting the
    /// least recently used entry when full.
    fn access(&mut self, k: u32) -> bool {
        if let Some(&i) = self.map.get(&k) {
            if self.head != i {
                self.unlink(i);
                self.push_front(i);
            }
            return true;
        }
        let i = if self.key.len() < self.cap {
            self.key.push(k);
            self.prev.push(NIL);
            self.next.push(NIL);
            (self.key.len() - 1) as u32
        } else {
            let i = self.tail;
            self.unlink(i);
            self.map.remove(&self.key[i as usize]);
            self.key[i as usize] = k;
            i
        };
        self.map.insert(k, i);
        self.push_front(i);
        false
    }
}

/// LRU hit ratio of `cap` entries over the requests `reqs` yields.
fn lru_hit_ratio(cap: usize, reqs: impl Iterator<Item = u32>) -> f64 {
    let mut lru = Lru::new(cap);
    let (mut hits, mut total) = (0u64, 0u64);
    for k in reqs {
        hits += lru.access(k) as u64;
        total += 1;
    }
    hits as f64 / total.max(1) as f64
}

// ---------------------------------------------------------------------------
// The mapkv run (shared by the parent's hit-ratio run and the workers)

#[derive(Default)]
struct Outcome {
    requests: u64,
    hits: u64,
    misses: u64,
    wrong: u64,
    /// The first few wrong values: (request index, key id, first 16 bytes).
    wrong_examples: Vec<(usize, u32, Vec<u8>)>,
    /// Time spent in `insert` (if timed), the slowest one, and how many
    /// took over 1 ms (a write that found the cache full waits for an
    /// eviction).
    insert_time: Duration,
    insert_max: Duration,
    inserts_over_1ms: u64,
    inserts_over_1ms_time: Duration,
    /// Index table sizes (slots) seen at the samples, with how often.
    index_slots: std::collections::BTreeMap<u64, u64>,
    /// Dead log bytes (old index tables and padding: nothing is
    /// overwritten or removed here) at the samples.
    dead_sum: u64,
    dead_max: u64,
    samples: u64,
    keys_sum: u64,
    keys_max: u64,
    file_len_max: u64,
    /// Samples where the file (mapping or on disk) or the used bytes were
    /// past the capacity.
    over_capacity: Vec<String>,
}

impl Outcome {
    fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.requests.max(1) as f64
    }
    fn keys_mean(&self) -> f64 {
        self.keys_sum as f64 / self.samples.max(1) as f64
    }
    fn dead_mean(&self) -> f64 {
        self.dead_sum as f64 / self.samples.max(1) as f64
    }
    fn sample(&mut self, s: &CacheStats, st: &Stats, path: &Path, at: usize) {
        *self.index_slots.entry(st.index_capacity).or_default() += 1;
        self.dead_sum += st.dead_bytes;
        self.dead_max = self.dead_max.max(st.dead_bytes);
        self.samples += 1;
        self.keys_sum += s.keys;
        self.keys_max = self.keys_max.max(s.keys);
        let on_disk = std::fs::metadata(path).map_or(0, |m| m.len());
        self.file_len_max = self.file_len_max.max(s.file_len).max(on_disk);
        if (s.file_len > s.capacity || on_disk > s.capacity || s.used_bytes > s.capacity)
            && self.over_capacity.len() < 5
        {
            self.over_capacity.push(format!(
                "request {at}: capacity {}, file_len {}, on disk {on_disk}, used {}",
                s.capacity, s.file_len, s.used_bytes
            ));
        }
    }
}

/// Run `reqs` against the cache, cache-aside. `progress` is called after
/// every `progress_every` requests (0: never).
fn run_trace(
    db: &Db,
    reqs: &[u32],
    time_inserts: bool,
    sample_every: usize,
    progress_every: usize,
    progress: &mut dyn FnMut(usize, &Outcome),
) -> Outcome {
    let path = db.path().to_path_buf();
    let mut o = Outcome::default();
    let mut buf = Vec::with_capacity(128);
    for (j, &k) in reqs.iter().enumerate() {
        let key = cache_key(k);
        let want = cache_value(k);
        let hit = db
            .get_into(key, &mut buf)
            .unwrap_or_else(|e| panic!("mapkv bug? get of key {k} (request {j}) failed: {e}"));
        if hit {
            o.hits += 1;
            if buf[..] != want[..] {
                o.wrong += 1;
                if o.wrong_examples.len() < 5 {
                    o.wrong_examples
                        .push((j, k, buf.iter().take(16).copied().collect()));
                }
            }
        } else {
            o.misses += 1;
            let t = time_inserts.then(Instant::now);
            db.insert(key, want).unwrap_or_else(|e| {
                panic!("mapkv bug? insert of key {k} (request {j}) failed: {e}")
            });
            if let Some(t) = t {
                let d = t.elapsed();
                o.insert_time += d;
                o.insert_max = o.insert_max.max(d);
                if d > Duration::from_millis(1) {
                    o.inserts_over_1ms += 1;
                    o.inserts_over_1ms_time += d;
                }
            }
        }
        o.requests += 1;
        if (j + 1) % sample_every == 0 {
            o.sample(&db.cache_stats(), &db.stats(), &path, j);
        }
        if progress_every != 0 && (j + 1) % progress_every == 0 {
            progress(j + 1, &o);
        }
    }
    o.sample(&db.cache_stats(), &db.stats(), &path, reqs.len());
    o
}

fn fail_on_wrong(o: &Outcome, who: &str) {
    if o.wrong > 0 {
        panic!(
            "MAPKV RETURNED WRONG VALUES ({who}): {} of {} hits; first ones (request, key id, \
             first 16 bytes): {:?}",
            o.wrong, o.hits, o.wrong_examples
        );
    }
    if !o.over_capacity.is_empty() {
        panic!(
            "MAPKV FILE PAST ITS CAPACITY ({who}): {:?}",
            o.over_capacity
        );
    }
}

// ---------------------------------------------------------------------------
// Child side

fn child() {
    let path: PathBuf = child_env(ENV_PATH);
    let n: usize = child_env(ENV_KEYS);
    let alpha: f64 = child_env(ENV_ALPHA);
    let seed: u64 = child_env(ENV_SEED);
    let count: u64 = child_env(ENV_COUNT);
    let capacity: u64 = child_env(ENV_CAPACITY);
    let sample_every: usize = child_env(ENV_SAMPLE);

    let zipf = Zipf::new(n, alpha);
    let perm = permutation(n);
    let reqs = trace(&zipf, &perm, count, seed);
    drop((zipf, perm));
    // No options: the capacity is stored in the file.
    let db = Options::new()
        .open(&path)
        .unwrap_or_else(|e| panic!("worker: open {}: {e}", path.display()));
    let cap = db.cache_stats().capacity;
    assert_eq!(cap, capacity, "worker: the store's capacity");

    if !await_start() {
        return; // the parent is gone
    }
    let ticks0 = own_cpu_ticks();
    let t = Instant::now();
    let o = run_trace(&db, &reqs, false, sample_every, 0, &mut |_, _| {});
    let elapsed = t.elapsed();
    let ticks = own_cpu_ticks() - ticks0;
    let s = db.cache_stats();
    let mut out = std::io::stdout();
    writeln!(
        out,
        "done requests={} hits={} misses={} wrong={} ns={} ticks={} stat_hits={} \
         stat_misses={} evictions={} runs={} keys_mean={:.0} keys_max={} file_len_max={} \
         over={}",
        o.requests,
        o.hits,
        o.misses,
        o.wrong,
        elapsed.as_nanos(),
        ticks,
        s.hits,
        s.misses,
        s.evictions,
        s.eviction_runs,
        o.keys_mean(),
        o.keys_max,
        o.file_len_max,
        o.over_capacity.len(),
    )
    .unwrap();
    out.flush().unwrap();
    if o.wrong > 0 {
        eprintln!("worker: wrong values: {:?}", o.wrong_examples);
    }
    if !o.over_capacity.is_empty() {
        eprintln!("worker: past the capacity: {:?}", o.over_capacity);
    }
    db.close().unwrap();
}

// ---------------------------------------------------------------------------
// Parent side: worker processes

struct WorkerSpec {
    seed: u64,
    count: u64,
}

/// One worker process per spec, on the cache at `path`.
fn spawn_workers(
    cfg: &Config,
    path: &Path,
    alpha: f64,
    capacity: u64,
    specs: &[WorkerSpec],
) -> Kids {
    Kids::spawn(specs.len(), |p, command| {
        command
            .env(ENV_ROLE, "worker")
            .env(ENV_PATH, path)
            .env(ENV_KEYS, cfg.keys.to_string())
            .env(ENV_ALPHA, alpha.to_string())
            .env(ENV_SEED, specs[p].seed.to_string())
            .env(ENV_COUNT, specs[p].count.to_string())
            .env(ENV_CAPACITY, capacity.to_string())
            .env(ENV_SAMPLE, cfg.sample_every.to_string());
    })
}

/// Every worker's report, in worker order, once all have exited.
fn collect(kids: &mut Kids, timeout: Duration) -> Vec<Report> {
    let deadline = Instant::now() + timeout;
    let mut reports: Vec<Option<Report>> = (0..kids.count()).map(|_| None).collect();
    kids.read_lines(deadline, "worker reports", |p, line| {
        reports[p] = Some(Report::parse(&line));
        true
    });
    kids.expect_success(deadline);
    reports.into_iter().map(Option::unwrap).collect()
}

struct Report {
    requests: u64,
    hits: u64,
    wrong: u64,
    elapsed: Duration,
    ticks: u64,
    stat_hits: u64,
    stat_misses: u64,
    evictions: u64,
    runs: u64,
    keys_mean: f64,
    keys_max: u64,
    file_len_max: u64,
    over: u64,
}

impl Report {
    fn parse(line: &str) -> Report {
        let rest = line
            .strip_prefix("done ")
            .unwrap_or_else(|| panic!("unexpected worker line {line:?}"));
        let f = Fields::parse(rest);
        let num = |k: &str| -> u64 { f.num(k) };
        Report {
            requests: num("requests"),
            hits: num("hits"),
            wrong: num("wrong"),
            elapsed: Duration::from_nanos(num("ns")),
            ticks: num("ticks"),
            stat_hits: num("stat_hits"),
            stat_misses: num("stat_misses"),
            evictions: num("evictions"),
            runs: num("runs"),
            keys_mean: num("keys_mean") as f64,
            keys_max: num("keys_max"),
            file_len_max: num("file_len_max"),
            over: num("over"),
        }
    }
}

// ---------------------------------------------------------------------------
// Parent side: configuration, runs and the report

struct Config {
    keys: usize,
    requests: u64,
    repeats: usize,
    /// The capacity asked for, and what the store made of it.
    capacity_asked: u64,
    capacity: u64,
    table_slots: u64,
    sample_every: usize,
    dir: PathBuf,
}

/// mapkv's index size for `entries` keys at 3/4 load: see `log2cap_for` in
/// src/index/mod.rs.
fn table_slots_for(entries: u64) -> u64 {
    let need = entries.saturating_mul(4) / 3 + 1;
    let l = 64 - (need.max(2) - 1).leading_zeros();
    1u64 << l.clamp(9, 32)
}

fn record_len() -> u64 {
    (RECORD_HEADER + KEY_LEN + VALUE_LEN as u64 + 7) & !7
}

fn fresh_cache(cfg: &Config, path: &Path) -> Db {
    let _ = std::fs::remove_file(path);
    Options::new()
        .capacity(cfg.capacity_asked)
        .open(path)
        .unwrap_or_else(|e| panic!("create the cache {}: {e}", path.display()))
}

/// Remove the store and any hidden leftover of an interrupted eviction.
fn remove_store(path: &Path) -> usize {
    let _ = std::fs::remove_file(path);
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut leftovers = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            if f.starts_with(&format!(".{name}")) {
                leftovers += 1;
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    leftovers
}

struct HitRun {
    o: Outcome,
    stats: CacheStats,
    elapsed: Duration,
    index_slots: u64,
    check_keys: u64,
}

fn hit_ratio_run(cfg: &Config, alpha: f64, reqs: &[u32]) -> HitRun {
    let path = cfg.dir.join(format!("hit-{alpha}.mapkv"));
    let db = fresh_cache(cfg, &path);
    assert_eq!(db.cache_stats().capacity, cfg.capacity);
    let t = Instant::now();
    let progress_every = if reqs.len() >= 2_000_000 {
        1_000_000
    } else {
        0
    };
    let total = reqs.len();
    let o = run_trace(
        &db,
        reqs,
        true,
        cfg.sample_every,
        progress_every,
        &mut |done, o| {
            let s = db.cache_stats();
            println!(
                "    {:>5.1} M / {:.1} M requests, {:>5.1} s: hit ratio so far {:.4}, {} keys \
                 resident, {} eviction runs",
                done as f64 / 1e6,
                total as f64 / 1e6,
                t.elapsed().as_secs_f64(),
                o.hit_ratio(),
                s.keys,
                s.eviction_runs
            );
        },
    );
    let elapsed = t.elapsed();
    let stats = db.cache_stats();
    let index_slots = db.stats().index_capacity;
    fail_on_wrong(&o, &format!("hit-ratio run, alpha {alpha}"));
    let report = db
        .check()
        .unwrap_or_else(|e| panic!("mapkv bug? Db::check after the run failed: {e}"));
    let check_keys = report.live_keys;
    db.close().unwrap();
    remove_store(&path);
    HitRun {
        o,
        stats,
        elapsed,
        index_slots,
        check_keys,
    }
}

struct TpRun {
    rate: f64,
    requests: u64,
    hits: u64,
    elapsed_max: Duration,
    per_worker: Vec<String>,
    foreign_pct: f64,
    evictions: u64,
    runs: u64,
    keys_mean: f64,
    keys_max: u64,
    leftovers: usize,
}

impl TpRun {
    fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.requests.max(1) as f64
    }
}

fn worker_specs(cfg: &Config, procs: usize) -> Vec<WorkerSpec> {
    if procs == 1 {
        vec![WorkerSpec {
            seed: SEED_MAIN,
            count: cfg.requests,
        }]
    } else {
        let half = cfg.requests / 2;
        vec![
            WorkerSpec {
                seed: SEED_PAIR[0],
                count: half,
            },
            WorkerSpec {
                seed: SEED_PAIR[1],
                count: cfg.requests - half,
            },
        ]
    }
}

fn throughput_run(cfg: &Config, alpha: f64, procs: usize) -> TpRun {
    let path = cfg.dir.join(format!("tp-{alpha}-{procs}.mapkv"));
    fresh_cache(cfg, &path).close().unwrap();
    let specs = worker_specs(cfg, procs);
    let timeout = Duration::from_secs(600 + cfg.requests / 50_000);
    let (reports, cpu0, cpu1) = {
        let mut kids = spawn_workers(cfg, &path, alpha, cfg.capacity, &specs);
        kids.wait_ready(Duration::from_secs(300));
        let cpu0 = CpuStat::now();
        kids.go();
        let reports = collect(&mut kids, timeout);
        (reports, cpu0, CpuStat::now())
    };
    let leftovers = remove_store(&path);
    for (p, r) in reports.iter().enumerate() {
        assert_eq!(r.requests, specs[p].count);
        if r.wrong > 0 {
            panic!(
                "MAPKV RETURNED WRONG VALUES: worker {p} of {procs}, alpha {alpha}: {} of {} hits \
                 (details on stderr above)",
                r.wrong, r.hits
            );
        }
        if r.over > 0 || r.file_len_max > cfg.capacity {
            panic!(
                "MAPKV FILE PAST ITS CAPACITY: worker {p} of {procs}, alpha {alpha}: largest file \
                 {} > {} (details on stderr above)",
                r.file_len_max, cfg.capacity
            );
        }
        // Hits counted by the handle and by the bench must agree.
        assert_eq!(
            (r.stat_hits, r.stat_misses),
            (r.hits, r.requests - r.hits),
            "worker {p}: cache_stats hits/misses vs the bench's count"
        );
    }
    let requests: u64 = reports.iter().map(|r| r.requests).sum();
    let hits: u64 = reports.iter().map(|r| r.hits).sum();
    let elapsed_max = reports.iter().map(|r| r.elapsed).max().unwrap();
    let ticks: u64 = reports.iter().map(|r| r.ticks).sum();
    let foreign_pct = cpu0.foreign_pct(&cpu1, ticks);
    TpRun {
        rate: requests as f64 / elapsed_max.as_secs_f64(),
        requests,
        hits,
        elapsed_max,
        per_worker: reports
            .iter()
            .map(|r| {
                format!(
                    "{:.2} s, {}/s, {:.2} cores",
                    r.elapsed.as_secs_f64(),
                    fmt_rate(r.requests as f64 / r.elapsed.as_secs_f64()),
                    r.ticks as f64 / clock_ticks_per_s() / r.elapsed.as_secs_f64()
                )
            })
            .collect(),
        foreign_pct,
        evictions: reports.iter().map(|r| r.evictions).max().unwrap(),
        runs: reports.iter().map(|r| r.runs).max().unwrap(),
        keys_mean: reports.iter().map(|r| r.keys_mean).sum::<f64>() / reports.len() as f64,
        keys_max: reports.iter().map(|r| r.keys_max).max().unwrap(),
        leftovers,
    }
}

/// A number with thousands separators.
fn thousands(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct AlphaResult {
    alpha: f64,
    lru: f64,
    lru_at_mean: f64,
    lru_pair: f64,
    hit: HitRun,
    one: Vec<TpRun>,
    two: Vec<TpRun>,
}

/// The median run by throughput.
fn median(runs: &[TpRun]) -> &TpRun {
    let mut order: Vec<&TpRun> = runs.iter().collect();
    order.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    order[order.len() / 2]
}

fn main() {
    if std::env::var(ENV_ROLE).is_ok() {
        child();
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // cargo test --benches asks for the list of benchmarks
    }
    // `cargo bench` passes --bench; without it this is a test run: smoke only.
    let bench = args.iter().any(|a| a == "--bench");
    let keys: usize = env_num(ENV_KEYS).unwrap_or(if bench { 1_000_000 } else { 20_000 });
    let requests: u64 = env_num(ENV_REQUESTS).unwrap_or(if bench { 10_000_000 } else { 200_000 });
    let repeats: usize = env_num(ENV_REPEATS)
        .unwrap_or(if bench { 3 } else { 1 })
        .max(1);
    assert!(keys >= 100, "{ENV_KEYS} must be at least 100");
    assert!(requests >= 2, "{ENV_REQUESTS} must be at least 2");

    let (base, where_) = if Path::new("/dev/shm").is_dir() {
        (
            tempfile::Builder::new()
                .prefix("mapkv-cache-bench")
                .tempdir_in("/dev/shm")
                .expect("a directory in /dev/shm"),
            "/dev/shm (tmpfs)",
        )
    } else {
        (
            tempfile::tempdir().expect("a temporary directory"),
            "a temporary directory (no /dev/shm)",
        )
    };
    let entries = (keys as u64 / 10).max(1);
    let table_slots = table_slots_for(entries);
    let record = record_len();
    let capacity_asked = FILE_HEADER + 8 * table_slots + entries * record;
    let mut cfg = Config {
        keys,
        requests,
        repeats,
        capacity_asked,
        capacity: 0,
        table_slots,
        sample_every: (requests as usize / 100).clamp(1_000, 100_000),
        dir: base.path().to_path_buf(),
    };
    // What the store makes of the capacity (rounded down to 64 KiB).
    {
        let path = cfg.dir.join("probe.mapkv");
        let db = fresh_cache(&cfg, &path);
        cfg.capacity = db.cache_stats().capacity;
        db.close().unwrap();
        remove_store(&path);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cache: {} keys, {} requests per trace, Zipf alpha {:?}; {cores} cores, load average {}",
        thousands(keys as u64),
        thousands(requests),
        ALPHAS,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("store in {where_}: {}", cfg.dir.display());
    println!(
        "capacity for {} entries (10% of the keys): {} B header + {} slots x 8 B index + {} x {} B \
         records = {} B asked, {} B = {:.2} MiB after rounding to 64 KiB; LRU of {} entries; \
         default evict fraction; keys resident sampled every {} requests; {} throughput runs \
         each (median shown)",
        thousands(entries),
        thousands(FILE_HEADER),
        thousands(table_slots),
        thousands(entries),
        record,
        thousands(capacity_asked),
        thousands(cfg.capacity),
        mib(cfg.capacity),
        thousands(entries),
        thousands(cfg.sample_every as u64),
        repeats
    );

    let started = Instant::now();
    let perm = permutation(keys);
    let mut results = Vec::new();
    for alpha in ALPHAS {
        println!();
        println!("== alpha {alpha:.1}");
        let t = Instant::now();
        let zipf = Zipf::new(keys, alpha);
        let reqs = trace(&zipf, &perm, requests, SEED_MAIN);
        let pair: Vec<Vec<u32>> = worker_specs(&cfg, 2)
            .iter()
            .map(|s| trace(&zipf, &perm, s.count, s.seed))
            .collect();
        // The share of requests that go to the hottest 10% of ranks: what a
        // cache of that size holding exactly them would hit.
        let top = zipf.cdf[entries as usize - 1];
        drop(zipf);
        println!(
            "  traces built in {:.1} s; the hottest {} keys get {:.4} of the requests \
             (a perfect cache of that size)",
            t.elapsed().as_secs_f64(),
            thousands(entries),
            top
        );

        let t = Instant::now();
        let lru = lru_hit_ratio(entries as usize, reqs.iter().copied());
        println!(
            "  LRU ({} entries): hit ratio {lru:.4} ({:.1} s)",
            thousands(entries),
            t.elapsed().as_secs_f64()
        );

        println!("  mapkv, 1 handle, the same trace:");
        let hit = hit_ratio_run(&cfg, alpha, &reqs);
        let (o, s) = (&hit.o, &hit.stats);
        println!(
            "  mapkv: hit ratio {:.4} (bench count: {} hits, {} misses) / {:.4} (cache_stats: \
             {} hits, {} misses); {} wrong values; {:.1} s ({}/s, one process, in the bench \
             process, with sampling)",
            o.hit_ratio(),
            thousands(o.hits),
            thousands(o.misses),
            s.hit_ratio(),
            thousands(s.hits),
            thousands(s.misses),
            o.wrong,
            hit.elapsed.as_secs_f64(),
            fmt_rate(o.requests as f64 / hit.elapsed.as_secs_f64())
        );
        println!(
            "  mapkv: keys resident mean {} / max {} ({} samples; LRU holds {}); {} evictions \
             in {} runs ({:.0} per run); largest file {:.2} MiB of {:.2} MiB; index {} slots \
             (assumed {}); at the end {} keys (Db::check: {}), {:.2} MiB live records, {:.2} \
             MiB used",
            thousands(o.keys_mean() as u64),
            thousands(o.keys_max),
            o.samples,
            thousands(entries),
            thousands(s.evictions),
            thousands(s.eviction_runs),
            s.evictions as f64 / s.eviction_runs.max(1) as f64,
            mib(o.file_len_max),
            mib(cfg.capacity),
            thousands(hit.index_slots),
            thousands(cfg.table_slots),
            thousands(s.keys),
            thousands(hit.check_keys),
            mib(s.live_bytes),
            mib(s.used_bytes)
        );
        println!(
            "  mapkv: {} inserts took {:.2} s of the {:.2} s ({:.2} µs each on average, the \
             slowest {:.2} ms; {} over 1 ms, {:.2} s in all: writes that found the cache full \
             and waited for an eviction)",
            thousands(o.misses),
            o.insert_time.as_secs_f64(),
            hit.elapsed.as_secs_f64(),
            o.insert_time.as_secs_f64() * 1e6 / o.misses.max(1) as f64,
            o.insert_max.as_secs_f64() * 1e3,
            thousands(o.inserts_over_1ms),
            o.inserts_over_1ms_time.as_secs_f64()
        );
        println!(
            "  mapkv: index table at the samples: {}; dead log bytes (old index tables, padding) \
             mean {:.2} MiB, max {:.2} MiB",
            o.index_slots
                .iter()
                .map(|(slots, n)| format!("{} slots in {n}", thousands(*slots)))
                .collect::<Vec<_>>()
                .join(", "),
            o.dead_mean() / 1048576.0,
            mib(o.dead_max)
        );
        assert_eq!(
            (s.hits, s.misses),
            (o.hits, o.misses),
            "cache_stats hits/misses vs the bench's count"
        );

        let t = Instant::now();
        let lru_at_mean = lru_hit_ratio(o.keys_mean().round() as usize, reqs.iter().copied());
        let lru_pair = lru_hit_ratio(
            entries as usize,
            (0..pair[1].len()).flat_map(|i| {
                std::iter::once(pair[0].get(i).copied())
                    .chain(std::iter::once(Some(pair[1][i])))
                    .flatten()
            }),
        );
        println!(
            "  reference: LRU of mapkv's mean resident keys ({}): {lru_at_mean:.4}; LRU ({}) over \
             the two 2-process traces interleaved 1:1: {lru_pair:.4} ({:.1} s)",
            thousands(o.keys_mean() as u64),
            thousands(entries),
            t.elapsed().as_secs_f64()
        );
        drop((reqs, pair));

        let mut one = Vec::new();
        let mut two = Vec::new();
        for rep in 1..=cfg.repeats {
            for procs in [1, 2] {
                let r = throughput_run(&cfg, alpha, procs);
                println!(
                    "  throughput, {procs} process{} run {rep}: {:>8}/s ({:.2} s; per worker: {}); \
                     hit ratio {:.4}; keys resident mean {} / max {}; {} evictions in {} runs; \
                     other CPU {:.0}%{}",
                    if procs == 1 { ", " } else { "es," },
                    fmt_rate(r.rate),
                    r.elapsed_max.as_secs_f64(),
                    r.per_worker.join(", "),
                    r.hit_ratio(),
                    thousands(r.keys_mean as u64),
                    thousands(r.keys_max),
                    thousands(r.evictions),
                    thousands(r.runs),
                    r.foreign_pct,
                    if r.leftovers > 0 {
                        format!("; {} leftover eviction file(s) removed", r.leftovers)
                    } else {
                        String::new()
                    }
                );
                if procs == 1 {
                    one.push(r);
                } else {
                    two.push(r);
                }
            }
        }
        results.push(AlphaResult {
            alpha,
            lru,
            lru_at_mean,
            lru_pair,
            hit,
            one,
            two,
        });
    }

    println!();
    println!(
        "N = {} keys, {} requests per trace, cache of {} entries (10%): {:.2} MiB; store in {}; \
         total time {:.0} s",
        thousands(keys as u64),
        thousands(requests),
        thousands(entries),
        mib(cfg.capacity),
        where_,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| alpha | LRU hit ratio | mapkv hit ratio | mapkv − LRU | mapkv ≥ LRU | keys resident \
         (mean / max) | evictions (runs) | 1 process | 2 processes | 2 vs 1 | hit ratio, 2 \
         processes (LRU interleaved) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let (m1, m2) = (median(&r.one), median(&r.two));
        let mapkv = r.hit.o.hit_ratio();
        println!(
            "| {:.1} | {:.4} | {:.4} | {:+.2} pp | {} | {} / {} | {} ({}) | {}/s | {}/s | {:.2}× | \
             {:.4} ({:.4}) |",
            r.alpha,
            r.lru,
            mapkv,
            (mapkv - r.lru) * 100.0,
            if mapkv >= r.lru { "yes" } else { "no" },
            thousands(r.hit.o.keys_mean() as u64),
            thousands(r.hit.o.keys_max),
            thousands(r.hit.stats.evictions),
            thousands(r.hit.stats.eviction_runs),
            fmt_rate(m1.rate),
            fmt_rate(m2.rate),
            m2.rate / m1.rate,
            m2.hit_ratio(),
            r.lru_pair,
        );
    }
    println!();
    println!(
        "Hit ratios over the whole trace, cold start included. mapkv's hit ratio is from the \
         run in this process (cache_stats and the bench's own count agree); the LRU holds \
         exactly {} entries, mapkv at most about that many. Throughput: all requests over the \
         slowest worker's time, median of {} runs, each on a fresh cache file; 1 process runs \
         the LRU's trace, 2 processes run a trace of R/2 each (other seeds).",
        thousands(entries),
        cfg.repeats
    );
    println!();
    for r in &results {
        let (m1, m2) = (median(&r.one), median(&r.two));
        let list = |v: &[TpRun]| {
            v.iter()
                .map(|x| format!("{:.0}", x.rate))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{{\"bench\":\"cache\",\"alpha\":{:.1},\"keys\":{},\"requests\":{},\"entries\":{},\
             \"capacity\":{},\"lru_hit_ratio\":{:.6},\"mapkv_hit_ratio\":{:.6},\
             \"lru_at_mean_keys_hit_ratio\":{:.6},\"keys_mean\":{:.0},\"keys_max\":{},\
             \"evictions\":{},\"eviction_runs\":{},\"rps_1p\":{:.0},\"rps_2p\":{:.0},\
             \"hit_ratio_2p\":{:.6},\"lru_interleaved_hit_ratio\":{:.6},\"runs_rps_1p\":[{}],\
             \"runs_rps_2p\":[{}],\"other_cpu_pct_2p\":{:.1}}}",
            r.alpha,
            keys,
            requests,
            entries,
            cfg.capacity,
            r.lru,
            r.hit.o.hit_ratio(),
            r.lru_at_mean,
            r.hit.o.keys_mean(),
            r.hit.o.keys_max,
            r.hit.stats.evictions,
            r.hit.stats.eviction_runs,
            m1.rate,
            m2.rate,
            m2.hit_ratio(),
            r.lru_pair,
            list(&r.one),
            list(&r.two),
            m2.foreign_pct,
        );
    }
}
