//! Many processes on one store, read-write at once.
//!
//! `multiprocess_stress`: three writer processes and two reader processes
//! share one file for a bounded time. Every value says which key, writer
//! and per-key sequence number it belongs to, carries a payload of varying
//! length and a checksum, so a torn, stale or misplaced value is detected.
//!
//! * Each writer owns its keys (`w{id}:{k}`, `w{id}:pair:a|b`, and a few
//!   scratch keys `w{id}:x{j}` that it also removes), bumps a key's
//!   sequence on every write, and commits the pair in one batch with equal
//!   sequences. It announces every commit on stdout before it starts (an
//!   intent line) and acknowledges it after it returned (one direct write
//!   each), so the parent knows what was acknowledged even if the writer is
//!   killed, and which commit was in flight when it was.
//! * The parent SIGKILLs writers at random moments (blind, just after an
//!   intent line so that most land inside the commit, and during the
//!   restarted writer's own open) and restarts the same writer id. The new
//!   writer resumes every key from the store; the parent checks what it
//!   found against the acknowledgements: every key as acknowledged, or as
//!   the write in flight left it, and that write all-or-nothing.
//! * Readers (one read-write handle, one read-only handle) read random keys
//!   in a loop: every value must be a whole value of its key; per key the
//!   sequence never goes backwards; `get_many` of a pair sees equal
//!   sequences; `commit_seq` never goes backwards; `wait_for_change` wakes
//!   up on a commit while writers run (and never returns early without
//!   one); the read-write reader also runs `check` on the live store.
//!   A reader fails (exits non-zero) with a message naming the key, what it
//!   saw and what it had seen before.
//!   Readers also follow the change feed (`changes_after`): commit numbers
//!   go up by one, every value in it is exact, a pair only moves whole, and
//!   per key the sequence only goes up; a position from before a compaction
//!   must be refused as from another file (counted as a move seen).
//! * A compactor process runs `compact()` in a loop with short random
//!   pauses and reports each compaction (`CompactReport`, and the inode the
//!   store's name pointed at before and after). While one copies, a second
//!   handle of the same process tries `compact()` too and must get
//!   `Error::Locked`. After each one it reads every key through its own,
//!   moved handle (values exact, sequences never behind what it read
//!   before, pairs equal). The parent SIGKILLs it at random moments, mostly
//!   just after it announced a compaction or its copy's end (so the kill
//!   lands inside it: in the copy, the catch-up, or the writers' pause),
//!   and restarts it; some instances kill themselves right at the rename of
//!   one compaction (a tripwire), mostly with the old file still marked
//!   MOVING and its writer lock held, which the next writer must settle.
//!   The parent tracks which file the store's name points at (a compaction
//!   killed after its rename moved the store too), checks that a finished
//!   compaction left its old file marked MOVED, and that the hidden new
//!   file (`.NAME.mapkv-compact-*`) of a killed compactor is gone once the
//!   next compaction finished. Writers report (`@M`) when a position they
//!   took says the store moved.
//! * At the end (readers stopped, then the compactor, gracefully or killed
//!   mid-compaction, then the writers: gracefully, or some or all of them
//!   killed, chosen per run) the parent opens the store, runs `check`, and
//!   compares every key with the acknowledgements: a key holds its last
//!   acknowledged sequence, or one more if that write was in flight when its
//!   writer was killed; pairs are equal; `len`, `iter` and `check` agree;
//!   its open, alone on the store, left no compaction leftover next to it;
//!   the store's name is on the file the last move it knows of left it on,
//!   and no reader saw more moves than there were. Then it closes and
//!   reopens once more. With a run of 5 s or more it also requires at least
//!   one compaction, one compactor kill by the parent, and a move seen by
//!   every reader and by some writer.
//!
//! `read_only_handle_follows_writer_process`: read-only handles in child
//! processes, one opened before another process writes anything and one
//! opened midway, follow that writer (file growth included) without
//! reopening, and see its last commit.
//!
//! All children are this test binary re-executed (`mp_child`, a no-op
//! unless `MAPKV_MP_ROLE` is set). `MAPKV_MP_SECS` sets the length of the
//! stress run (default 10 s); `MAPKV_MP_COMPACT=0` runs it without the
//! compactor (the log then grows by about 5 MB a second, as nothing
//! reclaims overwritten records); `MAPKV_MP_PIN=1` holds the file of every
//! kept log position open (see `Pinned`); `MAPKV_SEED` replays the
//! parent's choices (kill timing is not reproducible). A failure names the
//! seed and keeps the store file for a post-mortem.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::fs::File;
use std::io::Write;
use std::ops::Deref;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{stop_on_eof, ChildVars, Ev, Kids, Out, Spawn};
use common::Rng;
use mapkv::testing::layout;
use mapkv::{Change, CompactReport, Db, Error, LogPosition, OpenKind, Options};

/// Writer processes in the stress test.
const WRITERS: usize = 3;
/// Reader processes in the stress test: reader 0 has a read-write handle,
/// reader 1 a read-only one.
const READERS: usize = 2;
/// The compactor's slot, after the writers' and the readers'.
const COMPACTOR: usize = WRITERS + READERS;
/// Child slots of the stress test.
const SLOTS: usize = WRITERS + READERS + 1;
/// Sequenced keys per writer: `w{id}:0` .. `w{id}:199`.
const KEYS: usize = 200;
/// Index of `w{id}:pair:a` and `w{id}:pair:b`, always written together.
const PAIR_A: usize = KEYS;
const PAIR_B: usize = KEYS + 1;
/// Scratch keys per writer (`w{id}:x{j}`), inserted and removed.
const SCRATCH: usize = 8;
/// Every key a writer owns: sequenced, pair, scratch.
const PER_WRITER: usize = KEYS + 2 + SCRATCH;
/// Default length of the stress run.
const DEFAULT_SECS: u64 = 10;
/// The name of the child's test function (passed to `--exact`).
const CHILD_TEST: &str = "mp_child";
/// The prefix of the variables that tell a child what to do.
const ENV: &str = "MAPKV_MP_";
/// How long a reader's `wait_for_change` may wait for a commit while
/// writers run before that counts as a lost wake-up.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Readers stop checking the live store once its log is this large: a
/// check holds writers off for O(log), which in a long soak without the
/// compactor could outlast `WAIT_TIMEOUT`.
const LIVE_CHECK_MAX: u64 = 256 << 20;
/// How long the parent waits for a child's output (or exit) before it
/// declares it hung.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many commits per `changes_after` call of a reader.
const FEED_MAX: usize = 256;
/// Writers check whether the store moved every this many commits.
const MOVE_CHECK_EVERY: u64 = 16;
/// The reason `changes_after` gives for a position from before a move.
const MOVED_REASON: &str = "another file";

/// The read-only test: its writer's id in values, its keys, its commits.
const RO_WRITER: usize = 9;
const RO_COUNTER: &[u8] = b"ro:n";
const RO_BLOBS: u64 = 48;
const RO_COMMITS: u64 = 1500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

// ---------------------------------------------------------------------------
// Keys and self-checking values.

/// The name of key `i` of writer `w`.
fn key_name(w: usize, i: usize) -> Vec<u8> {
    match i {
        PAIR_A => format!("w{w}:pair:a"),
        PAIR_B => format!("w{w}:pair:b"),
        i if i < KEYS => format!("w{w}:{i}"),
        i => format!("w{w}:x{}", i - KEYS - 2),
    }
    .into_bytes()
}

