//! Fault injection and I/O observation for mapkv's own crash tests and fuzz
//! targets. Not part of the stable API.
//!
//! Every durability-relevant system call of a store (msync, fsync, file
//! growth, write-back start) goes through one choke point in
//! `storage::mapping`, which calls the hooks registered here twice: before
//! the call (a hook may return an error to make the call fail without
//! running it) and after it succeeded (so a power-loss simulator can record
//! what has become durable). Hooks see every store in the process and
//! filter by path.

pub use crate::storage::hooks::{add_io_hook, HookGuard, IoHook, IoOp, Phase};

/// File offset of the control block (the live, shared state words; see
/// docs/FORMAT.md), for tests and fuzz targets that change its words under
/// a live handle. The same as [`layout::CONTROL_OFFSET`].
#[doc(hidden)]
pub use layout::CONTROL_OFFSET;

/// The on-disk layout (docs/FORMAT.md), for tests and fuzz targets that
/// read or damage a store's file: every value is taken from mapkv's own
/// definitions (the `#[repr(C)]` structs, their `offset_of!`, the format
/// constants), never written out again, so tests cannot drift from the
/// format.
///
/// File offsets and lengths are `u64`, as mapkv uses them. The submodules
/// [`meta`](layout::meta), [`control`](layout::control) and
/// [`header`](layout::header) give the byte offset of each field *within*
/// its structure, as `usize` (add the structure's file offset: a meta
/// copy's, [`CONTROL_OFFSET`](layout::CONTROL_OFFSET), or a record's).
#[doc(hidden)]
pub mod layout {
    use crate::log::record;
    use crate::storage::{self, control as ctl, meta as mt};

    /// The unit of the layout: meta copies and the control block are one
    /// page each; index tables start on a page boundary.
    pub const FORMAT_PAGE: u64 = storage::FORMAT_PAGE;
    /// File lengths are multiples of this.
    pub const GRANULE: u64 = storage::GRANULE;
    /// File offset of meta copy A.
    pub const META_A_OFFSET: u64 = storage::META_A_OFFSET;
    /// File offset of meta copy B.
    pub const META_B_OFFSET: u64 = storage::META_B_OFFSET;
    /// File offsets of both meta copies, A then B.
    pub const META_COPIES: [u64; 2] = [META_A_OFFSET, META_B_OFFSET];
    /// Bytes of a meta copy that are used (the CRC is the last 4).
    pub const META_LEN: usize = mt::META_LEN;
    /// File offset of the control block.
    pub const CONTROL_OFFSET: u64 = storage::CONTROL_OFFSET;
    /// Bytes of the control block.
    pub const CONTROL_LEN: u64 = ctl::CONTROL_LEN;
    /// File offset of the writer lock word.
    pub const WRITER_LOCK_OFFSET: u64 = storage::WRITER_LOCK_OFFSET;
    /// File offset of the first arena item (the first log record or index
    /// chunk).
    pub const ARENA_START: u64 = storage::ARENA_START;

    /// The meta magic number, `"\x89MAPKV\r\n"`.
    pub const META_MAGIC: [u8; 8] = mt::MAGIC;
    /// The format version this build writes.
    pub const FORMAT_VERSION: u32 = mt::FORMAT_VERSION;
    /// Meta flag: closed cleanly.
    pub const FLAG_CLEAN: u32 = mt::FLAG_CLEAN;
    /// The meta CRC starts from `crc_salt ^ META_CRC_XOR`.
    pub const META_CRC_XOR: u32 = mt::META_CRC_XOR;

    /// The control block's magic, as the bytes in the file.
    pub const CONTROL_MAGIC: [u8; 8] = ctl::CONTROL_MAGIC.to_le_bytes();
    /// The control block's magic while a compaction moves the store.
    pub const MOVING_MAGIC: [u8; 8] = ctl::MOVING_MAGIC.to_le_bytes();
    /// The control block's magic once the store has moved.
    pub const MOVED_MAGIC: [u8; 8] = ctl::MOVED_MAGIC.to_le_bytes();

