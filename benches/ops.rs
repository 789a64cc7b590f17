//! mapkv's own operations on the comparison workload: 1 M keys of 24 bytes
//! with 150-byte random values.
//!
//! ```text
//! cargo bench --bench ops                 # everything
//! cargo bench --bench ops -- get/         # one group
//! ```
//! Criterion reports the median time per operation (or per element for
//! batches and scans); peak memory and file sizes are printed at the end.

#[path = "common/workload.rs"]
mod workload;
use workload::{key, value, Rng, VALUE};

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use mapkv::{Db, Durability, Options};

const N: u64 = 1_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    db: Db,
}

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

/// One store with N keys, shared by the read benchmarks.
fn loaded() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.mapkv");
        let db = Db::open(&path).unwrap();
        load(&db, 0..N);
        Fixture {
            _dir: dir,
            path,
            db,
        }
    })
}

fn fresh(durability: Durability, preload: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.mapkv");
    let db = Options::new().durability(durability).open(&path).unwrap();
    load(&db, 0..preload);
    Fixture {
        _dir: dir,
        path,
        db,
    }
}

/// Commit a batch of `n` overwrites of random existing keys.
fn random_batch(db: &Db, r: &mut Rng, n: usize) {
    let mut batch = db.batch();
    for _ in 0..n {
        let i = r.next() % N;
        batch.insert(key(i), value(i));
    }
    batch.commit().unwrap()
}

