//! Shared helpers of the mapkv fuzz targets and of the corpus generator.
//!
//! The fuzz targets only see mapkv's public API. To mutate a store's file
//! *structurally* (change a header field and keep its checksums valid, so
//! the mutation reaches the code behind the checksums), this module knows
//! the byte layout of docs/FORMAT.md: where the metas, the control block
//! and the log items are, and how their CRCs are computed.

use std::path::Path;

/// Boot id under which the committed base images were written
/// (`MAPKV_BOOT_ID`); opening with the same value takes the
/// process-crash (replay) path, any other value the reboot (rebuild) path.
pub const BASE_BOOT: &str = "mapkv-fuzz-boot";
/// A boot id that differs from [`BASE_BOOT`].
pub const OTHER_BOOT: &str = "mapkv-fuzz-reboot";

/// The layout of docs/FORMAT.md as `usize` offsets into a file image,
/// taken from mapkv's own definitions (`mapkv::testing::layout`), never
/// written out again.
pub mod layout {
    use mapkv::testing::layout as l;
    pub use mapkv::testing::layout::{control, header, meta};

    /// Offset of meta copy A.
    pub const META_A: usize = l::META_A_OFFSET as usize;
    /// Offset of meta copy B.
    pub const META_B: usize = l::META_B_OFFSET as usize;
    /// Bytes of a meta copy covered by its CRC plus the CRC.
    pub const META_LEN: usize = l::META_LEN;
    /// Offset of the control block.
    pub const CONTROL: usize = l::CONTROL_OFFSET as usize;
    /// Words of the control block that `open_bytes` mutates: the live
    /// state, from the magic up to the writer's durable bookkeeping.
    pub const CONTROL_WORDS: usize = control::DURABLE_TAIL / 8;
    /// First byte of the arena.
    pub const ARENA: usize = l::ARENA_START as usize;
    /// The unit of the layout: index tables start on a page boundary.
    pub const PAGE: usize = l::FORMAT_PAGE as usize;
    /// Bytes of an item header.
    pub const HEADER_LEN: usize = l::HEADER_LEN as usize;
    /// Put record.
    pub const KIND_PUT: u8 = l::KIND_PUT;
    /// Delete record (tombstone).
    pub const KIND_DEL: u8 = l::KIND_DEL;
    /// Index chunk.
    pub const KIND_INDEX: u8 = l::KIND_INDEX;
    /// Meta CRC salt ("META").
    pub const META_SALT: u32 = l::META_CRC_XOR;
    /// Header CRC salt ("HDRC").
    pub const HDR_SALT: u32 = l::HEADER_CRC_XOR;
    /// The meta magic.
    pub const MAGIC: [u8; 8] = l::META_MAGIC;
    /// Selects log2 of the slot count in an index descriptor; the rest is
    /// the table's offset.
    pub const DESC_LOG2_MASK: usize = l::INDEX_DESC_LOG2_MASK as usize;

    /// Byte offsets of the meta fields a structural mutation may change,
    /// with their widths.
    pub const META_FIELDS: [(usize, usize); 14] = [
        (meta::VERSION, 4),
        (meta::PAGE_SIZE, 4),
        (meta::META_SEQ, 8),
        (meta::CRC_SALT, 4),
        (meta::FLAGS, 4),
        (meta::BOOT_ID, 8), // first half
        (meta::FILE_LEN, 8),
        (meta::TAIL, 8),
        (meta::SEQ_GEN, 8),
        (meta::GENERATION, 4),
        (meta::INDEX_DESC, 8),
        (meta::INDEX_USED, 8),
        (meta::LIVE_KEYS, 8),
        (meta::LIVE_BYTES, 8),
    ];
}

use layout::*;

