//! `open_bytes`: open damaged or hostile files. Never a panic or a hang; a
//! failed open leaves the file byte-for-byte as it was; a read-only handle
//! never writes the file; a store that opens can be read, written, checked
//! and closed, and then opens again with the same contents.
//!
//! The first input byte picks how the file is made and what is done with
//! it:
//!
//! | bits | meaning |
//! | --- | --- |
//! | 0..2 | mode: 0 the rest of the input *is* the file; 1 mutations applied to a base image; 2 as 1, then the meta CRCs are recomputed; 3 as 2, and the CRCs of every log item too (structural fuzzing behind the checksums) |
//! | 2..4 | which base image (`fuzz/base/*.img`, see `mapkv_fuzz::BASES`) |
//! | 4 | the base image in format 1 (`fuzz/base/v1/`, written by the mapkv before the writer-lock change; a read-write open upgrades it) |
//! | 5 | open as after a reboot (another `MAPKV_BOOT_ID`): rebuild instead of replay |
//! | 6..8 | scenario: 0 read-only open only; 1 read-write open, a write and a remove, close; 2 as 1, then reopen and compare; 3 all of these, and the read-only and read-write handles must read the same |
//!
//! In modes 1 to 3 the rest of the input is a list of [`Mutation`]s decoded
//! with `arbitrary`.
//!
//! Each execution does one scenario (the fuzzer picks them all), reads a
//! sample of the keys (every key the iterator returns in turn, 1 in 8 of
//! them, plus 12 of the base keys and 2 others), and reuses the two files
//! of one scratch directory per process: a full scenario 3 on every input
//! ran at 600 executions per second, most of it spent reading 430 keys
//! four times over.

#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mapkv::{Db, Error, Options};
use mapkv_fuzz::layout::*;
use mapkv_fuzz::{
    base_key, get_le, index_table, put_le, reseal_items, reseal_metas, walk_items, ItemPos,
    BASE_BOOT, OTHER_BOOT,
};

const MAX_FILE: usize = 1 << 20;

/// The base images: format 2 (today's), then the same stores in format 1.
static BASE_IMAGES: [&[u8]; 8] = [
    include_bytes!("../base/clean-small.img"),
    include_bytes!("../base/clean-grown.img"),
    include_bytes!("../base/crash-small.img"),
    include_bytes!("../base/crash-grown.img"),
    include_bytes!("../base/v1/clean-small.img"),
    include_bytes!("../base/v1/clean-grown.img"),
    include_bytes!("../base/v1/crash-small.img"),
    include_bytes!("../base/v1/crash-grown.img"),
];

/// The log items of each base image, found once.
fn base_items(i: usize) -> &'static [ItemPos] {
    static ITEMS: OnceLock<Vec<Vec<ItemPos>>> = OnceLock::new();
    &ITEMS.get_or_init(|| {
        BASE_IMAGES
            .iter()
            .map(|b| walk_items(b, usize::MAX))
            .collect()
    })[i]
}

#[derive(Arbitrary, Debug)]
enum FieldVal {
    Set(u64),
    Add(i16),
    Zero,
    AllOnes,
}

impl FieldVal {
    fn apply(&self, old: u64, width: usize) -> u64 {
        let mask = if width >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * width)) - 1
        };
        (match self {
            FieldVal::Set(v) => *v,
            FieldVal::Add(d) => old.wrapping_add(*d as i64 as u64),
            FieldVal::Zero => 0,
            FieldVal::AllOnes => u64::MAX,
        }) & mask
    }
}

