//! Fork safety: a `Db` opened before `fork()` must work in the child.
//!
//! The child inherits the parent's handle: its mapping, its file
//! descriptors and the locks that hang off them (a `flock` belongs to the
//! open file description, which parent and child now share). Using that
//! handle from the child would make the two processes one writer in the
//! kernel's eyes. So each handle remembers the fork generation it was
//! opened in, and a child reopens the store on first use; the inherited
//! handle is never used or dropped there (it is leaked: see `db.rs`).
//!
//! The generation is bumped by a `pthread_atfork` child handler, so the
//! check on every call is one relaxed atomic load (no `getpid` system
//! call), and forks made by C code are seen as well as `os.fork()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Register the child handler, once per process.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `in_child` is an `extern "C" fn()` that lives for the whole
        // program and only does an atomic add, which is async-signal-safe
        // (a child of a multithreaded process may run only such code).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        // Only ENOMEM is possible; without the handler a child would use the
        // inherited handle, which the library tolerates.
        debug_assert_eq!(rc, 0);
    });
}

/// The current fork generation: it changes in every forked child.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}
