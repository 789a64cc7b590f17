//! The writer lock across processes, PID namespaces, stopped holders and
//! users who can only read the file.
//!
//! Children are this test binary run again (`--exact child`), told what to
//! do through `MAPKV_WL_*` variables, reporting on stdout in lines that
//! start with `@`.

use std::io::{BufRead, BufReader};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mapkv::testing::layout::{self, meta};
use mapkv::testing::{add_io_hook, IoOp, Phase};
use mapkv::{Db, Durability, Error, Options};

// ---------------------------------------------------------------------------
// Children.

/// Run as a child when `MAPKV_WL_ROLE` is set; a no-op in a normal run.
#[test]
fn child() {
    let Ok(role) = std::env::var("MAPKV_WL_ROLE") else {
        return;
    };
    let path = PathBuf::from(std::env::var("MAPKV_WL_PATH").expect("MAPKV_WL_PATH"));
    let key = std::env::var("MAPKV_WL_KEY").unwrap_or_default();
    let marker = std::env::var("MAPKV_WL_MARKER").map(PathBuf::from);
    let say = |s: &str| {
        println!("\n@{s}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
    };
    match role.as_str() {
        // Commit `key` under Sync; while holding the writer lock (in the
        // hook before the log msync), stop this process with SIGSTOP.
        "stop" | "hold" => {
            let db = Options::new()
                .durability(Durability::Sync)
                .open(&path)
                .unwrap();
            say("opened");
            let hold = role == "hold";
            let marker = marker.clone();
            let fired = std::sync::atomic::AtomicBool::new(false);
            let _g = add_io_hook(std::sync::Arc::new(move |_p: &Path, op, phase| {
                if matches!(op, IoOp::Msync { .. })
                    && phase == Phase::Before
                    && !fired.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    if hold {
                        println!("\n@holding");
                        std::thread::sleep(Duration::from_millis(300));
                        // Whoever takes the lock after us must find this.
                        std::fs::write(marker.as_ref().unwrap(), b"released").unwrap();
                    } else {
                        println!("\n@stopping");
                        use std::io::Write;
                        std::io::stdout().flush().unwrap();
                        // SAFETY: raising a signal at ourselves.
                        unsafe { libc::raise(libc::SIGSTOP) };
                    }
                }
                None
            }));
            db.insert(&key, b"acknowledged").unwrap();
            say("done");
        }
        // Open (which takes the writer lock to join) and insert; the test
        // kills this one while it waits.
        "wait" => {
            say("opening");
            let db = Options::new()
                .lock_timeout(Duration::from_secs(60))
                .open(&path)
                .unwrap();
            db.insert(&key, b"never acknowledged").unwrap();
            say("done");
        }
        // Take the lock; whoever held it before must have finished.
        "enter" => {
            let db = Options::new()
                .lock_timeout(Duration::from_secs(60))
                .durability(Durability::Sync)
                .open(&path)
                .unwrap();
            db.insert(&key, b"acknowledged").unwrap();
            let released = marker.as_ref().unwrap().exists();
            say(if released {
                "entered-after"
            } else {
                "entered-early"
            });
        }
        // Insert 500 keys, fork, and have both processes insert 500 more
        // through the handle opened before the fork.
        "fork" => {
            let db = Options::new().open(&path).unwrap();
            for i in 0..500 {
                db.insert(format!("pre{i}"), b"v").unwrap();
            }
            // SAFETY: the child only uses the store handle and exits with
            // _exit; this role runs single-threaded apart from the test
            // harness's idle main thread.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            let who = if pid == 0 { "child" } else { "parent" };
            for i in 0..500 {
                db.insert(format!("{who}{i}"), b"v").unwrap();
            }
            if pid == 0 {
                // The child lets go of the handle it inherited: that must
                // not close the parent's session (count it out as a
                // writer, mark the store clean).
                drop(db);
                // SAFETY: leave the forked child without running the
                // parent's destructors or the harness.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            assert!(
                !newest_meta_is_clean(&path),
                "the child's drop marked the store clean under the parent"
            );
            db.insert(b"after the child", b"v").unwrap();
            say("done");
        }
        // Open (after a simulated reboot, by MAPKV_BOOT_ID), insert `key`,
        // say how the store was opened, close.
        "reboot" => {
            let db = Options::new()
                .lock_timeout(Duration::from_secs(10))
                .open(&path)
                .unwrap();
            let opened = db.stats().opened;
            db.insert(&key, b"acknowledged").unwrap();
            db.close().unwrap();
            say(&format!("{opened:?}"));
        }
        other => panic!("unknown role {other}"),
    }
}