#[derive(Arbitrary, Debug)]
enum SlotVal {
    Word(u64),
    Empty,
    Tombstone,
    /// Point the slot at log item `n`, keeping its tag.
    PointAt(u16),
    /// Copy the word of another slot.
    CopyFrom(u16),
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Flip {
        off: u32,
        bit: u8,
    },
    Write {
        off: u32,
        bytes: Vec<u8>,
    },
    Truncate {
        len: u32,
    },
    Extend {
        by: u16,
    },
    ZeroRange {
        off: u32,
        len: u16,
    },
    CopyRange {
        from: u32,
        to: u32,
        len: u16,
    },
    /// A field of meta copy A or B (see `layout::META_FIELDS`).
    Meta {
        copy_b: bool,
        field: u8,
        val: FieldVal,
    },
    /// A header field of log item `nth`: 0 kind, 1 flags, 2 key_len,
    /// 3 val_len, 4 seq_gen, 5 a key or value byte.
    Item {
        nth: u16,
        field: u8,
        val: FieldVal,
    },
    /// A slot of the current index table.
    Slot {
        nth: u16,
        val: SlotVal,
    },
    /// A word of the control block.
    Control {
        word: u8,
        val: FieldVal,
    },
}

fn apply(file: &mut Vec<u8>, base: usize, m: &Mutation) {
    let len = file.len();
    let at = |off: u32| if len == 0 { 0 } else { off as usize % len };
    match m {
        Mutation::Flip { off, bit } => {
            if len > 0 {
                file[at(*off)] ^= 1 << (bit % 8);
            }
        }
        Mutation::Write { off, bytes } => {
            let o = at(*off);
            for (i, b) in bytes.iter().take(64).enumerate() {
                if let Some(x) = file.get_mut(o + i) {
                    *x = *b;
                }
            }
        }
        Mutation::Truncate { len: n } => {
            let n = *n as usize % (len + 1);
            file.truncate(n);
        }
        Mutation::Extend { by } => {
            file.resize((len + *by as usize).min(MAX_FILE), 0);
        }
        Mutation::ZeroRange { off, len: n } => {
            let o = at(*off);
            let e = (o + *n as usize).min(len);
            file[o..e].fill(0);
        }
        Mutation::CopyRange { from, to, len: n } => {
            let (f, t) = (at(*from), at(*to));
            let n = (*n as usize).min(len - f).min(len - t);
            file.copy_within(f..f + n, t);
        }
        Mutation::Meta { copy_b, field, val } => {
            let (off, width) = META_FIELDS[*field as usize % META_FIELDS.len()];
            let o = if *copy_b { META_B } else { META_A } + off;
            let old = get_le(file, o, width);
            put_le(file, o, width, val.apply(old, width));
        }
        Mutation::Item { nth, field, val } => {
            let items = base_items(base);
            if items.is_empty() {
                return;
            }
            let it = items[*nth as usize % items.len()];
            let (o, width) = match field % 6 {
                0 => (it.off + header::KIND, 1),
                1 => (it.off + header::FLAGS, 1),
                2 => (it.off + header::KEY_LEN, 2),
                3 => (it.off + header::VAL_LEN, 4),
                4 => (it.off + header::SEQ_GEN, 8),
                _ => {
                    let body = it.len.saturating_sub(HEADER_LEN).max(1);
                    let k = match val {
                        FieldVal::Set(v) => *v as usize,
                        _ => *nth as usize,
                    };
                    (it.off + HEADER_LEN + k % body, 1)
                }
            };
            let old = get_le(file, o, width);
            put_le(file, o, width, val.apply(old, width));
        }
        Mutation::Slot { nth, val } => {
            let Some((start, cap)) = index_table(BASE_IMAGES[base]) else {
                return;
            };
            let o = start + 8 * (*nth as usize % cap);
            let old = get_le(file, o, 8);
            let new = match val {
                SlotVal::Word(w) => *w,
                SlotVal::Empty => 0,
                SlotVal::Tombstone => 1,
                SlotVal::PointAt(n) => {
                    let items = base_items(base);
                    if items.is_empty() {
                        return;
                    }
                    let it = items[*n as usize % items.len()];
                    (old & !((1u64 << 36) - 1)) | (it.off as u64 >> 3)
                }
                SlotVal::CopyFrom(n) => get_le(file, start + 8 * (*n as usize % cap), 8),
            };
            put_le(file, o, 8, new);
        }
        Mutation::Control { word, val } => {
            let o = CONTROL + 8 * (*word as usize % CONTROL_WORDS);
            let old = get_le(file, o, 8);
            put_le(file, o, 8, val.apply(old, 8));
        }
    }
}

