//! Operations, and the commit that writes them: records appended past the
//! tail, synced per durability, then published to readers through the
//! index and the control block.

use crate::index::{self, Desc, Table};
use crate::log::read::Put;
use crate::log::record::{
    self, record_len, seq_gen, seq_of, Header, Kind, HEADER_LEN, MAX_KEY_LEN, MAX_VALUE_LEN,
    TTL_LEN,
};
use crate::options::Durability;
use crate::Error;

use super::{Growth, PoisonCause, Result, Store, Writer};

/// One operation of a commit.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    /// A put that expires at the given time (ms since the Unix epoch).
    PutTtl(&'a [u8], &'a [u8], u64),
    Del(&'a [u8]),
}

impl<'a> Op<'a> {
    /// The put that re-creates a record read back (compaction), expiry
    /// included.
    pub(crate) fn from_put(p: &'a Put) -> Op<'a> {
        match p.expires() {
            Some(at) => Op::PutTtl(p.key(), p.value(), at),
            None => Op::Put(p.key(), p.value()),
        }
    }

    fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::PutTtl(k, _, _) | Op::Del(k) => k,
        }
    }

    /// The caller's value (without an expiry prefix).
    fn value(&self) -> &[u8] {
        match self {
            Op::Put(_, v) | Op::PutTtl(_, v, _) => v,
            Op::Del(_) => &[],
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Op::Del(_) => Kind::Del,
            _ => Kind::Put,
        }
    }

    /// The expiry prefix stored in front of the value, if any.
    fn prefix(&self) -> Option<[u8; TTL_LEN]> {
        match self {
            Op::PutTtl(_, _, at) => Some(at.to_le_bytes()),
            _ => None,
        }
    }

    /// Bytes of the record's value area (prefix and value).
    fn stored_len(&self) -> usize {
        self.value().len() + if self.prefix().is_some() { TTL_LEN } else { 0 }
    }

    /// Whether key and value are within the limits (the one size check:
    /// commits, batches and removals all use it).
    pub(crate) fn check(&self) -> Result<(), Error> {
        check_key(self.key())?;
        if self.stored_len() > MAX_VALUE_LEN {
            return Err(Error::ValueTooLarge {
                len: self.value().len(),
                max: MAX_VALUE_LEN - (self.stored_len() - self.value().len()),
            });
        }
        Ok(())
    }
}

/// Whether `key` is within the key length limit.
pub(crate) fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

