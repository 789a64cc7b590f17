//! The comparison benchmark: mapkv against redb, LMDB (heed), sled and fjall
//! on one workload (N random 24-byte keys with 150-byte random values).
//!
//! ```text
//! cargo run -p mapkv-compare --release -- [--n 1000000] [--peers mapkv,redb,lmdb,sled,fjall]
//!                                          [--json results.jsonl] [--tmp /tmp] [--keep]
//!                                          [--sync-writes 2000] [--sync-batches 100]
//!                                          [--batch-size 1000] [--unsynced 200000]
//!                                          [--reads 1000000]
//! ```
//!
//! Each peer runs in a fresh child process (this binary with `--child`), one
//! after the other, in its own directory under `--tmp`, so memory and cache
//! effects are separable and the peak RSS is the peer's own. The markdown
//! table goes to stdout, progress to stderr, JSON lines to `--json`.

mod peers;
mod workload;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peers::{Phase, Reader, Store};
use workload::{key, value, Rng};

const ALL_PEERS: [&str; 5] = ["mapkv", "redb", "lmdb", "sled", "fjall"];

#[derive(Clone, Debug)]
struct Cfg {
    n: u64,
    peers: Vec<String>,
    json: Option<PathBuf>,
    tmp: PathBuf,
    keep: bool,
    sync_writes: u64,
    sync_batches: u64,
    batch_size: u64,
    unsynced: u64,
    reads: u64,
    child: Option<String>,
    dir: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: mapkv-compare [--n N] [--peers {}] [--json PATH] [--tmp DIR] [--keep]\n\
         \x20                    [--sync-writes K] [--sync-batches K] [--batch-size K] [--unsynced K] [--reads K]",
        ALL_PEERS.join(",")
    );
    std::process::exit(2)
}

fn parse_args() -> Cfg {
    let mut c = Cfg {
        n: 1_000_000,
        peers: ALL_PEERS.iter().map(|s| s.to_string()).collect(),
        json: None,
        tmp: PathBuf::from("/tmp"),
        keep: false,
        sync_writes: 2_000,
        sync_batches: 100,
        batch_size: 1_000,
        unsynced: 200_000,
        reads: 1_000_000,
        child: None,
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage())
        };
        let num = |s: String| -> u64 { s.replace('_', "").parse().unwrap_or_else(|_| usage()) };
        match name.as_str() {
            "--n" => c.n = num(val()),
            "--peers" => {
                c.peers = val()
                    .split(',')
                    .map(|s| s.trim().to_lowercase())
                    .filter(|s| !s.is_empty())
                    .map(|s| if s == "heed" { "lmdb".into() } else { s })
                    .collect();
                for p in &c.peers {
                    if !ALL_PEERS.contains(&p.as_str()) {
                        eprintln!("unknown peer {p:?}");
                        usage()
                    }
                }
            }
            "--json" => c.json = Some(PathBuf::from(val())),
            "--tmp" => c.tmp = PathBuf::from(val()),
            "--keep" => c.keep = true,
            "--sync-writes" => c.sync_writes = num(val()),
            "--sync-batches" => c.sync_batches = num(val()),
            "--batch-size" => c.batch_size = num(val()),
            "--unsynced" => c.unsynced = num(val()),
            "--reads" => c.reads = num(val()),
            "--child" => c.child = Some(val()),
            "--dir" => c.dir = Some(PathBuf::from(val())),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {a:?}");
                usage()
            }
        }
    }
    if c.n < 2 {
        eprintln!("--n must be at least 2");
        usage()
    }
    c
}

fn main() {
    let cfg = parse_args();
    match cfg.child.clone() {
        Some(peer) => child(&cfg, &peer),
        None => parent(&cfg),
    }
}

// ================================================================ phases

/// A table row.
struct PhaseInfo {
    id: &'static str,
    kind: Kind,
}

#[derive(PartialEq)]
enum Kind {
    Time,
    Bytes,
}

