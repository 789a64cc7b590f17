//! File-level operations: create atomically, lock, allocate, fsync, boot id.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Open an existing file for reading (and writing, if `write`).
pub(crate) fn open_existing(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(write).open(path)
}

/// Create a new file next to `path` under a temporary name with `mode`, for
/// the caller to initialise and then [`publish`] under its real name.
pub(crate) fn create_temp(path: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{name}.mapkv-new.{}.{}",
            std::process::id(),
            random_u64() ^ attempt as u64
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not pick a temporary file name",
    ))
}

/// Give the fully initialised temporary file its real name, atomically and
/// without replacing anything: `link` fails if `path` exists. The temporary
/// name is removed in every case. Returns `Ok(false)` if `path` appeared in
/// the meantime (another process created it first).
pub(crate) fn publish(tmp: &Path, path: &Path) -> io::Result<bool> {
    let res = std::fs::hard_link(tmp, path);
    let _ = std::fs::remove_file(tmp);
    match res {
        Ok(()) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// fsync the directory holding `path`, so that a new name is durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Whether `file` was opened for reading and writing.
pub(crate) fn is_writable(file: &File) -> bool {
    // SAFETY: fcntl(F_GETFL) on our own open descriptor reads no memory.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && (flags & libc::O_ACCMODE) == libc::O_RDWR
}

// Locks on the store file. All are open-file-description (OFD) `fcntl`
// locks on single bytes far past any real file length (a store is at most
// 2^39 bytes; locks past end-of-file are allowed). The kernel keeps them
// per open file description, so they mean the same in every PID namespace,
// it drops them when the last descriptor of the description is closed
// (the holder exited, or was killed), and a stopped process keeps them. A
// write lock needs the file open for writing, so a user who may only read
// the file can take read locks at most. See docs/ARCHITECTURE.md, "Locks".

/// "A compaction is running" (write lock, held by the compactor).
const COMPACT_LOCK_BYTE: i64 = 1 << 62;
/// "This handle has the store open": every handle holds a read lock here;
/// a handle that can take the write lock is alone.
const OPEN_LOCK_BYTE: i64 = COMPACT_LOCK_BYTE + 1;
/// Registration slot `id` (1 ..= MAX_REGISTRATION) of a read-write handle
/// is the byte `REGISTRATION_BYTE + id`: its holder holds a lock there for
/// as long as it has the store open, which is how waiters for the writer
/// lock tell a live holder from a dead one.
const REGISTRATION_BYTE: i64 = COMPACT_LOCK_BYTE + 4096;

/// Single-flight claims (`Db::get_or_insert_with`): a caller computing a
/// missing key holds a write lock on byte `CLAIM_BYTE + bucket`, where the
/// bucket comes from the key's hash; the kernel drops it if the caller
/// dies.
const CLAIM_BYTE: i64 = COMPACT_LOCK_BYTE + (1 << 32);
/// How many claim buckets there are (keys that share one wait for each
/// other, then each computes: correct, only slower).
pub(crate) const CLAIM_BUCKETS: u64 = 1 << 20;

/// Take (`true`) or release the single-flight claim of `bucket` through
/// `file` (open for writing), without waiting. `Ok(false)`: another open
/// file description holds it.
pub(crate) fn claim(file: &File, bucket: u64, take: bool) -> io::Result<bool> {
    let at = CLAIM_BYTE + (bucket % CLAIM_BUCKETS) as i64;
    ofd_set(file, at, if take { Ofd::Write } else { Ofd::Unlock })
}

/// The kinds of [`ofd_set`] lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ofd {
    Read,
    Write,
    Unlock,
}

fn flock_struct(kind: Ofd, start: i64) -> libc::flock {
    // SAFETY: an all-zero `flock` struct is a valid value; the fields that
    // F_OFD_* read are set below (l_pid must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        Ofd::Read => libc::F_RDLCK,
        Ofd::Write => libc::F_WRLCK,
        Ofd::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

/// Set (or convert, or release) the OFD lock of `file`'s open file
/// description on byte `at`, without waiting. `Ok(false)`: another open
/// file description holds a conflicting lock, or (a write lock on a file
/// open only for reading) the lock cannot be had through this descriptor.
fn ofd_set(file: &File, at: i64, kind: Ofd) -> io::Result<bool> {
    let mut fl = flock_struct(kind, at);
    // SAFETY: fcntl on our own descriptor with a pointer to a local `flock`
    // that outlives the call; F_OFD_SETLK only reads it.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        Some(libc::EBADF) if kind == Ofd::Write => Ok(false),
        _ => Err(e),
    }
}

/// Whether an open file description other than `file`'s holds a lock on
/// bytes `at..at + len` that conflicts with `kind` (`Write`: any lock; `Read`: a
/// write lock). Asks the kernel (F_OFD_GETLK); takes nothing.
fn ofd_conflict(file: &File, at: i64, len: i64, kind: Ofd) -> io::Result<bool> {
    let mut fl = flock_struct(kind, at);
    fl.l_len = len;
    // SAFETY: as in ofd_set; F_OFD_GETLK writes the conflicting lock (or
    // F_UNLCK) into the local `flock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The open lock of a handle: every open handle holds it `Shared`; the
/// `Exclusive` one means "alone" (no other handle, in any process, has the
/// file open), and only a handle that is alone may re-initialise the
/// session words or cut the file. Converting between the two is atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenLock {
    Shared,
    Exclusive,
}

/// Take or convert the open lock without waiting. `Ok(false)` if another
/// handle holds a conflicting one (for `Exclusive`: any other handle has
/// the file open, or this descriptor is read-only).
pub(crate) fn open_lock(file: &File, kind: OpenLock) -> io::Result<bool> {
    let k = match kind {
        OpenLock::Shared => Ofd::Read,
        OpenLock::Exclusive => Ofd::Write,
    };
    ofd_set(file, OPEN_LOCK_BYTE, k)
}

/// Take or release the compaction lock on `file`. `Ok(false)` if another
/// handle holds it.
pub(crate) fn compact_lock(file: &File, take: bool) -> io::Result<bool> {
    ofd_set(
        file,
        COMPACT_LOCK_BYTE,
        if take { Ofd::Write } else { Ofd::Unlock },
    )
}

/// Highest registration slot id (ids are 1 ..= this; 0 means "nobody" in
/// the writer lock word, whose low 12 bits hold an id).
pub(crate) const MAX_REGISTRATION: u16 = 4095;

/// A claimed registration slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub id: u16,
    /// Held under a write lock (the normal case): only a write lock on the
    /// slot then says its holder is alive, which nobody who can merely read
    /// the file can fake. `false`: shared under a read lock (see
    /// [`register`]).
    pub exclusive: bool,
}

