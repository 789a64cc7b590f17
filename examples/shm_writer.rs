//! The classic shared-memory demo, persistent and crash-safe: this process
//! stores a `#[repr(C)]` struct under a key; `shm_reader`, a separate
//! process, maps the same file and reads it back.
//!
//! ```text
//! cargo run --example shm_writer [PATH]     # then:
//! cargo run --example shm_reader [PATH]
//! ```
//! PATH defaults to `/dev/shm/mapkv-demo.mapkv`: on tmpfs the store lives in
//! memory only (no disk I/O, gone at reboot) with the same API. Give a path
//! on a disk for a store that survives reboots.

use bytemuck::{Pod, Zeroable};
use mapkv::Db;

/// Three integer columns, laid out as in C. Both programs define it alike.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Row {
    id: u64,
    temperature_mk: i64,
    readings: u32,
    _pad: u32,
}

fn main() -> mapkv::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(default_path);
    let db = Db::open(&path)?;
    let row = Row {
        id: 7,
        temperature_mk: 293_150,
        readings: db.get_pod::<Row>(b"row")?.map_or(1, |r| r.readings + 1),
        _pad: 0,
    };
    db.insert_pod(b"row", &row)?;
    println!("wrote {row:?} to {path}");
    println!("now run: cargo run --example shm_reader {path}");
    Ok(())
}

fn default_path() -> String {
    if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm/mapkv-demo.mapkv".into()
    } else {
        std::env::temp_dir()
            .join("mapkv-demo.mapkv")
            .to_string_lossy()
            .into_owned()
    }
}