fn phases(cfg: &Cfg) -> Vec<(PhaseInfo, String)> {
    let f = |n: u64| fmt_count(n);
    let t = |id, label: String| {
        (
            PhaseInfo {
                id,
                kind: Kind::Time,
            },
            label,
        )
    };
    let b = |id, label: String| {
        (
            PhaseInfo {
                id,
                kind: Kind::Bytes,
            },
            label,
        )
    };
    vec![
        t(
            "bulk_load",
            format!("1. bulk load of {} keys, durable at the end", f(cfg.n)),
        ),
        t(
            "durable_single",
            format!(
                "2. durable single writes ({} random overwrites)",
                f(cfg.sync_writes)
            ),
        ),
        t(
            "durable_batch",
            format!(
                "3. durable batches ({} × {} random overwrites; keys/s)",
                f(cfg.sync_batches),
                f(cfg.batch_size)
            ),
        ),
        t(
            "unsynced_single",
            format!(
                "4. unsynced single writes ({} random overwrites)",
                f(cfg.unsynced)
            ),
        ),
        t(
            "read_1t",
            format!("5. random reads, 1 thread ({} gets)", f(cfg.reads)),
        ),
        t(
            "read_2t",
            format!("6. random reads, 2 threads ({} gets in all)", f(cfg.reads)),
        ),
        t(
            "read_missing",
            format!("7. missing-key reads ({} gets)", f(cfg.reads)),
        ),
        t("scan", format!("8. full scan ({} entries)", f(cfg.n))),
        t(
            "remove_half",
            format!(
                "9. remove half ({} keys), durable at the end",
                f(cfg.n.div_ceil(2))
            ),
        ),
        b(
            "disk_after_load",
            "disk after the bulk load (allocated / logical)".into(),
        ),
        b(
            "disk_final",
            "10. disk at the end, closed (allocated / logical)".into(),
        ),
        b("peak_rss", "peak RSS of the peer's process (VmHWM)".into()),
    ]
}

// ================================================================ child

/// Writes one machine-readable line for the parent.
fn emit(fields: &[&str]) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{}", fields.join("\t")).unwrap();
    out.flush().unwrap();
}

fn child(cfg: &Cfg, peer: &str) {
    let dir = cfg.dir.clone().unwrap_or_else(|| usage());
    match peer {
        "mapkv" => run::<peers::Mapkv>(cfg, peer, &dir),
        "redb" => run::<peers::Redb>(cfg, peer, &dir),
        "lmdb" => run::<peers::Lmdb>(cfg, peer, &dir),
        "sled" => run::<peers::Sled>(cfg, peer, &dir),
        "fjall" => run::<peers::Fjall>(cfg, peer, &dir),
        _ => usage(),
    }
}

