//! Child processes of a multi-process test: the test binary runs itself
//! again as each child (`--exact CHILD_TEST`, told what to do through its
//! environment), and the child reports on stdout in lines that start with
//! `@`.
//!
//! What a child is told: `Spawn` (the parent's side), `ChildVars` (the
//! child's). The child's side: `Out` (the report channel) and
//! `stop_on_eof` (the parent closing stdin means stop). The parent's side:
//! `Kids`, children in numbered slots whose report lines all arrive on one
//! channel as `Ev`s, or for a single child, `read_reports` and
//! `collect_stderr`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mapkv::Durability;

// ---------------------------------------------------------------------------
// What a child is told.

/// What every child is told through its environment, in variables named
/// with the test's prefix (`MAPKV_MP_`): `ROLE`, `PATH`, `ID`, `INSTANCE`,
/// `SEED`, `MODE` (`none`, `async` or `sync`), `READ_ONLY` (0 or 1) and
/// `LIMIT_SECS`. A test adds its own variables to what `envs` returns.
pub struct Spawn<'a> {
    pub role: &'a str,
    pub path: &'a Path,
    pub id: usize,
    pub instance: u64,
    pub seed: u64,
    pub mode: &'a str,
    pub read_only: bool,
    pub limit: Duration,
}

impl Spawn<'_> {
    pub fn envs(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("ROLE", self.role.to_string()),
            ("PATH", self.path.display().to_string()),
            ("ID", self.id.to_string()),
            ("INSTANCE", self.instance.to_string()),
            ("SEED", self.seed.to_string()),
            ("MODE", self.mode.to_string()),
            ("READ_ONLY", (self.read_only as u8).to_string()),
            ("LIMIT_SECS", self.limit.as_secs().to_string()),
        ]
        .into_iter()
        .map(|(name, v)| (format!("{prefix}{name}"), v))
        .collect()
    }
}

/// What a child learns from its environment (see `Spawn`).
pub struct ChildVars {
    pub prefix: &'static str,
    pub role: String,
    pub path: PathBuf,
    pub id: usize,
    pub instance: u64,
    pub seed: u64,
    pub mode: Durability,
    pub read_only: bool,
    /// A child that is never stopped gives up after this long.
    pub limit: Duration,
}

impl ChildVars {
    /// `None` if `{prefix}ROLE` is not set: a normal test run, no child.
    pub fn from_env(prefix: &'static str) -> Option<ChildVars> {
        let role = std::env::var(format!("{prefix}ROLE")).ok()?;
        let var = |name: &str| env_var(&role, &format!("{prefix}{name}"));
        let num = |name: &str| env_num(&role, &format!("{prefix}{name}"));
        let mode = match var("MODE").as_str() {
            "none" => Durability::None,
            "async" => Durability::Async,
            "sync" => Durability::Sync,
            other => panic!("child {role}: bad {prefix}MODE {other:?}"),
        };
        Some(ChildVars {
            prefix,
            path: PathBuf::from(var("PATH")),
            id: num("ID") as usize,
            instance: num("INSTANCE"),
            seed: num("SEED"),
            mode,
            read_only: num("READ_ONLY") == 1,
            limit: Duration::from_secs(num("LIMIT_SECS")),
            role,
        })
    }

    /// The number in `{prefix}NAME`, a variable the test adds.
    pub fn num(&self, name: &str) -> u64 {
        env_num(&self.role, &format!("{}{name}", self.prefix))
    }
}

fn env_var(role: &str, name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child {role}: {name} is not set"))
}

fn env_num(role: &str, name: &str) -> u64 {
    env_var(role, name)
        .parse()
        .unwrap_or_else(|_| panic!("child {role}: {name} is not a number"))
}

// ---------------------------------------------------------------------------
// The child's side.

/// The child's report channel: stdout, one direct `write` per line (no
/// buffering), so that a kill can only cut the last line short. Clones
/// share it (an I/O hook's threads, say).
#[derive(Clone)]
pub struct Out(Arc<Mutex<File>>);

impl Out {
    /// Take over stdout and say `@S`.
    pub fn new() -> Out {
        // The harness printed "test CHILD_TEST ... ": get it out first.
        std::io::stdout().flush().expect("child: flush stdout");
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .expect("child: dup stdout");
        let out = Out(Arc::new(Mutex::new(File::from(fd))));
        // End the harness's line, so that ours start at a line start.
        out.line("\n@S");
        out
    }

    /// Write one line (`line` without its newline).
    pub fn line(&self, line: &str) {
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(buf.as_bytes())
            .expect("child: write to the parent");
    }

    /// A file of its own on the same stdout, for a writer that must not
    /// wait for the lock (one that writes its line and kills the process).
    pub fn file(&self) -> File {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.try_clone().expect("child: dup stdout")
    }
}

