//! File-level trust (issue 11): sparse files and SIGBUS, who can open a
//! store after compaction, symlinks and hard links, squatted empty files,
//! open never looping, and options that never panic.

mod common;

use std::time::Duration;

use mapkv::{Db, Options};

/// Every option at its extremes: opening a new store, opening it again
/// while it is open (the joining path), writing, growing, compacting and
/// closing either work or return an `Err`; nothing panics.
#[test]
fn extreme_options_never_panic() {
    type Set = fn(Options) -> Options;
    // Sizes that would really allocate gigabytes are paired with a small
    // `max_size`: the arithmetic is the same, the disk (shared with other
    // builds) is spared.
    const SMALL: u64 = 64 << 20;
    let table: &[(&str, Set)] = &[
        ("initial_size(0)", |o| o.initial_size(0)),
        ("initial_size(u64::MAX)", |o| {
            o.initial_size(u64::MAX).max_size(SMALL)
        }),
        ("initial_size(1 << 63)", |o| {
            o.initial_size(1 << 63).max_size(SMALL)
        }),
        ("growth_step(0)", |o| o.growth_step(0)),
        ("growth_step(u64::MAX)", |o| o.growth_step(u64::MAX)),
        ("max_size(0)", |o| o.max_size(0)),
        ("max_size(u64::MAX)", |o| o.max_size(u64::MAX)),
        ("map_reserve(0)", |o| o.map_reserve(0)),
        ("map_reserve(u64::MAX)", |o| o.map_reserve(u64::MAX)),
        ("map_reserve(1 << 62)", |o| o.map_reserve(1 << 62)),
        ("capacity(0)", |o| o.capacity(0)),
        ("capacity(u64::MAX)", |o| o.capacity(u64::MAX)),
        ("expected_keys(u64::MAX)", |o| {
            o.expected_keys(u64::MAX).max_size(SMALL)
        }),
        ("expected_keys(1 << 40)", |o| {
            o.expected_keys(1 << 40).max_size(SMALL)
        }),
        ("evict_fraction(NaN)", |o| {
            o.capacity(1 << 20).evict_fraction(f64::NAN)
        }),
        ("evict_fraction(inf)", |o| {
            o.capacity(1 << 20).evict_fraction(f64::INFINITY)
        }),
        ("evict_fraction(-inf)", |o| {
            o.capacity(1 << 20).evict_fraction(f64::NEG_INFINITY)
        }),
        ("auto_compact(NaN)", |o| o.auto_compact(Some(f64::NAN))),
        ("auto_compact(inf)", |o| o.auto_compact(Some(f64::INFINITY))),
        ("lock_timeout(Duration::MAX)", |o| {
            o.lock_timeout(Duration::MAX)
        }),
        ("lock_timeout(0)", |o| o.lock_timeout(Duration::ZERO)),
        ("mode(0)", |o| o.mode(0)),
        ("mode(u32::MAX)", |o| o.mode(u32::MAX)),
        ("everything at once", |o| {
            o.initial_size(u64::MAX)
                .growth_step(u64::MAX)
                .map_reserve(u64::MAX)
                .lock_timeout(Duration::MAX)
                .capacity(u64::MAX)
                .evict_fraction(f64::NAN)
                .auto_compact(Some(f64::NAN))
                .mode(u32::MAX)
                .max_size(SMALL)
        }),
    ];
    let mut failures = Vec::new();
    for (name, set) in table {
        let (_dir, path) = common::store();
        let run = std::panic::catch_unwind(|| -> Result<(), mapkv::Error> {
            let opts = set(Options::new());
            let db = opts.clone().open(&path)?;
            // A second handle joins the open store (the shared open lock
            // and the writer lock use the timeout).
            let other = opts.clone().open(&path)?;
            for i in 0..2_000u32 {
                db.insert(i.to_le_bytes(), [1u8; 300])?;
            }
            other.insert(b"other", b"v")?;
            assert_eq!(db.get(b"other")?.as_deref(), Some(&b"v"[..]));
            db.compact()?;
            drop(other);
            db.close()?;
            // And opening the existing store with the same options.
            let again = opts.open(&path)?;
            assert_eq!(again.get(b"other")?.as_deref(), Some(&b"v"[..]));
            again.close()
        });
        match run {
            Ok(r) => eprintln!("{name}: {:?}", r.map_err(|e| e.to_string())),
            Err(_) => failures.push(*name),
        }
    }
    assert!(failures.is_empty(), "these options panicked: {failures:?}");
}

