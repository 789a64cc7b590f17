//! Many processes on one store: throughput of random reads and of unsynced
//! single-key writes with 1 and with 2 processes, and, for reference, with 2
//! threads in one process. Same workload as `benches/ops.rs`: 1 M keys of 24
//! bytes, 150-byte random values, random access.
//!
//! ```text
//! cargo bench --bench multiprocess              # everything (a few minutes)
//! cargo bench --bench multiprocess -- read      # scenarios whose name contains "read"
//! MAPKV_MP_SECS=1 MAPKV_MP_REPEATS=1 MAPKV_MP_KEYS=100000 cargo bench --bench multiprocess
//! ```
//!
//! Run without `--bench` (`cargo test --benches`, `cargo test --all-targets`)
//! it is a smoke test: 10,000 keys, 0.1 s per run, one run per scenario.
//!
//! How a run goes: the parent creates the store (in a temporary directory),
//! loads it, flushes it and keeps its own handle open; it then re-executes
//! this binary once per worker process, naming the role in `MAPKV_MP_ROLE`
//! and the store in `MAPKV_MP_PATH`. Each child opens the store itself with
//! `Options::open`, reads every key once (checking its value; this also maps
//! the file's pages into the child), runs the operation for 0.3 s, says
//! `ready` on stdout and waits for a line on stdin. When every child is
//! ready the parent sends the start line to all of them; each worker then
//! runs for the fixed duration, counting operations and timing every 16th
//! one, and reports. The parent checks what the store holds afterwards
//! (live keys, commit count, spot reads; `Db::check` after the first run of
//! each write scenario).
//!
//! Reads share one store. Every write run gets a fresh store holding the
//! 1 M keys, deleted after the run; "new key" stores are created with room
//! in the index for 8 M more keys, so that no index rebuild lands inside a
//! measurement (a run that rebuilt anyway is flagged).
//!
//! Each scenario runs `MAPKV_MP_REPEATS` times (default 3); the table shows
//! the run with the median throughput. `ns/op` is the mean time a worker
//! spends per operation (the workers' summed elapsed time over their summed
//! operations), so for a perfectly parallel scenario it stays flat while the
//! throughput doubles. Percentiles come from the timed operations (every
//! 16th; buckets of 1/8 of an octave, the lower bound is shown).
//!
//! Children die with the parent: they are killed when the parent unwinds
//! (a panic), and a child whose parent vanished reads end-of-file on stdin
//! or gets a broken pipe on stdout and exits.

#[path = "common/workload.rs"]
mod workload;
use workload::{key, value, Rng, VALUE};
#[path = "common/kids.rs"]
mod kids;
use kids::{await_start, child_env, env_num, own_cpu_ticks, CpuStat, Fields, Kids};
#[path = "common/fmt.rs"]
mod fmt;
use fmt::{fmt_rate, mib};

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use mapkv::{Db, Durability, Options};

/// Room in the index of a "new key" store beyond the preloaded keys.
const FRESH_ROOM: u64 = 8_000_000;
/// One operation in this many is timed on its own.
const SAMPLE_EVERY: u64 = 16;
/// How long each worker runs the operation before saying it is ready.
const WARM: Duration = Duration::from_millis(300);

const ENV_ROLE: &str = "MAPKV_MP_ROLE";
const ENV_PATH: &str = "MAPKV_MP_PATH";
const ENV_KEYS: &str = "MAPKV_MP_KEYS";
const ENV_SECS: &str = "MAPKV_MP_SECS";
const ENV_REPEATS: &str = "MAPKV_MP_REPEATS";
const ENV_THREADS: &str = "MAPKV_MP_THREADS";
const ENV_WORKER: &str = "MAPKV_MP_WORKER";

fn load(db: &Db, range: std::ops::Range<u64>) {
    let mut b = db.batch();
    for i in range {
        b.insert(key(i), value(i));
        if b.len() == 1000 {
            std::mem::replace(&mut b, db.batch()).commit().unwrap();
        }
    }
    b.commit().unwrap();
}

/// The first key index of worker `id` in a "new key" run: far above the
/// preloaded keys and the other workers' ranges.
fn fresh_base(n: u64, id: u64) -> u64 {
    n + ((id + 1) << 40)
}

