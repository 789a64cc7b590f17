//! The control block: the live, shared state of the store, one page of
//! atomic words at [`CONTROL_OFFSET`](super::CONTROL_OFFSET).
//!
//! ```text
//! offset field        meaning
//! 0      magic        "MKVCTRL3" once initialised
//! 8      version      seqlock word: odd while the writer changes the index
//!                     or the fields below; even when they agree
//! 16     tail         end of the log that is applied to the index
//! 24     seq_gen      last applied commit (seq | generation << 48)
//! 32     index_desc   current slot table (page offset | log2 capacity)
//! 40     index_used   occupied slots (live + tombstones)
//! 48     live_keys
//! 56     live_bytes   bytes of live records
//! 64     generation   generation new commits are written with
//! 72     file_len     file length published by the last grower
//! 80     durable_tail     log below this is on stable storage
//! 88     durable_seq_gen  last commit below durable_tail
//! 96     durable_len      file length known to be durable (fsync'd)
//! 104    meta_seq         sequence number of the newest meta written
//! 112    synced_copy      offset of the meta copy holding the newest
//!                         *synced* meta (the next meta goes to the other)
//! 120    writer       pid (in its own PID namespace) of the writer holding
//!                     the writer lock, while it may change anything; 0
//!                     when the store is consistent. Non-zero at lock time
//!                     means the last writer died (or failed) mid-change:
//!                     the new holder repairs first. Also named in the
//!                     error of a writer that timed out waiting.
//! 128    writers      read-write handles open (a crashed one is never
//!                     subtracted: then nobody marks the store clean,
//!                     and the next open replays, which is safe)
//! 136    capacity     cache mode: bound on the file length (0: none)
//! 144    evicted      cache counters: entries evicted,
//! 152    expired      expired entries dropped,
//! 160    evict_runs   and evictions run
//! 168    session_boot 16 bytes: boot id of the writer that started the
//!                     current session (the control block is live state
//!                     only within that boot)
//! 256    notify       u32 futex word, bumped after every commit (own line)
//! 264    waiters      processes sleeping on `notify` (writers skip the
//!                     wake system call when it is 0)
//! 512    writer lock  one word: holder's registration slot, a waiting
//!                     bit and a sequence (see lock.rs); 64 bytes reserved
//! ```
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

use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::mapping::{Arena, OutOfBounds};
use super::CONTROL_OFFSET;

pub(crate) const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"MKVCTRL3");
/// Magic while a compaction that holds the writer lock renames its new
/// file over this one: readers check whether the path names another file.
pub(crate) const MOVING_MAGIC: u64 = u64::from_le_bytes(*b"MKVMOVNG");
/// Magic once the store has moved to a new file under the same path:
/// every handle follows it there.
pub(crate) const MOVED_MAGIC: u64 = u64::from_le_bytes(*b"MKVMOVED");

const MAGIC: u64 = 0;
const VERSION: u64 = 8;
const TAIL: u64 = 16;
const SEQ_GEN: u64 = 24;
const INDEX_DESC: u64 = 32;
const INDEX_USED: u64 = 40;
const LIVE_KEYS: u64 = 48;
const LIVE_BYTES: u64 = 56;
const GENERATION: u64 = 64;
const FILE_LEN: u64 = 72;
const DURABLE_TAIL: u64 = 80;
const DURABLE_SEQ_GEN: u64 = 88;
const DURABLE_LEN: u64 = 96;
const META_SEQ: u64 = 104;
const SYNCED_COPY: u64 = 112;
const WRITER: u64 = 120;
const WRITERS: u64 = 128;
const CAPACITY: u64 = 136;
const EVICTED: u64 = 144;
const EXPIRED: u64 = 152;
const EVICT_RUNS: u64 = 160;
pub(crate) const SESSION_BOOT: u64 = 168;
pub(crate) const NOTIFY: u64 = 256;
const WAITERS: u64 = 264;
/// Words of the control block accessed as atomics.
const WORDS: u64 = 64;

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
    words: &'a [AtomicU64],
}

impl<'a> Control<'a> {
    pub(crate) fn new(arena: &'a Arena) -> Result<Control<'a>, OutOfBounds> {
        Ok(Control {
            words: arena.atomics(CONTROL_OFFSET, WORDS)?,
        })
    }

    fn w(&self, off: u64) -> &'a AtomicU64 {
        &self.words[(off / 8) as usize]
    }

