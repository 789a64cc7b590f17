//! A FUSE file system that models a disk with a volatile write cache, for
//! mapkv's crash tests (issue 16). It sits *below* the library: a program
//! runs unchanged through the real kernel path (`mmap`, `msync`, `fsync`,
//! `ftruncate`, `posix_fallocate`), and this file system sees only what the
//! kernel passes down to it.
//!
//! # The model
//!
//! The daemon is the disk. The kernel's page cache above it is lost on a
//! power cut by construction: the mount is torn down and a fresh one (with
//! a cold page cache) is made over the disk image. What the kernel has
//! passed down is held in the disk's *volatile cache*:
//!
//! - every `WRITE`, `SETATTR(size)` and `FALLOCATE` that arrives is applied
//!   to the file's *current* contents (what reads see) and appended to the
//!   file's list of *unsynced* operations;
//! - an `FSYNC` of a file (from `fsync`, `fdatasync` or `msync(MS_SYNC)`,
//!   which the kernel turns into write-back of the dirty pages as `WRITE`s
//!   and then one `FSYNC` with the datasync flag) makes everything that
//!   arrived for that file before it durable. FUSE's `FSYNC` carries no
//!   range, so a synced range makes every earlier write of the file
//!   durable: a disk flush does the same to data the kernel has already
//!   written back;
//! - [`Mount::cut_power`] stops the disk: from then on every operation
//!   fails with `EIO`, so nothing more is acknowledged. [`Mount::unmount`]
//!   then builds the image a disk could hold after the cut: the durable
//!   contents plus all, none, or a random subset of the unsynced writes
//!   ([`Loss`]), each kept whole, dropped, or torn at 512-byte sectors;
//!   file lengths take the value after a random prefix of the unsynced
//!   length changes (metadata is journalled in order on the file systems
//!   we model).
//!
//! Names (create, rename, unlink) are durable at once: the model covers
//! data and file length, not directory entries. There is one directory,
//! the root. `flock` is the kernel's (local to the mount).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

pub mod harness;
pub mod rng;
pub mod workload;

pub use rng::Rng;

/// Sector size of the modelled disk: a torn write keeps or loses whole
/// sectors.
pub const SECTOR: u64 = 512;

/// A disk image: file name (in the root directory) to contents.
pub type Image = BTreeMap<String, Vec<u8>>;

/// What a power cut does with the writes the disk had not made durable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Every unsynced write reached the platter (and every length change).
    KeepAll,
    /// None did.
    DropAll,
    /// Each unsynced write is kept with probability `keep` (0..=1), lost
    /// otherwise; a write that is neither kept nor lost whole is torn with
    /// probability `tear`: each of its 512-byte sectors is kept or lost on
    /// its own. The file length is the one after a random prefix of the
    /// unsynced length changes.
    Random {
        /// Probability that a write is kept whole.
        keep: f64,
        /// Probability that a write is torn.
        tear: f64,
    },
}

/// One operation the disk has received but not made durable.
#[derive(Clone, Debug)]
enum Unsynced {
    Write { off: u64, data: Vec<u8> },
    SetLen(u64),
}

/// One file's state.
#[derive(Clone, Debug)]
struct Inode {
    /// What the platter holds.
    durable: Vec<u8>,
    /// What reads see: `durable` with `unsynced` applied in order.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    nlink: u32,
}

impl Inode {
    fn new(data: Vec<u8>, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            durable: data.clone(),
            current: data,
            unsynced: Vec::new(),
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
            nlink: 1,
        }
    }
}

fn apply_write(buf: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    let end = off + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[off..end].copy_from_slice(data);
}