/// Claim a registration slot for a read-write handle through `file`
/// (which must be open for writing): a write lock on the slot's byte, held
/// until `file`'s open file description is closed. Slots are tried from a
/// random start, skipping `avoid` (the slot the writer lock names: if its
/// holder died, taking its slot would hide the death). If every slot is
/// taken or read-locked (4095 writers, or a user who can read the file
/// holds read locks on all of them), a slot is shared under a read lock:
/// still safe, because the holder of such a slot counts as alive while
/// *any* other description holds a lock on it; a dead holder is then
/// noticed only once the other lockers are gone.
pub(crate) fn register(file: &File, avoid: u16) -> io::Result<Slot> {
    let n = MAX_REGISTRATION as u64;
    let start = random_u64() % n;
    let ids = || {
        (0..n)
            .map(|i| ((start + i) % n + 1) as u16)
            .filter(|&id| id != avoid)
    };
    for id in ids() {
        if ofd_set(file, REGISTRATION_BYTE + id as i64, Ofd::Write)? {
            return Ok(Slot {
                id,
                exclusive: true,
            });
        }
    }
    for id in ids() {
        if ofd_set(file, REGISTRATION_BYTE + id as i64, Ofd::Read)? {
            return Ok(Slot {
                id,
                exclusive: false,
            });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "every writer registration slot of the store is write-locked: \
         4095 read-write handles have it open",
    ))
}

