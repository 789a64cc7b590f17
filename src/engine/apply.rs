//! Index upkeep shared by commit, replay and rebuild: applying one record
//! to a slot table, and moving to a larger table when one fills up.

use crate::index::{self, Desc, Table};
use crate::log::record::{self, record_len, Header, Kind};
use crate::storage::control::State;

use super::{Growth, Result, Store, Writer};

impl Store {
    /// Apply one put/delete record at `off` to table `t`, updating `st`.
    pub(crate) fn apply(
        &self,
        t: &Table<'_>,
        st: &mut State,
        off: u64,
        h: &Header,
        key: &[u8],
    ) -> Result<()> {
        let hash = index::hash(self.hash_seed, key);
        let rec = self.records();
        let eq = |o| -> Result<bool> { Ok(rec.key_eq(o, key)?) };
        if h.kind() == Some(Kind::Put) {
            let up = t.upsert(hash, index::make_word(hash, off), eq)?;
            st.index_used = st.index_used.saturating_add(up.took_empty as u64);
            match up.old {
                Some(word) => {
                    let old = rec.live_len(index::word_offset(word))?;
                    st.live_bytes = st.live_bytes.saturating_sub(old);
                }
                None => st.live_keys = st.live_keys.saturating_add(1),
            }
            st.live_bytes = st
                .live_bytes
                .saturating_add(record_len(h.key_len as usize, h.val_len as usize));
        } else if let Some((slot, word)) = t.find(hash, eq)? {
            let old = rec.live_len(index::word_offset(word))?;
            t.remove_at(slot);
            st.live_keys = st.live_keys.saturating_sub(1);
            st.live_bytes = st.live_bytes.saturating_sub(old);
        }
        Ok(())
    }

    /// Rebuild the index into a larger (or tombstone-free) table if `more`
    /// new entries would push it past 3/4 load. The new table is an index
    /// chunk appended at the tail; readers switch to it atomically.
    ///
    /// `then` is the number of bytes the caller appends after the table
    /// (the commit's records): the file is grown for both at once, so that
    /// running out of space fails before anything is written.
    pub(crate) fn ensure_index_room(
        &self,
        wr: &mut Writer,
        more: u64,
        then: u64,
        growth: Growth,
    ) -> Result<()> {
        let (old, d) = self.table_at(wr.st.index_desc)?;
        if index::fits(d.capacity(), wr.st.index_used, more) {
            return Ok(());
        }
        let log2 = index::log2cap_for(wr.st.live_keys.saturating_add(more).saturating_mul(3) / 2);
        let off = wr.st.tail;
        let start =
            record::index_table_start(off).ok_or_else(|| self.corrupt(off, "tail overflows"))?;
        let new = Desc {
            start,
            log2cap: log2,
        };
        let end = start + new.bytes();
        self.ensure_space(
            end.checked_add(then)
                .ok_or_else(|| self.corrupt(off, "tail overflows"))?,
            growth,
        )?;
        let hdr = record::encode_index(self.salt, off, log2);
        wr.unpublished = true;
        self.write_bytes(off, &hdr.to_bytes())?;
        self.arena.advise_hugepage(start, new.bytes());
        self.arena
            .zero(start, new.bytes())
            .map_err(|_| self.corrupt(start, "index table outside the file"))?;
        let (nt, _) = self.table_at(new.encode())?;
        let n = old
            .copy_into(&nt, |word| self.rehash(word))
            .map_err(|f| self.locate(f, d.start))?;
        // The old table is dead log space from here on (readers still on
        // it finish their probes, faulting pages back in if need be): stop
        // counting it in this process's resident set.
        self.arena.release(d.start, d.bytes());
        // Not published here: the caller publishes the new descriptor with
        // the commit that needed it (control block begin/end).
        wr.st.index_desc = new.encode();
        wr.st.index_used = n;
        wr.st.tail = end;
        Ok(())
    }
}