/// Base keys worth looking up besides those the iterator returns (an
/// entry whose record is damaged is not returned, but its key may still be
/// looked up): 12 of the 430 keys of the base images, from `phase` on,
/// plus the empty key and one that is never stored.
fn probe_keys(phase: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..12u32)
        .map(move |i| base_key((phase as u32 * 37 + i * 36) % 430))
        .chain([Vec::new(), b"no such key".to_vec()])
}

const PROBE_KEY: &[u8] = b"\x00mapkv-fuzz probe key, never in a base image\x00";
const PROBE_VALUE: &[u8] = b"probe value";

/// What a handle returned for every key it could read (`None`: absent).
type Seen = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Read what a handle offers; errors are fine, panics are not. `phase`
/// picks the sample of keys (the same for every handle of one input, so
/// their reads can be compared).
fn read_all(db: &Db, phase: usize) -> Seen {
    let mut seen = Seen::new();
    let _ = db.len();
    let _ = db.stats();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    // Errors are fine here; a sample of the entries that read is probed.
    for (i, (k, _)) in db.iter().take(1 << 16).flatten().enumerate() {
        if i % 8 == phase % 8 {
            keys.push(k.to_vec());
        }
    }
    keys.extend(probe_keys(phase));
    for k in keys {
        let got = db.get(&k);
        let has = db.contains_key(&k);
        if let (Ok(g), Ok(h)) = (&got, &has) {
            // Both answered: they must agree on presence.
            assert_eq!(g.is_some(), *h, "get and contains_key disagree on {k:?}");
        }
        if let Ok(g) = got {
            seen.insert(k, g.map(|v| v.to_vec()));
        }
    }
    seen
}

/// Both handles could read `k`: they must agree.
fn same_reads(a: &Seen, b: &Seen, what: &str) {
    for (k, va) in a {
        if let Some(vb) = b.get(k) {
            assert!(va == vb, "{what}: key {k:?} reads {va:?} vs {vb:?}");
        }
    }
}

fn open_ro(path: &Path) -> mapkv::Result<Db> {
    Options::new()
        .read_only(true)
        .map_reserve(1 << 24)
        .open(path)
}

fn open_rw(path: &Path) -> mapkv::Result<Db> {
    Options::new().map_reserve(1 << 24).open(path)
}

/// The file must be byte-for-byte as it was.
fn check_file(path: &Path, want: &[u8], what: &str) {
    let now = std::fs::read(path).expect("read back");
    if now != want {
        let first = now
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(now.len().min(want.len()));
        panic!(
            "{what}: the file was modified ({} -> {} bytes, first difference at {first})",
            want.len(),
            now.len()
        );
    }
}

/// `MAPKV_FUZZ_DEBUG=1`: print the decoded input and each outcome (for
/// triage: `cargo +nightly fuzz run open_bytes <reproducer>`).
fn debug() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MAPKV_FUZZ_DEBUG").is_some_and(|v| v != "0"))
}

/// Which handles an execution opens (bits 6..8 of the selector).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    ReadOnly,
    ReadWrite,
    Reopen,
    All,
}

/// The two files of this process's scratch directory.
fn paths() -> &'static (PathBuf, PathBuf) {
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PATHS.get_or_init(|| {
        let dir = mapkv_fuzz::process_scratch_dir();
        (dir.join("ro.store"), dir.join("rw.store"))
    })
}