/// Whether the handle registered in `slot` still has the store open, by
/// the kernel's word: some open file description other than `file`'s holds
/// a write lock on the slot (an exclusive registration), or any lock (a
/// shared one). `file` should be the description the caller registered
/// through, so that its own registration does not count.
pub(crate) fn registration_held(file: &File, slot: Slot) -> io::Result<bool> {
    // F_RDLCK conflicts only with write locks; F_WRLCK with any lock.
    let probe = if slot.exclusive {
        Ofd::Read
    } else {
        Ofd::Write
    };
    ofd_conflict(file, REGISTRATION_BYTE + slot.id as i64, 1, probe)
}

/// Whether any read-write handle (other than through `file`) has the store
/// open under an exclusive registration: one `F_OFD_GETLK` over every
/// registration byte. (Shared registrations, made only while someone
/// read-locks every slot, are not seen: then the answer is no, and the
/// caller treats the store as having no writer, which is the safe side.)
pub(crate) fn writer_registered(file: &File) -> io::Result<bool> {
    ofd_conflict(
        file,
        REGISTRATION_BYTE + 1,
        MAX_REGISTRATION as i64,
        Ofd::Read,
    )
}

/// Format 1 stores were shared under `flock`: before upgrading one to this
/// format, make sure no process of an older mapkv has it open (each held a
/// `flock` while it did). Takes the exclusive `flock` without waiting;
/// `Ok(false)` if anyone holds one. Released by [`legacy_unlock`].
pub(crate) fn legacy_lock(file: &File) -> io::Result<bool> {
    match fs2::FileExt::try_lock_exclusive(file) {
        Ok(()) => Ok(true),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock
                || e.raw_os_error() == Some(libc::EWOULDBLOCK) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Release the `flock` taken by [`legacy_lock`].
pub(crate) fn legacy_unlock(file: &File) -> io::Result<()> {
    fs2::FileExt::unlock(file)
}

/// Open another open file description of the file behind `file` (after a
/// `fork`, the child shares the parent's descriptions and so its locks;
/// it registers through a description of its own). Through
/// `/proc/self/fd`, or, where /proc is not mounted, through `path`, if
/// that still names the same file.
pub(crate) fn reopen(file: &File, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p);
    if let Ok(f) = rw(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd()))) {
        return Ok(f);
    }
    let f = rw(path)?;
    let (a, b) = (file.metadata()?, f.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other(
            "the store's path names another file now, and /proc is not mounted",
        ));
    }
    Ok(f)
}

/// Reserve disk blocks for `[old_len, new_len)` and extend the file to
/// `new_len`, so that a later store into the mapping never needs to allocate
/// (a full disk is an `Err` here, not a SIGBUS later).
///
/// We call `posix_fallocate` directly rather than `fs2::FileExt::allocate`:
/// posix_fallocate returns its error number instead of setting errno, and
/// fs2 0.4 reads errno, which turns ENOSPC into an unrelated error. Where the
/// filesystem cannot allocate (EOPNOTSUPP), this fails: extending the file
/// without blocks would leave a hole, and a store into a hole on a full disk
/// is a SIGBUS. A request that is larger than the filesystem's free space is
/// refused up front (ENOSPC) rather than filling the disk for everyone and
/// failing at the end. On failure the file length is put back to `old_len`.
pub(crate) fn allocate(file: &File, old_len: u64, new_len: u64) -> io::Result<()> {
    let len = new_len
        .checked_sub(old_len)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "growth too large"))?;
    let start = i64::try_from(old_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    if len == 0 {
        return Ok(());
    }
    if free_bytes(file).is_some_and(|free| len as u64 > free) {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let res = fallocate_range(file, start, len);
    if let Err(e) = res {
        // posix_fallocate may leave the size changed on failure; nobody maps
        // past old_len yet, so putting it back is safe.
        if file.metadata().map(|m| m.len() != old_len).unwrap_or(false) {
            let _ = file.set_len(old_len);
        }
        return Err(e);
    }
    Ok(())
}

/// `posix_fallocate(fd, start, len)`, with its error number as an
/// `io::Error`; EOPNOTSUPP and ENOSYS get a message that says why mapkv
/// needs it.
fn fallocate_range(file: &File, start: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain syscall wrapper on our own open descriptor; no memory
    // is passed, and both arguments are non-negative `off_t`s.
    let rc = unsafe {
        libc::posix_fallocate(file.as_raw_fd(), start as libc::off_t, len as libc::off_t)
    };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::ENOSYS => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the filesystem cannot reserve disk blocks ({}); mapkv does not leave \
                 holes in the file, because a store into a hole on a full disk is a SIGBUS",
                io::Error::from_raw_os_error(rc)
            ),
        )),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Bytes the filesystem holding `file` has free, if it says.
