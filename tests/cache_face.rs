//! The shared cache across processes: single flight of `get_or_insert_with`
//! (one computation among racing processes; a killed or panicking computer
//! hands over), atomic read-modify-write with exact totals, `clear` seen
//! by every process, and a capacity mismatch refused.
//!
//! Children are this test binary run again (`--exact child`), told what to
//! do through `MAPKV_CF_*` variables; they report on stdout in lines that
//! start with `@`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::store;
use mapkv::{Db, Error, Options};

const KEY: &[u8] = b"expensive";

/// The child side: run the role, report, exit.
#[test]
fn child() {
    let Ok(role) = std::env::var("MAPKV_CF_ROLE") else {
        return; // a normal test run
    };
    let path = PathBuf::from(std::env::var("MAPKV_CF_PATH").unwrap());
    let id: u64 = std::env::var("MAPKV_CF_ID").unwrap().parse().unwrap();
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "\n@{line}").unwrap();
        out.flush().unwrap();
    };
    match role.as_str() {
        "flight" => {
            // Wait for the start signal, then all race for the key.
            let go = path.with_extension("go");
            while !go.exists() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let db = Options::new()
                .lock_timeout(Duration::from_secs(60))
                .open(&path)
                .unwrap();
            let log = path.with_extension("computations");
            let v = db
                .get_or_insert_with(KEY, None, || {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap();
                    writeln!(f, "{id}").unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                    format!("computed by {id}").into_bytes()
                })
                .unwrap();
            say(format!("value {}", String::from_utf8(v.to_vec()).unwrap()));
        }
        "hang" => {
            // Claim the key, say so, and never finish.
            let db = Db::open(&path).unwrap();
            let _ = db.get_or_insert_with(KEY, None, || {
                say("computing".into());
                std::thread::sleep(Duration::from_secs(3600));
                unreachable!("killed before this")
            });
        }
        "after" => {
            let db = Options::new()
                .lock_timeout(Duration::from_secs(60))
                .open(&path)
                .unwrap();
            let started = Instant::now();
            let v = db
                .get_or_insert_with(KEY, None, || b"computed by the second".to_vec())
                .unwrap();
            say(format!(
                "value {} after {} ms",
                String::from_utf8(v.to_vec()).unwrap(),
                started.elapsed().as_millis()
            ));
        }
        "incr" => {
            let db = Db::open(&path).unwrap();
            for _ in 0..10_000 {
                db.increment(b"counter", 1).unwrap();
            }
            say("done".into());
        }
        "cas" => {
            let db = Db::open(&path).unwrap();
            let mut failures = 0u64;
            let mut done = 0;
            while done < 1_000 {
                let cur = db.get(b"cas").unwrap();
                let n: u64 = cur
                    .as_deref()
                    .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                let next = (n + 1).to_string();
                match db
                    .compare_and_swap(b"cas", cur.as_deref(), Some(next.as_bytes()))
                    .unwrap()
                {
                    Ok(()) => done += 1,
                    Err(_) => failures += 1,
                }
            }
            say(format!("done {failures}"));
        }
        "clear" => {
            let db = Db::open(&path).unwrap();
            say(format!("opened {}", db.len()));
            // Wait for the parent's clear.
            let cleared = path.with_extension("cleared");
            while !cleared.exists() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let gone = (0..1_000u32).all(|i| db.get(i.to_le_bytes()).unwrap().is_none());
            say(format!("after {} {gone}", db.len()));
            db.insert(b"from the child", b"1").unwrap();
            say("inserted".into());
        }
        "capacity" => {
            match Options::new().capacity(1 << 20).open(&path) {
                Err(Error::CapacityMismatch {
                    stored, requested, ..
                }) => say(format!("refused {stored} {requested}")),
                Err(e) => say(format!("error {e}")),
                Ok(_) => say("opened".into()),
            }
            let db = Db::open(&path).unwrap();
            say(format!("capacity {}", db.cache_stats().capacity));
        }
        other => panic!("unknown role {other}"),
    }
}

