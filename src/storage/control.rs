//! The control block: the live, shared state of the store, one page of
//! atomic words at [`CONTROL_OFFSET`](super::CONTROL_OFFSET), defined once
//! as the `#[repr(C)]` struct [`ControlBlock`]. The byte map below is
//! checked against that struct by a unit test.
//!
//! ```text
//! offset size field           meaning
//! 0      8    magic           "MKVCTRL3" once initialised ("MKVMOVNG",
//!                             "MKVMOVED" while and after a compaction
//!                             moves the store to a new file)
//! 8      8    version         seqlock word: odd while the writer changes
//!                             the index or the fields below; even when
//!                             they agree
//! 16     8    tail            end of the log that is applied to the index
//! 24     8    seq_gen         last applied commit (seq | generation << 48)
//! 32     8    index_desc      current slot table (page offset | log2
//!                             capacity)
//! 40     8    index_used      occupied slots (live + tombstones)
//! 48     8    live_keys
//! 56     8    live_bytes      bytes of live records
//! 64     8    generation      generation new commits are written with
//! 72     8    file_len        file length published by the last grower
//! 80     8    durable_tail    log below this is on stable storage
//! 88     8    durable_seq_gen last commit below durable_tail
//! 96     8    durable_len     file length known to be durable (fsync'd)
//! 104    8    meta_seq        sequence number of the newest meta written
//! 112    8    synced_copy     offset of the meta copy holding the newest
//!                             *synced* meta (the next meta goes to the
//!                             other)
//! 120    8    writer          pid (in its own PID namespace) of the writer
//!                             holding the writer lock, while it may change
//!                             anything; 0 when the store is consistent.
//!                             Non-zero at lock time means the last writer
//!                             died (or failed) mid-change: the new holder
//!                             repairs first. Also named in the error of a
//!                             writer that timed out waiting.
//! 128    8    writers         read-write handles open (a crashed one is
//!                             never subtracted: then nobody marks the store
//!                             clean, and the next open replays, which is
//!                             safe)
//! 136    8    capacity        cache mode: bound on the file length (0: none)
//! 144    8    evicted         cache counters: entries evicted,
//! 152    8    expired         expired entries dropped,
//! 160    8    evict_runs      and evictions run
//! 168    16   session_boot    boot id of the writer that started the
//!                             current session (the control block is live
//!                             state only within that boot); two words
//! 184    8    hits            reads that found their key, by every handle
//!                             (cache mode; handles add theirs in batches)
//! 192    8    misses          and reads that did not
//! 200    8    ttl             1 if the store may hold entries with an
//!                             expiry (`len` then counts the live ones by
//!                             looking), 0 if it holds none
//! 208    48   (unused)        padding: `notify` starts a cache line
//! 256    4    notify          u32 futex word, bumped after every commit
//! 260    4    (unused)        high half of notify's word
//! 264    8    waiters         processes sleeping on `notify` (writers skip
//!                             the wake system call when it is 0)
//! 272    240  (unused)        padding: the writer lock starts a cache line
//! 512    8    writer_lock     one word: holder's registration slot, a
//!                             waiting bit and a sequence (see lock.rs)
//! 520    56   (unused)        rest of the 64 bytes reserved for the lock
//! 576    3520 (unused)        to the end of the page
//! ```
//!
//! Unused bytes are zero in files this format created (a format-1 file
//! upgraded in place may keep bytes of its old writer mutex after the
//! `writer_lock` word); nothing reads them.
//!
//! Everything from `durable_tail` on is writer state: read and written
//! only with the writer lock held, so every writer process continues from
//! where the previous one stopped.
//!
//! The control block is never trusted across an OS crash (it is not synced);
//! after a process crash in the same boot it is, if its magic is right, its
//! version is even and its fields pass their checks: then recovery only
//! replays the log past `tail`. An odd version means the writer died while
//! changing the index, and recovery rebuilds the index from the log.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use super::FORMAT_PAGE;

