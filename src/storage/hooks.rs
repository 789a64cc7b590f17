//! I/O hooks: every durability-relevant system call of a store (msync,
//! fsync, file growth, trim, write-back start) and a compaction's rename
//! call the hooks registered here twice: before the call (a hook may return
//! an error to make the call fail without running it) and after it
//! succeeded (so a power-loss simulator can record what has become
//! durable). Hooks see every store in the process and filter by path.
//! Public through `mapkv::testing`, for mapkv's own crash tests and fuzz
//! targets.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// A durability-relevant operation on a store's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// `msync(MS_SYNC)` of the page-aligned byte range.
    Msync {
        /// First byte (page-aligned).
        off: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `fsync` of the whole file (data, and the length).
    Fsync,
    /// Growth of the file from `from` to `to` bytes (allocate, then remap).
    Grow {
        /// Old length.
        from: u64,
        /// New length.
        to: u64,
    },
    /// Shrinking the file to `to` bytes on a clean close (then an fsync).
    Trim {
        /// New length.
        to: u64,
    },
    /// A compaction renames its new file over the store's name (the hook's
    /// path is the store's name). `Before`: the new file is complete and
    /// durable, the old one still is the store; `After`: the name is
    /// switched and the directory synced.
    Rename,
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: start write-back only.
    StartWriteback {
        /// First byte.
        off: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// When a hook is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the operation; returning `Some(error)` makes it fail.
    Before,
    /// After the operation succeeded; the return value is ignored.
    After,
}

/// A hook: `(file, operation, phase) -> error to inject`.
pub type IoHook = Arc<dyn Fn(&Path, IoOp, Phase) -> Option<io::Error> + Send + Sync>;

static ANY: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static HOOKS: RwLock<Vec<(u64, IoHook)>> = RwLock::new(Vec::new());

/// Removes its hook when dropped.
pub struct HookGuard(u64);

impl Drop for HookGuard {
    fn drop(&mut self) {
        let mut h = HOOKS.write();
        h.retain(|(id, _)| *id != self.0);
        ANY.store(!h.is_empty(), Ordering::Release);
    }
}

/// Register `hook` until the returned guard is dropped.
pub fn add_io_hook(hook: IoHook) -> HookGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut h = HOOKS.write();
    h.push((id, hook));
    ANY.store(true, Ordering::Release);
    HookGuard(id)
}

/// Call the hooks; the first injected error wins.
pub(crate) fn fire(path: &Path, op: IoOp, phase: Phase) -> io::Result<()> {
    if !ANY.load(Ordering::Acquire) {
        return Ok(());
    }
    let hooks: Vec<IoHook> = HOOKS.read().iter().map(|(_, h)| h.clone()).collect();
    let mut first = None;
    for h in hooks {
        if let Some(e) = h(path, op, phase) {
            first.get_or_insert(e);
        }
    }
    match (phase, first) {
        (Phase::Before, Some(e)) => Err(e),
        _ => Ok(()),
    }
}
