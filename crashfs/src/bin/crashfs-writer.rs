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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: crashfs-writer STORE SEED START MODE");
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
