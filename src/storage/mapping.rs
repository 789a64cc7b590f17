//! The arena: the file, its mappings, and the only `unsafe` code in mapkv
//! that touches the mapping through raw pointers. (The rest of mapkv's
//! `unsafe` is system calls, in `lock.rs` and `file.rs`, also in
//! `storage`, each block with its own `// SAFETY:` comment.)
//!
//! # Model
//!
//! * A mapping ([`View`]) reserves address space that may be longer than the
//!   file. Only the bytes below the *verified length* (`Arena::len`) are ever
//!   touched; everything past end-of-file would raise SIGBUS.
//! * The verified length only grows, and only after the file really is that
//!   long (we grew it ourselves, or `fstat` said so). mapkv never shrinks a
//!   file that another handle maps (`trim` lowers the verified length first).
//! * When the file outgrows the reservation, a new, larger view is made and
//!   published; old views stay mapped until the arena is dropped (DESIGN.md
//!   invariant 6), so a reader that loaded an old view pointer never dangles.
//! * No `&[u8]` into the mapping is ever created: other processes (or a
//!   hostile writer) may change those bytes at any time. Bytes are *copied*
//!   out with raw-pointer copies and checked afterwards; words that are shared
//!   on purpose (index slots, control block) are accessed as atomics: index
//!   slots as `&[AtomicU64]`, the control block as `&ControlBlock`, a
//!   `#[repr(C)]` struct made only of atomic words.
//!
//! # Safety argument, once
//!
//! Every unsafe block below relies on the same three facts, checked right
//! above it:
//! 1. the range lies inside the view (`off + len <= view.len`), so the pointer
//!    arithmetic stays inside one allocation;
//! 2. the range lies below the verified length, so the pages are backed by
//!    the file and touching them does not fault (unless another program
//!    truncates the file behind our back, which the README lists as a
//!    caveat, as SQLite does for its mmap mode);
//! 3. views are never unmapped while the arena is alive, and every reference
//!    handed out borrows the arena.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions, MmapRaw};
use parking_lot::Mutex;

use super::control::{Control, ControlBlock, CONTROL_LEN};
use super::hooks::{self, IoOp, Phase};
use super::CONTROL_OFFSET;

// `control_block` relies on these: a page-aligned view base plus
// `CONTROL_OFFSET` is aligned for the block.
const _: () = assert!(CONTROL_OFFSET % std::mem::align_of::<ControlBlock>() as u64 == 0);
const _: () = assert!(CONTROL_OFFSET % super::FORMAT_PAGE == 0);

/// How the file is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapMode {
    /// `MAP_SHARED`, read-write: stores reach the page cache (and the file).
    Shared,
    /// `MAP_SHARED`, read-only (`PROT_READ`): for read-only handles on a
    /// file this process may not write. Nothing ever stores into it: every
    /// store path is behind a read-write check (a store would fault).
    SharedReadOnly,
    /// `MAP_PRIVATE`, copy-on-write: stores stay in this process. Used by
    /// read-only handles, which may need to repair the index in memory
    /// without ever writing the file.
    Private,
}