/// A child, its report lines on a channel.
struct Kid {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Kid {
    fn spawn(role: &str, path: &Path, key: &str, marker: Option<&Path>, unshare: bool) -> Kid {
        Kid::spawn_with(role, path, key, marker, unshare, &[])
    }

    fn spawn_with(
        role: &str,
        path: &Path,
        key: &str,
        marker: Option<&Path>,
        unshare: bool,
        env: &[(&str, &str)],
    ) -> Kid {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = if unshare {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child=SIGKILL"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env("MAPKV_WL_ROLE", role)
            .env("MAPKV_WL_PATH", path)
            .env("MAPKV_WL_KEY", key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(m) = marker {
            cmd.env("MAPKV_WL_MARKER", m);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(r) = l.strip_prefix('@') {
                    let _ = tx.send(r.to_string());
                }
            }
        });
        Kid { child, lines }
    }

    fn expect(&self, what: &str) {
        match self.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l == what => {}
            other => panic!("expected @{what} from the child, got {other:?}"),
        }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a report from the child")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ok(&mut self) {
        let st = self.child.wait().unwrap();
        assert!(st.success(), "child failed: {st:?}");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling our own child (it may be stopped).
            unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
            self.kill();
        }
    }
}

fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name.
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Wait until `pid` is stopped (SIGSTOP), at most 30 s.
fn wait_stopped(pid: u32) {
    let t = Instant::now();
    while proc_state(pid) != Some('T') {
        assert!(t.elapsed() < Duration::from_secs(30), "child never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Take an OFD read lock over every offset of the file through `ro` (a
/// descriptor open only for reading): all a reader can hold.
fn read_lock_everything(ro: &std::fs::File) {
    // SAFETY: a zeroed flock is valid; F_OFD_SETLK reads the local.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // to the end of all offsets
                  // Another test of this binary may be forking a child right now: until
                  // it execs, the child shares every open file description of this
                  // process, with their OFD locks (a handle just closed here may still
                  // be registered through it). Wait that out.
    let t = Instant::now();
    loop {
        // SAFETY: fcntl on our own descriptor with a pointer to a local.
        let rc = unsafe { libc::fcntl(ro.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
        if rc == 0 {
            return;
        }
        let e = std::io::Error::last_os_error();
        assert!(
            e.raw_os_error() == Some(libc::EAGAIN) && t.elapsed() < Duration::from_secs(10),
            "{e}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the newest valid meta copy of the store says "closed cleanly".
fn newest_meta_is_clean(path: &Path) -> bool {
    use mapkv::testing::layout::{self, meta};
    let b = std::fs::read(path).unwrap();
    let word = |at: usize, n: usize| {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&b[at..at + n]);
        u64::from_le_bytes(w)
    };
    let newest = layout::META_COPIES
        .iter()
        .map(|&c| c as usize)
        .filter(|&c| b[c..c + 8] == layout::META_MAGIC)
        .max_by_key(|&c| word(c + meta::META_SEQ, 8))
        .expect("a meta copy");
    word(newest + meta::FLAGS, 4) & layout::FLAG_CLEAN as u64 != 0
}

fn new_store(dir: &Path) -> PathBuf {
    let path = dir.join("lock.mapkv");
    Db::open(&path).unwrap().close().unwrap();
    path
}

// ---------------------------------------------------------------------------
// Tests.

/// A writer stopped (SIGSTOP) while it holds the writer lock: another
/// process's insert gives up after its lock timeout with an error that
/// names the holder, a new read-write open does too, and once the holder
/// resumes both writes are there. Five rounds.
#[test]
fn stopped_holder_times_out_others_and_is_never_robbed() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(dir.path());
    let me = Options::new()
        .lock_timeout(Duration::from_secs(1))
        .open(&path)
        .unwrap();
    for round in 0..5 {
        let key = format!("stopped{round}");
        let mut kid = Kid::spawn("stop", &path, &key, None, false);
        kid.expect("opened");
        kid.expect("stopping");
        let pid = kid.child.id();
        wait_stopped(pid);
        let t = Instant::now();
        let err = me.insert(format!("mine{round}"), b"v").unwrap_err();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "gave up after {took:?}");
        match &err {
            Error::Timeout { holder, .. } => assert_eq!(*holder, Some(pid as u64), "{err}"),
            e => panic!("expected a timeout, got {e}"),
        }
        assert!(err.to_string().contains(&pid.to_string()), "{err}");
        // Joining needs the lock too: bounded as well.
        let t = Instant::now();
        let joined = Options::new()
            .lock_timeout(Duration::from_secs(1))
            .open(&path);
        assert!(
            matches!(joined, Err(Error::Timeout { .. })),
            "{:?}",
            joined.err()
        );
        assert!(t.elapsed() < Duration::from_secs(3));
        // Resume: the stopped writer finishes, and so do we.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        kid.expect("done");
        kid.wait_ok();
        me.insert(format!("mine{round}"), b"v").unwrap();
        assert_eq!(me.get(&key).unwrap().as_deref(), Some(&b"acknowledged"[..]));
        assert!(me.get(format!("mine{round}")).unwrap().is_some());
    }
    me.check().unwrap();
    me.close().unwrap();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.len(), 10);
    db.check().unwrap();
}

/// The container case: W1, pid 1 of its own PID namespace, holds the
/// lock; W2, pid 1 of another, waits and is SIGKILLed; W3, pid 1 of a
/// third, must not enter before W1 let go. 50 rounds; then every
/// acknowledged write is there and the store checks.
#[test]
fn pid_namespaces_never_let_two_writers_in() {
    if !Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!(
            "SKIPPED: `unshare --pid --fork` is refused here (needs root or user namespaces)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(dir.path());
    const ROUNDS: usize = 50;
    for round in 0..ROUNDS {
        let marker = dir.path().join(format!("released{round}"));
        let mut w1 = Kid::spawn("hold", &path, &format!("w1-{round}"), Some(&marker), true);
        w1.expect("opened");
        w1.expect("holding");
        let mut w2 = Kid::spawn("wait", &path, &format!("w2-{round}"), None, true);
        w2.expect("opening");
        std::thread::sleep(Duration::from_millis(20));
        w2.kill();
        let mut w3 = Kid::spawn("enter", &path, &format!("w3-{round}"), Some(&marker), true);
        assert_eq!(
            w3.next(),
            "entered-after",
            "round {round}: W3 entered while W1 held the lock"
        );
        w1.expect("done");
        w1.wait_ok();
        w3.wait_ok();
    }
    let db = Db::open(&path).unwrap();
    for round in 0..ROUNDS {
        for w in ["w1", "w3"] {
            assert_eq!(
                db.get(format!("{w}-{round}")).unwrap().as_deref(),
                Some(&b"acknowledged"[..]),
                "{w} of round {round} lost"
            );
        }
    }
    db.check().unwrap();
    println!("{ROUNDS} namespace rounds");
}

/// Someone who can only read the file holds every lock a read-only
/// descriptor can take (an exclusive `flock`, and an OFD read lock over
/// the whole range of offsets): writers still open, register, write,
/// join and close.
#[test]
fn readers_cannot_lock_writers_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(dir.path());
    let ro = std::fs::File::open(&path).unwrap();
    fs2::FileExt::try_lock_exclusive(&ro).unwrap();
    read_lock_everything(&ro);
    let quick = || Options::new().lock_timeout(Duration::from_secs(2));
    let a = quick().open(&path).unwrap();
    a.insert(b"a", b"1").unwrap();
    let b = quick().open(&path).unwrap();
    b.insert(b"b", b"2").unwrap();
    assert_eq!(a.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    a.close().unwrap();
    b.close().unwrap();
    let c = quick().open(&path).unwrap();
    assert_eq!(c.len(), 2);
    c.check().unwrap();
}

/// Someone who can read the file holds read locks on everything, so no
/// opener is ever alone, and the machine "reboots" (another boot id): the
/// first writer of the new boot must not join the stale control block of
/// the last one, but start a session and recover; nothing is lost.
#[test]
fn stale_session_after_reboot_is_recovered_not_joined() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(dir.path());
    Db::open(&path).unwrap().insert(b"before", b"1").unwrap();
    // A writer killed mid-commit: the next boot's first writer must recover.
    let mut kid = Kid::spawn("stop", &path, "mid", None, false);
    kid.expect("opened");
    kid.expect("stopping");
    kid.kill();
    let ro = std::fs::File::open(&path).unwrap();
    read_lock_everything(&ro);
    for (boot, key) in [("simulated-boot-1", "b1"), ("simulated-boot-2", "b2")] {
        let mut kid = Kid::spawn_with(
            "reboot",
            &path,
            key,
            None,
            false,
            &[("MAPKV_BOOT_ID", boot)],
        );
        let opened = kid.next();
        assert_ne!(opened, "Joined", "joined the control block of another boot");
        kid.wait_ok();
    }
    // Back in this boot: the control block is the simulated boot's.
    let db = Db::open(&path).unwrap();
    assert_ne!(db.stats().opened, mapkv::OpenKind::Joined);
    for k in ["before", "b1", "b2"] {
        assert!(db.get(k).unwrap().is_some(), "{k} lost");
    }
    db.check().unwrap();
}

/// A writer killed while it holds the lock is noticed by the kernel's
/// word (its registration is gone) and the next writer takes over and
/// repairs: nothing acknowledged is lost.
#[test]
fn killed_holder_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(dir.path());
    let me = Options::new()
        .lock_timeout(Duration::from_secs(20))
        .open(&path)
        .unwrap();
    me.insert(b"before", b"1").unwrap();
    let mut kid = Kid::spawn("stop", &path, "killed", None, false);
    kid.expect("opened");
    kid.expect("stopping");
    wait_stopped(kid.child.id());
    kid.kill();
    me.insert(b"after", b"2").unwrap();
    assert_eq!(me.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    me.check().unwrap();
}

/// A handle used on both sides of a `fork`: the child registers through a
/// description of its own, so the two processes exclude each other.
#[test]
fn forked_processes_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_store(dir.path());
    let mut kid = Kid::spawn("fork", &path, "", None, false);
    kid.expect("done");
    kid.wait_ok();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.len(), 1501);
    for who in ["pre", "parent", "child"] {
        for i in 0..500 {
            assert!(db.get(format!("{who}{i}")).unwrap().is_some(), "{who}{i}");
        }
    }
    db.check().unwrap();
}

/// A store of format 1 (shared under `flock`) is upgraded by a read-write
/// open that finds it alone, and refused while another process holds a
/// `flock` on it (an older mapkv would).
#[test]
fn format_1_is_upgraded_when_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.mapkv");
    let db = Db::open(&path).unwrap();
    db.insert(b"k", b"v").unwrap();
    db.close().unwrap();
    // Turn both meta copies into format 1 (same layout, version 1).
    let mut bytes = std::fs::read(&path).unwrap();
    for at in layout::META_COPIES.map(|m| m as usize) {
        let m = &mut bytes[at..at + layout::META_LEN];
        if m[meta::MAGIC..][..8] != layout::META_MAGIC {
            continue;
        }
        m[meta::VERSION..][..4].copy_from_slice(&1u32.to_le_bytes());
        let salt = u32::from_le_bytes(m[meta::CRC_SALT..][..4].try_into().unwrap());
        let mut h = crc32fast::Hasher::new_with_initial(salt ^ layout::META_CRC_XOR);
        h.update(&m[..meta::CRC]);
        let crc = h.finalize();
        m[meta::CRC..][..4].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    // Read-only cannot upgrade.
    assert!(matches!(
        Options::new().read_only(true).open(&path),
        Err(Error::UnsupportedVersion { found: 1, .. })
    ));
    // An older mapkv holding it open (a flock): refused, file untouched.
    let old = std::fs::File::open(&path).unwrap();
    fs2::FileExt::lock_shared(&old).unwrap();
    assert!(matches!(
        Options::new().open(&path),
        Err(Error::Locked { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    drop(old);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    db.close().unwrap();
    // Both copies are format 2 now.
    let after = std::fs::read(&path).unwrap();
    for at in layout::META_COPIES.map(|m| m as usize) {
        assert_eq!(
            u32::from_le_bytes(after[at + meta::VERSION..][..4].try_into().unwrap()),
            layout::FORMAT_VERSION
        );
    }
}