pub(crate) const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"MKVCTRL3");
/// Magic while a compaction that holds the writer lock renames its new
/// file over this one: readers check whether the path names another file.
pub(crate) const MOVING_MAGIC: u64 = u64::from_le_bytes(*b"MKVMOVNG");
/// Magic once the store has moved to a new file under the same path:
/// every handle follows it there.
pub(crate) const MOVED_MAGIC: u64 = u64::from_le_bytes(*b"MKVMOVED");

/// The control page as it lies in the file: every byte of it is part of
/// an atomic word, padding included, so that a shared reference to it is
/// sound while other processes store into any of its bytes (DESIGN.md
/// invariant 9). Laid out like LMDB's `MDB_txninfo`: the words every
/// operation touches share the first cache line, the change futex and its
/// waiter count have their own line, and so does the writer lock.
///
/// Fields are only ever accessed through [`Control`]'s methods (and the
/// writer lock through `lock.rs`); the file may hold anything in them, so
/// every value read is checked before use.
#[repr(C)]
pub(crate) struct ControlBlock {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU64,
    pub(crate) tail: AtomicU64,
    pub(crate) seq_gen: AtomicU64,
    pub(crate) index_desc: AtomicU64,
    pub(crate) index_used: AtomicU64,
    pub(crate) live_keys: AtomicU64,
    pub(crate) live_bytes: AtomicU64,
    pub(crate) generation: AtomicU64,
    pub(crate) file_len: AtomicU64,
    pub(crate) durable_tail: AtomicU64,
    pub(crate) durable_seq_gen: AtomicU64,
    pub(crate) durable_len: AtomicU64,
    pub(crate) meta_seq: AtomicU64,
    pub(crate) synced_copy: AtomicU64,
    pub(crate) writer: AtomicU64,
    pub(crate) writers: AtomicU64,
    pub(crate) capacity: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) evict_runs: AtomicU64,
    /// 16 bytes of boot id, as two little-endian words.
    pub(crate) session_boot: [AtomicU64; 2],
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) ttl: AtomicU64,
    _pad_to_notify: [AtomicU64; 6],
    /// The change futex: bumped after every commit.
    pub(crate) notify: AtomicU32,
    _notify_high: AtomicU32,
    pub(crate) waiters: AtomicU64,
    _pad_to_writer_lock: [AtomicU64; 30],
    /// The writer lock word (see lock.rs); 64 bytes reserved.
    pub(crate) writer_lock: AtomicU64,
    _writer_lock_reserved: [AtomicU64; 7],
    _pad_to_end: [AtomicU64; 440],
}

/// Bytes of the control block: one format page.
pub(crate) const CONTROL_LEN: u64 = size_of::<ControlBlock>() as u64;
/// Bytes reserved for the writer lock, from `writer_lock`.
pub(crate) const WRITER_LOCK_LEN: u64 =
    offset_of!(ControlBlock, _pad_to_end) as u64 - offset_of!(ControlBlock, writer_lock) as u64;
/// Offset of the boot id words in the control block.
#[cfg(test)]
pub(crate) const SESSION_BOOT: u64 = offset_of!(ControlBlock, session_boot) as u64;
/// Offset of the index descriptor word in the control block.
pub(crate) const INDEX_DESC: u64 = offset_of!(ControlBlock, index_desc) as u64;
/// Offset of the change futex word in the control block.
#[cfg(test)]
pub(crate) const NOTIFY: u64 = offset_of!(ControlBlock, notify) as u64;