/// The backing of one view; kept only so that it is unmapped on drop.
enum Backing {
    Shared(MmapRaw),
    Private(#[allow(dead_code)] MmapMut),
}

/// One mapping of the file, from offset 0, `len` bytes of address space.
struct View {
    ptr: *mut u8,
    len: u64,
    _backing: Backing,
}

// SAFETY: a View is a pointer to a mapping that lives as long as the View
// itself; all accesses through it go through the bounds-checked methods of
// `Arena`, which use raw copies or atomics, so sharing it between threads
// introduces no unsynchronised Rust references.
unsafe impl Send for View {}
// SAFETY: see `Send` above.
unsafe impl Sync for View {}

impl View {
    fn map(file: &File, reserve: u64, mode: MapMode) -> io::Result<View> {
        let len = usize::try_from(reserve)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping too large"))?;
        let mut opts = MmapOptions::new();
        opts.len(len);
        let (ptr, backing) = match mode {
            MapMode::Shared => {
                let raw = opts.map_raw(file)?;
                (raw.as_mut_ptr(), Backing::Shared(raw))
            }
            MapMode::SharedReadOnly => {
                let raw = opts.map_raw_read_only(file)?;
                (raw.as_mut_ptr(), Backing::Shared(raw))
            }
            MapMode::Private => {
                // SAFETY: memmap2 marks `map_copy` unsafe because the file may
                // change under the returned `&mut [u8]`. We never use that
                // slice: we only take its base pointer and access it through
                // the raw-copy and atomic methods below.
                let mut m = unsafe { opts.map_copy(file)? };
                (m.as_mut_ptr(), Backing::Private(m))
            }
        };
        Ok(View {
            ptr,
            len: reserve,
            _backing: backing,
        })
    }
}

/// The file plus its mappings, with a bounds-checked, safe API.
pub(crate) struct Arena {
    file: File,
    /// The file's path, for the test hooks.
    path: std::path::PathBuf,
    mode: MapMode,
    /// Every view ever made, newest last. Never shrinks before drop. Boxed
    /// so that `current` can point at a View while the Vec reallocates.
    #[allow(clippy::vec_box)]
    views: Mutex<Vec<Box<View>>>,
    /// The newest view. Points into `views`.
    current: AtomicPtr<View>,
    /// Bytes of the file known to exist (grown by us or seen by fstat).
    len: AtomicU64,
    /// The OS page size, for msync alignment.
    os_page: u64,
    /// The process that opened `file` (a forked child shares the open
    /// file description, and with it the description's locks).
    opener: u32,
}

/// Out-of-bounds access attempted; the caller turns it into `Corrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfBounds;

impl Arena {
    /// Map `file`, which is `file_len` bytes long (the caller has checked it
    /// with fstat), reserving `reserve` bytes of address space.
    pub(crate) fn new(
        file: File,
        path: &std::path::Path,
        file_len: u64,
        reserve: u64,
        mode: MapMode,
    ) -> io::Result<Arena> {
        let reserve = reserve.max(file_len);
        let view = Box::new(View::map(&file, reserve, mode)?);
        let ptr = &*view as *const View as *mut View;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let os_page = if page > 0 { page as u64 } else { 4096 };
        Ok(Arena {
            file,
            path: path.to_path_buf(),
            mode,
            views: Mutex::new(vec![view]),
            current: AtomicPtr::new(ptr),
            len: AtomicU64::new(file_len),
            os_page,
            opener: std::process::id(),
        })
    }

    /// Run `f`, one durability-relevant system call, between the test
    /// hooks (`crate::testing`): the single choke point for injecting I/O
    /// failures and observing what became durable.
    fn io(&self, op: IoOp, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        hooks::fire(&self.path, op, Phase::Before)?;
        f()?;
        hooks::fire(&self.path, op, Phase::After)
    }

    /// `fsync` the file: data and length durable.
    pub(crate) fn fsync(&self) -> io::Result<()> {
        if self.mode == MapMode::Private {
            return Ok(());
        }
        self.io(IoOp::Fsync, || self.file.sync_all())
    }

    /// Shrink the file to `to` bytes and fsync it. Only when no other
    /// handle maps the file (a clean close by the only handle, or a
    /// compaction's new file before anyone else knows it), and nothing
    /// reads past `to` again.
    pub(crate) fn trim(&self, to: u64) -> io::Result<()> {
        // Lower the verified length first: nothing may touch the bytes that
        // are about to go (the caller guarantees no other handle maps them).
        self.len.fetch_min(to, Ordering::AcqRel);
        self.io(IoOp::Trim { to }, || {
            self.file.set_len(to).and_then(|()| self.file.sync_all())
        })
    }

    pub(crate) fn mode(&self) -> MapMode {
        self.mode
    }

    /// The verified file length.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn view(&self) -> &View {
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: `current` always points at a boxed View owned by `views`,
        // which are only dropped with the arena (fact 3 above).
        unsafe { &*p }
    }

    /// Check that `[off, off+n)` is inside the verified length and the
    /// current view; return the view.
    #[inline]
    fn checked(&self, off: u64, n: u64) -> Result<&View, OutOfBounds> {
        let len = self.len();
        let view = self.view();
        let end = off.checked_add(n).ok_or(OutOfBounds)?;
        if end > len || end > view.len {
            return self.refresh_for(end);
        }
        Ok(view)
    }

