//! Cache mode under many processes, with evictions running all the time and
//! writers SIGKILLed in the middle of them.
//!
//! `cache_stress`: two writer processes and two reader processes (one
//! read-write handle, one read-only) share one cache of 1 MiB, with about
//! four times as many keys as fit, so that evictions run constantly,
//! started by every writer (in the background ahead of time, or inside the
//! write that finds the cache full) and sometimes by the read-write reader.
//!
//! * Each writer owns its keys (8,000, 400 of them hot) and writes values
//!   that say which key and version they belong to and carry a checksum
//!   (`common::self_checking`). A version is the writer's instance (its
//!   restart count) in the high 32 bits and a per-key counter in the low
//!   ones, so a key's versions only go up, across restarts too. Writes are
//!   single inserts (some with a TTL of 20-500 ms, so entries expire during
//!   the run), batches of 2-12 keys and removes (which take a version too).
//!   Every commit is announced on stdout before it starts (`@I`, marked
//!   `@I!` when the cache is so full that the write will start an eviction
//!   or evict itself) and acknowledged after it returned (`@A`). Writers
//!   read back keys they wrote: absent (evicted, expired, removed) or
//!   exactly the version they last committed, nothing else. A restarted
//!   writer first reads all its keys and reports what it found (`@R`); the
//!   parent checks every one against the acknowledgements.
//! * Every child has an I/O hook that reports when an eviction (or any
//!   compaction) runs in its process: `@V s` once its new file exists,
//!   `@V r` after the rename. Right before the rename, under the
//!   compaction lock, the child checks that no other compaction file is
//!   left next to the store: the eviction began by removing the leftovers
//!   of killed ones, and nobody else may create any since.
//! * Readers read random keys of all writers: every value must be whole
//!   (checksum), of its key, and per key the version never goes back
//!   (an evicted or expired key may be absent; a stale value must never
//!   come back). They also iterate over the whole store now and then, and
//!   the read-write reader runs `check` on the live store, while the other
//!   reader processes mark hits in the slots it checks (this found `check`
//!   comparing whole slot words, hit bits included). Readers report the store's eviction counters and their own
//!   counts (`@C`, every 0.2 s).
//! * The parent SIGKILLs a writer every 80-300 ms: blind (after a random
//!   delay), aimed at an eviction (after the writer's `@V s`, with a random
//!   delay of up to 8 ms, so that kills land in the copy, the catch-up, the
//!   writers' pause or just after the rename), aimed at a write that starts
//!   an eviction (`@I!`), or during the new writer's open; then it starts
//!   the writer again. A kill counts as landing inside an eviction if the
//!   dead process's new file is still there afterwards (it died before the
//!   rename) or if the store file it was on is left marked MOVING (it died
//!   between the rename's two marks). The parent polls the length of the
//!   store's file (and of new files) all along: never past the capacity
//!   (no process is ever alone on the store, so no recovery may overshoot).
//! * At the end (writers stopped or killed, then readers stopped or
//!   killed, chosen per run) the parent opens the store alone: `check`
//!   passes, the file is within the capacity, no `.NAME.mapkv-compact-*`
//!   file is left, and every key present holds a version that was written
//!   for it and is not older than the last one acknowledged (an evicted key
//!   may be absent). Then it writes on until two more evictions ran and
//!   checks again, closes, reopens.
//!
//! `MAPKV_CACHE_STRESS_SECS` sets the length of the kill phase (default
//! 8 s); `MAPKV_SEED` replays the parent's choices (timing is not
//! reproducible). A failure names the seed and keeps the store's directory.

mod common;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::{stop_on_eof, ChildVars, Ev, Kids, Out, Spawn};
use common::{check_self, self_checking, Rng};
use mapkv::testing::{add_io_hook, layout, HookGuard, IoOp, Phase};
use mapkv::{Db, OpenKind, Options};

/// The cache's capacity.
const CAP: u64 = 1 << 20;
/// Writer and reader processes.
const WRITERS: usize = 2;
const READERS: usize = 2;
/// Keys per writer, and how many of them are hot (written and read as
/// often as all the others together).
const KEYS: u64 = 8_000;
const HOT: u64 = 400;
/// Default length of the kill phase.
const DEFAULT_SECS: u64 = 8;
/// The child's test function (passed to `--exact`).
const CHILD_TEST: &str = "cache_stress_child";
/// The prefix of the variables that tell a child what to do.
const ENV: &str = "MAPKV_CS_";
/// How long the parent waits for an expected line or exit.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// No acknowledged write from any writer for this long is a hang.
const STALL: Duration = Duration::from_secs(30);
/// Where the control block's magic is, and its value while a compaction
/// renames its new file over the store (docs/FORMAT.md).
const MAGIC_OFFSET: u64 = layout::CONTROL_OFFSET + layout::control::MAGIC as u64;
const MAGIC_MOVING: &[u8; 8] = &layout::MOVING_MAGIC;

fn key_id(w: usize, i: u64) -> u64 {
    ((w as u64 + 1) << 32) | i
}

fn key_bytes(w: usize, i: u64) -> [u8; 8] {
    key_id(w, i).to_be_bytes()
}

/// The writer and index of a key, if it is one of ours.
fn decode_key(k: &[u8]) -> Option<(usize, u64)> {
    let id = u64::from_be_bytes(k.try_into().ok()?);
    let w = (id >> 32).checked_sub(1)? as usize;
    let i = id & 0xffff_ffff;
    (w < WRITERS && i < KEYS).then_some((w, i))
}

