//! Kill -9 loops: a child process writes to a store and is killed with
//! SIGKILL at a random moment; the parent reopens the store and checks it
//! against a model built from what the child acknowledged.
//!
//! A process crash keeps the page cache, so in every durability mode
//! (`None` included) a write whose call returned must survive with its
//! exact bytes; the one write in flight when the child died is either fully
//! old or fully new (a batch is all-or-nothing); a removed key whose
//! removal returned never comes back; and `Db::check` passes.
//!
//! The test binary re-executes itself as the child (`kill_child`, a no-op
//! unless `MAPKV_KILL_CHILD` is set). The child writes an intent line to
//! stdout before every write and an ack line after it returns; the parent
//! reads them through a pipe, never through the store. Rounds continue on
//! the same file, so damage would compound; now and then the parent checks
//! a copy of the crashed file and leaves the original to the next child,
//! which then recovers it itself (and may be killed while it does).
//!
//! `MAPKV_SEED` replays the parent's choices (the kill timing is not
//! reproducible); `MAPKV_KILL_ROUNDS` (and optionally `MAPKV_KILL_SECS`)
//! set the length of a soak run.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::procs::{collect_stderr, read_reports};
use common::{check_self, self_checking, Rng};
use mapkv::{Db, Durability, OpenKind, Options};

/// Keys are `k0000` .. `k0499`.
const KEYS: u64 = 500;
/// The name of the child's test function (passed to `--exact`).
const CHILD_TEST: &str = "kill_child";
/// Operations in one batch of a big-batch round.
const BIG_BATCH: u64 = 2000;
/// Default length of a run: this many rounds or this much time.
const DEFAULT_ROUNDS: u64 = 2000;
const DEFAULT_BUDGET: Duration = Duration::from_secs(45);
/// Start a fresh store once the log passes this size, so that the full
/// check after every kill stays cheap.
const ROTATE_BYTES: u64 = 64 << 20;
/// A child that is never killed gives up after this long.
const CHILD_LIMIT: Duration = Duration::from_secs(120);

fn key_bytes(k: u64) -> Vec<u8> {
    format!("k{k:04}").into_bytes()
}

/// Values carry (key, version) and a checksum; the version of the `i`-th
/// write of operation `op` is `op << 16 | i`.
fn version(op: u64, i: usize) -> u64 {
    (op << 16) | i as u64
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn mode_name(d: Durability) -> &'static str {
    match d {
        Durability::None => "none",
        Durability::Async => "async",
        Durability::Sync => "sync",
    }
}

// ---------------------------------------------------------------------------
// The child.

/// The writer that gets killed. Returns at once in a normal test run.
#[test]
fn kill_child() {
    let Ok(path) = std::env::var("MAPKV_KILL_CHILD") else {
        return;
    };
    child_main(Path::new(&path));
}

fn emit(out: &mut impl Write, line: &str) {
    // One write per line: a line is never interleaved, and a kill can only
    // cut the last one short (the parent ignores a line without '\n').
    out.write_all(line.as_bytes())
        .expect("child: write to the parent");
    out.flush().expect("child: flush to the parent");
}

fn value_len(rng: &mut Rng, large_percent: u64) -> usize {
    if rng.chance(large_percent) {
        5 * 1024 + rng.below(45 * 1024) as usize
    } else {
        rng.below(301) as usize
    }
}