// ---------------------------------------------------------------------------
// Workloads and scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// `get` of a random existing key.
    Read,
    /// `insert` over a random existing key, `Durability::None`.
    Overwrite,
    /// `insert` of a key never written before, `Durability::None`.
    Fresh,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Read => "read",
            Work::Overwrite => "write-overwrite",
            Work::Fresh => "write-new",
        }
    }
    fn from_name(s: &str) -> Work {
        match s {
            "read" => Work::Read,
            "write-overwrite" => Work::Overwrite,
            "write-new" => Work::Fresh,
            other => panic!("unknown {ENV_ROLE} {other:?}"),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Work::Read => "read: `get`, random hit",
            Work::Overwrite => "write: `insert` overwrite, None",
            Work::Fresh => "write: `insert` new key, None",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    work: Work,
    procs: usize,
    threads: usize,
}

impl Scenario {
    fn layout(&self) -> String {
        match (self.procs, self.threads) {
            (1, 1) => "1".to_string(),
            (p, 1) => p.to_string(),
            (1, t) => format!("1 ({t} threads)"),
            (p, t) => format!("{p} ({t} threads each)"),
        }
    }
    fn id(&self) -> String {
        format!("{}/{}p{}t", self.work.name(), self.procs, self.threads)
    }
    /// The 1-process, 1-thread scenario of the same work: the ratio's base.
    fn is_base(&self) -> bool {
        self.procs == 1 && self.threads == 1
    }
}

// ---------------------------------------------------------------------------
// Latency histogram: 8 buckets per octave.

const BUCKETS: usize = 512;

struct Hist {
    counts: Vec<u64>,
    max: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS],
            max: 0,
        }
    }
    fn bucket(ns: u64) -> usize {
        if ns < 8 {
            return ns as usize;
        }
        let l = 63 - ns.leading_zeros() as u64; // >= 3
        let sub = (ns >> (l - 3)) & 7;
        (8 + (l - 3) * 8 + sub) as usize
    }
    fn lower_bound(idx: usize) -> u64 {
        if idx < 8 {
            return idx as u64;
        }
        let l = (idx as u64 - 8) / 8 + 3;
        let sub = (idx as u64 - 8) % 8;
        (8 + sub) << (l - 3)
    }
    #[inline]
    fn record(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
        self.max = self.max.max(ns);
    }
    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
    }
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    fn percentile(&self, p: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::lower_bound(i);
            }
        }
        self.max
    }
    fn encode(&self) -> String {
        let parts: Vec<String> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("{i}:{c}"))
            .collect();
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(",")
        }
    }
    fn decode(s: &str, max: u64) -> Hist {
        let mut h = Hist::new();
        h.max = max;
        if s == "-" {
            return h;
        }
        for part in s.split(',') {
            let (i, c) = part.split_once(':').expect("histogram entry");
            h.counts[i.parse::<usize>().unwrap()] += c.parse::<u64>().unwrap();
        }
        h
    }
}

// ---------------------------------------------------------------------------
// Child side

struct Gen {
    work: Work,
    n: u64,
    r: Rng,
    next_fresh: u64,
    misses: u64,
}

impl Gen {
    #[inline]
    fn op(&mut self, db: &Db) {
        match self.work {
            Work::Read => {
                let i = self.r.next() % self.n;
                match db.get(key(i)).unwrap() {
                    Some(v) => {
                        black_box(v);
                    }
                    None => self.misses += 1,
                }
            }
            Work::Overwrite => {
                let i = self.r.next() % self.n;
                db.insert(key(i), value(i)).unwrap();
            }
            Work::Fresh => {
                let i = self.next_fresh;
                self.next_fresh += 1;
                db.insert(key(i), value(i)).unwrap();
            }
        }
    }
}

struct Tally {
    ops: u64,
    elapsed: Duration,
    hist: Hist,
}

/// Run `g` for `dur` (rounded up to a multiple of SAMPLE_EVERY operations),
/// timing the first operation of every SAMPLE_EVERY.
fn timed(g: &mut Gen, db: &Db, dur: Duration) -> Tally {
    let mut hist = Hist::new();
    let start = Instant::now();
    let end = start + dur;
    let mut ops = 0u64;
    loop {
        let t0 = Instant::now();
        g.op(db);
        let t1 = Instant::now();
        hist.record(t1.duration_since(t0).as_nanos() as u64);
        for _ in 1..SAMPLE_EVERY {
            g.op(db);
        }
        ops += SAMPLE_EVERY;
        if t1 >= end {
            break;
        }
    }
    Tally {
        ops,
        elapsed: start.elapsed(),
        hist,
    }
}

