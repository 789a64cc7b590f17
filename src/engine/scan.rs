//! A scan of the live entries in log order, for [`Db::iter`](crate::Db::iter).
//!
//! The log is read front to back (sequential memory, which the hardware
//! prefetcher streams), and a put is returned when the index still points
//! at it: its key's probe path holds a slot with exactly its offset. Those
//! slot loads are the scan's only random accesses; they are prefetched
//! `AHEAD` records ahead, so their misses overlap. A returned entry is
//! copied out and checked against its CRC, as every read is.
//!
//! Nothing read from the file is trusted: a header must pass its checks
//! before its length moves the scan on, and the scan never passes the
//! published tail it started with. A header that fails stops the log
//! walk at that offset ([`Step::Broken`]); the caller can go on from
//! there another way (the iterator walks the slots for entries past it).

use std::collections::{HashSet, VecDeque};

use crate::index::{self, Table};
use crate::log::read::Put;
use crate::log::record::{Header, HEADER_LEN};
use crate::storage::ARENA_START;

use super::{Result, Store};

/// Records read ahead, with their home slots loading.
const AHEAD: usize = 16;
/// How far past the header being read the log is prefetched.
const LOG_AHEAD: u64 = 16384;

/// A log-order scan over one store's log, up to the tail it started with.
pub(crate) struct LogScan {
    /// The next record to read ahead.
    pos: u64,
    /// The published tail when the scan started.
    end: u64,
    /// The slot table when the scan started.
    desc: u64,
    ahead: VecDeque<Pending>,
    /// Where a header failed its checks: the walk ends there.
    broken: Option<u64>,
    /// The records found live, one bit per 8-byte offset from
    /// `ARENA_START` (see [`Seen`]).
    seen: Seen,
    /// Keys the scan met dead because they were overwritten after it
    /// started (their slot names a record past `end`): returned after the
    /// log, from their current record (see [`LogScan::overwritten`]).
    overwritten: HashSet<Vec<u8>>,
}

/// The records a log scan found live (their slot on their probe path),
/// by offset. After the scan, a walk of the slots uses it to find the
/// slots the scan did not account for: damaged ones, or ones off their
/// key's probe path.
pub(crate) struct Seen {
    bits: Vec<u64>,
    end: u64,
    /// Records marked: each has its own slot (distinct offsets).
    marked: u64,
    /// The published tail and table the scan started with.
    tail: u64,
    desc: u64,
}

impl Seen {
    fn new(end: u64, tail: u64, desc: u64) -> Seen {
        let n = end.saturating_sub(ARENA_START) / 8;
        Seen {
            bits: vec![0; (n as usize).div_ceil(64)],
            end,
            marked: 0,
            tail,
            desc,
        }
    }

    fn mark(&mut self, off: u64) {
        let i = ((off - ARENA_START) / 8) as usize;
        if let Some(w) = self.bits.get_mut(i / 64) {
            if *w & (1 << (i % 64)) == 0 {
                *w |= 1 << (i % 64);
                self.marked += 1;
            }
        }
    }

    /// Whether the scan accounted for every live slot, so that the walk of
    /// the slots would find nothing: no commit since the scan started (the
    /// published tail and table are the same), and as many live slots in
    /// the table as records the scan found live (each of those has its own
    /// slot, so then every live slot is one of them). Counts the table's
    /// live slots: one sequential pass, without the walk's lookups.
    pub(crate) fn accounts_for_all(&self, store: &Store) -> bool {
        let Ok(c) = store.control() else {
            return false;
        };
        let (st, consistent) = c.snapshot(64);
        if !consistent || st.tail != self.tail || st.index_desc != self.desc {
            return false;
        }
        store
            .table_at(self.desc)
            .is_ok_and(|(t, _)| t.live_words().count() as u64 == self.marked)
    }

    /// Whether the scan found the record at `off` live.
    pub(crate) fn contains(&self, off: u64) -> bool {
        if off < ARENA_START || off >= self.end || off % 8 != 0 {
            return false;
        }
        let i = ((off - ARENA_START) / 8) as usize;
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The tail the scan stopped at.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }
}

/// A put read ahead: its offset, header and key hash.
struct Pending {
    off: u64,
    header: Header,
    hash: u64,
}

/// One step of the scan.
pub(crate) enum Step {
    /// A live entry, copied and checked.
    Entry(Put),
    /// A record that failed its checks after its header passed (the scan
    /// goes on after it).
    Damaged(super::Failure),
    /// The header at this offset failed its checks: the log walk ends
    /// here; entries of records past it were not returned.
    Broken(u64),
    /// Every record up to the tail has been seen.
    Done,
}

impl LogScan {
    /// A scan of `store` as of now: `None` if no consistent (tail, table)
    /// pair could be read (a writer kept committing), and the caller
    /// should walk the slots instead.
    pub(crate) fn new(store: &Store) -> Result<Option<LogScan>> {
        let c = store.control()?;
        let (st, consistent) = c.snapshot(64);
        if !consistent {
            return Ok(None);
        }
        // Check the pair the way every reader does: the table must lie in
        // the file, and the tail may not pass its end.
        store.table_at(st.index_desc)?;
        // (Another process may have grown the file: believe fstat.)
        let len = store.arena.refresh().unwrap_or_else(|_| store.arena.len());
        let end = st.tail.min(len);
        Ok(Some(LogScan {
            pos: ARENA_START,
            end,
            desc: st.index_desc,
            ahead: VecDeque::with_capacity(AHEAD),
            broken: None,
            seen: Seen::new(end, st.tail, st.index_desc),
            overwritten: HashSet::new(),
        }))
    }