/// A key index: half of the picks among the hot keys.
fn pick_key(rng: &mut Rng) -> u64 {
    if rng.chance(50) {
        rng.below(HOT)
    } else {
        rng.below(KEYS)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn fmt_ver(v: u64) -> String {
    format!("{}.{}", v >> 32, v & 0xffff_ffff)
}

/// Compaction files next to the store: `.NAME.mapkv-compact-PID-R`, and
/// `..NAME.mapkv-compact-PID-R.mapkv-new.*` while one is being created.
fn leftovers(path: &Path) -> Vec<String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let prefix = format!(".{name}.mapkv-compact-");
    let Ok(rd) = std::fs::read_dir(path.parent().unwrap()) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&prefix) || n.strip_prefix('.').is_some_and(|m| m.starts_with(&prefix))
        })
        .collect();
    v.sort();
    v
}

/// The pid in a compaction file's name.
fn leftover_pid(path: &Path, n: &str) -> Option<u32> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let prefix = format!(".{name}.mapkv-compact-");
    let rest = n
        .strip_prefix(&prefix)
        .or_else(|| n.strip_prefix('.')?.strip_prefix(&prefix))?;
    rest.split('-').next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// The children.

/// Every child process. Returns at once in a normal test run.
#[test]
fn cache_stress_child() {
    let Some(vars) = ChildVars::from_env(ENV) else {
        return;
    };
    let env = ChildEnv {
        fraction: vars.num("FRACTION_PCT") as f64 / 100.0,
        ahead: vars.num("AHEAD") == 1,
        vars,
    };
    match env.role.as_str() {
        "writer" => writer_main(&env),
        "reader" => reader_main(&env),
        other => panic!("child: unknown MAPKV_CS_ROLE {other:?}"),
    }
}

struct ChildEnv {
    vars: ChildVars,
    fraction: f64,
    ahead: bool,
}

impl Deref for ChildEnv {
    type Target = ChildVars;
    fn deref(&self) -> &ChildVars {
        &self.vars
    }
}

impl ChildEnv {
    fn fail(&self, msg: impl Display) -> ! {
        panic!(
            "{} {} (instance {}, MAPKV_CS_SEED={}, {:?}, evict fraction {}, evict ahead {}, \
             read-only {}): {msg}",
            self.role,
            self.id,
            self.instance,
            self.seed,
            self.mode,
            self.fraction,
            self.ahead,
            self.read_only
        );
    }
}

/// Report evictions (and compactions) that run in this process: `@V s
/// NAME` once the new file is there, `@V r` after the rename. Right before
/// the rename, check that no other compaction file is left next to the
/// store (`@X` and exit if one is).
fn eviction_hook(path: &Path, out: Out) -> HookGuard {
    let store = path.to_path_buf();
    let name = store.file_name().unwrap().to_string_lossy().into_owned();
    let prefix = format!(".{name}.mapkv-compact-");
    let current: Mutex<Option<String>> = Mutex::new(None);
    add_io_hook(Arc::new(move |p: &Path, op: IoOp, phase: Phase| {
        let file = p.file_name().map(|n| n.to_string_lossy().into_owned());
        if phase == Phase::Before && file.as_deref().is_some_and(|n| n.starts_with(&prefix)) {
            let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
            if *cur != file {
                out.line(&format!("@V s {}", file.as_deref().unwrap()));
                *cur = file;
            }
        } else if p == store && op == IoOp::Rename {
            if phase == Phase::Before {
                let cur = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let others: Vec<String> = leftovers(&store)
                    .into_iter()
                    .filter(|n| Some(n) != cur.as_ref())
                    .collect();
                if !others.is_empty() {
                    out.line(&format!(
                        "@X an eviction about to rename {cur:?} over the store finds other \
                         compaction files next to it, which it should have removed when it \
                         began: {others:?}"
                    ));
                    std::process::exit(3);
                }
            } else {
                out.line("@V r");
            }
        }
        None
    }))
}