fn child(role: &str) {
    let work = Work::from_name(role);
    let path: PathBuf = child_env(ENV_PATH);
    let n: u64 = child_env(ENV_KEYS);
    let secs: f64 = child_env(ENV_SECS);
    let threads: usize = child_env(ENV_THREADS);
    let first: u64 = child_env(ENV_WORKER);
    let dur = Duration::from_secs_f64(secs);

    let db = Options::new()
        .durability(Durability::None)
        .open(&path)
        .unwrap_or_else(|e| panic!("child: open {}: {e}", path.display()));
    // Every key once, checked: maps the whole file into this process.
    let mut buf = Vec::with_capacity(256);
    for i in 0..n {
        assert!(
            db.get_into(key(i), &mut buf).unwrap(),
            "child: key {i} missing"
        );
        assert!(buf == value(i), "child: key {i} has a wrong value");
    }

    let barrier = Barrier::new(threads + 1);
    let results: Vec<(u64, u64, u64, Tally)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let (db, barrier) = (&db, &barrier);
                let id = first + t;
                s.spawn(move || {
                    let mut g = Gen {
                        work,
                        n,
                        r: Rng(0x5eed_0000 ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d)),
                        next_fresh: fresh_base(n, id),
                        misses: 0,
                    };
                    let warm = timed(&mut g, db, WARM.min(dur)).ops;
                    barrier.wait(); // warm
                    barrier.wait(); // go
                    let t = timed(&mut g, db, dur);
                    (id, warm, g.misses, t)
                })
            })
            .collect();
        barrier.wait();
        if !await_start() {
            // The parent is gone: stop at once.
            std::process::exit(3);
        }
        let cpu = own_cpu_ticks();
        barrier.wait();
        let r: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        println!("cpu ticks={}", own_cpu_ticks() - cpu);
        r
    });
    for (id, warm, misses, t) in &results {
        println!(
            "worker id={id} warm={warm} ops={} ns={} misses={misses} max={} hist={}",
            t.ops,
            t.elapsed.as_nanos(),
            t.hist.max,
            t.hist.encode()
        );
    }
    println!("done");
    db.close().unwrap();
}

// ---------------------------------------------------------------------------
// Parent side: the children of one run

/// The worker processes of one run of `sc` on the store at `path`.
fn spawn_workers(sc: &Scenario, path: &Path, cfg: &Config) -> Kids {
    Kids::spawn(sc.procs, |p, command| {
        command
            .env(ENV_ROLE, sc.work.name())
            .env(ENV_PATH, path)
            .env(ENV_KEYS, cfg.keys.to_string())
            .env(ENV_SECS, cfg.secs.to_string())
            .env(ENV_THREADS, sc.threads.to_string())
            .env(ENV_WORKER, (p * sc.threads).to_string());
    })
}

/// The workers' reports, the CPU ticks the children used while measuring,
/// and the machine's CPU counters when the last child reported.
fn collect(kids: &mut Kids, timeout: Duration) -> (Vec<WorkerReport>, u64, CpuStat) {
    let mut out = Vec::new();
    let mut ticks = 0;
    kids.read_lines(Instant::now() + timeout, "worker reports", |p, line| {
        if line == "done" {
            return true;
        }
        if let Some(t) = line.strip_prefix("cpu ticks=") {
            ticks += t.parse::<u64>().expect("cpu ticks");
        } else if let Some(rest) = line.strip_prefix("worker ") {
            out.push(WorkerReport::parse(p, rest));
        } else {
            panic!("worker process {p}: unexpected line {line:?}");
        }
        false
    });
    let cpu = CpuStat::now();
    kids.expect_success(Instant::now() + Duration::from_secs(5));
    (out, ticks, cpu)
}

struct WorkerReport {
    process: usize,
    id: u64,
    warm: u64,
    ops: u64,
    elapsed: Duration,
    misses: u64,
    hist: Hist,
}