    /// The next step of the scan. An entry is copied into `spare`'s
    /// allocation (taken; [`Put::into_buf`] gives it back for the next
    /// step).
    pub(crate) fn next(&mut self, store: &Store, spare: &mut Vec<u8>) -> Step {
        let t = match store.table_at(self.desc) {
            Ok((t, _)) => t,
            Err(f) => return Step::Damaged(f),
        };
        let rec = store.records();
        loop {
            self.read_ahead(store, &t);
            let Some(p) = self.ahead.pop_front() else {
                return match self.broken.take() {
                    Some(at) => Step::Broken(at),
                    None => Step::Done,
                };
            };
            // Live if the key's probe path has a slot naming this record.
            let end = self.end;
            let mut newer = false;
            let live = t.find(p.hash, |o| -> Result<bool> {
                newer |= o >= end;
                Ok(o == p.off)
            });
            match live {
                Ok(Some(_)) => self.seen.mark(p.off),
                Ok(None) => {
                    if newer {
                        self.note_overwritten(store, &t, &p);
                    }
                    continue;
                }
                Err(f) => return Step::Damaged(store.locate(f, self.desc_start())),
            }
            match rec.put_reusing(p.off, &p.header, std::mem::take(spare)) {
                Ok(put) if put.expired() => {
                    *spare = put.into_buf().0;
                    continue;
                }
                Ok(put) => return Step::Entry(put),
                Err(e) => return Step::Damaged(e.into()),
            }
        }
    }

    /// A dead record whose key's probe path has a slot (with its tag)
    /// naming a record written after the scan started: if that record
    /// holds this key, the key was overwritten meanwhile, and whether this
    /// record was its live one then or an older one, the key is returned
    /// once, after the log. Out of line: a scan with no commit beside it
    /// never comes here. A read that fails is not a match (the slot walk
    /// reports damaged slots).
    #[cold]
    fn note_overwritten(&mut self, store: &Store, t: &Table<'_>, p: &Pending) {
        let rec = store.records();
        let Ok(key) = rec.key(p.off, &p.header) else {
            return;
        };
        let end = self.end;
        let found = t.find(p.hash, |o| -> Result<bool> {
            Ok(o >= end && rec.key_eq(o, &key).unwrap_or(false))
        });
        if let Ok(Some(_)) = found {
            self.overwritten.insert(key);
        }
    }

    /// What the scan found live (once it has ended), and the keys it met
    /// overwritten after it started, which the caller returns from their
    /// current records: each was present when the scan started (a record
    /// of it lies before `end`) and none of them was returned by the scan
    /// (its record before `end` was no longer live when the scan reached
    /// it, and a key has one live record).
    pub(crate) fn into_seen(self) -> (Seen, Vec<Vec<u8>>) {
        (self.seen, self.overwritten.into_iter().collect())
    }

    fn desc_start(&self) -> u64 {
        index::Desc::decode(self.desc).map_or(0, |d| d.start)
    }

    /// Read headers and keys until `AHEAD` puts wait, starting the load of
    /// each one's home slot.
    fn read_ahead(&mut self, store: &Store, t: &Table<'_>) {
        let rec = store.records();
        let d = index::Desc::decode(self.desc);
        while self.ahead.len() < AHEAD && self.pos < self.end && self.broken.is_none() {
            let off = self.pos;
            // The log is read in order, but not far enough ahead for the
            // hardware alone (a page boundary every 4 KiB): start loading
            // the bytes LOG_AHEAD past this header.
            if off + LOG_AHEAD < self.end {
                store.arena.prefetch(off + LOG_AHEAD, 64);
            }
            let Some((h, len)) = rec
                .header(off)
                .ok()
                .filter(|h| h.check(store.salt, off))
                .and_then(|h| Some((h, h.len_at(off)?)))
                .filter(|&(_, len)| off.checked_add(len).is_some_and(|e| e <= self.end))
            else {
                self.broken = Some(off);
                break;
            };
            self.pos = off + len;
            if !h.is_put() {
                continue; // a removal, or an index chunk
            }
            let mut small = [0u8; 64];
            let hash = if (h.key_len as usize) <= small.len() {
                let k = &mut small[..h.key_len as usize];
                if store.arena.read(off + HEADER_LEN, k).is_err() {
                    self.broken = Some(off);
                    break;
                }
                index::hash(store.hash_seed, k)
            } else {
                match rec.key(off, &h) {
                    Ok(k) => index::hash(store.hash_seed, &k),
                    Err(_) => {
                        self.broken = Some(off);
                        break;
                    }
                }
            };
            if let Some(d) = d {
                store.arena.prefetch(d.start + 8 * t.home(hash) as u64, 8);
            }
            self.ahead.push_back(Pending {
                off,
                header: h,
                hash,
            });
        }
    }
}
