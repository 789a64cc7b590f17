//! The two meta copies: the durable state of the store.
//!
//! ```text
//! offset size field
//! 0      8    magic        "\x89MAPKV\r\n" (PNG-style: high bit, CR LF catch
//!                          7-bit and newline-mangling transfers)
//! 8      4    version      format version (FORMAT_VERSION)
//! 12     4    page_size    layout unit, 4096
//! 16     8    meta_seq     incremented by every meta write; the valid copy
//!                          with the higher value wins
//! 24     8    hash_seed    random per file: seeds the key hash (xxh3)
//! 32     4    crc_salt     random per file: initial value of every CRC
//! 36     4    flags        bit 0 CLEAN: closed cleanly, index durable;
//!                          bit 1 TTL: may hold entries with an expiry
//! 40     16   boot_id      boot of the last writer that opened the file
//! 56     8    file_len     file length that is durable (fsync'd)
//! 64     8    tail         log tail that is durable: every byte below was
//!                          msync'd before this meta was written
//! 72     8    seq_gen      last commit below `tail` (48-bit seq | gen << 48)
//! 80     4    generation   generation new commits are written with
//! 84     4    file_nonce   random, drawn when the file is created (a compaction's
//!                          new file draws its own): tells files apart where
//!                          device and inode numbers are reused
//! 88     8    index_desc   slot table (page-aligned offset | log2 capacity);
//!                          trusted only when CLEAN
//! 96     8    index_used   occupied slots (live + tombstones), when CLEAN
//! 104    8    live_keys    when CLEAN
//! 112    8    live_bytes   bytes of live records, when CLEAN
//! 120    4    capacity     cache mode: the file's size bound in 64 KiB
//!                          granules (`Options::capacity`); 0 = no bound
//! 124    4    crc          CRC32 of bytes 0..124, initial value
//!                          crc_salt ^ 0x4d455441 ("META")
//! ```
//! All integers little-endian (mapkv builds only for little-endian targets).
//! The table is the [`Meta`] struct: const asserts pin each field's offset,
//! and a unit test checks this table against them.

use std::fmt;
use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

/// Magic number at the start of each meta copy.
pub(crate) const MAGIC: [u8; 8] = *b"\x89MAPKV\r\n";
/// The on-disk format version this build writes. Version 2 replaced the
/// robust pthread mutex in the control page with the writer lock word and
/// `flock` with OFD locks; the meta, index and records are as in version 1,
/// which this build reads and upgrades (see `recovery::open_file`).
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The older version this build still opens (read-write, to upgrade it).
pub(crate) const UPGRADABLE_VERSION: u32 = 1;
/// Meta flag: the store was closed cleanly and the index is durable.
pub(crate) const FLAG_CLEAN: u32 = 1;
/// Meta flag: the store may hold entries with an expiry (see the control
/// block's `ttl` word).
pub(crate) const FLAG_TTL: u32 = 2;

/// Size of the encoded meta.
pub(crate) const META_LEN: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub(crate) struct Meta {
    pub magic: [u8; 8],
    pub version: u32,
    pub page_size: u32,
    pub meta_seq: u64,
    pub hash_seed: u64,
    pub crc_salt: u32,
    pub flags: u32,
    pub boot_id: [u8; 16],
    pub file_len: u64,
    pub tail: u64,
    pub seq_gen: u64,
    pub generation: u32,
    pub file_nonce: u32,
    pub index_desc: u64,
    pub index_used: u64,
    pub live_keys: u64,
    pub live_bytes: u64,
    /// Cache mode: the size bound in granules (64 KiB); 0 = none.
    pub capacity: u32,
    pub crc: u32,
}

/// XOR'd into `crc_salt` for the initial value of the meta CRC ("META").
pub(crate) const META_CRC_XOR: u32 = 0x4d45_5441;

// The layout is the format: these offsets never change.
const _: () = {
    assert!(size_of::<Meta>() == META_LEN);
    assert!(offset_of!(Meta, magic) == 0);
    assert!(offset_of!(Meta, version) == 8);
    assert!(offset_of!(Meta, page_size) == 12);
    assert!(offset_of!(Meta, meta_seq) == 16);
    assert!(offset_of!(Meta, hash_seed) == 24);
    assert!(offset_of!(Meta, crc_salt) == 32);
    assert!(offset_of!(Meta, flags) == 36);
    assert!(offset_of!(Meta, boot_id) == 40);
    assert!(offset_of!(Meta, file_len) == 56);
    assert!(offset_of!(Meta, tail) == 64);
    assert!(offset_of!(Meta, seq_gen) == 72);
    assert!(offset_of!(Meta, generation) == 80);
    assert!(offset_of!(Meta, file_nonce) == 84);
    assert!(offset_of!(Meta, index_desc) == 88);
    assert!(offset_of!(Meta, index_used) == 96);
    assert!(offset_of!(Meta, live_keys) == 104);
    assert!(offset_of!(Meta, live_bytes) == 112);
    assert!(offset_of!(Meta, capacity) == 120);
    assert!(offset_of!(Meta, crc) == 124);
    // The CRC covers everything before it.
    assert!(offset_of!(Meta, crc) == META_LEN - 4);
};
#[cfg(target_endian = "big")]
compile_error!("mapkv's on-disk structs are little-endian; big-endian targets are not supported");