/// CRC-32 (IEEE, reflected), continuing from the finalized value `init`,
/// like `crc32fast::Hasher::new_with_initial(init)` (which mapkv uses).
pub fn crc32(init: u32, parts: &[&[u8]]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !init;
    for p in parts {
        for &b in *p {
            c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

/// Little-endian field read that tolerates a short file (missing bytes
/// read as zero).
pub fn get_le(b: &[u8], off: usize, width: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..width {
        let byte = b.get(off + i).copied().unwrap_or(0);
        v |= (byte as u64) << (8 * i);
    }
    v
}

/// Little-endian field write; bytes past the end of the file are dropped.
pub fn put_le(b: &mut [u8], off: usize, width: usize, v: u64) {
    for i in 0..width {
        if let Some(x) = b.get_mut(off + i) {
            *x = (v >> (8 * i)) as u8;
        }
    }
}

/// Recompute the CRC of every meta copy that carries the magic, each with
/// the salt found in that copy.
pub fn reseal_metas(file: &mut [u8]) {
    for at in [META_A, META_B] {
        if file.len() < at + META_LEN || file[at + meta::MAGIC..][..8] != MAGIC {
            continue;
        }
        let salt = get_le(file, at + meta::CRC_SALT, 4) as u32;
        let crc = crc32(salt ^ META_SALT, &[&file[at..at + meta::CRC]]);
        put_le(file, at + meta::CRC, 4, crc as u64);
    }
}

/// The CRC salt of the file: from the meta copy that carries the magic
/// (A first).
pub fn salt_of(file: &[u8]) -> Option<u32> {
    [META_A, META_B]
        .into_iter()
        .find(|&at| file.len() >= at + META_LEN && file[at + meta::MAGIC..][..8] == MAGIC)
        .map(|at| get_le(file, at + meta::CRC_SALT, 4) as u32)
}

/// One item of the log as laid out in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemPos {
    /// Offset of the header.
    pub off: usize,
    /// Kind byte.
    pub kind: u8,
    /// Bytes of the item (padding and, for index chunks, the table).
    pub len: usize,
}

fn item_len(off: usize, kind: u8, key_len: usize, val_len: u64) -> Option<usize> {
    if kind == KIND_INDEX {
        if val_len > 40 {
            return None;
        }
        let start = (off + HEADER_LEN).div_ceil(PAGE) * PAGE;
        Some(start + (8usize << val_len) - off)
    } else {
        Some((HEADER_LEN + key_len + val_len as usize).div_ceil(8) * 8)
    }
}

/// Walk the items from the start of the arena by their header fields (no
/// checksum is verified), at most `max` items, stopping at the first byte
/// that is not an item header or at the end of the file.
pub fn walk_items(file: &[u8], max: usize) -> Vec<ItemPos> {
    let mut out = Vec::new();
    let mut off = ARENA;
    while out.len() < max && off + HEADER_LEN <= file.len() {
        let kind = file[off + header::KIND];
        if ![KIND_PUT, KIND_DEL, KIND_INDEX].contains(&kind) {
            break;
        }
        let key_len = get_le(file, off + header::KEY_LEN, 2) as usize;
        let val_len = get_le(file, off + header::VAL_LEN, 4);
        let Some(len) = item_len(off, kind, key_len, val_len) else {
            break;
        };
        out.push(ItemPos { off, kind, len });
        off += len;
    }
    out
}

/// Recompute the header CRC and record CRC of every item that
/// [`walk_items`] finds (at most `max`), with the file's salt. Records
/// whose body runs past the end of the file keep their record CRC.
pub fn reseal_items(file: &mut [u8], max: usize) {
    let Some(salt) = salt_of(file) else { return };
    for it in walk_items(file, max) {
        let off = it.off;
        let offb = (off as u64).to_le_bytes();
        // The header CRC covers the header from `kind` on.
        let tail: [u8; 16] = file[off + header::KIND..off + HEADER_LEN]
            .try_into()
            .expect("16 bytes");
        let hdr = crc32(salt ^ HDR_SALT, &[&offb, &tail]);
        put_le(file, off + header::HDR_CRC, 4, hdr as u64);
        if it.kind == KIND_INDEX {
            put_le(file, off + header::CRC, 4, hdr as u64);
            continue;
        }
        let body = get_le(file, off + header::KEY_LEN, 2) as usize
            + get_le(file, off + header::VAL_LEN, 4) as usize;
        if let Some(b) = file.get(off + HEADER_LEN..off + HEADER_LEN + body) {
            let crc = crc32(salt, &[&offb, &tail, b]);
            put_le(file, off + header::CRC, 4, crc as u64);
        }
    }
}

/// The meta copy a reader would choose: the one with the magic, a valid
/// CRC and the higher `meta_seq`.
pub fn chosen_meta(file: &[u8]) -> Option<usize> {
    let valid = |at: usize| {
        file.len() >= at + META_LEN
            && file[at + meta::MAGIC..][..8] == MAGIC
            && crc32(
                (get_le(file, at + meta::CRC_SALT, 4) as u32) ^ META_SALT,
                &[&file[at..at + meta::CRC]],
            ) == get_le(file, at + meta::CRC, 4) as u32
    };
    let seq = |at: usize| get_le(file, at + meta::META_SEQ, 8);
    match (valid(META_A), valid(META_B)) {
        (true, true) => Some(if seq(META_A) >= seq(META_B) {
            META_A
        } else {
            META_B
        }),
        (true, false) => Some(META_A),
        (false, true) => Some(META_B),
        (false, false) => None,
    }
}

/// `(table offset, slot count)` of the index named by the chosen meta.
pub fn index_table(file: &[u8]) -> Option<(usize, usize)> {
    let at = chosen_meta(file)?;
    let d = get_le(file, at + meta::INDEX_DESC, 8) as usize;
    let log2 = (d & DESC_LOG2_MASK) as u32;
    let start = d & !DESC_LOG2_MASK;
    if !(9..=20).contains(&log2) || start == 0 {
        return None;
    }
    Some((start, 1usize << log2))
}

/// A temporary directory for stores, on tmpfs when there is one (msync and
/// fsync are then nearly free, which keeps the fuzzers fast).
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("mapkv-fuzz")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("mapkv-fuzz")
        .tempdir()
        .expect("temporary directory")
}

/// One scratch directory for the whole fuzzing process, for targets that
/// rewrite the same few files on every execution instead of making a new
/// directory each time: `mapkv-fuzz-PID` under /dev/shm (else the system's
/// temporary directory). libFuzzer ends a process with `exit`, so nothing
/// removes it then; instead, each new process first removes the
/// directories of processes that are gone.
pub fn process_scratch_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix("mapkv-fuzz-") else {
                    continue;
                };
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(format!("mapkv-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// Key `i` of the base images.
pub fn base_key(i: u32) -> Vec<u8> {
    format!("key{i:04}").into_bytes()
}

/// Value of key `i`, version `v`, in the base images: up to 72 bytes that
/// name their key and version.
pub fn base_value(i: u32, v: u32) -> Vec<u8> {
    let mut out = format!("value-{i}-{v}-").into_bytes();
    let n = 8 + (i.wrapping_mul(7919).wrapping_add(v * 31) % 64) as usize;
    while out.len() < n {
        out.push(b'a' + (out.len() % 26) as u8);
    }
    out
}

/// Base images for the `open_bytes` target and its raw-mode seeds. Each is
/// small (at most 256 KiB) and written with `MAPKV_BOOT_ID` = [`BASE_BOOT`].
pub const BASES: [&str; 4] = ["clean-small", "clean-grown", "crash-small", "crash-grown"];

/// Build the base image `name` (one of [`BASES`]) in `dir` and return its
/// bytes. Sets `MAPKV_BOOT_ID`.
pub fn build_base(name: &str, dir: &Path) -> Vec<u8> {
    use mapkv::{Durability, Options};
    std::env::set_var("MAPKV_BOOT_ID", BASE_BOOT);
    let path = dir.join(format!("{name}.store"));
    let _ = std::fs::remove_file(&path);
    let opts = || Options::new().initial_size(64 << 10).map_reserve(1 << 24);
    let (n, crash) = match name {
        "clean-small" => (40u32, false),
        "clean-grown" => (420, false),
        "crash-small" => (40, true),
        "crash-grown" => (420, true),
        _ => panic!("unknown base {name}"),
    };
    // A few synced commits first, closed cleanly.
    {
        let db = opts().durability(Durability::Sync).open(&path).unwrap();
        for i in 0..4 {
            db.insert(base_key(i), base_value(i, 0)).unwrap();
        }
        db.close().unwrap();
    }
    let db = opts().open(&path).unwrap();
    for i in 0..n {
        db.insert(base_key(i), base_value(i, 1)).unwrap();
    }
    for i in (0..n).step_by(5) {
        db.insert(base_key(i), base_value(i, 2)).unwrap();
    }
    db.flush().unwrap();
    for i in (0..n).step_by(7) {
        assert!(db.remove(base_key(i)).unwrap());
    }
    let mut b = db.batch();
    for i in (0..n).step_by(3) {
        b.insert(base_key(i), base_value(i, 3));
    }
    b.remove(base_key(1)).remove(base_key(n + 5));
    b.commit().unwrap();
    db.insert(b"", b"empty key").unwrap();
    db.insert(base_key(n + 1), b"").unwrap();
    let bytes = if crash {
        // What a killed process leaves: the page cache, copied while open.
        let bytes = std::fs::read(&path).unwrap();
        drop(db);
        bytes
    } else {
        db.close().unwrap();
        std::fs::read(&path).unwrap()
    };
    let _ = std::fs::remove_file(&path);
    assert!(bytes.len() <= 256 << 10, "{name} is {} bytes", bytes.len());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_reseal_match_mapkv() {
        let dir = scratch_dir();
        for name in BASES {
            let bytes = build_base(name, dir.path());
            let mut copy = bytes.clone();
            reseal_metas(&mut copy);
            reseal_items(&mut copy, usize::MAX);
            assert!(
                copy == bytes,
                "{name}: resealing an intact store changed it"
            );
            let items = walk_items(&bytes, usize::MAX);
            assert!(items.len() > 10, "{name}: {} items", items.len());
            assert!(chosen_meta(&bytes).is_some());
            assert!(index_table(&bytes).is_some());
        }
    }
}