/// Counts of what the file system received, since it was mounted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `WRITE` operations.
    pub writes: u64,
    /// Bytes in them.
    pub write_bytes: u64,
    /// `WRITE`s flagged as coming from the page cache (`FUSE_WRITE_CACHE`).
    pub cache_writes: u64,
    /// `FSYNC` operations with the datasync flag (`fdatasync`, `msync`).
    pub fdatasyncs: u64,
    /// `FSYNC` operations without it (`fsync`).
    pub fsyncs: u64,
    /// `FSYNCDIR` operations.
    pub fsyncdirs: u64,
    /// `FLUSH` operations (one per `close` of a descriptor).
    pub flushes: u64,
    /// `SETATTR` operations that set the size (`ftruncate`).
    pub truncates: u64,
    /// `FALLOCATE` operations.
    pub fallocates: u64,
    /// `READ` operations.
    pub reads: u64,
    /// Operations refused with `EIO` after the power was cut.
    pub refused_after_cut: u64,
}

/// What a power cut left, per file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced writes at the moment of the cut.
    pub unsynced_writes: u64,
    /// Of which kept whole.
    pub kept: u64,
    /// Of which lost whole.
    pub lost: u64,
    /// Of which torn at sectors.
    pub torn: u64,
    /// Unsynced length changes.
    pub unsynced_lengths: u64,
    /// Of which applied (a prefix).
    pub lengths_applied: u64,
}

impl CutReport {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &CutReport) {
        self.unsynced_writes += other.unsynced_writes;
        self.kept += other.kept;
        self.lost += other.lost;
        self.torn += other.torn;
        self.unsynced_lengths += other.unsynced_lengths;
        self.lengths_applied += other.lengths_applied;
    }
}

struct Inner {
    names: BTreeMap<String, u64>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    powered: bool,
    /// Test of the tests: FSYNC answers OK but makes nothing durable.
    lying: bool,
    counters: Counters,
    trace: Option<Vec<String>>,
}

impl Inner {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        if ino == 1 {
            let now = SystemTime::now();
            return Some(FileAttr {
                ino: INodeNo(1),
                size: 0,
                blocks: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                kind: FileType::Directory,
                perm: 0o755,
                nlink: 2,
                uid: 0,
                gid: 0,
                rdev: 0,
                blksize: 4096,
                flags: 0,
            });
        }
        let i = self.inodes.get(&ino)?;
        let size = i.current.len() as u64;
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: i.mtime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.ctime,
            kind: FileType::RegularFile,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(f());
        }
    }

    /// A length change on the volatile cache.
    fn set_len(&mut self, ino: u64, len: u64) -> bool {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return false;
        };
        i.current.resize(len as usize, 0);
        i.unsynced.push(Unsynced::SetLen(len));
        i.mtime = SystemTime::now();
        true
    }
}

/// The FUSE side: every operation locks the shared state.
struct CrashFs {
    inner: Arc<Mutex<Inner>>,
}

const TTL: Duration = Duration::from_secs(1);

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic in one handler must not wedge the mount: the state is still
    // usable (every update below is a single step).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Err(EIO)` once the power is cut (and counts it).
macro_rules! powered {
    ($g:expr, $reply:expr) => {
        if !$g.powered {
            $g.counters.refused_after_cut += 1;
            $reply.error(Errno::EIO);
            return;
        }
    };
}

fn name_str(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_string)
}

