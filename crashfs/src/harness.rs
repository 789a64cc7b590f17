//! The power-cut loop: mount the crash file system, run a real writer
//! process on a store in it, cut the power at a random moment, kill the
//! writer, build the disk image (all, none or a random subset of the
//! unsynced writes, torn at sectors), mount a fresh file system over that
//! image (a cold page cache), open the store and check it against what the
//! writer acknowledged. Rounds continue on the recovered store, so damage
//! would compound.
//!
//! The check, after every cut: `open` succeeds; `Db::check` passes; the
//! store holds exactly the state after a prefix of the writer's commits
//! (so every commit is all or nothing, and no value that was never written
//! appears: values are compared byte for byte); that prefix includes every
//! commit acknowledged under `Sync` or before a `flush()` that returned;
//! `len()` and iteration agree with the point reads; a second open finds
//! the same.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::workload::{self, Acks, State, KEYS};
use crate::{CutReport, Image, Loss, Mount, Rng};

/// The store's file name in the mount.
pub const STORE: &str = "store.mapkv";

/// How to run the loop.
#[derive(Clone, Debug)]
pub struct Config {
    /// The writer: program and leading arguments; the loop appends
    /// `STORE SEED START MODE` (see `crashfs-writer`).
    pub writer: Vec<OsString>,
    /// A name for the writer in reports.
    pub writer_name: String,
    /// The checker: `crashfs-writer` (run as `crashfs-writer --check STORE`).
    pub checker: OsString,
    /// Stop after this long (checked between rounds)...
    pub budget: Duration,
    /// ...or this many power cuts.
    pub max_rounds: u64,
    /// Replays the loop's choices (not the timing).
    pub seed: u64,
    /// Where to make the mount point and keep failing images.
    pub work: PathBuf,
    /// Start a fresh store when the file passes this many bytes.
    pub rotate_bytes: usize,
    /// A disk whose FSYNC makes nothing durable: the check must fail (a
    /// test of the test).
    pub lying_disk: bool,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Power cuts (each followed by a kill, a remount and a check).
    pub cuts: u64,
    /// Cuts by writer mode: none, async, sync.
    pub cuts_by_mode: [u64; 3],
    /// Cuts before the writer's open returned.
    pub cuts_during_open: u64,
    /// Cuts by loss: all kept, all dropped, random subset.
    pub cuts_by_loss: [u64; 3],
    /// Commits the writers acknowledged.
    pub acked: u64,
    /// Of which durable (under `Sync` or before a returned flush): these
    /// must all be there.
    pub durable_acked: u64,
    /// Acknowledged commits the store still held after the cut.
    pub acked_kept: u64,
    /// Acknowledged, not durable, and lost (allowed).
    pub acked_lost: u64,
    /// What the disk held unsynced at the cuts, and what became of it.
    pub disk: CutReport,
    /// Writer errors reported after the power was cut (expected: `EIO`).
    pub errors_after_cut: u64,
    /// FSYNCs (with datasync) and FSYNCs (without) the disk received.
    pub fdatasyncs: u64,
    /// FSYNCs without datasync.
    pub fsyncs: u64,
    /// WRITEs the disk received.
    pub writes: u64,
    /// Opens by the checker: clean, replayed, rebuilt.
    pub opens: [u64; 3],
    /// Fresh stores started (the first, and after rotation).
    pub stores: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Figures {
    /// One line, for logs and scripts/soak.
    pub fn line(&self, name: &str) -> String {
        format!(
            "crashfs[{name}]: {} power cuts in {:.0?} (none/async/sync {}/{}/{}, {} during open; \
             loss all-kept/all-dropped/random {}/{}/{}), {} acked commits checked ({} durable, all \
             there; {} non-durable kept, {} lost), unsynced writes at the cuts {} (kept {}, lost \
             {}, torn {}), length changes {} ({} kept), {} fdatasync + {} fsync, {} writer errors \
             after a cut, checker opens clean/replayed/rebuilt {}/{}/{}, {} stores",
            self.cuts,
            self.elapsed,
            self.cuts_by_mode[0],
            self.cuts_by_mode[1],
            self.cuts_by_mode[2],
            self.cuts_during_open,
            self.cuts_by_loss[0],
            self.cuts_by_loss[1],
            self.cuts_by_loss[2],
            self.acked,
            self.durable_acked,
            self.acked_kept,
            self.acked_lost,
            self.disk.unsynced_writes,
            self.disk.kept,
            self.disk.lost,
            self.disk.torn,
            self.disk.unsynced_lengths,
            self.disk.lengths_applied,
            self.fdatasyncs,
            self.fsyncs,
            self.errors_after_cut,
            self.opens[0],
            self.opens[1],
            self.opens[2],
            self.stores,
        )
    }
}

const MODES: [&str; 3] = ["none", "async", "sync"];
/// Bound on every wait for the writer.
const WAIT: Duration = Duration::from_secs(30);

/// What the checker carries from one cut to the next.
struct Pending {
    base: State,
    ids: Vec<u64>,
    min: usize,
    acked: usize,
}

struct Run<'a> {
    cfg: &'a Config,
    rng: Rng,
    fig: Figures,
    round: u64,
    mount_dir: PathBuf,
    note: String,
}

