//! Reads the resolved versions of the peers from the workspace's Cargo.lock
//! so that the benchmark's output names exactly what it measured, and the
//! version of the system's RocksDB from its header.
//!
//! With the `rocksdb` feature it also refuses to go on unless RocksDB comes
//! from the system (`ROCKSDB_LIB_DIR`): without it, librocksdb-sys would
//! compile RocksDB's C++ from source, which takes long on a small machine
//! and measures another build of RocksDB than the one named. Set
//! `ROCKSDB_COMPILE=1` to want that after all.

use std::path::Path;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let lock = Path::new(&dir).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "rustc ?".into());
    println!("cargo:rustc-env=RUSTC_VERSION={version}");
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for (krate, var) in [
        ("mapkv", "MAPKV"),
        ("redb", "REDB"),
        ("heed", "HEED"),
        ("lmdb-master-sys", "LMDB_SYS"),
        ("sled", "SLED"),
        ("fjall", "FJALL"),
        ("rocksdb", "ROCKSDB"),
        ("librocksdb-sys", "LIBROCKSDB_SYS"),
    ] {
        let version = version_of(&text, krate).unwrap_or_else(|| "?".into());
        println!("cargo:rustc-env=VERSION_{var}={version}");
    }
    rocksdb();
}

/// The RocksDB version in the headers the bindings are generated from, and
/// the guard against compiling RocksDB from source.
fn rocksdb() {
    for var in ["ROCKSDB_LIB_DIR", "ROCKSDB_INCLUDE_DIR", "ROCKSDB_COMPILE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let feature = std::env::var_os("CARGO_FEATURE_ROCKSDB").is_some();
    let from_source = std::env::var("ROCKSDB_COMPILE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if feature && !from_source && std::env::var_os("ROCKSDB_LIB_DIR").is_none() {
        panic!(
            "\n\nmapkv-compare: the `rocksdb` feature links to the system's RocksDB \
             (Debian: apt-get install librocksdb-dev libclang-dev), found through \
             ROCKSDB_LIB_DIR and ROCKSDB_INCLUDE_DIR, e.g.\n\n  \
             ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu ROCKSDB_INCLUDE_DIR=/usr/include cargo build --release -p mapkv-compare --features rocksdb\n\n\
             scripts/bench-compare sets them. Without ROCKSDB_LIB_DIR librocksdb-sys would compile RocksDB's C++ \
             from source; set ROCKSDB_COMPILE=1 to want that.\n"
        );
    }
    let version = if feature && from_source {
        "7.9.2 (bundled with librocksdb-sys, compiled from source)".to_string()
    } else {
        let include =
            std::env::var("ROCKSDB_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
        let header = Path::new(&include).join("rocksdb/version.h");
        if header.exists() {
            println!("cargo:rerun-if-changed={}", header.display());
        }
        let text = std::fs::read_to_string(&header).unwrap_or_default();
        let part = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("#define {name} ")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        format!(
            "{}.{}.{}",
            part("ROCKSDB_MAJOR"),
            part("ROCKSDB_MINOR"),
            part("ROCKSDB_PATCH")
        )
    };
    println!("cargo:rustc-env=ROCKSDB_HEADER_VERSION={version}");
}

fn version_of(lock: &str, krate: &str) -> Option<String> {
    let want = format!("name = \"{krate}\"");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == want {
            let v = lines.next()?.trim();
            return Some(
                v.strip_prefix("version = \"")?
                    .trim_end_matches('"')
                    .to_string(),
            );
        }
    }
    None
}
