//! The writer that runs on the crash file system until its power is cut.
//!
//!     crashfs-writer STORE SEED START MODE
//!
//! Opens STORE with durability MODE (`none`, `async` or `sync`) and makes
//! commits START, START+1, ... of the workload SEED
//! (`mapkv_crashfs::workload::commit`), forever. After each call returns it
//! reports on stdout, one line each: `A id` (acknowledged), `S id`
//! (acknowledged under `Sync`), `F id` (a `flush()` returned after commit
//! `id`). It reports `@S` before opening, `@O kind` once open, and
//! `@E message` on an error, after which it waits to be killed. It gives up
//! by itself after two minutes.
//!
//!     crashfs-writer --check STORE
//!
//! The checker: opens STORE twice (each time `check`, every key read,
//! iteration and `len` compared with the reads), and prints `@K kind` (how
//! the first open recovered), `V key hex-value` for every key it holds and
//! `@D`; or `@X message` and exit status 1. It runs in a process of its
//! own, never in the process that serves the file system: a `munmap` that
//! writes dirty pages back holds the process's mmap lock while it waits
//! for the daemon, and a daemon thread in the same process that faults on
//! its own buffer then waits for that lock.

use std::io::Write;
use std::time::{Duration, Instant};

use mapkv::{Durability, Options};
use mapkv_crashfs::workload::{commit, key, value};

const LIMIT: Duration = Duration::from_secs(120);

fn emit(out: &mut impl Write, line: &str) {
    // One write a line: a kill can only cut the last one short, and the
    // parent ignores a line without its newline.
    if out
        .write_all(line.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        std::process::exit(4);
    }
}

fn fail(out: &mut impl Write, started: Instant, msg: String) -> ! {
    emit(out, &format!("@E {}\n", msg.replace('\n', " ")));
    // The parent cut the power (the error is its doing) or will find the
    // error unexplained; either way it kills us.
    while started.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::exit(3);
}

fn check(store: &str) -> Result<(), String> {
    use mapkv_crashfs::workload::{parse_key, KEYS};
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut first: Option<Vec<Option<Vec<u8>>>> = None;
    for pass in 0..2 {
        let db = Options::new()
            .lock_timeout(Duration::from_secs(30))
            .open(store)
            .map_err(|e| format!("open (pass {pass}): {e}"))?;
        if pass == 0 {
            emit(&mut out, &format!("@K {:?}\n", db.stats().opened));
        }
        db.check()
            .map_err(|e| format!("check (pass {pass}): {e}"))?;
        let mut vals = Vec::with_capacity(KEYS as usize);
        for k in 0..KEYS {
            let v = db.get(key(k)).map_err(|e| format!("get k{k:04}: {e}"))?;
            vals.push(v.map(|v| v.to_vec()));
        }
        let present = vals.iter().filter(|v| v.is_some()).count();
        let mut iterated = 0usize;
        for item in db.iter() {
            let (k, v) = item.map_err(|e| format!("iterate: {e}"))?;
            let n = parse_key(&k).ok_or_else(|| format!("a key that was never written: {k:?}"))?;
            if vals[n as usize].as_deref() != Some(&v[..]) {
                return Err(format!("iteration and get disagree on k{n:04}"));
            }
            iterated += 1;
        }
        if iterated != present || db.len() != present as u64 {
            return Err(format!(
                "{present} keys by get, {iterated} by iteration, len() {}",
                db.len()
            ));
        }
        db.close().map_err(|e| format!("close: {e}"))?;
        match &first {
            None => first = Some(vals),
            Some(f) if *f != vals => return Err("a second open found other contents".into()),
            Some(_) => {}
        }
    }
    let mut line = String::new();
    for (k, v) in first.expect("two passes").iter().enumerate() {
        if let Some(v) = v {
            line.clear();
            line.push_str(&format!("V {k} "));
            for b in v {
                line.push_str(&format!("{b:02x}"));
            }
            line.push('\n');
            emit(&mut out, &line);
        }
    }
    emit(&mut out, "@D\n");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--check" {
        if let Err(e) = check(&args[2]) {
            let stdout = std::io::stdout();
            emit(
                &mut stdout.lock(),
                &format!("@X {}\n", e.replace('\n', " ")),
            );
            std::process::exit(1);
        }
        return;
    }
    if args.len() != 5 {
        eprintln!("usage: crashfs-writer STORE SEED START MODE | crashfs-writer --check STORE");
        std::process::exit(2);
    }
    let store = &args[1];
    let (Ok(seed), Ok(start)) = (args[2].parse::<u64>(), args[3].parse::<u64>()) else {
        eprintln!("crashfs-writer: SEED and START must be numbers");
        std::process::exit(2);
    };
    let (mode, sync) = match args[4].as_str() {
        "none" => (Durability::None, false),
        "async" => (Durability::Async, false),
        "sync" => (Durability::Sync, true),
        m => {
            eprintln!("crashfs-writer: MODE must be none, async or sync, not {m:?}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    emit(&mut out, "@S\n");
    let db = match Options::new()
        .durability(mode)
        .initial_size(64 << 10)
        .growth_step(64 << 10)
        .open(store)
    {
        Ok(db) => db,
        Err(e) => fail(&mut out, started, format!("open: {e}")),
    };
    emit(&mut out, &format!("@O {:?}\n", db.stats().opened));
    let mut id = start;
    loop {
        if started.elapsed() > LIMIT {
            eprintln!("crashfs-writer: not killed within {LIMIT:?}");
            std::process::exit(5);
        }
        let c = commit(seed, id);
        let res = if c.batch {
            let mut b = db.batch();
            for &(k, w) in &c.writes {
                match w {
                    Some(len) => b.insert(key(k), value(k, id, len)),
                    None => b.remove(key(k)),
                };
            }
            b.commit()
        } else {
            let (k, w) = c.writes[0];
            match w {
                Some(len) => db.insert(key(k), value(k, id, len)),
                None => db.remove(key(k)).map(|_| ()),
            }
        };
        if let Err(e) = res {
            fail(&mut out, started, format!("commit {id}: {e}"));
        }
        emit(
            &mut out,
            &format!("{} {id}\n", if sync { "S" } else { "A" }),
        );
        if c.flush_after && !sync {
            if let Err(e) = db.flush() {
                fail(&mut out, started, format!("flush after {id}: {e}"));
            }
            emit(&mut out, &format!("F {id}\n"));
        }
        id += 1;
    }
}
