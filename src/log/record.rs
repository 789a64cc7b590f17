//! Record framing: every arena item starts with the 24-byte [`Header`],
//! a `#[repr(C)]` Pod struct whose fields are the byte map below (a unit
//! test checks this table against the struct).
//!
//! ```text
//! { crc u32 | hdr_crc u32 | kind u8 | flags u8 | key_len u16 | val_len u32 | seq_gen u64 }
//!   key bytes | value bytes | zero padding to a multiple of 8
//!
//! offset size field
//! 0      4    crc      CRC32 over (offset as u64 LE, header bytes 8..24, key,
//!                      value), initial value = the file's crc_salt; for an
//!                      index chunk, equal to hdr_crc
//! 4      4    hdr_crc  CRC32 over (offset as u64 LE, header bytes 8..24),
//!                      initial value = crc_salt ^ 0x48445243 ("HDRC")
//! 8      1    kind     0xA5 put, 0xA6 delete (tombstone), 0xA7 index chunk;
//!                      0 (zeroed space) and anything else: not a record
//! 9      1    flags    bit 0 END: last record of its commit;
//!                      bit 1 TTL (puts only): the value area starts with an
//!                      8-byte little-endian expiry in ms since the Unix
//!                      epoch, counted in val_len; other bits 0
//! 10     2    key_len  (index chunk: 0)
//! 12     4    val_len  (delete: 0; index chunk: log2 of the slot count)
//! 16     8    seq_gen  commit sequence (bits 0..48) | generation (48..64);
//!                      index chunk: 0
//! ```
//!
//! The salt makes zeroed or foreign bytes fail the CRC; the offset makes a
//! record copied or left elsewhere fail it. The header has its own CRC so a
//! length can be trusted before anything is read by it.
//!
//! An index chunk's header is followed by padding to the next 4096-byte
//! boundary and then `8 << val_len` bytes of slot table, which no CRC
//! covers (the index is never trusted across an OS crash).

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use crate::storage::{align_up, FORMAT_PAGE};

/// Bytes of a record header.
pub(crate) const HEADER_LEN: u64 = size_of::<Header>() as u64;
pub(crate) const KIND_PUT: u8 = 0xA5;
pub(crate) const KIND_DEL: u8 = 0xA6;
pub(crate) const KIND_INDEX: u8 = 0xA7;

/// What a record is: its `kind` byte, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A key and its value.
    Put,
    /// A tombstone: the key is removed.
    Del,
    /// An index chunk: a slot table follows at the next 4096-byte boundary.
    Index,
}

impl Kind {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Kind::Put => KIND_PUT,
            Kind::Del => KIND_DEL,
            Kind::Index => KIND_INDEX,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Kind> {
        match b {
            KIND_PUT => Some(Kind::Put),
            KIND_DEL => Some(Kind::Del),
            KIND_INDEX => Some(Kind::Index),
            _ => None,
        }
    }
}
pub(crate) const FLAG_END: u8 = 1;
/// A put whose value area starts with 8 bytes: the expiry time, in
/// milliseconds since the Unix epoch, little-endian. The value follows.
pub(crate) const FLAG_TTL: u8 = 2;
/// Bytes of the expiry prefix of a FLAG_TTL put.
pub(crate) const TTL_LEN: usize = 8;

/// Longest key: 65,535 bytes.
///
/// # Examples
///
/// ```
/// use mapkv::{Error, MAX_KEY_LEN};
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = mapkv::Db::open(dir.path().join("mk.mapkv"))?;
/// db.insert(vec![b'k'; MAX_KEY_LEN], b"v")?; // the longest key fits
/// let err = db.insert(vec![b'k'; MAX_KEY_LEN + 1], b"v").unwrap_err();
/// assert!(matches!(err, Error::KeyTooLarge { len, .. } if len == MAX_KEY_LEN + 1));
/// # Ok::<(), mapkv::Error>(())
/// ```
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Longest value: 4 GiB - 1 bytes.
///
/// # Examples
///
/// ```
/// assert_eq!(mapkv::MAX_VALUE_LEN, u32::MAX as usize);
/// // Check a length before building the value:
/// let wanted: u64 = 5 << 30;
/// assert!(wanted > mapkv::MAX_VALUE_LEN as u64); // would fail with Error::ValueTooLarge
/// ```
pub const MAX_VALUE_LEN: usize = u32::MAX as usize;