/// A writer: resume check, then commits until told to stop.
fn writer_main(env: &ChildEnv) {
    let id = env.id;
    let out = Out::new();
    let stop = stop_on_eof();
    let _hook = eviction_hook(&env.path, out.clone());
    let db = Options::new()
        .capacity(CAP)
        .durability(env.mode)
        .evict_fraction(env.fraction)
        .evict_ahead(env.ahead)
        .open(&env.path)
        .unwrap_or_else(|e| env.fail(format!("open: {e}")));
    out.line(&format!("@O {:?}", db.stats().opened));
    // Every key of ours that is present was written by an earlier instance.
    let base = env.instance << 32;
    let mut line = String::from("@R");
    let mut present = 0u64;
    for i in 0..KEYS {
        let got = db
            .get(key_bytes(id, i))
            .unwrap_or_else(|e| env.fail(format!("resume: get key {i}: {e}")));
        if let Some(v) = got {
            let (k, ver) =
                check_self(&v).unwrap_or_else(|e| env.fail(format!("resume: key {i}: {e}")));
            if k != key_id(id, i) {
                env.fail(format!("resume: key {i} holds a value of key {k:#x}"));
            }
            if ver >= base {
                env.fail(format!(
                    "resume: key {i} holds version {} before this instance wrote anything",
                    fmt_ver(ver)
                ));
            }
            line.push_str(&format!(" {i}={ver}"));
            present += 1;
            if line.len() > 3000 {
                out.line(&line);
                line = String::from("@R");
            }
        }
    }
    if line.len() > 2 {
        out.line(&line);
    }
    out.line(&format!("@RE {present}"));

    let mut rng = Rng::new(env.seed);
    let mut counter = vec![0u64; KEYS as usize];
    // What this instance last committed per key: Some(version) for a put,
    // None for a remove; absent: not written by this instance.
    let mut mine: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut written: Vec<u64> = Vec::new();
    let (mut commits, mut readbacks, mut found) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let ahead = (CAP as f64 * env.fraction / 4.0) as u64;
    let next = |counter: &mut Vec<u64>, i: u64| {
        counter[i as usize] += 1;
        base | counter[i as usize]
    };
    while !stop.load(Ordering::Acquire) {
        if started.elapsed() > env.limit {
            env.fail(format!("not stopped within {:?}", env.limit));
        }
        let r = rng.below(100);
        if r < 12 && !written.is_empty() {
            // Read back a key this instance wrote: nobody else writes it.
            let i = written[rng.below(written.len() as u64) as usize];
            let got = db
                .get(key_bytes(id, i))
                .unwrap_or_else(|e| env.fail(format!("read back key {i}: {e}")));
            if let Some(v) = got {
                let (k, ver) =
                    check_self(&v).unwrap_or_else(|e| env.fail(format!("read back key {i}: {e}")));
                if k != key_id(id, i) || Some(ver) != mine[&i] {
                    env.fail(format!(
                        "read back key {i}: found key {k:#x} version {}, this instance last \
                         committed {}",
                        fmt_ver(ver),
                        mine[&i].map_or("a remove".into(), fmt_ver)
                    ));
                }
                found += 1;
            }
            readbacks += 1;
            continue;
        }
        // (key, version, Some(ttl) / None for a put, or a remove)
        let mut ops: Vec<(u64, u64, Option<Option<Duration>>)> = Vec::new();
        let ttl = |rng: &mut Rng| {
            rng.chance(10)
                .then(|| Duration::from_millis(20 + rng.below(480)))
        };
        if r < 70 {
            let i = pick_key(&mut rng);
            let t = ttl(&mut rng);
            ops.push((i, next(&mut counter, i), Some(t)));
        } else if r < 88 {
            let n = 2 + rng.below(11);
            while ops.len() < n as usize {
                let i = pick_key(&mut rng);
                if ops.iter().all(|o| o.0 != i) {
                    let op = if rng.chance(10) {
                        None
                    } else {
                        Some(ttl(&mut rng))
                    };
                    ops.push((i, next(&mut counter, i), op));
                }
            }
        } else {
            let i = if rng.chance(50) && !written.is_empty() {
                written[rng.below(written.len() as u64) as usize]
            } else {
                pick_key(&mut rng)
            };
            ops.push((i, next(&mut counter, i), None));
        }
        // Records of at most 300 bytes of value, a key and a header.
        let size = ops.len() as u64 * (300 + 8 + 8 + 24);
        let st = db.cache_stats();
        let full = st.used_bytes + size + ahead >= st.capacity;
        let mut intent = String::from(if full { "@I!" } else { "@I" });
        for &(i, v, op) in &ops {
            let sign = if op.is_some() { "" } else { "-" };
            intent.push_str(&format!(" {i}={sign}{v}"));
        }
        out.line(&intent);
        let values: Vec<Vec<u8>> = ops
            .iter()
            .map(|&(i, v, _)| self_checking(key_id(id, i), v, 100 + rng.below(200) as usize))
            .collect();
        if let [(i, _, op)] = ops[..] {
            let k = key_bytes(id, i);
            match op {
                Some(None) => db.insert(k, &values[0]),
                Some(Some(t)) => db.insert_with_ttl(k, &values[0], t),
                None => db.remove(k).map(|_| ()),
            }
            .unwrap_or_else(|e| env.fail(format!("write key {i}: {e}")));
        } else {
            let mut b = db.batch();
            for (&(i, _, op), v) in ops.iter().zip(&values) {
                let k = key_bytes(id, i);
                match op {
                    Some(None) => b.insert(k, v),
                    Some(Some(t)) => b.insert_with_ttl(k, v, t),
                    None => b.remove(k),
                };
            }
            b.commit()
                .unwrap_or_else(|e| env.fail(format!("batch of {}: {e}", ops.len())));
        }
        out.line("@A");
        commits += 1;
        for &(i, v, op) in &ops {
            if mine.insert(i, op.map(|_| v)).is_none() {
                written.push(i);
            }
        }
    }
    let st = db.cache_stats();
    out.line(&format!(
        "@F commits={commits} readbacks={readbacks} found={found} runs={} evictions={} \
         expirations={}",
        st.eviction_runs, st.evictions, st.expirations
    ));
    drop(db);
    std::process::exit(0);
}