/// Set when the parent closes our stdin: time to stop. (Also when the
/// parent dies, so no child outlives a crashed test run for long.)
pub fn stop_on_eof() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        flag.store(true, Ordering::Release);
    });
    stop
}

// ---------------------------------------------------------------------------
// The parent's side.

/// Read a child's stdout and hand each of its report lines (whole lines
/// that start with `@`, without the newline) to `each`, until `each`
/// returns false or the output ends. A line cut short by a kill never
/// counts: the child had not started what it announced.
pub fn read_reports(stdout: impl Read, mut each: impl FnMut(String) -> bool) {
    let mut r = BufReader::with_capacity(1 << 16, stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            // A line cut short by a kill never counts.
            Ok(_) if buf.last() != Some(&b'\n') => break,
            Ok(_) => {
                buf.pop();
                if buf.first() == Some(&b'@') && !each(String::from_utf8_lossy(&buf).into_owned()) {
                    break;
                }
            }
        }
    }
}

/// A thread that collects everything a child writes to stderr.
pub fn collect_stderr(mut stderr: ChildStderr) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

/// A report line from a child (`None`: its stdout closed).
pub struct Ev {
    pub slot: usize,
    pub instance: u64,
    pub line: Option<String>,
}

/// One child, running or ended.
pub struct Proc {
    /// Who it is, for messages.
    pub label: String,
    /// Which start of its slot it is (a restarted child is a new instance).
    pub instance: u64,
    pub child: Child,
    /// Dropping it (`Kids::stop`) tells the child to stop.
    pub stdin: Option<ChildStdin>,
    pub stderr: Option<JoinHandle<String>>,
    /// The parent stopped or killed it: its exit is expected.
    pub exiting: bool,
    /// Its stdout closed: every line it wrote has been handled.
    pub eof: bool,
    /// Its `@O` and `@F` lines, as far as the test keeps them.
    pub opened: Option<String>,
    pub finals: Option<String>,
}

/// The children of one test, in slots; every line they print arrives on
/// one channel (`rx`). Dropping it kills whatever still runs.
pub struct Kids {
    exe: PathBuf,
    child_test: &'static str,
    tx: mpsc::Sender<Ev>,
    pub rx: mpsc::Receiver<Ev>,
    pub procs: Vec<Option<Proc>>,
}

impl Kids {
    /// `slots` empty slots for children that run the test function
    /// `child_test` of this test binary.
    pub fn new(child_test: &'static str, slots: usize) -> Kids {
        let (tx, rx) = mpsc::channel();
        Kids {
            exe: std::env::current_exe().expect("current_exe"),
            child_test,
            tx,
            rx,
            procs: (0..slots).map(|_| None).collect(),
        }
    }

    /// Start a child in `slot` (replacing whatever was there) with `envs`
    /// set; its report lines arrive as events of `instance`.
    pub fn spawn(&mut self, slot: usize, instance: u64, label: String, envs: &[(String, String)]) {
        let args = [
            "--exact",
            self.child_test,
            "--nocapture",
            "--test-threads=1",
        ];
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let stdout = child.stdout.take().expect("child stdout");
        let stderr = child.stderr.take().expect("child stderr");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let ev = |line| Ev {
                slot,
                instance,
                line,
            };
            read_reports(stdout, |line| tx.send(ev(Some(line))).is_ok());
            let _ = tx.send(ev(None));
        });
        self.procs[slot] = Some(Proc {
            label,
            instance,
            stdin: child.stdin.take(),
            child,
            stderr: Some(collect_stderr(stderr)),
            exiting: false,
            eof: false,
            opened: None,
            finals: None,
        });
    }

    pub fn get(&mut self, slot: usize) -> &mut Proc {
        self.procs[slot].as_mut().expect("no child in this slot")
    }

    /// The child in `slot` if it is still `instance`.
    pub fn current(&mut self, slot: usize, instance: u64) -> Option<&mut Proc> {
        self.procs[slot].as_mut().filter(|p| p.instance == instance)
    }

    /// Ask the child in `slot` to stop: close its stdin.
    pub fn stop(&mut self, slot: usize) {
        let p = self.get(slot);
        p.exiting = true;
        drop(p.stdin.take());
    }

    /// SIGKILL the child in `slot` (without waiting for it).
    pub fn kill(&mut self, slot: usize) {
        let p = self.get(slot);
        p.exiting = true;
        let _ = p.child.kill();
    }

    /// Wait for the child's exit; returns its status and stderr.
    pub fn reap(&mut self, slot: usize) -> (ExitStatus, String) {
        let p = self.get(slot);
        let status = p.child.wait().expect("wait for a child");
        let stderr = p
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stderr)
    }

    pub fn kill_all(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        self.kill_all();
    }
}