fn run<S: Store>(cfg: &Cfg, peer: &str, dir: &Path) {
    let n = cfg.n;
    for note in S::notes() {
        emit(&["note", &note]);
    }
    let timed = |phase: &str, ops: u64, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "  [{peer}] {phase}: {} ops in {:.3} s ({}/s)",
            ops,
            secs,
            fmt_rate(ops as f64 / secs)
        );
        emit(&["time", phase, &ops.to_string(), &format!("{secs:.6}")]);
    };

    let mut s = S::open(dir, n);

    // 1. Bulk load.
    s.prepare(Phase::BulkLoad);
    timed("bulk_load", n, &mut || s.bulk_load(n));
    let (alloc, logical) = disk_usage(dir);
    emit(&[
        "bytes",
        "disk_after_load",
        &alloc.to_string(),
        &logical.to_string(),
    ]);

    // 2. Durable single writes.
    s.prepare(Phase::DurableSingle);
    let mut r = Rng(0x5eed_0002);
    timed("durable_single", cfg.sync_writes, &mut || {
        for j in 0..cfg.sync_writes {
            let i = r.below(n);
            s.durable_put(&key(i), &value(i, 1 + j));
        }
    });

    // 3. Durable batches.
    s.prepare(Phase::DurableBatch);
    let mut r = Rng(0x5eed_0003);
    let mut items = Vec::with_capacity(cfg.batch_size as usize);
    timed(
        "durable_batch",
        cfg.sync_batches * cfg.batch_size,
        &mut || {
            for b in 0..cfg.sync_batches {
                items.clear();
                for _ in 0..cfg.batch_size {
                    let i = r.below(n);
                    items.push((key(i), value(i, 1_000_000 + b)));
                }
                s.durable_batch(&items);
            }
        },
    );
    drop(items);

    // 4. Unsynced single writes.
    s.prepare(Phase::Unsynced);
    let mut r = Rng(0x5eed_0004);
    timed("unsynced_single", cfg.unsynced, &mut || {
        for j in 0..cfg.unsynced {
            let i = r.below(n);
            s.unsynced_put(&key(i), &value(i, 2_000_000 + j));
        }
    });
    // Untimed: write the unsynced phase out so that its write-back does not
    // land in the reads or the removal.
    let t = Instant::now();
    s.settle();
    eprintln!(
        "  [{peer}] (untimed) sync after the unsynced phase: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    s.prepare(Phase::Reads);

    // 5. Random reads, 1 thread.
    let reads = cfg.reads;
    timed("read_1t", reads, &mut || {
        let hits = read_hits(&s, Rng(0x5eed_0005), reads, n, 0);
        assert_eq!(hits, reads, "{peer}: a stored key was missing");
    });

    // 6. Random reads, 2 threads, each with its own read handle.
    timed("read_2t", reads, &mut || {
        let s = &s;
        let hits: u64 = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..2u64)
                .map(|t| {
                    let share = reads / 2 + if t == 0 { reads % 2 } else { 0 };
                    sc.spawn(move || read_hits(s, Rng(0x5eed_0060 + t), share, n, 0))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(hits, reads, "{peer}: a stored key was missing");
    });

    // 7. Missing keys.
    timed("read_missing", reads, &mut || {
        let hits = read_hits(&s, Rng(0x5eed_0007), reads, 1 << 40, n);
        assert_eq!(hits, 0, "{peer}: an absent key was found");
    });

    // 8. Full scan.
    timed("scan", n, &mut || {
        let (count, bytes) = s.scan();
        assert_eq!(count, n, "{peer}: scan count");
        black_box(bytes);
    });

    // 9. Remove half.
    s.prepare(Phase::Remove);
    timed("remove_half", n.div_ceil(2), &mut || s.remove_half(n));
    {
        let mut rd = s.reader();
        assert!(
            rd.get(&key(0)).is_none() && rd.get(&key(1)).is_some(),
            "{peer}: removal"
        );
    }

    // 10. Close cleanly, then sizes and memory.
    for note in s.close() {
        emit(&["note", &note]);
    }
    let (alloc, logical) = disk_usage(dir);
    emit(&[
        "bytes",
        "disk_final",
        &alloc.to_string(),
        &logical.to_string(),
    ]);
    let hwm = vm_hwm().unwrap_or(0);
    emit(&["bytes", "peak_rss", &hwm.to_string(), &hwm.to_string()]);
}

/// `count` gets of keys `offset + random below range`; returns the hits.
fn read_hits<S: Store>(s: &S, mut r: Rng, count: u64, range: u64, offset: u64) -> u64 {
    let mut rd = s.reader();
    let (mut hits, mut acc) = (0u64, 0u64);
    for _ in 0..count {
        let i = offset + r.below(range);
        if let Some(x) = rd.get(&key(i)) {
            hits += 1;
            acc = acc.wrapping_add(x);
        }
    }
    black_box(acc);
    hits
}

/// (bytes allocated as `du` counts them, logical bytes) of every file under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut alloc, mut logical) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            let (a, l) = disk_usage(&e.path());
            alloc += a;
            logical += l;
        } else {
            alloc += m.blocks() * 512;
            logical += m.len();
        }
    }
    (alloc, logical)
}

fn vm_hwm() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ================================================================ parent

#[derive(Clone, Debug, Default)]
struct Measure {
    ops: u64,
    seconds: f64,
    bytes: u64,
    logical: u64,
}