fn child_main(path: &Path) {
    let seed = env_u64("MAPKV_KILL_SEED").expect("MAPKV_KILL_SEED");
    let mut op = env_u64("MAPKV_KILL_START").expect("MAPKV_KILL_START");
    let big = std::env::var("MAPKV_KILL_BIG").as_deref() == Ok("1");
    let mode = match std::env::var("MAPKV_KILL_MODE").as_deref() {
        Ok("none") => Durability::None,
        Ok("async") => Durability::Async,
        Ok("sync") => Durability::Sync,
        other => panic!("child: bad MAPKV_KILL_MODE {other:?}"),
    };
    let mut rng = Rng::new(seed);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // The harness has printed "test kill_child ... " without a newline:
    // end that line first.
    emit(&mut out, "\n@S\n");
    let db = Options::new()
        .durability(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("child: open {}: {e}", path.display()));
    emit(&mut out, &format!("@O {:?}\n", db.stats().opened));
    let started = Instant::now();
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        n += 1;
        if n % 64 == 0 && started.elapsed() > CHILD_LIMIT {
            panic!("child: not killed within {CHILD_LIMIT:?}");
        }
        let r = rng.below(100);
        if !big && r < 10 {
            // A read: whatever it returns must be a whole value of its key.
            let k = rng.below(KEYS);
            if let Some(v) = db.get(key_bytes(k)).expect("child: get") {
                match check_self(&v) {
                    Ok((key, _)) if key == k => {}
                    Ok((key, ver)) => panic!("child: key {k} holds a value of key {key} v{ver}"),
                    Err(e) => panic!("child: key {k}: {e}"),
                }
            }
            continue;
        }
        line.clear();
        if !big && r < 60 {
            let k = rng.below(KEYS);
            let v = self_checking(k, version(op, 0), value_len(&mut rng, 1));
            line.push_str(&format!("@I {op} put {k}={}:{}\n", version(op, 0), v.len()));
            emit(&mut out, &line);
            db.insert(key_bytes(k), &v).expect("child: insert");
            emit(&mut out, &format!("@A {op}\n"));
        } else if !big && r < 80 {
            let k = rng.below(KEYS);
            emit(&mut out, &format!("@I {op} del {k}=-\n"));
            let was = db.remove(key_bytes(k)).expect("child: remove");
            emit(&mut out, &format!("@A {op} {}\n", was as u8));
        } else {
            let count = if big { BIG_BATCH } else { 2 + rng.below(29) };
            let mut writes = Vec::with_capacity(count as usize);
            line.push_str(&format!("@I {op} batch "));
            for i in 0..count as usize {
                let k = rng.below(KEYS);
                if i > 0 {
                    line.push(',');
                }
                if rng.chance(if big { 15 } else { 30 }) {
                    line.push_str(&format!("{k}=-"));
                    writes.push((k, None));
                } else {
                    let len = value_len(&mut rng, if big { 0 } else { 1 });
                    let v = self_checking(k, version(op, i), len);
                    line.push_str(&format!("{k}={}:{}", version(op, i), v.len()));
                    writes.push((k, Some(v)));
                }
            }
            line.push('\n');
            emit(&mut out, &line);
            let mut b = db.batch();
            for (k, v) in &writes {
                match v {
                    Some(v) => b.insert(key_bytes(*k), v),
                    None => b.remove(key_bytes(*k)),
                };
            }
            b.commit().expect("child: batch commit");
            emit(&mut out, &format!("@A {op}\n"));
        }
        op += 1;
    }
}

// ---------------------------------------------------------------------------
// The parent: the model.

/// What a key holds: `(version, value length)`, or nothing.
type Model = Vec<Option<(u64, usize)>>;

/// One write operation as announced by the child.
#[derive(Clone, Debug)]
struct Intent {
    op: u64,
    kind: String,
    writes: Vec<(u64, Option<(u64, usize)>)>,
}

fn parse_intent(line: &str) -> Result<Intent, String> {
    let mut parts = line.splitn(4, ' ');
    let (_, op, kind, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    let op = op
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| format!("bad op number in {line:?}"))?;
    let kind = kind.ok_or("no kind")?.to_string();
    let rest = rest.ok_or("no writes")?;
    let mut writes = Vec::new();
    for w in rest.split(',') {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("bad write {w:?}"))?;
        let k: u64 = k.parse().map_err(|_| format!("bad key {w:?}"))?;
        if k >= KEYS {
            return Err(format!("key {k} outside the key space"));
        }
        let v = if v == "-" {
            None
        } else {
            let (ver, len) = v
                .split_once(':')
                .ok_or_else(|| format!("bad value {w:?}"))?;
            Some((
                ver.parse().map_err(|_| format!("bad version {w:?}"))?,
                len.parse().map_err(|_| format!("bad length {w:?}"))?,
            ))
        };
        writes.push((k, v));
    }
    Ok(Intent { op, kind, writes })
}