    /// An index descriptor (`meta::INDEX_DESC`, `control::INDEX_DESC`) is
    /// the slot table's page-aligned file offset OR'd with log2 of its slot
    /// count: this mask selects the log2, its complement the offset.
    pub const INDEX_DESC_LOG2_MASK: u64 = crate::index::DESC_LOG2_MASK;

    /// Bytes of a record (or index chunk) header.
    pub const HEADER_LEN: u64 = record::HEADER_LEN;
    /// `kind` byte of a put record.
    pub const KIND_PUT: u8 = record::KIND_PUT;
    /// `kind` byte of a delete record (tombstone).
    pub const KIND_DEL: u8 = record::KIND_DEL;
    /// `kind` byte of an index chunk.
    pub const KIND_INDEX: u8 = record::KIND_INDEX;
    /// `flags` bit: the last record of its commit.
    pub const FLAG_END: u8 = record::FLAG_END;
    /// `flags` bit: a put whose value area starts with an expiry time.
    pub const FLAG_TTL: u8 = record::FLAG_TTL;
    /// Bytes of the expiry prefix of a `FLAG_TTL` put.
    pub const TTL_LEN: usize = record::TTL_LEN;
    /// The header CRC starts from `crc_salt ^ HEADER_CRC_XOR`.
    pub const HEADER_CRC_XOR: u32 = record::HDR_SALT;

    /// Byte offsets of the fields of a meta copy (`storage::meta::Meta`).
    pub mod meta {
        use crate::storage::meta::Meta;
        use std::mem::offset_of;

        /// `magic`: 8 bytes.
        pub const MAGIC: usize = offset_of!(Meta, magic);
        /// `version`: u32.
        pub const VERSION: usize = offset_of!(Meta, version);
        /// `page_size`: u32.
        pub const PAGE_SIZE: usize = offset_of!(Meta, page_size);
        /// `meta_seq`: u64.
        pub const META_SEQ: usize = offset_of!(Meta, meta_seq);
        /// `hash_seed`: u64.
        pub const HASH_SEED: usize = offset_of!(Meta, hash_seed);
        /// `crc_salt`: u32.
        pub const CRC_SALT: usize = offset_of!(Meta, crc_salt);
        /// `flags`: u32.
        pub const FLAGS: usize = offset_of!(Meta, flags);
        /// `boot_id`: 16 bytes.
        pub const BOOT_ID: usize = offset_of!(Meta, boot_id);
        /// `file_len`: u64.
        pub const FILE_LEN: usize = offset_of!(Meta, file_len);
        /// `tail`: u64.
        pub const TAIL: usize = offset_of!(Meta, tail);
        /// `seq_gen`: u64.
        pub const SEQ_GEN: usize = offset_of!(Meta, seq_gen);
        /// `generation`: u32.
        pub const GENERATION: usize = offset_of!(Meta, generation);
        /// `file_nonce`: u32.
        pub const FILE_NONCE: usize = offset_of!(Meta, file_nonce);
        /// `index_desc`: u64.
        pub const INDEX_DESC: usize = offset_of!(Meta, index_desc);
        /// `index_used`: u64.
        pub const INDEX_USED: usize = offset_of!(Meta, index_used);
        /// `live_keys`: u64.
        pub const LIVE_KEYS: usize = offset_of!(Meta, live_keys);
        /// `live_bytes`: u64.
        pub const LIVE_BYTES: usize = offset_of!(Meta, live_bytes);
        /// `capacity`: u32.
        pub const CAPACITY: usize = offset_of!(Meta, capacity);
        /// `crc`: u32, over every byte before it.
        pub const CRC: usize = offset_of!(Meta, crc);
    }

    /// Byte offsets of the words of the control block
    /// (`storage::control::ControlBlock`; add `CONTROL_OFFSET`).
    pub mod control {
        use crate::storage::control::ControlBlock;
        use std::mem::offset_of;