/// What reading one meta copy found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaRead {
    /// Not our magic: not a mapkv file (or this copy was never written).
    Foreign,
    /// Our magic, but a format version this build does not know.
    Version(u32),
    /// Our magic and version, but the checksum or a field is wrong: which.
    Damaged(Damage),
    Valid(Meta),
}

/// The check a meta copy with our magic and version failed (checked in
/// this order, as odht's `sanity_check` does: each failure names itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The stored CRC is not the CRC of the copy's bytes.
    Crc { stored: u32, computed: u32 },
    /// The CRC holds, but `page_size` is not this format's unit.
    PageSize(u32),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Damage::Crc { stored, computed } => write!(
                f,
                "meta CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Damage::PageSize(found) => write!(
                f,
                "page size {found}, this format uses {}",
                super::FORMAT_PAGE
            ),
        }
    }
}

impl Meta {
    pub(crate) fn checksum(&self) -> u32 {
        let bytes = bytemuck::bytes_of(self);
        let mut h = crc32fast::Hasher::new_with_initial(self.crc_salt ^ META_CRC_XOR);
        h.update(&bytes[..offset_of!(Meta, crc)]);
        h.finalize()
    }

    pub(crate) fn seal(mut self) -> Meta {
        self.crc = self.checksum();
        self
    }

    pub(crate) fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out.copy_from_slice(bytemuck::bytes_of(self));
        out
    }

    pub(crate) fn decode(bytes: &[u8; META_LEN]) -> MetaRead {
        let m: Meta = bytemuck::pod_read_unaligned(bytes);
        if m.magic != MAGIC {
            return MetaRead::Foreign;
        }
        if m.version != FORMAT_VERSION && m.version != UPGRADABLE_VERSION {
            return MetaRead::Version(m.version);
        }
        let computed = m.checksum();
        if m.crc != computed {
            return MetaRead::Damaged(Damage::Crc {
                stored: m.crc,
                computed,
            });
        }
        if m.page_size != super::FORMAT_PAGE as u32 {
            return MetaRead::Damaged(Damage::PageSize(m.page_size));
        }
        MetaRead::Valid(m)
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.flags & FLAG_CLEAN != 0
    }
}

/// Why no meta copy can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Neither copy carries the magic number.
    Foreign,
    /// A copy carries the magic and a version this build does not read.
    Version(u32),
    /// A copy carries the magic, but neither is valid: what each failed.
    Damaged(Damaged),
}

/// Why the copies that carry the magic are unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damaged {
    /// Each copy failed a check (`None`: that copy has no magic number).
    Copies {
        a: Option<Damage>,
        b: Option<Damage>,
    },
    /// Both copies are valid with the same sequence number, but differ.
    SameSeq(u64),
}

impl fmt::Display for Damaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Damaged::Copies { a, b } => {
                let copies = [
                    ("A", super::META_A_OFFSET, a),
                    ("B", super::META_B_OFFSET, b),
                ];
                for (i, (name, off, d)) in copies.into_iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "meta {name} (offset {off}): ")?;
                    match d {
                        Some(d) => write!(f, "{d}")?,
                        None => f.write_str("no mapkv magic number")?,
                    }
                }
                Ok(())
            }
            Damaged::SameSeq(seq) => write!(
                f,
                "both meta copies are valid with sequence number {seq}, but they differ"
            ),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Foreign => f.write_str("no mapkv magic number in either meta copy"),
            Refused::Version(v) => write!(f, "a meta copy has format version {v}"),
            Refused::Damaged(d) => write!(f, "{d}"),
        }
    }
}