// ---------------------------------------------------------------------------
// Helpers: privileges, children, a tmpfs of our own.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: u32 = 65534;

/// The effective uid, from /proc (no unsafe code in the tests).
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Whether this test can act as root; prints why not.
fn root(test: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    eprintln!(
        "{test}: SKIPPED: needs root (euid is {}), to mount or switch users",
        euid()
    );
    false
}

/// The environment variable that makes `child_entry` run a role.
const ROLE: &str = "MAPKV_TRUST_ROLE";

/// Run this test binary again as a child that plays `role` on `path`
/// (see `child_entry`), as `uid` if given.
fn child(role: &str, path: &Path, uid: Option<u32>) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current_exe"));
    c.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("MAPKV_TRUST_PATH", path);
    if let Some(u) = uid {
        // std drops supplementary groups when it sets the ids as root.
        c.uid(u).gid(u);
    }
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn child");
    eprintln!(
        "child: {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Not a test by itself: the body of the children the other tests spawn.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var("MAPKV_TRUST_PATH").unwrap());
    let code = match role.as_str() {
        // Open the sparse store on the full tmpfs and write into its holes.
        "write_sparse" => match Options::new().open(&path) {
            Err(e) => {
                println!("open: Err: {e}");
                0
            }
            Ok(db) => {
                println!("open: Ok");
                let mut res = Ok(());
                for i in 0..400u32 {
                    res = db.insert(i.to_le_bytes(), vec![7u8; 8 << 10]);
                    if res.is_err() {
                        break;
                    }
                }
                println!("inserts: {res:?}");
                0
            }
        },
        // As another user: open the store, read and write it.
        "use_store" => match Options::new().create(false).open(&path) {
            Err(e) => {
                println!("open: Err: {e}");
                1
            }
            Ok(db) => {
                let got = db.get(b"k0").map(|v| v.map(|v| v.to_vec()));
                let put = db.insert(b"from-child", b"yes");
                println!("get: {got:?}, insert: {put:?}");
                (got.ok().flatten().as_deref() != Some(&b"v0"[..]) || put.is_err()) as i32
            }
        },
        // As a user that is not the store's owner: compaction must refuse.
        "compact" => match Options::new().create(false).open(&path) {
            Err(e) => {
                println!("open: Err: {e}");
                1
            }
            Ok(db) => match db.compact() {
                Err(mapkv::Error::Refused { reason, .. }) => {
                    println!("compact: Refused: {reason}");
                    0
                }
                other => {
                    println!("compact: {other:?}");
                    1
                }
            },
        },
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code);
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is refused.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "{test}: SKIPPED: mount -t tmpfs refused: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("{test}: SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a child still running?): detach it at least.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// 1. No SIGBUS from holes.

/// A sparse copy of a store on a full filesystem: a writer gets a clean
/// error at open (the holes cannot be allocated), never a SIGBUS when its
/// writes reach a hole.
#[test]
fn sparse_store_on_full_fs_is_an_error_not_sigbus() {
    const TEST: &str = "sparse_store_on_full_fs_is_an_error_not_sigbus";
    if !root(TEST) {
        return;
    }
    let Some(fs) = Tmpfs::mount(TEST, "16m") else {
        return;
    };
    let orig = fs.path().join("orig.mapkv");
    let db = Options::new().initial_size(6 << 20).open(&orig).unwrap();
    for i in 0..10u32 {
        db.insert(i.to_le_bytes(), b"small").unwrap();
    }
    db.close().unwrap();
    // The copy: everything past the log is zeros, so it becomes holes.
    let sparse = fs.path().join("sparse.mapkv");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&orig)
        .arg(&sparse)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(&orig).unwrap();
    let md = std::fs::metadata(&sparse).unwrap();
    assert!(
        md.blocks() * 512 < md.len() / 2,
        "the copy is not sparse: {} of {} bytes allocated",
        md.blocks() * 512,
        md.len()
    );
    // Fill the filesystem to the last block.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(fs.path().join("filler")).unwrap();
        let chunk = vec![1u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    let out = run(child("write_sparse", &sparse, None));
    assert_eq!(
        out.status.signal(),
        None,
        "the writer died of a signal (SIGBUS is {})",
        libc_sigbus()
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("open: Err") && stdout.contains("out of space") && stdout.contains("holes"),
        "the open should fail, saying the holes cannot be allocated: {stdout}"
    );
    // With room again, the same store opens and keeps its data.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let db = Db::open(&sparse).unwrap();
    assert_eq!(
        db.get(3u32.to_le_bytes()).unwrap().as_deref(),
        Some(&b"small"[..])
    );
    let md = std::fs::metadata(&sparse).unwrap();
    assert!(md.blocks() * 512 >= md.len(), "the holes were filled");
    db.close().unwrap();
}

