//! The comparison benchmark: mapkv against redb, LMDB (heed), sled, fjall
//! and, with the `rocksdb` feature, RocksDB, on one workload (N random
//! 24-byte keys with 150-byte random values).
//!
//! ```text
//! cargo run -p mapkv-compare --release -- [--n 1000000] [--peers mapkv,redb,lmdb,sled,fjall,rocksdb]
//!                                          [--json results.jsonl] [--tmp /tmp] [--keep]
//!                                          [--sync-writes 2000] [--sync-batches 100]
//!                                          [--batch-size 1000] [--write-threads 1,2,4,8]
//!                                          [--thread-writes 500] [--unsynced 200000]
//!                                          [--reads 1000000] [--read-batch 64]
//! ```
//!
//! Each peer runs in a fresh child process (this binary with `--child`), one
//! after the other, in its own directory under `--tmp`, so memory and cache
//! effects are separable and the peak RSS is the peer's own. The markdown
//! table goes to stdout, progress to stderr, JSON lines to `--json`. The
//! whole run, with the machine's description, is `scripts/bench-compare`.

mod peers;
mod workload;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peers::{Phase, Reader, Seen, Store, Writer};
use workload::{key, value, Key, Rng, VALUE_LEN};

const ALL_PEERS: [&str; 6] = ["mapkv", "redb", "lmdb", "sled", "fjall", "rocksdb"];

/// Whether this binary has `peer` in it: RocksDB only with the `rocksdb`
/// feature.
fn built(peer: &str) -> bool {
    peer != "rocksdb" || cfg!(feature = "rocksdb")
}

/// Why the RocksDB column is missing from a build without the feature.
const NO_ROCKSDB: &str = "left out: this binary was built without the `rocksdb` feature \
     (scripts/bench-compare turns it on when Debian's librocksdb-dev is installed; see benches/compare/README.md)";

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
    /// Thread counts of the "durable writes, N threads" phase.
    write_threads: Vec<u64>,
    /// Durable writes per thread in that phase.
    thread_writes: u64,
    /// Keys per call in the batched reads.
    read_batch: u64,
    /// Whether `--peers` was given (else every peer built in runs).
    peers_given: bool,
    child: Option<String>,
    /// A reader process of the 2-process reads: (peer, seed).
    reader_child: Option<(String, u64)>,
    dir: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: mapkv-compare [--n N] [--peers {}] [--json PATH] [--tmp DIR] [--keep]\n\
         \x20                    [--sync-writes K] [--sync-batches K] [--batch-size K]\n\
         \x20                    [--write-threads 1,2,4,8] [--thread-writes K] [--unsynced K]\n\
         \x20                    [--reads K] [--read-batch K]",
        ALL_PEERS.join(",")
    );
    std::process::exit(2)
}

