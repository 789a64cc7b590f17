//! Live updates across processes: a writer changes a value every interval;
//! a reader in another process prints each change as it happens, woken by
//! the store's change notification (a futex in the shared mapping: no
//! polling, no sockets).
//!
//! ```text
//! cargo run --example live_update                 # writer, with a reader child
//! cargo run --example live_update -- reader PATH  # a reader on its own
//! cargo run --example live_update -- writer PATH  # a writer on its own
//! ```
//! With no arguments it starts a reader process on a store in a temporary
//! directory, then writes ten updates, 100 ms apart, and a final "done".

use std::process::Command;
use std::time::{Duration, Instant};

use mapkv::{Db, Options};

const KEY: &[u8] = b"price";

fn main() -> mapkv::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("reader") => reader(args.get(1).expect("reader PATH")),
        Some("writer") => writer(args.get(1).expect("writer PATH"), 10),
        _ => {
            let dir = tempfile::tempdir().expect("temporary directory");
            let path = dir.path().join("live.mapkv");
            let db = Db::open(&path)?; // create it before the reader opens it
            db.insert(KEY, "0.00")?;
            let mut child = Command::new(std::env::current_exe().expect("own path"))
                .arg("reader")
                .arg(&path)
                .spawn()
                .expect("start the reader process");
            std::thread::sleep(Duration::from_millis(300)); // let it start waiting
            let wrote = writer(path.to_str().expect("UTF-8 path"), 10);
            let status = child.wait().expect("reader exit");
            wrote?;
            assert!(status.success(), "reader failed: {status}");
            Ok(())
        }
    }
}

fn writer(path: &str, updates: u32) -> mapkv::Result<()> {
    let db = Db::open(path)?;
    for i in 1..=updates {
        let price = format!("{}.{:02}", 100 + i * 3, (i * 37) % 100);
        db.insert(KEY, &price)?;
        println!("writer (pid {}): price = {price}", std::process::id());
        std::thread::sleep(Duration::from_millis(100));
    }
    db.insert(KEY, "done")?;
    Ok(())
}

fn reader(path: &str) -> mapkv::Result<()> {
    let db = Options::new().read_only(true).open(path)?;
    let pid = std::process::id();
    let mut seen = db.commit_seq();
    let mut last = db.get(KEY)?;
    let started = Instant::now();
    loop {
        // Sleeps until a commit lands in any process (or 5 s pass).
        let now = db.wait_for_change(seen, Duration::from_secs(5)).seq();
        if now == seen {
            println!("reader (pid {pid}): no change for 5 s, stopping");
            return Ok(());
        }
        seen = now;
        let v = db.get(KEY)?;
        if v != last {
            let text = v
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            println!(
                "reader (pid {pid}): price changed to {text} (commit {now}, after {:?})",
                started.elapsed()
            );
            if text == "done" {
                return Ok(());
            }
            last = v;
        }
    }
}