// The layout is the format: these offsets never change.
const _: () = {
    assert!(size_of::<ControlBlock>() == FORMAT_PAGE as usize);
    assert!(std::mem::align_of::<ControlBlock>() == 8);
    assert!(offset_of!(ControlBlock, magic) == 0);
    assert!(offset_of!(ControlBlock, version) == 8);
    assert!(offset_of!(ControlBlock, tail) == 16);
    assert!(offset_of!(ControlBlock, seq_gen) == 24);
    assert!(offset_of!(ControlBlock, index_desc) == 32);
    assert!(offset_of!(ControlBlock, index_used) == 40);
    assert!(offset_of!(ControlBlock, live_keys) == 48);
    assert!(offset_of!(ControlBlock, live_bytes) == 56);
    assert!(offset_of!(ControlBlock, generation) == 64);
    assert!(offset_of!(ControlBlock, file_len) == 72);
    assert!(offset_of!(ControlBlock, durable_tail) == 80);
    assert!(offset_of!(ControlBlock, durable_seq_gen) == 88);
    assert!(offset_of!(ControlBlock, durable_len) == 96);
    assert!(offset_of!(ControlBlock, meta_seq) == 104);
    assert!(offset_of!(ControlBlock, synced_copy) == 112);
    assert!(offset_of!(ControlBlock, writer) == 120);
    assert!(offset_of!(ControlBlock, writers) == 128);
    assert!(offset_of!(ControlBlock, capacity) == 136);
    assert!(offset_of!(ControlBlock, evicted) == 144);
    assert!(offset_of!(ControlBlock, expired) == 152);
    assert!(offset_of!(ControlBlock, evict_runs) == 160);
    assert!(offset_of!(ControlBlock, session_boot) == 168);
    assert!(size_of::<[AtomicU64; 2]>() == 16);
    assert!(offset_of!(ControlBlock, hits) == 184);
    assert!(offset_of!(ControlBlock, misses) == 192);
    assert!(offset_of!(ControlBlock, ttl) == 200);
    assert!(offset_of!(ControlBlock, _pad_to_notify) == 208);
    assert!(offset_of!(ControlBlock, notify) == 256);
    assert!(offset_of!(ControlBlock, _notify_high) == 260);
    assert!(offset_of!(ControlBlock, waiters) == 264);
    assert!(offset_of!(ControlBlock, _pad_to_writer_lock) == 272);
    assert!(offset_of!(ControlBlock, writer_lock) == 512);
    assert!(offset_of!(ControlBlock, _writer_lock_reserved) == 520);
    assert!(offset_of!(ControlBlock, _pad_to_end) == 576);
    assert!(WRITER_LOCK_LEN == 64);
    // Cache lines: the futex and the writer lock each start one.
    assert!(offset_of!(ControlBlock, notify) % 64 == 0);
    assert!(offset_of!(ControlBlock, writer_lock) % 64 == 0);
};

/// The writer's durable bookkeeping, shared by every writer process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    pub tail: u64,
    pub seq_gen: u64,
    pub len: u64,
    pub meta_seq: u64,
    pub synced_copy: u64,
}

/// A consistent snapshot of the control block's state fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub tail: u64,
    pub seq_gen: u64,
    pub index_desc: u64,
    pub index_used: u64,
    pub live_keys: u64,
    pub live_bytes: u64,
    pub generation: u64,
}

/// Typed access to the control block of an arena.
#[derive(Clone, Copy)]
pub(crate) struct Control<'a> {
    block: &'a ControlBlock,
}

/// A copy of the control block read with `pread`, before the file is
/// mapped (an opener deciding whether to join a live session), decoded by
/// the struct's own offsets.
pub(crate) struct ControlCopy(Vec<u8>);