fn parse_args() -> Cfg {
    let mut c = Cfg {
        n: 1_000_000,
        peers: ALL_PEERS
            .iter()
            .filter(|p| built(p))
            .map(|s| s.to_string())
            .collect(),
        json: None,
        tmp: PathBuf::from("/tmp"),
        keep: false,
        sync_writes: 2_000,
        sync_batches: 100,
        batch_size: 1_000,
        unsynced: 200_000,
        reads: 1_000_000,
        write_threads: vec![1, 2, 4, 8],
        thread_writes: 500,
        read_batch: 64,
        peers_given: false,
        child: None,
        reader_child: None,
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
                    if !built(p) {
                        eprintln!("{p}: {NO_ROCKSDB}");
                        std::process::exit(2)
                    }
                }
                c.peers_given = true;
            }
            "--json" => c.json = Some(PathBuf::from(val())),
            "--tmp" => c.tmp = PathBuf::from(val()),
            "--keep" => c.keep = true,
            "--sync-writes" => c.sync_writes = num(val()),
            "--sync-batches" => c.sync_batches = num(val()),
            "--batch-size" => c.batch_size = num(val()),
            "--unsynced" => c.unsynced = num(val()),
            "--reads" => c.reads = num(val()),
            "--write-threads" => {
                c.write_threads = val()
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| num(s.trim().to_string()))
                    .collect();
                if c.write_threads.contains(&0) {
                    usage()
                }
            }
            "--thread-writes" => c.thread_writes = num(val()),
            "--read-batch" => c.read_batch = num(val()).max(1),
            "--child" => c.child = Some(val()),
            "--reader-child" => {
                let v = val();
                let (peer, seed) = v.split_once(':').unwrap_or_else(|| usage());
                c.reader_child = Some((peer.to_string(), num(seed.to_string())));
            }
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
    if let Some((peer, seed)) = cfg.reader_child.clone() {
        return reader_child(&cfg, &peer, seed);
    }
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Time,
    Bytes,
    /// One time row's throughput over another's, per peer.
    Ratio(&'static str, &'static str),
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
    let r = |id, num, den, label: &str| {
        (
            PhaseInfo {
                id,
                kind: Kind::Ratio(num, den),
            },
            label.to_string(),
        )
    };
    let threads = |t: u64| if t == 1 { "thread" } else { "threads" };
    let mut v = vec![
        t(
            "bulk_load",
            format!("1. bulk load of {} keys, durable at the end", f(cfg.n)),
        ),
        b(
            "disk_after_load",
            "disk after the bulk load, store still open (allocated / logical)".into(),
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
    ];
    for &n in &cfg.write_threads {
        v.push((
            PhaseInfo {
                id: durable_threads_id(n),
                kind: Kind::Time,
            },
            format!(
                "4. durable writes, {n} {} ({n} × {} random overwrites, each durable before the next; commits/s)",
                threads(n),
                f(cfg.thread_writes)
            ),
        ));
    }
    v.extend([
        t(
            "unsynced_single",
            format!(
                "5. unsynced single writes ({} random overwrites)",
                f(cfg.unsynced)
            ),
        ),
        t(
            "read_1t",
            format!("6. random reads, 1 thread ({} gets)", f(cfg.reads)),
        ),
        t(
            "read_2t",
            format!("7. random reads, 2 threads ({} gets in all)", f(cfg.reads)),
        ),
        r(
            "read_scale_2t",
            "read_2t",
            "read_1t",
            "reads: 2 threads over 1 thread (7. over 6.)",
        ),
        t(
            "read_2p",
            format!(
                "7b. random reads, 2 processes ({} gets in all; stores shared between processes only)",
                f(cfg.reads)
            ),
        ),
        r(
            "read_scale_2p",
            "read_2p",
            "read_1t",
            "reads: 2 processes over 1 thread (7b. over 6.)",
        ),
        t(
            "read_batched",
            format!(
                "8. batched reads ({} keys a call, {} keys; keys/s)",
                cfg.read_batch,
                f(cfg.reads)
            ),
        ),
        t(
            "read_missing",
            format!("9. missing-key reads ({} gets)", f(cfg.reads)),
        ),
        t(
            "read_missing_batched",
            format!(
                "10. batched reads of missing keys ({} keys a call, {} keys; keys/s)",
                cfg.read_batch,
                f(cfg.reads)
            ),
        ),
        t("scan", format!("11. full scan ({} entries)", f(cfg.n))),
        t(
            "remove_half",
            format!(
                "12. remove half ({} keys), durable at the end",
                f(cfg.n.div_ceil(2))
            ),
        ),
        b(
            "disk_final",
            "13. disk at the end, closed (allocated / logical)".into(),
        ),
        b("peak_rss", "peak RSS of the peer's process (VmHWM)".into()),
        b(
            "peak_anon",
            "of which anonymous memory (heap, caches), peak of RssAnon sampled after every phase"
                .into(),
        ),
    ]);
    v
}

/// The phase id of "durable writes, `n` threads" (leaked: a handful per run).
fn durable_threads_id(n: u64) -> &'static str {
    match n {
        1 => "durable_threads_1",
        2 => "durable_threads_2",
        4 => "durable_threads_4",
        8 => "durable_threads_8",
        _ => Box::leak(format!("durable_threads_{n}").into_boxed_str()),
    }
}

// ================================================================ child

/// Writes one machine-readable line for the parent.
fn emit(fields: &[&str]) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{}", fields.join("\t")).unwrap();
    out.flush().unwrap();
}