const SEQ_BITS: u32 = 48;
pub(crate) const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// XOR'd into the CRC salt for the header CRC ("HDRC").
pub(crate) const HDR_SALT: u32 = 0x4844_5243;

pub(crate) fn seq_of(seq_gen: u64) -> u64 {
    seq_gen & SEQ_MASK
}

pub(crate) fn gen_of(seq_gen: u64) -> u16 {
    (seq_gen >> SEQ_BITS) as u16
}

pub(crate) fn seq_gen(seq: u64, gen: u16) -> u64 {
    (seq & SEQ_MASK) | ((gen as u64) << SEQ_BITS)
}

/// True if generation `b` is not older than `a` (16-bit serial arithmetic).
pub(crate) fn gen_not_older(a: u16, b: u16) -> bool {
    b.wrapping_sub(a) < 0x8000
}

/// Total bytes of a put/delete record, padding included.
pub(crate) fn record_len(key_len: usize, val_len: usize) -> u64 {
    // Cannot overflow: both lengths are bounded far below u64::MAX / 2.
    (HEADER_LEN + key_len as u64 + val_len as u64 + 7) & !7
}

/// A record header, as it lies in the file (little-endian; mapkv builds
/// only for little-endian targets). Values are copied out of the mapping
/// (never borrowed from it) and checked with [`Header::check`] before use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Header {
    pub crc: u32,
    pub hdr_crc: u32,
    pub kind: u8,
    pub flags: u8,
    pub key_len: u16,
    pub val_len: u32,
    pub seq_gen: u64,
}

/// Where the CRC'd part of the header starts: `kind` and everything after.
const CRC_COVERED: usize = offset_of!(Header, kind);

// The layout is the format: these offsets never change.
const _: () = {
    assert!(size_of::<Header>() == 24);
    assert!(offset_of!(Header, crc) == 0);
    assert!(offset_of!(Header, hdr_crc) == 4);
    assert!(offset_of!(Header, kind) == 8);
    assert!(offset_of!(Header, flags) == 9);
    assert!(offset_of!(Header, key_len) == 10);
    assert!(offset_of!(Header, val_len) == 12);
    assert!(offset_of!(Header, seq_gen) == 16);
    assert!(size_of::<Header>() - CRC_COVERED == 16);
};

impl Header {
    pub(crate) fn from_bytes(b: &[u8; HEADER_LEN as usize]) -> Header {
        // The bytes come from anywhere (a copy out of the mapping): read
        // them unaligned.
        bytemuck::pod_read_unaligned(b)
    }

    /// The CRC'd part of the header (bytes 8..24).
    pub(crate) fn tail_bytes(&self) -> [u8; 16] {
        let mut t = [0u8; 16];
        t.copy_from_slice(&bytemuck::bytes_of(self)[CRC_COVERED..]);
        t
    }

    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN as usize] {
        bytemuck::cast(self)
    }

    /// The record's kind; `None` for a byte that names none (zeroed space,
    /// foreign bytes).
    pub(crate) fn kind(&self) -> Option<Kind> {
        Kind::from_byte(self.kind)
    }

    /// A put record (the only kind a live slot may point at).
    pub(crate) fn is_put(&self) -> bool {
        self.kind == KIND_PUT
    }

    pub(crate) fn is_end(&self) -> bool {
        self.flags & FLAG_END != 0
    }

    /// A put with an expiry prefix.
    pub(crate) fn has_ttl(&self) -> bool {
        self.flags & FLAG_TTL != 0
    }

    /// Bytes of the record; for an index chunk, including padding and table.
    pub(crate) fn len_at(&self, off: u64) -> Option<u64> {
        match self.kind() {
            Some(Kind::Index) => {
                let start = align_up(off.checked_add(HEADER_LEN)?, FORMAT_PAGE)?;
                start
                    .checked_add(8u64.checked_shl(self.val_len)?)
                    .map(|end| end - off)
            }
            _ => Some(record_len(self.key_len as usize, self.val_len as usize)),
        }
    }

    /// Check the kind, the field rules and the header CRC of a header read
    /// at `off`. Says nothing about the key and value bytes.
    pub(crate) fn check(&self, salt: u32, off: u64) -> bool {
        self.fields_ok() && self.hdr_crc == header_crc(salt, off, &self.tail_bytes())
    }

    /// The kind and the field rules alone: a known kind, no unknown flag,
    /// an expiry only on a put whose value area holds it, an index chunk's
    /// fields. The reads through a slot check these (their CRC check
    /// covers the header together with the body); a header that breaks
    /// them must not be read as a record, even with valid CRCs.
    pub(crate) fn fields_ok(&self) -> bool {
        let fields_ok = match self.kind() {
            Some(Kind::Put) => self.flags & FLAG_TTL == 0 || self.val_len as usize >= TTL_LEN,
            Some(Kind::Del) => self.val_len == 0,
            Some(Kind::Index) => {
                self.key_len == 0
                    && self.seq_gen == 0
                    && self.flags == 0
                    && (crate::index::MIN_LOG2CAP..=crate::index::MAX_LOG2CAP)
                        .contains(&self.val_len)
            }
            None => false,
        };
        fields_ok && self.flags & !(FLAG_END | FLAG_TTL) == 0 && (self.is_put() || !self.has_ttl())
    }
}