impl ControlCopy {
    /// Read the control page of `f`.
    pub(crate) fn read(f: &std::fs::File) -> std::io::Result<ControlCopy> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; CONTROL_LEN as usize];
        f.read_exact_at(&mut b, super::CONTROL_OFFSET)?;
        Ok(ControlCopy(b))
    }

    fn word(&self, off: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[off..off + 8]);
        u64::from_le_bytes(w)
    }

    pub(crate) fn magic(&self) -> u64 {
        self.word(offset_of!(ControlBlock, magic))
    }

    /// The seqlock word: odd while a writer was changing the state.
    pub(crate) fn version(&self) -> u64 {
        self.word(offset_of!(ControlBlock, version))
    }

    /// The state fields, as read (not checked against the seqlock).
    pub(crate) fn state(&self) -> State {
        State {
            tail: self.word(offset_of!(ControlBlock, tail)),
            seq_gen: self.word(offset_of!(ControlBlock, seq_gen)),
            index_desc: self.word(offset_of!(ControlBlock, index_desc)),
            index_used: self.word(offset_of!(ControlBlock, index_used)),
            live_keys: self.word(offset_of!(ControlBlock, live_keys)),
            live_bytes: self.word(offset_of!(ControlBlock, live_bytes)),
            generation: self.word(offset_of!(ControlBlock, generation)),
        }
    }

    /// Whether this is the live state of a session a writer started in
    /// the boot `boot_id` (see [`Control::is_session_of`]).
    pub(crate) fn is_session_of(&self, boot_id: &[u8; 16]) -> bool {
        let at = offset_of!(ControlBlock, session_boot);
        [CONTROL_MAGIC, MOVING_MAGIC, MOVED_MAGIC].contains(&self.magic())
            && self.0[at..at + 16] == boot_id[..]
            && *boot_id != [0; 16]
    }
}

impl<'a> Control<'a> {
    /// Typed access to a mapped control block (see `Arena::control`).
    pub(crate) fn of(block: &'a ControlBlock) -> Control<'a> {
        Control { block }
    }

    pub(crate) fn magic(&self) -> u64 {
        self.block.magic.load(Ordering::Acquire)
    }

    /// Set the magic word (compaction: moving, moved; or back to normal).
    pub(crate) fn set_magic(&self, m: u64) {
        self.block.magic.store(m, Ordering::SeqCst);
    }

    /// The current slot table descriptor, for readers.
    #[inline]
    pub(crate) fn index_desc(&self) -> u64 {
        self.block.index_desc.load(Ordering::Acquire)
    }

    pub(crate) fn live_keys(&self) -> u64 {
        self.block.live_keys.load(Ordering::Acquire)
    }

    pub(crate) fn set_file_len(&self, len: u64) {
        self.block.file_len.fetch_max(len, Ordering::AcqRel);
    }

    /// The file length the last grower published (a hint: checked with
    /// fstat before use).
    pub(crate) fn file_len(&self) -> u64 {
        self.block.file_len.load(Ordering::Acquire)
    }

    /// Set the file length after the file was cut (clean close, alone).
    pub(crate) fn reset_file_len(&self, len: u64) {
        self.block.file_len.store(len, Ordering::Release);
    }

    /// The seqlock word: odd while a writer changes the index.
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        self.block.version.load(Ordering::Acquire)
    }

    /// The last applied commit (seq | generation << 48).
    #[inline]
    pub(crate) fn seq_gen(&self) -> u64 {
        self.block.seq_gen.load(Ordering::Acquire)
    }

    pub(crate) fn durable(&self) -> Durable {
        let b = self.block;
        let r = |w: &AtomicU64| w.load(Ordering::Acquire);
        Durable {
            tail: r(&b.durable_tail),
            seq_gen: r(&b.durable_seq_gen),
            len: r(&b.durable_len),
            meta_seq: r(&b.meta_seq),
            synced_copy: r(&b.synced_copy),
        }
    }

    pub(crate) fn set_durable(&self, d: &Durable) {
        let b = self.block;
        let st = |w: &AtomicU64, v| w.store(v, Ordering::Release);
        st(&b.durable_tail, d.tail);
        st(&b.durable_seq_gen, d.seq_gen);
        st(&b.durable_len, d.len);
        st(&b.meta_seq, d.meta_seq);
        st(&b.synced_copy, d.synced_copy);
    }

