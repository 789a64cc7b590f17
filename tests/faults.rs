//! Disk full and I/O errors: every failure is an `Err` from the call that
//! hit it, never a signal; the store stays consistent, readable, and
//! writable for what fits; a failed sync poisons the handle, and a reopen
//! recovers everything that was acknowledged.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::store;
use mapkv::testing::{add_io_hook, IoOp, Phase};
use mapkv::{Db, Durability, Error, Options};

/// Fail operations on `path` that `pick` selects with `errno`.
fn inject(
    path: &Path,
    errno: i32,
    pick: impl Fn(IoOp) -> bool + Send + Sync + 'static,
) -> mapkv::testing::HookGuard {
    let me = path.to_path_buf();
    add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
        (p == me && phase == Phase::Before && pick(op)).then(|| io::Error::from_raw_os_error(errno))
    }))
}

fn fill_until_error(db: &Db, from: u32, value: &[u8]) -> (u32, Error) {
    let mut i = from;
    loop {
        match db.insert(i.to_le_bytes(), value) {
            Ok(()) => i += 1,
            Err(e) => return (i, e),
        }
        assert!(i < from + 1_000_000, "never ran out of space");
    }
}

#[test]
fn injected_enospc_on_growth_keeps_the_store_usable() {
    let (_d, path) = store();
    let db = Options::new().initial_size(128 << 10).open(&path).unwrap();
    let guard = inject(&path, libc_enospc(), |op| matches!(op, IoOp::Grow { .. }));
    let (n, err) = fill_until_error(&db, 0, &[5u8; 700]);
    assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
    assert!(n > 50);
    db.check().unwrap();
    for i in 0..n {
        assert_eq!(db.get(i.to_le_bytes()).unwrap().unwrap().len(), 700);
    }
    // Small writes that fit in the file still work; big ones fail cleanly.
    let mut small_ok = 0;
    for i in 0..5u32 {
        if db.insert((1_000_000 + i).to_le_bytes(), b"s").is_ok() {
            small_ok += 1;
        }
    }
    assert!(matches!(
        db.insert(b"big", vec![0u8; 1 << 20]),
        Err(Error::OutOfSpace { .. })
    ));
    assert!(db.remove(0u32.to_le_bytes()).is_ok() || small_ok == 0);
    drop(guard);
    // Once space is back, writes go on, and everything is there after reopen.
    db.insert(b"after", vec![1u8; 1 << 20]).unwrap();
    db.close().unwrap();
    let db = Db::open(&path).unwrap();
    db.check().unwrap();
    assert_eq!(db.get(b"after").unwrap().unwrap().len(), 1 << 20);
    assert_eq!(db.get(5u32.to_le_bytes()).unwrap().unwrap().len(), 700);
}

#[test]
fn failed_msync_poisons_the_handle_and_reopen_recovers() {
    let (_d, path) = store();
    let db = Options::new()
        .durability(Durability::Sync)
        .open(&path)
        .unwrap();
    for i in 0..100u32 {
        db.insert(i.to_le_bytes(), [1u8; 50]).unwrap();
    }
    let guard = inject(&path, libc_eio(), |op| {
        matches!(op, IoOp::Msync { .. } | IoOp::Fsync)
    });
    let err = db.insert(b"lost", b"?").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    drop(guard);
    // The failure is sticky: Linux reports a write-back error once and marks
    // the pages clean, so this handle can no longer promise anything.
    match db.insert(b"more", b"!") {
        Err(e @ Error::Poisoned { .. }) => assert!(e.to_string().contains("reopen"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(db.flush(), Err(Error::Poisoned { .. })));
    // Reads still work.
    assert_eq!(db.get(7u32.to_le_bytes()).unwrap().unwrap().len(), 50);
    assert_eq!(
        db.get(b"lost").unwrap(),
        None,
        "a commit whose sync failed became visible"
    );
    drop(db);
    let db = Db::open(&path).unwrap();
    db.check().unwrap();
    for i in 0..100u32 {
        assert_eq!(
            db.get(i.to_le_bytes()).unwrap().unwrap().len(),
            50,
            "acknowledged key {i} lost"
        );
    }
    db.insert(b"more", b"!").unwrap();
}

#[test]
fn failed_flush_poisons_and_unsynced_writes_survive_in_the_page_cache() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..100u32 {
        db.insert(i.to_le_bytes(), [2u8; 50]).unwrap();
    }
    let guard = inject(&path, libc_eio(), |op| matches!(op, IoOp::Msync { .. }));
    assert!(matches!(db.flush(), Err(Error::Io { .. })));
    drop(guard);
    assert!(matches!(db.insert(b"x", b"y"), Err(Error::Poisoned { .. })));
    drop(db); // no clean close on a poisoned handle
    let db = Db::open(&path).unwrap();
    assert_ne!(db.stats().opened, mapkv::OpenKind::Clean);
    assert_eq!(db.len(), 100);
    db.check().unwrap();
}

#[test]
fn other_growth_errors_are_io_errors() {
    let (_d, path) = store();
    let db = Options::new().initial_size(64 << 10).open(&path).unwrap();
    let _guard = inject(&path, libc_eio(), |op| matches!(op, IoOp::Grow { .. }));
    let (_, err) = fill_until_error(&db, 0, &[3u8; 500]);
    assert!(
        matches!(
            err,
            Error::Io {
                op: "grow file",
                ..
            }
        ),
        "{err:?}"
    );
    db.check().unwrap();
}

/// A real full filesystem: a 2 MiB tmpfs (needs root and mount; skipped
/// with a printed reason where that is not available). The test process
/// would die of SIGBUS if a store ever touched unallocated space.
#[test]
fn real_full_tmpfs_gives_out_of_space_not_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mount) = Tmpfs::mount(&mnt, "2m") else {
        return;
    };
    let path = mnt.join("full.mapkv");
    let db = Options::new()
        .initial_size(64 << 10)
        .growth_step(256 << 10)
        .open(&path)
        .unwrap();
    let (n, err) = fill_until_error(&db, 0, &[9u8; 1000]);
    assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
    eprintln!("tmpfs full after {n} inserts: {err}");
    db.check().unwrap();
    for i in (0..n).step_by(37) {
        assert_eq!(db.get(i.to_le_bytes()).unwrap().unwrap().len(), 1000);
    }
    // Removing is a small append that may still fit; either way no signal.
    let _ = db.remove(1u32.to_le_bytes());
    drop(db);
    let db = Db::open(&path).unwrap();
    db.check().unwrap();
    assert!(db.len() >= n as u64 - 1);
}

fn libc_enospc() -> i32 {
    28
}

fn libc_eio() -> i32 {
    5
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED real_full_tmpfs: cannot mount a tmpfs here ({})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED real_full_tmpfs: no mount command ({e})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