        /// `magic`: u64.
        pub const MAGIC: usize = offset_of!(ControlBlock, magic);
        /// `version`: u64, the seqlock word.
        pub const VERSION: usize = offset_of!(ControlBlock, version);
        /// `tail`: u64.
        pub const TAIL: usize = offset_of!(ControlBlock, tail);
        /// `seq_gen`: u64.
        pub const SEQ_GEN: usize = offset_of!(ControlBlock, seq_gen);
        /// `index_desc`: u64.
        pub const INDEX_DESC: usize = offset_of!(ControlBlock, index_desc);
        /// `index_used`: u64.
        pub const INDEX_USED: usize = offset_of!(ControlBlock, index_used);
        /// `live_keys`: u64.
        pub const LIVE_KEYS: usize = offset_of!(ControlBlock, live_keys);
        /// `live_bytes`: u64.
        pub const LIVE_BYTES: usize = offset_of!(ControlBlock, live_bytes);
        /// `generation`: u64.
        pub const GENERATION: usize = offset_of!(ControlBlock, generation);
        /// `file_len`: u64.
        pub const FILE_LEN: usize = offset_of!(ControlBlock, file_len);
        /// `durable_tail`: u64 (the writer state starts here).
        pub const DURABLE_TAIL: usize = offset_of!(ControlBlock, durable_tail);
        /// `durable_seq_gen`: u64.
        pub const DURABLE_SEQ_GEN: usize = offset_of!(ControlBlock, durable_seq_gen);
        /// `durable_len`: u64.
        pub const DURABLE_LEN: usize = offset_of!(ControlBlock, durable_len);
        /// `meta_seq`: u64.
        pub const META_SEQ: usize = offset_of!(ControlBlock, meta_seq);
        /// `synced_copy`: u64.
        pub const SYNCED_COPY: usize = offset_of!(ControlBlock, synced_copy);
        /// `writer`: u64.
        pub const WRITER: usize = offset_of!(ControlBlock, writer);
        /// `writers`: u64.
        pub const WRITERS: usize = offset_of!(ControlBlock, writers);
        /// `capacity`: u64.
        pub const CAPACITY: usize = offset_of!(ControlBlock, capacity);
        /// `evicted`: u64.
        pub const EVICTED: usize = offset_of!(ControlBlock, evicted);
        /// `expired`: u64.
        pub const EXPIRED: usize = offset_of!(ControlBlock, expired);
        /// `evict_runs`: u64.
        pub const EVICT_RUNS: usize = offset_of!(ControlBlock, evict_runs);
        /// `session_boot`: 16 bytes, two u64 words.
        pub const SESSION_BOOT: usize = offset_of!(ControlBlock, session_boot);
        /// `hits`: u64, store-wide cache hits.
        pub const HITS: usize = offset_of!(ControlBlock, hits);
        /// `misses`: u64, store-wide cache misses.
        pub const MISSES: usize = offset_of!(ControlBlock, misses);
        /// `ttl`: u64, 1 if the store may hold entries with an expiry.
        pub const TTL: usize = offset_of!(ControlBlock, ttl);
        /// `notify`: u32, the change futex word.
        pub const NOTIFY: usize = offset_of!(ControlBlock, notify);
        /// `waiters`: u64.
        pub const WAITERS: usize = offset_of!(ControlBlock, waiters);
        /// `writer_lock`: u64.
        pub const WRITER_LOCK: usize = offset_of!(ControlBlock, writer_lock);
    }

    /// Byte offsets of the fields of a record or index chunk header
    /// (`log::record::Header`; add the record's file offset).
    pub mod header {
        use crate::log::record::Header;
        use std::mem::offset_of;

        /// `crc`: u32.
        pub const CRC: usize = offset_of!(Header, crc);
        /// `hdr_crc`: u32.
        pub const HDR_CRC: usize = offset_of!(Header, hdr_crc);
        /// `kind`: u8. The header CRC covers the header from here on.
        pub const KIND: usize = offset_of!(Header, kind);
        /// `flags`: u8.
        pub const FLAGS: usize = offset_of!(Header, flags);
        /// `key_len`: u16.
        pub const KEY_LEN: usize = offset_of!(Header, key_len);
        /// `val_len`: u32.
        pub const VAL_LEN: usize = offset_of!(Header, val_len);
        /// `seq_gen`: u64.
        pub const SEQ_GEN: usize = offset_of!(Header, seq_gen);
    }
}