    /// Pid of the writer mid-change, or 0.
    pub(crate) fn writer(&self) -> u64 {
        self.block.writer.load(Ordering::Acquire)
    }

    pub(crate) fn set_writer(&self, pid: u64) {
        self.block.writer.store(pid, Ordering::Release);
    }

    /// Read-write handles open on the store.
    pub(crate) fn writers(&self) -> &'a AtomicU64 {
        &self.block.writers
    }

    /// The end of the applied log (one load; see `snapshot` for a
    /// consistent set of fields).
    pub(crate) fn tail(&self) -> u64 {
        self.block.tail.load(Ordering::Acquire)
    }

    /// Cache mode: the bound on the file's length in bytes (0: none).
    /// Every writer checks it before growing the file. Clamped to what a
    /// file can be (the word may hold anything): at most `MAX_FILE_LEN`,
    /// and, if set, at least `MIN_CAPACITY`.
    pub(crate) fn capacity(&self) -> u64 {
        match self.block.capacity.load(Ordering::Acquire) {
            0 => 0,
            c => c.clamp(super::MIN_CAPACITY, super::MAX_FILE_LEN),
        }
    }

    pub(crate) fn set_capacity(&self, bytes: u64) {
        self.block.capacity.store(bytes, Ordering::Release);
    }

    /// The cache counter words, in the order of `cache_counters`.
    fn counter_words(&self) -> [&'a AtomicU64; 5] {
        let b = self.block;
        [&b.evicted, &b.expired, &b.evict_runs, &b.hits, &b.misses]
    }

    /// Cache counters: entries evicted, expired entries dropped,
    /// evictions run, hits and misses, since the store was created (they
    /// move with the store to a compaction's new file; statistics only,
    /// zeroed when recovery cannot trust the control block).
    pub(crate) fn cache_counters(&self) -> [u64; 5] {
        self.counter_words().map(|w| w.load(Ordering::Acquire))
    }

    /// Add a handle's hits and misses to the store's.
    pub(crate) fn add_reads(&self, hits: u64, misses: u64) {
        if hits > 0 {
            self.block.hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            self.block.misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    /// Whether the store may hold entries with an expiry.
    pub(crate) fn may_hold_ttl(&self) -> bool {
        self.block.ttl.load(Ordering::Acquire) != 0
    }

    /// Say whether the store may hold entries with an expiry (a writer,
    /// before it publishes a TTL put; recovery; compaction).
    pub(crate) fn set_may_hold_ttl(&self, yes: bool) {
        self.block.ttl.store(yes as u64, Ordering::Release);
    }

    pub(crate) fn set_cache_counters(&self, v: [u64; 5]) {
        for (w, v) in self.counter_words().into_iter().zip(v) {
            w.store(v, Ordering::Release);
        }
    }

    /// The boot id of the writer that started the current session.
    pub(crate) fn session_boot(&self) -> [u8; 16] {
        let [lo, hi] = &self.block.session_boot;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.load(Ordering::Acquire).to_le_bytes());
        b[8..].copy_from_slice(&hi.load(Ordering::Acquire).to_le_bytes());
        b
    }

    pub(crate) fn set_session_boot(&self, id: &[u8; 16]) {
        let half = |i: usize| u64::from_le_bytes(id[i..i + 8].try_into().unwrap_or([0; 8]));
        let [lo, hi] = &self.block.session_boot;
        lo.store(half(0), Ordering::Release);
        hi.store(half(8), Ordering::Release);
    }

    /// Whether this is the live state of a session a writer started in
    /// the boot `boot_id` (not all zeros: unknown).
    pub(crate) fn is_session_of(&self, boot_id: &[u8; 16]) -> bool {
        [CONTROL_MAGIC, MOVING_MAGIC, MOVED_MAGIC].contains(&self.magic())
            && self.session_boot() == *boot_id
            && *boot_id != [0; 16]
    }

    /// The change futex word: every commit bumps it and wakes its
    /// sleepers (`lock::futex_wait` / `lock::futex_wake_all`).
    pub(crate) fn notify_word(&self) -> &'a AtomicU32 {
        &self.block.notify
    }

    /// The waiter count of the change futex.
    pub(crate) fn waiters(&self) -> &'a AtomicU64 {
        &self.block.waiters
    }

    /// Reset the cross-process words that only mean something while the
    /// store is open (the opener that is alone calls this).
    pub(crate) fn reset_session(&self) {
        let b = self.block;
        b.writer.store(0, Ordering::Release);
        b.waiters.store(0, Ordering::Release);
        b.writers.store(0, Ordering::Release);
    }

    /// Read the state fields without tearing. Retries while a writer is
    /// mid-update; after `tries` failed attempts returns the last (possibly
    /// torn) read and `false`, so a hostile or dead writer cannot make a
    /// reader spin forever.
    pub(crate) fn snapshot(&self, tries: u32) -> (State, bool) {
        let mut s = State::default();
        for _ in 0..tries.max(1) {
            let v1 = self.block.version.load(Ordering::Acquire);
            s = self.read_fields();
            fence(Ordering::Acquire);
            let v2 = self.block.version.load(Ordering::Relaxed);
            if v1 == v2 && v1 % 2 == 0 {
                return (s, true);
            }
            std::hint::spin_loop();
        }
        (s, false)
    }

    fn read_fields(&self) -> State {
        let b = self.block;
        let r = |w: &AtomicU64| w.load(Ordering::Relaxed);
        State {
            tail: r(&b.tail),
            seq_gen: r(&b.seq_gen),
            index_desc: r(&b.index_desc),
            index_used: r(&b.index_used),
            live_keys: r(&b.live_keys),
            live_bytes: r(&b.live_bytes),
            generation: r(&b.generation),
        }
    }

    /// Mark the start of a change (version becomes odd). Only the writer,
    /// holding the writer lock, calls this.
    pub(crate) fn begin(&self) {
        let version = &self.block.version;
        let v = version.load(Ordering::Relaxed);
        let v = if v % 2 == 1 { v } else { v.wrapping_add(1) };
        version.store(v, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    /// Store the state fields and end the change (version becomes even).
    pub(crate) fn end(&self, s: &State) {
        let b = self.block;
        let st = |w: &AtomicU64, v| w.store(v, Ordering::Relaxed);
        st(&b.tail, s.tail);
        st(&b.seq_gen, s.seq_gen);
        b.index_desc.store(s.index_desc, Ordering::Release);
        st(&b.index_used, s.index_used);
        st(&b.live_keys, s.live_keys);
        st(&b.live_bytes, s.live_bytes);
        st(&b.generation, s.generation);
        let v = b.version.load(Ordering::Relaxed);
        let v = if v % 2 == 1 {
            v.wrapping_add(1)
        } else {
            v.wrapping_add(2)
        };
        b.version.store(v, Ordering::Release);
    }

    /// Initialise (or re-initialise after recovery) the whole block.
    pub(crate) fn reset(&self, s: &State, file_len: u64) {
        self.begin();
        self.reset_file_len(file_len);
        self.end(s);
        self.block.magic.store(CONTROL_MAGIC, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::byte_map::{self, fields};

    fn fields() -> Vec<(&'static str, usize, usize)> {
        fields!(ControlBlock: magic, version, tail, seq_gen, index_desc, index_used, live_keys,
            live_bytes, generation, file_len, durable_tail, durable_seq_gen, durable_len,
            meta_seq, synced_copy, writer, writers, capacity, evicted, expired, evict_runs,
            session_boot, hits, misses, ttl, notify, waiters, writer_lock)
    }

    #[test]
    fn byte_map_matches_the_struct() {
        let rows = byte_map::doc_comment(include_str!("control.rs"));
        byte_map::check(
            "control.rs byte map",
            &rows,
            0,
            &fields(),
            size_of::<ControlBlock>(),
        );
    }

    #[test]
    fn format_md_matches_the_struct() {
        let md = include_str!("../../docs/FORMAT.md");
        let rows = byte_map::markdown_table(md, "## Control block (`src/storage/control.rs`)");
        byte_map::check(
            "docs/FORMAT.md control block",
            &rows,
            super::super::CONTROL_OFFSET as usize,
            &fields(),
            size_of::<ControlBlock>(),
        );
    }

    #[test]
    fn magics_are_documented() {
        let docs = [
            include_str!("control.rs"),
            include_str!("../../docs/FORMAT.md"),
        ];
        for m in [CONTROL_MAGIC, MOVING_MAGIC, MOVED_MAGIC] {
            let name = String::from_utf8(m.to_le_bytes().to_vec()).unwrap();
            for d in docs {
                assert!(d.contains(&format!("\"{name}\"")), "{name} undocumented");
            }
        }
    }

    use super::super::mapping::Arena;

    fn arena() -> (tempfile::TempDir, Arena) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(65536).unwrap();
        let a = Arena::new(f, &p, 65536, 65536, super::super::mapping::MapMode::Shared).unwrap();
        (dir, a)
    }

    /// The struct's fields are the words at the documented file offsets.
    #[test]
    fn fields_land_at_their_file_offsets() {
        use super::super::{CONTROL_OFFSET, WRITER_LOCK_OFFSET};
        let (_d, a) = arena();
        let c = a.control().unwrap();
        let word = |off: u64| {
            let mut b = [0u8; 8];
            a.read(CONTROL_OFFSET + off, &mut b).unwrap();
            u64::from_le_bytes(b)
        };
        c.reset(
            &State {
                tail: 1,
                seq_gen: 2,
                index_desc: 3,
                index_used: 4,
                live_keys: 5,
                live_bytes: 6,
                generation: 7,
            },
            8,
        );
        c.set_durable(&Durable {
            tail: 9,
            seq_gen: 10,
            len: 11,
            meta_seq: 12,
            synced_copy: 13,
        });
        c.set_writer(14);
        c.writers().store(15, Ordering::Relaxed);
        c.set_capacity(16);
        c.set_cache_counters([17, 18, 19, 20, 21]);
        c.set_session_boot(&[0x20; 16]);
        c.waiters().store(21, Ordering::Relaxed);
        c.notify_word().store(22, Ordering::Relaxed);
        assert_eq!(word(0), CONTROL_MAGIC);
        assert_eq!(word(8), 2, "version: even after reset");
        for (i, off) in (16..=160).step_by(8).enumerate() {
            assert_eq!(word(off), i as u64 + 1, "word at {off}");
        }
        assert_eq!(word(SESSION_BOOT), u64::from_le_bytes([0x20; 8]));
        assert_eq!(word(SESSION_BOOT + 8), u64::from_le_bytes([0x20; 8]));
        assert_eq!(word(264), 21);
        assert_eq!(word(NOTIFY), 22, "notify, with its high half zero");
        a.control_block()
            .unwrap()
            .writer_lock
            .store(23, Ordering::Relaxed);
        let mut b = [0u8; 8];
        a.read(WRITER_LOCK_OFFSET, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 23);
        assert_eq!(c.session_boot(), [0x20; 16]);
        assert_eq!(c.cache_counters(), [17, 18, 19, 20, 21]);
    }

    #[test]
    fn too_short_a_file_has_no_control_block() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let len = super::super::ARENA_START - 8;
        f.set_len(len).unwrap();
        let a = Arena::new(f, &p, len, len, super::super::mapping::MapMode::Shared).unwrap();
        assert!(a.control_block().is_err());
        assert!(a.control().is_err());
    }
}