fn ro_blob(b: u64) -> Vec<u8> {
    format!("ro:blob:{b}").into_bytes()
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SplitMix64 finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// "MPV1", little-endian.
const VALUE_MAGIC: u32 = 0x3156_504d;
/// magic (4), key hash (8), writer (4), sequence (8), payload length (4).
const VALUE_HEAD: usize = 28;

/// Payload length of the value of a key (by hash) at a sequence: mostly
/// 0..120 bytes, one in 500 4..32 KiB (so the file grows while everyone
/// maps it, without filling the disk in a soak).
fn payload_len(key_hash: u64, seq: u64) -> usize {
    let r = mix64(key_hash ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    if r % 500 == 0 {
        4096 + (r >> 40) as usize % (28 << 10)
    } else {
        (r >> 40) as usize % 121
    }
}

/// The value `writer` writes for `key` at `seq`: a pure function of the
/// three, so anyone can tell whether a value is exactly what was written.
fn make_value(key: &[u8], writer: usize, seq: u64) -> Vec<u8> {
    make_sized(key, writer, seq, payload_len(fnv1a(key), seq))
}

fn make_sized(key: &[u8], writer: usize, seq: u64, payload: usize) -> Vec<u8> {
    let kh = fnv1a(key);
    let mut v = Vec::with_capacity(VALUE_HEAD + payload + 8);
    v.extend_from_slice(&VALUE_MAGIC.to_le_bytes());
    v.extend_from_slice(&kh.to_le_bytes());
    v.extend_from_slice(&(writer as u32).to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&(payload as u32).to_le_bytes());
    let end = VALUE_HEAD + payload;
    let mut x = kh ^ seq.rotate_left(32) ^ writer as u64;
    while v.len() < end {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let word = mix64(x).to_le_bytes();
        let take = (end - v.len()).min(8);
        v.extend_from_slice(&word[..take]);
    }
    let sum = mix64(fnv1a(&v));
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

/// What a value says about itself, once its checksum holds.
struct Decoded {
    key_hash: u64,
    writer: usize,
    seq: u64,
    payload: usize,
}

fn decode(v: &[u8]) -> Result<Decoded, String> {
    if v.len() < VALUE_HEAD + 8 {
        return Err(format!(
            "{} bytes, too short to be a value of this test",
            v.len()
        ));
    }
    let (body, sum) = v.split_at(v.len() - 8);
    if u64::from_le_bytes(sum.try_into().unwrap()) != mix64(fnv1a(body)) {
        return Err(format!(
            "{} bytes that fail their checksum (a torn or damaged value)",
            v.len()
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes(v[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(v[o..o + 8].try_into().unwrap());
    if u32_at(0) != VALUE_MAGIC {
        return Err(format!("{} bytes without the value magic", v.len()));
    }
    let payload = u32_at(24) as usize;
    if payload != body.len() - VALUE_HEAD {
        return Err(format!(
            "its length field says {payload} payload bytes, it has {}",
            body.len() - VALUE_HEAD
        ));
    }
    Ok(Decoded {
        key_hash: u64_at(4),
        writer: u32_at(12) as usize,
        seq: u64_at(16),
        payload,
    })
}

/// Check that `v` is exactly a value `writer` wrote for `key`; returns its
/// sequence number.
fn check_value(key: &[u8], writer: usize, v: &[u8]) -> Result<u64, String> {
    let d = decode(v)?;
    if d.key_hash != fnv1a(key) || d.writer != writer {
        return Err(format!(
            "it holds {} (writer {}, seq {}): a misplaced value",
            owner(d.key_hash),
            d.writer,
            d.seq
        ));
    }
    if v != make_sized(key, writer, d.seq, d.payload) {
        return Err(format!(
            "seq {}: its checksum holds but its bytes differ from what was written",
            d.seq
        ));
    }
    Ok(d.seq)
}

/// Which key of the test hashes to `h` (for messages).
fn owner(h: u64) -> String {
    let mut keys: Vec<Vec<u8>> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |i| key_name(w, i)))
        .collect();
    keys.push(RO_COUNTER.to_vec());
    keys.extend((0..RO_BLOBS).map(ro_blob));
    match keys.iter().find(|k| fnv1a(k) == h) {
        Some(k) => format!("the value of key {}", show(k)),
        None => format!("the value of an unknown key (hash {h:#x})"),
    }
}

fn fmt_seq(v: Option<u64>) -> String {
    match v {
        None => "absent".to_string(),
        Some(s) => format!("seq {s}"),
    }
}

/// `i=seq` or `i=-` (removed), comma-separated: the writers' line format.
fn fmt_writes(writes: impl IntoIterator<Item = (usize, Option<u64>)>) -> String {
    let parts: Vec<String> = writes
        .into_iter()
        .map(|(i, v)| match v {
            Some(s) => format!("{i}={s}"),
            None => format!("{i}=-"),
        })
        .collect();
    parts.join(",")
}

fn parse_writes(s: &str) -> Result<Vec<(usize, Option<u64>)>, String> {
    s.split(',')
        .map(|w| {
            let (i, v) = w
                .split_once('=')
                .ok_or_else(|| format!("bad write {w:?}"))?;
            let i: usize = i.parse().map_err(|_| format!("bad key index {w:?}"))?;
            if i >= PER_WRITER {
                return Err(format!("key index {i} out of range"));
            }
            let v = match v {
                "-" => None,
                s => Some(s.parse().map_err(|_| format!("bad seq {w:?}"))?),
            };
            Ok((i, v))
        })
        .collect()
}

/// `n a=1 b=2` into `n` and a map.
fn parse_numbered(s: &str) -> Result<(u64, BTreeMap<String, u64>), String> {
    let (n, rest) = s.split_once(' ').unwrap_or((s, ""));
    let n = n.parse().map_err(|_| format!("bad number in {s:?}"))?;
    Ok((n, parse_counts(rest)))
}

/// A field of a parsed line.
fn field(counts: &BTreeMap<String, u64>, name: &str) -> Result<u64, String> {
    counts
        .get(name)
        .copied()
        .ok_or_else(|| format!("no {name}= in the line"))
}

/// `a=1 b=2` into a map.
fn parse_counts(s: &str) -> BTreeMap<String, u64> {
    s.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The inode the store's name points at.
fn inode_of(path: &Path) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

/// The hidden files next to the store that compactions which did not
/// finish leave: `.NAME.mapkv-compact-PID-R`, and
/// `..NAME.mapkv-compact-PID-R.mapkv-new.*` while that one is being
/// created; with the compactor's pid, if the name gives it.
fn leftovers(path: &Path) -> Vec<(String, Option<u32>)> {
    let name = path.file_name().expect("store name").to_string_lossy();
    let prefix = format!(".{name}.mapkv-compact-");
    other_files(path)
        .into_iter()
        .filter_map(|n| {
            let rest = n
                .strip_prefix(&prefix)
                .or_else(|| n.strip_prefix('.')?.strip_prefix(&prefix))?;
            let pid = rest.split('-').next().and_then(|p| p.parse().ok());
            Some((n, pid))
        })
        .collect()
}

/// Where the control block's magic is, and its values while a compaction
/// renames its new file over the store and once it has (docs/FORMAT.md).
const MAGIC_OFFSET: u64 = layout::CONTROL_OFFSET + layout::control::MAGIC as u64;
const MAGIC_MOVING: &[u8; 8] = &layout::MOVING_MAGIC;
const MAGIC_MOVED: &[u8; 8] = &layout::MOVED_MAGIC;

/// The control block's magic of an open store file.
fn magic_of(f: &File) -> std::io::Result<[u8; 8]> {
    let mut m = [0u8; 8];
    f.read_exact_at(&mut m, MAGIC_OFFSET)?;
    Ok(m)
}

/// Every name in the store's directory but the store's own.
fn other_files(path: &Path) -> Vec<String> {
    let name = path.file_name().expect("store name");
    let dir = path.parent().expect("store directory");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name() != name)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// The children.

/// Every child process: a writer or reader of either test. Returns at once
/// in a normal test run.
#[test]
fn mp_child() {
    let Some(vars) = ChildVars::from_env(ENV) else {
        return;
    };
    let env = ChildEnv {
        pin: std::env::var("MAPKV_MP_PIN").is_ok_and(|v| v == "1"),
        vars,
    };
    match env.role.as_str() {
        "writer" => writer_main(&env),
        "reader" => reader_main(&env),
        "compactor" => compactor_main(&env),
        "ro_writer" => ro_writer_main(&env),
        "ro_reader" => ro_reader_main(&env),
        other => panic!("child: unknown MAPKV_MP_ROLE {other:?}"),
    }
}

/// What a child learns from its environment.
struct ChildEnv {
    vars: ChildVars,
    /// Hold the file of every log position kept (`Pinned`), with
    /// `MAPKV_MP_PIN=1`.
    pin: bool,
}

impl Deref for ChildEnv {
    type Target = ChildVars;
    fn deref(&self) -> &ChildVars {
        &self.vars
    }
}

impl ChildEnv {
    fn fail(&self, msg: impl Display) -> ! {
        let what = match (self.role.as_str(), self.read_only) {
            ("writer" | "ro_writer" | "compactor", _) => format!("durability {:?}", self.mode),
            (_, true) => "read-only handle".to_string(),
            (_, false) => "read-write handle".to_string(),
        };
        panic!(
            "{} {} (instance {}, MAPKV_MP_SEED={}, {what}): {msg}",
            self.role, self.id, self.instance, self.seed,
        );
    }
}

/// A log position kept for a later `changes_after`, optionally with its
/// file held open.
///
/// This test found that `LogPosition` named its file by device and inode
/// number only, and the filesystem gives the number of a deleted file to
/// the next new one: once a compaction moved the store on and every process
/// let go of the old file, a later compaction's new file often got the old
/// number, and a position from the old file then passed for one of the new
/// file (refused for the wrong reason, or, at a commit boundary, read from
/// the new file). Positions now also carry the file's random nonce from its
/// meta, so the readers' checks that stale positions are refused "from
/// another file" hold without help. `MAPKV_MP_PIN=1` holds each position's
/// file open anyway (an iterator made before and one after taking it keep
/// the file, and its number, alive), as the test did before the fix.
struct Pinned<'a> {
    pos: LogPosition,
    _pin: Option<(mapkv::Iter<'a>, mapkv::Iter<'a>)>,
}

impl<'a> Pinned<'a> {
    fn new(env: &ChildEnv, db: &'a Db) -> Pinned<'a> {
        let before = env.pin.then(|| db.iter());
        let pos = db.log_position();
        let after = env.pin.then(|| db.iter());
        Pinned {
            pos,
            _pin: before.zip(after),
        }
    }
}

/// A stress-test writer: resumes every key from the store, then commits
/// until told to stop. Protocol lines: `@O kind` once open; `@R i=seq,...`
/// what it resumed from (every key); `@I i=seq,...` before a commit; `@A`
/// after it returned; `@M` when a log position it took earlier says the
/// store moved to a new file since (checked between commits); `@F counts`
/// at a graceful end.
fn writer_main(env: &ChildEnv) {
    let id = env.id;
    let out = Out::new();
    let stop = stop_on_eof();
    let db = Options::new()
        .durability(env.mode)
        .open(&env.path)
        .unwrap_or_else(|e| env.fail(format!("open: {e}")));
    out.line(&format!("@O {:?}", db.stats().opened));
    let names: Vec<Vec<u8>> = (0..PER_WRITER).map(|i| key_name(id, i)).collect();

    // Resume: the store says where each key's sequence is.
    let mut state: Vec<Option<u64>> = Vec::with_capacity(PER_WRITER);
    for name in &names {
        let v = db
            .get(name)
            .unwrap_or_else(|e| env.fail(format!("resume: get {}: {e}", show(name))));
        state.push(v.map(|v| {
            check_value(name, id, &v)
                .unwrap_or_else(|e| env.fail(format!("resume: key {}: {e}", show(name))))
        }));
    }
    if state[PAIR_A] != state[PAIR_B] {
        env.fail(format!(
            "resume: the pair is torn: a {}, b {}",
            fmt_seq(state[PAIR_A]),
            fmt_seq(state[PAIR_B])
        ));
    }
    out.line(&format!(
        "@R {}",
        fmt_writes(state.iter().copied().enumerate())
    ));

    let mut rng = Rng::new(env.seed);
    // Scratch values need no order, only to be told apart.
    let mut scratch_seq = env.instance << 32;
    let (mut commits, mut readbacks, mut moves) = (0u64, 0u64, 0u64);
    let mut writes: Vec<(usize, Option<u64>)> = Vec::new();
    let mut pos = Pinned::new(env, &db);
    let started = Instant::now();
    let next = |s: Option<u64>| Some(s.map_or(1, |s| s + 1));
    while !stop.load(Ordering::Acquire) {
        if started.elapsed() > env.limit {
            env.fail(format!("not stopped within {:?}", env.limit));
        }
        let r = rng.below(100);
        if r < 8 {
            // Read back a key: nobody else writes it.
            let i = rng.below(PER_WRITER as u64) as usize;
            let got = db
                .get(&names[i])
                .unwrap_or_else(|e| env.fail(format!("get {}: {e}", show(&names[i]))));
            let want = state[i].map(|s| make_value(&names[i], id, s));
            if got.as_deref() != want.as_deref() {
                let found = match &got {
                    None => "absent".to_string(),
                    Some(v) => match check_value(&names[i], id, v) {
                        Ok(s) => format!("seq {s}"),
                        Err(e) => e,
                    },
                };
                env.fail(format!(
                    "read back key {}: found {found}, this writer last committed {}",
                    show(&names[i]),
                    fmt_seq(state[i])
                ));
            }
            readbacks += 1;
            continue;
        }
        writes.clear();
        let mut scratch_op = r >= 88;
        if r < 60 {
            let i = rng.below(KEYS as u64) as usize;
            writes.push((i, next(state[i])));
        } else if r < 75 {
            let s = next(state[PAIR_A]);
            writes.push((PAIR_A, s));
            writes.push((PAIR_B, s));
        } else if r < 88 {
            let n = 2 + rng.below(15) as usize;
            while writes.len() < n {
                let i = rng.below(KEYS as u64) as usize;
                if !writes.iter().any(|&(j, _)| j == i) {
                    writes.push((i, next(state[i])));
                }
            }
            scratch_op = rng.chance(30);
        }
        if scratch_op {
            let j = KEYS + 2 + rng.below(SCRATCH as u64) as usize;
            if rng.chance(40) {
                writes.push((j, None));
            } else {
                scratch_seq += 1;
                writes.push((j, Some(scratch_seq)));
            }
        }

        out.line(&format!("@I {}", fmt_writes(writes.iter().copied())));
        if let [(i, v)] = writes[..] {
            match v {
                Some(s) => db
                    .insert(&names[i], make_value(&names[i], id, s))
                    .unwrap_or_else(|e| env.fail(format!("insert {}: {e}", show(&names[i])))),
                None => {
                    let was = db
                        .remove(&names[i])
                        .unwrap_or_else(|e| env.fail(format!("remove {}: {e}", show(&names[i]))));
                    if was != state[i].is_some() {
                        env.fail(format!(
                            "remove {} returned {was}, but the key was {}",
                            show(&names[i]),
                            fmt_seq(state[i])
                        ));
                    }
                }
            }
        } else {
            let mut b = db.batch();
            for &(i, v) in &writes {
                match v {
                    Some(s) => b.insert(&names[i], make_value(&names[i], id, s)),
                    None => b.remove(&names[i]),
                };
            }
            b.commit()
                .unwrap_or_else(|e| env.fail(format!("batch commit: {e}")));
        }
        out.line("@A");
        for &(i, v) in &writes {
            state[i] = v;
        }
        commits += 1;
        if commits % MOVE_CHECK_EVERY == 0 {
            // Has a compaction moved the store (and this handle) since?
            match db.changes_after(pos.pos, 1) {
                Ok(_) => {}
                Err(Error::BadPosition { reason, .. }) if reason.contains(MOVED_REASON) => {
                    moves += 1;
                    out.line("@M");
                }
                Err(e) => env.fail(format!(
                    "changes_after({:?}), a position this handle gave {MOVE_CHECK_EVERY} \
                     commits ago: {e}",
                    pos.pos
                )),
            }
            pos = Pinned::new(env, &db);
        }
        if rng.chance(25) {
            // Think time: fewer bytes per second, and more lock hand-overs.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out.line(&format!(
        "@F commits={commits} readbacks={readbacks} moves={moves}"
    ));
    drop(pos);
    db.close()
        .unwrap_or_else(|e| env.fail(format!("close: {e}")));
}

/// A stress-test reader (or the compactor's reads), with what it has seen
/// so far.
struct Reader<'a> {
    env: &'a ChildEnv,
    db: &'a Db,
    names: Vec<Vec<Vec<u8>>>,
    /// Which writer and key index a key name is.
    index: HashMap<Vec<u8>, (usize, usize)>,
    /// Per writer and sequenced key: the highest sequence seen (0: absent).
    seen: Vec<Vec<u64>>,
    counts: BTreeMap<&'static str, u64>,
    /// Where the change feed goes on from (from its first read on).
    pos: Option<Pinned<'a>>,
    /// The last commit the feed gave, and whether the store moved since.
    feed_last: Option<u64>,
    feed_moved: bool,
    /// Per writer and sequenced key: the highest sequence in the feed.
    feed_seen: Vec<Vec<u64>>,
}

impl<'a> Reader<'a> {
    fn new(env: &'a ChildEnv, db: &'a Db) -> Reader<'a> {
        let names: Vec<Vec<Vec<u8>>> = (0..WRITERS)
            .map(|w| (0..PER_WRITER).map(|i| key_name(w, i)).collect())
            .collect();
        let index = names
            .iter()
            .enumerate()
            .flat_map(|(w, ks)| ks.iter().enumerate().map(move |(i, k)| (k.clone(), (w, i))))
            .collect();
        Reader {
            env,
            pos: None,
            db,
            names,
            index,
            seen: vec![vec![0; KEYS + 2]; WRITERS],
            counts: BTreeMap::new(),
            feed_last: None,
            feed_moved: false,
            feed_seen: vec![vec![0; KEYS + 2]; WRITERS],
        }
    }

    fn count(&mut self, what: &'static str) {
        self.count_n(what, 1);
    }

    fn count_n(&mut self, what: &'static str, n: u64) {
        *self.counts.entry(what).or_default() += n;
    }

    /// Read the change feed on from where it stopped: commit numbers go up
    /// by one (past a move: up), every value is exact, a pair moves whole,
    /// a sequenced key only goes up and is never removed. A position from
    /// before a move is refused: then start again from the new file's end.
    fn feed(&mut self) {
        let (env, db) = (self.env, self.db);
        let pos = self.pos.get_or_insert_with(|| Pinned::new(env, db)).pos;
        let (commits, next) = match db.changes_after(pos, FEED_MAX) {
            Ok(x) => x,
            Err(Error::BadPosition { reason, .. }) if reason.contains(MOVED_REASON) => {
                self.count("moves");
                self.pos = Some(Pinned::new(env, db));
                self.feed_moved = true;
                return;
            }
            Err(e) => env.fail(format!(
                "changes_after({pos:?}), the position the last call returned: {e}"
            )),
        };
        for c in &commits {
            if let Some(last) = self.feed_last {
                let ok = if self.feed_moved {
                    c.seq > last
                } else {
                    c.seq == last + 1
                };
                if !ok {
                    self.env.fail(format!(
                        "the change feed gave commit {} after commit {last}{}",
                        c.seq,
                        if self.feed_moved {
                            " (the store moved between them)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            self.feed_last = Some(c.seq);
            self.feed_moved = false;
            let mut pair: Vec<(usize, usize, u64)> = Vec::new();
            for ch in &c.changes {
                let Some(&(w, i)) = self.index.get(ch.key()) else {
                    self.env.fail(format!(
                        "the change feed's commit {} has a foreign key {}",
                        c.seq,
                        show(ch.key())
                    ));
                };
                let name = &self.names[w][i];
                match ch {
                    Change::Put { value, .. } => {
                        let s = check_value(name, w, value).unwrap_or_else(|e| {
                            self.env.fail(format!(
                                "the change feed's commit {}: key {}: {e}",
                                c.seq,
                                show(name)
                            ))
                        });
                        if i < KEYS + 2 {
                            let before = self.feed_seen[w][i];
                            if s <= before {
                                self.env.fail(format!(
                                    "the change feed's commit {} puts key {} at seq {s}, after \
                                     an earlier commit put seq {before}",
                                    c.seq,
                                    show(name)
                                ));
                            }
                            self.feed_seen[w][i] = s;
                        }
                        if i == PAIR_A || i == PAIR_B {
                            pair.push((w, i, s));
                        }
                    }
                    Change::Remove { .. } if i >= KEYS + 2 => {}
                    other => self.env.fail(format!(
                        "the change feed's commit {} has {other:?} on key {}, which writers \
                         only overwrite",
                        c.seq,
                        show(name)
                    )),
                }
            }
            for &(w, i, s) in &pair {
                let other = if i == PAIR_A { PAIR_B } else { PAIR_A };
                if !pair
                    .iter()
                    .any(|&(w2, i2, s2)| w2 == w && i2 == other && s2 == s)
                {
                    self.env.fail(format!(
                        "the change feed's commit {} puts {} at seq {s} without {} at the same \
                         seq: a pair written in part",
                        c.seq,
                        show(&self.names[w][i]),
                        show(&self.names[w][other])
                    ));
                }
            }
        }
        // `next` is in the file the position was in, which `self.pos` holds.
        if let Some(p) = &mut self.pos {
            p.pos = next;
        }
        self.count("feeds");
        self.count_n("feed_commits", commits.len() as u64);
    }

    /// Check a value read for key `i` of writer `w`; returns its sequence
    /// (0 if absent). Sequenced keys must never go backwards.
    fn observe(&mut self, w: usize, i: usize, v: Option<&[u8]>, how: &str) -> u64 {
        let name = &self.names[w][i];
        let seq = match v {
            None => 0,
            Some(v) => check_value(name, w, v)
                .unwrap_or_else(|e| self.env.fail(format!("{how}: key {}: {e}", show(name)))),
        };
        if i < KEYS + 2 {
            let before = self.seen[w][i];
            if seq < before {
                self.env.fail(format!(
                    "{how}: key {}: the sequence went backwards: found {} after seq {before} \
                     had been read",
                    show(name),
                    fmt_seq(Some(seq).filter(|&s| s > 0)),
                ));
            }
            self.seen[w][i] = seq;
        }
        seq
    }

    fn get(&mut self, w: usize, i: usize) {
        let got = self.db.get(&self.names[w][i]).unwrap_or_else(|e| {
            self.env
                .fail(format!("get {}: {e}", show(&self.names[w][i])))
        });
        self.observe(w, i, got.as_deref(), "get");
        self.count("gets");
    }

    /// `get_many`; `None` if a read-only handle found no quiet moment.
    fn get_many(&mut self, w: usize, keys: &[usize]) -> Option<Vec<Option<mapkv::Value>>> {
        let names: Vec<&[u8]> = keys.iter().map(|&i| &self.names[w][i][..]).collect();
        match self.db.get_many(&names) {
            Ok(v) => Some(v),
            Err(Error::Locked { .. }) if self.env.read_only => {
                self.count("get_many_locked");
                None
            }
            Err(e) => self
                .env
                .fail(format!("get_many of writer {w}'s keys {keys:?}: {e}")),
        }
    }

    fn pair(&mut self, w: usize) {
        let Some(vals) = self.get_many(w, &[PAIR_A, PAIR_B]) else {
            return;
        };
        let a = self.observe(w, PAIR_A, vals[0].as_deref(), "get_many of the pair");
        let b = self.observe(w, PAIR_B, vals[1].as_deref(), "get_many of the pair");
        if a != b {
            self.env.fail(format!(
                "get_many of w{w}'s pair saw a {} but b {}: a batch seen in part",
                fmt_seq(Some(a).filter(|&s| s > 0)),
                fmt_seq(Some(b).filter(|&s| s > 0)),
            ));
        }
        self.count("pair_reads");
    }

    fn many(&mut self, w: usize, rng: &mut Rng) {
        let n = 2 + rng.below(7) as usize;
        let keys: Vec<usize> = (0..n).map(|_| rng.below(KEYS as u64) as usize).collect();
        let Some(vals) = self.get_many(w, &keys) else {
            return;
        };
        for (&i, v) in keys.iter().zip(&vals) {
            self.observe(w, i, v.as_deref(), "get_many");
        }
        self.count("many_reads");
    }

    /// A commit must wake us up while writers run, and a return without a
    /// change must mean the timeout passed.
    fn wait(&mut self) {
        let since = self.db.commit_seq();
        let t = Instant::now();
        let now = self.db.wait_for_change(since, WAIT_TIMEOUT).seq();
        let took = t.elapsed();
        if now < since {
            self.env.fail(format!(
                "wait_for_change({since}) returned the older commit {now}"
            ));
        }
        if now == since {
            if took < WAIT_TIMEOUT {
                self.env.fail(format!(
                    "wait_for_change({since}, {WAIT_TIMEOUT:?}) returned without a change \
                     after only {took:?}"
                ));
            }
            self.env.fail(format!(
                "wait_for_change({since}): no commit within {WAIT_TIMEOUT:?} while three \
                 writers run (a lost wake-up, or writers stuck)"
            ));
        }
        let after = self.db.commit_seq();
        if after < now {
            self.env.fail(format!(
                "wait_for_change returned commit {now}, then commit_seq said {after}"
            ));
        }
        // A `since` in the past returns at once (no assertion on time: it
        // must just return a newer commit).
        let past = self.db.wait_for_change(since, WAIT_TIMEOUT).seq();
        if past <= since {
            self.env.fail(format!(
                "wait_for_change({since}) returned {past} although commit {now} had landed"
            ));
        }
        self.count("waits");
    }
}

/// A stress-test reader: reads until told to stop; exits non-zero (a
/// panic) on any violation. Protocol lines: `@O kind`, `@F counts`.
fn reader_main(env: &ChildEnv) {
    let out = Out::new();
    let stop = stop_on_eof();
    let db = Options::new()
        .read_only(env.read_only)
        .open(&env.path)
        .unwrap_or_else(|e| env.fail(format!("open: {e}")));
    out.line(&format!("@O {:?}", db.stats().opened));
    let mut r = Reader::new(env, &db);
    let mut rng = Rng::new(env.seed);
    let started = Instant::now();
    let mut last_commit = r.db.commit_seq();
    let mut next_wait = Instant::now() + Duration::from_millis(50 + rng.below(300));
    let mut next_feed = Instant::now() + Duration::from_millis(5 + rng.below(20));
    let mut next_check = Instant::now() + Duration::from_millis(1000 + rng.below(2000));
    while !stop.load(Ordering::Acquire) {
        if started.elapsed() > env.limit {
            env.fail(format!("not stopped within {:?}", env.limit));
        }
        let c = r.db.commit_seq();
        if c < last_commit {
            env.fail(format!(
                "commit_seq went backwards: {c} after {last_commit}"
            ));
        }
        last_commit = c;
        let w = rng.below(WRITERS as u64) as usize;
        match rng.below(100) {
            0..=59 => r.get(w, rng.below(KEYS as u64 + 2) as usize),
            60..=79 => r.pair(w),
            80..=89 => r.many(w, &mut rng),
            _ => {
                let i = KEYS + 2 + rng.below(SCRATCH as u64) as usize;
                r.get(w, i);
            }
        }
        if Instant::now() >= next_wait {
            r.wait();
            next_wait = Instant::now() + Duration::from_millis(100 + rng.below(400));
        }
        if Instant::now() >= next_feed {
            r.feed();
            next_feed = Instant::now() + Duration::from_millis(5 + rng.below(20));
        }
        if !env.read_only
            && Instant::now() >= next_check
            && r.db.stats().used_bytes < LIVE_CHECK_MAX
        {
            // Full verification of the live store (writers wait meanwhile).
            r.db.check()
                .unwrap_or_else(|e| env.fail(format!("check of the live store: {e}")));
            r.count("live_checks");
            next_check = Instant::now() + Duration::from_millis(2000 + rng.below(2000));
        }
    }
    let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.line(&format!("@F {}", counts.join(" ")));
}

/// The stress test's compactor: `compact()` in a loop, with short random
/// pauses, until told to stop; exits non-zero (a panic) on any violation.
/// While each compaction copies, a second handle of its own (an open of its
/// own, so another holder of the compaction lock) tries `compact()` and
/// must be refused with `Error::Locked`. After each compaction its handle
/// must be on the new file (a position from before is refused), and it
/// reads every key through it. Protocol lines: `@O kind`; `@B n ino=I`
/// before compaction `n` (`I`: the inode the store's name points at); `@P
/// n` once it copied the last live entry (then it catches up, syncs, and
/// pauses writers for the rename); `@C n keys=.. len_before=.. len_after=..
/// live_bytes=.. caught_up=.. pause_us=.. dur_us=.. copy_us=.. ino=..
/// refused=0|1` after it returned; `@F counts` at a graceful end.
///
/// With `MAPKV_MP_TRIP=k` it kills itself (SIGKILL) in compaction `k`, the
/// moment the store's name is on the new file: a watcher thread started
/// just before the rename (an I/O hook inside the writers' pause) waits for
/// it, so the kill mostly lands while the directory is synced, with the
/// writer lock held and the old file marked MOVING but not yet MOVED.
/// It says `@K k` first, and `@T k MAGIC` with the old file's magic just
/// before the kill.
fn compactor_main(env: &ChildEnv) {
    let out = Out::new();
    let stop = stop_on_eof();
    let open = || {
        Options::new()
            .durability(env.mode)
            .open(&env.path)
            .unwrap_or_else(|e| env.fail(format!("open: {e}")))
    };
    let db = open();
    out.line(&format!("@O {:?}", db.stats().opened));
    let rival = open();
    let mut r = Reader::new(env, &db);
    let mut rng = Rng::new(env.seed);
    let started = Instant::now();
    let inode = || {
        inode_of(&env.path)
            .unwrap_or_else(|e| env.fail(format!("stat {}: {e}", env.path.display())))
    };
    let trip: Option<u64> = std::env::var("MAPKV_MP_TRIP")
        .ok()
        .and_then(|v| v.parse().ok());
    let (mut n, mut refused) = (0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        if started.elapsed() > env.limit {
            env.fail(format!("not stopped within {:?}", env.limit));
        }
        if rng.chance(80) {
            std::thread::sleep(Duration::from_millis(1 + rng.below(40)));
        }
        let before = inode();
        let pos = r.db.log_position();
        out.line(&format!("@B {n} ino={before}"));
        let armed = (trip == Some(n)).then(|| {
            out.line(&format!("@K {n}"));
            let old = File::open(&env.path)
                .unwrap_or_else(|e| env.fail(format!("open {}: {e}", env.path.display())));
            let said = out.file();
            tripwire(env.path.clone(), before, old, said, n)
        });
        let mut probe: Option<mapkv::Result<CompactReport>> = None;
        let mut copied = Duration::ZERO;
        let t0 = Instant::now();
        let rep =
            r.db.compact_with_progress(&mut |done, total| {
                if probe.is_none() {
                    probe = Some(rival.compact());
                }
                if done == total {
                    copied = t0.elapsed();
                    out.line(&format!("@P {n}"));
                }
            })
            .unwrap_or_else(|e| {
                env.fail(format!(
                    "compaction {n} (the store's name on inode {before}): {e}"
                ))
            });
        if armed.is_some() {
            // The watcher is late (the machine is busy): it kills us soon.
            std::thread::sleep(Duration::from_secs(30));
            env.fail(format!("compaction {n}: the tripwire did not fire"));
        }
        let after = inode();
        if after == before {
            env.fail(format!(
                "compaction {n} returned {rep:?}, but the store's name still points at inode \
                 {before}"
            ));
        }
        let probed = probe.is_some();
        match probe {
            // Nothing to copy, no progress call.
            None => r.count("unprobed"),
            Some(Err(Error::Locked { .. })) => refused += 1,
            Some(Ok(other)) => env.fail(format!(
                "while compaction {n} copied, a second handle's compact() ran and returned \
                 {other:?}: two compactions at once"
            )),
            Some(Err(e)) => env.fail(format!(
                "while compaction {n} copied, a second handle's compact() failed with {e:?}, \
                 not Error::Locked"
            )),
        }
        if rep.keys > (WRITERS * PER_WRITER) as u64
            || rep.live_bytes > rep.len_after
            || rep.writer_pause > rep.duration
        {
            env.fail(format!(
                "compaction {n}: an implausible report {rep:?} ({} keys exist at most)",
                WRITERS * PER_WRITER
            ));
        }
        match r.db.changes_after(pos, 1) {
            Err(Error::BadPosition { reason, .. }) if reason.contains(MOVED_REASON) => {}
            other => env.fail(format!(
                "after compaction {n}, changes_after of a position from before it returned \
                 {other:?}, not BadPosition (from another file): the handle did not move"
            )),
        }
        // Every key through the moved handle.
        for w in 0..WRITERS {
            for i in 0..PER_WRITER {
                r.get(w, i);
            }
            r.pair(w);
        }
        r.count("sweeps");
        out.line(&format!(
            "@C {n} keys={} len_before={} len_after={} live_bytes={} caught_up={} pause_us={} \
             dur_us={} copy_us={} ino={after} refused={}",
            rep.keys,
            rep.len_before,
            rep.len_after,
            rep.live_bytes,
            rep.caught_up,
            rep.writer_pause.as_micros(),
            rep.duration.as_micros(),
            copied.as_micros(),
            probed as u8
        ));
        n += 1;
    }
    let mut counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    counts.push(format!("compactions={n} refused={refused}"));
    out.line(&format!("@F {}", counts.join(" ")));
    drop(r);
    db.close()
        .unwrap_or_else(|e| env.fail(format!("close: {e}")));
    rival
        .close()
        .unwrap_or_else(|e| env.fail(format!("close the second handle: {e}")));
}

/// Arm the compactor's tripwire (see `compactor_main`) for compaction
/// `n`: right before the rename, start a thread that, as soon as the
/// store's name no longer points at inode `from`, says (on `said`) what
/// `old` (the file the compaction started from) has as its magic and
/// SIGKILLs this process; and give that thread a moment to get going.
/// Disarmed when the returned guard is dropped.
fn tripwire(path: PathBuf, from: u64, old: File, said: File, n: u64) -> mapkv::testing::HookGuard {
    use mapkv::testing::{IoOp, Phase};
    let files = Arc::new((old, said));
    mapkv::testing::add_io_hook(Arc::new(move |p, op, phase| {
        if op == IoOp::Rename && phase == Phase::Before && p == path {
            let (path, files) = (path.clone(), files.clone());
            std::thread::spawn(move || loop {
                if inode_of(&path).is_ok_and(|i| i != from) {
                    let magic = magic_of(&files.0).map_or_else(
                        |e| format!("unreadable:{}", e.kind()),
                        |m| String::from_utf8_lossy(&m).into_owned(),
                    );
                    let _ = (&files.1).write_all(format!("@T {n} {magic}\n").as_bytes());
                    // SAFETY: kill(2) on our own pid; no memory is involved.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                }
                std::hint::spin_loop();
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }))
}

/// The read-only test's writer: `RO_COMMITS` commits of the counter, every
/// eighth in a batch with a large blob (the file grows several times).
/// Protocol lines: `@O kind`, `@P n` every 100 commits, `@F`.
fn ro_writer_main(env: &ChildEnv) {
    let out = Out::new();
    let db = Options::new()
        .durability(env.mode)
        .open(&env.path)
        .unwrap_or_else(|e| env.fail(format!("open: {e}")));
    out.line(&format!("@O {:?}", db.stats().opened));
    for n in 1..=RO_COMMITS {
        let counter = make_value(RO_COUNTER, RO_WRITER, n);
        if n % 8 == 0 {
            let blob = ro_blob((n / 8) % RO_BLOBS);
            let len = 8192 + (mix64(n) % (56 << 10)) as usize;
            let mut b = db.batch();
            b.insert(RO_COUNTER, counter)
                .insert(&blob, make_sized(&blob, RO_WRITER, n, len));
            b.commit()
                .unwrap_or_else(|e| env.fail(format!("batch {n}: {e}")));
        } else {
            db.insert(RO_COUNTER, counter)
                .unwrap_or_else(|e| env.fail(format!("insert {n}: {e}")));
        }
        if n % 100 == 0 {
            out.line(&format!("@P {n}"));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    out.line(&format!("@F len={}", db.len()));
    db.close()
        .unwrap_or_else(|e| env.fail(format!("close: {e}")));
}

/// The read-only test's reader: a read-only handle, opened once, reads
/// until it sees the writer's last commit. Protocol lines:
/// `@O kind first-seq`, `@F counts`.
fn ro_reader_main(env: &ChildEnv) {
    let out = Out::new();
    let db = Options::new()
        .read_only(true)
        .open(&env.path)
        .unwrap_or_else(|e| env.fail(format!("open: {e}")));
    let counter = |v: Option<&[u8]>, how: &str| -> u64 {
        let v = v.unwrap_or_else(|| env.fail(format!("{how}: the counter is absent")));
        check_value(RO_COUNTER, RO_WRITER, v)
            .unwrap_or_else(|e| env.fail(format!("{how}: the counter: {e}")))
    };
    let first = counter(
        db.get(RO_COUNTER)
            .unwrap_or_else(|e| env.fail(format!("get: {e}")))
            .as_deref(),
        "first get",
    );
    out.line(&format!("@O {:?} {first}", db.stats().opened));
    match db.insert(b"ro:forbidden", b"x") {
        Err(Error::ReadOnly { .. }) => {}
        other => env.fail(format!(
            "insert on a read-only handle returned {other:?}, not Error::ReadOnly"
        )),
    }

    let mut rng = Rng::new(env.seed);
    let started = Instant::now();
    let (mut last, mut distinct, mut woke, mut locked, mut reads) = (first, 1u64, 0u64, 0u64, 0u64);
    while last < RO_COMMITS {
        if started.elapsed() > env.limit {
            env.fail(format!(
                "after {:?} the read-only handle still sees the counter at {last}; the writer \
                 goes up to {RO_COMMITS}: it does not follow the other process's writes",
                env.limit
            ));
        }
        let since = db.commit_seq();
        let b = rng.below(RO_BLOBS);
        let blob = ro_blob(b);
        let vals = match db.get_many(&[RO_COUNTER, &blob[..]]) {
            Ok(v) => v,
            Err(Error::Locked { .. }) => {
                locked += 1;
                continue;
            }
            Err(e) => env.fail(format!("get_many: {e}")),
        };
        reads += 1;
        let n = counter(vals[0].as_deref(), "get_many");
        if n < last {
            env.fail(format!("the counter went backwards: {n} after {last}"));
        }
        if n != last {
            distinct += 1;
            last = n;
        }
        if let Some(v) = &vals[1] {
            let s = check_value(&blob, RO_WRITER, v)
                .unwrap_or_else(|e| env.fail(format!("blob {b}: {e}")));
            // Written in the same batch as counter value s.
            if s > n || s % 8 != 0 || (s / 8) % RO_BLOBS != b {
                env.fail(format!(
                    "blob {b} holds the value of commit {s}, seen together with counter {n}"
                ));
            }
        }
        if db.wait_for_change(since, Duration::from_millis(200)).seq() > since {
            woke += 1;
        }
    }
    if reads == 0 {
        env.fail(format!("get_many never succeeded ({locked} times Locked)"));
    }
    // Everything the writer left, without reopening.
    let want_len = 1 + RO_BLOBS.min(RO_COMMITS / 8);
    if db.len() != want_len {
        env.fail(format!(
            "len() is {} after the writer's last commit; it wrote {want_len} keys",
            db.len()
        ));
    }
    for b in 0..RO_BLOBS.min(RO_COMMITS / 8) {
        let blob = ro_blob(b);
        match db.get(&blob) {
            Ok(Some(v)) => {
                check_value(&blob, RO_WRITER, &v)
                    .unwrap_or_else(|e| env.fail(format!("final read of blob {b}: {e}")));
            }
            Ok(None) => env.fail(format!("blob {b} is absent after the writer's last commit")),
            Err(e) => env.fail(format!("final read of blob {b}: {e}")),
        }
    }
    out.line(&format!(
        "@F first={first} last={last} distinct={distinct} woke={woke} reads={reads} \
         locked={locked} len={}",
        db.len()
    ));
}

// ---------------------------------------------------------------------------
// The parent of the stress test: the model.

/// What the store must hold for one key.
#[derive(Clone, Copy, Debug, Default)]
struct KeyModel {
    /// The last acknowledged value (its sequence; `None`: absent).
    acked: Option<u64>,
    /// The write that was in flight for this key when its writer was
    /// killed, until a restarted writer (or the final check) settles it.
    in_flight: Option<Option<u64>>,
}

/// A commit that was in flight when its writer was killed: per key written,
/// (key index, value before, value after), as sequences (`None`: absent).
type Unsettled = Vec<(usize, Option<u64>, Option<u64>)>;

#[derive(Default)]
struct WriterModel {
    keys: Vec<KeyModel>,
    /// The announced, not yet acknowledged commit of the running instance.
    pending: Option<Vec<(usize, Option<u64>)>>,
    /// The commit in flight at the last kill, until a restarted writer (or
    /// the final check) shows how it turned out.
    unresolved: Option<Unsettled>,
    /// The running instance has reported where it resumed.
    resumed: bool,
}

fn in_flight_note(k: KeyModel) -> String {
    match k.in_flight {
        None => String::new(),
        Some(v) => format!(
            " (or {}, the write in flight when its writer was killed)",
            fmt_seq(v)
        ),
    }
}

/// How a commit that was in flight when its writer was killed turned out,
/// judged from what the store holds: applied (`Some(true)`), not applied
/// (`Some(false)`), or nothing tells (`None`: it changed no key). An error
/// if some of its keys show it and others do not.
fn outcome(
    w: usize,
    write: &[(usize, Option<u64>, Option<u64>)],
    found: impl Fn(usize) -> Option<u64>,
) -> Result<Option<bool>, String> {
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for &(i, before, after) in write {
        if before == after {
            continue;
        }
        let f = found(i);
        if f == after {
            new.push(show(&key_name(w, i)));
        } else if f == before {
            old.push(show(&key_name(w, i)));
        }
    }
    match (new.is_empty(), old.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(true)),
        (true, false) => Ok(Some(false)),
        (false, false) => Err(format!(
            "the commit in flight when writer {w} was killed is partly applied: {} show it, \
             {} do not ({})",
            new.join(" "),
            old.join(" "),
            fmt_writes(write.iter().map(|&(i, _, v)| (i, v))),
        )),
    }
}

#[derive(Default)]
struct Figures {
    writer_starts: u64,
    modes: BTreeMap<&'static str, u64>,
    opens: BTreeMap<String, u64>,
    kills: u64,
    kills_blind: u64,
    kills_aimed: u64,
    kills_early: u64,
    killed_in_flight: u64,
    /// Kills with a commit in flight, by aim: blind, commit, open.
    in_flight_by_aim: [u64; 3],
    killed_before_resume: u64,
    in_flight_applied: u64,
    in_flight_dropped: u64,
    in_flight_moot: u64,
    resumes_checked: u64,
    acked_commits: u64,
    acked_writes: u64,
    acked_pairs: u64,
    acked_batches: u64,
    acked_removes: u64,
    readers: BTreeMap<String, u64>,
    writer_readbacks: u64,
    /// `@M` lines: a writer found that the store had moved.
    writer_moves: u64,
    compactor_starts: u64,
    compactions: u64,
    compactor_kills: u64,
    /// Compactor kills some time after it announced a compaction or the
    /// end of its copy.
    compactor_kills_aimed: u64,
    /// How the compactor kills landed: between compactions, inside one
    /// in its copy, after the copy but before its rename, after its rename
    /// (the store moved).
    compactor_killed_idle: u64,
    compactor_killed_copying: u64,
    compactor_killed_before_rename: u64,
    compactor_killed_after_rename: u64,
    /// Of those after the rename: the old file was still marked MOVING,
    /// not yet MOVED (as the tripwire read it at the kill, or the parent
    /// after it, when a writer may have settled it already).
    compactor_killed_moving_renamed: u64,
    /// Compactors that killed themselves at a rename (`MAPKV_MP_TRIP`).
    compactor_trips: u64,
    /// Kills that left a hidden new file next to the store.
    compactor_kills_leaving_files: u64,
    /// Killed compactors that left files, seen gone after the next
    /// compaction.
    leftovers_seen_removed: u64,
    /// Compaction leftovers next to the store just before the final open.
    leftovers_at_end: u64,
    /// Moves onto a file whose inode number the store had been on before
    /// (the filesystem reuses the numbers of deleted files).
    inodes_reused: u64,
    /// Compactions whose second handle was refused with `Locked`.
    refused: u64,
    caught_up: u64,
    pause_max: Duration,
    pause_total: Duration,
    duration_max: Duration,
    duration_total: Duration,
    /// Smallest and largest file after a compaction, largest before one.
    len_after_min: u64,
    len_after_max: u64,
    len_before_max: u64,
    /// The compactor's final counts (graceful stops only).
    compactor: BTreeMap<String, u64>,
}

impl Figures {
    /// How many times the store's name moved to a new file.
    fn store_moves(&self) -> u64 {
        self.compactions + self.compactor_killed_after_rename
    }
}

/// The parent's view of the compactor.
#[derive(Default)]
struct CompactorModel {
    /// Whether this run has a compactor (`MAPKV_MP_COMPACT`).
    enabled: bool,
    instance: u64,
    /// The running instance's process id.
    pid: u32,
    /// Killed instances whose leftovers the next finished compaction must
    /// have removed, and whether they left any.
    killed_pids: Vec<(u32, bool)>,
    /// The compaction announced and not yet reported: its number, and the
    /// inode the store's name pointed at when it began.
    under_way: Option<(u64, u64)>,
    /// The number the running instance's next compaction must have.
    next: u64,
    /// The inode the store's name points at, as far as the parent knows.
    store_ino: u64,
    /// Every inode the store's name has been on, in order.
    history: Vec<u64>,
    /// The compaction under way has copied the live entries (`@P`).
    copied: bool,
    /// The compaction in which the running instance kills itself, and
    /// whether it said it armed the tripwire (`@K`).
    trip: Option<u64>,
    tripped: bool,
    /// What the tripwire read as the old file's magic just before the kill.
    trip_magic: Option<String>,
    /// The file the compaction under way started from, opened when it
    /// began (to read its magic after a kill).
    old_file: Option<File>,
    /// Average duration of recent compactions, and of what follows their
    /// copy, µs (to aim kills).
    avg_us: f64,
    avg_rest_us: f64,
}

/// Where a compactor kill is aimed.
#[derive(Clone, Copy, PartialEq)]
enum CompactAim {
    /// Wherever it is.
    Blind,
    /// A random part of a compaction's usual length after it began.
    Begin,
    /// A random part of the usual rest after its copy: the catch-up, the
    /// syncs, the writers' pause with the rename.
    Copied,
}

/// How the stress run ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Every writer stops and closes.
    Graceful,
    /// One writer is killed mid-commit; the others close (and repair).
    OneKilled,
    /// Every writer is killed; the parent's open recovers.
    AllKilled,
}

/// Where a kill lands.
#[derive(Clone, Copy)]
enum Aim {
    /// Whenever it happens to be.
    Blind,
    /// Just after an intent line: usually inside the commit.
    Commit,
    /// While a just-started writer opens (and perhaps repairs) the store or
    /// reads where to resume.
    Open,
}

struct Run {
    seed: u64,
    path: PathBuf,
    rng: Rng,
    began: Instant,
    child_limit: Duration,
    kids: Kids,
    instances: Vec<u64>,
    models: Vec<WriterModel>,
    fig: Figures,
    comp: CompactorModel,
    /// The parent's choices about the compactor, apart from the writers'
    /// (so `MAPKV_MP_COMPACT=0` replays the same writer kills).
    crng: Rng,
}

/// What a child slot holds.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Writer,
    Reader,
    Compactor,
}

fn role_of(slot: usize) -> Role {
    match slot {
        s if s < WRITERS => Role::Writer,
        COMPACTOR => Role::Compactor,
        _ => Role::Reader,
    }
}

impl Run {
    /// Fail the test: stop every child, keep the store file, panic.
    fn fail(&mut self, msg: impl Display) -> ! {
        self.kids.kill_all();
        let keep = std::env::temp_dir().join(format!("mapkv-mp-failure-{}.mapkv", self.seed));
        let kept = match std::fs::copy(&self.path, &keep) {
            Ok(_) => format!("store kept at {}", keep.display()),
            Err(e) => format!("could not keep the store: {e}"),
        };
        let history = if self.comp.enabled {
            let h = &self.comp.history;
            let from = h.len().saturating_sub(12);
            format!(
                "\nthe store's name was on inodes (oldest first, {} moves, last {}): {:?}",
                h.len() - 1,
                h.len() - from,
                &h[from..]
            )
        } else {
            String::new()
        };
        panic!(
            "multiprocess stress failed after {:.1?}: MAPKV_SEED={}; {kept}\n{msg}{history}",
            self.began.elapsed(),
            self.seed,
        );
    }

    fn spawn_writer(&mut self, w: usize) {
        self.instances[w] += 1;
        let instance = self.instances[w];
        let seed = self.rng.next();
        let mode = match self.rng.below(10) {
            0..=4 => "none",
            5..=6 => "async",
            _ => "sync",
        };
        let label = format!("writer {w} (instance {instance}, MAPKV_MP_SEED={seed}, {mode})");
        let envs = Spawn {
            role: "writer",
            path: &self.path,
            id: w,
            instance,
            seed,
            mode,
            read_only: false,
            limit: self.child_limit,
        }
        .envs(ENV);
        self.kids.spawn(w, instance, label, &envs);
        self.fig.writer_starts += 1;
        *self.fig.modes.entry(mode).or_default() += 1;
    }

    fn spawn_reader(&mut self, r: usize) {
        let seed = self.rng.next();
        let read_only = r == 1;
        let label = format!(
            "reader {r} ({} handle, MAPKV_MP_SEED={seed})",
            if read_only { "read-only" } else { "read-write" }
        );
        let envs = Spawn {
            role: "reader",
            path: &self.path,
            id: r,
            instance: 1,
            seed,
            mode: "none",
            read_only,
            limit: self.child_limit,
        }
        .envs(ENV);
        self.kids.spawn(WRITERS + r, 1, label, &envs);
    }

    /// Handle the next event, waiting up to `timeout`; returns the line it
    /// carried and from which slot.
    fn pump(&mut self, timeout: Duration) -> Option<(usize, String)> {
        let ev = self.kids.rx.recv_timeout(timeout).ok()?;
        let seen = ev.line.clone().map(|l| (ev.slot, l));
        self.handle(ev);
        seen
    }

    /// Handle events until `slot` prints a line that `pred` accepts, or the
    /// deadline passes or its output ends (false).
    fn pump_until(&mut self, slot: usize, pred: impl Fn(&str) -> bool, deadline: Instant) -> bool {
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self.kids.get(slot).eof {
                // It is gone (a compactor that killed itself).
                return false;
            }
            if let Some((s, l)) = self.pump(left) {
                if s == slot && pred(&l) {
                    return true;
                }
            }
        }
        false
    }

    /// Handle events until the latest line of the child in `slot` (with
    /// nothing of it queued behind) starts with `tag`: for a writer's `@I`,
    /// that commit is in flight now, for the compactor's `@B` that
    /// compaction, unless it finished since. False if the deadline passed
    /// first.
    fn catch_latest(&mut self, slot: usize, tag: &str, deadline: Instant) -> bool {
        while self.pump_until(slot, |l| l.starts_with(tag), deadline) {
            // Catch up with everything already queued: the line is stale if
            // the child printed anything after it.
            let mut latest = true;
            while let Ok(ev) = self.kids.rx.try_recv() {
                if ev.slot == slot {
                    latest = ev.line.as_deref().is_some_and(|l| l.starts_with(tag));
                }
                self.handle(ev);
            }
            if latest {
                return true;
            }
        }
        false
    }

    /// Handle events until the child in `slot` has closed its stdout.
    fn drain(&mut self, slot: usize) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while !self.kids.get(slot).eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let label = self.kids.get(slot).label.clone();
                self.fail(format!(
                    "{label}: its output did not end within {EVENT_TIMEOUT:?} of its exit or stop"
                ));
            }
            self.pump(left);
        }
    }

    fn handle(&mut self, ev: Ev) {
        let Some(p) = self.kids.current(ev.slot, ev.instance) else {
            return;
        };
        let Some(line) = ev.line else {
            p.eof = true;
            if !p.exiting {
                let label = p.label.clone();
                let (status, stderr) = self.kids.reap(ev.slot);
                self.fail(format!(
                    "{label} exited by itself ({status})\n--- its stderr ---\n{stderr}"
                ));
            }
            return;
        };
        let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let role = role_of(ev.slot);
        let res = match (role, tag) {
            (_, "@S") => Ok(()),
            (_, "@O") => {
                p.opened = Some(rest.to_string());
                let who = match role {
                    Role::Writer => "writers".to_string(),
                    Role::Reader => format!("reader {}", ev.slot - WRITERS),
                    Role::Compactor => "compactor".to_string(),
                };
                *self.fig.opens.entry(format!("{who} {rest}")).or_default() += 1;
                Ok(())
            }
            (_, "@F") => {
                p.finals = Some(rest.to_string());
                Ok(())
            }
            (Role::Writer, "@R") => parse_writes(rest).and_then(|f| self.resume(ev.slot, &f)),
            (Role::Writer, "@I") => parse_writes(rest).and_then(|i| self.intent(ev.slot, i)),
            (Role::Writer, "@A") => self.ack(ev.slot),
            (Role::Writer, "@M") => {
                self.fig.writer_moves += 1;
                Ok(())
            }
            (Role::Compactor, "@B") => self.compaction_begins(rest),
            (Role::Compactor, "@P") => self.compaction_copied(rest),
            (Role::Compactor, "@T") => {
                self.comp.trip_magic = rest.split_once(' ').map(|(_, m)| m.to_string());
                Ok(())
            }
            (Role::Compactor, "@K") => {
                // It is about to kill itself.
                p.exiting = true;
                self.compaction_trips(rest)
            }
            (Role::Compactor, "@C") => self.compaction_done(rest),
            _ => Err(format!("unexpected line {line:?}")),
        };
        if let Err(e) = res {
            let label = self.kids.get(ev.slot).label.clone();
            self.fail(format!("{label}: {e}"));
        }
    }

    /// The compactor announces compaction `n`: the previous one ended, the
    /// numbers follow each other, and the store's name points where the
    /// parent knows it does (only the compactor moves it).
    fn compaction_begins(&mut self, rest: &str) -> Result<(), String> {
        let (n, counts) = parse_numbered(rest)?;
        let ino = field(&counts, "ino")?;
        let c = &mut self.comp;
        if let Some((m, _)) = c.under_way {
            return Err(format!(
                "compaction {n} announced while compaction {m} has not reported"
            ));
        }
        if n != c.next {
            return Err(format!("compaction {n} announced, {} expected", c.next));
        }
        if ino != c.store_ino {
            return Err(format!(
                "compaction {n} found the store's name on inode {ino}, but the last move the \
                 parent knows of left it on inode {}",
                c.store_ino
            ));
        }
        c.under_way = Some((n, ino));
        // The file it starts from, if the name still points there.
        c.old_file = File::open(&self.path)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.ino() == ino));
        Ok(())
    }

    /// The compactor armed its tripwire for compaction `n`.
    fn compaction_trips(&mut self, rest: &str) -> Result<(), String> {
        let (n, _) = parse_numbered(rest)?;
        let c = &mut self.comp;
        match c.under_way {
            Some((m, _)) if m == n && c.trip == Some(n) && !c.tripped => {
                c.tripped = true;
                Ok(())
            }
            other => Err(format!(
                "a tripwire for compaction {n}; the one under way is {other:?}, its tripwire \
                 was set for {:?}",
                c.trip
            )),
        }
    }

    /// The compactor copied the live entries of compaction `n`.
    fn compaction_copied(&mut self, rest: &str) -> Result<(), String> {
        let (n, _) = parse_numbered(rest)?;
        match self.comp.under_way {
            Some((m, _)) if m == n && !self.comp.copied => {
                self.comp.copied = true;
                Ok(())
            }
            other => Err(format!(
                "compaction {n} says it copied everything, but the one under way is {other:?} \
                 (copied already: {})",
                self.comp.copied
            )),
        }
    }

    /// The compactor reports compaction `n` done: the store's name moved;
    /// whatever compactors killed before it left is gone.
    fn compaction_done(&mut self, rest: &str) -> Result<(), String> {
        let (n, counts) = parse_numbered(rest)?;
        let get = |k: &str| field(&counts, k);
        let (ino, pause, dur) = (get("ino")?, get("pause_us")?, get("dur_us")?);
        let copy = get("copy_us")?;
        let (len_before, len_after) = (get("len_before")?, get("len_after")?);
        let c = &mut self.comp;
        match c.under_way.take() {
            Some((m, before)) if m == n => {
                if ino == before {
                    return Err(format!(
                        "compaction {n} reported done with the store's name still on inode {ino}"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "compaction {n} reported done; the one announced was {other:?}"
                ))
            }
        }
        c.store_ino = ino;
        if let Some(f) = c.old_file.take() {
            match magic_of(&f) {
                Ok(m) if m == *MAGIC_MOVED => {}
                Ok(m) => {
                    return Err(format!(
                        "compaction {n} reported done, but the file it moved the store from says \
                         {:?}, not {:?}",
                        String::from_utf8_lossy(&m),
                        String::from_utf8_lossy(MAGIC_MOVED)
                    ))
                }
                Err(e) => return Err(format!("read the magic of the old file: {e}")),
            }
        }
        if c.history.contains(&ino) {
            self.fig.inodes_reused += 1;
        }
        c.history.push(ino);
        c.next = n + 1;
        c.copied = false;
        let ewma = |avg: f64, x: u64| {
            if avg == 0.0 {
                x as f64
            } else {
                0.8 * avg + 0.2 * x as f64
            }
        };
        c.avg_us = ewma(c.avg_us, dur);
        if copy > 0 {
            c.avg_rest_us = ewma(c.avg_rest_us, dur.saturating_sub(copy));
        }
        let killed = std::mem::take(&mut c.killed_pids);
        let f = &mut self.fig;
        f.compactions += 1;
        f.refused += get("refused")?;
        f.caught_up += get("caught_up")?;
        let (pause, dur) = (Duration::from_micros(pause), Duration::from_micros(dur));
        f.pause_max = f.pause_max.max(pause);
        f.pause_total += pause;
        f.duration_max = f.duration_max.max(dur);
        f.duration_total += dur;
        f.len_after_min = if f.compactions == 1 {
            len_after
        } else {
            f.len_after_min.min(len_after)
        };
        f.len_after_max = f.len_after_max.max(len_after);
        f.len_before_max = f.len_before_max.max(len_before);
        // Each compaction first removes what unfinished ones left.
        let left: Vec<String> = leftovers(&self.path)
            .into_iter()
            .filter(|(_, pid)| {
                pid.is_some_and(|p| killed.iter().any(|k| k.0 == p) && p != self.comp.pid)
            })
            .map(|(name, _)| name)
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "compaction {n} finished, but files of compactors killed before it began are \
                 still next to the store: {left:?}"
            ));
        }
        self.fig.leftovers_seen_removed += killed.iter().filter(|k| k.1).count() as u64;
        Ok(())
    }

    /// A restarted writer reports what it found: every key as acknowledged,
    /// or as the commit in flight at the last kill left it (all or nothing).
    fn resume(&mut self, w: usize, found: &[(usize, Option<u64>)]) -> Result<(), String> {
        let m = &mut self.models[w];
        if found.len() != PER_WRITER || found.iter().enumerate().any(|(n, &(i, _))| n != i) {
            return Err("a malformed resume line".into());
        }
        if m.resumed {
            return Err("resumed twice".into());
        }
        let bad: Vec<String> = found
            .iter()
            .filter(|&&(i, f)| f != m.keys[i].acked && Some(f) != m.keys[i].in_flight)
            .map(|&(i, f)| {
                format!(
                    "key {}: the store holds {}, but {} was acknowledged{}",
                    show(&key_name(w, i)),
                    fmt_seq(f),
                    fmt_seq(m.keys[i].acked),
                    in_flight_note(m.keys[i]),
                )
            })
            .collect();
        if !bad.is_empty() {
            return Err(format!(
                "restarted after a kill, it found {} keys not as acknowledged:\n{}",
                bad.len(),
                bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            ));
        }
        let settled = match m.unresolved.take() {
            Some(u) => Some(outcome(w, &u, |i| found[i].1)?),
            None => None,
        };
        for &(i, f) in found {
            m.keys[i] = KeyModel {
                acked: f,
                in_flight: None,
            };
        }
        m.resumed = true;
        self.fig.resumes_checked += 1;
        match settled {
            Some(Some(true)) => self.fig.in_flight_applied += 1,
            Some(Some(false)) => self.fig.in_flight_dropped += 1,
            Some(None) => self.fig.in_flight_moot += 1,
            None => {}
        }
        Ok(())
    }

    /// A writer announces a commit: sequences go up by one per key, the
    /// pair moves together.
    fn intent(&mut self, w: usize, writes: Vec<(usize, Option<u64>)>) -> Result<(), String> {
        let m = &mut self.models[w];
        if !m.resumed {
            return Err("a commit announced before the resume line".into());
        }
        if let Some(p) = &m.pending {
            return Err(format!(
                "a commit announced while {} is not acknowledged",
                fmt_writes(p.iter().copied())
            ));
        }
        for &(i, v) in &writes {
            let want = Some(m.keys[i].acked.unwrap_or(0) + 1);
            if i < KEYS + 2 && v != want {
                return Err(format!(
                    "key {}: announced {} after {} (sequences go up by one)",
                    show(&key_name(w, i)),
                    fmt_seq(v),
                    fmt_seq(m.keys[i].acked)
                ));
            }
        }
        let seq_of = |k: usize| writes.iter().find(|&&(i, _)| i == k).map(|&(_, v)| v);
        if seq_of(PAIR_A) != seq_of(PAIR_B) {
            return Err(format!(
                "a commit that does not move the pair together: {}",
                fmt_writes(writes.iter().copied())
            ));
        }
        m.pending = Some(writes);
        Ok(())
    }

    fn ack(&mut self, w: usize) -> Result<(), String> {
        let m = &mut self.models[w];
        let p = m
            .pending
            .take()
            .ok_or("an ack without an announced commit")?;
        for &(i, v) in &p {
            m.keys[i].acked = v;
        }
        let f = &mut self.fig;
        f.acked_commits += 1;
        f.acked_writes += p.len() as u64;
        f.acked_removes += p.iter().filter(|w| w.1.is_none()).count() as u64;
        if p.len() == 2 && p[0].0 == PAIR_A {
            f.acked_pairs += 1;
        } else if p.len() > 1 {
            f.acked_batches += 1;
        }
        Ok(())
    }

    /// SIGKILL writer `w` where `aim` says; everything it printed is
    /// handled, and the commit it had in flight (if any) becomes uncertain.
    fn kill_writer(&mut self, w: usize, mut aim: Aim) {
        match aim {
            Aim::Blind => {}
            Aim::Commit => {
                let deadline = Instant::now() + Duration::from_secs(5);
                if self.catch_latest(w, "@I ", deadline) {
                    // Spin, not sleep: a sleep oversleeps by tens of µs,
                    // longer than many commits take.
                    let spin = Duration::from_micros(self.rng.below(150));
                    let t = Instant::now();
                    while t.elapsed() < spin {
                        std::hint::spin_loop();
                    }
                } else {
                    aim = Aim::Blind;
                }
            }
            Aim::Open => {
                let deadline = Instant::now() + Duration::from_secs(30);
                self.pump_until(w, |l| l == "@S", deadline);
                std::thread::sleep(Duration::from_micros(self.rng.below(1500)));
            }
        }
        let aim_index = match aim {
            Aim::Blind => 0,
            Aim::Commit => 1,
            Aim::Open => 2,
        };
        match aim {
            Aim::Blind => self.fig.kills_blind += 1,
            Aim::Commit => self.fig.kills_aimed += 1,
            Aim::Open => self.fig.kills_early += 1,
        }
        self.kill_slot(w);
        self.fig.kills += 1;
        let m = &mut self.models[w];
        if !m.resumed {
            self.fig.killed_before_resume += 1;
        }
        m.resumed = false;
        if let Some(p) = m.pending.take() {
            self.fig.killed_in_flight += 1;
            self.fig.in_flight_by_aim[aim_index] += 1;
            assert!(m.unresolved.is_none(), "two unsettled commits");
            let write: Vec<_> = p.iter().map(|&(i, v)| (i, m.keys[i].acked, v)).collect();
            for &(i, v) in &p {
                m.keys[i].in_flight = Some(v);
            }
            m.unresolved = Some(write);
        }
    }

    /// Reap a compactor that announced its tripwire and whose output ended:
    /// it must have died of the SIGKILL it sent itself.
    fn reap_tripped(&mut self) {
        let label = self.kids.get(COMPACTOR).label.clone();
        let (status, stderr) = self.kids.reap(COMPACTOR);
        if status.signal() != Some(libc::SIGKILL) {
            self.fail(format!(
                "{label} armed its tripwire and then ended ({status}), not by its SIGKILL\n--- \
                 its stderr ---\n{stderr}"
            ));
        }
        self.compactor_killed();
    }

    /// SIGKILL the child in `slot`; everything it printed is handled, and
    /// it must have died of the kill.
    fn kill_slot(&mut self, slot: usize) {
        self.kids.kill(slot);
        self.drain(slot);
        let label = self.kids.get(slot).label.clone();
        let (status, stderr) = self.kids.reap(slot);
        if status.signal() != Some(libc::SIGKILL) {
            self.fail(format!(
                "{label} ended by itself ({status}) instead of being killed\n--- its stderr \
                 ---\n{stderr}"
            ));
        }
    }

    fn spawn_compactor(&mut self) {
        self.comp.instance += 1;
        let instance = self.comp.instance;
        let seed = self.crng.next();
        let mode = ["none", "async", "sync"][self.crng.below(3) as usize];
        // Some instances kill themselves at the rename of one compaction.
        let trip = self.crng.chance(40).then(|| 1 + self.crng.below(15));
        let label = format!(
            "compactor (instance {instance}, MAPKV_MP_SEED={seed}, {mode}, MAPKV_MP_TRIP={})",
            trip.map_or("-".to_string(), |t| t.to_string())
        );
        let mut envs = Spawn {
            role: "compactor",
            path: &self.path,
            id: 0,
            instance,
            seed,
            mode,
            read_only: false,
            limit: self.child_limit,
        }
        .envs(ENV);
        if let Some(t) = trip {
            envs.push(("MAPKV_MP_TRIP".to_string(), t.to_string()));
        }
        self.kids.spawn(COMPACTOR, instance, label, &envs);
        self.comp.pid = self.kids.get(COMPACTOR).child.id();
        self.comp.next = 0;
        self.comp.trip = trip;
        self.comp.tripped = false;
        self.fig.compactor_starts += 1;
    }

    /// SIGKILL the compactor where `aim` says (the aimed kills mostly land
    /// inside a compaction). Then see where the kill landed: between
    /// compactions, or inside one in its copy, before or after its rename
    /// (the store's name tells), and what it left next to the store.
    fn kill_compactor(&mut self, aim: CompactAim) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (tag, est) = match aim {
            CompactAim::Blind => ("", 0.0),
            CompactAim::Begin => ("@B ", self.comp.avg_us),
            CompactAim::Copied => ("@P ", self.comp.avg_rest_us),
        };
        if aim != CompactAim::Blind && self.catch_latest(COMPACTOR, tag, deadline) {
            let est = est.clamp(500.0, 200_000.0);
            let us = self.crng.below((est * 1.3) as u64 + 1);
            std::thread::sleep(Duration::from_micros(us));
            self.fig.compactor_kills_aimed += 1;
        }
        self.kill_slot(COMPACTOR);
        self.fig.compactor_kills += 1;
        self.compactor_killed();
    }

    /// The compactor died of a SIGKILL (the parent's or its tripwire's):
    /// see where the kill landed, between compactions, or inside one in
    /// its copy, before or after its rename (the store's name tells), what
    /// the file it started from says, and what it left next to the store.
    fn compactor_killed(&mut self) {
        let trip_magic = self.comp.trip_magic.take();
        if std::mem::take(&mut self.comp.tripped) {
            self.fig.compactor_trips += 1;
        }
        let now = inode_of(&self.path)
            .unwrap_or_else(|e| self.fail(format!("stat the store after a compactor kill: {e}")));
        let copied = std::mem::take(&mut self.comp.copied);
        // What the file it started from says (a writer may have settled
        // a MOVING left behind already).
        let magic = match self.comp.old_file.take().map(|f| magic_of(&f)) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => self.fail(format!(
                "read the magic of the file the killed compaction started from: {e}"
            )),
            None => None,
        };
        // The tripwire read it at the kill; the parent only now.
        let moving = match &trip_magic {
            Some(m) => m.as_bytes() == MAGIC_MOVING,
            None => magic == Some(*MAGIC_MOVING),
        };
        match self.comp.under_way.take() {
            None => self.fig.compactor_killed_idle += 1,
            Some((_, before)) if now == before && !copied => self.fig.compactor_killed_copying += 1,
            Some((_, before)) if now == before => self.fig.compactor_killed_before_rename += 1,
            Some((n, _)) => {
                if magic.is_some_and(|m| m != *MAGIC_MOVING && m != *MAGIC_MOVED) {
                    self.fail(format!(
                        "compaction {n} was killed after its rename, but the file it moved the \
                         store from says {:?}",
                        String::from_utf8_lossy(&magic.unwrap_or_default())
                    ));
                }
                self.fig.compactor_killed_moving_renamed += moving as u64;
                // It renamed: the store moved, though it never reported.
                self.fig.compactor_killed_after_rename += 1;
                self.comp.store_ino = now;
                if self.comp.history.contains(&now) {
                    self.fig.inodes_reused += 1;
                }
                self.comp.history.push(now);
            }
        }
        let pid = self.comp.pid;
        let left = leftovers(&self.path).iter().any(|(_, p)| *p == Some(pid));
        self.fig.compactor_kills_leaving_files += left as u64;
        self.comp.killed_pids.push((pid, left));
    }

    /// Kill and restart writers (and the compactor) at random moments
    /// until `end`.
    fn kill_loop(&mut self, end: Instant) {
        let gap = |rng: &mut Rng| Duration::from_millis(80 + rng.below(320));
        let cgap = |rng: &mut Rng| Duration::from_millis(250 + rng.below(1000));
        let mut next_kill = Instant::now() + gap(&mut self.rng);
        let mut next_ckill = if self.comp.enabled {
            Instant::now() + cgap(&mut self.crng)
        } else {
            end
        };
        loop {
            let now = Instant::now();
            if now >= end {
                return;
            }
            if self.comp.tripped && self.kids.get(COMPACTOR).eof {
                self.reap_tripped();
                self.spawn_compactor();
                next_ckill = Instant::now() + cgap(&mut self.crng);
                continue;
            }
            if now >= next_ckill {
                let aim = match self.crng.below(4) {
                    0 => CompactAim::Blind,
                    1 => CompactAim::Begin,
                    _ => CompactAim::Copied,
                };
                self.kill_compactor(aim);
                self.spawn_compactor();
                next_ckill = Instant::now() + cgap(&mut self.crng);
                continue;
            }
            if now < next_kill {
                // Look again soon while the compactor is killing itself.
                let soon = if self.comp.tripped {
                    now + Duration::from_millis(5)
                } else {
                    end
                };
                self.pump(next_kill.min(next_ckill).min(end).min(soon) - now);
                continue;
            }
            let w = self.rng.below(WRITERS as u64) as usize;
            match self.rng.below(100) {
                0..=49 => self.kill_writer(w, Aim::Commit),
                50..=79 => self.kill_writer(w, Aim::Blind),
                _ => {
                    // Twice: the second lands in the new writer's open.
                    self.kill_writer(w, Aim::Blind);
                    self.spawn_writer(w);
                    self.kill_writer(w, Aim::Open);
                }
            }
            self.spawn_writer(w);
            next_kill = Instant::now() + gap(&mut self.rng);
        }
    }

    /// Ask the children in `slots` to stop (close their stdin) and wait for
    /// each to exit 0 after a final `@F` line.
    fn stop(&mut self, slots: &[usize]) {
        for &s in slots {
            self.kids.stop(s);
        }
        for &s in slots {
            self.drain(s);
            if s == COMPACTOR && self.comp.tripped {
                // It killed itself before it saw the stop.
                self.reap_tripped();
                continue;
            }
            let (status, stderr) = self.kids.reap(s);
            let p = self.kids.get(s);
            let label = p.label.clone();
            if !status.success() {
                self.fail(format!(
                    "{label} failed ({status})\n--- its stderr ---\n{stderr}"
                ));
            }
            let Some(finals) = p.finals.clone() else {
                self.fail(format!("{label} exited 0 without its final line"));
            };
            match role_of(s) {
                Role::Writer => {
                    if self.models[s].pending.is_some() {
                        self.fail(format!("{label} stopped with a commit unacknowledged"));
                    }
                    self.fig.writer_readbacks +=
                        parse_counts(&finals).get("readbacks").copied().unwrap_or(0);
                }
                Role::Reader => {
                    let r = s - WRITERS;
                    for (k, v) in parse_counts(&finals) {
                        *self.fig.readers.entry(format!("r{r}.{k}")).or_default() += v;
                    }
                }
                Role::Compactor => {
                    if let Some((n, _)) = self.comp.under_way {
                        self.fail(format!("{label} stopped with compaction {n} unreported"));
                    }
                    for (k, v) in parse_counts(&finals) {
                        *self.fig.compactor.entry(k).or_default() += v;
                    }
                }
            }
        }
    }

    /// Stop everyone: readers first (a reader waiting for a change needs
    /// writers), then the compactor (stopped, or killed inside a compaction
    /// if `kill_compactor`, so that writers closing and the final open find
    /// what it left), then the writers as `ending` says.
    fn finish(&mut self, ending: Ending, kill_compactor: bool) {
        let readers: Vec<usize> = (WRITERS..WRITERS + READERS).collect();
        self.stop(&readers);
        if self.comp.enabled {
            if self.comp.tripped {
                self.drain(COMPACTOR);
                self.reap_tripped();
            } else if kill_compactor {
                self.kill_compactor(CompactAim::Copied);
            } else {
                self.stop(&[COMPACTOR]);
            }
        }
        let killed: Vec<usize> = match ending {
            Ending::Graceful => vec![],
            Ending::OneKilled => vec![self.rng.below(WRITERS as u64) as usize],
            Ending::AllKilled => (0..WRITERS).collect(),
        };
        for &w in &killed {
            self.kill_writer(w, Aim::Commit);
        }
        let rest: Vec<usize> = (0..WRITERS).filter(|w| !killed.contains(w)).collect();
        self.stop(&rest);
    }

    /// Fail if anything but the store is in its directory (the leftovers
    /// of compactions that did not finish, above all).
    fn assert_alone(&mut self, when: &str) {
        let others = other_files(&self.path);
        if !others.is_empty() {
            self.fail(format!(
                "{when}, the store's directory holds more than the store: {others:?} (killed \
                 compactors' pids: {:?}, current compactor's: {})",
                self.comp.killed_pids, self.comp.pid
            ));
        }
    }

    /// Open the store after the run and compare it with the model.
    fn verify(&mut self) -> (OpenKind, u64, mapkv::CheckReport, u64) {
        self.fig.leftovers_at_end = leftovers(&self.path).len() as u64;
        let db = Db::open(&self.path)
            .unwrap_or_else(|e| self.fail(format!("open after the run failed: {e}")));
        let opened = db.stats().opened;
        // Alone on the store, the open removed what killed compactions left.
        self.assert_alone("after the parent's open, alone on the store");
        let report = db
            .check()
            .unwrap_or_else(|e| self.fail(format!("check after the run ({opened:?}) failed: {e}")));
        let mut bad: Vec<String> = Vec::new();
        let mut found = vec![vec![None; PER_WRITER]; WRITERS];
        let mut present = 0u64;
        for (w, fw) in found.iter_mut().enumerate() {
            for (i, slot) in fw.iter_mut().enumerate() {
                let name = key_name(w, i);
                let v = db
                    .get(&name)
                    .unwrap_or_else(|e| self.fail(format!("get {}: {e}", show(&name))));
                let f = match v {
                    None => None,
                    Some(v) => match check_value(&name, w, &v) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            bad.push(format!("key {}: {e}", show(&name)));
                            continue;
                        }
                    },
                };
                present += f.is_some() as u64;
                *slot = f;
                let k = self.models[w].keys[i];
                if f != k.acked && Some(f) != k.in_flight {
                    let why = match (i < KEYS + 2, f, k.acked) {
                        (true, Some(f), Some(a)) if f < a => " (an acknowledged write was lost)",
                        (true, None, Some(_)) => " (an acknowledged write was lost)",
                        (true, _, _) => " (more than the acknowledged writes)",
                        _ => "",
                    };
                    bad.push(format!(
                        "key {}: found {}, expected {}{}{why}",
                        show(&name),
                        fmt_seq(f),
                        fmt_seq(k.acked),
                        in_flight_note(k),
                    ));
                }
            }
            if fw[PAIR_A] != fw[PAIR_B] {
                bad.push(format!(
                    "w{w}'s pair is torn: a {}, b {}",
                    fmt_seq(fw[PAIR_A]),
                    fmt_seq(fw[PAIR_B])
                ));
            }
            if let Some(u) = &self.models[w].unresolved {
                if let Err(e) = outcome(w, u, |i| fw[i]) {
                    bad.push(e);
                }
            }
        }
        let len = db.len();
        let mut iterated = 0u64;
        for item in db.iter() {
            let (k, v) = item.unwrap_or_else(|e| self.fail(format!("iter failed: {e}")));
            let ours = (0..WRITERS).find_map(|w| {
                (0..PER_WRITER)
                    .find(|&i| key_name(w, i) == *k)
                    .map(|i| (w, i))
            });
            match ours {
                Some((w, i)) => {
                    if check_value(&k, w, &v).ok() != found[w][i] {
                        bad.push(format!("iter and get disagree on key {}", show(&k)));
                    }
                }
                None => bad.push(format!("iter yields a foreign key {}", show(&k))),
            }
            iterated += 1;
        }
        if len != present || iterated != present || report.live_keys != present {
            bad.push(format!(
                "{present} keys are present, but len() says {len}, iter yields {iterated}, \
                 check counts {}",
                report.live_keys
            ));
        }
        if !bad.is_empty() {
            self.fail(format!(
                "the store after the run ({opened:?}) does not match the acknowledgements, \
                 {} problems:\n{}",
                bad.len(),
                bad.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
            ));
        }
        let stats = db.stats();
        db.close()
            .unwrap_or_else(|e| self.fail(format!("close after the check: {e}")));
        // Once more after a clean close.
        let db = Db::open(&self.path)
            .unwrap_or_else(|e| self.fail(format!("reopen after a clean close: {e}")));
        if db.stats().opened != OpenKind::Clean || db.len() != present {
            self.fail(format!(
                "after a clean close the store opened {:?} with {} keys ({present} expected)",
                db.stats().opened,
                db.len()
            ));
        }
        drop(db);
        self.assert_alone("after the last close");
        (opened, stats.generation, report, stats.file_len)
    }
}

#[test]
fn multiprocess_stress() {
    let seed = common::seed("multiprocess_stress");
    let budget = Duration::from_secs(env_u64("MAPKV_MP_SECS").unwrap_or(DEFAULT_SECS));
    let compacting = env_u64("MAPKV_MP_COMPACT").unwrap_or(1) != 0;
    let (_dir, path) = common::store();
    let gen0 = {
        let db = Db::open(&path).expect("create the store");
        let g = db.stats().generation;
        db.close().expect("close the new store");
        g
    };
    let ino0 = inode_of(&path).expect("stat the new store");
    let mut run = Run {
        seed,
        path,
        rng: Rng::new(seed),
        began: Instant::now(),
        child_limit: budget + Duration::from_secs(300),
        kids: Kids::new(CHILD_TEST, SLOTS),
        instances: vec![0; WRITERS],
        models: (0..WRITERS)
            .map(|_| WriterModel {
                keys: vec![KeyModel::default(); PER_WRITER],
                ..WriterModel::default()
            })
            .collect(),
        fig: Figures::default(),
        comp: CompactorModel {
            enabled: compacting,
            store_ino: ino0,
            history: vec![ino0],
            ..CompactorModel::default()
        },
        crng: Rng::new(mix64(seed ^ 0x0063_6f6d_7061_6374)),
    };
    let ending = match run.rng.below(3) {
        0 => Ending::Graceful,
        1 => Ending::OneKilled,
        _ => Ending::AllKilled,
    };
    let compactor_killed_at_end = run.crng.chance(50);
    let compactor_first = run.crng.chance(50);
    // Start everyone, in a random order (the compactor first or last).
    let mut order: Vec<usize> = (0..WRITERS + READERS).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, run.rng.below(i as u64 + 1) as usize);
    }
    if compacting {
        if compactor_first {
            order.insert(0, COMPACTOR);
        } else {
            order.push(COMPACTOR);
        }
    }
    for slot in order {
        match role_of(slot) {
            Role::Writer => run.spawn_writer(slot),
            Role::Reader => run.spawn_reader(slot - WRITERS),
            Role::Compactor => run.spawn_compactor(),
        }
    }
    let end = run.began + budget;
    run.kill_loop(end);
    let kill_phase = run.began.elapsed();
    run.finish(ending, compactor_killed_at_end);
    let (opened, gen_end, report, file_len) = run.verify();
    let ino_end = inode_of(&run.path).expect("stat the store after the run");

    let f = &run.fig;
    let readers: Vec<String> = f.readers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "multiprocess stress: {kills} kills ({aimed} aimed at a commit, {blind} blind, {early} \
         in a new writer's open; {flight} with a commit in flight (blind/aimed/open {fb}/{fa}/{fo}): at restart applied \
         {app} / not applied {drop} / no change {moot}; {before} before the writer resumed), \
         {starts} writer processes (durability {modes:?}), opens {opens:?}, {resumes} \
         resumes checked, {acked} acked commits ({writes} key writes, {pairs} pairs, {batches} \
         batches, {removes} removes), {readbacks} read-backs by writers that stopped gracefully; readers: {readers}; \
         ending {ending:?}, final open {opened:?}, generation {gen0} -> {gen_end} (each repair \
         of a store whose writer died holding the lock bumps it), check: \
         {commits} commits, {records} records, {live} live keys, file {mib:.1} MiB; \
         {secs:.1?} of kills, {total:.1?} in all, MAPKV_SEED={seed}",
        kills = f.kills,
        aimed = f.kills_aimed,
        blind = f.kills_blind,
        early = f.kills_early,
        flight = f.killed_in_flight,
        fb = f.in_flight_by_aim[0],
        fa = f.in_flight_by_aim[1],
        fo = f.in_flight_by_aim[2],
        app = f.in_flight_applied,
        drop = f.in_flight_dropped,
        moot = f.in_flight_moot,
        before = f.killed_before_resume,
        starts = f.writer_starts,
        modes = f.modes,
        opens = f.opens,
        resumes = f.resumes_checked,
        acked = f.acked_commits,
        writes = f.acked_writes,
        pairs = f.acked_pairs,
        batches = f.acked_batches,
        removes = f.acked_removes,
        readbacks = f.writer_readbacks,
        readers = readers.join(" "),
        commits = report.commits,
        records = report.records,
        live = report.live_keys,
        mib = file_len as f64 / (1 << 20) as f64,
        secs = kill_phase,
        total = run.began.elapsed(),
    );
    let per = |d: Duration, n: u64| d.checked_div(n.max(1) as u32).unwrap_or_default();
    let compactor: Vec<String> = f
        .compactor
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "multiprocess stress, compaction: {comps} compactions by {cstarts} compactor processes \
         (writer pause avg {pavg:?} max {pmax:?}; duration avg {davg:?} max {dmax:?}; \
         {caught} commits caught up; file after {lmin}..{lmax} KiB, before up to {lbmax} KiB; \
         {refused} times a second handle was refused with Locked), {ckills} compactor kills by \
         the parent ({caimed} aimed at a compaction) and {trips} by the compactor's tripwire at \
         a rename; they landed between compactions {idle}, inside one in its copy {copying}, \
         after the copy but before the rename {pre}, after the rename {post} ({post_moving} with \
         MOVING still set); {leaving} left files next to the store, {removed} of them seen \
         removed by the next compaction, {at_end} leftovers before the final open; store moves \
         {moves} (inode {ino0} -> {ino_end}; {reused} onto an inode number the store had had \
         before), moves seen by writers {wmoves}, compactor ending {cend}, compactor's counts: \
         {compactor}",
        comps = f.compactions,
        cstarts = f.compactor_starts,
        pavg = per(f.pause_total, f.compactions),
        pmax = f.pause_max,
        davg = per(f.duration_total, f.compactions),
        dmax = f.duration_max,
        caught = f.caught_up,
        lmin = f.len_after_min >> 10,
        lmax = f.len_after_max >> 10,
        lbmax = f.len_before_max >> 10,
        refused = f.refused,
        ckills = f.compactor_kills,
        caimed = f.compactor_kills_aimed,
        idle = f.compactor_killed_idle,
        trips = f.compactor_trips,
        post_moving = f.compactor_killed_moving_renamed,
        copying = f.compactor_killed_copying,
        pre = f.compactor_killed_before_rename,
        post = f.compactor_killed_after_rename,
        leaving = f.compactor_kills_leaving_files,
        removed = f.leftovers_seen_removed,
        at_end = f.leftovers_at_end,
        moves = f.store_moves(),
        reused = f.inodes_reused,
        wmoves = f.writer_moves,
        cend = if !compacting {
            "(no compactor)"
        } else if compactor_killed_at_end {
            "killed"
        } else {
            "stopped"
        },
        compactor = compactor.join(" "),
    );
    // The run must have exercised what it claims to test (a kill comes
    // every 0.08 to 0.4 s; very short runs are only held to the basics).
    if budget >= Duration::from_secs(5) {
        assert!(
            f.kills >= 5,
            "only {} kills: the run proved little (MAPKV_SEED={seed})",
            f.kills
        );
        assert!(
            f.killed_in_flight >= 1,
            "no kill landed with a commit in flight (MAPKV_SEED={seed})"
        );
        assert!(
            f.acked_commits >= 1000,
            "only {} acked commits (MAPKV_SEED={seed})",
            f.acked_commits
        );
    }
    let reader = |r: usize, what: &str| f.readers.get(&format!("r{r}.{what}")).copied();
    for r in 0..READERS {
        for what in ["gets", "pair_reads", "waits", "feeds"] {
            let n = reader(r, what).unwrap_or(0);
            assert!(n >= 1, "reader {r} did no {what} (MAPKV_SEED={seed})");
        }
        // A move seen is a move made.
        let seen = reader(r, "moves").unwrap_or(0);
        assert!(
            seen <= f.store_moves(),
            "reader {r} saw the store move {seen} times, but it moved {} times (MAPKV_SEED={seed})",
            f.store_moves()
        );
    }
    // Only the compactor moves the store, and the parent saw every move.
    // (Comparing with the first inode proves nothing: the filesystem
    // reuses inode numbers, see `Pinned`.)
    assert_eq!(
        ino_end, run.comp.store_ino,
        "after the run the store's name is on inode {ino_end}, but the last move the parent \
         knows of left it on inode {} (MAPKV_SEED={seed})",
        run.comp.store_ino
    );
    // The compactor must have done its job and been killed at it; every
    // process must have followed the store (compactions come every few
    // tens of ms, compactor kills every 0.25 to 1.25 s).
    if compacting && budget >= Duration::from_secs(5) {
        assert!(
            f.compactions >= 1,
            "no compaction finished (MAPKV_SEED={seed})"
        );
        assert!(
            f.compactor_kills >= 1,
            "the compactor was never killed (MAPKV_SEED={seed})"
        );
        for r in 0..READERS {
            assert!(
                reader(r, "moves").unwrap_or(0) >= 1,
                "reader {r} never saw the store move, in {} moves (MAPKV_SEED={seed})",
                f.store_moves()
            );
        }
        assert!(
            f.writer_moves >= 1,
            "no writer saw the store move, in {} moves (MAPKV_SEED={seed})",
            f.store_moves()
        );
    }
}