/// A reader: random gets, scans and (read-write) live checks until told
/// to stop.
fn reader_main(env: &ChildEnv) {
    let out = Out::new();
    let stop = stop_on_eof();
    let _hook = eviction_hook(&env.path, out.clone());
    let db = Options::new()
        .read_only(env.read_only)
        .open(&env.path)
        .unwrap_or_else(|e| env.fail(format!("open: {e}")));
    let mut rng = Rng::new(env.seed);
    // The newest version seen per key (0: none yet).
    let mut seen = vec![0u64; WRITERS * KEYS as usize];
    let (mut gets, mut hits, mut scans, mut scanned, mut checks) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut saw = |w: usize, i: u64, v: &[u8], how: &str| {
        let (k, ver) = check_self(v).unwrap_or_else(|e| {
            env.fail(format!(
                "{how}: writer {w} key {i}: {e} ({} bytes)",
                v.len()
            ))
        });
        if k != key_id(w, i) {
            env.fail(format!(
                "{how}: writer {w} key {i} holds a value of key {k:#x}"
            ));
        }
        let s = &mut seen[w * KEYS as usize + i as usize];
        if ver < *s {
            env.fail(format!(
                "{how}: writer {w} key {i} went back from version {} to {} (a stale value came \
                 back)",
                fmt_ver(*s),
                fmt_ver(ver)
            ));
        }
        *s = ver;
    };
    let started = Instant::now();
    let (mut last_report, mut last_scan, mut last_check) =
        (Instant::now(), Instant::now(), Instant::now());
    while !stop.load(Ordering::Acquire) {
        if started.elapsed() > env.limit {
            env.fail(format!("not stopped within {:?}", env.limit));
        }
        if last_report.elapsed() > Duration::from_millis(200) {
            let s = db.cache_stats();
            out.line(&format!(
                "@C {} {} {} {} {gets} {hits} {scans} {checks}",
                s.eviction_runs, s.evictions, s.expirations, s.file_len
            ));
            last_report = Instant::now();
        }
        if last_scan.elapsed() > Duration::from_millis(1500) {
            for item in db.iter() {
                let (k, v) = item.unwrap_or_else(|e| env.fail(format!("iter: {e}")));
                let Some((w, i)) = decode_key(&k) else {
                    env.fail(format!("iter: a key that nobody writes: {k:?}"));
                };
                saw(w, i, &v, "iter");
                scanned += 1;
            }
            scans += 1;
            last_scan = Instant::now();
        }
        if !env.read_only && last_check.elapsed() > Duration::from_millis(1000) {
            db.check()
                .unwrap_or_else(|e| env.fail(format!("check of the live store: {e}")));
            checks += 1;
            last_check = Instant::now();
        }
        for _ in 0..200 {
            let w = rng.below(WRITERS as u64) as usize;
            let i = pick_key(&mut rng);
            let got = db
                .get(key_bytes(w, i))
                .unwrap_or_else(|e| env.fail(format!("get writer {w} key {i}: {e}")));
            if let Some(v) = got {
                saw(w, i, &v, "get");
                hits += 1;
            }
            gets += 1;
        }
        // Leave the writers most of the two cores: they make the evictions.
        std::thread::sleep(Duration::from_micros(300));
    }
    let s = db.cache_stats();
    out.line(&format!(
        "@F gets={gets} hits={hits} scans={scans} scanned={scanned} checks={checks} runs={} \
         evictions={} expirations={} file_len={}",
        s.eviction_runs, s.evictions, s.expirations, s.file_len
    ));
    drop(db);
    std::process::exit(0);
}

// ---------------------------------------------------------------------------
// The parent: the model.

/// What may be found for one key.
#[derive(Clone, Debug, Default)]
struct KeyModel {
    /// The last acknowledged write: (version, put?).
    acked: Option<(u64, bool)>,
    /// Puts that were in flight when their writer was killed, newer than
    /// the acknowledged write: each may or may not have landed.
    unacked: Vec<u64>,
}

impl KeyModel {
    /// Whether version `v` may be found for this key.
    fn allows(&self, v: u64) -> Result<(), String> {
        if self.acked == Some((v, true)) || self.unacked.contains(&v) {
            return Ok(());
        }
        match self.acked {
            Some((a, put)) if v < a => Err(format!(
                "version {} is older than the acknowledged {} {} (a stale value came back)",
                fmt_ver(v),
                if put { "put" } else { "remove" },
                fmt_ver(a)
            )),
            _ => Err(format!(
                "version {} was never written (acknowledged {:?}, in flight at kills {:?})",
                fmt_ver(v),
                self.acked.map(|(a, p)| (fmt_ver(a), p)),
                self.unacked.iter().map(|&u| fmt_ver(u)).collect::<Vec<_>>()
            )),
        }
    }
}

#[derive(Default)]
struct WriterModel {
    keys: Vec<KeyModel>,
    /// The announced, not yet acknowledged commit: (key, version, put?).
    pending: Option<Vec<(u64, u64, bool)>>,
    /// The last `@V` line said an eviction is running in this process.
    evicting: bool,
    /// The last intent was marked `@I!`.
    full_intent: bool,
}

#[derive(Default, Debug)]
struct Figures {
    kills: u64,
    kills_blind: u64,
    kills_aimed_eviction: u64,
    kills_aimed_full_write: u64,
    kills_in_open: u64,
    /// The killed process's new file was still there: it died inside an
    /// eviction, before the rename.
    kills_leaving_new_file: u64,
    /// The store file it was on was left MOVING: it died between the
    /// rename's two marks.
    kills_in_rename: u64,
    /// Its last `@V` line said it was evicting (as far as the parent had
    /// read its lines when it killed it).
    kills_while_evicting_by_lines: u64,
    kills_with_write_in_flight: u64,
    writer_starts: u64,
    acked_commits: u64,
    acked_key_writes: u64,
    acked_removes: u64,
    full_intents: u64,
    resumed_keys_checked: u64,
    evictions_started_seen: u64,
    renames_seen: u64,
    max_runs: u64,
    max_evictions: u64,
    max_expirations: u64,
    max_file_len: u64,
    max_new_file_len: u64,
    /// From a child's `@V s` to its `@V r`, as the parent read them.
    evictions_timed: u64,
    eviction_time_total: Duration,
    eviction_time_max: Duration,
    leftovers_seen: u64,
    leftovers_seen_removed: u64,
    readers: BTreeMap<String, u64>,
    /// Per reader, as last reported: gets, hits, scans, live checks, live
    /// checks that reported the hit-count race and were retried.
    reads: [[u64; 4]; READERS],
    writer_finals: Vec<String>,
}

/// How the run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// Writers and readers stop when told.
    Graceful,
    /// Writers killed, readers stop when told.
    WritersKilled,
    /// Everyone killed: the final open recovers after a crash.
    AllKilled,
}

struct Run {
    seed: u64,
    dir: PathBuf,
    path: PathBuf,
    rng: Rng,
    /// The children, in slots: writers first, then readers.
    kids: Kids,
    instances: Vec<u64>,
    models: Vec<WriterModel>,
    fig: Figures,
    last_ack: Instant,
    child_limit: Duration,
    /// Compaction files seen next to the store, not yet seen gone.
    known_leftovers: Vec<String>,
    /// Per child slot: when its running eviction's new file was reported.
    evicting_since: Vec<Option<Instant>>,
}