/// Runs `f` with the store type of `peer`.
macro_rules! with_store {
    ($peer:expr, $f:ident ( $($arg:expr),* )) => {
        match $peer {
            "mapkv" => $f::<peers::Mapkv>($($arg),*),
            "redb" => $f::<peers::Redb>($($arg),*),
            "lmdb" => $f::<peers::Lmdb>($($arg),*),
            "sled" => $f::<peers::Sled>($($arg),*),
            "fjall" => $f::<peers::Fjall>($($arg),*),
            #[cfg(feature = "rocksdb")]
            "rocksdb" => $f::<peers::Rocks>($($arg),*),
            _ => usage(),
        }
    };
}

fn child(cfg: &Cfg, peer: &str) {
    let dir = cfg.dir.clone().unwrap_or_else(|| usage());
    with_store!(peer, run(cfg, peer, &dir))
}

/// Records a timed phase: progress to stderr, the result to the parent.
fn record(peer: &str, phase: &str, ops: u64, secs: f64) {
    eprintln!(
        "  [{peer}] {phase}: {} ops in {:.3} s ({}/s)",
        ops,
        secs,
        fmt_rate(ops as f64 / secs)
    );
    emit(&["time", phase, &ops.to_string(), &format!("{secs:.6}")]);
}

/// Panics, loudly, unless a read phase found exactly `hits` of its `keys`,
/// each value `VALUE_LEN` bytes long.
fn check_seen(peer: &str, phase: &str, seen: &Seen, keys: u64, hits: u64) {
    assert_eq!(
        (seen.hits, seen.misses),
        (hits, keys - hits),
        "{peer}, {phase}: wrong number of keys found (found, not found)"
    );
    assert_eq!(
        seen.bytes,
        hits * VALUE_LEN as u64,
        "{peer}, {phase}: values of the wrong length"
    );
    black_box(seen.digest);
}

