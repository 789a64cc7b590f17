//! Fork safety: a `Db` opened before `fork()` must work in the child.
//!
//! The child inherits the parent's handle: its mapping, its file
//! descriptors and the locks that hang off them (an OFD lock belongs to the
//! open file description, which parent and child now share). So each
//! handle remembers the fork generation it was opened in, and a child
//! reopens the store on first use; the inherited handle is never used or
//! dropped there (it is leaked: see `db.rs`).
//!
//! The generation is the library's (`mapkv::fork_generation`, bumped by a
//! `pthread_atfork` child handler), so the check on every call is one
//! relaxed atomic load (no `getpid` system call), and forks made by C code
//! are seen as well as `os.fork()`.

/// Start counting forks, once per process (the first call registers the
/// handler).
pub(crate) fn install() {
    let _ = mapkv::fork_generation();
}

/// The current fork generation: it changes in every forked child.
pub(crate) fn generation() -> u64 {
    mapkv::fork_generation()
}
