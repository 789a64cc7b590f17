//! The append-only log: record framing ([`record`]) and the scanner that
//! recovery and `check` use to walk it.
//!
//! The arena past the control block is one sequence of items, each starting
//! at an 8-byte boundary: records (puts and deletes) grouped into commits,
//! and index chunks (slot tables, skipped by the scanner). A commit is one
//! or more records with the same `seq_gen`, the last one flagged END. The
//! scanner hands out only whole commits; a commit whose END record is missing
//! or damaged is not there at all (all-or-nothing batches).

pub(crate) mod read;
pub(crate) mod record;

use crate::index::Desc;
use crate::storage::mapping::Arena;
use record::{gen_not_older, gen_of, seq_of, BodyCrc, Header, HEADER_LEN, KIND_INDEX};

/// One record of a commit, as found by the scanner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordRef {
    pub off: u64,
    pub header: Header,
}

/// An item of the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A complete, checksum-verified commit ending at `end`.
    Commit {
        seq_gen: u64,
        records: Vec<RecordRef>,
        end: u64,
    },
    /// An index chunk (slot table) ending at `end`.
    Index { off: u64, desc: Desc, end: u64 },
}

/// Where and why the valid log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop {
    /// Offset of the first byte that is not part of a complete item.
    pub at: u64,
    /// Offset of the bad header or record (for error messages).
    pub bad: u64,
    pub why: &'static str,
}

/// Walks the log from `pos`, verifying every record.
pub(crate) struct Scanner<'a> {
    arena: &'a Arena,
    salt: u32,
    pos: u64,
    limit: u64,
    last: Option<u64>,
    buf: Vec<u8>,
}

impl<'a> Scanner<'a> {
    /// Scan from `pos` up to `limit` (exclusive). `last_seq_gen` is the
    /// commit just before `pos`, if known: the next commit must follow it.
    pub(crate) fn new(
        arena: &'a Arena,
        salt: u32,
        pos: u64,
        limit: u64,
        last_seq_gen: Option<u64>,
    ) -> Scanner<'a> {
        Scanner {
            arena,
            salt,
            pos,
            limit: limit.min(arena.len()),
            last: last_seq_gen,
            buf: Vec::new(),
        }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The last complete commit seen (or the one given at the start).
    pub(crate) fn last_seq_gen(&self) -> Option<u64> {
        self.last
    }

    fn header_at(&self, off: u64) -> Result<Header, &'static str> {
        if off.checked_add(HEADER_LEN).is_none_or(|e| e > self.limit) {
            return Err("record header runs past the end of the file");
        }
        let mut b = [0u8; HEADER_LEN as usize];
        self.arena
            .read(off, &mut b)
            .map_err(|_| "record header runs past the end of the file")?;
        if b[8] == 0 && b.iter().all(|&x| x == 0) {
            return Err("zeroed space (end of log)");
        }
        let h = Header::from_bytes(&b);
        if !h.check(self.salt, off) {
            return Err("record header fails its checksum or field checks");
        }
        Ok(h)
    }

    /// Verify the body CRC of the put/delete record at `off`.
    fn verify_body(&mut self, off: u64, h: &Header) -> Result<u64, &'static str> {
        let len = h.len_at(off).ok_or("record length overflows")?;
        if off.checked_add(len).is_none_or(|e| e > self.limit) {
            return Err("record runs past the end of the file");
        }
        let mut crc = BodyCrc::new(self.salt, off, &h.tail_bytes());
        let mut at = off + HEADER_LEN;
        let mut left = h.key_len as u64 + h.val_len as u64;
        const CHUNK: u64 = 1 << 16;
        while left > 0 {
            let n = left.min(CHUNK) as usize;
            self.buf.resize(n, 0);
            self.arena
                .read(at, &mut self.buf)
                .map_err(|_| "record runs past the end of the file")?;
            crc.update(&self.buf);
            at += n as u64;
            left -= n as u64;
        }
        if crc.finish() != h.crc {
            return Err("record fails its checksum");
        }
        Ok(off + len)
    }

    /// The next complete item, or where and why the log ends.
    pub(crate) fn next_item(&mut self) -> Result<Item, Stop> {
        let start = self.pos;
        let stop = |bad: u64, why| Stop {
            at: start,
            bad,
            why,
        };
        let first = self.header_at(start).map_err(|why| stop(start, why))?;
        if first.kind == KIND_INDEX {
            let end = first
                .len_at(start)
                .filter(|&e| start.checked_add(e).is_some_and(|x| x <= self.limit))
                .map(|e| start + e)
                .ok_or(stop(start, "index chunk runs past the end of the file"))?;
            let desc = Desc {
                start: record::index_table_start(start).ok_or(stop(start, "bad index chunk"))?,
                log2cap: first.val_len,
            };
            self.pos = end;
            return Ok(Item::Index {
                off: start,
                desc,
                end,
            });
        }
        let sg = first.seq_gen;
        if let Some(last) = self.last {
            if seq_of(sg) != seq_of(last).wrapping_add(1) & record::SEQ_MASK {
                return Err(stop(
                    start,
                    "commit sequence does not follow the previous commit",
                ));
            }
            if !gen_not_older(gen_of(last), gen_of(sg)) {
                return Err(stop(start, "commit from an older generation (stale bytes)"));
            }
        }
        let mut records = Vec::new();
        let mut off = start;
        let mut h = first;
        loop {
            if h.kind == KIND_INDEX || h.seq_gen != sg {
                return Err(stop(off, "commit ends without its END record"));
            }
            let end = self.verify_body(off, &h).map_err(|why| stop(off, why))?;
            records.push(RecordRef { off, header: h });
            if h.is_end() {
                self.pos = end;
                self.last = Some(sg);
                return Ok(Item::Commit {
                    seq_gen: sg,
                    records,
                    end,
                });
            }
            off = end;
            h = self.header_at(off).map_err(|why| stop(off, why))?;
        }
    }
}
