//! The read path: the current slot table, then a lookup that copies the
//! record out and checks it. `get`, `get_into`, `get_pod`, the reads of
//! `read_consistent`/`get_many` and iteration all come through here.

use crate::index::{self, Desc, Table};
use crate::log::read::{now_ms, Dest, Load, Put};
use crate::log::record::Header;
use crate::storage::control::{CONTROL_MAGIC, INDEX_DESC, MOVED_MAGIC, MOVING_MAGIC};
use crate::storage::mapping::MapMode;
use crate::storage::{ARENA_START, CONTROL_OFFSET};

use super::{check_key, Failure, Result, Store};

impl Store {
    /// The current slot table, checked against the file.
    /// `Failure::Moved` if a compaction moved the store to a new file (the
    /// caller follows it): the magic word shares a cache line with the
    /// descriptor, so this check costs readers nothing measurable.
    #[inline]
    pub(crate) fn table(&self) -> Result<(Table<'_>, Desc)> {
        let c = self.control()?;
        let magic = c.magic();
        if magic != CONTROL_MAGIC && self.arena.mode() != MapMode::Private {
            self.moved_check(magic)?;
        }
        self.table_at(c.index_desc())
    }

    /// Slow path of `table`: MOVED means moved; MOVING means moved only once
    /// the name names another file (until then this file is still the
    /// store); anything else is damage, reported by the descriptor checks.
    #[cold]
    fn moved_check(&self, magic: u64) -> Result<()> {
        if magic == MOVED_MAGIC || (magic == MOVING_MAGIC && self.path_names_other_file()) {
            return Err(Failure::Moved);
        }
        Ok(())
    }

    /// The slot table a descriptor word names, checked against the file.
    pub(crate) fn table_at(&self, desc: u64) -> Result<(Table<'_>, Desc)> {
        let d = Desc::decode(desc)
            .filter(|d| d.start >= ARENA_START)
            .ok_or_else(|| {
                self.corrupt(
                    CONTROL_OFFSET + INDEX_DESC,
                    format!("bad index descriptor {desc:#x}"),
                )
            })?;
        let slots = self
            .arena
            .atomics(d.start, d.capacity())
            .map_err(|_| self.corrupt(d.start, "index table runs past the end of the file"))?;
        Ok((Table::new(slots, d.log2cap), d))
    }

    /// Find `key` and copy it into `dest`: `true` if it is there and live
    /// (not expired), with `value_at` set to where its value starts in a
    /// [`Dest::Copy`] buffer. In cache mode a hit marks the slot (a second
    /// chance at the next eviction).
    #[inline]
    fn find_live(&self, key: &[u8], mut dest: Dest<'_>, value_at: &mut usize) -> Result<bool> {
        let (t, d) = self.table()?;
        let h = index::hash(self.hash_seed, key);
        let rec = self.records();
        let mut live = false;
        let found = t
            .find(h, |off| -> Result<bool> {
                match rec.load(off, key, &mut dest)? {
                    Load::OtherKey => Ok(false),
                    Load::Live { value_at: at } => {
                        *value_at = at;
                        live = true;
                        Ok(true)
                    }
                    Load::Expired => Ok(true),
                }
            })
            .map_err(|f| self.locate(f, d.start))?;
        if let (Some((slot, word)), true) = (found, self.counts_hits()) {
            t.touch(slot, word);
        }
        Ok(live)
    }

    /// The read path: find `key` and copy its record into `buf` (key, then
    /// the value area), verified by CRC. Returns where the value starts in
    /// `buf`; `None` if the key is absent or its entry expired.
    #[inline]
    pub(crate) fn fetch(&self, key: &[u8], buf: &mut Vec<u8>) -> Result<Option<usize>> {
        let mut at = 0;
        let live = self.find_live(key, Dest::Copy(buf), &mut at)?;
        Ok(live.then_some(at))
    }

    /// Find `key` and copy its value into `out`, which must be exactly the
    /// value's length; verify the record's CRC over the key and `out`.
    pub(crate) fn fetch_exact(&self, key: &[u8], out: &mut [u8]) -> Result<bool> {
        check_key(key)?;
        let mut at = 0;
        self.find_live(key, Dest::Exact(out), &mut at)
    }

    /// Read a key's record: `Some((record offset, header))`; `None` if the
    /// key is absent or its entry has expired.
    #[inline]
    pub(crate) fn lookup(&self, key: &[u8]) -> Result<Option<(u64, Header)>> {
        let (t, d) = self.table()?;
        let h = index::hash(self.hash_seed, key);
        let rec = self.records();
        let found = t
            .find(h, |off| -> Result<bool> { Ok(rec.key_eq(off, key)?) })
            .map_err(|f| self.locate(f, d.start))?;
        match found {
            None => Ok(None),
            Some((_, word)) => {
                let off = index::word_offset(word);
                let hd = rec.header(off)?;
                if rec.expired_at(off, &hd, now_ms())? {
                    return Ok(None);
                }
                Ok(Some((off, hd)))
            }
        }
    }

    /// The entry a live slot word points at, read whole and checked: its
    /// record must be a put whose key carries the slot's tag (a slot whose
    /// tag is not its key's lies about where the key lives: the index
    /// disagrees with the log).
    pub(crate) fn entry_at(&self, word: u64) -> Result<Put> {
        let off = index::word_offset(word);
        let rec = self.records();
        let h = rec.put_header(off)?;
        let put = rec.put(off, &h)?;
        if !index::same_tag(word, index::hash(self.hash_seed, put.key())) {
            return Err(self
                .corrupt(
                    off,
                    "a slot's tag does not match the key of the record it points at",
                )
                .into());
        }
        Ok(put)
    }

    /// The full hash of the key a live slot word points at.
    pub(crate) fn rehash(&self, word: u64) -> Result<u64> {
        let o = index::word_offset(word);
        let rec = self.records();
        let h = rec.header(o)?;
        Ok(index::hash(self.hash_seed, &rec.key(o, &h)?))
    }

    /// Set the hit count of `key`'s entry (compaction carries counts over
    /// to its new file, which nobody else writes yet).
    pub(crate) fn set_freq(&self, key: &[u8], f: u64) -> Result<()> {
        let (t, d) = self.table()?;
        let h = index::hash(self.hash_seed, key);
        let rec = self.records();
        if let Some((slot, word)) = t
            .find(h, |off| -> Result<bool> { Ok(rec.key_eq(off, key)?) })
            .map_err(|f| self.locate(f, d.start))?
        {
            t.set_freq(slot, word, f);
        }
        Ok(())
    }
}