fn exercise(file: &[u8], scenario: Scenario, phase: usize) {
    let (ro_path, rw_path) = paths();
    if let Some(dump) = std::env::var_os("MAPKV_FUZZ_DUMP") {
        // The file as the scenario opens it, for a closer look.
        std::fs::write(dump, file).unwrap();
    }
    let ro_seen = if matches!(scenario, Scenario::ReadOnly | Scenario::All) {
        std::fs::write(ro_path, file).unwrap();
        // Read-only: never writes the file, whatever happens.
        let ro = open_ro(ro_path);
        if debug() {
            eprintln!("read-only open: {:?}", ro.as_ref().map(|d| d.stats()));
        }
        let seen = match ro {
            Ok(db) => {
                let seen = read_all(&db, phase);
                assert!(
                    matches!(db.insert(b"k", b"v"), Err(Error::ReadOnly { .. })),
                    "read-only insert"
                );
                let _ = db.check();
                let _ = db.close();
                Some(seen)
            }
            Err(_) => None,
        };
        check_file(ro_path, file, "read-only open");
        seen
    } else {
        None
    };
    if scenario == Scenario::ReadOnly {
        return;
    }

    // Read-write.
    std::fs::write(rw_path, file).unwrap();
    let rw = open_rw(rw_path);
    if debug() {
        eprintln!("read-write open: {:?}", rw.as_ref().map(|d| d.stats()));
    }
    let db = match rw {
        Ok(db) => db,
        Err(e) => {
            check_file(rw_path, file, &format!("failed read-write open ({e})"));
            return;
        }
    };
    if let Some(ro) = &ro_seen {
        same_reads(ro, &read_all(&db, phase), "read-only vs read-write");
    }
    let mut writes_ok = true;
    match db.insert(PROBE_KEY, PROBE_VALUE) {
        Ok(()) => {
            let got = db.get(PROBE_KEY);
            assert!(
                !matches!(&got, Ok(None)),
                "an acknowledged insert is not found"
            );
            if let Ok(Some(v)) = &got {
                assert_eq!(
                    &v[..],
                    PROBE_VALUE,
                    "an acknowledged insert reads back wrong"
                );
            }
            match db.remove(PROBE_KEY) {
                Ok(true) => {
                    if let Ok(Some(v)) = db.get(PROBE_KEY) {
                        assert_ne!(&v[..], PROBE_VALUE, "a removed key still reads");
                    }
                }
                Ok(false) => panic!("remove did not find a key just inserted"),
                Err(_) => writes_ok = false,
            }
        }
        Err(_) => writes_ok = false,
    }
    let _ = db.check();
    let _ = db.flush();
    let seen = read_all(&db, phase);
    if db.close().is_err() || !writes_ok || scenario == Scenario::ReadWrite {
        return;
    }
    // Opened, written and closed without an error: it opens again, with
    // the same contents.
    let db = open_rw(rw_path).unwrap_or_else(|e| panic!("reopen after a clean close: {e}"));
    let again = read_all(&db, phase);
    same_reads(&seen, &again, "before vs after close");
    let _ = db.check();
    let _ = db.close();
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mode = sel & 3;
    let base = ((sel >> 2) & 3) as usize + if sel & 0x10 != 0 { 4 } else { 0 };
    let reboot = sel & 0x20 != 0;
    let scenario = [
        Scenario::ReadOnly,
        Scenario::ReadWrite,
        Scenario::Reopen,
        Scenario::All,
    ][(sel >> 6) as usize];
    // Which sample of keys to read: from the input, so a reproducer reads
    // the same keys.
    let phase = rest
        .iter()
        .take(64)
        .fold(rest.len(), |h, &b| h.wrapping_mul(31) ^ b as usize)
        % 64;
    if debug() {
        eprintln!("mode {mode}, base {base}, reboot {reboot}, {scenario:?}, phase {phase}");
    }
    std::env::set_var("MAPKV_BOOT_ID", if reboot { OTHER_BOOT } else { BASE_BOOT });
    let file = if mode == 0 {
        rest[..rest.len().min(MAX_FILE)].to_vec()
    } else {
        let mut file = BASE_IMAGES[base].to_vec();
        let mut u = Unstructured::new(rest);
        let mut n = 0;
        while n < 64 && !u.is_empty() {
            match Mutation::arbitrary(&mut u) {
                Ok(m) => {
                    if debug() {
                        eprintln!("mutation: {m:?}");
                    }
                    apply(&mut file, base, &m)
                }
                Err(_) => break,
            }
            n += 1;
        }
        if mode == 3 {
            reseal_items(&mut file, 4096);
        }
        if mode >= 2 {
            reseal_metas(&mut file);
        }
        file
    };
    exercise(&file, scenario, phase);
});