fn run<S: Store>(cfg: &Cfg, peer: &str, dir: &Path) {
    let n = cfg.n;
    for note in S::notes() {
        emit(&["note", &note]);
    }
    let timed = |phase: &str, ops: u64, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        record(peer, phase, ops, t.elapsed().as_secs_f64());
        sample_anon();
    };

    let mut s = S::open(dir, n);

    // 1. Bulk load; its size on disk while the store is still open.
    s.prepare(Phase::BulkLoad);
    timed("bulk_load", n, &mut || s.bulk_load(n));
    let (alloc, logical) = disk_usage(dir);
    emit(&[
        "bytes",
        "disk_after_load",
        &alloc.to_string(),
        &logical.to_string(),
    ]);
    verify_load(&s, peer, n);

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

    // 4. Durable single writes from 1, 2, 4, 8 threads at once, each its
    // own writer; every write durable before the thread's next.
    s.prepare(Phase::DurableThreads);
    for &threads in &cfg.write_threads {
        let k = cfg.thread_writes;
        timed(durable_threads_id(threads), threads * k, &mut || {
            let s = &s;
            let start = std::sync::Barrier::new(threads as usize);
            std::thread::scope(|sc| {
                for t in 0..threads {
                    let start = &start;
                    sc.spawn(move || {
                        let mut w = s.writer();
                        let mut r = Rng(0x5eed_0400 + 64 * threads + t);
                        start.wait();
                        for j in 0..k {
                            let i = r.below(n);
                            w.durable_put(&key(i), &value(i, 3_000_000 + t * k + j));
                        }
                    });
                }
            });
        });
    }

    // 5. Unsynced single writes.
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

    // 6. Random reads, 1 thread.
    let reads = cfg.reads;
    timed("read_1t", reads, &mut || {
        let seen = read_seen(&s, Rng(0x5eed_0005), reads, n, 0);
        check_seen(peer, "read_1t", &seen, reads, reads);
    });

    // 7. Random reads, 2 threads, each with its own read handle.
    timed("read_2t", reads, &mut || {
        let s = &s;
        let seen = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..2u64)
                .map(|t| {
                    let share = reads / 2 + if t == 0 { reads % 2 } else { 0 };
                    sc.spawn(move || read_seen(s, Rng(0x5eed_0060 + t), share, n, 0))
                })
                .collect();
            let mut all = Seen::default();
            for h in hs {
                all.add(h.join().unwrap());
            }
            all
        });
        check_seen(peer, "read_2t", &seen, reads, reads);
    });

    // 7b. Random reads, 2 processes: two more processes of this binary open
    // the same store and read at once.
    if S::SHARED {
        two_process_reads(cfg, peer, dir);
    }

    // 8. Batched reads: the same kind of random stored keys, `read_batch`
    // a call. Then, untimed, the batches must give what single gets give.
    let batch = cfg.read_batch as usize;
    timed("read_batched", reads, &mut || {
        let seen = batched_seen(&s, Rng(0x5eed_0008), reads, n, 0, batch);
        check_seen(peer, "read_batched", &seen, reads, reads);
    });
    cross_check(
        &s,
        peer,
        "read_batched",
        Rng(0x5eed_0008),
        reads,
        n,
        0,
        batch,
    );

    // 9. Missing keys.
    timed("read_missing", reads, &mut || {
        let seen = read_seen(&s, Rng(0x5eed_0007), reads, 1 << 40, n);
        check_seen(peer, "read_missing", &seen, reads, 0);
    });

    // 10. Missing keys, batched.
    timed("read_missing_batched", reads, &mut || {
        let seen = batched_seen(&s, Rng(0x5eed_0010), reads, 1 << 40, n, batch);
        check_seen(peer, "read_missing_batched", &seen, reads, 0);
    });
    cross_check(
        &s,
        peer,
        "read_missing_batched",
        Rng(0x5eed_0010),
        reads,
        1 << 40,
        n,
        batch,
    );

    // 11. Full scan.
    timed("scan", n, &mut || {
        let (count, bytes) = s.scan();
        assert_eq!(count, n, "{peer}: scan count");
        assert_eq!(
            bytes,
            n * (workload::KEY_LEN + VALUE_LEN) as u64,
            "{peer}: scan bytes"
        );
        black_box(bytes);
    });

    // 12. Remove half.
    s.prepare(Phase::Remove);
    timed("remove_half", n.div_ceil(2), &mut || s.remove_half(n));
    {
        let mut rd = s.reader();
        let mut seen = Seen::default();
        rd.get(&key(0), &mut seen);
        rd.get(&key(1), &mut seen);
        assert_eq!((seen.hits, seen.misses), (1, 1), "{peer}: removal");
    }

    // 13. Close cleanly, then sizes and memory.
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
    let anon = sample_anon();
    emit(&["bytes", "peak_anon", &anon.to_string(), &anon.to_string()]);
}

/// `count` gets of keys `offset + random below range`, one at a time.
fn read_seen<S: Store>(s: &S, mut r: Rng, count: u64, range: u64, offset: u64) -> Seen {
    let mut rd = s.reader();
    let mut seen = Seen::default();
    for _ in 0..count {
        let i = offset + r.below(range);
        rd.get(&key(i), &mut seen);
    }
    seen
}

/// The same keys as `read_seen` with the same generator, `size` a call.
fn batched_seen<S: Store>(
    s: &S,
    mut r: Rng,
    count: u64,
    range: u64,
    offset: u64,
    size: usize,
) -> Seen {
    let mut seen = Seen::default();
    let mut keys: Vec<Key> = Vec::with_capacity(size);
    let mut left = count;
    while left > 0 {
        keys.clear();
        for _ in 0..left.min(size as u64) {
            keys.push(key(offset + r.below(range)));
        }
        left -= keys.len() as u64;
        s.get_batch(&keys, &mut seen);
    }
    seen
}

/// Untimed: the first keys (up to 64,000) of a batched phase, read in
/// batches and one at a time, must give the same values in the same order.
#[allow(clippy::too_many_arguments)]
fn cross_check<S: Store>(
    s: &S,
    peer: &str,
    phase: &str,
    r: Rng,
    reads: u64,
    range: u64,
    offset: u64,
    size: usize,
) {
    let count = reads.min(64_000);
    let batched = batched_seen(s, r.clone(), count, range, offset, size);
    let single = read_seen(s, r, count, range, offset);
    assert_eq!(
        batched, single,
        "{peer}, {phase}: batched reads disagree with single gets of the same keys"
    );
}

