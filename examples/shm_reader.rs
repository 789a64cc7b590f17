//! The reading half of the shared-memory demo: open the store that
//! `shm_writer` wrote (read-only) and read the struct back.
//!
//! ```text
//! cargo run --example shm_writer [PATH]
//! cargo run --example shm_reader [PATH]
//! ```

use bytemuck::{Pod, Zeroable};
use mapkv::Options;

/// The same layout as in `shm_writer`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Row {
    id: u64,
    temperature_mk: i64,
    readings: u32,
    _pad: u32,
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(default_path);
    let db = match Options::new().read_only(true).create(false).open(&path) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("shm_reader: {e}\n(run `cargo run --example shm_writer {path}` first)");
            std::process::exit(1);
        }
    };
    match db.get_pod::<Row>(b"row") {
        Ok(Some(row)) => println!(
            "read {row:?}: id {}, {:.2} °C, {} readings",
            row.id,
            row.temperature_mk as f64 / 1000.0 - 273.15,
            row.readings
        ),
        Ok(None) => {
            eprintln!("shm_reader: no \"row\" in {path} yet");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("shm_reader: {e}");
            std::process::exit(1);
        }
    }
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
