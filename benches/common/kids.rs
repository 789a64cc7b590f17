//! Worker processes for the benchmarks that run several processes on one
//! store: the bench binary re-executed with its role and settings in the
//! environment.
//!
//! Parent side: `Kids::spawn` starts the children and reads the stdout
//! lines of all of them through one channel; `wait_ready` waits until each
//! has said `ready`, `go` sends them all the start line at once,
//! `read_lines` reads their reports and `expect_success` checks how they
//! exited. Dropping `Kids` (also while unwinding from a panic) kills and
//! reaps every child still running.
//!
//! Child side: `env_num` and `child_env` read the settings, `await_start`
//! says `ready` and waits for the start line (end-of-file on stdin: the
//! parent is gone).
//!
//! Also the CPU accounting of a run: the CPU time a process used, and the
//! machine's counters, from which how much of the machine other programs
//! used while the workers measured.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Child side

/// The variable `name` of the environment as a `T`, if it is set and parses.
pub fn env_num<T: FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A setting the parent gave this worker process; panics if it is missing.
pub fn child_env<T: FromStr>(name: &str) -> T {
    env_num(name).unwrap_or_else(|| panic!("worker: {name} is not set or does not parse"))
}

/// Says `ready` on stdout and waits for the parent's start line: true when
/// it came, false when the parent is gone (end-of-file or an error on stdin).
pub fn await_start() -> bool {
    let mut out = std::io::stdout();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0)
}

// ---------------------------------------------------------------------------
// Parent side

/// The worker processes of one run. Dropping it (also while unwinding from
/// a panic) kills and reaps every child still running.
pub struct Kids {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    /// (child, line); `None`: the end of that child's output.
    rx: Receiver<(usize, Option<String>)>,
}

impl Drop for Kids {
    fn drop(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Kids {
    /// Starts `count` copies of this binary, stdin and stdout piped, stderr
    /// inherited; `setup(p, command)` gives child `p` its environment.
    pub fn spawn(count: usize, mut setup: impl FnMut(usize, &mut Command)) -> Kids {
        let exe = std::env::current_exe().expect("current_exe");
        let (tx, rx) = mpsc::channel();
        let mut kids = Kids {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
        };
        for p in 0..count {
            let mut command = Command::new(&exe);
            setup(p, &mut command);
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a worker process");
            let out = child.stdout.take().unwrap();
            kids.stdins.push(child.stdin.take());
            kids.children.push(child);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => {
                            if tx.send((p, Some(l))).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send((p, None));
            });
        }
        kids
    }

    /// How many children there are.
    pub fn count(&self) -> usize {
        self.children.len()
    }

    /// The exit status of child `p`, waiting for it until `deadline`
    /// (`None`: still running then, or waiting failed).
    pub fn status(&mut self, p: usize, deadline: Instant) -> Option<ExitStatus> {
        loop {
            match self.children[p].try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => return None,
            }
        }
    }