    /// Slow path of `checked`: another process may have grown the file.
    /// Believe only `fstat` (never a length read from the file), map more
    /// address space if the reservation is too small, and publish the new
    /// verified length. Readers pay this once per growth, not per read.
    #[cold]
    #[inline(never)]
    fn refresh_for(&self, end: u64) -> Result<&View, OutOfBounds> {
        if self.mode == MapMode::Private {
            return Err(OutOfBounds);
        }
        let real = self.file.metadata().map_err(|_| OutOfBounds)?.len();
        if end > real {
            return Err(OutOfBounds);
        }
        self.follow(real).map_err(|_| OutOfBounds)?;
        let view = self.view();
        if end > self.len() || end > view.len {
            return Err(OutOfBounds);
        }
        Ok(view)
    }

    /// Make `len` bytes (which the file is known to have) accessible: remap
    /// if the newest view is shorter, then raise the verified length.
    fn follow(&self, len: u64) -> io::Result<()> {
        let mut views = self.views.lock();
        let cur_len = views.last().map(|v| v.len).unwrap_or(0);
        if len > cur_len {
            let reserve = len.max(cur_len.saturating_mul(2));
            let view = Box::new(View::map(&self.file, reserve, self.mode)?);
            let ptr = &*view as *const View as *mut View;
            views.push(view);
            self.current.store(ptr, Ordering::Release);
        }
        drop(views);
        self.len.fetch_max(len, Ordering::AcqRel);
        Ok(())
    }

    /// Catch up with growth made by another process: if the file is longer
    /// than the verified length (`fstat`), map and publish it. Returns the
    /// verified length.
    pub(crate) fn refresh(&self) -> io::Result<u64> {
        if self.mode != MapMode::Private {
            let real = self.file.metadata()?.len();
            if real > self.len() {
                self.follow(real)?;
            }
        }
        Ok(self.len())
    }

    /// The file has a new name (a compaction renamed it into place): the
    /// test hooks see it under that name from now on.
    /// The file's path (as the store was opened, or renamed to).
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub(crate) fn set_path(&mut self, path: &std::path::Path) {
        self.path = path.to_path_buf();
    }

    /// The file (for the open-handle `flock`).
    /// The process that opened the file (see `Registration`).
    pub(crate) fn opener_pid(&self) -> u32 {
        self.opener
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Typed access to the control block (see `control.rs`).
    pub(crate) fn control(&self) -> Result<Control<'_>, OutOfBounds> {
        self.control_block().map(Control::of)
    }

    /// The control block, as the `#[repr(C)]` struct that defines its
    /// layout. `OutOfBounds` if the file is too short to hold it.
    pub(crate) fn control_block(&self) -> Result<&ControlBlock, OutOfBounds> {
        let view = self.checked(CONTROL_OFFSET, CONTROL_LEN)?;
        debug_assert!(CONTROL_OFFSET + CONTROL_LEN <= view.len);
        let ptr = view.ptr.wrapping_add(CONTROL_OFFSET as usize);
        debug_assert!(ptr as usize % std::mem::align_of::<ControlBlock>() == 0);
        // SAFETY:
        // - in bounds and backed: `checked` put the whole block,
        //   `CONTROL_OFFSET..CONTROL_OFFSET + size_of::<ControlBlock>()`,
        //   inside the view and below the verified length (facts 1, 2);
        // - aligned: the view base is page-aligned (mmap), `CONTROL_OFFSET`
        //   is a multiple of the 4096-byte format page, and the block needs
        //   8 (const-asserted next to `ControlBlock` and below);
        // - alive: views are never unmapped while the arena is alive and
        //   the reference borrows the arena (fact 3);
        // - valid: every byte of `ControlBlock`, its padding arrays
        //   included, belongs to an `AtomicU64` or `AtomicU32`, for which
        //   every bit pattern is a valid value, whatever the file holds;
        // - shared access only: the atomics' interior mutability lets
        //   other threads and processes store into these bytes while the
        //   `&` exists; mapkv never makes a `&mut` or `&[u8]` of them, and
        //   stores go through the atomics (never into a read-only view:
        //   every store path checks the mapping mode first).
        Ok(unsafe { &*(ptr as *const ControlBlock) })
    }

