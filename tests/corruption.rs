//! Damaged files, systematically: single-bit flips all over the file,
//! zeroed pages, truncation at every interesting offset, a torn newer meta.
//!
//! One small store is built (a few hundred keys, overwrites, removes, a
//! batch, a flush, unflushed writes), remembering every value ever written
//! for every key. Two images of it are damaged: the file copied while the
//! store was open (a process-crash image) and the file after a clean close.
//! Every damaged copy is opened twice, as it is (same boot: the clean or
//! replay path) and after a simulated reboot (`MAPKV_BOOT_ID`: the index is
//! rebuilt from the log). Whatever happens:
//!
//! * no panic;
//! * an open that fails says `Corrupted` (or, where the damage hit the file
//!   header, `NotMapkv` / `UnsupportedVersion`);
//! * a store that opens never returns invented bytes: every `Ok` from `get`
//!   or `iter` is a value that was written for that key at some point, and
//!   every read error is `Corrupted`;
//! * truncation below the length the meta says is durable is `Corrupted`
//!   and says so; truncation above it loses nothing durable and opens.
//!
//! Each test prints a summary (run with `--nocapture` to see it) and
//! asserts that both outcomes, opened and `Corrupted`, occurred.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use common::{self_checking, Rng};
use mapkv::testing::layout::{self, control, header, meta};
use mapkv::{Db, Error, Options};

/// `MAPKV_BOOT_ID` is process-wide: every open holds this lock, so that a
/// "normal" open never sees another test's simulated reboot.
static BOOT: Mutex<()> = Mutex::new(());

const META_A: usize = layout::META_A_OFFSET as usize;
const META_B: usize = layout::META_B_OFFSET as usize;
const META_LEN: usize = layout::META_LEN;
const CONTROL: usize = layout::CONTROL_OFFSET as usize;
const ARENA: usize = layout::ARENA_START as usize;
const PAGE: usize = layout::FORMAT_PAGE as usize;
const HEADER: usize = layout::HEADER_LEN as usize;
const MAGIC: &[u8; 8] = &layout::META_MAGIC;

fn le(b: &[u8], off: usize, n: usize) -> u64 {
    (0..n).fold(0, |v, i| v | (b[off + i] as u64) << (8 * i))
}

/// A scratch directory, on tmpfs when there is one: hundreds of opens each
/// sync a meta, which is free there and costs milliseconds on a disk.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("mapkv-corruption")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:05}").into_bytes()
}

/// An image of the store and what its bytes say about itself.
struct Image {
    name: &'static str,
    bytes: Vec<u8>,
    /// Offset of the meta copy with the higher sequence number.
    newer_meta: usize,
    /// That meta's `file_len`: the length known to be durable.
    durable_len: usize,
    /// That meta's durable tail.
    tail: usize,
    /// `(offset, length)` of every log item (records and index chunks).
    items: Vec<(usize, usize)>,
}

impl Image {
    fn new(name: &'static str, bytes: Vec<u8>) -> Image {
        let seq = |at: usize| le(&bytes, at + meta::META_SEQ, 8);
        let has_magic = |at: usize| &bytes[at..at + MAGIC.len()] == MAGIC;
        assert!(has_magic(META_A) && has_magic(META_B), "{name}: both metas");
        let newer_meta = if seq(META_A) >= seq(META_B) {
            META_A
        } else {
            META_B
        };
        let mut items = Vec::new();
        let mut off = ARENA;
        while off + HEADER <= bytes.len() {
            let kind = bytes[off + header::KIND];
            let k = le(&bytes, off + header::KEY_LEN, 2) as usize;
            let v = le(&bytes, off + header::VAL_LEN, 4);
            let len = match kind {
                layout::KIND_PUT | layout::KIND_DEL => (HEADER + k + v as usize).div_ceil(8) * 8,
                layout::KIND_INDEX => (off + HEADER).div_ceil(PAGE) * PAGE + (8usize << v) - off,
                _ => break,
            };
            items.push((off, len));
            off += len;
        }
        Image {
            name,
            durable_len: le(&bytes, newer_meta + meta::FILE_LEN, 8) as usize,
            tail: le(&bytes, newer_meta + meta::TAIL, 8) as usize,
            newer_meta,
            items,
            bytes,
        }
    }

    /// Byte range of the index table the newer meta names (the
    /// descriptor is its page-aligned offset | log2 of its slot count).
    fn index_table(&self) -> (usize, usize) {
        let d = le(&self.bytes, self.newer_meta + meta::INDEX_DESC, 8) as usize;
        let start = d & !(PAGE - 1);
        (start, start + (8usize << (d & (PAGE - 1))))
    }

    fn log_end(&self) -> usize {
        self.items.last().map(|&(o, l)| o + l).unwrap_or(ARENA)
    }
}