impl Filesystem for CrashFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let g = lock(&self.inner);
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        let ino = name_str(name).and_then(|n| g.names.get(&n).copied());
        match ino.and_then(|i| g.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let g = lock(&self.inner);
        match g.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        if !g.inodes.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        if let Some(len) = size {
            g.counters.truncates += 1;
            g.log(|| format!("SETATTR ino={} size={len}", ino.0));
            g.set_len(ino.0, len);
        }
        let i = g.inodes.get_mut(&ino.0).expect("checked above");
        if let Some(m) = mode {
            i.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(gr) = gid {
            i.gid = gr;
        }
        if let Some(t) = mtime {
            i.mtime = match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
        }
        i.ctime = SystemTime::now();
        let a = g.attr(ino.0).expect("exists");
        reply.attr(&TTL, &a)
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.create_file(req, parent, name, mode, umask) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.create_file(req, parent, name, mode, umask) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        let Some(n) = name_str(name).filter(|_| parent.0 == 1) else {
            return reply.error(Errno::ENOENT);
        };
        g.log(|| format!("UNLINK {n}"));
        match g.names.remove(&n) {
            Some(ino) => {
                if let Some(i) = g.inodes.get_mut(&ino) {
                    i.nlink = i.nlink.saturating_sub(1);
                }
                reply.ok()
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        if parent.0 != 1 || newparent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let (Some(from), Some(to)) = (name_str(name), name_str(newname)) else {
            return reply.error(Errno::ENOENT);
        };
        g.log(|| format!("RENAME {from} -> {to} {flags:?}"));
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && g.names.contains_key(&to) {
            return reply.error(Errno::EEXIST);
        }
        let Some(ino) = g.names.remove(&from) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(old) = g.names.insert(to, ino) {
            if let Some(i) = g.inodes.get_mut(&old) {
                i.nlink = i.nlink.saturating_sub(1);
            }
        }
        reply.ok()
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        let Some(n) = name_str(newname).filter(|_| newparent.0 == 1) else {
            return reply.error(Errno::ENOENT);
        };
        if g.names.contains_key(&n) {
            return reply.error(Errno::EEXIST);
        }
        let Some(i) = g.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        i.nlink += 1;
        i.ctime = SystemTime::now();
        g.log(|| format!("LINK ino={} -> {n}", ino.0));
        g.names.insert(n, ino.0);
        let a = g.attr(ino.0).expect("exists");
        reply.entry(&TTL, &a, Generation(0))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut g = lock(&self.inner);
        if !g.inodes.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        g.log(|| format!("OPEN ino={} flags={:#x}", ino.0, flags.0));
        // No FOPEN_DIRECT_IO: a writable shared mapping needs the page cache.
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        g.counters.reads += 1;
        let Some(i) = g.inodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let start = (offset as usize).min(i.current.len());
        let end = (start + size as usize).min(i.current.len());
        reply.data(&i.current[start..end])
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        g.counters.writes += 1;
        g.counters.write_bytes += data.len() as u64;
        let from_cache = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        if from_cache {
            g.counters.cache_writes += 1;
        }
        g.log(|| {
            format!(
                "WRITE ino={} off={offset} len={}{}",
                ino.0,
                data.len(),
                if from_cache { " cache" } else { "" }
            )
        });
        let Some(i) = g.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let before = i.current.len() as u64;
        apply_write(&mut i.current, offset, data);
        let after = i.current.len() as u64;
        if after != before {
            // An extending write changes the length too: record it as a
            // length change, so a power cut may keep or lose it in order.
            i.unsynced.push(Unsynced::SetLen(after));
        }
        i.unsynced.push(Unsynced::Write {
            off: offset,
            data: data.to_vec(),
        });
        i.mtime = SystemTime::now();
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let mut g = lock(&self.inner);
        g.counters.flushes += 1;
        g.log(|| format!("FLUSH ino={}", ino.0));
        // A close is not a sync: nothing becomes durable.
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        if datasync {
            g.counters.fdatasyncs += 1;
        } else {
            g.counters.fsyncs += 1;
        }
        g.log(|| format!("FSYNC ino={} datasync={datasync}", ino.0));
        if g.lying {
            return reply.ok();
        }
        let Some(i) = g.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        // Everything the disk received for this file is now durable
        // (fdatasync also makes the length durable when it changed).
        for op in std::mem::take(&mut i.unsynced) {
            match op {
                Unsynced::Write { off, data } => apply_write(&mut i.durable, off, &data),
                Unsynced::SetLen(len) => i.durable.resize(len as usize, 0),
            }
        }
        debug_assert_eq!(i.durable, i.current);
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let g = lock(&self.inner);
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (1u64, FileType::Directory, ".".to_string()),
            (1, FileType::Directory, "..".to_string()),
        ];
        for (n, &i) in &g.names {
            entries.push((i, FileType::RegularFile, n.clone()));
        }
        for (idx, (i, kind, n)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), idx as u64 + 1, kind, n) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        g.counters.fsyncdirs += 1;
        g.log(|| "FSYNCDIR".to_string());
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 4 GiB of 4 KiB blocks, all free.
        reply.statfs(1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 4096, 255, 4096)
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut g = lock(&self.inner);
        powered!(g, reply);
        g.counters.fallocates += 1;
        g.log(|| {
            format!(
                "FALLOCATE ino={} off={offset} len={length} mode={mode}",
                ino.0
            )
        });
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let Some(cur) = g.inodes.get(&ino.0).map(|i| i.current.len() as u64) else {
            return reply.error(Errno::ENOENT);
        };
        let end = offset.saturating_add(length);
        if end > cur {
            g.set_len(ino.0, end);
        }
        reply.ok()
    }
}