impl Run {
    fn fail(&mut self, msg: impl Display) -> ! {
        self.kids.kill_all();
        let kept = std::env::temp_dir().join(format!("mapkv-cache-stress-{}", self.seed));
        let _ = std::fs::remove_dir_all(&kept);
        let _ = std::fs::rename(&self.dir, &kept);
        panic!(
            "cache stress failed (MAPKV_SEED={}): {msg}; store directory kept at {}",
            self.seed,
            kept.display()
        );
    }

    fn spawn_writer(&mut self, w: usize) {
        let instance = self.instances[w] + 1;
        self.instances[w] = instance;
        let seed = common::Rng::new(self.seed ^ (w as u64) << 48 ^ instance).next();
        let mode = match self.rng.below(10) {
            0..=5 => "none",
            6..=7 => "async",
            _ => "sync",
        };
        let fraction = [5, 10, 10, 20, 30][self.rng.below(5) as usize];
        let ahead = if self.rng.chance(75) { 1 } else { 0 };
        let envs = self.envs("writer", w, instance, seed, mode, fraction, ahead, false);
        let label = format!("writer {w} (instance {instance})");
        self.kids.spawn(w, instance, label, &envs);
        self.models[w].pending = None;
        self.models[w].evicting = false;
        self.fig.writer_starts += 1;
    }

    fn spawn_reader(&mut self, r: usize) {
        let seed = self.rng.next();
        let envs = self.envs("reader", r, 1, seed, "none", 10, 1, r == 1);
        let label = format!("reader {r}");
        self.kids.spawn(WRITERS + r, 1, label, &envs);
    }

    #[allow(clippy::too_many_arguments)]
    fn envs(
        &self,
        role: &str,
        id: usize,
        instance: u64,
        seed: u64,
        mode: &str,
        fraction: u64,
        ahead: u64,
        read_only: bool,
    ) -> Vec<(String, String)> {
        let mut envs = Spawn {
            role,
            path: &self.path,
            id,
            instance,
            seed,
            mode,
            read_only,
            limit: self.child_limit,
        }
        .envs(ENV);
        envs.push(("MAPKV_CS_FRACTION_PCT".to_string(), fraction.to_string()));
        envs.push(("MAPKV_CS_AHEAD".to_string(), ahead.to_string()));
        envs
    }

