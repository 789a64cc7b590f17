//! Every value in the file is hostile: control-block words set to extremes
//! while a handle holds the store open (so the control block is live and is
//! not reset by an open) must never make compaction, eviction, `len`,
//! `stats`, `iter` or `get` panic, abort, allocate without bound or hang.
//! Each call returns `Ok` or an `Err`.
//!
//! Each (word, mode) pair runs in a child process of this test binary, so
//! that an abort (a failed allocation) or a hang is caught as a failure of
//! that pair; inside the child, each value runs under `catch_unwind`.
//!
//! Every word mapkv reads from the control block is changed, the writer
//! lock's too: a lock word that names a live handle's registration makes
//! writers time out (after the 500 ms `lock_timeout` used here), one that
//! names nobody is taken over and repaired.

mod common;

use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{seed, Rng};
use mapkv::testing::layout::control as c;
use mapkv::testing::CONTROL_OFFSET;
use mapkv::{Db, Options};

/// The control-block words this test may change: (offset in the block,
/// name). See src/storage/control.rs.
const WORDS: &[(u64, &str)] = &[
    (c::VERSION as u64, "version"),
    (c::TAIL as u64, "tail"),
    (c::SEQ_GEN as u64, "seq_gen"),
    (c::INDEX_DESC as u64, "index_desc"),
    (c::INDEX_USED as u64, "index_used"),
    (c::LIVE_KEYS as u64, "live_keys"),
    (c::LIVE_BYTES as u64, "live_bytes"),
    (c::GENERATION as u64, "generation"),
    (c::FILE_LEN as u64, "file_len"),
    (c::DURABLE_TAIL as u64, "durable_tail"),
    (c::DURABLE_SEQ_GEN as u64, "durable_seq_gen"),
    (c::DURABLE_LEN as u64, "durable_len"),
    (c::META_SEQ as u64, "meta_seq"),
    (c::SYNCED_COPY as u64, "synced_copy"),
    (c::WRITER as u64, "writer"),
    (c::WRITERS as u64, "writers"),
    (c::CAPACITY as u64, "capacity"),
    (c::EVICTED as u64, "evicted"),
    (c::EXPIRED as u64, "expired"),
    (c::EVICT_RUNS as u64, "evict_runs"),
    (c::SESSION_BOOT as u64, "session_boot"),
    ((c::SESSION_BOOT + 8) as u64, "session_boot+8"),
    (c::WAITERS as u64, "waiters"),
    (c::WRITER_LOCK as u64, "writer_lock"),
];

/// The extreme values every word gets, then two random ones.
const FIXED: &[u64] = &[0, 1, 1 << 39, 1 << 60, u64::MAX];
const RANDOM_PER_WORD: usize = 2;

/// Write `v` into the control-block word at `off` of the file at `path`,
/// through the page cache (the live handle's mapping sees it at once).
fn poke(path: &Path, off: u64, v: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the store file to poke it");
    f.write_all_at(&v.to_le_bytes(), CONTROL_OFFSET + off)
        .expect("poke");
}

fn fill(db: &Db, from: u32, n: u32, vlen: usize) -> mapkv::Result<()> {
    for i in from..from + n {
        db.insert(format!("key-{i}"), vec![i as u8; vlen])?;
    }
    Ok(())
}

/// Everything a handle does with the store: each call must return, with
/// `Ok` or an `Err`. Errors are fine (the file is damaged), panics are not.
fn exercise(db: &Db, path: &Path, off: u64, v: u64, cache: bool) {
    let _ = db.len();
    let _ = db.is_empty();
    let _ = db.stats();
    let _ = db.cache_stats();
    let _ = db.get("key-1");
    let _ = db.get("absent");
    for item in db.iter().take(100_000) {
        let _ = item;
    }
    let _ = db.check();
    let _ = db.compact();
    // The compaction may have moved the store to a fresh file: damage that
    // one too, and do it all again, writes (and, in cache mode, evictions)
    // included.
    poke(path, off, v);
    let _ = db.insert("after", "compaction");
    let _ = fill(db, 10_000, if cache { 1_500 } else { 50 }, 700);
    poke(path, off, v);
    let _ = db.len();
    let _ = db.stats();
    let _ = db.cache_stats();
    let _ = db.get("key-10001");
    for item in db.iter().take(100_000) {
        let _ = item;
    }
    let _ = db.compact();
    let _ = db.flush();
}

