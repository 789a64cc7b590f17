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
//! 36     4    flags        bit 0 CLEAN: closed cleanly, index durable
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
//! 124    4    crc          CRC32 of bytes 0..124, salted with crc_salt
//! ```
//! All integers little-endian (mapkv builds only for little-endian targets).

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

const _: () = assert!(std::mem::size_of::<Meta>() == META_LEN);
#[cfg(target_endian = "big")]
compile_error!("mapkv's on-disk structs are little-endian; big-endian targets are not supported");

/// What reading one meta copy found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaRead {
    /// Not our magic: not a mapkv file (or this copy was never written).
    Foreign,
    /// Our magic, but a format version this build does not know.
    Version(u32),
    /// Our magic and version, but the checksum or a field is wrong.
    Damaged,
    Valid(Meta),
}

impl Meta {
    pub(crate) fn checksum(&self) -> u32 {
        let bytes = bytemuck::bytes_of(self);
        let mut h = crc32fast::Hasher::new_with_initial(self.crc_salt ^ 0x4d45_5441);
        h.update(&bytes[..META_LEN - 4]);
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
        if m.crc != m.checksum() || m.page_size != super::FORMAT_PAGE as u32 {
            return MetaRead::Damaged;
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
    Foreign,
    Version(u32),
    Damaged,
}

/// Pick the durable state from the two copies: the valid one with the
/// higher sequence number. Two valid copies with the same sequence number
/// cannot be produced by mapkv and are reported as damage.
pub(crate) fn choose(a: MetaRead, b: MetaRead) -> Result<Meta, Refused> {
    match (a, b) {
        (MetaRead::Valid(x), MetaRead::Valid(y)) => {
            if x.meta_seq == y.meta_seq && x != y {
                Err(Refused::Damaged)
            } else if x.meta_seq >= y.meta_seq {
                Ok(x)
            } else {
                Ok(y)
            }
        }
        (MetaRead::Valid(x), _) | (_, MetaRead::Valid(x)) => Ok(x),
        (MetaRead::Version(v), _) | (_, MetaRead::Version(v)) => Err(Refused::Version(v)),
        (MetaRead::Damaged, _) | (_, MetaRead::Damaged) => Err(Refused::Damaged),
        _ => Err(Refused::Foreign),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    MetaRead::Foreign | MetaRead::Version(_) | MetaRead::Damaged
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
        assert_eq!(choose(MetaRead::Damaged, a).unwrap().meta_seq, 4);
        assert_eq!(
            choose(MetaRead::Foreign, MetaRead::Foreign),
            Err(Refused::Foreign)
        );
        assert_eq!(
            choose(MetaRead::Damaged, MetaRead::Foreign),
            Err(Refused::Damaged)
        );
        let mut other = sample(4);
        other.tail = 99;
        assert_eq!(
            choose(a, MetaRead::Valid(other.seal())),
            Err(Refused::Damaged)
        );
    }
}
