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

/// Try to take the file lock: exclusive for a writer, shared for a reader.
/// `Ok(false)` means someone else holds a conflicting lock.
pub(crate) fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    // Fully qualified: std's File gained inherent methods of the same names.
    let res = if exclusive {
        fs2::FileExt::try_lock_exclusive(file)
    } else {
        fs2::FileExt::try_lock_shared(file)
    };
    match res {
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

/// Whether `file` was opened for reading and writing.
pub(crate) fn is_writable(file: &File) -> bool {
    // SAFETY: fcntl(F_GETFL) on our own open descriptor reads no memory.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && (flags & libc::O_ACCMODE) == libc::O_RDWR
}

/// Take the shared open lock, blocking (used to step down from exclusive;
/// the exclusive lock is replaced, so another opener may slip in between
/// and recover first, which is harmless: this handle is already set up and
/// reloads all shared state under the writer lock).
pub(crate) fn lock_shared(file: &File) -> io::Result<()> {
    fs2::FileExt::lock_shared(file)
}

/// Byte of the store file whose OFD lock means "a compaction is running".
/// Far past any real length (locks past end-of-file are allowed); an
/// `fcntl` lock, so independent of the `flock` open lock.
const COMPACT_LOCK_BYTE: i64 = 1 << 62;

/// Take or release the compaction lock on `file` (an open-file-description
/// lock: released by the kernel when the holder dies or closes the file).
/// `Ok(false)` if another handle holds it.
pub(crate) fn compact_lock(file: &File, take: bool) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an all-zero `flock` struct is a valid value; we then set
        // the fields F_OFD_SETLK reads.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = if take { libc::F_WRLCK } else { libc::F_UNLCK } as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = COMPACT_LOCK_BYTE;
        fl.l_len = 1;
        // SAFETY: fcntl on our own descriptor with a pointer to a local
        // `flock` that outlives the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, take);
        Ok(true)
    }
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
        assert!(try_lock(&a, true).unwrap());
        assert!(!try_lock(&b, true).unwrap());
        assert!(!try_lock(&b, false).unwrap());
        drop(a);
        assert!(try_lock(&b, false).unwrap());
    }
}