impl Store {
    /// Start the cache misses of a batch's index updates in parallel
    /// (see [`prefetch_lookups`](Store::prefetch_lookups)).
    fn prefetch_keys<'k>(&self, t: &Table<'_>, d: Desc, keys: impl Iterator<Item = &'k [u8]>) {
        let hashes: Vec<u64> = keys.map(|k| index::hash(self.hash_seed, k)).collect();
        self.prefetch_lookups(t, d, &hashes, 64);
    }

    /// Write, publish and (per durability `d`) sync one commit.
    pub(crate) fn commit(&self, ops: &[Op<'_>], d: Durability) -> Result<()> {
        self.commit_group(&[ops], d)
    }

    /// Write, sync once (per durability `d`) and publish several commits,
    /// in order: group commit. Each commit keeps its own sequence number
    /// and is all or nothing on its own; they share the writer lock, the
    /// room check and, under [`Durability::Sync`], one sync.
    pub(crate) fn commit_group(&self, commits: &[&[Op<'_>]], d: Durability) -> Result<()> {
        for op in commits.iter().flat_map(|c| c.iter()) {
            op.check()?;
        }
        self.check_writable()?;
        if commits.iter().all(|c| c.is_empty()) {
            return Ok(());
        }
        let mut wr = self.lock_writer()?;
        self.commit_group_locked(&mut wr, commits, d)
    }

    /// `commit` with the writer lock held.
    pub(crate) fn commit_locked(
        &self,
        wr: &mut Writer,
        ops: &[Op<'_>],
        d: Durability,
    ) -> Result<()> {
        self.commit_group_locked(wr, &[ops], d)
    }

    /// `commit_group` with the writer lock held.
    pub(crate) fn commit_group_locked(
        &self,
        wr: &mut Writer,
        commits: &[&[Op<'_>]],
        d: Durability,
    ) -> Result<()> {
        self.check_writable()?;
        // (No allocation: a single insert comes through here.)
        let all = || commits.iter().flat_map(|c| c.iter());
        if all().next().is_none() {
            return Ok(());
        }
        let puts = all().filter(|o| o.kind() == Kind::Put).count() as u64;
        let total: u64 = all()
            .map(|o| record_len(o.key().len(), o.stored_len()))
            .sum();
        // Room for the whole group first: a new index table is placed at
        // the tail, so it must come before any record of the group.
        self.ensure_index_room(wr, puts, total, Growth::Bounded)?;
        let start = wr.st.tail;
        let end = start
            .checked_add(total)
            .ok_or_else(|| self.corrupt(start, "tail overflows"))?;
        self.ensure_space(end, Growth::Bounded)?;
        wr.unpublished = true;
        let mut off = start;
        let mut sg = wr.st.seq_gen;
        for ops in commits.iter().filter(|c| !c.is_empty()) {
            sg = seq_gen(seq_of(sg) + 1, wr.st.generation as u16);
            let last = ops.len() - 1;
            for (i, op) in ops.iter().enumerate() {
                let (k, v) = (op.key(), op.value());
                let prefix = op.prefix();
                let p: &[u8] = prefix.as_ref().map_or(&[], |p| &p[..]);
                let h = record::encode(self.salt, off, op.kind(), i == last, k, p, v, sg);
                self.write_bytes(off, &h.to_bytes())?;
                self.write_bytes(off + HEADER_LEN, k)?;
                self.write_bytes(off + HEADER_LEN + k.len() as u64, p)?;
                self.write_bytes(off + HEADER_LEN + (k.len() + p.len()) as u64, v)?;
                let body_end = off + HEADER_LEN + (k.len() + p.len() + v.len()) as u64;
                let rec_end = off + record_len(k.len(), op.stored_len());
                if rec_end > body_end {
                    self.write_bytes(body_end, &[0u8; 8][..(rec_end - body_end) as usize])?;
                }
                off = rec_end;
            }
        }
        debug_assert_eq!(off, end);
        if d == Durability::Sync {
            // Publish order: the records are on stable storage before any
            // slot points at them. One sync for the group: msync of the
            // new records (and of any unsynced ones before them), or, if
            // the file grew since the last durable length, one fsync that
            // makes records and length durable together.
            self.sync_to(wr, end)?;
        }
        let (t, desc) = self.table_at(wr.st.index_desc)?;
        if total > 0 && all().nth(1).is_some() {
            self.prefetch_keys(&t, desc, all().map(|o| o.key()));
        }
        let c = self.control()?;
        if all().any(|o| matches!(o, Op::PutTtl(..))) {
            c.set_may_hold_ttl(true);
        }
        c.begin();
        let mut st = wr.st;
        let mut off = start;
        let mut res = Ok(());
        for op in all() {
            let k = op.key();
            let h = Header {
                kind: op.kind().byte(),
                key_len: k.len() as u16,
                val_len: op.stored_len() as u32,
                ..Header::from_bytes(&[0; HEADER_LEN as usize])
            };
            if let Err(f) = self.apply(&t, &mut st, off, &h, k) {
                res = Err(self.locate(f, desc.start));
                break;
            }
            off += record_len(k.len(), op.stored_len());
        }
        // On an error the index may hold part of this commit: leave the
        // control block odd, so that the next open rebuilds the index from
        // the log, and refuse further writes on this handle.
        if let Err(f) = res {
            let e = f.into_error(&self.path);
            self.set_poison(PoisonCause::IndexUpdate(e.to_string()));
            return Err(e.into());
        }
        st.tail = end;
        st.seq_gen = sg;
        wr.st = st;
        c.end(&wr.st);
        wr.unpublished = false;
        self.notify();
        match d {
            Durability::Sync => {
                // The records are durable, so a meta may name them. It is not
                // synced: recovery after an OS crash finds synced commits
                // past an older meta's tail by scanning; the meta only
                // shortens that scan.
                wr.dur.tail = wr.st.tail;
                wr.dur.seq_gen = wr.st.seq_gen;
                self.write_meta(wr, 0, false)?;
            }
            Durability::Async => {
                if let Err(e) = self.arena.start_writeback(start, end - start) {
                    return Err(self.poison("start write-back", e).into());
                }
            }
            Durability::None => {}
        }
        Ok(())
    }
}
