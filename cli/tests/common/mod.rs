//! Helpers for the tool's tests (a few of the library's tests/common, which
//! this package cannot reach).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A small, fast, seedable PRNG (SplitMix64), so tests need no extra crate
/// and every failure can be replayed from its seed.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The seed for a randomized test: `MAPKV_SEED` if set, else a fresh one.
/// Printed so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("MAPKV_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: MAPKV_SEED={s}");
    s
}

/// A temporary directory with a store path in it.
pub fn store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.mapkv");
    (dir, path)
}

/// Hold the store's open lock exclusively, as an opener that is recovering
/// the store does: an OFD write lock on byte 2^62 + 1 (docs/FORMAT.md),
/// through a descriptor open for writing. Released when the file drops.
pub fn hold_open_lock(path: &Path) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a zeroed flock is a valid value; F_OFD_SETLK reads the local.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = (1 << 62) + 1;
    fl.l_len = 1;
    // SAFETY: fcntl on our own descriptor with a pointer to a local.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    f
}