    /// The next line from a child whose end of output is not expected yet
    /// (`done[p]`: it is for child `p`, whose end is then skipped). Panics
    /// (and so kills all) if a child ends its output early or nothing
    /// arrives by `deadline`.
    fn next(&mut self, deadline: Instant, waiting_for: &str, done: &[bool]) -> (usize, String) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((p, Some(line))) => return (p, line),
                Ok((p, None)) if done[p] => continue,
                Ok((p, None)) => {
                    let st = self.status(p, Instant::now() + Duration::from_secs(5));
                    panic!(
                        "worker process {p} ended its output while we waited for \
                         {waiting_for}; exit status {st:?}"
                    )
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {waiting_for} (a hung worker?)")
                }
                Err(RecvTimeoutError::Disconnected) => unreachable!("a reader thread per child"),
            }
        }
    }

    /// Waits until every child has said `ready` (any other line panics).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let none = vec![false; self.count()];
        let mut ready = vec![false; self.count()];
        while ready.iter().any(|r| !r) {
            let (p, line) = self.next(deadline, "workers to get ready", &none);
            assert_eq!(line, "ready", "worker process {p}: unexpected line");
            ready[p] = true;
        }
    }

    /// The start line to every child, one right after the other.
    pub fn go(&mut self) {
        for s in &mut self.stdins {
            let mut s = s.take().expect("stdin");
            s.write_all(b"go\n").expect("send the start line");
            // Dropped: the child reads end-of-file if it reads again.
        }
    }

    /// Hands every line of the children to `line(p, text)` until it has
    /// returned true (child `p` is through) for each of them; a child that
    /// ends its output before that, or nothing arriving by `deadline`,
    /// panics.
    pub fn read_lines(
        &mut self,
        deadline: Instant,
        waiting_for: &str,
        mut line: impl FnMut(usize, String) -> bool,
    ) {
        let mut done = vec![false; self.count()];
        while done.iter().any(|d| !d) {
            let (p, text) = self.next(deadline, waiting_for, &done);
            if line(p, text) {
                done[p] = true;
            }
        }
    }

    /// Waits (until `deadline`) for every child to exit; panics unless all
    /// exited successfully.
    pub fn expect_success(&mut self, deadline: Instant) {
        for p in 0..self.count() {
            match self.status(p, deadline) {
                Some(s) if s.success() => {}
                other => panic!("worker process {p} exited with {other:?}"),
            }
        }
    }
}

/// The `key=value` fields of a worker's report line.
pub struct Fields<'a> {
    line: &'a str,
    map: HashMap<&'a str, &'a str>,
}

impl<'a> Fields<'a> {
    /// The fields of `line` (words without `=` are skipped).
    pub fn parse(line: &'a str) -> Fields<'a> {
        let map = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Fields { line, map }
    }

    /// The field `k`; panics if the line has none.
    pub fn get(&self, k: &str) -> &'a str {
        self.map
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("worker line without {k}: {:?}", self.line))
    }

    /// The field `k` as a `T`; panics if the line has none or it does not
    /// parse.
    pub fn num<T: FromStr>(&self, k: &str) -> T {
        self.get(k)
            .parse()
            .unwrap_or_else(|_| panic!("worker line with a bad {k}: {:?}", self.line))
    }
}

// ---------------------------------------------------------------------------
// CPU accounting: how much of the machine other programs used during a run.

/// CPU time of this process so far (all threads), in clock ticks (utime +
/// stime).
pub fn own_cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Clock ticks per second (the unit of /proc's CPU times).
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The machine's CPU counters from /proc/stat, in clock ticks.
#[derive(Clone, Copy, Default)]
pub struct CpuStat {
    pub busy: u64,
    pub steal: u64,
    pub total: u64,
}

impl CpuStat {
    pub fn now() -> CpuStat {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = s
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        CpuStat {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            steal: at(7),
            total: (0..8).map(at).sum(),
        }
    }

    /// The machine's capacity from `self` to `later`, in ticks (at least 1).
    fn ticks_to(&self, later: &CpuStat) -> f64 {
        later.total.saturating_sub(self.total).max(1) as f64
    }

    /// The share (percent) of the machine's capacity from `self` to `later`
    /// that programs other than ours used; `own_ticks`: the CPU time ours
    /// used meanwhile.
    pub fn foreign_pct(&self, later: &CpuStat, own_ticks: u64) -> f64 {
        later
            .busy
            .saturating_sub(self.busy)
            .saturating_sub(own_ticks) as f64
            / self.ticks_to(later)
            * 100.0
    }

    /// The share (percent) of the machine's capacity from `self` to `later`
    /// that the hypervisor stole.
    pub fn steal_pct(&self, later: &CpuStat) -> f64 {
        later.steal.saturating_sub(self.steal) as f64 / self.ticks_to(later) * 100.0
    }
}