// ---------------------------------------------------------------------------
// A read-only handle follows another process's writes.

/// A test on a child's output line.
type LinePred<'a> = &'a dyn Fn(&str) -> bool;

/// Fail the read-only test: stop the children, panic.
fn ro_fail(kids: &mut Kids, seed: u64, msg: String) -> ! {
    kids.kill_all();
    panic!("read-only follow test failed: MAPKV_SEED={seed}: {msg}");
}

/// Collect the children's lines until `slot` prints one that `pred`
/// accepts (`want`), or, without `want`, until every child's output ended.
/// False if `limit` passed first.
fn collect_lines(
    kids: &mut Kids,
    lines: &mut [Vec<String>],
    want: Option<(usize, LinePred<'_>)>,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if want.is_none() && kids.procs.iter().flatten().all(|p| p.eof) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(ev) = kids.rx.recv_timeout(left) else {
            return false;
        };
        match ev.line {
            None => kids.get(ev.slot).eof = true,
            Some(l) => {
                let hit = want.is_some_and(|(s, pred)| s == ev.slot && pred(&l));
                lines[ev.slot].push(l);
                if hit {
                    return true;
                }
            }
        }
    }
}

#[test]
fn read_only_handle_follows_writer_process() {
    let seed = common::seed("read_only_handle_follows_writer_process");
    let mut rng = Rng::new(seed);
    let (_dir, path) = common::store();
    {
        let db = Db::open(&path).expect("create the store");
        db.insert(RO_COUNTER, make_value(RO_COUNTER, RO_WRITER, 0))
            .expect("insert the counter");
        db.close().expect("close the new store");
    }
    let limit = Duration::from_secs(120);
    let mut kids = Kids::new(CHILD_TEST, 3);
    let mut lines: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut spawn = |kids: &mut Kids, slot: usize, role: &str, label: &str| {
        let child_seed = rng.next();
        let envs = Spawn {
            role,
            path: &path,
            id: slot,
            instance: 1,
            seed: child_seed,
            mode: "none",
            read_only: role == "ro_reader",
            limit,
        }
        .envs(ENV);
        kids.spawn(
            slot,
            1,
            format!("{label} (MAPKV_MP_SEED={child_seed})"),
            &envs,
        );
    };

    // Reader A opens (and reads the counter) before any other process writes.
    spawn(&mut kids, 0, "ro_reader", "read-only reader A");
    let opened = |l: &str| l.starts_with("@O ");
    if !collect_lines(&mut kids, &mut lines, Some((0, &opened)), limit) {
        ro_fail(&mut kids, seed, "reader A did not open".into());
    }
    spawn(&mut kids, 1, "ro_writer", "writer");
    // Reader B joins midway.
    let a_third = |l: &str| {
        l.strip_prefix("@P ")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= RO_COMMITS / 3)
    };
    if !collect_lines(&mut kids, &mut lines, Some((1, &a_third)), limit) {
        ro_fail(&mut kids, seed, "the writer made no progress".into());
    }
    spawn(&mut kids, 2, "ro_reader", "read-only reader B");
    if !collect_lines(&mut kids, &mut lines, None, limit) {
        ro_fail(
            &mut kids,
            seed,
            format!("the children did not finish within {limit:?}"),
        );
    }
    let mut summary = Vec::new();
    for (slot, said) in lines.iter().enumerate() {
        let (status, stderr) = kids.reap(slot);
        let label = kids.get(slot).label.clone();
        if !status.success() {
            ro_fail(
                &mut kids,
                seed,
                format!("{label} failed ({status})\n--- its stderr ---\n{stderr}"),
            );
        }
        let line = |tag: &str| {
            said.iter()
                .find_map(|l| l.strip_prefix(tag))
                .unwrap_or("")
                .to_string()
        };
        summary.push(format!("{label}: opened {}, {}", line("@O "), line("@F ")));
        if slot != 1 && parse_counts(&line("@F ")).get("last") != Some(&RO_COMMITS) {
            ro_fail(
                &mut kids,
                seed,
                format!(
                    "{label} ended without seeing the last commit: {}",
                    line("@F ")
                ),
            );
        }
    }
    // Reader A read the counter before the writer started, and its last
    // commit later, through the same handle.
    let a_first = lines[0]
        .iter()
        .find_map(|l| l.strip_prefix("@O "))
        .and_then(|o| o.split(' ').nth(1))
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(
        a_first,
        Some(0),
        "reader A's first read should be the counter before any write (MAPKV_SEED={seed})"
    );

    let db = Db::open(&path).expect("open after the run");
    db.check().expect("check after the run");
    let n = db
        .get(RO_COUNTER)
        .expect("get the counter")
        .map(|v| check_value(RO_COUNTER, RO_WRITER, &v));
    assert_eq!(n, Some(Ok(RO_COMMITS)), "the counter after the run");
    println!(
        "read-only follow: {}; file {} KiB, MAPKV_SEED={seed}",
        summary.join("; "),
        db.stats().file_len >> 10
    );
}