impl CrashFs {
    fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        let mut g = lock(&self.inner);
        if !g.powered {
            g.counters.refused_after_cut += 1;
            return Err(Errno::EIO);
        }
        if parent.0 != 1 {
            return Err(Errno::ENOENT);
        }
        let n = name_str(name).ok_or(Errno::EINVAL)?;
        if g.names.contains_key(&n) {
            return Err(Errno::EEXIST);
        }
        g.log(|| format!("CREATE {n}"));
        let ino = g.next_ino;
        g.next_ino += 1;
        let perm = (mode & !umask & 0o7777) as u16;
        g.inodes
            .insert(ino, Inode::new(Vec::new(), perm, req.uid(), req.gid()));
        g.names.insert(n, ino);
        Ok(g.attr(ino).expect("just made"))
    }
}

/// A mounted crash file system.
pub struct Mount {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    session: Option<fuser::BackgroundSession>,
    _one: OneMount,
}

/// One mount at a time in a process (tests in one binary take turns).
///
/// The daemon runs in threads of the process that mounts, so that process
/// must never map a file of the mount: a `munmap` that writes dirty pages
/// back holds the process's mmap lock while it waits for the daemon, and a
/// daemon thread that faults on its own buffer waits for that lock (seen
/// as a hang in `fuse_vma_close`). The harness opens stores through child
/// processes only; the probe leaves no dirty page mapped.
struct OneMount;

static MOUNTED: Mutex<bool> = Mutex::new(false);
static MOUNT_FREE: std::sync::Condvar = std::sync::Condvar::new();

impl OneMount {
    fn take() -> OneMount {
        let mut m = MOUNTED.lock().unwrap_or_else(|p| p.into_inner());
        while *m {
            m = MOUNT_FREE.wait(m).unwrap_or_else(|p| p.into_inner());
        }
        *m = true;
        OneMount
    }
}

impl Drop for OneMount {
    fn drop(&mut self) {
        *MOUNTED.lock().unwrap_or_else(|p| p.into_inner()) = false;
        MOUNT_FREE.notify_one();
    }
}

/// Whether this machine can mount a FUSE file system: `/dev/fuse` can be
/// opened and `fusermount3` is on the PATH. `Err` says what is missing.
pub fn probe() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
        .unwrap_or(false);
    if !found {
        return Err("fusermount3 is not on the PATH (Debian: apt-get install fuse3)".into());
    }
    Ok(())
}

impl Mount {
    /// Mount at `dir` (an empty directory) a file system whose disk holds
    /// `image`, all of it durable.
    pub fn new(dir: &Path, image: &Image) -> io::Result<Mount> {
        let one = OneMount::take();
        let mut inner = Inner {
            names: BTreeMap::new(),
            inodes: HashMap::new(),
            next_ino: 2,
            powered: true,
            lying: false,
            counters: Counters::default(),
            trace: None,
        };
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        for (name, data) in image {
            let ino = inner.next_ino;
            inner.next_ino += 1;
            // The model keeps data and length, not metadata: files come
            // back with mode 0600, what mapkv creates.
            inner
                .inodes
                .insert(ino, Inode::new(data.clone(), 0o600, uid, gid));
            inner.names.insert(name.clone(), ino);
        }
        let inner = Arc::new(Mutex::new(inner));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("mapkv-crashfs".into()),
            fuser::MountOption::Subtype("crashfs".into()),
            fuser::MountOption::RW,
            fuser::MountOption::NoAtime,
        ];
        let fs = CrashFs {
            inner: inner.clone(),
        };
        let session = fuser::spawn_mount(fs, dir, &config)?;
        Ok(Mount {
            dir: dir.to_path_buf(),
            inner,
            session: Some(session),
            _one: one,
        })
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start (or stop, with `false`) recording every operation as a line.
    pub fn trace(&self, on: bool) {
        lock(&self.inner).trace = on.then(Vec::new);
    }