fn apply(model: &mut Model, intent: &Intent) {
    for &(k, v) in &intent.writes {
        model[k as usize] = v;
    }
}

fn describe_expected(e: Option<(u64, usize)>) -> String {
    match e {
        None => "absent".into(),
        Some((ver, len)) => format!("op {} #{} ({len} bytes)", ver >> 16, ver & 0xffff),
    }
}

fn describe_actual(k: u64, a: &Option<Vec<u8>>) -> String {
    match a {
        None => "absent".into(),
        Some(v) => match check_self(v) {
            Ok((key, ver)) if key == k => {
                format!("op {} #{} ({} bytes)", ver >> 16, ver & 0xffff, v.len())
            }
            Ok((key, ver)) => format!("a value of key {key}, version {ver} (misplaced)"),
            Err(e) => format!("{} bytes, {e}", v.len()),
        },
    }
}

fn holds(k: u64, actual: &Option<Vec<u8>>, want: Option<(u64, usize)>) -> bool {
    match (actual, want) {
        (None, None) => true,
        (Some(v), Some((ver, len))) => {
            v.len() == len && check_self(v) == Ok((k, ver)) && *v == self_checking(k, ver, len)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// The parent: the loop.

/// Everything a failure message needs to say.
struct Ctx {
    seed: u64,
    round: u64,
    mode: Durability,
    child_seed: u64,
    delay: Duration,
    path: PathBuf,
    /// How the previous round left the store.
    note: String,
}

impl Ctx {
    /// Keep the file for a post-mortem, then fail.
    fn fail(&self, file: &Path, msg: String) -> ! {
        let keep = std::env::temp_dir().join(format!(
            "mapkv-kill-failure-{}-round{}.mapkv",
            self.seed, self.round
        ));
        let kept = match std::fs::copy(file, &keep) {
            Ok(_) => format!("file kept at {}", keep.display()),
            Err(e) => format!("could not keep the file: {e}"),
        };
        panic!(
            "kill -9 loop failed: MAPKV_SEED={} round {} mode {} child seed {} kill after {:?} \
             store {}; {kept}\n{}\n{msg}",
            self.seed,
            self.round,
            mode_name(self.mode),
            self.child_seed,
            self.delay,
            self.path.display(),
            self.note,
        );
    }
}

#[derive(Default)]
struct Figures {
    rounds: u64,
    rounds_by_mode: [u64; 3],
    big_rounds: u64,
    kills: u64,
    killed_before_open_returned: u64,
    killed_in_flight: u64,
    killed_in_child_recovery: u64,
    acked_ops: u64,
    in_flight_applied: u64,
    in_flight_not_applied: u64,
    in_flight_no_change: u64,
    big_in_flight_applied: u64,
    big_in_flight_not_applied: u64,
    parent_kinds: [u64; 3],
    child_kinds: [u64; 3],
    reopen_times: Vec<Duration>,
    reboot_times: Vec<Duration>,
    check_times: Vec<Duration>,
    copies_checked: u64,
    reboots: u64,
    acked_by_mode: [u64; 3],
    files: u64,
    keys_compared: u64,
}

fn kind_index(k: OpenKind) -> usize {
    match k {
        OpenKind::Clean => 0,
        OpenKind::Replayed => 1,
        OpenKind::Rebuilt => 2,
        _ => panic!("unknown OpenKind {k:?}"),
    }
}

/// What one killed child left: the protocol lines it completed.
struct ChildRun {
    lines: Vec<String>,
    opened: Option<String>,
}

fn run_child(ctx: &Ctx, exe: &Path, start_op: u64, big: bool, figures: &mut Figures) -> ChildRun {
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env("MAPKV_KILL_CHILD", &ctx.path)
        .env("MAPKV_KILL_SEED", ctx.child_seed.to_string())
        .env("MAPKV_KILL_MODE", mode_name(ctx.mode))
        .env("MAPKV_KILL_START", start_op.to_string())
        .env("MAPKV_KILL_BIG", if big { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out_thread = std::thread::spawn(move || read_reports(stdout, |line| tx.send(line).is_ok()));
    let err_thread = collect_stderr(stderr);

    // The delay counts from the moment the child is about to open, so that
    // a delay of 0 lands in open and recovery, not in process start-up.
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut started = false;
    while !started {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                started = l == "@S";
                lines.push(l);
            }
            Err(_) => break,
        }
    }
    if !started {
        let _ = child.kill();
        let status = child.wait();
        let _ = out_thread.join();
        let stderr = err_thread.join().unwrap_or_default();
        ctx.fail(
            &ctx.path,
            format!("the child did not start: {status:?}\nchild stderr:\n{stderr}"),
        );
    }
    if !ctx.delay.is_zero() {
        std::thread::sleep(ctx.delay);
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the child");
    lines.extend(rx.iter());
    out_thread.join().expect("stdout reader");
    let stderr = err_thread.join().expect("stderr reader");
    if status.signal() != Some(libc::SIGKILL) {
        ctx.fail(
            &ctx.path,
            format!(
                "the child ended by itself ({status}) instead of being killed\nchild stderr:\n{stderr}"
            ),
        );
    }
    figures.kills += 1;
    let opened = lines
        .iter()
        .find_map(|l| l.strip_prefix("@O ").map(str::to_string));
    ChildRun { lines, opened }
}

/// Open the store at `file` after a kill and compare it with the model:
/// returns whether the in-flight operation turned out applied (`None` if
/// it made no difference).
fn verify(
    ctx: &Ctx,
    file: &Path,
    model: &Model,
    in_flight: Option<&Intent>,
    figures: &mut Figures,
    after_kill: bool,
    reboot: bool,
) -> Option<bool> {
    let t = Instant::now();
    let db = if reboot {
        // As if the machine had rebooted after the kill with every page of
        // the page cache on disk: the index is rebuilt from the log, which
        // must then yield exactly what a same-boot recovery yields.
        std::env::set_var("MAPKV_BOOT_ID", format!("kill-loop-reboot-{}", ctx.round));
        let r = Db::open(file);
        std::env::remove_var("MAPKV_BOOT_ID");
        r
    } else {
        Db::open(file)
    };
    let db = db.unwrap_or_else(|e| ctx.fail(file, format!("reopen after the kill failed: {e}")));
    let took = t.elapsed();
    let opened = db.stats().opened;
    let how = if reboot { " as after a reboot" } else { "" };
    if reboot && opened == OpenKind::Replayed {
        ctx.fail(
            file,
            "a reopen after a reboot replayed the old index".into(),
        );
    }
    if after_kill {
        if reboot {
            figures.reboot_times.push(took);
        } else {
            figures.reopen_times.push(took);
        }
        figures.parent_kinds[kind_index(opened)] += 1;
    }
    let t = Instant::now();
    let report = db.check().unwrap_or_else(|e| {
        ctx.fail(
            file,
            format!("check after {opened:?} open{how} failed: {e}"),
        )
    });
    figures.check_times.push(t.elapsed());
    let actual: Vec<Option<Vec<u8>>> = (0..KEYS)
        .map(|k| match db.get(key_bytes(k)) {
            Ok(v) => v.map(|v| v.to_vec()),
            Err(e) => ctx.fail(file, format!("get key {k} failed: {e}")),
        })
        .collect();
    // Iteration must agree with get.
    let mut iterated = 0u64;
    for item in db.iter() {
        let (k, v) = item.unwrap_or_else(|e| ctx.fail(file, format!("iter failed: {e}")));
        let id = std::str::from_utf8(&k)
            .ok()
            .and_then(|s| s.strip_prefix('k'))
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&id| id < KEYS && key_bytes(id) == *k)
            .unwrap_or_else(|| ctx.fail(file, format!("iter yields a foreign key {k:?}")));
        if actual[id as usize].as_deref() != Some(&v[..]) {
            ctx.fail(file, format!("iter and get disagree on key {id}"));
        }
        iterated += 1;
    }
    let len = db.len();
    figures.keys_compared += KEYS;

    let mut with = model.clone();
    if let Some(i) = in_flight {
        apply(&mut with, i);
    }
    let count = |m: &Model| m.iter().filter(|v| v.is_some()).count() as u64;
    let matches = |m: &Model| {
        (0..KEYS).all(|k| holds(k, &actual[k as usize], m[k as usize]))
            && len == count(m)
            && iterated == len
            && report.live_keys == len
    };
    let old = matches(model);
    let new = in_flight.is_some() && matches(&with);
    if !old && !new {
        let mut msg = format!(
            "the store matches neither the acknowledged writes nor them plus the write in \
             flight (opened {opened:?}{how}); len {len}, iter {iterated}, check {} keys; \
             expected len {} (or {} with the write in flight)\n",
            report.live_keys,
            count(model),
            count(&with),
        );
        if let Some(i) = in_flight {
            let (mut as_new, mut as_old) = (0, 0);
            for &(k, _) in &i.writes {
                let a = &actual[k as usize];
                if holds(k, a, with[k as usize]) && with[k as usize] != model[k as usize] {
                    as_new += 1;
                } else if holds(k, a, model[k as usize]) && with[k as usize] != model[k as usize] {
                    as_old += 1;
                }
            }
            msg.push_str(&format!(
                "in flight: op {} {} of {} writes; keys it changes that show the new value: \
                 {as_new}, the old value: {as_old}{}\n",
                i.op,
                i.kind,
                i.writes.len(),
                if as_new > 0 && as_old > 0 {
                    " (PARTIAL BATCH VISIBLE)"
                } else {
                    ""
                },
            ));
        }
        let mut shown = 0;
        for k in 0..KEYS {
            let a = &actual[k as usize];
            let (m, w) = (model[k as usize], with[k as usize]);
            if !holds(k, a, m) && !holds(k, a, w) {
                if shown < 20 {
                    msg.push_str(&format!(
                        "key {k}: found {}, acknowledged {}, with the write in flight {}\n",
                        describe_actual(k, a),
                        describe_expected(m),
                        describe_expected(w),
                    ));
                }
                shown += 1;
            }
        }
        msg.push_str(&format!("{shown} keys differ from both"));
        ctx.fail(file, msg);
    }
    db.close()
        .unwrap_or_else(|e| ctx.fail(file, format!("clean close failed: {e}")));
    match (old, new) {
        (true, true) => None,
        (_, n) => Some(n),
    }
}

fn median_max(times: &[Duration]) -> (Duration, Duration) {
    let mut t = times.to_vec();
    t.sort();
    (
        t.get(t.len() / 2).copied().unwrap_or_default(),
        t.last().copied().unwrap_or_default(),
    )
}

#[test]
fn kill_nine_loops() {
    let seed = common::seed("kill_nine_loops");
    let mut rng = Rng::new(seed);
    let (max_rounds, budget) = match env_u64("MAPKV_KILL_ROUNDS") {
        Some(n) => (n, env_u64("MAPKV_KILL_SECS").map(Duration::from_secs)),
        None => (DEFAULT_ROUNDS, Some(DEFAULT_BUDGET)),
    };
    let exe = std::env::current_exe().expect("current_exe");
    let dir = tempfile::tempdir().expect("tempdir");
    let began = Instant::now();
    let modes = [Durability::None, Durability::Async, Durability::Sync];

    let mut figures = Figures {
        files: 1,
        ..Figures::default()
    };
    let mut path = dir.path().join("kill-1.mapkv");
    let mut model: Model = vec![None; KEYS as usize];
    let mut next_op = 0u64;
    // Whether the file was left crashed for the next child to recover.
    let mut left_crashed = false;
    let mut note = "the previous round closed the store cleanly".to_string();

    for round in 0..max_rounds {
        if budget.is_some_and(|b| began.elapsed() >= b) {
            break;
        }
        let mode = modes[(round % 3) as usize];
        let big = round % 10 == 7;
        let delay = match rng.below(100) {
            0..=7 => Duration::ZERO,
            8..=14 => Duration::from_micros(rng.below(3000)),
            _ => {
                // Log-uniform in [1 ms, 200 ms].
                let u = rng.below(1 << 20) as f64 / (1u64 << 20) as f64;
                Duration::from_secs_f64(0.001 * 200f64.powf(u))
            }
        };
        let ctx = Ctx {
            seed,
            round,
            mode,
            child_seed: rng.next(),
            delay,
            path: path.clone(),
            note: note.clone(),
        };
        figures.rounds += 1;
        figures.rounds_by_mode[(round % 3) as usize] += 1;
        figures.big_rounds += big as u64;

        let run = run_child(&ctx, &exe, next_op, big, &mut figures);
        match run.opened.as_deref() {
            None => {
                figures.killed_before_open_returned += 1;
                figures.killed_in_child_recovery += left_crashed as u64;
            }
            Some(k) if left_crashed => {
                let i = ["Clean", "Replayed", "Rebuilt"]
                    .iter()
                    .position(|n| *n == k)
                    .unwrap_or_else(|| ctx.fail(&path, format!("child opened as {k:?}")));
                figures.child_kinds[i] += 1;
            }
            Some(_) => {}
        }

        // Replay the child's protocol into the model.
        let mut pending: Option<Intent> = None;
        for line in &run.lines {
            if let Some(rest) = line.strip_prefix("@A ") {
                let mut parts = rest.split(' ');
                let op: u64 = parts
                    .next()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(u64::MAX);
                let Some(i) = pending.take().filter(|i| i.op == op) else {
                    ctx.fail(&path, format!("ack {line:?} without its intent"));
                };
                if let Some(was) = parts.next() {
                    // A remove says whether the key was there: the model must agree.
                    let k = i.writes[0].0;
                    let had = model[k as usize].is_some();
                    if (was == "1") != had {
                        ctx.fail(
                            &path,
                            format!(
                                "op {op}: the child's remove of key {k} returned {was}, but \
                                 the model has it {}",
                                describe_expected(model[k as usize])
                            ),
                        );
                    }
                }
                apply(&mut model, &i);
                figures.acked_ops += 1;
                figures.acked_by_mode[(round % 3) as usize] += 1;
            } else if line.starts_with("@I ") {
                let i = parse_intent(line).unwrap_or_else(|e| ctx.fail(&path, e));
                if let Some(p) = &pending {
                    ctx.fail(
                        &path,
                        format!("intent for op {} before op {}'s ack", i.op, p.op),
                    );
                }
                if i.op != next_op {
                    ctx.fail(&path, format!("op {} where op {next_op} was due", i.op));
                }
                next_op += 1;
                pending = Some(i);
            }
        }
        if pending.is_some() {
            figures.killed_in_flight += 1;
        }

        // Check the crashed store: usually in place; sometimes a copy, and
        // the next child recovers the original.
        let exists = path.exists();
        let on_copy = exists && rng.chance(25);
        let file = if on_copy {
            let image = dir.path().join("image.mapkv");
            std::fs::copy(&path, &image).expect("copy the crashed store");
            figures.copies_checked += 1;
            image
        } else {
            path.clone()
        };
        let reboot = on_copy && rng.chance(50);
        figures.reboots += reboot as u64;
        let applied = verify(
            &ctx,
            &file,
            &model,
            pending.as_ref(),
            &mut figures,
            true,
            reboot,
        );
        if let Some(i) = &pending {
            match applied {
                Some(true) => {
                    apply(&mut model, i);
                    figures.in_flight_applied += 1;
                    figures.big_in_flight_applied += (i.writes.len() as u64 >= BIG_BATCH) as u64;
                }
                Some(false) => {
                    figures.in_flight_not_applied += 1;
                    figures.big_in_flight_not_applied +=
                        (i.writes.len() as u64 >= BIG_BATCH) as u64;
                }
                None => {
                    apply(&mut model, i);
                    figures.in_flight_no_change += 1;
                }
            }
        }
        if on_copy {
            let _ = std::fs::remove_file(&file);
        }
        left_crashed = on_copy;
        note = match (&pending, on_copy) {
            (_, false) => "the previous round closed the store cleanly".to_string(),
            (None, true) => "the previous round checked a copy and left the crashed store \
                             (no write in flight) to this child"
                .to_string(),
            (Some(i), true) => format!(
                "the previous round checked a copy{}, found op {} ({}) {}, and left the \
                 crashed store to this child",
                if reboot { " as after a reboot" } else { "" },
                i.op,
                i.kind,
                match applied {
                    Some(true) => "applied",
                    Some(false) => "not applied",
                    None => "without effect",
                }
            ),
        };

        // Start over on a fresh file once the log is large.
        if !on_copy
            && exists
            && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > ROTATE_BYTES
        {
            let _ = std::fs::remove_file(&path);
            figures.files += 1;
            path = dir.path().join(format!("kill-{}.mapkv", figures.files));
            model = vec![None; KEYS as usize];
        }
    }

    // A last clean open of whatever the loop left.
    let ctx = Ctx {
        seed,
        round: figures.rounds,
        mode: Durability::None,
        child_seed: 0,
        delay: Duration::ZERO,
        path: path.clone(),
        note: note.clone(),
    };
    verify(&ctx, &path, &model, None, &mut figures, false, false);

    let f = &figures;
    let (reopen_median, reopen_max) = median_max(&f.reopen_times);
    let (reboot_median, _) = median_max(&f.reboot_times);
    let (check_median, check_max) = median_max(&f.check_times);
    println!(
        "kill -9 loops: {rounds} rounds (none/async/sync {r0}/{r1}/{r2}, {big} big-batch), \
         {kills} kills ({early} before open returned, {in_rec} of them in the child's recovery, \
         {flight} with a write in flight), \
         {acked} acked ops checked (none/async/sync {a0}/{a1}/{a2}), in flight: applied \
         {yes} / not {no} / no change {same} (big batches {byes} / {bno}), recovery by the \
         parent Clean/Replayed/Rebuilt {p0}/{p1}/{p2} ({copies} on copies, {reboots} as after \
         a reboot), by the next child {c0}/{c1}/{c2}, reopen median {reopen_median:.2?} max \
         {reopen_max:.2?}, after a reboot median {reboot_median:.2?}, check median \
         {check_median:.2?} max {check_max:.2?}, {files} files, {total:.1?}, MAPKV_SEED={seed}",
        rounds = f.rounds,
        r0 = f.rounds_by_mode[0],
        r1 = f.rounds_by_mode[1],
        r2 = f.rounds_by_mode[2],
        big = f.big_rounds,
        kills = f.kills,
        early = f.killed_before_open_returned,
        in_rec = f.killed_in_child_recovery,
        flight = f.killed_in_flight,
        acked = f.acked_ops,
        a0 = f.acked_by_mode[0],
        a1 = f.acked_by_mode[1],
        a2 = f.acked_by_mode[2],
        yes = f.in_flight_applied,
        no = f.in_flight_not_applied,
        same = f.in_flight_no_change,
        byes = f.big_in_flight_applied,
        bno = f.big_in_flight_not_applied,
        p0 = f.parent_kinds[0],
        p1 = f.parent_kinds[1],
        p2 = f.parent_kinds[2],
        copies = f.copies_checked,
        reboots = f.reboots,
        c0 = f.child_kinds[0],
        c1 = f.child_kinds[1],
        c2 = f.child_kinds[2],
        files = f.files,
        total = began.elapsed(),
    );
    let want_kills = 20.min(max_rounds);
    assert!(
        f.kills >= want_kills,
        "only {} kills happened (want {want_kills}): the test proved little",
        f.kills
    );
    if env_u64("MAPKV_KILL_ROUNDS").is_none() {
        assert!(f.acked_ops >= 1000, "only {} acked ops", f.acked_ops);
        assert!(
            f.killed_in_flight >= 5,
            "only {} kills hit a write",
            f.killed_in_flight
        );
    }
}