    /// Copy `buf.len()` bytes at `off` out of the mapping.
    #[inline]
    pub(crate) fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let view = self.checked(off, buf.len() as u64)?;
        debug_assert!(off + buf.len() as u64 <= view.len);
        // SAFETY: facts 1-3: the source range is inside the view and below
        // the verified length; `buf` is a distinct, exclusively borrowed
        // Rust allocation, so the ranges do not overlap. The source bytes
        // may change concurrently (another process); we copy raw bytes and
        // the caller checks the copy (length bounds, CRC) before use.
        unsafe {
            std::ptr::copy_nonoverlapping(view.ptr.add(off as usize), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    /// Hint the CPU to start loading the cache lines of `[off, off+n)`
    /// (at most 512 bytes), so that the misses of a record's lines overlap
    /// instead of following each other. Out-of-range requests do nothing.
    #[inline]
    pub(crate) fn prefetch(&self, off: u64, n: u64) {
        let n = n.min(512);
        let Ok(view) = self.checked(off, n) else {
            return;
        };
        #[cfg(target_arch = "x86_64")]
        {
            let mut line = off & !63;
            while line < off + n {
                // SAFETY: `line` is inside the view (it lies between the
                // 64-byte-aligned start of a checked range and its end);
                // a prefetch is a hint that never faults and reads nothing
                // into Rust's view of memory.
                unsafe {
                    core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                        view.ptr.add(line as usize) as *const i8,
                    );
                }
                line += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = view;
    }

    /// Ask for huge (PMD-sized) pages for `[off, off+n)` in every view: a
    /// hint, used for index tables, whose random slot loads then miss the
    /// TLB far less. Not used for the log: faulting in huge page-cache
    /// folios for appends costs more than it saves.
    pub(crate) fn advise_hugepage(&self, off: u64, n: u64) {
        #[cfg(target_os = "linux")]
        {
            let start = off & !(self.os_page - 1);
            let Ok(_) = self.checked(start, n + (off - start)) else {
                return;
            };
            for v in self.views.lock().iter() {
                if let Backing::Shared(raw) = &v._backing {
                    let _ = raw.advise_range(
                        memmap2::Advice::HugePage,
                        start as usize,
                        (n + off - start) as usize,
                    );
                }
            }
        }
    }

    /// Let this process's memory go of the whole pages inside
    /// `[off, off+n)`, in every view: a hint for bytes it will not read
    /// again soon (an index table replaced by a larger one), so that they
    /// stop counting in its resident set. The bytes stay in the file and the
    /// page cache; a later access faults them in again, unchanged. Only for
    /// shared mappings: in a private (copy-on-write) view it would throw
    /// away this process's own changes, so those are left alone.
    pub(crate) fn release(&self, off: u64, n: u64) {
        #[cfg(target_os = "linux")]
        {
            let Some(start) = super::align_up(off, self.os_page) else {
                return;
            };
            let end = off.saturating_add(n) & !(self.os_page - 1);
            if end <= start || self.checked(start, end - start).is_err() {
                return;
            }
            for v in self.views.lock().iter() {
                // An older view reserved less address space: only its part.
                let end = end.min(v.len & !(self.os_page - 1));
                if end <= start {
                    continue;
                }
                if let Backing::Shared(raw) = &v._backing {
                    // SAFETY: `raw` is a MAP_SHARED mapping of the store's
                    // file from offset 0, `v.len` bytes of address space,
                    // and `[start, end)` lies inside both it (clamped just
                    // above) and the file (checked above). MADV_DONTNEED on a shared
                    // file mapping only drops this process's page-table
                    // entries: dirty pages stay dirty in the page cache, and
                    // the next access maps the same bytes again (madvise(2)),
                    // so no byte that any reader or writer observes changes.
                    // memmap2 marks it unsafe for private mappings, where it
                    // would discard changes; those are excluded.
                    let _ = unsafe {
                        raw.unchecked_advise_range(
                            memmap2::UncheckedAdvice::DontNeed,
                            start as usize,
                            (end - start) as usize,
                        )
                    };
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (off, n);
    }

    /// Copy `data` into the mapping at `off`. Only the writer calls this, and
    /// only on bytes no reader can reach yet (past the published tail) or on
    /// pages nobody else maps as Rust references (meta).
    pub(crate) fn write(&self, off: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        if self.mode == MapMode::SharedReadOnly {
            return Err(OutOfBounds);
        }
        let view = self.checked(off, data.len() as u64)?;
        debug_assert!(off + data.len() as u64 <= view.len);
        // SAFETY: facts 1-3; the destination is writable (read-write shared
        // mapping, or a private copy-on-write mapping); no Rust reference to
        // these bytes exists anywhere (we never create one), so the raw
        // store does not alias a `&`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), view.ptr.add(off as usize), data.len());
        }
        Ok(())
    }

    /// Fill `[off, off+n)` with zeros.
    pub(crate) fn zero(&self, off: u64, n: u64) -> Result<(), OutOfBounds> {
        if self.mode == MapMode::SharedReadOnly {
            return Err(OutOfBounds);
        }
        let view = self.checked(off, n)?;
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::write_bytes(view.ptr.add(off as usize), 0, n as usize);
        }
        Ok(())
    }

    /// `n` consecutive 8-byte words at `off` (8-aligned) as atomics.
    pub(crate) fn atomics(&self, off: u64, n: u64) -> Result<&[AtomicU64], OutOfBounds> {
        if off % 8 != 0 {
            return Err(OutOfBounds);
        }
        let bytes = n.checked_mul(8).ok_or(OutOfBounds)?;
        let view = self.checked(off, bytes)?;
        // SAFETY: facts 1-3 for every word of the range; the view base is
        // page-aligned and `off` a multiple of 8, so each word is aligned
        // for AtomicU64; AtomicU64 has interior mutability, so other threads
        // and processes storing into the words do not invalidate the shared
        // reference.
        Ok(unsafe {
            std::slice::from_raw_parts(view.ptr.add(off as usize) as *const AtomicU64, n as usize)
        })
    }

    fn page_range(&self, off: u64, n: u64) -> Result<(usize, usize), OutOfBounds> {
        let end = off.checked_add(n).ok_or(OutOfBounds)?.min(self.len());
        let start = off & !(self.os_page - 1);
        if end <= start {
            return Ok((start as usize, 0));
        }
        Ok((start as usize, (end - start) as usize))
    }

    /// `msync(MS_SYNC)` the pages covering `[off, off+n)`: when this returns
    /// `Ok`, those bytes are on stable storage.
    pub(crate) fn sync(&self, off: u64, n: u64) -> io::Result<()> {
        if self.mode == MapMode::Private {
            return Ok(());
        }
        let (start, len) = self.page_range(off, n).map_err(|_| oob())?;
        if len == 0 {
            return Ok(());
        }
        let view = self.view();
        let op = IoOp::Msync {
            off: start as u64,
            len: len as u64,
        };
        self.io(op, || {
            // SAFETY: the page-aligned range is inside the view (it is
            // clamped to the verified length, which never exceeds the view);
            // msync does not access memory from Rust's point of view.
            let rc = unsafe {
                libc::msync(view.ptr.add(start) as *mut libc::c_void, len, libc::MS_SYNC)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }

    /// Start write-back of `[off, off+n)` without waiting (Linux:
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`; `MS_ASYNC` is a no-op there).
    pub(crate) fn start_writeback(&self, off: u64, n: u64) -> io::Result<()> {
        if self.mode == MapMode::Private {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            self.io(IoOp::StartWriteback { off, len: n }, || {
                // SAFETY: plain syscall on our own descriptor; no memory is
                // passed.
                let rc = unsafe {
                    libc::sync_file_range(
                        self.file.as_raw_fd(),
                        off as libc::off64_t,
                        n as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let (start, len) = self.page_range(off, n).map_err(|_| oob())?;
            if len == 0 {
                return Ok(());
            }
            let view = self.view();
            // SAFETY: as in `sync`.
            let rc = unsafe {
                libc::msync(
                    view.ptr.add(start) as *mut libc::c_void,
                    len,
                    libc::MS_ASYNC,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    /// Make the file at least `new_len` bytes long with its blocks reserved,
    /// remapping if the reservation is too small, then publish the length.
    /// A full disk is an `Err` here, never a SIGBUS later.
    pub(crate) fn grow(&self, new_len: u64) -> io::Result<()> {
        let old = self.len();
        if new_len <= old {
            return Ok(());
        }
        if self.mode != MapMode::Shared {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only handle cannot grow the file",
            ));
        }
        // Another process may have grown the file since we last looked:
        // start from its real length (growth is serialised by the writer
        // lock, so it cannot change under us now).
        let old = self.refresh()?;
        if new_len <= old {
            return Ok(());
        }
        hooks::fire(
            &self.path,
            IoOp::Grow {
                from: old,
                to: new_len,
            },
            Phase::Before,
        )?;
        super::file::allocate(&self.file, old, new_len)?;
        self.follow(new_len)?;
        hooks::fire(
            &self.path,
            IoOp::Grow {
                from: old,
                to: new_len,
            },
            Phase::After,
        )
    }

    /// Number of mappings made so far (for stats and tests).
    pub(crate) fn remaps(&self) -> usize {
        self.views.lock().len() - 1
    }
}

fn oob() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "range outside the file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(len: u64, reserve: u64) -> (tempfile::TempDir, Arena) {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("a"))
            .unwrap();
        f.set_len(len).unwrap();
        let a = Arena::new(f, &dir.path().join("a"), len, reserve, MapMode::Shared).unwrap();
        (dir, a)
    }

    #[test]
    fn bounds_are_checked() {
        let (_d, a) = arena(65536, 1 << 20);
        let mut b = [0u8; 16];
        assert!(a.read(65536 - 16, &mut b).is_ok());
        assert_eq!(a.read(65536 - 15, &mut b), Err(OutOfBounds));
        assert_eq!(a.read(u64::MAX - 3, &mut b), Err(OutOfBounds));
        assert!(a.atomics(3, 1).is_err());
        assert!(a.atomics(65536, 1).is_err());
        assert!(a.atomics(0, 8192).is_ok());
        assert!(a.atomics(0, 8193).is_err());
        assert!(a.atomics(8, u64::MAX / 4).is_err());
    }

    #[test]
    fn write_read_grow_remap() {
        let (_d, a) = arena(65536, 65536);
        a.write(100, b"hello").unwrap();
        a.atomics(64, 1).unwrap()[0].store(7, Ordering::Release);
        // Past the reservation: a remap must happen and old data stays.
        a.grow(4 * 65536).unwrap();
        assert_eq!(a.len(), 4 * 65536);
        assert_eq!(a.file.metadata().unwrap().len(), 4 * 65536);
        assert!(a.remaps() >= 1);
        let mut b = [0u8; 5];
        a.read(100, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(a.atomics(64, 1).unwrap()[0].load(Ordering::Acquire), 7);
        a.write(3 * 65536, b"far").unwrap();
        a.sync(0, 4 * 65536).unwrap();
        a.start_writeback(0, 65536).unwrap();
    }

    /// KiB of this process's resident set in the arena's views (from
    /// /proc/self/smaps; 0 where it cannot be read).
    fn resident_kib(a: &Arena) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let starts: Vec<usize> = a.views.lock().iter().map(|v| v.ptr as usize).collect();
        let mut in_view = false;
        let mut kib = 0;
        for l in smaps.lines() {
            if let Some((range, _)) = l.split_once(' ') {
                if let Some((lo, _)) = range.split_once('-') {
                    if let Ok(lo) = usize::from_str_radix(lo, 16) {
                        in_view = starts.contains(&lo);
                        continue;
                    }
                }
            }
            if in_view {
                if let Some(v) = l.strip_prefix("Rss:") {
                    kib += v
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
        kib
    }

    /// `release` drops the pages from the resident set and changes no
    /// byte: written and not yet synced, in the current view and in one
    /// kept from before a remap.
    #[test]
    fn release_keeps_every_byte_and_drops_the_pages() {
        let (_d, a) = arena(1 << 20, 1 << 20);
        let pattern = |i: u64| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
        let data: Vec<u8> = (0..(1u64 << 20)).map(pattern).collect();
        a.write(0, &data).unwrap();
        // Past the reservation: a second view; the first is kept.
        a.grow(2 << 20).unwrap();
        assert!(a.remaps() >= 1);
        a.write(1 << 20, &data).unwrap();
        let before = resident_kib(&a);
        // An unaligned range: only the whole pages inside it go.
        a.release(100, (2 << 20) - 200);
        let after = resident_kib(&a);
        let mut back = vec![0u8; 1 << 20];
        for half in 0..2u64 {
            a.read(half << 20, &mut back).unwrap();
            assert!(back == data, "half {half} changed after release");
        }
        // (smaps may be missing in a sandbox: then only the bytes are checked.)
        if before > 0 {
            assert!(
                after + 1024 <= before,
                "resident {before} KiB before, {after} KiB after release"
            );
        }
        // Out of bounds or empty: nothing happens.
        a.release(u64::MAX - 10, 100);
        a.release(4096, 0);
        a.read(0, &mut back).unwrap();
        assert!(back == data);
    }
}