impl WorkerReport {
    fn parse(process: usize, s: &str) -> WorkerReport {
        let f = Fields::parse(s);
        WorkerReport {
            process,
            id: f.num("id"),
            warm: f.num("warm"),
            ops: f.num("ops"),
            elapsed: Duration::from_nanos(f.num("ns")),
            misses: f.num("misses"),
            hist: Hist::decode(f.get("hist"), f.num("max")),
        }
    }
}

// ---------------------------------------------------------------------------
// Parent side: runs and the report

struct Config {
    keys: u64,
    secs: f64,
    repeats: usize,
}

struct RunResult {
    ops: u64,
    ops_per_s: f64,
    ns_per_op: f64,
    hist: Hist,
    per_worker: Vec<u64>,
    /// Share of the machine's CPU capacity that other programs used during
    /// the measurement, and the share stolen by the hypervisor (percent).
    foreign_pct: f64,
    steal_pct: f64,
    note: String,
}

fn create_write_store(path: &Path, work: Work, n: u64) -> Db {
    let room = if work == Work::Fresh { FRESH_ROOM } else { 0 };
    let db = Options::new()
        .durability(Durability::None)
        .expected_keys(n + room)
        .open(path)
        .unwrap();
    load(&db, 0..n);
    db.flush().unwrap();
    db
}