fn libc_sigbus() -> i32 {
    7
}

// ---------------------------------------------------------------------------
// 2. Compaction keeps who can open the store.

/// A directory others can enter (tempdirs are 0700).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn filled_store(path: &Path) {
    let db = Db::open(path).unwrap();
    for i in 0..500u32 {
        db.insert(format!("k{i}"), format!("v{i}")).unwrap();
    }
    for i in 1..400u32 {
        db.remove(format!("k{i}")).unwrap();
    }
    db.close().unwrap();
}

/// As root, compact a store that belongs to `nobody` with mode 0660: the
/// new file keeps owner, group and mode, and `nobody` can still open it.
#[test]
fn compaction_keeps_owner_group_and_mode() {
    const TEST: &str = "compaction_keeps_owner_group_and_mode";
    if !root(TEST) {
        return;
    }
    let dir = open_dir();
    let path = dir.path().join("svc.mapkv");
    filled_store(&path);
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    let before = std::fs::metadata(&path).unwrap();

    let db = Db::open(&path).unwrap();
    db.compact().unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_ne!(after.ino(), before.ino(), "compaction made a new file");
    assert_eq!(
        (after.uid(), after.gid()),
        (NOBODY, NOBODY),
        "owner and group"
    );
    assert_eq!(after.mode() & 0o7777, 0o660, "mode");
    drop(db);

    // The same users can open it: nobody reads and writes it.
    let out = run(child("use_store", &path, Some(NOBODY)));
    assert!(out.status.success(), "nobody can no longer use the store");
    let db = Db::open(&path).unwrap();
    assert_eq!(db.get(b"from-child").unwrap().as_deref(), Some(&b"yes"[..]));
}

/// A user who is not the store's owner cannot give the new file away:
/// compaction refuses before copying anything and the store is unchanged.
#[test]
fn compaction_refuses_when_it_cannot_keep_the_owner() {
    const TEST: &str = "compaction_refuses_when_it_cannot_keep_the_owner";
    if !root(TEST) {
        return;
    }
    let dir = open_dir();
    // nobody may create the new file next to the store, but not own it as
    // root.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("shared.mapkv");
    filled_store(&path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let before = std::fs::metadata(&path).unwrap();
    let out = run(child("compact", &path, Some(NOBODY)));
    assert!(out.status.success(), "compaction by nobody was not refused");
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(after.ino(), before.ino(), "the store was replaced");
    assert_eq!((after.uid(), after.mode() & 0o7777), (0, 0o666));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "leftovers: {names:?}");
}

// ---------------------------------------------------------------------------
// 3. Symlinks and hard links.

/// A store opened through a symlink: compaction replaces the real file,
/// the symlink still points at it, and handles opened through either name
/// keep working.
#[test]
fn compaction_through_a_symlink_keeps_the_symlink() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let real = dir.path().join("data/store.mapkv");
    let link = dir.path().join("link.mapkv");
    filled_store(&real);
    std::os::unix::fs::symlink("data/store.mapkv", &link).unwrap();
    let by_link = Db::open(&link).unwrap();
    assert_eq!(by_link.path(), link.as_path(), "path() is the caller's");
    let by_real = Db::open(&real).unwrap();
    let before = std::fs::metadata(&real).unwrap().ino();
    by_link.compact().unwrap();
    let md = std::fs::symlink_metadata(&link).unwrap();
    assert!(
        md.file_type().is_symlink(),
        "the symlink was replaced by a file"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("data/store.mapkv")
    );
    assert_ne!(
        std::fs::metadata(&real).unwrap().ino(),
        before,
        "not compacted"
    );
    // One store: a write through either handle is seen through the other
    // and through a new handle by either name.
    by_link.insert(b"after", b"1").unwrap();
    by_real.insert(b"after2", b"2").unwrap();
    assert_eq!(by_real.get(b"after").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(by_link.get(b"after2").unwrap().as_deref(), Some(&b"2"[..]));
    by_real.compact().unwrap();
    by_link.insert(b"after3", b"3").unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    for name in [&link, &real] {
        let db = Db::open(name).unwrap();
        assert_eq!(db.get(b"k0").unwrap().as_deref(), Some(&b"v0"[..]));
        assert_eq!(db.get(b"after3").unwrap().as_deref(), Some(&b"3"[..]));
    }
}