pub(crate) fn header_crc(salt: u32, off: u64, tail: &[u8; 16]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt ^ HDR_SALT);
    h.update(&off.to_le_bytes());
    h.update(tail);
    h.finalize()
}

/// Streaming CRC of a whole record: feed the key and value bytes in order.
pub(crate) struct BodyCrc(crc32fast::Hasher);

impl BodyCrc {
    pub(crate) fn new(salt: u32, off: u64, tail: &[u8; 16]) -> BodyCrc {
        let mut h = crc32fast::Hasher::new_with_initial(salt);
        h.update(&off.to_le_bytes());
        h.update(tail);
        BodyCrc(h)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// Build the header of a put or delete record to be written at `off`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    salt: u32,
    off: u64,
    kind: Kind,
    end: bool,
    key: &[u8],
    prefix: &[u8],
    value: &[u8],
    seq_gen: u64,
) -> Header {
    debug_assert!(key.len() <= MAX_KEY_LEN && prefix.len() + value.len() <= MAX_VALUE_LEN);
    debug_assert!(prefix.is_empty() || prefix.len() == TTL_LEN);
    let mut flags = if end { FLAG_END } else { 0 };
    if !prefix.is_empty() {
        flags |= FLAG_TTL;
    }
    let mut h = Header {
        crc: 0,
        hdr_crc: 0,
        kind: kind.byte(),
        flags,
        key_len: key.len() as u16,
        val_len: (prefix.len() + value.len()) as u32,
        seq_gen,
    };
    let tail = h.tail_bytes();
    h.hdr_crc = header_crc(salt, off, &tail);
    let mut c = BodyCrc::new(salt, off, &tail);
    c.update(key);
    c.update(prefix);
    c.update(value);
    h.crc = c.finish();
    h
}

/// Build the header of an index chunk at `off` holding `1 << log2cap` slots.
pub(crate) fn encode_index(salt: u32, off: u64, log2cap: u32) -> Header {
    let mut h = Header {
        crc: 0,
        hdr_crc: 0,
        kind: KIND_INDEX,
        flags: 0,
        key_len: 0,
        val_len: log2cap,
        seq_gen: 0,
    };
    h.hdr_crc = header_crc(salt, off, &h.tail_bytes());
    h.crc = h.hdr_crc;
    h
}

/// Offset of the slot table of an index chunk whose header is at `off`.
pub(crate) fn index_table_start(off: u64) -> Option<u64> {
    align_up(off.checked_add(HEADER_LEN)?, FORMAT_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_crc_binding() {
        let h = encode(
            77,
            4096,
            Kind::Put,
            true,
            b"key",
            b"",
            b"value",
            seq_gen(5, 2),
        );
        let b = h.to_bytes();
        let d = Header::from_bytes(&b);
        assert_eq!(d, h);
        assert!(d.check(77, 4096));
        assert!(!d.check(78, 4096), "another file's salt must not validate");
        assert!(
            !d.check(77, 4104),
            "the same bytes elsewhere must not validate"
        );
        assert_eq!(d.len_at(4096), Some(32));
        assert!(d.is_end());
        assert_eq!(seq_of(d.seq_gen), 5);
        assert_eq!(gen_of(d.seq_gen), 2);
        let mut c = BodyCrc::new(77, 4096, &d.tail_bytes());
        c.update(b"key");
        c.update(b"value");
        assert_eq!(c.finish(), d.crc);
        // Every single-bit flip in the header is caught.
        for i in 4..24 {
            for bit in 0..8 {
                let mut x = b;
                x[i] ^= 1 << bit;
                assert!(!Header::from_bytes(&x).check(77, 4096), "flip {i}:{bit}");
            }
        }
    }

    #[test]
    fn zeros_never_validate() {
        let z = Header::from_bytes(&[0; 24]);
        for salt in [0, 1, 0xffff_ffff] {
            assert!(!z.check(salt, 4096));
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(record_len(0, 0), 24);
        assert_eq!(record_len(24, 150), 200);
        assert_eq!(record_len(1, 0), 32);
        let ix = encode_index(3, 12288, 9);
        assert!(ix.check(3, 12288));
        assert_eq!(index_table_start(12288), Some(16384));
        assert_eq!(ix.len_at(12288), Some(4096 + 4096));
        let del = encode(3, 64, Kind::Del, true, b"k", b"", b"", 1);
        assert!(del.check(3, 64));
        // A put with an expiry: the prefix counts in the value length and
        // the CRC; a TTL flag on anything else, or on a value shorter than
        // the prefix, is malformed.
        let t = encode(3, 64, Kind::Put, true, b"k", &9u64.to_le_bytes(), b"v", 1);
        assert!(t.check(3, 64) && t.has_ttl());
        assert_eq!(t.val_len as usize, TTL_LEN + 1);
        let mut c = BodyCrc::new(3, 64, &t.tail_bytes());
        c.update(b"k");
        c.update(&9u64.to_le_bytes());
        c.update(b"v");
        assert_eq!(c.finish(), t.crc);
        let mut short = t;
        short.val_len = 3;
        short.hdr_crc = header_crc(3, 64, &short.tail_bytes());
        assert!(!short.check(3, 64));
        let mut del_ttl = del;
        del_ttl.flags |= FLAG_TTL;
        del_ttl.hdr_crc = header_crc(3, 64, &del_ttl.tail_bytes());
        assert!(!del_ttl.check(3, 64));
        let mut bad = del;
        bad.val_len = 1;
        bad.hdr_crc = header_crc(3, 64, &bad.tail_bytes());
        assert!(!bad.check(3, 64), "a delete with a value is malformed");
    }

    #[test]
    fn byte_map_matches_the_struct() {
        use crate::storage::byte_map::{self, fields};
        let f = fields!(Header: crc, hdr_crc, kind, flags, key_len, val_len, seq_gen);
        let rows = byte_map::doc_comment(include_str!("record.rs"));
        byte_map::check("record.rs byte map", &rows, 0, &f, HEADER_LEN as usize);
        let md = include_str!("../../docs/FORMAT.md");
        let rows = byte_map::markdown_table(md, "## Arena items");
        byte_map::check("docs/FORMAT.md header", &rows, 0, &f, HEADER_LEN as usize);
    }

    /// The Pod casts are the byte map: each field at its documented
    /// offset, little-endian.
    #[test]
    fn bytes_are_the_documented_fields() {
        let h = Header {
            crc: 0x0403_0201,
            hdr_crc: 0x0807_0605,
            kind: KIND_DEL,
            flags: FLAG_END | FLAG_TTL,
            key_len: 0x0b0a,
            val_len: 0x0f0e_0d0c,
            seq_gen: 0x1716_1514_1312_1110,
        };
        let b = h.to_bytes();
        assert_eq!(b[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[8..10], [KIND_DEL, 3]);
        assert_eq!(
            b[10..],
            [0xa, 0xb, 0xc, 0xd, 0xe, 0xf, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17]
        );
        assert_eq!(h.tail_bytes()[..], b[8..]);
        assert_eq!(Header::from_bytes(&b), h);
        // Unaligned input is fine.
        let mut shifted = [0u8; 25];
        shifted[1..].copy_from_slice(&b);
        assert_eq!(Header::from_bytes(shifted[1..].try_into().unwrap()), h);
    }

    #[test]
    fn generation_order_wraps() {
        assert!(gen_not_older(5, 5));
        assert!(gen_not_older(5, 6));
        assert!(!gen_not_older(6, 5));
        assert!(gen_not_older(0xffff, 0));
        assert!(!gen_not_older(0, 0xffff));
    }
}