impl Run<'_> {
    fn fail(&self, image: Option<&Image>, msg: String) -> ! {
        let kept = match image.and_then(|i| i.get(STORE)) {
            Some(bytes) => {
                let p = self.cfg.work.join(format!(
                    "crashfs-failure-seed{}-round{}.mapkv",
                    self.cfg.seed, self.round
                ));
                match std::fs::write(&p, bytes) {
                    Ok(()) => format!("image kept at {}", p.display()),
                    Err(e) => format!("could not keep the image: {e}"),
                }
            }
            None => "no image".into(),
        };
        panic!(
            "crash file system loop ({}) failed: seed {} round {}; {kept}\n{}\n{msg}",
            self.cfg.writer_name, self.cfg.seed, self.round, self.note
        );
    }

    /// Open the store in the mount and check it against `p`; returns the
    /// state it holds. The opening, `check` and reads happen in a child
    /// process (`crashfs-writer --check`): never map a file of the mount
    /// in the process that serves it (see the writer's documentation).
    fn check(&mut self, m: &Mount, image: &Image, p: &Pending) -> State {
        let path = m.dir().join(STORE);
        let mut child = Command::new(&self.cfg.checker)
            .arg("--check")
            .arg(&path)
            // The real boot id: every open after a cut takes the reboot path.
            .env_remove("MAPKV_BOOT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| self.fail(Some(image), format!("spawn the checker: {e}")));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let status = wait_bounded(&mut child).unwrap_or_else(|| {
            kill(&mut child);
            let _ = child.wait();
            self.fail(
                Some(image),
                format!("the checker did not finish within {WAIT:?}"),
            )
        });
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        let mut found: Vec<Option<Vec<u8>>> = vec![None; KEYS as usize];
        let mut done = false;
        for line in out.lines() {
            if let Some(msg) = line.strip_prefix("@X ") {
                self.fail(Some(image), format!("after the cut: {msg}"));
            } else if let Some(kind) = line.strip_prefix("@K ") {
                let k = match kind {
                    "Clean" => 0,
                    "Replayed" => 1,
                    _ => 2,
                };
                self.fig.opens[k] += 1;
            } else if let Some(rest) = line.strip_prefix("V ") {
                let parsed = rest.split_once(' ').and_then(|(k, hex)| {
                    let k: usize = k.parse().ok().filter(|&k| k < KEYS as usize)?;
                    Some((k, unhex(hex)?))
                });
                match parsed {
                    Some((k, v)) => found[k] = Some(v),
                    None => self.fail(Some(image), format!("bad checker line {line:.80}")),
                }
            } else if line == "@D" {
                done = true;
            }
        }
        if !status.success() || !done {
            self.fail(
                Some(image),
                format!("the checker failed ({status}); stderr:\n{err}"),
            );
        }
        match workload::find_prefix(self.cfg.seed, &p.base, &p.ids, p.min, &found) {
            Ok(v) => {
                self.fig.durable_acked += p.min as u64;
                let kept = v.applied.min(p.acked);
                self.fig.acked_kept += kept.saturating_sub(p.min) as u64;
                self.fig.acked_lost += (p.acked - kept) as u64;
                v.state
            }
            Err(e) => self.fail(Some(image), e),
        }
    }

    /// Run one writer until the power cut; returns its acknowledgements.
    fn write(&mut self, m: &Mount, start: u64, mode: usize) -> (Acks, bool) {
        let path = m.dir().join(STORE);
        let mut cmd = Command::new(&self.cfg.writer[0]);
        cmd.args(&self.cfg.writer[1..])
            .arg(&path)
            .arg(self.cfg.seed.to_string())
            .arg(start.to_string())
            .arg(MODES[mode])
            // Every writer runs in a "boot" of its own, so every open after
            // a cut takes the reboot path.
            .env(
                "MAPKV_BOOT_ID",
                format!("crashfs-{}-{}", self.cfg.seed, self.round),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| self.fail(None, format!("spawn the writer: {e}")));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel::<(String, Instant)>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    // A line cut short by the kill has no newline: ignore it.
                    Ok(n) if n > 0 && line.ends_with('\n') => {
                        if tx
                            .send((line.trim_end().to_string(), Instant::now()))
                            .is_err()
                        {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut lines = Vec::new();
        let during_open = self.rng.chance(10);
        let wanted = if during_open { "@S" } else { "@O" };
        let deadline = Instant::now() + WAIT;
        let mut reached = false;
        while !reached {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((l, t)) => {
                    reached = l.starts_with(wanted);
                    let error = l.starts_with("@E");
                    lines.push((l, t));
                    if error {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if !reached {
            let _ = child.kill();
            let status = child.wait();
            let err = err_reader.join().unwrap_or_default();
            self.fail(
                None,
                format!("the writer did not report {wanted} within {WAIT:?}: {status:?}; lines {lines:?}; stderr:\n{err}"),
            );
        }
        // Log-uniform delay: 0.1 ms to 200 ms after the open (or 0 to 5 ms
        // after the start, to cut inside open and recovery).
        let delay = if during_open {
            Duration::from_micros(self.rng.below(5000))
        } else {
            let e = self.rng.unit() * (2000f64).ln();
            Duration::from_secs_f64(0.0001 * e.exp())
        };
        std::thread::sleep(delay);
        m.cut_power();
        let cut_at = Instant::now();
        kill(&mut child);
        let status = wait_bounded(&mut child)
            .unwrap_or_else(|| self.fail(None, "the writer did not die after SIGKILL".into()));
        lines.extend(rx.iter());
        let _ = reader.join();
        let err = err_reader.join().unwrap_or_default();
        if status.signal() != Some(libc::SIGKILL) {
            self.fail(
                None,
                format!(
                    "the writer ended by itself ({status}) instead of being killed; stderr:\n{err}"
                ),
            );
        }
        let mut acks = Acks::default();
        for (l, t) in &lines {
            if let Err(e) = acks.take(l) {
                self.fail(None, e);
            }
            if l.starts_with("@E") {
                if *t < cut_at {
                    self.fail(
                        None,
                        format!("the writer failed before the power cut: {l}\nstderr:\n{err}"),
                    );
                }
                self.fig.errors_after_cut += 1;
            }
        }
        let expect: Vec<u64> = (start..start + acks.acked.len() as u64).collect();
        if acks.acked != expect {
            self.fail(
                None,
                format!("acknowledged ids out of order: {:?}", acks.acked),
            );
        }
        (acks, !reached_open(&lines))
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn reached_open(lines: &[(String, Instant)]) -> bool {
    lines.iter().any(|(l, _)| l.starts_with("@O"))
}

fn kill(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
}

fn wait_bounded(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Run the loop; panics with the seed, round and a kept image on the first
/// failure.
pub fn run(cfg: &Config) -> Figures {
    if let Err(e) = crate::probe() {
        panic!("FUSE is not usable here: {e}");
    }
    let started = Instant::now();
    let mount_dir = cfg
        .work
        .join(format!("crashfs-mnt-{}-{}", std::process::id(), cfg.seed));
    std::fs::create_dir_all(&mount_dir).expect("make the mount point");
    let mut run = Run {
        cfg,
        rng: Rng::new(cfg.seed),
        fig: Figures::default(),
        round: 0,
        mount_dir,
        note: String::new(),
    };
    let mut image = Image::new();
    let mut base = workload::empty();
    let mut pending: Option<Pending> = None;
    let mut start = 1u64;
    run.fig.stores = 1;
    loop {
        let m = Mount::new(&run.mount_dir, &image)
            .unwrap_or_else(|e| run.fail(Some(&image), format!("mount: {e}")));
        if cfg.lying_disk {
            m.lie_about_fsync();
        }
        if let Some(p) = pending.take() {
            base = run.check(&m, &image, &p);
        }
        let done = run.round >= cfg.max_rounds || started.elapsed() >= cfg.budget;
        if done {
            drop(m);
            break;
        }
        if image.get(STORE).is_some_and(|s| s.len() > cfg.rotate_bytes) {
            if let Err(e) = std::fs::remove_file(m.dir().join(STORE)) {
                run.fail(Some(&image), format!("remove the old store: {e}"));
            }
            base = workload::empty();
            run.fig.stores += 1;
        }
        run.round += 1;
        let mode = run.rng.below(3) as usize;
        let (acks, during_open) = run.write(&m, start, mode);
        let c = m.counters();
        run.fig.fdatasyncs += c.fdatasyncs;
        run.fig.fsyncs += c.fsyncs;
        run.fig.writes += c.writes;
        let (loss, li) = match run.rng.below(10) {
            0 | 1 => (Loss::KeepAll, 0),
            2 | 3 => (Loss::DropAll, 1),
            r => (
                Loss::Random {
                    keep: [0.1, 0.5, 0.9][r as usize % 3],
                    tear: 0.5,
                },
                2,
            ),
        };
        let (img, report) = m
            .unmount(loss, &mut run.rng)
            .unwrap_or_else(|e| run.fail(None, format!("unmount: {e}")));
        image = img;
        run.fig.cuts += 1;
        run.fig.cuts_by_mode[mode] += 1;
        run.fig.cuts_by_loss[li] += 1;
        run.fig.cuts_during_open += during_open as u64;
        run.fig.disk.add(&report);
        run.fig.acked += acks.acked.len() as u64;
        let n = acks.acked.len() as u64;
        let min = acks.durable_through.map_or(0, |d| (d + 1 - start) as usize);
        run.note = format!(
            "last writer: mode {} from commit {start}, {n} acked, durable through {:?}, loss {loss:?}, {report:?}",
            MODES[mode], acks.durable_through
        );
        pending = Some(Pending {
            base: base.clone(),
            // The commit after the last ack may have been in flight.
            ids: (start..=start + n).collect(),
            min,
            acked: n as usize,
        });
        start += n + 1;
        if !image.contains_key(STORE) && (during_open || n == 0) {
            // Cut before the store was even created: nothing to check.
            pending = None;
        }
    }
    let _ = std::fs::remove_dir(&run.mount_dir);
    run.fig.elapsed = started.elapsed();
    run.fig
}

/// The default place for mount points and kept images.
pub fn default_work() -> PathBuf {
    std::env::var_os("MAPKV_CRASHFS_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// An environment variable as a number.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `path` exists and is executable.
pub fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