/// Untimed, right after the bulk load: sampled keys hold exactly the values
/// loaded, and sampled absent keys are absent.
fn verify_load<S: Store>(s: &S, peer: &str, n: u64) {
    let mut r = Rng(0x5eed_0001);
    let mut want = Seen::default();
    let mut got = Seen::default();
    let mut rd = s.reader();
    for _ in 0..1000 {
        let i = r.below(n);
        want.hit(&value(i, 0));
        rd.get(&key(i), &mut got);
        want.miss();
        rd.get(&key(n + r.below(1 << 40)), &mut got);
    }
    assert_eq!(
        got, want,
        "{peer}: after the bulk load, sampled keys do not read back as written"
    );
}

/// The 2-process reads: two reader processes (this binary with
/// `--reader-child`) open the store, say they are ready, and read when told.
/// The phase's time runs from the word go to the last one's end.
fn two_process_reads(cfg: &Cfg, peer: &str, dir: &Path) {
    let exe = std::env::current_exe().expect("own executable");
    let reads = cfg.reads;
    let mut kids = Vec::new();
    for t in 0..2u64 {
        let share = reads / 2 + if t == 0 { reads % 2 } else { 0 };
        let mut c = Command::new(&exe)
            .args(["--reader-child", &format!("{peer}:{}", 0x5eed_0070 + t)])
            .arg("--dir")
            .arg(dir)
            .args(["--n", &cfg.n.to_string()])
            .args(["--reads", &share.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a reader process");
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "@@ready", "{peer}: reader process: {line:?}");
        kids.push((c, out, share));
    }
    let t = Instant::now();
    for (c, _, _) in &mut kids {
        let stdin = c.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    let mut all = Seen::default();
    for (_, out, share) in &mut kids {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let f: Vec<u64> = line
            .trim()
            .strip_prefix("@@done\t")
            .unwrap_or_else(|| panic!("{peer}: reader process said {line:?}"))
            .split('\t')
            .map(|x| x.parse().unwrap())
            .collect();
        let seen = Seen {
            hits: f[0],
            misses: f[1],
            bytes: f[2],
            digest: f[3],
        };
        check_seen(peer, "read_2p (one process)", &seen, *share, *share);
        all.add(seen);
    }
    let secs = t.elapsed().as_secs_f64();
    for (mut c, _, _) in kids {
        let status = c.wait().unwrap();
        assert!(
            status.success(),
            "{peer}: a reader process failed: {status}"
        );
    }
    check_seen(peer, "read_2p", &all, reads, reads);
    record(peer, "read_2p", reads, secs);
}

/// A reader process of the 2-process reads.
fn reader_child(cfg: &Cfg, peer: &str, seed: u64) {
    fn go<S: Store>(cfg: &Cfg, seed: u64) {
        let dir = cfg.dir.clone().unwrap_or_else(|| usage());
        let s = S::open_shared(&dir, cfg.n).expect("a store shared between processes");
        // Warm this process's handle (open, first read) before the clock.
        let _ = read_seen(&s, Rng(seed ^ 1), 1, cfg.n, 0);
        emit(&["ready"]);
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let seen = read_seen(&s, Rng(seed), cfg.reads, cfg.n, 0);
        emit(&[
            "done",
            &seen.hits.to_string(),
            &seen.misses.to_string(),
            &seen.bytes.to_string(),
            &seen.digest.to_string(),
        ]);
        drop(s);
    }
    with_store!(peer, go(cfg, seed))
}

/// The path of the RocksDB library mapped into this process, if any: proof of
/// which library the RocksDB column ran on.
#[allow(dead_code)]
pub fn rocksdb_library() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("librocksdb"))
        .map(str::to_string)
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

/// The largest `RssAnon` seen so far (sampled now, and by every timed
/// phase): the part of the resident set that is the process's own memory,
/// not pages of the page cache that the kernel can drop or share. Linux
/// keeps no high-water mark per kind, so this is sampled.
fn sample_anon() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PEAK: AtomicU64 = AtomicU64::new(0);
    let now = status_kb("RssAnon:").unwrap_or(0) * 1024;
    PEAK.fetch_max(now, Ordering::Relaxed).max(now)
}

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with(field))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