/// One word, every value, in this process.
fn child(off: u64, cache: bool, values: &[u64]) {
    for &v in values {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.mapkv");
        let opts = || {
            let o = Options::new().lock_timeout(Duration::from_millis(500));
            if cache {
                o.capacity(1 << 20)
            } else {
                o
            }
        };
        // The holder keeps the store open: the control block stays live.
        let holder = opts().open(&path).unwrap();
        fill(&holder, 0, 300, 100).unwrap();
        for i in 0..100u32 {
            holder.remove(format!("key-{i}")).unwrap();
        }
        poke(&path, off, v);
        let r = catch_unwind(AssertUnwindSafe(|| {
            exercise(&holder, &path, off, v, cache);
            // A second handle joins the damaged live store.
            if let Ok(other) = opts().open(&path) {
                exercise(&other, &path, off, v, cache);
                let _ = other.close();
            }
        }));
        if r.is_err() {
            println!("PANIC word {off} value {v:#x} cache {cache}");
            std::process::exit(3);
        }
        let _ = catch_unwind(AssertUnwindSafe(|| holder.close()));
        println!("OK word {off} value {v:#x}");
    }
}

#[test]
fn control_block_words_at_extremes_never_panic_abort_or_hang() {
    if let Ok(spec) = std::env::var("MAPKV_HOSTILE_CHILD") {
        let mut it = spec.split(',');
        let off: u64 = it.next().unwrap().parse().unwrap();
        let cache = it.next().unwrap() == "1";
        let values: Vec<u64> = it.map(|v| v.parse().unwrap()).collect();
        child(off, cache, &values);
        return;
    }
    let s = seed("hostile_words");
    let mut rng = Rng::new(s);
    let mut jobs = Vec::new();
    for &(off, name) in WORDS {
        for cache in [false, true] {
            let mut values = FIXED.to_vec();
            values.extend((0..RANDOM_PER_WORD).map(|_| rng.next()));
            jobs.push((off, name, cache, values));
        }
    }
    let total: usize = jobs.iter().map(|j| j.3.len()).sum();
    let exe = std::env::current_exe().unwrap();
    let mut running: Vec<(String, std::process::Child, Instant)> = Vec::new();
    let mut failures = Vec::new();
    let mut jobs = jobs.into_iter();
    const PARALLEL: usize = 3;
    const LIMIT: Duration = Duration::from_secs(120);
    loop {
        while running.len() < PARALLEL {
            let Some((off, name, cache, values)) = jobs.next() else {
                break;
            };
            let spec = std::iter::once(off.to_string())
                .chain(std::iter::once(if cache { "1" } else { "0" }.to_string()))
                .chain(values.iter().map(|v| v.to_string()))
                .collect::<Vec<_>>()
                .join(",");
            let child = Command::new(&exe)
                .args([
                    "--exact",
                    "control_block_words_at_extremes_never_panic_abort_or_hang",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("MAPKV_HOSTILE_CHILD", spec)
                .env("RUST_BACKTRACE", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let what = format!("{name} (offset {off}, cache {cache}, values {values:x?})");
            running.push((what, child, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut i = 0;
        while i < running.len() {
            let (what, child, started) = &mut running[i];
            match child.try_wait().unwrap() {
                Some(status) => {
                    let out = child.wait_with_output_lossy();
                    if !status.success() {
                        failures.push(format!("{what}: {status}\n{out}"));
                    }
                    running.remove(i);
                }
                None if started.elapsed() > LIMIT => {
                    let _ = child.kill();
                    let out = child.wait_with_output_lossy();
                    failures.push(format!("{what}: hung for {LIMIT:?}\n{out}"));
                    running.remove(i);
                }
                None => i += 1,
            }
        }
    }
    eprintln!("hostile words: {total} mutations of {} words", WORDS.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

trait Lossy {
    fn wait_with_output_lossy(&mut self) -> String;
}

impl Lossy for std::process::Child {
    fn wait_with_output_lossy(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut o) = self.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(mut e) = self.stderr.take() {
            let mut t = String::new();
            let _ = e.read_to_string(&mut t);
            // Where it panicked or aborted, and why.
            let lines: Vec<&str> = t.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.contains("panicked at") || l.contains("memory allocation") {
                    s.push_str(&lines[i..(i + 2).min(lines.len())].join("\n"));
                    s.push('\n');
                }
            }
        }
        let _ = self.wait();
        s
    }
}

/// The file's bytes and modification time.
fn fingerprint(path: &Path) -> (Vec<u8>, std::time::SystemTime) {
    let md = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), md.modified().unwrap())
}

/// A read-only handle never writes the file, in any mode: gets (hits and
/// misses; in cache mode a read-write handle would count the hits in the
/// slots), iteration, statistics, a check, a wait for a change that times
/// out, and close leave every byte and the mtime as they were.
#[test]
fn a_read_only_handle_leaves_the_file_byte_for_byte_unchanged() {
    for cache in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.mapkv");
        let o = Options::new();
        let db = if cache { o.capacity(1 << 20) } else { o }
            .open(&path)
            .unwrap();
        fill(&db, 0, 500, 100).unwrap();
        db.insert_with_ttl("short", "lived", Duration::from_millis(1))
            .unwrap();
        db.close().unwrap();
        let before = fingerprint(&path);
        // Let the clock move past the mtime's granularity, so that a write
        // would show in it.
        std::thread::sleep(Duration::from_millis(20));

        let ro = Options::new().read_only(true).open(&path).unwrap();
        for round in 0..3 {
            for i in 0..600u32 {
                let got = ro.get(format!("key-{i}")).unwrap();
                assert_eq!(got.is_some(), i < 500, "round {round} key {i}");
            }
        }
        assert!(ro.get("short").unwrap().is_none());
        assert_eq!(ro.iter().count(), 500);
        let _ = ro.get_many(&["key-1", "absent"]).unwrap();
        let _ = ro.stats();
        let _ = ro.cache_stats();
        ro.check().unwrap();
        let seq = ro.commit_seq();
        let waited = Instant::now();
        assert_eq!(
            ro.wait_for_change(seq, Duration::from_millis(50)),
            mapkv::Wait::TimedOut(seq)
        );
        assert!(waited.elapsed() >= Duration::from_millis(50));
        assert!(ro.insert("k", "v").is_err());
        ro.close().unwrap();

        let after = fingerprint(&path);
        assert!(
            before.0 == after.0,
            "cache {cache}: a read-only handle changed the file's bytes (first at {:?})",
            before.0.iter().zip(&after.0).position(|(a, b)| a != b)
        );
        assert_eq!(before.1, after.1, "cache {cache}: mtime changed");
    }
}

/// A read-only handle still sees changes promptly without registering as
/// a waiter: a commit from a read-write handle wakes its wait within a few
/// milliseconds (it polls with bounded futex waits).
#[test]
fn a_read_only_waiter_sees_a_commit_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wait.mapkv");
    let db = Db::open(&path).unwrap();
    let ro = Options::new().read_only(true).open(&path).unwrap();
    let seq = ro.commit_seq();
    let w = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        db.insert("news", "!").unwrap();
        Instant::now()
    });
    let now = ro.wait_for_change(seq, Duration::from_secs(10)).seq();
    let woke = Instant::now();
    let committed = w.join().unwrap();
    assert!(now > seq);
    assert!(woke.duration_since(committed) < Duration::from_millis(500));
    assert_eq!(ro.get("news").unwrap().as_deref(), Some(&b"!"[..]));
}