/// Pick the durable state from the two copies: the valid one with the
/// higher sequence number. Two valid copies with the same sequence number
/// cannot be produced by mapkv and are reported as damage.
pub(crate) fn choose(a: MetaRead, b: MetaRead) -> Result<Meta, Refused> {
    let damage = |r: MetaRead| match r {
        MetaRead::Damaged(d) => Some(d),
        _ => None,
    };
    match (a, b) {
        (MetaRead::Valid(x), MetaRead::Valid(y)) => {
            if x.meta_seq == y.meta_seq && x != y {
                Err(Refused::Damaged(Damaged::SameSeq(x.meta_seq)))
            } else if x.meta_seq >= y.meta_seq {
                Ok(x)
            } else {
                Ok(y)
            }
        }
        (MetaRead::Valid(x), _) | (_, MetaRead::Valid(x)) => Ok(x),
        (MetaRead::Version(v), _) | (_, MetaRead::Version(v)) => Err(Refused::Version(v)),
        (MetaRead::Damaged(_), _) | (_, MetaRead::Damaged(_)) => {
            Err(Refused::Damaged(Damaged::Copies {
                a: damage(a),
                b: damage(b),
            }))
        }
        _ => Err(Refused::Foreign),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::byte_map::{self, fields};

    fn sample(seq: u64) -> Meta {
        Meta {
            magic: MAGIC,
            version: FORMAT_VERSION,
            page_size: 4096,
            meta_seq: seq,
            hash_seed: 42,
            crc_salt: 7,
            tail: 12288,
            ..Meta::zeroed()
        }
        .seal()
    }

    #[test]
    fn roundtrip_and_damage() {
        let m = sample(3);
        let bytes = m.encode();
        assert_eq!(Meta::decode(&bytes), MetaRead::Valid(m));
        for i in 0..META_LEN {
            let mut b = bytes;
            b[i] ^= 0x10;
            let r = Meta::decode(&b);
            assert!(
                matches!(
                    r,
                    MetaRead::Foreign | MetaRead::Version(_) | MetaRead::Damaged(_)
                ),
                "flip at {i} gave {r:?}"
            );
        }
        assert_eq!(Meta::decode(&[0u8; META_LEN]), MetaRead::Foreign);
        let mut v = bytes;
        v[8] = 9;
        assert_eq!(Meta::decode(&v), MetaRead::Version(9));
    }

    #[test]
    fn choose_prefers_newer_valid() {
        let a = MetaRead::Valid(sample(4));
        let b = MetaRead::Valid(sample(5));
        assert_eq!(choose(a, b).unwrap().meta_seq, 5);
        assert_eq!(choose(b, a).unwrap().meta_seq, 5);
        let crc = Damage::Crc {
            stored: 1,
            computed: 2,
        };
        assert_eq!(choose(MetaRead::Damaged(crc), a).unwrap().meta_seq, 4);
        assert_eq!(
            choose(MetaRead::Foreign, MetaRead::Foreign),
            Err(Refused::Foreign)
        );
        assert_eq!(
            choose(MetaRead::Damaged(crc), MetaRead::Foreign),
            Err(Refused::Damaged(Damaged::Copies {
                a: Some(crc),
                b: None
            }))
        );
        let mut other = sample(4);
        other.tail = 99;
        assert_eq!(
            choose(a, MetaRead::Valid(other.seal())),
            Err(Refused::Damaged(Damaged::SameSeq(4)))
        );
    }

    /// Each failed check names itself, with what was found.
    #[test]
    fn damage_says_which_check_failed() {
        let m = sample(3);
        let mut bytes = m.encode();
        bytes[offset_of!(Meta, tail)] ^= 1;
        let computed = Meta::decode(&bytes);
        let MetaRead::Damaged(d @ Damage::Crc { stored, .. }) = computed else {
            panic!("{computed:?}");
        };
        assert_eq!(stored, m.crc);
        let text = d.to_string();
        assert!(text.starts_with("meta CRC mismatch (stored 0x"), "{text}");
        assert!(text.contains(&format!("{:#010x}", m.crc)), "{text}");

        let wrong = Meta {
            page_size: 16384,
            ..m
        }
        .seal();
        let r = Meta::decode(&wrong.encode());
        assert_eq!(r, MetaRead::Damaged(Damage::PageSize(16384)));
        let MetaRead::Damaged(d) = r else {
            unreachable!()
        };
        assert_eq!(d.to_string(), "page size 16384, this format uses 4096");

        let both = choose(MetaRead::Damaged(d), MetaRead::Foreign).unwrap_err();
        assert_eq!(
            both.to_string(),
            "meta A (offset 0): page size 16384, this format uses 4096; \
             meta B (offset 4096): no mapkv magic number"
        );
    }

    fn fields() -> Vec<(&'static str, usize, usize)> {
        fields!(Meta: magic, version, page_size, meta_seq, hash_seed, crc_salt, flags, boot_id,
            file_len, tail, seq_gen, generation, file_nonce, index_desc, index_used, live_keys,
            live_bytes, capacity, crc)
    }

    #[test]
    fn byte_map_matches_the_struct() {
        let rows = byte_map::doc_comment(include_str!("meta.rs"));
        byte_map::check("meta.rs byte map", &rows, 0, &fields(), META_LEN);
        let md = include_str!("../../docs/FORMAT.md");
        let rows = byte_map::markdown_table(md, "## Meta (`src/storage/meta.rs`)");
        byte_map::check("docs/FORMAT.md meta", &rows, 0, &fields(), META_LEN);
    }
}