    /// The lines recorded since tracing started (and clears them).
    pub fn take_trace(&self) -> Vec<String> {
        lock(&self.inner)
            .trace
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// What arrived so far.
    pub fn counters(&self) -> Counters {
        lock(&self.inner).counters.clone()
    }

    /// Unsynced operations (writes and length changes) held right now,
    /// over all files.
    pub fn unsynced(&self) -> usize {
        lock(&self.inner)
            .inodes
            .values()
            .map(|i| i.unsynced.len())
            .sum()
    }

    /// Cut the power: from now on every operation that would change or
    /// read the disk fails with `EIO`. What was acknowledged before stays
    /// as it was.
    pub fn cut_power(&self) {
        lock(&self.inner).powered = false;
    }

    /// Make the disk lie: from now on an FSYNC answers OK and makes
    /// nothing durable. Only for checking that the crash tests notice.
    pub fn lie_about_fsync(&self) {
        lock(&self.inner).lying = true;
    }

    /// Whether the power is on.
    pub fn powered(&self) -> bool {
        lock(&self.inner).powered
    }

    /// Unmount (cutting the power first if still on: nothing the kernel
    /// writes back while unmounting reaches the disk) and return what the
    /// disk holds after losing unsynced writes as `loss` says. Every
    /// process using the mount must have ended first.
    pub fn unmount(mut self, loss: Loss, rng: &mut Rng) -> io::Result<(Image, CutReport)> {
        self.cut_power();
        if let Some(s) = self.session.take() {
            s.umount_and_join()?;
        }
        let g = lock(&self.inner);
        let mut image = Image::new();
        let mut report = CutReport::default();
        for (name, ino) in &g.names {
            let i = &g.inodes[ino];
            image.insert(name.clone(), lose(i, loss, rng, &mut report));
        }
        Ok((image, report))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.cut_power();
            let _ = s.umount_and_join();
        }
    }
}

