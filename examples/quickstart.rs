//! The quick start: create a store, write, read, batch, reopen, and time a
//! few hundred thousand operations.
//!
//! ```text
//! cargo run --release --example quickstart [PATH]
//! ```
//! Without PATH the store goes to a fresh temporary directory.

use std::time::Instant;

use mapkv::{Db, Durability, Options};

fn main() -> mapkv::Result<()> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("quickstart.mapkv"));
    println!("store: {}", path.display());

    // 1. Open (creates the file) and write.
    let db = Db::open(&path)?;
    db.insert(b"greeting", b"hello, mapped world")?;
    let v = db.get(b"greeting")?.expect("just written");
    println!("get(greeting) = {:?}", String::from_utf8_lossy(&v));

    // 2. A batch: all or nothing, even across a crash.
    let mut batch = db.batch();
    for i in 0..3u32 {
        batch.insert(format!("fruit:{i}"), ["apple", "pear", "plum"][i as usize]);
    }
    batch.remove(b"greeting");
    batch.commit()?;
    println!(
        "after batch: {} keys, greeting present: {}",
        db.len(),
        db.contains_key(b"greeting")?
    );

    // 3. Many writes and reads, timed.
    let n = 200_000u32;
    let t = Instant::now();
    let mut b = db.batch();
    for i in 0..n {
        b.insert(format!("key:{i:08}"), i.to_le_bytes());
        if b.len() == 1000 {
            std::mem::replace(&mut b, db.batch()).commit()?;
        }
    }
    b.commit()?;
    let w = t.elapsed();
    let t = Instant::now();
    let mut sum = 0u64;
    for i in 0..n {
        let v = db.get(format!("key:{i:08}"))?.expect("written above");
        sum += u32::from_le_bytes(v[..4].try_into().unwrap()) as u64;
    }
    let r = t.elapsed();
    assert_eq!(sum, (n as u64 - 1) * n as u64 / 2);
    println!(
        "{n} inserts (batches of 1000): {:.0} ns each; {n} gets: {:.0} ns each",
        w.as_nanos() as f64 / n as f64,
        r.as_nanos() as f64 / n as f64
    );

    // 4. Make it durable, close, reopen: everything is there.
    db.flush()?;
    db.close()?;
    let db = Options::new().durability(Durability::Sync).open(&path)?;
    let s = db.stats();
    println!(
        "reopened ({:?}): {} keys, file {} KiB, index {}/{} slots ({:.0}% load)",
        s.opened,
        s.keys,
        s.file_len / 1024,
        s.index_used,
        s.index_capacity,
        s.index_load * 100.0
    );
    assert_eq!(db.get(b"fruit:1")?.as_deref(), Some(&b"pear"[..]));
    db.insert(b"durable", b"on disk before this returns")?;
    println!("ok");
    Ok(())
}