    /// Handle one event; stale events of dead instances are still applied
    /// (their lines were written before they died).
    fn handle(&mut self, ev: Ev) {
        let Ev {
            slot,
            instance,
            line,
        } = ev;
        let Some(line) = line else {
            self.on_eof(slot, instance);
            return;
        };
        if line.starts_with("@X") {
            self.fail(format!("child in slot {slot}: {line}"));
        }
        if line.starts_with("@V s") {
            self.fig.evictions_started_seen += 1;
            self.evicting_since[slot] = Some(Instant::now());
            if slot < WRITERS {
                self.models[slot].evicting = true;
            }
            return;
        }
        if line == "@V r" {
            self.fig.renames_seen += 1;
            if let Some(t) = self.evicting_since[slot].take() {
                let d = t.elapsed();
                self.fig.eviction_time_total += d;
                self.fig.eviction_time_max = self.fig.eviction_time_max.max(d);
                self.fig.evictions_timed += 1;
            }
            if slot < WRITERS {
                self.models[slot].evicting = false;
            }
            return;
        }
        if line.starts_with("@F") {
            if let Some(p) = self.kids.current(slot, instance) {
                p.finals = Some(line.clone());
            }
            if slot >= WRITERS {
                for kv in line[3..].split(' ') {
                    if let Some((k, v)) = kv.split_once('=') {
                        if let Ok(v) = v.parse::<u64>() {
                            *self
                                .fig
                                .readers
                                .entry(format!("r{}.{k}", slot - WRITERS))
                                .or_default() += v;
                        }
                    }
                }
            } else {
                self.fig
                    .writer_finals
                    .push(format!("w{slot}: {}", &line[3..]));
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("@C ") {
            let n: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            if let [runs, ev, ex, len, gets, hits, scans, checks] = n[..] {
                self.fig.reads[slot - WRITERS] = [gets, hits, scans, checks];
                self.fig.max_runs = self.fig.max_runs.max(runs);
                self.fig.max_evictions = self.fig.max_evictions.max(ev);
                self.fig.max_expirations = self.fig.max_expirations.max(ex);
                if len > CAP {
                    self.fail(format!(
                        "a reader's handle saw the file at {len} bytes, past the capacity"
                    ));
                }
            }
            return;
        }
        if slot >= WRITERS {
            return;
        }
        let w = slot;
        if let Some(rest) = line.strip_prefix("@R") {
            if let Some(n) = rest.strip_prefix("E ") {
                let _ = n;
                return;
            }
            for kv in rest.split_whitespace() {
                let (i, v) = kv.split_once('=').expect("resume entry");
                let (i, v): (u64, u64) = (i.parse().unwrap(), v.parse().unwrap());
                if let Err(e) = self.models[w].keys[i as usize].allows(v) {
                    self.fail(format!(
                        "writer {w} (instance {instance}) resumed key {i} at {}: {e}",
                        fmt_ver(v)
                    ));
                }
                self.fig.resumed_keys_checked += 1;
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("@I") {
            let (full, rest) = match rest.strip_prefix('!') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let mut ops = Vec::new();
            for kv in rest.split_whitespace() {
                let (i, v) = kv.split_once('=').expect("intent entry");
                let (put, v) = match v.strip_prefix('-') {
                    Some(v) => (false, v),
                    None => (true, v),
                };
                ops.push((i.parse().unwrap(), v.parse().unwrap(), put));
            }
            self.models[w].pending = Some(ops);
            self.models[w].full_intent = full;
            if full {
                self.fig.full_intents += 1;
            }
            return;
        }
        if line == "@A" {
            let Some(ops) = self.models[w].pending.take() else {
                self.fail(format!("writer {w}: an acknowledgement without an intent"));
            };
            for &(i, v, put) in &ops {
                let k = &mut self.models[w].keys[i as usize];
                k.acked = Some((v, put));
                k.unacked.retain(|&u| u > v);
                self.fig.acked_key_writes += 1;
                if !put {
                    self.fig.acked_removes += 1;
                }
            }
            self.fig.acked_commits += 1;
            self.last_ack = Instant::now();
        }
    }

    fn on_eof(&mut self, slot: usize, instance: u64) {
        let Some(p) = self.kids.current(slot, instance) else {
            return;
        };
        p.eof = true;
        if !p.exiting {
            let (status, stderr) = self.kids.reap(slot);
            self.fail(format!(
                "child in slot {slot} (instance {instance}) ended by itself ({:?}):\n{stderr}",
                Some(status)
            ));
        }
        if slot < WRITERS {
            // A commit announced and not acknowledged may have landed.
            if let Some(ops) = self.models[slot].pending.take() {
                self.fig.kills_with_write_in_flight += 1;
                for (i, v, put) in ops {
                    if put {
                        self.models[slot].keys[i as usize].unacked.push(v);
                    }
                }
            }
        }
    }

    /// Handle events until `until` returns true or the time is up.
    fn pump(&mut self, limit: Duration, mut until: impl FnMut(&Run) -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if until(self) {
                return true;
            }
            self.watch_files();
            let now = Instant::now();
            if now >= end {
                return false;
            }
            match self
                .kids
                .rx
                .recv_timeout((end - now).min(Duration::from_millis(5)))
            {
                Ok(ev) => self.handle(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => self.fail(format!("event channel: {e}")),
            }
            if self.last_ack.elapsed() > STALL {
                self.fail(format!(
                    "no writer acknowledged a write for {STALL:?}: a hang"
                ));
            }
        }
    }

    /// The store's file and the new files of evictions never pass the
    /// capacity (no process is ever alone on the store during the run).
    fn watch_files(&mut self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            self.fig.max_file_len = self.fig.max_file_len.max(m.len());
            if m.len() > CAP {
                let l = m.len();
                self.fail(format!(
                    "the store's file is {l} bytes, past the capacity {CAP}"
                ));
            }
        }
        for n in leftovers(&self.path) {
            if let Ok(m) = std::fs::metadata(self.dir.join(&n)) {
                self.fig.max_new_file_len = self.fig.max_new_file_len.max(m.len());
                if m.len() > CAP {
                    self.fail(format!(
                        "an eviction's new file {n} is {} bytes, past the capacity",
                        m.len()
                    ));
                }
            }
        }
    }

    /// SIGKILL writer `w`, handle everything it wrote, and tell what the
    /// kill landed in.
    fn kill_writer(&mut self, w: usize) {
        let pid = self.kids.get(w).child.id();
        let instance = self.kids.get(w).instance;
        let evicting = self.models[w].evicting;
        // The file the store's name points at now: if the victim dies
        // between the rename's two marks, it stays MOVING.
        let before = File::open(&self.path).ok();
        self.kids.kill(w);
        let _ = self.kids.get(w).child.wait();
        self.fig.kills += 1;
        if evicting {
            self.fig.kills_while_evicting_by_lines += 1;
        }
        let mine: Vec<String> = leftovers(&self.path)
            .into_iter()
            .filter(|n| leftover_pid(&self.path, n) == Some(pid))
            .collect();
        if !mine.is_empty() {
            self.fig.kills_leaving_new_file += 1;
            self.fig.leftovers_seen += mine.len() as u64;
            self.known_leftovers.extend(mine);
        }
        if let Some(f) = before {
            let mut m = [0u8; 8];
            if f.read_exact_at(&mut m, MAGIC_OFFSET).is_ok() && &m == MAGIC_MOVING {
                self.fig.kills_in_rename += 1;
            }
        }
        // Its remaining lines, up to its end of output.
        let done = self.pump(EVENT_TIMEOUT, |r| {
            r.kids.procs[w]
                .as_ref()
                .is_some_and(|p| p.instance != instance || p.eof)
        });
        if !done {
            self.fail(format!("writer {w}: no end of output after it was killed"));
        }
    }

    /// Leftovers of killed evictions that are gone now (the next eviction
    /// removes them).
    fn note_removed_leftovers(&mut self) {
        let now = leftovers(&self.path);
        let before = self.known_leftovers.len();
        self.known_leftovers.retain(|n| now.contains(n));
        self.fig.leftovers_seen_removed += (before - self.known_leftovers.len()) as u64;
    }

    /// Aim the coming kill at what `sign` looks for in the writer's lines:
    /// wait up to 1.5 s for it, then spin up to `max_us` µs into it, and
    /// count the kill as `aimed`, or as blind if the sign did not come.
    fn aim(
        &mut self,
        sign: impl FnMut(&Run) -> bool,
        max_us: u64,
        aimed: fn(&mut Figures) -> &mut u64,
    ) {
        if self.pump(Duration::from_millis(1500), sign) {
            *aimed(&mut self.fig) += 1;
            spin(Duration::from_micros(self.rng.below(max_us)));
        } else {
            self.fig.kills_blind += 1;
        }
    }

    /// The kill phase: every 80-300 ms, kill a writer (blind, aimed, or in
    /// its open) and start it again.
    fn kill_loop(&mut self, end: Instant) {
        while Instant::now() < end {
            let pause = Duration::from_millis(80 + self.rng.below(220));
            self.pump(pause, |_| false);
            self.note_removed_leftovers();
            let w = self.rng.below(WRITERS as u64) as usize;
            let instance = self.kids.get(w).instance;
            match self.rng.below(100) {
                0..=29 => {
                    let d = Duration::from_micros(self.rng.below(30_000));
                    self.pump(d, |_| false);
                    self.fig.kills_blind += 1;
                }
                30..=69 => {
                    // Wait for this writer to start an eviction, then kill
                    // it some microseconds to milliseconds into it.
                    self.models[w].evicting = false;
                    self.aim(
                        |r| r.models[w].evicting,
                        8_000,
                        |f| &mut f.kills_aimed_eviction,
                    );
                }
                70..=89 => {
                    // Right after the announcement of a write that finds
                    // the cache (nearly) full.
                    self.models[w].full_intent = false;
                    self.aim(
                        |r| r.models[w].full_intent,
                        1_000,
                        |f| &mut f.kills_aimed_full_write,
                    );
                }
                _ => {
                    // Kill, restart, and kill the new one in its open.
                    self.kill_writer(w);
                    self.spawn_writer(w);
                    spin(Duration::from_micros(self.rng.below(5_000)));
                    self.fig.kills_in_open += 1;
                }
            }
            let _ = instance;
            self.kill_writer(w);
            self.spawn_writer(w);
        }
    }

    /// Stop the children as the ending says; collect their last lines.
    fn finish(&mut self, ending: Ending) {
        for w in 0..WRITERS {
            if ending == Ending::Graceful {
                self.kids.stop(w);
            } else {
                self.kill_writer(w);
            }
        }
        for r in 0..READERS {
            let slot = WRITERS + r;
            if ending == Ending::AllKilled {
                self.kids.kill(slot);
            } else {
                self.kids.stop(slot);
            }
        }
        let done = self.pump(EVENT_TIMEOUT, |r| {
            r.kids.procs.iter().flatten().all(|p| p.eof)
        });
        if !done {
            self.fail("children did not end");
        }
        for slot in 0..WRITERS + READERS {
            let graceful = match ending {
                Ending::Graceful => true,
                Ending::WritersKilled => slot >= WRITERS,
                Ending::AllKilled => false,
            };
            let (status, stderr) = self.kids.reap(slot);
            let finals = self.kids.get(slot).finals.clone();
            if graceful && (!status.success() || finals.is_none()) {
                self.fail(format!(
                    "child in slot {slot} did not end well ({status:?}, last line {finals:?}):\n{stderr}"
                ));
            }
        }
    }

    /// The store, opened alone after everyone ended: check it against the
    /// acknowledgements.
    fn verify(&mut self) -> (OpenKind, u64, u64, u64) {
        let db = Options::new()
            .evict_ahead(false)
            .open(&self.path)
            .unwrap_or_else(|e| self.fail(format!("final open: {e}")));
        let opened = db.stats().opened;
        let left = leftovers(&self.path);
        if !left.is_empty() {
            self.fail(format!(
                "compaction files left after the final open (alone): {left:?}"
            ));
        }
        let report = db
            .check()
            .unwrap_or_else(|e| self.fail(format!("final check: {e}")));
        let cs = db.cache_stats();
        let on_disk = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if cs.capacity != CAP {
            self.fail(format!("the capacity is {} after the run", cs.capacity));
        }
        if cs.file_len > CAP || on_disk > CAP {
            self.fail(format!(
                "after the final open ({opened:?}) the file is {} bytes ({on_disk} on disk), past \
                 the capacity {CAP}; log tail {}",
                cs.file_len, cs.used_bytes
            ));
        }
        let mut present = 0u64;
        for item in db.iter() {
            let (k, v) = item.unwrap_or_else(|e| self.fail(format!("final iter: {e}")));
            let Some((w, i)) = decode_key(&k) else {
                self.fail(format!("final iter: a key nobody wrote: {k:?}"));
            };
            let (kk, ver) = check_self(&v)
                .unwrap_or_else(|e| self.fail(format!("final: writer {w} key {i}: {e}")));
            if kk != key_id(w, i) {
                self.fail(format!(
                    "final: writer {w} key {i} holds a value of key {kk:#x}"
                ));
            }
            if let Err(e) = self.models[w].keys[i as usize].allows(ver) {
                self.fail(format!("final: writer {w} key {i}: {e}"));
            }
            present += 1;
        }
        // Entries the scan found may have expired since (`len` leaves
        // those out), but nothing writes now, so they are all still
        // stored: live and expired, as stats counts them, hold at least
        // what the scan found, and the live ones no more.
        let st = db.stats();
        if present > st.keys + st.expired_keys || db.len() > present {
            self.fail(format!(
                "final: iter found {present} keys, stats says {} live and {} expired, len {}",
                st.keys,
                st.expired_keys,
                db.len()
            ));
        }
        // Point reads agree with the scan, for every key.
        for w in 0..WRITERS {
            for i in 0..KEYS {
                if let Some(v) = db.get(key_bytes(w, i)).unwrap() {
                    let (kk, ver) = check_self(&v).unwrap();
                    assert_eq!(kk, key_id(w, i));
                    if let Err(e) = self.models[w].keys[i as usize].allows(ver) {
                        self.fail(format!("final get: writer {w} key {i}: {e}"));
                    }
                }
            }
        }
        // Write on: evictions go on within the capacity.
        let mut n = 0u64;
        while db.cache_stats().eviction_runs < 2 {
            let k = (u64::MAX - n).to_be_bytes();
            db.insert(k, self_checking(u64::MAX - n, 0, 200))
                .unwrap_or_else(|e| self.fail(format!("write after the run: {e}")));
            n += 1;
            if n > 100_000 {
                self.fail("no eviction after 100,000 writes after the run");
            }
        }
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len > CAP || db.cache_stats().file_len > CAP {
            self.fail(format!("after writing on, the file is {len} bytes"));
        }
        db.check()
            .unwrap_or_else(|e| self.fail(format!("check after writing on: {e}")));
        db.close()
            .unwrap_or_else(|e| self.fail(format!("close: {e}")));
        let db = Db::open(&self.path).unwrap_or_else(|e| self.fail(format!("reopen: {e}")));
        if db.stats().opened != OpenKind::Clean {
            let o = db.stats().opened;
            self.fail(format!("reopen after a close: {o:?}"));
        }
        db.check()
            .unwrap_or_else(|e| self.fail(format!("check after reopen: {e}")));
        (opened, report.live_keys, present, cs.file_len)
    }
}

/// Busy-wait: a sleep on this machine can take a millisecond or more.
fn spin(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

#[test]
fn cache_stress() {
    let seed = common::seed("cache_stress");
    let budget = Duration::from_secs(env_u64("MAPKV_CACHE_STRESS_SECS").unwrap_or(DEFAULT_SECS));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("test.mapkv");
    Options::new()
        .capacity(CAP)
        .open(&path)
        .expect("create the cache")
        .close()
        .expect("close the new cache");
    let mut run = Run {
        seed,
        dir: dir.clone(),
        path,
        rng: Rng::new(seed),
        kids: Kids::new(CHILD_TEST, WRITERS + READERS),
        instances: vec![0; WRITERS],
        models: (0..WRITERS)
            .map(|_| WriterModel {
                keys: vec![KeyModel::default(); KEYS as usize],
                ..WriterModel::default()
            })
            .collect(),
        fig: Figures::default(),
        last_ack: Instant::now(),
        child_limit: budget + Duration::from_secs(300),
        known_leftovers: Vec::new(),
        evicting_since: vec![None; WRITERS + READERS],
    };
    let ending = match run.rng.below(3) {
        0 => Ending::Graceful,
        1 => Ending::WritersKilled,
        _ => Ending::AllKilled,
    };
    let began = Instant::now();
    for r in 0..READERS {
        run.spawn_reader(r);
    }
    for w in 0..WRITERS {
        run.spawn_writer(w);
    }
    run.kill_loop(began + budget);
    let kill_phase = began.elapsed();
    run.note_removed_leftovers();
    run.finish(ending);
    let (opened, live, present, file_len) = run.verify();
    let f = &run.fig;
    // Reads as last reported (`@C`, every 0.2 s; a killed reader's
    // last ones are lost).
    let readers: Vec<String> = f
        .reads
        .iter()
        .enumerate()
        .map(|(r, [gets, hits, scans, checks])| {
            format!(
                "reader {r} ({}): {gets} gets ({hits} found), {scans} full scans, {checks} live \
                 checks",
                if r == 1 { "read-only" } else { "read-write" }
            )
        })
        .collect();
    let readers = readers.join("; ");
    println!(
        "cache stress: {kills} kills ({blind} blind, {aimed_ev} aimed at an eviction, {aimed_w} \
         at a write that found the cache full, {open} in a new writer's open); kills during an \
         eviction: {in_ev} ({new_file} left its new file behind, i.e. died between creating it \
         and the rename; {rename} left the store MOVING, i.e. died inside the rename; \
         {by_lines} were evicting by their last line), {flight} with a write in flight; \
         {starts} writer processes; {acked} acked commits ({keys} key writes, {removes} \
         removes), {full} writes announced with the cache full, {resumed} keys checked at \
         restarts; evictions: {runs} runs ({evicted} entries, {expired} expired entries \
         dropped) by the readers' count, {started} started and {renames} renamed as seen by \
         the hooks (new file to rename: {ev_avg:?} on average, {ev_max:?} at most); leftovers: \
         {left} seen after kills, {removed} seen removed during the run; \
         file at most {maxlen} bytes, new files at most {maxnew}; {readers}; \
         writers' last lines: {wf:?}; ending {ending:?}, final open {opened:?}, {live} live \
         keys ({present} checked), file {file_len} bytes; {kill_phase:.1?} of kills, \
         {total:.1?} in all, MAPKV_SEED={seed}",
        kills = f.kills,
        blind = f.kills_blind,
        aimed_ev = f.kills_aimed_eviction,
        aimed_w = f.kills_aimed_full_write,
        open = f.kills_in_open,
        in_ev = f.kills_leaving_new_file + f.kills_in_rename,
        new_file = f.kills_leaving_new_file,
        rename = f.kills_in_rename,
        by_lines = f.kills_while_evicting_by_lines,
        flight = f.kills_with_write_in_flight,
        starts = f.writer_starts,
        acked = f.acked_commits,
        keys = f.acked_key_writes,
        removes = f.acked_removes,
        full = f.full_intents,
        resumed = f.resumed_keys_checked,
        runs = f.max_runs,
        evicted = f.max_evictions,
        expired = f.max_expirations,
        started = f.evictions_started_seen,
        renames = f.renames_seen,
        ev_avg = f
            .eviction_time_total
            .checked_div(f.evictions_timed.max(1) as u32)
            .unwrap_or_default(),
        ev_max = f.eviction_time_max,
        left = f.leftovers_seen,
        removed = f.leftovers_seen_removed,
        maxlen = f.max_file_len,
        maxnew = f.max_new_file_len,
        wf = f.writer_finals,
        total = began.elapsed(),
    );
    if budget >= Duration::from_secs(5) {
        assert!(f.kills >= 10, "only {} kills (MAPKV_SEED={seed})", f.kills);
        assert!(
            f.acked_commits >= 1_000,
            "only {} acked commits (MAPKV_SEED={seed})",
            f.acked_commits
        );
        assert!(
            f.max_runs >= 20 && f.renames_seen >= 20,
            "too few evictions: {} runs counted, {} renames seen (MAPKV_SEED={seed})",
            f.max_runs,
            f.renames_seen
        );
        assert!(
            f.kills_leaving_new_file + f.kills_in_rename >= 1,
            "no kill landed inside an eviction (MAPKV_SEED={seed})"
        );
        assert!(
            f.max_expirations >= 1,
            "no expired entry was dropped (MAPKV_SEED={seed})"
        );
    }
    drop(tmp);
}