/// The bytes of one file after a power cut.
fn lose(i: &Inode, loss: Loss, rng: &mut Rng, report: &mut CutReport) -> Vec<u8> {
    let lengths = i
        .unsynced
        .iter()
        .filter(|u| matches!(u, Unsynced::SetLen(_)))
        .count();
    let applied = match loss {
        Loss::KeepAll => lengths,
        Loss::DropAll => 0,
        Loss::Random { .. } => rng.below(lengths as u64 + 1) as usize,
    };
    report.unsynced_lengths += lengths as u64;
    report.lengths_applied += applied as u64;
    let mut out = i.durable.clone();
    let mut len = out.len() as u64;
    let mut seen = 0;
    for u in &i.unsynced {
        match u {
            Unsynced::SetLen(l) => {
                if seen < applied {
                    len = *l;
                    out.resize(len as usize, 0);
                }
                seen += 1;
            }
            Unsynced::Write { off, data } => {
                report.unsynced_writes += 1;
                let fate = match loss {
                    Loss::KeepAll => 0,
                    Loss::DropAll => 1,
                    Loss::Random { keep, tear } => {
                        if rng.unit() < keep {
                            0
                        } else if rng.unit() < tear {
                            2
                        } else {
                            1
                        }
                    }
                };
                match fate {
                    0 => {
                        report.kept += 1;
                        apply_write(&mut out, *off, data);
                    }
                    1 => report.lost += 1,
                    _ => {
                        report.torn += 1;
                        // Sectors are aligned on the file, not on the write.
                        let end = off + data.len() as u64;
                        let mut s = *off;
                        while s < end {
                            let next = ((s / SECTOR) + 1) * SECTOR;
                            let e = next.min(end);
                            if rng.below(2) == 0 {
                                let a = (s - off) as usize;
                                let b = (e - off) as usize;
                                apply_write(&mut out, s, &data[a..b]);
                            }
                            s = e;
                        }
                    }
                }
            }
        }
    }
    // Writes never move the length past what the applied length changes
    // say (an extending write recorded its own length change).
    out.resize(len as usize, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode_with(durable: &[u8], ops: Vec<Unsynced>) -> Inode {
        let mut i = Inode::new(durable.to_vec(), 0o644, 0, 0);
        for op in &ops {
            match op {
                Unsynced::Write { off, data } => apply_write(&mut i.current, *off, data),
                Unsynced::SetLen(l) => i.current.resize(*l as usize, 0),
            }
        }
        i.unsynced = ops;
        i
    }

    #[test]
    fn keep_all_is_current_and_drop_all_is_durable() {
        let i = inode_with(
            &[1u8; 4096],
            vec![
                Unsynced::SetLen(8192),
                Unsynced::Write {
                    off: 4096,
                    data: vec![2; 4096],
                },
                Unsynced::Write {
                    off: 0,
                    data: vec![3; 100],
                },
            ],
        );
        let mut rng = Rng::new(1);
        let mut r = CutReport::default();
        assert_eq!(lose(&i, Loss::KeepAll, &mut rng, &mut r), i.current);
        assert_eq!(lose(&i, Loss::DropAll, &mut rng, &mut r), i.durable);
        assert_eq!(r.kept, 2);
        assert_eq!(r.lost, 2);
    }

    #[test]
    fn torn_writes_keep_or_lose_whole_sectors() {
        let i = inode_with(
            &[0u8; 8192],
            vec![Unsynced::Write {
                off: 100,
                data: vec![9; 8000],
            }],
        );
        let mut rng = Rng::new(7);
        let mut torn_seen = false;
        for _ in 0..200 {
            let mut r = CutReport::default();
            let out = lose(
                &i,
                Loss::Random {
                    keep: 0.0,
                    tear: 1.0,
                },
                &mut rng,
                &mut r,
            );
            assert_eq!(r.torn, 1);
            assert_eq!(out.len(), 8192);
            // Each sector (clipped to the write) is all old or all new.
            let mut s = 0;
            while s < 8192 {
                let lo = s.max(100);
                let hi = (s + 512).min(8100);
                if lo < hi {
                    let sec = &out[lo..hi];
                    assert!(sec.iter().all(|&b| b == sec[0]), "sector {s} mixed");
                    torn_seen |= sec[0] == 9;
                }
                s += 512;
            }
        }
        assert!(torn_seen);
    }

    #[test]
    fn lengths_follow_a_prefix() {
        let i = inode_with(
            &[5u8; 4096],
            vec![
                Unsynced::SetLen(1000),
                Unsynced::SetLen(8192),
                Unsynced::Write {
                    off: 6000,
                    data: vec![7; 10],
                },
            ],
        );
        let mut rng = Rng::new(3);
        let mut lens = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let mut r = CutReport::default();
            let out = lose(
                &i,
                Loss::Random {
                    keep: 0.5,
                    tear: 0.0,
                },
                &mut rng,
                &mut r,
            );
            lens.insert(out.len());
            if out.len() == 8192 {
                // The shrink came first: what it cut is zero.
                assert!(out[1000..6000].iter().all(|&b| b == 0));
            }
            if out.len() == 1000 {
                assert!(out.iter().all(|&b| b == 5));
            }
        }
        assert_eq!(lens.into_iter().collect::<Vec<_>>(), vec![1000, 4096, 8192]);
    }
}
