//! What the kernel passes down to a FUSE file system, checked on this
//! machine: the facts the crash file system's model rests on. Each test
//! also prints the operations it saw (`--nocapture`).
//!
//! Needs `/dev/fuse` and `fusermount3` (Debian: `apt-get install fuse3`);
//! without them the tests fail and say so: a CI that cannot mount must not
//! pass as if it had.

use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;

use mapkv_crashfs::{probe, Image, Loss, Mount, Rng};

const PAGE: usize = 4096;

fn mount() -> (tempfile_dir::Dir, Mount) {
    if let Err(e) = probe() {
        panic!("FUSE is not usable here: {e}");
    }
    let dir = tempfile_dir::Dir::new("probe");
    let m = Mount::new(dir.path(), &Image::new()).expect("mount the crash file system");
    (dir, m)
}

mod tempfile_dir {
    //! A temporary directory without a dependency.
    use std::path::{Path, PathBuf};
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("mapkv-crashfs-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).expect("make a mount point");
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

/// A writable shared mapping of `len` bytes of `fd`.
fn map(fd: i32, len: usize) -> *mut u8 {
    // SAFETY: a fresh shared mapping of a file we opened read-write.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p as *mut u8
}

#[test]
fn msync_of_a_range_writes_its_pages_back_then_fsyncs_with_datasync() {
    let (_dir, m) = mount();
    let path = m.dir().join("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    m.trace(true);
    // Growth as mapkv does it: posix_fallocate, then ftruncate to be sure.
    // SAFETY: plain system calls on our descriptor.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, (8 * PAGE) as i64) };
    assert_eq!(
        rc,
        0,
        "posix_fallocate: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    f.set_len((8 * PAGE) as u64).unwrap();
    f.sync_all().unwrap();
    let grow = m.take_trace();
    println!("growth: {grow:#?}");
    assert!(
        grow.iter().any(|l| l.starts_with("FALLOCATE")),
        "posix_fallocate did not arrive as FALLOCATE: {grow:?}"
    );
    assert!(
        grow.iter().any(|l| l.contains("datasync=false")),
        "{grow:?}"
    );

    let p = map(f.as_raw_fd(), 8 * PAGE);
    // SAFETY: inside the mapping; the file is 8 pages long.
    unsafe {
        std::ptr::write_bytes(p, 0xAA, PAGE); // page 0: never synced
        std::ptr::write_bytes(p.add(5 * PAGE), 0xBB, PAGE); // page 5: msync'd
    }
    let before = m.counters();
    // SAFETY: page 5 of our mapping.
    let rc = unsafe { libc::msync(p.add(5 * PAGE) as *mut _, PAGE, libc::MS_SYNC) };
    assert_eq!(rc, 0, "msync: {}", std::io::Error::last_os_error());
    let t = m.take_trace();
    println!("msync(MS_SYNC) of page 5: {t:#?}");
    let after = m.counters();
    // The dirty page arrived as a WRITE, then one FSYNC with datasync.
    let w = t
        .iter()
        .position(|l| l.starts_with("WRITE") && l.contains(&format!("off={}", 5 * PAGE)))
        .unwrap_or_else(|| panic!("page 5 was not written back before the fsync: {t:?}"));
    let s = t
        .iter()
        .position(|l| l.starts_with("FSYNC") && l.contains("datasync=true"))
        .unwrap_or_else(|| panic!("msync did not arrive as FSYNC(datasync): {t:?}"));
    assert!(w < s, "{t:?}");
    assert!(
        !t.iter()
            .any(|l| l.starts_with("WRITE") && l.contains("off=0 ")),
        "msync of page 5 wrote page 0 back: {t:?}"
    );
    assert_eq!(after.fdatasyncs, before.fdatasyncs + 1);

    // MS_ASYNC sends nothing at all (mm/msync.c).
    // SAFETY: page 0 of our mapping.
    let rc = unsafe { libc::msync(p as *mut _, PAGE, libc::MS_ASYNC) };
    assert_eq!(rc, 0);
    let t = m.take_trace();
    println!("msync(MS_ASYNC) of page 0: {t:#?}");
    assert!(!t.iter().any(|l| l.starts_with("FSYNC")), "{t:?}");

    // sync_file_range(WRITE) (mapkv's Async mode) writes page 0 back and
    // sends no FSYNC: it reaches the disk unsynced.
    // SAFETY: a plain system call on our descriptor.
    let rc = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            0,
            PAGE as i64,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    assert_eq!(
        rc,
        0,
        "sync_file_range: {}",
        std::io::Error::last_os_error()
    );
    let t = m.take_trace();
    println!("sync_file_range(WRITE) of page 0: {t:#?}");
    assert!(
        t.iter()
            .any(|l| l.starts_with("WRITE") && l.contains("off=0 ")),
        "page 0 was not written back: {t:?}"
    );
    assert!(!t.iter().any(|l| l.starts_with("FSYNC")), "{t:?}");

    // No page of the mapping is dirty now. (A munmap that has to write
    // dirty pages back waits for the daemon while holding this process's
    // mmap lock, and the daemon serves from a thread of this process: a
    // test must never leave a dirty page of the mount mapped.)
    // SAFETY: the whole mapping, once.
    unsafe { libc::munmap(p as *mut _, 8 * PAGE) };
    drop(f);
    // The power cut loses the unsynced page 0 and keeps page 5.
    let (image, report) = m.unmount(Loss::DropAll, &mut Rng::new(1)).unwrap();
    println!("cut: {report:?}");
    let img = &image["f"];
    assert_eq!(img.len(), 8 * PAGE);
    assert!(
        img[..PAGE].iter().all(|&b| b == 0),
        "page 0 survived unsynced"
    );
    assert!(
        img[5 * PAGE..6 * PAGE].iter().all(|&b| b == 0xBB),
        "page 5 lost"
    );
}

#[test]
fn a_fresh_mount_sees_only_the_image() {
    let (dir, m) = mount();
    let path = m.dir().join("g");
    std::fs::write(&path, vec![1u8; 3 * PAGE]).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .sync_data()
        .unwrap();
    // Unsynced: a write through the page cache and a growth.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len((5 * PAGE) as u64).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[2u8; PAGE], 0).unwrap();
    drop(f);
    let (image, _) = m.unmount(Loss::DropAll, &mut Rng::new(2)).unwrap();
    assert_eq!(image["g"], vec![1u8; 3 * PAGE]);
    let m = Mount::new(dir.path(), &image).expect("remount");
    let back = std::fs::read(m.dir().join("g")).unwrap();
    assert_eq!(back, vec![1u8; 3 * PAGE]);
    let (again, _) = m.unmount(Loss::KeepAll, &mut Rng::new(3)).unwrap();
    assert_eq!(again, image);
}