fn parent(cfg: &Cfg) {
    let exe = std::env::current_exe().expect("own executable");
    let mut results: BTreeMap<(String, String), Measure> = BTreeMap::new();
    let mut notes: Vec<(String, String)> = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let started = Instant::now();

    for peer in &cfg.peers {
        let dir = cfg
            .tmp
            .join(format!("mapkv-compare-{peer}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the peer's directory");
        // Start each peer on a quiet disk.
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_secs(1));
        eprintln!("== {peer} ({}) in {}", peer_version(peer), dir.display());
        let load_before = loadavg();
        let t = Instant::now();
        let mut child = Command::new(&exe)
            .args(["--child", peer, "--dir"])
            .arg(&dir)
            .args(["--n", &cfg.n.to_string()])
            .args(["--sync-writes", &cfg.sync_writes.to_string()])
            .args(["--sync-batches", &cfg.sync_batches.to_string()])
            .args(["--batch-size", &cfg.batch_size.to_string()])
            .args(["--unsynced", &cfg.unsynced.to_string()])
            .args(["--reads", &cfg.reads.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            let Ok(line) = line else { break };
            let Some(rest) = line.strip_prefix("@@") else {
                println!("{line}");
                continue;
            };
            let f: Vec<&str> = rest.split('\t').collect();
            match f.as_slice() {
                ["note", text] => notes.push((peer.clone(), text.to_string())),
                ["time", phase, ops, secs] => {
                    results.insert(
                        (peer.clone(), phase.to_string()),
                        Measure {
                            ops: ops.parse().unwrap(),
                            seconds: secs.parse().unwrap(),
                            ..Default::default()
                        },
                    );
                }
                ["bytes", phase, alloc, logical] => {
                    results.insert(
                        (peer.clone(), phase.to_string()),
                        Measure {
                            bytes: alloc.parse().unwrap(),
                            logical: logical.parse().unwrap(),
                            ..Default::default()
                        },
                    );
                }
                _ => eprintln!("unexpected line from the child: {line}"),
            }
        }
        let status = child.wait().expect("wait for the child");
        if !status.success() {
            failed.push((
                peer.clone(),
                format!("child exited with {status}; its results are partial"),
            ));
        }
        let took = t.elapsed().as_secs_f64();
        eprintln!("== {peer} done in {took:.1} s");
        notes.push((
            peer.clone(),
            format!(
                "ran {took:.0} s; 1-minute load average {load_before} before, {} after (other processes on the machine show here)",
                loadavg()
            ),
        ));
        if cfg.keep {
            eprintln!("   kept {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    let table = render(cfg, &results, &notes, &failed, started.elapsed());
    print!("{table}");

    if let Some(path) = &cfg.json {
        let mut s = String::new();
        for peer in &cfg.peers {
            for (info, _) in phases(cfg) {
                let Some(m) = results.get(&(peer.clone(), info.id.to_string())) else {
                    continue;
                };
                s += &match info.kind {
                    Kind::Time => format!(
                        "{{\"peer\":\"{peer}\",\"version\":\"{}\",\"phase\":\"{}\",\"n\":{},\"ops\":{},\"seconds\":{:.6},\"ops_per_s\":{:.1},\"bytes\":null}}\n",
                        peer_version(peer),
                        info.id,
                        cfg.n,
                        m.ops,
                        m.seconds,
                        m.ops as f64 / m.seconds
                    ),
                    Kind::Bytes => format!(
                        "{{\"peer\":\"{peer}\",\"version\":\"{}\",\"phase\":\"{}\",\"n\":{},\"seconds\":null,\"ops_per_s\":null,\"bytes\":{},\"logical_bytes\":{}}}\n",
                        peer_version(peer),
                        info.id,
                        cfg.n,
                        m.bytes,
                        m.logical
                    ),
                };
            }
        }
        std::fs::write(path, s).expect("write the JSON lines");
        eprintln!("JSON lines written to {}", path.display());
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn peer_version(peer: &str) -> String {
    match peer {
        "mapkv" => format!("mapkv {}", env!("VERSION_MAPKV")),
        "redb" => format!("redb {}", env!("VERSION_REDB")),
        "lmdb" => format!(
            "heed {} (lmdb-master-sys {})",
            env!("VERSION_HEED"),
            env!("VERSION_LMDB_SYS")
        ),
        "sled" => format!("sled {}", env!("VERSION_SLED")),
        "fjall" => format!("fjall {}", env!("VERSION_FJALL")),
        _ => peer.to_string(),
    }
}

fn render(
    cfg: &Cfg,
    results: &BTreeMap<(String, String), Measure>,
    notes: &[(String, String)],
    failed: &[(String, String)],
    took: Duration,
) -> String {
    let mut o = String::new();
    o += "## mapkv comparison benchmark\n\n";
    o += &machine();
    o += &format!(
        "\nWorkload: N = {} keys of 24 random bytes with 150-byte random values (seeded, identical for every peer); \
         random keys are uniform over the N stored keys. Each peer ran alone in a fresh child process, one after \
         the other, its store in its own directory under {} (on the filesystem above). Reads are warm: the page \
         cache cannot be dropped here, so every peer reads data it has just written. Total time {:.0} s.\n\n",
        fmt_count(cfg.n),
        cfg.tmp.display(),
        took.as_secs_f64()
    );
    o += "Peers: ";
    o += &cfg
        .peers
        .iter()
        .map(|p| peer_version(p))
        .collect::<Vec<_>>()
        .join(", ");
    o += &format!("; built with {}.\n\n", env!("RUSTC_VERSION"));

    let has_mapkv = cfg.peers.iter().any(|p| p == "mapkv");
    o += "| phase |";
    for p in &cfg.peers {
        o += &format!(
            " {} |",
            if p == "lmdb" {
                "LMDB (heed)"
            } else {
                p.as_str()
            }
        );
    }
    o += " mapkv vs best peer |\n|---|";
    for _ in &cfg.peers {
        o += "---|";
    }
    o += "---|\n";
    for (info, label) in phases(cfg) {
        o += &format!("| {label} |");
        for p in &cfg.peers {
            let cell = match results.get(&(p.clone(), info.id.to_string())) {
                None => "–".to_string(),
                Some(m) => match info.kind {
                    Kind::Time => format!(
                        "{} / {}/s",
                        fmt_secs(m.seconds),
                        fmt_rate(m.ops as f64 / m.seconds)
                    ),
                    Kind::Bytes if info.id == "peak_rss" => fmt_bytes(m.bytes),
                    Kind::Bytes => format!("{} / {}", fmt_bytes(m.bytes), fmt_bytes(m.logical)),
                },
            };
            o += &format!(" {cell} |");
        }
        // The ratio: throughput of mapkv over the best other peer's (>1:
        // mapkv faster); for sizes, the smallest other peer over mapkv (>1:
        // mapkv smaller).
        let mine = results.get(&("mapkv".to_string(), info.id.to_string()));
        let others = cfg
            .peers
            .iter()
            .filter(|p| p.as_str() != "mapkv")
            .filter_map(|p| {
                results
                    .get(&(p.clone(), info.id.to_string()))
                    .map(|m| (p, m))
            });
        let ratio = match (has_mapkv, mine, info.kind) {
            (true, Some(m), Kind::Time) => others
                .map(|(p, x)| (p, x.ops as f64 / x.seconds))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(p, best)| {
                    format!("{:.2}× ({})", (m.ops as f64 / m.seconds) / best, short(p))
                }),
            (true, Some(m), Kind::Bytes) => others
                .map(|(p, x)| (p, x.bytes))
                .min_by_key(|a| a.1)
                .map(|(p, best)| format!("{:.2}× ({})", best as f64 / m.bytes as f64, short(p))),
            _ => None,
        };
        o += &format!(" {} |\n", ratio.unwrap_or_else(|| "–".into()));
    }
    o += "\nCells: wall time of the phase / operations per second (disk rows: bytes allocated, as `du` counts them / logical size; \
          summed over every file in the store's directory). Last column: mapkv's throughput over the best other peer's \
          (>1 means mapkv is faster); for the disk and memory rows, the smallest other peer over mapkv (>1 means mapkv is smaller). \
          Between the unsynced writes and the reads, every peer synced (untimed) so that write-back does not land in later phases.\n";
    o += "\nHow each peer writes:\n\n";
    for p in &cfg.peers {
        for (_, n) in notes.iter().filter(|(q, _)| q == p) {
            o += &format!("- {}: {n}\n", short(p));
        }
    }
    for (p, why) in failed {
        o += &format!("- **{p} failed**: {why}\n");
    }
    o
}

fn short(p: &str) -> &str {
    if p == "lmdb" {
        "LMDB"
    } else {
        p
    }
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = format!(
        "{} {}",
        read("/proc/sys/kernel/ostype").trim(),
        read("/proc/sys/kernel/osrelease").trim()
    );
    // The mount that holds /tmp: the longest mount point that prefixes it.
    let tmp = std::fs::canonicalize("/tmp").unwrap_or_else(|_| "/tmp".into());
    let tmp = tmp.to_string_lossy().to_string();
    let mut fs = ("?".to_string(), "?".to_string(), String::new());
    let mut best = 0;
    for l in read("/proc/mounts").lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let mp = f[1];
        let under = tmp == mp || mp == "/" || tmp.starts_with(&format!("{mp}/"));
        if under && mp.len() >= best {
            best = mp.len();
            fs = (
                f[2].to_string(),
                f[0].to_string(),
                format!("{mp}, {}", f[3]),
            );
        }
    }
    format!(
        "Machine: {cpus} CPUs ({model}), {:.1} GiB RAM, {kernel}; /tmp is {} on {} (mounted at {}).\n",
        mem_kb as f64 / 1048576.0,
        fs.0,
        fs.1,
        fs.2
    )
}

fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut o = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

fn fmt_bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}