fn vm_hwm() -> Option<u64> {
    Some(status_kb("VmHWM:")? * 1024)
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
            .args(["--write-threads", &join(&cfg.write_threads)])
            .args(["--thread-writes", &cfg.thread_writes.to_string()])
            .args(["--read-batch", &cfg.read_batch.to_string()])
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

    // The ratio rows, from the time rows (kept in `seconds`).
    for (info, _) in phases(cfg) {
        if let Kind::Ratio(num, den) = info.kind {
            for peer in &cfg.peers {
                let rate = |id: &str| {
                    results
                        .get(&(peer.clone(), id.to_string()))
                        .map(|m| m.ops as f64 / m.seconds)
                };
                if let (Some(a), Some(b)) = (rate(num), rate(den)) {
                    results.insert(
                        (peer.clone(), info.id.to_string()),
                        Measure {
                            seconds: a / b,
                            ..Default::default()
                        },
                    );
                }
            }
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
                    Kind::Ratio(..) => format!(
                        "{{\"peer\":\"{peer}\",\"version\":\"{}\",\"phase\":\"{}\",\"n\":{},\"ratio\":{:.4}}}\n",
                        peer_version(peer),
                        info.id,
                        cfg.n,
                        m.seconds
                    ),
                };
            }
        }
        std::fs::write(path, s).expect("write the JSON lines");
        eprintln!("JSON lines written to {}", path.display());
    }
    if !failed.is_empty() {
        for (p, why) in &failed {
            eprintln!("{p} FAILED: {why}");
        }
        std::process::exit(1);
    }
}

fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
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
        "rocksdb" => format!(
            "RocksDB {} (the system's library; rocksdb crate {}, librocksdb-sys {})",
            env!("ROCKSDB_HEADER_VERSION"),
            env!("VERSION_ROCKSDB"),
            env!("VERSION_LIBROCKSDB_SYS")
        ),
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
    o += &machine(&cfg.tmp);
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
    o += &format!("; built with {}.", env!("RUSTC_VERSION"));
    if !cfg.peers_given && !built("rocksdb") {
        o += &format!(" RocksDB: {NO_ROCKSDB}.");
    }
    o += "\n\n";

    let has_mapkv = cfg.peers.iter().any(|p| p == "mapkv");
    o += "| phase |";
    for p in &cfg.peers {
        o += &format!(
            " {} |",
            match p.as_str() {
                "lmdb" => "LMDB (heed)",
                "rocksdb" => "RocksDB",
                p => p,
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
                    Kind::Bytes if info.id.starts_with("peak_") => fmt_bytes(m.bytes),
                    Kind::Bytes => format!("{} / {}", fmt_bytes(m.bytes), fmt_bytes(m.logical)),
                    Kind::Ratio(..) => format!("{:.2}×", m.seconds),
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
          summed over every file in the store's directory; ratio rows: one row's throughput over another's). Last column: mapkv's \
          throughput over the best other peer's (>1 means mapkv is faster); for the disk and memory rows, the smallest other peer \
          over mapkv (>1 means mapkv is smaller). Between the unsynced writes and the reads, every peer synced (untimed) so that \
          write-back does not land in later phases. Every read phase checks the number of keys found and the length of every \
          value, and reads every value's bytes; untimed checks compare sampled values after the bulk load with what was written, \
          and the first keys (up to 64,000) of each batched phase with single gets of the same keys.\n";
    o += &goals(cfg, results);
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
    match p {
        "lmdb" => "LMDB",
        "rocksdb" => "RocksDB",
        p => p,
    }
}

/// The issue's yardsticks, when mapkv and LMDB both ran: mapkv's batched
/// reads against LMDB's single gets in one read transaction, in this run.
fn goals(cfg: &Cfg, results: &BTreeMap<(String, String), Measure>) -> String {
    let rate = |p: &str, id: &str| {
        results
            .get(&(p.to_string(), id.to_string()))
            .map(|m| m.ops as f64 / m.seconds)
    };
    let mut o = String::new();
    for (mine, theirs, what) in [
        ("read_batched", "read_1t", "stored keys"),
        ("read_missing_batched", "read_missing", "missing keys"),
    ] {
        if let (Some(a), Some(b)) = (rate("mapkv", mine), rate("lmdb", theirs)) {
            o += &format!(
                "- {what}, batches of {}: mapkv get_many_into {} keys/s; LMDB single gets in one read transaction (its row {}) {}/s: {:.2}×\n",
                cfg.read_batch,
                fmt_rate(a),
                if theirs == "read_1t" { "6" } else { "9" },
                fmt_rate(b),
                a / b
            );
        }
    }
    if o.is_empty() {
        o
    } else {
        format!("\nBatched reads against LMDB's single gets, same data, same run:\n\n{o}")
    }
}

fn machine(tmp: &Path) -> String {
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
    // The mount that holds the stores: the longest mount point that prefixes it.
    let shown = tmp.display().to_string();
    let tmp = std::fs::canonicalize(tmp).unwrap_or_else(|_| tmp.to_path_buf());
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
        "Machine: {cpus} CPUs ({model}), {:.1} GiB RAM, {kernel}; {shown} is {} on {} (mounted at {}).\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_depends_on_the_values_and_their_order() {
        let (a, b) = (value(1, 0), value(2, 0));
        let seen = |vals: &[Option<&[u8]>]| {
            let mut s = Seen::default();
            for v in vals {
                s.found(*v);
            }
            s
        };
        let ab = seen(&[Some(&a), Some(&b)]);
        assert_eq!(ab, seen(&[Some(&a), Some(&b)]));
        assert_ne!(ab, seen(&[Some(&b), Some(&a)]));
        assert_ne!(ab.digest, seen(&[Some(&a), Some(&a)]).digest);
        assert_ne!(seen(&[Some(&a), None]), seen(&[None, Some(&a)]));
        let mut flipped = b;
        flipped[VALUE_LEN - 1] ^= 1;
        assert_ne!(ab, seen(&[Some(&a), Some(&flipped)]));
    }

    /// Every peer built in, on a small store: the untimed checks pass, and
    /// the reads, batched reads, threaded writes and scan agree.
    fn small_run<S: Store>(peer: &str) {
        let dir =
            std::env::temp_dir().join(format!("mapkv-compare-test-{peer}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let n = 3000;
        let mut s = S::open(&dir, n);
        s.prepare(Phase::BulkLoad);
        s.bulk_load(n);
        verify_load(&s, peer, n);
        s.prepare(Phase::DurableThreads);
        std::thread::scope(|sc| {
            for t in 0..3u64 {
                let s = &s;
                sc.spawn(move || {
                    let mut w = s.writer();
                    for j in 0..10 {
                        w.durable_put(&key(t * 10 + j), &value(t * 10 + j, 7));
                    }
                });
            }
        });
        s.prepare(Phase::Reads);
        let mut rd = s.reader();
        let mut got = Seen::default();
        let mut want = Seen::default();
        for i in [0, 15, 29, 30] {
            rd.get(&key(i), &mut got);
            want.hit(&value(i, if i < 30 { 7 } else { 0 }));
        }
        drop(rd);
        assert_eq!(got, want, "{peer}: threaded writes");
        let seen = batched_seen(&s, Rng(9), 1000, n, 0, 64);
        check_seen(peer, "batched", &seen, 1000, 1000);
        cross_check(&s, peer, "batched", Rng(9), 1000, n, 0, 64);
        cross_check(&s, peer, "batched missing", Rng(9), 1000, 1 << 40, n, 64);
        assert_eq!(s.scan().0, n, "{peer}: scan");
        s.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_peer_passes_the_checks_on_a_small_store() {
        for peer in ALL_PEERS.iter().filter(|p| built(p)) {
            with_store!(*peer, small_run(peer));
        }
    }
}