/// A store with a second hard link is refused by compaction (renaming over
/// one name would split it into two stores); nothing changes.
#[test]
fn compaction_refuses_a_store_with_two_hard_links() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.mapkv");
    let b = dir.path().join("b.mapkv");
    filled_store(&a);
    std::fs::hard_link(&a, &b).unwrap();
    let db = Db::open(&a).unwrap();
    match db.compact() {
        Err(mapkv::Error::Refused { reason, .. }) => {
            assert!(reason.contains("hard link"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    db.insert(b"new", b"x").unwrap();
    assert_eq!(
        std::fs::metadata(&a).unwrap().ino(),
        std::fs::metadata(&b).unwrap().ino(),
        "the names were split"
    );
    let other = Db::open(&b).unwrap();
    assert_eq!(other.get(b"new").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "a compaction leftover was left"
    );
}

// ---------------------------------------------------------------------------
// 4. Open never loops.

/// Open through a dangling symlink returns an error that says so, at
/// once, and creates nothing. (It used to loop for ever.)
#[test]
fn dangling_symlink_is_an_error_not_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link.mapkv");
    let target = dir.path().join("missing.mapkv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for opts in [
        Options::new(),
        Options::new().create(false),
        Options::new().read_only(true),
    ] {
        let (tx, rx) = std::sync::mpsc::channel();
        let l = link.clone();
        std::thread::spawn(move || {
            let _ = tx.send(opts.open(&l).map(|_| ()));
        });
        let res = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("open did not return within 20 s");
        let e = res.expect_err("open through a dangling symlink");
        let msg = e.to_string();
        assert!(
            matches!(e, mapkv::Error::Io { .. })
                && msg.contains("symlink")
                && msg.contains("does not exist"),
            "{msg}"
        );
    }
    assert!(!target.exists(), "the target was created");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "temporary files were left: {names:?}");
}

// ---------------------------------------------------------------------------
// 5. Never adopt a file we did not create.

fn empty_file(path: &Path, mode: u32) {
    std::fs::write(path, b"").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An empty file more open than the requested mode is refused and left
/// as it was; one that is no more open is adopted.
#[test]
fn empty_file_more_open_than_asked_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("squat.mapkv");
    empty_file(&path, 0o666);
    match Db::open(&path) {
        Err(mapkv::Error::Refused { reason, .. }) => {
            assert!(
                reason.contains("0666") && reason.contains("0600"),
                "{reason}"
            )
        }
        Err(e) => panic!("expected Refused, got {e}"),
        Ok(_) => panic!("a 0666 file was adopted"),
    }
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (md.len(), md.mode() & 0o777),
        (0, 0o666),
        "the file was changed"
    );
    // Group read is more than the default 0600 ...
    empty_file(&path, 0o640);
    assert!(matches!(Db::open(&path), Err(mapkv::Error::Refused { .. })));
    // ... but not more than a requested 0640.
    let db = Options::new().mode(0o640).open(&path).unwrap();
    db.insert(b"k", b"v").unwrap();
    drop(db);
    // Our own 0600 file: adopted, and stays 0600.
    let own = dir.path().join("own.mapkv");
    empty_file(&own, 0o600);
    let db = Db::open(&own).unwrap();
    db.insert(b"k", b"v").unwrap();
    assert_eq!(std::fs::metadata(&own).unwrap().mode() & 0o777, 0o600);
}

/// As root: an empty file that belongs to another user is refused, even
/// with a private mode.
#[test]
fn empty_file_of_another_user_is_refused() {
    const TEST: &str = "empty_file_of_another_user_is_refused";
    if !root(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("theirs.mapkv");
    empty_file(&path, 0o600);
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    match Db::open(&path) {
        Err(mapkv::Error::Refused { reason, .. }) => {
            assert!(reason.contains(&format!("uid {NOBODY}")), "{reason}")
        }
        Err(e) => panic!("expected Refused, got {e}"),
        Ok(_) => panic!("another user's empty file was adopted"),
    }
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!((md.len(), md.uid()), (0, NOBODY), "the file was changed");
}