struct Fixture {
    /// Every value ever written, per key.
    written: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// Copied while the store was open: not clean, unflushed writes at the
    /// end of the log.
    crash: Image,
    /// After a clean close (trimmed to its tail).
    clean: Image,
    seed: u64,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// Remember `v` as written for key `k` and hand it back.
fn remember(written: &mut HashMap<Vec<u8>, HashSet<Vec<u8>>>, k: u64, v: Vec<u8>) -> Vec<u8> {
    written.entry(key(k)).or_default().insert(v.clone());
    v
}

fn value(k: u64, ver: u64) -> Vec<u8> {
    self_checking(k, ver, 24 + ((k * 37 + ver * 11) % 150) as usize)
}

fn build() -> Fixture {
    let seed = common::seed("corruption");
    let dir = scratch();
    let path = dir.path().join("base.mapkv");
    let mut w: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
    let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
    let db = Options::new().initial_size(64 << 10).open(&path).unwrap();
    for k in 0..360 {
        db.insert(key(k), remember(&mut w, k, value(k, 0))).unwrap();
    }
    for k in (0..360).step_by(3) {
        db.insert(key(k), remember(&mut w, k, value(k, 1))).unwrap();
    }
    db.flush().unwrap();
    for k in (0..360).step_by(7) {
        assert!(db.remove(key(k)).unwrap());
    }
    let mut b = db.batch();
    for k in 360..400 {
        b.insert(key(k), remember(&mut w, k, value(k, 0)));
    }
    for k in (0..50).step_by(5) {
        b.remove(key(k));
    }
    for k in (1..100).step_by(11) {
        b.insert(key(k), remember(&mut w, k, value(k, 2)));
    }
    b.commit().unwrap();
    db.flush().unwrap();
    // Unflushed: in the crash image past the durable tail, and enough of
    // it that the file grows past the length the meta says is durable.
    let durable = db.stats().file_len;
    let mut k = 400;
    while db.stats().file_len == durable {
        let v = self_checking(k, 0, 1000 + (k as usize % 7) * 150);
        db.insert(key(k), remember(&mut w, k, v)).unwrap();
        k += 1;
    }
    for k in (2..60).step_by(9) {
        db.insert(key(k), remember(&mut w, k, value(k, 3))).unwrap();
    }
    let crash = std::fs::read(&path).unwrap();
    db.close().unwrap();
    let clean = std::fs::read(&path).unwrap();
    drop(_g);
    let fx = Fixture {
        written: w,
        crash: Image::new("crash", crash),
        clean: Image::new("clean", clean),
        seed,
    };
    for im in [&fx.crash, &fx.clean] {
        assert!(
            im.bytes.len() <= 256 << 10,
            "{}: {} bytes",
            im.name,
            im.bytes.len()
        );
        assert!(
            im.items.len() > 400,
            "{}: {} items",
            im.name,
            im.items.len()
        );
        assert!(im.durable_len <= im.bytes.len());
    }
    fx
}

fn open(path: &Path, reboot: bool) -> mapkv::Result<Db> {
    let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
    if reboot {
        std::env::set_var("MAPKV_BOOT_ID", "mapkv-corruption-test-other-boot");
    }
    let r = Db::open(path);
    if reboot {
        std::env::remove_var("MAPKV_BOOT_ID");
    }
    r
}

/// What happened, over all the images of a test.
#[derive(Default, Debug)]
struct Tally {
    images: u64,
    opens: u64,
    opened: u64,
    corrupted: u64,
    not_mapkv: u64,
    unsupported: u64,
    other_errors: u64,
    reads_ok: u64,
    reads_corrupted: u64,
    checks_ok: u64,
    checks_corrupted: u64,
}

impl Tally {
    fn print(&self, test: &str) {
        println!(
            "{test}: {} images, {} opens: {} opened ok, {} Corrupted, {} other errors \
             ({} NotMapkv, {} UnsupportedVersion); reads: {} ok, {} Corrupted; \
             check: {} ok, {} Corrupted",
            self.images,
            self.opens,
            self.opened,
            self.corrupted,
            self.not_mapkv + self.unsupported + self.other_errors,
            self.not_mapkv,
            self.unsupported,
            self.reads_ok,
            self.reads_corrupted,
            self.checks_ok,
            self.checks_corrupted
        );
    }

    fn both_outcomes(&self, test: &str) {
        self.print(test);
        assert!(self.opened > 0, "{test}: no damaged image opened: {self:?}");
        assert!(
            self.corrupted > 0,
            "{test}: no damaged image was reported Corrupted: {self:?}"
        );
    }
}

/// What an open of a damaged image must do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Open or fail with an allowed error.
    Any,
    /// Open (the damage spares everything the meta says is durable).
    Open,
    /// Fail with `Corrupted` saying the file was truncated.
    Truncated,
}

struct Ctx<'a> {
    fx: &'a Fixture,
    dir: tempfile::TempDir,
    tally: Tally,
    n: u64,
}