/// One run of `sc` on the open store `db`; `full_check` adds `Db::check`
/// after writes.
fn run_once(sc: &Scenario, db: &Db, cfg: &Config, full_check: bool) -> RunResult {
    let before = db.stats();
    let timeout = Duration::from_secs_f64(cfg.secs) + Duration::from_secs(120);
    let (reports, ticks, cpu0, cpu1) = {
        let mut kids = spawn_workers(sc, db.path(), cfg);
        kids.wait_ready(Duration::from_secs(300));
        let cpu0 = CpuStat::now();
        kids.go();
        let (reports, ticks, cpu1) = collect(&mut kids, timeout);
        (reports, ticks, cpu0, cpu1)
    };
    let foreign_pct = cpu0.foreign_pct(&cpu1, ticks);
    let steal_pct = cpu0.steal_pct(&cpu1);
    assert_eq!(reports.len(), sc.procs * sc.threads);
    let after = db.stats();

    let n = cfg.keys;
    let total_ops: u64 = reports.iter().map(|r| r.ops).sum();
    let all_ops: u64 = reports.iter().map(|r| r.ops + r.warm).sum();
    let misses: u64 = reports.iter().map(|r| r.misses).sum();
    assert_eq!(misses, 0, "reads missed keys that are there");
    let mut note = String::new();
    match sc.work {
        Work::Read => {
            assert_eq!(after.commits, before.commits, "reads committed something");
            assert_eq!(db.len(), n);
        }
        Work::Overwrite | Work::Fresh => {
            // Every insert is one commit; none may be lost.
            assert_eq!(
                after.commits - before.commits,
                all_ops,
                "commits counted by the store vs inserts acknowledged by the workers"
            );
            let want = if sc.work == Work::Fresh {
                n + all_ops
            } else {
                n
            };
            assert_eq!(db.len(), want, "live keys after the run");
            if sc.work == Work::Fresh {
                let mut buf = Vec::new();
                for r in &reports {
                    let base = fresh_base(n, r.id);
                    for i in [base, base + r.warm + r.ops - 1] {
                        assert!(
                            db.get_into(key(i), &mut buf).unwrap(),
                            "new key {i} missing"
                        );
                        assert!(buf == value(i), "new key {i}: wrong value");
                    }
                }
            }
            note = format!("file {:.0} MiB", mib(after.file_len));
            if full_check {
                let t = Instant::now();
                let report = db.check().expect("Db::check after the run");
                assert_eq!(report.live_keys, want, "Db::check live keys");
                note.push_str(&format!(", Db::check {:.1} s", t.elapsed().as_secs_f64()));
            }
        }
    }
    if after.index_capacity != before.index_capacity {
        note.push_str(&format!(
            "{}index rebuilt during the run ({} -> {} slots)",
            if note.is_empty() { "" } else { "; " },
            before.index_capacity,
            after.index_capacity
        ));
    }

    let mut hist = Hist::new();
    for r in &reports {
        hist.merge(&r.hist);
    }
    let ops_per_s: f64 = reports
        .iter()
        .map(|r| r.ops as f64 / r.elapsed.as_secs_f64())
        .sum();
    let busy_ns: f64 = reports.iter().map(|r| r.elapsed.as_nanos() as f64).sum();
    let mut per_worker: Vec<(usize, u64, u64)> =
        reports.iter().map(|r| (r.process, r.id, r.ops)).collect();
    per_worker.sort();
    RunResult {
        ops: total_ops,
        ops_per_s,
        ns_per_op: busy_ns / total_ops as f64,
        hist,
        per_worker: per_worker.into_iter().map(|(_, _, o)| o).collect(),
        foreign_pct,
        steal_pct,
        note,
    }
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 10_000 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else if ns >= 1_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

fn json_run(sc: &Scenario, rep: usize, r: &RunResult, cfg: &Config) -> String {
    format!(
        "{{\"bench\":\"multiprocess\",\"type\":\"run\",\"scenario\":\"{}\",\"procs\":{},\
         \"threads_per_proc\":{},\"rep\":{},\"keys\":{},\"secs\":{},\"ops\":{},\
         \"ops_per_s\":{:.0},\"ns_per_op\":{:.1},\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\
         \"max_ns\":{},\"ops_per_worker\":{:?},\"other_cpu_pct\":{:.1},\"steal_pct\":{:.1}}}",
        sc.work.name(),
        sc.procs,
        sc.threads,
        rep,
        cfg.keys,
        cfg.secs,
        r.ops,
        r.ops_per_s,
        r.ns_per_op,
        r.hist.percentile(0.50),
        r.hist.percentile(0.99),
        r.hist.percentile(0.999),
        r.hist.max,
        r.per_worker,
        r.foreign_pct,
        r.steal_pct,
    )
}

fn main() {
    if let Ok(role) = std::env::var(ENV_ROLE) {
        child(&role);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // cargo test --benches asks for the list of benchmarks
    }
    // `cargo bench` passes --bench; without it this is a test run: smoke only.
    let bench = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let cfg = Config {
        keys: env_num(ENV_KEYS).unwrap_or(if bench { 1_000_000 } else { 10_000 }),
        secs: env_num(ENV_SECS).unwrap_or(if bench { 3.0 } else { 0.1 }),
        repeats: env_num(ENV_REPEATS)
            .unwrap_or(if bench { 3 } else { 1 })
            .max(1),
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "multiprocess: {} keys of 24 bytes, {VALUE}-byte values; {} s per run, {} runs per \
         scenario (median shown); {cores} cores",
        cfg.keys, cfg.secs, cfg.repeats
    );

    let mut scenarios = Vec::new();
    for work in [Work::Read, Work::Overwrite, Work::Fresh] {
        for (procs, threads) in [(1, 1), (2, 1), (1, 2)] {
            let sc = Scenario {
                work,
                procs,
                threads,
            };
            if filters.is_empty() || filters.iter().any(|f| sc.id().contains(f.as_str())) {
                scenarios.push(sc);
            }
        }
    }
    if scenarios.is_empty() {
        println!("no scenario matches {filters:?}");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let mut results: Vec<(Scenario, Vec<RunResult>)> =
        scenarios.iter().map(|s| (*s, Vec::new())).collect();
    let mut json = Vec::new();

    for work in [Work::Read, Work::Overwrite, Work::Fresh] {
        if !scenarios.iter().any(|s| s.work == work) {
            continue;
        }
        // Reads share one store, kept open by the parent throughout.
        let read_store = (work == Work::Read).then(|| {
            let path = dir.path().join("read.mapkv");
            let t = Instant::now();
            let db = Options::new().expected_keys(cfg.keys).open(&path).unwrap();
            load(&db, 0..cfg.keys);
            db.flush().unwrap();
            let s = db.stats();
            println!(
                "read store: {} keys loaded in {:.2} s, file {:.1} MiB",
                s.keys,
                t.elapsed().as_secs_f64(),
                mib(s.file_len)
            );
            db
        });
        for rep in 1..=cfg.repeats {
            for (sc, runs) in results.iter_mut().filter(|(s, _)| s.work == work) {
                let r = match &read_store {
                    Some(db) => run_once(sc, db, &cfg, false),
                    None => {
                        let path = dir.path().join(format!("{}.mapkv", sc.work.name()));
                        let db = create_write_store(&path, sc.work, cfg.keys);
                        let r = run_once(sc, &db, &cfg, rep == 1);
                        db.close().unwrap();
                        std::fs::remove_file(&path).unwrap();
                        r
                    }
                };
                println!(
                    "  {:<24} run {rep}: {:>9}/s  {:>7.1} ns/op  p50 {:>8}  p99 {:>8}  max {:>8}  \
                     other CPU {:>4.1}%  steal {:.1}%  per worker {:?}{}",
                    sc.id(),
                    fmt_rate(r.ops_per_s),
                    r.ns_per_op,
                    fmt_ns(r.hist.percentile(0.5)),
                    fmt_ns(r.hist.percentile(0.99)),
                    fmt_ns(r.hist.max),
                    r.foreign_pct,
                    r.steal_pct,
                    r.per_worker,
                    if r.note.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", r.note)
                    }
                );
                json.push(json_run(sc, rep, &r, &cfg));
                runs.push(r);
            }
        }
        if let Some(db) = read_store {
            db.close().unwrap();
        }
    }

    // The median run of each scenario, by throughput.
    let medians: Vec<(Scenario, &RunResult, Vec<f64>, f64)> = results
        .iter()
        .map(|(sc, runs)| {
            let mut order: Vec<&RunResult> = runs.iter().collect();
            order.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
            let all = order.iter().map(|r| r.ops_per_s).collect();
            let noise = order.iter().map(|r| r.foreign_pct).fold(0.0, f64::max);
            (*sc, order[order.len() / 2], all, noise)
        })
        .collect();
    let base = |w: Work| {
        medians
            .iter()
            .find(|(s, ..)| s.work == w && s.is_base())
            .map(|(_, r, ..)| r.ops_per_s)
    };

    println!();
    println!(
        "| scenario | processes | total ops/s | ns/op (per worker) | vs 1 process | p50 | p99 | \
         p99.9 | max | min–max of {} runs | other CPU, worst run |",
        cfg.repeats
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (sc, r, all, noise) in &medians {
        let ratio = base(sc.work)
            .map(|b| format!("{:.2}×", r.ops_per_s / b))
            .unwrap_or_else(|| "–".to_string());
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} – {} | {:.0}% |",
            sc.work.describe(),
            sc.layout(),
            fmt_rate(r.ops_per_s),
            r.ns_per_op,
            ratio,
            fmt_ns(r.hist.percentile(0.5)),
            fmt_ns(r.hist.percentile(0.99)),
            fmt_ns(r.hist.percentile(0.999)),
            fmt_ns(r.hist.max),
            fmt_rate(all[0]),
            fmt_rate(all[all.len() - 1]),
            noise,
        );
    }
    println!();
    println!(
        "ns/op: the workers' summed elapsed time over their summed operations \
         (aggregate time per operation = 1e9 / total ops/s). Percentiles: every {SAMPLE_EVERY}th \
         operation timed, bucket lower bounds (1/8 octave). Other CPU: the share of all \
         cores that other programs used while a run measured (from /proc/stat, less the \
         workers' own CPU time); above a few percent, that run's figures are disturbed."
    );
    println!();
    for line in &json {
        println!("{line}");
    }
    for (sc, r, all, _) in &medians {
        let ratio = base(sc.work).map_or(f64::NAN, |b| r.ops_per_s / b);
        println!(
            "{{\"bench\":\"multiprocess\",\"type\":\"median\",\"scenario\":\"{}\",\"procs\":{},\
             \"threads_per_proc\":{},\"keys\":{},\"secs\":{},\"ops_per_s\":{:.0},\"ns_per_op\":{:.1},\
             \"ratio_vs_1_process\":{},\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{},\
             \"runs_ops_per_s\":[{}]}}",
            sc.work.name(),
            sc.procs,
            sc.threads,
            cfg.keys,
            cfg.secs,
            r.ops_per_s,
            r.ns_per_op,
            if ratio.is_finite() {
                format!("{ratio:.3}")
            } else {
                "null".to_string()
            },
            r.hist.percentile(0.50),
            r.hist.percentile(0.99),
            r.hist.percentile(0.999),
            r.hist.max,
            all.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
}