fn free_bytes(file: &File) -> Option<u64> {
    // SAFETY: an all-zero `statvfs` is a valid value for fstatvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs on our own descriptor writes only into `st`, a local
    // that outlives the call.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    if rc != 0 || st.f_frsize == 0 {
        return None;
    }
    Some((st.f_bfree as u64).saturating_mul(st.f_frsize as u64))
}

/// Make sure every block below `len` (the file's length) is allocated, so
/// that no store into the mapping has to allocate: a sparse file (from
/// `cp --sparse`, `rsync -S`, a restore) on a full disk would otherwise
/// raise SIGBUS at the first store into a hole. Cheap when there is no
/// hole: only if the allocated size (`st_blocks`) is less than the length
/// is `posix_fallocate` run over the whole length, which fills the holes
/// and leaves the data and the length as they are. (`SEEK_HOLE` is no
/// help: ext4 reports preallocated, unwritten blocks, which every mapkv
/// file has past its log, as holes.)
pub(crate) fn fill_holes(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(len_i) = i64::try_from(len) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file too large",
        ));
    };
    if len == 0 || file.metadata()?.blocks().saturating_mul(512) >= len {
        return Ok(());
    }
    fallocate_range(file, 0, len_i)
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions, touches no memory of ours and
    // cannot fail.
    unsafe { libc::geteuid() }
}

/// 16 bytes that identify the running kernel boot.
///
/// `MAPKV_BOOT_ID`, when set, replaces the value from
/// `/proc/sys/kernel/random/boot_id`, so tests can simulate a reboot. Where
/// neither is available the id is all zeros, which recovery treats as
/// "unknown": every unclean open then verifies the whole log.
pub(crate) fn boot_id() -> [u8; 16] {
    let text = match std::env::var("MAPKV_BOOT_ID") {
        Ok(v) => v,
        Err(_) => std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
    };
    let text = text.trim();
    if text.is_empty() {
        return [0; 16];
    }
    let h = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
    let id = h.to_le_bytes();
    if id == [0; 16] {
        [1; 16]
    } else {
        id
    }
}

/// A random 64-bit number from the OS-seeded hasher keys of std (no extra
/// dependency), mixed with the time and pid.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The hidden name of a compaction's new file: `.NAME.mapkv-compact-PID-R`
/// next to the store.
pub(crate) fn compact_temp_name(path: &Path) -> PathBuf {
    let (dir, name) = dir_and_name(path);
    dir.join(format!(
        ".{name}.mapkv-compact-{}-{:x}",
        std::process::id(),
        random_u64()
    ))
}

fn dir_and_name(path: &Path) -> (PathBuf, String) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