impl Ctx<'_> {
    fn new() -> Ctx<'static> {
        Ctx {
            fx: fixture(),
            dir: scratch(),
            tally: Tally::default(),
            n: 0,
        }
    }

    /// Open `bytes` as it is and after a simulated reboot, each on its own
    /// copy, and check everything the store then returns.
    fn try_image(&mut self, bytes: &[u8], expect: Expect, what: &str) {
        let seed = self.fx.seed;
        self.tally.images += 1;
        for reboot in [false, true] {
            self.n += 1;
            let path: PathBuf = self.dir.path().join(format!("img{}.mapkv", self.n));
            std::fs::write(&path, bytes).unwrap();
            let ctx = format!("{what}, reboot {reboot} (MAPKV_SEED={seed})");
            self.tally.opens += 1;
            match open(&path, reboot) {
                Ok(db) => {
                    assert!(
                        expect != Expect::Truncated,
                        "{ctx}: opened, wanted Corrupted"
                    );
                    self.tally.opened += 1;
                    self.verify_reads(&db, &ctx);
                    drop(db);
                }
                Err(e) => {
                    assert!(expect != Expect::Open, "{ctx}: must open, got {e}");
                    if expect == Expect::Truncated {
                        assert!(
                            matches!(e, Error::Corrupted { .. })
                                && e.to_string().contains("truncated"),
                            "{ctx}: wanted Corrupted (truncated), got {e}"
                        );
                    }
                    self.classify(&e, bytes, &ctx);
                }
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    fn classify(&mut self, e: &Error, bytes: &[u8], ctx: &str) {
        let magic_at = |at: usize| bytes.get(at..at + MAGIC.len()) == Some(&MAGIC[..]);
        match e {
            Error::Corrupted { .. } => self.tally.corrupted += 1,
            Error::NotMapkv { .. } => {
                assert!(
                    !magic_at(META_A) && !magic_at(META_B),
                    "{ctx}: NotMapkv for a file with the magic number: {e}"
                );
                self.tally.not_mapkv += 1;
            }
            Error::UnsupportedVersion { .. } => {
                let other_version = [META_A, META_B]
                    .into_iter()
                    .any(|at| magic_at(at) && le(bytes, at + meta::VERSION, 4) != 1);
                assert!(other_version, "{ctx}: UnsupportedVersion: {e}");
                self.tally.unsupported += 1;
            }
            Error::Io { .. } | Error::NeedsRecovery { .. } if bytes.len() < ARENA => {
                self.tally.other_errors += 1;
            }
            // An empty image file (0644 as written here) is more open than
            // the default mode: mapkv refuses to adopt it.
            Error::Refused { .. } if bytes.is_empty() => self.tally.other_errors += 1,
            e => panic!("{ctx}: open failed with an unexpected error: {e:?}"),
        }
    }

    fn verify_reads(&mut self, db: &Db, ctx: &str) {
        let written = &self.fx.written;
        let corrupted = |e: Error, op: &str, t: &mut Tally| {
            assert!(
                matches!(e, Error::Corrupted { .. }),
                "{ctx}: {op} failed with {e:?}"
            );
            t.reads_corrupted += 1;
        };
        for item in db.iter().take(1 << 16) {
            match item {
                Ok((k, v)) => {
                    let ok = written.get(&k[..]).is_some_and(|vs| vs.contains(&v[..]));
                    assert!(
                        ok,
                        "{ctx}: iter returned {:?} = {} bytes never written for it",
                        String::from_utf8_lossy(&k),
                        v.len()
                    );
                    self.tally.reads_ok += 1;
                }
                Err(e) => corrupted(e, "iter", &mut self.tally),
            }
        }
        for (k, vs) in written {
            match db.get(k) {
                Ok(Some(v)) => {
                    assert!(
                        vs.contains(&v[..]),
                        "{ctx}: get {:?} returned {} bytes never written for it",
                        String::from_utf8_lossy(k),
                        v.len()
                    );
                    self.tally.reads_ok += 1;
                }
                Ok(None) => self.tally.reads_ok += 1,
                Err(e) => corrupted(e, "get", &mut self.tally),
            }
            if let Err(e) = db.contains_key(k) {
                corrupted(e, "contains_key", &mut self.tally);
            }
        }
        match db.get(b"never written") {
            Ok(None) => {}
            Ok(Some(v)) => panic!("{ctx}: a key never written has {} bytes", v.len()),
            Err(e) => corrupted(e, "get", &mut self.tally),
        }
        let _ = db.len();
        match db.check() {
            Ok(_) => self.tally.checks_ok += 1,
            Err(Error::Corrupted { .. }) => self.tally.checks_corrupted += 1,
            Err(e) => panic!("{ctx}: check failed with {e:?}"),
        }
    }
}

fn images(fx: &Fixture) -> [&Image; 2] {
    [&fx.crash, &fx.clean]
}

#[test]
fn single_bit_flips_anywhere() {
    let mut cx = Ctx::new();
    let mut rng = Rng::new(cx.fx.seed ^ 0xb17f);
    for im in images(cx.fx) {
        let len = im.bytes.len();
        let (ix0, ix1) = im.index_table();
        let log_end = im.log_end();
        // (region, flips): every structure of the file gets its share.
        let regions: [(&str, usize, usize, usize); 7] = [
            ("meta A", META_A, META_A + META_LEN, 64),
            ("meta B", META_B, META_B + META_LEN, 64),
            // The state words, up to the writer's durable bookkeeping.
            (
                "control block",
                CONTROL,
                CONTROL + control::DURABLE_TAIL,
                40,
            ),
            ("index table", ix0, ix1, 64),
            ("log", ARENA, log_end, 400),
            ("past the log", log_end, len, 16),
            ("anywhere", 0, len, 200),
        ];
        for (region, from, to, n) in regions {
            if from >= to {
                continue;
            }
            for _ in 0..n {
                let at = from + rng.below((to - from) as u64) as usize;
                let bit = rng.below(8) as u8;
                let mut b = im.bytes.clone();
                b[at] ^= 1 << bit;
                cx.try_image(
                    &b,
                    Expect::Any,
                    &format!("{}: bit {bit} of byte {at} ({region})", im.name),
                );
            }
        }
    }
    cx.tally.both_outcomes("single_bit_flips_anywhere");
}

#[test]
fn zeroed_pages() {
    let mut cx = Ctx::new();
    for im in images(cx.fx) {
        for page in (0..im.bytes.len()).step_by(PAGE) {
            let mut b = im.bytes.clone();
            let end = (page + PAGE).min(b.len());
            b[page..end].fill(0);
            // Zeroing one meta copy leaves the other (which must still find
            // its log: see `torn_newer_meta_after_a_trimming_close`); the
            // control block is only a hint; free space past the log holds
            // nothing. The store must still open.
            let meta_ok = if page == im.newer_meta {
                older_meta(im).1
            } else {
                page == META_A || page == META_B
            };
            let expect = if meta_ok || page == CONTROL || page >= im.log_end() {
                Expect::Open
            } else {
                Expect::Any
            };
            cx.try_image(&b, expect, &format!("{}: page at {page} zeroed", im.name));
        }
    }
    cx.tally.both_outcomes("zeroed_pages");
}

#[test]
fn truncation() {
    let mut cx = Ctx::new();
    let mut rng = Rng::new(cx.fx.seed ^ 0x7c);
    for im in images(cx.fx) {
        let len = im.bytes.len();
        let mut cuts: Vec<usize> = vec![
            0,
            1,
            MAGIC.len() - 1,
            MAGIC.len(),
            META_LEN - 1,
            META_LEN,
            META_B - 1,
            META_B,
            META_B + META_LEN,
            CONTROL - 1,
            CONTROL,
            ARENA - 1,
            ARENA,
            im.tail - 1,
            im.tail,
            im.tail + 1,
            im.durable_len - 1,
            im.durable_len,
            len - 1,
        ];
        // Record boundaries, and just past them (a torn header).
        for (i, &(off, l)) in im.items.iter().enumerate() {
            if i % 4 == 0 || off + l >= im.tail.saturating_sub(64) {
                cuts.extend([off, off + 1, off + HEADER - 1, off + l / 2]);
            }
        }
        for _ in 0..40 {
            cuts.push(rng.below(len as u64) as usize);
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.retain(|&c| c < len);
        for cut in cuts {
            let expect = if (MAGIC.len()..im.tail).contains(&cut) {
                Expect::Truncated
            } else if cut >= im.tail {
                Expect::Open
            } else {
                Expect::Any
            };
            cx.try_image(
                &im.bytes[..cut],
                expect,
                &format!("{}: truncated to {cut} of {len} bytes", im.name),
            );
        }
    }
    cx.tally.both_outcomes("truncation");
}

/// The older meta copy of an image, and whether the file still holds its
/// log (its durable tail is inside the file).
fn older_meta(im: &Image) -> (usize, bool) {
    let older = if im.newer_meta == META_A {
        META_B
    } else {
        META_A
    };
    (
        older,
        le(&im.bytes, older + meta::TAIL, 8) as usize <= im.bytes.len(),
    )
}

/// The meta copy with the higher sequence number fails its CRC (a torn or
/// rotted write): open falls back to the other copy and succeeds.
#[test]
fn torn_newer_meta_falls_back_to_the_other_copy() {
    let mut cx = Ctx::new();
    let mut tried = Vec::new();
    for im in images(cx.fx) {
        let newer = im.newer_meta;
        let (older, usable) = older_meta(im);
        if !usable {
            continue;
        }
        tried.push(im.name);
        let seq = |at: usize| le(&im.bytes, at + meta::META_SEQ, 8);
        assert!(seq(older) < seq(newer));
        // A flipped byte in each field of the newer copy.
        for at in [
            meta::META_SEQ,
            meta::HASH_SEED,
            meta::FLAGS,
            meta::BOOT_ID + 4,
            meta::FILE_LEN,
            meta::TAIL,
            meta::SEQ_GEN,
            meta::GENERATION,
            meta::INDEX_DESC,
            meta::INDEX_USED + 4,
            meta::LIVE_KEYS + 4,
            meta::CRC,
        ] {
            let mut b = im.bytes.clone();
            b[newer + at] ^= 0x20;
            cx.try_image(
                &b,
                Expect::Open,
                &format!("{}: newer meta byte {at} flipped", im.name),
            );
        }
        // A torn sector: the second half of the newer copy still holds the
        // older copy's bytes.
        let mut b = im.bytes.clone();
        let half = META_LEN / 2;
        let old_half = im.bytes[older + half..older + META_LEN].to_vec();
        b[newer + half..newer + META_LEN].copy_from_slice(&old_half);
        cx.try_image(
            &b,
            Expect::Open,
            &format!("{}: newer meta torn in the middle", im.name),
        );
        // The whole newer copy zeroed (its write never reached the disk).
        let mut b = im.bytes.clone();
        b[newer..newer + PAGE].fill(0);
        cx.try_image(&b, Expect::Open, &format!("{}: newer meta zeroed", im.name));
    }
    cx.tally.print(&format!(
        "torn_newer_meta_falls_back_to_the_other_copy {tried:?}"
    ));
    assert!(
        tried.contains(&"crash"),
        "the crash image has two usable metas"
    );
    assert_eq!(cx.tally.opened, cx.tally.opens);
}

// ---------------------------------------------------------------------------
// Regressions: bugs found by the fuzz targets (reproducers in
// fuzz/regressions/open_bytes/), fixed in a4ebef6. Each failed before it.
// The last test was a known bug found by this file; it is fixed (open needs
// the meta's durable tail inside the file, not its whole length; a trimming
// close writes the shorter length into both copies).

/// The largest single allocation since the last reset, to catch reads that
/// allocate what a damaged header claims instead of what the file holds.
struct Counting;

static LARGEST_ALLOC: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(n, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// CRC-32 (IEEE) continuing from `init`, as mapkv's metas use it.
fn crc32(init: u32, data: &[u8]) -> u32 {
    let mut c = !init;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn reseal_meta(b: &mut [u8], at: usize) {
    let salt = le(b, at + meta::CRC_SALT, 4) as u32;
    let crc = crc32(salt ^ layout::META_CRC_XOR, &b[at..at + meta::CRC]);
    b[at + meta::CRC..at + meta::CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

fn write_image(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("known-bug.mapkv");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A read-write open that fails must leave the file as it was. The
/// rebuild used to mark the control block (and, for a CLEAN meta whose
/// sample failed, retract the meta durably) before it found the damage that
/// made it give up. fuzz/regressions/open_bytes/failed-open-modifies-header.
#[test]
fn failed_open_leaves_the_file_untouched() {
    let fx = fixture();
    let dir = scratch();
    for (im, reboot) in [(&fx.crash, true), (&fx.clean, false)] {
        // Zero the page of the record the first live slot points at (the
        // CLEAN path samples it), below the durable tail and outside the
        // index table. The rebuild after a reboot scans it in any case.
        let (ix0, ix1) = im.index_table();
        let page = (ix0..ix1)
            .step_by(8)
            .map(|at| le(&im.bytes, at, 8))
            .filter(|&w| w > 1)
            .map(|w| ((w & ((1 << 36) - 1)) << 3) as usize / PAGE * PAGE)
            .find(|&p| p >= ARENA && p + PAGE < im.tail && (p + PAGE <= ix0 || p >= ix1))
            .expect("a live record outside the index table");
        let mut b = im.bytes.clone();
        b[page..page + PAGE].fill(0);
        let path = write_image(dir.path(), &b);
        let r = open(&path, reboot);
        assert!(
            matches!(r, Err(Error::Corrupted { .. })),
            "{}: {:?}",
            im.name,
            r.map(|d| d.len())
        );
        let now = std::fs::read(&path).unwrap();
        let first = now.iter().zip(&b).position(|(x, y)| x != y);
        assert!(
            first.is_none(),
            "{}: the failed open changed the file at byte {first:?}",
            im.name
        );
    }
}

/// A damaged length in a record header must not make a read allocate (and,
/// for `get`, zero-fill) what the header claims: up to 4 GiB for a file of
/// 100 KiB. `fetch` used to resize its buffer before checking the length
/// against the file, `read_record` to reserve it before checking the kind.
/// fuzz/regressions/open_bytes/val-len-huge-allocation.
#[test]
fn damaged_length_is_not_allocated() {
    let fx = fixture();
    let im = &fx.clean;
    let dir = scratch();
    // Damage a live record (the newest record of its key, a put) whose
    // slot the open-time sample (64 slots, in an order the random hash
    // seed decides) does not check. An older put of a key written again
    // later would not do: the get would find the newer record.
    let key_of = |o: usize| {
        let klen = le(&im.bytes, o + header::KEY_LEN, 2) as usize;
        im.bytes[o + HEADER..o + HEADER + klen].to_vec()
    };
    let mut seen = std::collections::HashSet::new();
    let puts: Vec<usize> = im
        .items
        .iter()
        .rev()
        .map(|&(o, _)| o)
        .filter(|&o| {
            let kind = im.bytes[o + header::KIND];
            if kind != layout::KIND_PUT && kind != layout::KIND_DEL {
                return false; // an index chunk
            }
            let newest_of_its_key = seen.insert(key_of(o));
            newest_of_its_key && kind == layout::KIND_PUT
        })
        .collect();
    for off in puts.into_iter().take(60) {
        let mut b = im.bytes.clone();
        b[off + header::VAL_LEN + 3] |= 0x10; // val_len += 256 MiB
        let klen = le(&b, off + header::KEY_LEN, 2) as usize;
        let k = b[off + HEADER..off + HEADER + klen].to_vec();
        let path = write_image(dir.path(), &b);
        let Ok(db) = open(&path, false) else { continue };
        LARGEST_ALLOC.store(0, Ordering::Relaxed);
        let got = db.get(&k);
        let largest = LARGEST_ALLOC.load(Ordering::Relaxed);
        assert!(matches!(got, Err(Error::Corrupted { .. })), "{got:?}");
        assert!(
            largest < 16 << 20,
            "get on a damaged {}-byte file allocated {largest} bytes at once",
            b.len()
        );
        return;
    }
    panic!("no damaged record escaped the open-time sample");
}

/// A meta with a valid CRC and `meta_seq == u64::MAX` (a hostile file)
/// must give an error or work, not panic: `write_meta` computes
/// `meta_seq + 1`. fuzz/regressions/open_bytes/meta-seq-max-overflow.
#[test]
fn meta_seq_at_max_does_not_panic() {
    let fx = fixture();
    let dir = scratch();
    let mut b = fx.clean.bytes.clone();
    let at = fx.clean.newer_meta;
    b[at + meta::META_SEQ..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal_meta(&mut b, at);
    let path = write_image(dir.path(), &b);
    if let Ok(db) = open(&path, false) {
        db.insert(b"k", b"v").unwrap();
        db.close().unwrap();
        // In a release build the sequence wraps to 0, the copy with
        // u64::MAX keeps winning, and the store silently reopens stale.
        let db = open(&path, false).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}

/// A control block version word of `u64::MAX` made every open panic in a
/// debug build (`Control::end` computed `v + 1`).
/// fuzz/regressions/open_bytes/control-version-max-overflow.
#[test]
fn control_version_at_max_does_not_panic() {
    let fx = fixture();
    let dir = scratch();
    let mut b = fx.clean.bytes.clone();
    b[CONTROL + control::VERSION..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let path = write_image(dir.path(), &b);
    let db = open(&path, false).unwrap();
    assert_eq!(db.get(key(3)).unwrap().as_deref(), Some(&value(3, 1)[..]));
    db.insert(b"k", b"v").unwrap();
}

/// After a process crash the control block's counters are taken as they
/// are; a damaged `live_bytes` overflowed on the next insert (a panic in a
/// debug build). It now saturates; `check` reports the wrong counter.
/// fuzz/regressions/open_bytes/live-bytes-overflow.
#[test]
fn damaged_live_bytes_counter_does_not_overflow() {
    let fx = fixture();
    let dir = scratch();
    let mut b = fx.crash.bytes.clone();
    b[CONTROL + control::LIVE_BYTES..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let path = write_image(dir.path(), &b);
    let db = open(&path, false).unwrap();
    db.insert(b"k", b"v").unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    match db.check() {
        Ok(r) => assert_eq!(r.live_bytes, db.stats().live_bytes),
        Err(e) => assert!(e.to_string().contains("counters"), "{e}"),
    }
}

/// A clean close that shrank the file used to write the shorter length
/// into one meta copy only; when that newer copy was then damaged, the
/// fallback copy said the file was truncated and the store could not be
/// opened. Found by this file; fixed.
#[test]
fn torn_newer_meta_after_a_trimming_close() {
    let dir = scratch();
    let path = dir.path().join("trimmed.mapkv");
    let db = open(&path, false).unwrap();
    for i in 0..100u32 {
        db.insert(i.to_le_bytes(), [7u8; 40]).unwrap();
    }
    db.close().unwrap();
    let im = Image::new("trimmed", std::fs::read(&path).unwrap());
    let (older, usable) = older_meta(&im);
    println!(
        "file {} bytes; newer meta says {}, older {}",
        im.bytes.len(),
        im.durable_len,
        le(&im.bytes, older + meta::FILE_LEN, 8)
    );
    let mut b = im.bytes.clone();
    b[im.newer_meta + meta::BOOT_ID + 10] ^= 0x20;
    let path = write_image(dir.path(), &b);
    let db = open(&path, false).unwrap_or_else(|e| panic!("usable older copy {usable}: {e}"));
    assert_eq!(db.len(), 100);
}

/// `iter` reads the log in order. A record header that fails its checks
/// ends the log walk: iteration reports it once and goes on by the index
/// for the records past it, so every other entry is still returned, and
/// none twice.
#[test]
fn iter_goes_on_by_the_index_past_a_damaged_header() {
    use mapkv::testing::layout::{header, HEADER_LEN};
    let (_dir, path) = common::store();
    let db = Db::open(&path).unwrap();
    let key = |i: u32| format!("iter-key-{i:05}");
    for i in 0..2000u32 {
        db.insert(key(i), format!("value-{i}")).unwrap();
    }
    db.flush().unwrap();
    // Another process (or an attacker) damages the file under the open
    // handle.
    let bytes = std::fs::read(&path).unwrap();
    let victim = key(1000);
    let at = bytes
        .windows(victim.len())
        .position(|w| w == victim.as_bytes())
        .expect("the key is in the file") as u64
        - HEADER_LEN;
    // Break the header's own checksum: the body (and its CRC) are intact.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let b = bytes[(at as usize) + header::HDR_CRC] ^ 0x5a;
        f.write_all_at(&[b], at + header::HDR_CRC as u64).unwrap();
    }
    let mut seen = HashSet::new();
    let mut errors = Vec::new();
    for item in db.iter() {
        match item {
            Ok((k, v)) => {
                let k = String::from_utf8(k.to_vec()).unwrap();
                let i: u32 = k["iter-key-".len()..].parse().unwrap();
                assert_eq!(&v[..], format!("value-{i}").as_bytes());
                assert!(seen.insert(i), "{k} returned twice");
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(
        errors.iter().any(|e| e.contains(&at.to_string())),
        "no error names offset {at}: {errors:?}"
    );
    for i in (0..2000).filter(|&i| i != 1000) {
        assert!(seen.contains(&i), "{} missing", key(i));
    }
    // for_each visits the same entries, then returns the first error.
    let mut visited = HashSet::new();
    let r = db.for_each(|k, v| {
        let k = std::str::from_utf8(k).unwrap();
        let i: u32 = k["iter-key-".len()..].parse().unwrap();
        assert_eq!(v, format!("value-{i}").as_bytes());
        assert!(visited.insert(i), "{k} visited twice");
        std::ops::ControlFlow::Continue(())
    });
    let e = r.expect_err("for_each reports the damage");
    assert!(
        errors.contains(&e.to_string()),
        "for_each's error {e} is not one iter reported"
    );
    assert!(
        visited == seen,
        "for_each and iter visited different entries"
    );
}

/// A read-only handle and a writer must read the same store. A cleanly
/// closed store whose index fails the open-time sample is rebuilt from the
/// log by a writer; a read-only opener used to share it as it was (its
/// control block matched the meta), so the two disagreed: here the first
/// live slot points past the log's end, and the read-only handle could not
/// read that key while the writer, which rebuilt the index, could. Found by
/// `open_bytes` once its base images were in the current format.
#[test]
fn read_only_and_read_write_read_the_same_damaged_clean_store() {
    let fx = fixture();
    let dir = scratch();
    let im = &fx.clean;
    let (ix0, ix1) = im.index_table();
    let slot = (ix0..ix1)
        .step_by(8)
        .find(|&at| le(&im.bytes, at, 8) > 1)
        .expect("a live slot");
    let mut b = im.bytes.clone();
    let word = le(&b, slot, 8);
    let offset_mask = (1u64 << 36) - 1;
    let past_tail = (im.tail as u64 + 4096) >> 3;
    let bad = (word & !offset_mask) | past_tail;
    b[slot..slot + 8].copy_from_slice(&bad.to_le_bytes());
    let ro_path = dir.path().join("ro.mapkv");
    let rw_path = dir.path().join("rw.mapkv");
    std::fs::write(&ro_path, &b).unwrap();
    std::fs::write(&rw_path, &b).unwrap();

    let ro = Options::new().read_only(true).open(&ro_path).unwrap();
    let rw = open(&rw_path, false).unwrap();
    assert_eq!(rw.stats().opened, mapkv::OpenKind::Rebuilt);
    let mut present = 0;
    for k in fx.written.keys() {
        let w = rw.get(k).unwrap();
        let a = ro
            .get(k)
            .unwrap_or_else(|e| panic!("key {k:?}: read-only: {e}; read-write: {w:?}"));
        assert_eq!(a, w, "key {k:?}: read-only and read-write differ");
        present += w.is_some() as u64;
    }
    assert_eq!(present, rw.len(), "every entry was looked up");
    assert_eq!(ro.len(), rw.len());
    assert_ne!(ro.stats().opened, mapkv::OpenKind::Clean);
    ro.check().unwrap();
    rw.check().unwrap();
    drop(ro);
    assert_eq!(
        std::fs::read(&ro_path).unwrap(),
        b,
        "read-only wrote the file"
    );
}

/// An entry whose slot was moved off its key's probe path (the slot it
/// had is now a tombstone) is not found by `get`, nor counted live by the
/// log-order scan; the walk of the slots that follows the scan still
/// returns it, once, from `iter` and from `for_each`. (The scan skips that
/// walk when it accounted for every live slot: here it must not.)
#[test]
fn iter_returns_an_entry_moved_off_its_probe_path() {
    use std::os::unix::fs::FileExt;
    let (_dir, path) = common::store();
    let db = Db::open(&path).unwrap();
    let key = |i: u32| format!("path-key-{i:05}");
    for i in 0..3000u32 {
        db.insert(key(i), format!("value-{i}")).unwrap();
    }
    db.flush().unwrap();
    let im = Image::new("moved", std::fs::read(&path).unwrap());
    let (ix0, ix1) = im.index_table();
    let word = |at: usize| le(&im.bytes, at, 8);
    // A live slot whose run has an empty slot right before it: moving the
    // word there puts it before its home, off its probe path.
    let (from, to) = (ix0 + 8..ix1)
        .step_by(8)
        .filter(|&at| word(at) > 1)
        .find_map(|at| {
            let mut s = at;
            while s > ix0 && word(s - 8) > 1 {
                s -= 8;
            }
            (s > ix0 && word(s - 8) == 0).then_some((at, s - 8))
        })
        .expect("a live slot with an empty slot before its run");
    let moved = word(from);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&1u64.to_le_bytes(), from as u64).unwrap();
    f.write_all_at(&moved.to_le_bytes(), to as u64).unwrap();

    let mut seen = HashSet::new();
    for item in db.iter() {
        let (k, v) = item.unwrap();
        let k = String::from_utf8(k.to_vec()).unwrap();
        let i: u32 = k["path-key-".len()..].parse().unwrap();
        assert_eq!(&v[..], format!("value-{i}").as_bytes());
        assert!(seen.insert(i), "{k} returned twice");
    }
    assert_eq!(seen.len(), 3000, "iter lost the moved entry");
    let missing: Vec<u32> = (0..3000)
        .filter(|&i| db.get(key(i)).unwrap().is_none())
        .collect();
    assert_eq!(missing.len(), 1, "exactly the moved entry is off its path");
    let mut visited = HashSet::new();
    db.for_each(|k, _| {
        assert!(visited.insert(k.to_vec()), "{k:?} visited twice");
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(visited.len(), 3000, "for_each lost the moved entry");
}

/// A put whose header is marked with an expiry but whose value area is
/// too short to hold one, with both CRCs valid (what a hostile writer can
/// make): every read path reports it as damage. `get` used to say absent
/// (no expiry in the record: expired) while `contains_key` and
/// `time_to_live` read the expiry from the bytes of the next record and
/// said present. Found by fuzzing (open_bytes, 2026-12-03; reproducer
/// fuzz/regressions/open_bytes/ttl-flag-without-room).
#[test]
fn a_put_marked_with_an_expiry_it_cannot_hold_is_damage_on_every_path() {
    let dir = scratch();
    let path = dir.path().join("ttl.mapkv");
    {
        let db = Db::open(&path).unwrap();
        // Empty values: no record can hold an expiry.
        for i in 0..600 {
            db.insert(format!("key-{i}"), b"").unwrap();
        }
        db.close().unwrap();
    }
    let im = Image::new("ttl", std::fs::read(&path).unwrap());
    // The record of the 500th live slot: past the 64 an open samples, so
    // the store opens and the reads meet it.
    let (ix0, ix1) = im.index_table();
    let words: Vec<u64> = (ix0..ix1)
        .step_by(8)
        .map(|at| le(&im.bytes, at, 8))
        .filter(|&w| w > 1)
        .collect();
    let mut b = im.bytes;
    assert_eq!(words.len(), 600);
    let at = ((words[500] & ((1 << 36) - 1)) * 8) as usize;
    let hl = layout::HEADER_LEN as usize;
    assert_eq!(b[at + header::KIND], layout::KIND_PUT);
    assert_eq!(le(&b, at + header::VAL_LEN, 4), 0);
    let key_len = le(&b, at + header::KEY_LEN, 2) as usize;
    let key = b[at + hl..at + hl + key_len].to_vec();
    let salt = le(&b, layout::META_A_OFFSET as usize + meta::CRC_SALT, 4) as u32;
    b[at + header::FLAGS] |= layout::FLAG_TTL;
    // Both CRCs made valid again.
    let mut covered = (at as u64).to_le_bytes().to_vec();
    covered.extend_from_slice(&b[at + header::KIND..at + hl]);
    let hdr = crc32(salt ^ layout::HEADER_CRC_XOR, &covered);
    b[at + header::HDR_CRC..at + header::HDR_CRC + 4].copy_from_slice(&hdr.to_le_bytes());
    covered.extend_from_slice(&key);
    let crc = crc32(salt, &covered);
    b[at + header::CRC..at + header::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &b).unwrap();

    for read_only in [true, false] {
        let db = Options::new().read_only(read_only).open(&path).unwrap();
        let what = if read_only { "read-only" } else { "read-write" };
        let damaged = |r: Result<String, Error>, call: &str| match r {
            Err(Error::Corrupted { offset, .. }) => {
                assert_eq!(offset, at as u64, "{what} {call}: the offset named")
            }
            other => panic!("{what} {call}: {other:?}, not the damage"),
        };
        damaged(db.get(&key).map(|v| format!("{v:?}")), "get");
        damaged(
            db.contains_key(&key).map(|v| format!("{v:?}")),
            "contains_key",
        );
        damaged(
            db.time_to_live(&key).map(|v| format!("{v:?}")),
            "time_to_live",
        );
        damaged(db.get_many(&[&key]).map(|v| format!("{v:?}")), "get_many");
        // The rest of the store reads as before.
        let other = if key == b"key-0" { "key-1" } else { "key-0" };
        assert_eq!(db.get(other).unwrap().as_deref(), Some(&b""[..]), "{what}");
        assert!(db.check().is_err(), "{what}: check passes a damaged record");
    }
}

/// A live store whose log is damaged in the middle (above the durable
/// tail, below the tail writers published) and whose counters fail their
/// checks: the next write must not rebuild the index from the log up to
/// the damage, which dropped every commit after it (readable a moment
/// before, some acknowledged by this very handle). It fails with an error
/// naming the damage, and every entry still reads. Found by fuzzing
/// (open_bytes, 2026-12-03; fuzz/regressions/open_bytes/repair-drops-published-commits):
/// a damaged image made a handle's own insert leave counters that its next
/// write distrusted, and that write's repair threw the insert away.
#[test]
fn a_live_repair_never_drops_published_commits_past_damage() {
    let dir = scratch();
    let path = dir.path().join("live.mapkv");
    // Durability::None: the durable tail stays near the start.
    let db = Db::open(&path).unwrap();
    db.flush().unwrap();
    for i in 0..2000u32 {
        db.insert(format!("key-{i}"), format!("value-{i}")).unwrap();
    }
    // Another writer of the file (the page cache is shared with the
    // mapping): a flipped byte in the value of key-1000's record, and a
    // live-key counter above the slots used, which no writer leaves.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let b = std::fs::read(&path).unwrap();
    let at = (0..b.len() - 10)
        .find(|&i| &b[i..i + 10] == b"value-1000")
        .expect("the value of key-1000");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[b[at] ^ 0x20], at as u64).unwrap();
    let ctl = layout::CONTROL_OFFSET as usize;
    let used = le(&b, ctl + control::INDEX_USED, 8);
    f.write_all_at(&(used + 1).to_le_bytes(), (ctl + control::LIVE_KEYS) as u64)
        .unwrap();
    drop(f);
    // The write meets counters it cannot trust and the damage below the
    // published tail.
    match db.insert(b"after", b"x") {
        Err(Error::Corrupted { offset, what, .. }) => {
            assert!(
                offset <= at as u64,
                "the error names {offset}, past the damage at {at}: {what}"
            );
        }
        other => panic!(
            "the write over a damaged log: {other:?}; key-1999 now {:?}, stats {:?}",
            db.get("key-1999"),
            db.stats()
        ),
    }
    // Nothing was dropped: every entry but the damaged one reads.
    for i in (0..2000u32).step_by(7).chain([1001, 1999]) {
        let got = db.get(format!("key-{i}")).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(format!("value-{i}").as_bytes()),
            "key-{i} after the refused repair"
        );
    }
    assert!(db.get("key-1000").is_err(), "the damaged record reads");
}

/// The same damage met by an open after a process crash (same boot, the
/// last handle gone): the log is damaged in its middle, below the tail
/// the dead writer published, and the index fails the open's sample, so
/// the open would rebuild the index from the log. It used to rebuild up
/// to the damage, as for a torn tail after a power loss, and drop every
/// commit after it. In the same boot nothing below a published tail can
/// be torn (the page cache survived), so the open now fails with the
/// damage's offset and leaves the file as it was. After a reboot (a power
/// loss could have torn anything past the durable tail) the log still
/// ends at the damage.
#[test]
fn an_open_after_a_crash_never_drops_published_commits_past_damage() {
    let dir = scratch();
    let path = dir.path().join("crashed.mapkv");
    let image = {
        let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
        // Durability::None: the durable tail stays near the start.
        let db = Db::open(&path).unwrap();
        db.flush().unwrap();
        for i in 0..2000u32 {
            db.insert(format!("key-{i}"), format!("value-{i}")).unwrap();
        }
        // What a kill -9 leaves in the same boot: the page cache as it is.
        let image = std::fs::read(&path).unwrap();
        db.close().unwrap();
        image
    };
    // Damage the key of every fourth record from key-1000 on: the open's
    // 64-slot sample meets one of them (it misses all with odds 0.75^64),
    // the first is key-1000's, and the keys between are intact.
    let mut b = image.clone();
    let find = |b: &[u8], v: &[u8]| (0..b.len() - v.len()).find(|&i| &b[i..i + v.len()] == v);
    let first = find(&b, b"key-1000").unwrap();
    for i in (1000..2000u32).step_by(4) {
        let v = format!("key-{i}");
        let at = find(&b, v.as_bytes()).unwrap_or_else(|| panic!("{v}"));
        b[at] ^= 0x20;
    }
    std::fs::write(&path, &b).unwrap();
    for read_only in [true, false] {
        let r = {
            let _g = BOOT.lock().unwrap_or_else(|e| e.into_inner());
            Options::new().read_only(read_only).open(&path)
        };
        match r {
            Err(Error::Corrupted { offset, what, .. }) => {
                assert!(
                    offset <= first as u64,
                    "read_only {read_only}: the error names {offset}, past the damage at {first}: {what}"
                );
                assert!(what.contains("published"), "{what}");
            }
            Ok(db) => panic!(
                "read_only {read_only}: opened a log damaged below its published tail \
                 ({:?}); key-1001 reads {:?}",
                db.stats().opened,
                db.get("key-1001")
            ),
            Err(e) => panic!("read_only {read_only}: {e}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b,
            "the refused open changed the file"
        );
    }
    // After a reboot the same bytes are a torn tail: the open rebuilds up
    // to the damage, and what is below it is all there.
    let db = open(&path, true).unwrap();
    for i in (0..1000u32).step_by(7) {
        let got = db.get(format!("key-{i}")).unwrap();
        assert_eq!(got.as_deref(), Some(format!("value-{i}").as_bytes()));
    }
    assert_eq!(db.get("key-1001").unwrap(), None);
    db.check().unwrap();
}