/// A child process and the `@` lines it prints.
struct Kid {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Kid {
    fn spawn(role: &str, path: &Path, id: u64) -> Kid {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env("MAPKV_CF_ROLE", role)
            .env("MAPKV_CF_PATH", path)
            .env("MAPKV_CF_ID", id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(l) = line.strip_prefix('@') {
                    let _ = tx.send(l.to_string());
                }
            }
        });
        Kid { child, lines: rx }
    }

    fn expect(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(120))
            .expect("a report from the child")
    }

    fn wait_ok(mut self) {
        let st = self.child.wait().unwrap();
        assert!(st.success(), "child failed: {st:?}");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn single_flight_across_processes_computes_once() {
    let (_dir, path) = store();
    Db::open(&path).unwrap().close().unwrap();
    let kids: Vec<Kid> = (0..8).map(|id| Kid::spawn("flight", &path, id)).collect();
    // Let them all get to the start line, then go.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(path.with_extension("go"), b"").unwrap();
    let values: Vec<String> = kids.iter().map(|k| k.expect()).collect();
    for k in kids {
        k.wait_ok();
    }
    let log = std::fs::read_to_string(path.with_extension("computations")).unwrap();
    let computations: Vec<&str> = log.lines().collect();
    assert_eq!(computations.len(), 1, "f ran in {computations:?}");
    let expected = format!("value computed by {}", computations[0]);
    assert!(values.iter().all(|v| *v == expected), "{values:?}");
}

#[test]
fn a_killed_computer_hands_over_before_the_timeout() {
    let (_dir, path) = store();
    Db::open(&path).unwrap().close().unwrap();
    let hang = Kid::spawn("hang", &path, 0);
    assert_eq!(hang.expect(), "computing");
    let after = Kid::spawn("after", &path, 1);
    std::thread::sleep(Duration::from_millis(200));
    drop(hang); // SIGKILL mid-computation: its claim goes with it
    let report = after.expect();
    let rest = report
        .strip_prefix("value computed by the second after ")
        .unwrap_or_else(|| panic!("{report}"));
    let ms: u64 = rest.trim_end_matches(" ms").parse().unwrap();
    // It computed because the claim was released, not because its
    // 60-second lock timeout ran out.
    assert!(ms < 30_000, "waited {ms} ms");
    after.wait_ok();
    assert_eq!(
        Db::open(&path).unwrap().get(KEY).unwrap().as_deref(),
        Some(&b"computed by the second"[..])
    );
}

#[test]
fn a_panicking_computer_hands_over_within_the_process() {
    let (_dir, path) = store();
    let db = Options::new()
        .lock_timeout(Duration::from_secs(60))
        .open(&path)
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (claimed_tx, claimed_rx) = std::sync::mpsc::channel();
    let first = {
        let (db, runs) = (db.clone(), runs.clone());
        std::thread::spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                db.get_or_insert_with(KEY, None, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    claimed_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("the computation failed");
                })
            }))
            .is_err()
        })
    };
    claimed_rx.recv().unwrap();
    let started = Instant::now();
    let v = db
        .get_or_insert_with(KEY, None, || {
            runs.fetch_add(1, Ordering::SeqCst);
            b"second".to_vec()
        })
        .unwrap();
    assert!(first.join().unwrap(), "the first caller panicked");
    assert_eq!(&*v, b"second");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn threads_share_one_computation() {
    let (_dir, path) = store();
    let db = Db::open(&path).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (db, runs) = (db.clone(), runs.clone());
            std::thread::spawn(move || {
                db.get_or_insert_with(KEY, None, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    b"once".to_vec()
                })
                .unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(&*t.join().unwrap(), b"once");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn increments_from_8_processes_add_up() {
    let (_dir, path) = store();
    Db::open(&path).unwrap().close().unwrap();
    let kids: Vec<Kid> = (0..8).map(|id| Kid::spawn("incr", &path, id)).collect();
    for k in kids {
        assert_eq!(k.expect(), "done");
        k.wait_ok();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(
        db.get(b"counter").unwrap().as_deref(),
        Some(&80_000i64.to_le_bytes()[..])
    );
    assert_eq!(db.increment(b"counter", 0).unwrap(), 80_000);
}

#[test]
fn compare_and_swap_races_lose_no_update() {
    let (_dir, path) = store();
    Db::open(&path).unwrap().close().unwrap();
    let kids: Vec<Kid> = (0..8).map(|id| Kid::spawn("cas", &path, id)).collect();
    let mut failures = 0u64;
    for k in kids {
        let r = k.expect();
        failures += r.strip_prefix("done ").unwrap().parse::<u64>().unwrap();
        k.wait_ok();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.get(b"cas").unwrap().as_deref(), Some(&b"8000"[..]));
    eprintln!("{failures} compare-and-swap attempts lost a race and retried");
}

#[test]
fn clear_is_seen_by_every_process() {
    let (_dir, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..1_000u32 {
        db.insert(i.to_le_bytes(), [7u8; 50]).unwrap();
    }
    let kid = Kid::spawn("clear", &path, 0);
    assert_eq!(kid.expect(), "opened 1000");
    db.clear().unwrap();
    assert_eq!(db.len(), 0);
    std::fs::write(path.with_extension("cleared"), b"").unwrap();
    assert_eq!(kid.expect(), "after 0 true");
    assert_eq!(kid.expect(), "inserted");
    kid.wait_ok();
    assert_eq!(db.len(), 1);
    assert!(db.contains_key(b"from the child").unwrap());
    db.check().unwrap();
}

#[test]
fn a_capacity_mismatch_is_refused() {
    let (_dir, path) = store();
    let cache = Options::new().capacity(4 << 20).open(&path).unwrap();
    let kid = Kid::spawn("capacity", &path, 0);
    assert_eq!(kid.expect(), format!("refused {} {}", 4 << 20, 1 << 20));
    assert_eq!(kid.expect(), format!("capacity {}", 4 << 20));
    kid.wait_ok();
    // Changed on purpose, it holds for everyone.
    cache.set_capacity(1 << 20).unwrap();
    let kid = Kid::spawn("capacity", &path, 1);
    assert_eq!(kid.expect(), "opened");
    assert_eq!(kid.expect(), format!("capacity {}", 1 << 20));
    kid.wait_ok();
}