    pub(crate) fn magic(&self) -> u64 {
        self.w(MAGIC).load(Ordering::Acquire)
    }

    /// Set the magic word (compaction: moving, moved; or back to normal).
    pub(crate) fn set_magic(&self, m: u64) {
        self.w(MAGIC).store(m, Ordering::SeqCst);
    }

    /// The current slot table descriptor, for readers.
    #[inline]
    pub(crate) fn index_desc(&self) -> u64 {
        self.w(INDEX_DESC).load(Ordering::Acquire)
    }

    pub(crate) fn live_keys(&self) -> u64 {
        self.w(LIVE_KEYS).load(Ordering::Acquire)
    }

    pub(crate) fn set_file_len(&self, len: u64) {
        self.w(FILE_LEN).fetch_max(len, Ordering::AcqRel);
    }

    /// The file length the last grower published (a hint: checked with
    /// fstat before use).
    pub(crate) fn file_len(&self) -> u64 {
        self.w(FILE_LEN).load(Ordering::Acquire)
    }

    /// Set the file length after the file was cut (clean close, alone).
    pub(crate) fn reset_file_len(&self, len: u64) {
        self.w(FILE_LEN).store(len, Ordering::Release);
    }

    /// The seqlock word: odd while a writer changes the index.
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        self.w(VERSION).load(Ordering::Acquire)
    }

    /// The last applied commit (seq | generation << 48).
    #[inline]
    pub(crate) fn seq_gen(&self) -> u64 {
        self.w(SEQ_GEN).load(Ordering::Acquire)
    }

    pub(crate) fn durable(&self) -> Durable {
        let r = |o| self.w(o).load(Ordering::Acquire);
        Durable {
            tail: r(DURABLE_TAIL),
            seq_gen: r(DURABLE_SEQ_GEN),
            len: r(DURABLE_LEN),
            meta_seq: r(META_SEQ),
            synced_copy: r(SYNCED_COPY),
        }
    }

    pub(crate) fn set_durable(&self, d: &Durable) {
        let st = |o, v| self.w(o).store(v, Ordering::Release);
        st(DURABLE_TAIL, d.tail);
        st(DURABLE_SEQ_GEN, d.seq_gen);
        st(DURABLE_LEN, d.len);
        st(META_SEQ, d.meta_seq);
        st(SYNCED_COPY, d.synced_copy);
    }

    /// Pid of the writer mid-change, or 0.
    pub(crate) fn writer(&self) -> u64 {
        self.w(WRITER).load(Ordering::Acquire)
    }

    pub(crate) fn set_writer(&self, pid: u64) {
        self.w(WRITER).store(pid, Ordering::Release);
    }

    /// Read-write handles open on the store.
    pub(crate) fn writers(&self) -> &'a AtomicU64 {
        self.w(WRITERS)
    }

    /// The end of the applied log (one load; see `snapshot` for a
    /// consistent set of fields).
    pub(crate) fn tail(&self) -> u64 {
        self.w(TAIL).load(Ordering::Acquire)
    }

    /// Cache mode: the bound on the file's length in bytes (0: none).
    /// Every writer checks it before growing the file. Clamped to what a
    /// file can be (the word may hold anything): at most `MAX_FILE_LEN`,
    /// and, if set, at least `MIN_CAPACITY`.
    pub(crate) fn capacity(&self) -> u64 {
        match self.w(CAPACITY).load(Ordering::Acquire) {
            0 => 0,
            c => c.clamp(super::MIN_CAPACITY, super::MAX_FILE_LEN),
        }
    }

    pub(crate) fn set_capacity(&self, bytes: u64) {
        self.w(CAPACITY).store(bytes, Ordering::Release);
    }

    /// Cache counters: entries evicted, expired entries dropped, and
    /// evictions run, since the store was created (they move with the
    /// store to a compaction's new file; statistics only, zeroed when
    /// recovery cannot trust the control block).
    pub(crate) fn cache_counters(&self) -> [u64; 3] {
        [EVICTED, EXPIRED, EVICT_RUNS].map(|o| self.w(o).load(Ordering::Acquire))
    }

    pub(crate) fn set_cache_counters(&self, v: [u64; 3]) {
        for (o, v) in [EVICTED, EXPIRED, EVICT_RUNS].into_iter().zip(v) {
            self.w(o).store(v, Ordering::Release);
        }
    }

    /// The boot id of the writer that started the current session.
    pub(crate) fn session_boot(&self) -> [u8; 16] {
        let lo = self.w(SESSION_BOOT).load(Ordering::Acquire);
        let hi = self.w(SESSION_BOOT + 8).load(Ordering::Acquire);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        b
    }

    pub(crate) fn set_session_boot(&self, id: &[u8; 16]) {
        let half = |i: usize| u64::from_le_bytes(id[i..i + 8].try_into().unwrap_or([0; 8]));
        self.w(SESSION_BOOT).store(half(0), Ordering::Release);
        self.w(SESSION_BOOT + 8).store(half(8), Ordering::Release);
    }

    /// Whether this is the live state of a session a writer started in
    /// the boot `boot_id` (not all zeros: unknown).
    pub(crate) fn is_session_of(&self, boot_id: &[u8; 16]) -> bool {
        [CONTROL_MAGIC, MOVING_MAGIC, MOVED_MAGIC].contains(&self.magic())
            && self.session_boot() == *boot_id
            && *boot_id != [0; 16]
    }

    /// The waiter count of the change futex.
    pub(crate) fn waiters(&self) -> &'a AtomicU64 {
        self.w(WAITERS)
    }

    /// Reset the cross-process words that only mean something while the
    /// store is open (the opener that is alone calls this).
    pub(crate) fn reset_session(&self) {
        self.w(WRITER).store(0, Ordering::Release);
        self.w(WAITERS).store(0, Ordering::Release);
        self.w(WRITERS).store(0, Ordering::Release);
    }

    /// Read the state fields without tearing. Retries while a writer is
    /// mid-update; after `tries` failed attempts returns the last (possibly
    /// torn) read and `false`, so a hostile or dead writer cannot make a
    /// reader spin forever.
    pub(crate) fn snapshot(&self, tries: u32) -> (State, bool) {
        let mut s = State::default();
        for _ in 0..tries.max(1) {
            let v1 = self.w(VERSION).load(Ordering::Acquire);
            s = self.read_fields();
            fence(Ordering::Acquire);
            let v2 = self.w(VERSION).load(Ordering::Relaxed);
            if v1 == v2 && v1 % 2 == 0 {
                return (s, true);
            }
            std::hint::spin_loop();
        }
        (s, false)
    }

    fn read_fields(&self) -> State {
        let r = |o| self.w(o).load(Ordering::Relaxed);
        State {
            tail: r(TAIL),
            seq_gen: r(SEQ_GEN),
            index_desc: r(INDEX_DESC),
            index_used: r(INDEX_USED),
            live_keys: r(LIVE_KEYS),
            live_bytes: r(LIVE_BYTES),
            generation: r(GENERATION),
        }
    }

    /// Mark the start of a change (version becomes odd). Only the writer,
    /// holding the writer lock, calls this.
    pub(crate) fn begin(&self) {
        let v = self.w(VERSION).load(Ordering::Relaxed);
        let v = if v % 2 == 1 { v } else { v.wrapping_add(1) };
        self.w(VERSION).store(v, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    /// Store the state fields and end the change (version becomes even).
    pub(crate) fn end(&self, s: &State) {
        let st = |o, v| self.w(o).store(v, Ordering::Relaxed);
        st(TAIL, s.tail);
        st(SEQ_GEN, s.seq_gen);
        self.w(INDEX_DESC).store(s.index_desc, Ordering::Release);
        st(INDEX_USED, s.index_used);
        st(LIVE_KEYS, s.live_keys);
        st(LIVE_BYTES, s.live_bytes);
        st(GENERATION, s.generation);
        let v = self.w(VERSION).load(Ordering::Relaxed);
        let v = if v % 2 == 1 {
            v.wrapping_add(1)
        } else {
            v.wrapping_add(2)
        };
        self.w(VERSION).store(v, Ordering::Release);
    }

    /// Initialise (or re-initialise after recovery) the whole block.
    pub(crate) fn reset(&self, s: &State, file_len: u64) {
        self.begin();
        self.reset_file_len(file_len);
        self.end(s);
        self.w(MAGIC).store(CONTROL_MAGIC, Ordering::Release);
    }
}