fn reads(c: &mut Criterion) {
    let f = loaded();
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    let mut r = Rng(1);
    g.bench_function("hit_random", |b| {
        b.iter(|| black_box(f.db.get(key(r.next() % N)).unwrap().unwrap()))
    });
    let mut buf = Vec::with_capacity(256);
    g.bench_function("hit_random_into", |b| {
        b.iter(|| black_box(f.db.get_into(key(r.next() % N), &mut buf).unwrap()))
    });
    g.bench_function("miss_random", |b| {
        b.iter(|| black_box(f.db.get(key(N + r.next() % N)).unwrap().is_none()))
    });
    g.bench_function("hit_random_2_threads", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for th in 0..2u64 {
                    s.spawn(move || {
                        let mut r = Rng(th + 7);
                        let mut buf = Vec::with_capacity(256);
                        for _ in 0..iters / 2 {
                            black_box(f.db.get_into(key(r.next() % N), &mut buf).unwrap());
                        }
                    });
                }
            });
            t.elapsed()
        })
    });
    // The floor of a random get, measured the same way: two dependent
    // cache misses in a shared file mapping of the store's size (a random
    // 8-byte slot of a 16 MiB table, then the 192 bytes it points at in a
    // 256 MiB log, copied out), with no hashing, checking or counting.
    let floor = Floor::new(f.path.parent().unwrap());
    // Each read's address depends on the last one's bytes, so that the
    // CPU cannot start the next read early (a get's code path is too long
    // for that anyway).
    let mut copy = [0u8; 192];
    let mut last = 0u8;
    g.bench_function("floor_slot_then_record", |b| {
        b.iter(|| {
            // (Multiplied so that every bit of the address depends on it.)
            last = floor.read(
                r.next() ^ (last as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                &mut copy,
            );
            black_box(last)
        })
    });
    g.finish();

    // Batches of 64 keys: get_many overlaps the lookups' cache misses;
    // "loop_64" is the same 64 gets one after the other. Per key.
    let mut g = c.benchmark_group("get_many");
    g.throughput(Throughput::Elements(64));
    let mut out = Vec::with_capacity(64);
    g.bench_function("hit_64", |b| {
        b.iter(|| {
            let keys: [[u8; 24]; 64] = std::array::from_fn(|_| key(r.next() % N));
            assert_eq!(f.db.get_many_into(&keys, &mut out).unwrap(), 64);
            black_box(&out);
        })
    });
    g.bench_function("miss_64", |b| {
        b.iter(|| {
            let keys: [[u8; 24]; 64] = std::array::from_fn(|_| key(N + r.next() % N));
            assert_eq!(f.db.get_many_into(&keys, &mut out).unwrap(), 0);
            black_box(&out);
        })
    });
    g.bench_function("loop_64", |b| {
        b.iter(|| {
            let keys: [[u8; 24]; 64] = std::array::from_fn(|_| key(r.next() % N));
            for k in &keys {
                black_box(f.db.get(k).unwrap().unwrap());
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("iter");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("full_1M", |b| {
        b.iter(|| assert_eq!(f.db.iter().count() as u64, N))
    });
    // The same visit without an allocation per entry.
    g.bench_function("for_each_1M", |b| {
        b.iter(|| {
            let mut n = 0u64;
            f.db.for_each(|k, v| {
                black_box((k, v));
                n += 1;
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(n, N)
        })
    });
    g.finish();

    // `Db::check` of the same store: the log verified, every record's key
    // looked up in the index.
    let mut g = c.benchmark_group("check");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("1M", |b| {
        b.iter(|| assert_eq!(f.db.check().unwrap().live_keys, N))
    });
    g.finish();
}

/// Durable writes first, on a quiet disk: the unsynced benchmarks leave
/// gigabytes of dirty pages whose write-back would slow every fsync.
fn durable(c: &mut Criterion) {
    let f = fresh(Durability::Sync, 100_000);
    let mut r = Rng(5);
    let mut g = c.benchmark_group("durable");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("insert_sync", |b| {
        b.iter(|| {
            let i = r.next() % N;
            f.db.insert(key(i), value(i)).unwrap()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("insert_1000_sync", |b| {
        b.iter(|| random_batch(&f.db, &mut r, 1000))
    });
    g.finish();
    report_file("durable store (100 k keys + benchmark writes)", &f);
}

fn writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("insert");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    let f = fresh(Durability::None, N);
    let mut next = N;
    g.bench_function("new_unsynced", |b| {
        b.iter(|| {
            next += 1;
            f.db.insert(key(next), value(next)).unwrap()
        })
    });
    let mut r = Rng(3);
    g.bench_function("overwrite_unsynced", |b| {
        b.iter(|| {
            let i = r.next() % N;
            f.db.insert(key(i), value(i)).unwrap()
        })
    });
    g.bench_function("remove", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(100_000);
                let base = r.next() % (N - n);
                let t = Instant::now();
                for i in base..base + n {
                    black_box(f.db.remove(key(i)).unwrap());
                }
                total += t.elapsed();
                load(&f.db, base..base + n);
                done += n;
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(1000));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("insert_1000_unsynced", |b| {
        b.iter(|| random_batch(&f.db, &mut r, 1000))
    });
    g.finish();
}

fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk_load");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("1M_batches_of_1000_then_flush", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("bulk.mapkv");
                (dir, path)
            },
            |(dir, path)| {
                let db = Db::open(&path).unwrap();
                load(&db, 0..N);
                db.flush().unwrap();
                (dir, db)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("1M_single_inserts", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("bulk.mapkv");
                (dir, path)
            },
            |(dir, path)| {
                let db = Db::open(&path).unwrap();
                for i in 0..N {
                    db.insert(key(i), value(i)).unwrap();
                }
                (dir, db)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Two dependent random reads in a shared file mapping, laid out like a
/// store: a table of 2 M slot words, each the offset of a 192-byte
/// "record" in a 256 MiB region after it.
struct Floor {
    map: memmap2::MmapMut,
    _file: std::fs::File,
}

const FLOOR_SLOTS: u64 = 1 << 21;
const FLOOR_LOG: u64 = 256 << 20;

impl Floor {
    fn new(dir: &std::path::Path) -> Floor {
        let file = tempfile::tempfile_in(dir).unwrap();
        let table = FLOOR_SLOTS * 8;
        file.set_len(table + FLOOR_LOG).unwrap();
        // SAFETY: a private temporary file nothing else maps.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
        let mut r = Rng(99);
        for s in 0..FLOOR_SLOTS as usize {
            let rec = table + (r.next() % (FLOOR_LOG / 8 - 24)) * 8;
            map[s * 8..s * 8 + 8].copy_from_slice(&rec.to_le_bytes());
        }
        for b in map[table as usize..].chunks_mut(4096) {
            b[0] = 1; // fault every page in, as the store's are
        }
        Floor { map, _file: file }
    }

    #[inline]
    fn read(&self, h: u64, out: &mut [u8; 192]) -> u8 {
        let s = (h >> 43) as usize * 8; // top 21 bits: the "home slot"
        let rec = u64::from_le_bytes(self.map[s..s + 8].try_into().unwrap()) as usize;
        out.copy_from_slice(&self.map[rec..rec + 192]);
        out[17]
    }
}

fn report_file(what: &str, f: &Fixture) {
    let s = f.db.stats();
    println!(
        "{what}: {} keys, file {:.1} MiB, used {:.1} MiB (live {:.1}, dead {:.1}, index {:.1})",
        s.keys,
        s.file_len as f64 / 1048576.0,
        s.used_bytes as f64 / 1048576.0,
        s.live_bytes as f64 / 1048576.0,
        s.dead_bytes as f64 / 1048576.0,
        s.index_bytes as f64 / 1048576.0,
    );
}

/// File size of a fresh 1 M-key store after a clean close, and memory.
fn sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("size.mapkv");
    {
        let db = Db::open(&path).unwrap();
        load(&db, 0..N);
    }
    let raw = N * (24 + VALUE as u64);
    let len = std::fs::metadata(&path).unwrap().len();
    println!(
        "1 M keys, closed: file {:.1} MiB for {:.1} MiB of raw keys+values ({:.3}x)",
        len as f64 / 1048576.0,
        raw as f64 / 1048576.0,
        len as f64 / raw as f64
    );
    let f = loaded();
    report_file("read store", f);
    let _ = &f.path;
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        for l in s.lines().filter(|l| {
            l.starts_with("VmHWM") || l.starts_with("RssAnon") || l.starts_with("RssFile")
        }) {
            println!("{l}");
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    reads(&mut c);
    durable(&mut c);
    writes(&mut c);
    bulk(&mut c);
    c.final_summary();
    sizes();
}
