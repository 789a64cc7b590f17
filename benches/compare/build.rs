//! Reads the resolved versions of the peers from the workspace's Cargo.lock
//! so that the benchmark's output names exactly what it measured.

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
    ] {
        let version = version_of(&text, krate).unwrap_or_else(|| "?".into());
        println!("cargo:rustc-env=VERSION_{var}={version}");
    }
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