/// Remove new files of compactions that did not finish. Only called with
/// the compaction lock held, or by an opener that is alone on the store
/// (a running compaction keeps the store open), so none is in use.
pub(crate) fn remove_compact_leftovers(path: &Path) {
    let (dir, name) = dir_and_name(path);
    // The new file, and the temporary file it is created under first.
    let prefix = format!(".{name}.mapkv-compact-");
    let creating = format!("..{name}.mapkv-compact-");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) || n.starts_with(&creating) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_stable_and_overridable() {
        let a = boot_id();
        assert_eq!(a, boot_id());
        assert_ne!(a, [0; 16], "this test machine has a boot id");
    }

    #[test]
    fn random_differs() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn create_publish_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let (f, tmp) = create_temp(&path, 0o600).unwrap();
        allocate(&f, 0, 65536).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 65536);
        assert!(publish(&tmp, &path).unwrap());
        assert!(!tmp.exists());
        // A second publish under the same name refuses to replace it.
        let (_f2, tmp2) = create_temp(&path, 0o600).unwrap();
        assert!(!publish(&tmp2, &path).unwrap());
        let a = open_existing(&path, true).unwrap();
        let b = open_existing(&path, true).unwrap();
        assert!(open_lock(&a, OpenLock::Exclusive).unwrap());
        assert!(!open_lock(&b, OpenLock::Exclusive).unwrap());
        assert!(!open_lock(&b, OpenLock::Shared).unwrap());
        // Converting to shared lets others share, atomically.
        assert!(open_lock(&a, OpenLock::Shared).unwrap());
        assert!(open_lock(&b, OpenLock::Shared).unwrap());
        assert!(!open_lock(&a, OpenLock::Exclusive).unwrap());
        drop(a);
        assert!(open_lock(&b, OpenLock::Exclusive).unwrap());
    }

    #[test]
    fn open_lock_needs_write_access_to_be_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        let ro = open_existing(&path, false).unwrap();
        // A reader can share, never exclude.
        assert!(!open_lock(&ro, OpenLock::Exclusive).unwrap());
        assert!(open_lock(&ro, OpenLock::Shared).unwrap());
        // And a reader's flock, even exclusive, does not stop anyone.
        fs2::FileExt::try_lock_exclusive(&ro).unwrap();
        let rw = open_existing(&path, true).unwrap();
        assert!(open_lock(&rw, OpenLock::Shared).unwrap());
    }

    #[test]
    fn registration_is_seen_by_others_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg");
        std::fs::write(&path, b"x").unwrap();
        let a = open_existing(&path, true).unwrap();
        let b = open_existing(&path, true).unwrap();
        let sa = register(&a, 0).unwrap();
        let sb = register(&b, sa.id).unwrap();
        assert!(sa.exclusive && sb.exclusive);
        assert_ne!(sa.id, sb.id);
        assert!((1..=MAX_REGISTRATION).contains(&sa.id));
        // Each sees the other's registration, not its own.
        assert!(registration_held(&b, sa).unwrap());
        assert!(!registration_held(&a, sa).unwrap());
        // A reader's read lock on an exclusive slot does not fake a live
        // holder. Once the description is closed, the kernel drops the lock.
        drop(a);
        let reader = open_existing(&path, false).unwrap();
        assert!(ofd_set(&reader, REGISTRATION_BYTE + sa.id as i64, Ofd::Read).unwrap());
        assert!(!registration_held(&b, sa).unwrap());
        // A shared slot counts any lock as alive (conservative).
        let shared = Slot {
            id: sa.id,
            exclusive: false,
        };
        assert!(registration_held(&b, shared).unwrap());
        drop(reader);
        assert!(!registration_held(&b, shared).unwrap());
        // A second description of the same file (what a forked child
        // opens) registers apart from the first.
        let c = reopen(&b, &path).unwrap();
        let sc = register(&c, 0).unwrap();
        assert_ne!(sc.id, sb.id);
        assert!(registration_held(&c, sb).unwrap());
    }

    #[test]
    fn registration_falls_back_to_sharing_when_read_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg");
        std::fs::write(&path, b"x").unwrap();
        let reader = open_existing(&path, false).unwrap();
        let mut fl = flock_struct(Ofd::Read, 0);
        fl.l_len = 0; // every offset
                      // SAFETY: fcntl on our own descriptor with a pointer to a local
                      // flock, which outlives the call.
        let rc = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
        assert_eq!(rc, 0);
        let w = open_existing(&path, true).unwrap();
        let s = register(&w, 0).unwrap();
        assert!(!s.exclusive);
    }
}
