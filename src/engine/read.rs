//! The read path: the current slot table, then a lookup that copies the
//! record out and checks it. `get`, `get_into`, `get_pod`, the reads of
//! `read_consistent`/`get_many` and iteration all come through here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::index::{self, Desc, Table};
use crate::log::read::{now_ms, Dest, Load, Put};
use crate::log::record::Header;
use crate::storage::control::{CONTROL_MAGIC, INDEX_DESC, MOVED_MAGIC, MOVING_MAGIC};
use crate::storage::mapping::MapMode;
use crate::storage::{ARENA_START, CONTROL_OFFSET};

use super::{check_key, Failure, Result, Store};
use crate::Value;

/// How far ahead [`Store::fetch_many`]'s pipeline stages run, in keys.
const AHEAD: usize = 8;
/// The ring of hashes the pipeline keeps (a power of two > 2 * AHEAD).
const RING: usize = 32;
const _: () = assert!(RING.is_power_of_two() && RING > 2 * AHEAD);
/// Slots the record prefetch looks at along a probe path.
const PROBE_AHEAD: usize = 4;
/// Bytes of a record prefetched ahead of its lookup: header, a short key
/// and a value of about 150 bytes (what `load` itself prefetches).
const PREFETCH_RECORD: u64 = 256;

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
    fn find_live(&self, key: &[u8], dest: Dest<'_>, value_at: &mut usize) -> Result<bool> {
        let (t, d) = self.table()?;
        let h = index::hash(self.hash_seed, key);
        self.find_live_in(&t, d, key, h, dest, value_at)
    }

    /// The live entry of `key` in this file as it is now, read whole, or
    /// `None` (absent or expired). Unlike a `get`, it reads this file even
    /// after a compaction has moved the store on (an iterator finishes on
    /// the file it started with), and marks no hit (iterating is not
    /// using an entry).
    pub(crate) fn entry_here(&self, key: &[u8]) -> Result<Option<Put>> {
        let (t, d) = self.table_at(self.control()?.index_desc())?;
        let h = index::hash(self.hash_seed, key);
        let rec = self.records();
        let mut buf = Vec::new();
        let mut at = None;
        {
            let mut dest = Dest::Copy(&mut buf);
            t.find(h, |off| -> Result<bool> {
                match rec.load(off, key, &mut dest)? {
                    Load::OtherKey => Ok(false),
                    Load::Live { value_at } => {
                        at = Some(value_at);
                        Ok(true)
                    }
                    Load::Expired => Ok(true),
                }
            })
            .map_err(|f| self.locate(f, d.start))?;
        }
        Ok(at.map(|at| Put::from_loaded(buf, key.len(), at)))
    }

    /// `find_live` in a table already loaded, for a key already hashed.
    #[inline]
    fn find_live_in(
        &self,
        t: &Table<'_>,
        d: Desc,
        key: &[u8],
        h: u64,
        mut dest: Dest<'_>,
        value_at: &mut usize,
    ) -> Result<bool> {
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

    /// Start the cache misses of many lookups at once: first every home
    /// slot, then the record each home slot points at when its tag
    /// matches (`span` bytes of it). The lookups that follow then find
    /// their lines in cache instead of waiting for two misses per key, one
    /// after the other (group prefetching, as in hash joins). A hint only:
    /// nothing read here is trusted or kept.
    pub(crate) fn prefetch_lookups(&self, t: &Table<'_>, d: Desc, hashes: &[u64], span: u64) {
        for &h in hashes {
            self.arena.prefetch(d.start + 8 * t.home(h) as u64, 8);
        }
        for &h in hashes {
            if let Some(word) = t.word_at(t.home(h)) {
                if index::is_live(word) && index::same_tag(word, h) {
                    self.arena.prefetch(index::word_offset(word), span);
                }
            }
        }
    }

    /// Look up many keys with their cache misses overlapped: `out[i]`
    /// gets the value of `keys[i]` (or `None`), each copied and checked
    /// exactly as [`fetch`](Store::fetch) does. Returns the number of hits.
    ///
    /// A software pipeline `AHEAD` keys deep on two stages, in the manner
    /// of group prefetching for hash joins: while key `i` is looked up,
    /// the record of key `i + AHEAD` and the home slot of key
    /// `i + 2 * AHEAD` are already loading. A steady number of misses is
    /// in flight (about `AHEAD` slots and `AHEAD` records), where a loop
    /// of single gets waits for two misses per key, one after the other.
    /// The stages only prefetch: the lookup itself is the ordinary one,
    /// trusting nothing the prefetch stages saw.
    pub(crate) fn fetch_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        out: &mut Vec<Option<Value>>,
    ) -> Result<u64> {
        // The buffers of the values `out` held are reused for the new ones
        // (a caller of `get_many_into` passes the same `out` every time).
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut old = std::mem::take(out);
        old.truncate(keys.len());
        out.reserve(keys.len());
        let mut old = old.into_iter().flatten().map(Value::into_parts);
        let (t, d) = self.table()?;
        let n = keys.len();
        // Hashes of the keys ahead, in a ring indexed by key position.
        let mut ring = [0u64; RING];
        let hash = |i: usize| index::hash(self.hash_seed, keys[i].as_ref());
        let slot_stage = |h: u64| self.arena.prefetch(d.start + 8 * t.home(h) as u64, 8);
        for (i, h) in ring.iter_mut().enumerate().take(n.min(2 * AHEAD)) {
            *h = hash(i);
            slot_stage(*h);
        }
        for i in 0..n.min(AHEAD) {
            self.prefetch_record(&t, ring[i % RING]);
        }
        let mut hits = 0;
        for i in 0..n {
            if i + 2 * AHEAD < n {
                let h = hash(i + 2 * AHEAD);
                ring[(i + 2 * AHEAD) % RING] = h;
                slot_stage(h);
            }
            if i + AHEAD < n {
                self.prefetch_record(&t, ring[(i + AHEAD) % RING]);
            }
            let key = keys[i].as_ref();
            let mut buf = spare.pop().or_else(|| old.next()).unwrap_or_default();
            let mut at = 0;
            let live =
                self.find_live_in(&t, d, key, ring[i % RING], Dest::Copy(&mut buf), &mut at)?;
            hits += live as u64;
            if live {
                out.push(Some(Value::from_parts(buf, at)));
            } else {
                out.push(None);
                spare.push(buf);
            }
        }
        Ok(hits)
    }

    /// Prefetch the record that the first slot on `h`'s probe path with a
    /// matching tag points at (the probe stops at an empty slot, and after
    /// a few slots: a hint only, never a lookup).
    #[inline]
    fn prefetch_record(&self, t: &Table<'_>, h: u64) {
        let mut slot = t.home(h);
        for _ in 0..PROBE_AHEAD {
            match t.word_at(slot) {
                Some(w) if index::is_live(w) && index::same_tag(w, h) => {
                    self.arena.prefetch(index::word_offset(w), PREFETCH_RECORD);
                    return;
                }
                Some(index::EMPTY) | None => return,
                Some(_) => slot += 1,
            }
        }
    }

    /// The live entry of `key`, read whole (value and expiry), or `None`.
    pub(crate) fn get_entry(&self, key: &[u8]) -> Result<Option<Put>> {
        let mut buf = Vec::new();
        Ok(self
            .fetch(key, &mut buf)?
            .map(|at| Put::from_loaded(buf, key.len(), at)))
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

    /// Count the entries of the current table: `(live, expired)`, where
    /// expired ones are still stored but past their expiry. Reads every
    /// live slot's record header (and expiry): O(entries), with the loads
    /// of the next slots' records in flight.
    pub(crate) fn count_entries(&self) -> Result<(u64, u64)> {
        let (t, _) = self.table()?;
        let rec = self.records();
        let now = now_ms();
        let (mut live, mut expired) = (0u64, 0u64);
        const AHEAD: usize = 16;
        let prefetch = |slot: usize| {
            if let Some(word) = t.word_at(slot).filter(|&w| index::is_live(w)) {
                self.arena.prefetch(index::word_offset(word), 64);
            }
        };
        (0..AHEAD).for_each(prefetch);
        let mut slot = 0;
        while let Some(word) = t.word_at(slot) {
            prefetch(slot + AHEAD);
            slot += 1;
            if !index::is_live(word) {
                continue;
            }
            let off = index::word_offset(word);
            let h = rec.header(off)?;
            if rec.expired_at(off, &h, now)? {
                expired += 1;
            } else {
                live += 1;
            }
        }
        Ok((live, expired))
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

/// Hit and miss counters of a handle, striped over cache lines so that
/// threads reading through clones of one handle do not contend on one
/// line. Each stripe adds its counts to the store's (in the control block,
/// shared by every process) once it has `FLUSH_EVERY`, and the rest when
/// the handle reports [``Db::cache_stats``] or is dropped: one shared atomic
/// add per batch of reads instead of one per read.
pub(crate) struct HitCounters {
    stripes: [Stripe; STRIPES],
}

const STRIPES: usize = 8;
/// Reads a stripe counts before it adds them to the store's counters.
const FLUSH_EVERY: u64 = 64;

#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for HitCounters {
    fn default() -> Self {
        HitCounters {
            stripes: std::array::from_fn(|_| Stripe::default()),
        }
    }
}

impl HitCounters {
    /// Count reads; `share`: add the counts to the store's once a stripe
    /// has enough (a read-only handle cannot write them there).
    #[inline]
    fn record(&self, store: &Store, hits: u64, misses: u64, share: bool) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
            };
        }
        let s = &self.stripes[STRIPE.with(|s| *s)];
        for (c, n, hit) in [(&s.hits, hits, true), (&s.misses, misses, false)] {
            if n == 0 {
                continue;
            }
            if c.fetch_add(n, Ordering::Relaxed) + n >= FLUSH_EVERY && share {
                let n = c.swap(0, Ordering::Relaxed);
                if let Ok(ctl) = store.control() {
                    let (h, m) = if hit { (n, 0) } else { (0, n) };
                    ctl.add_reads(h, m);
                }
            }
        }
    }

    /// The counts not added to the store's yet: `(hits, misses)`.
    fn pending(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(h, m), s| {
            (
                h + s.hits.load(Ordering::Relaxed),
                m + s.misses.load(Ordering::Relaxed),
            )
        })
    }

    /// Take the counts not added yet: `(hits, misses)`.
    fn take(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(h, m), s| {
            (
                h + s.hits.swap(0, Ordering::Relaxed),
                m + s.misses.swap(0, Ordering::Relaxed),
            )
        })
    }

    /// Count reads made through another store of this handle.
    fn add(&self, hits: u64, misses: u64) {
        self.stripes[0].hits.fetch_add(hits, Ordering::Relaxed);
        self.stripes[0].misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// Add every count not added yet to the store's counters.
    fn flush(&self, store: &Store) {
        let Ok(ctl) = store.control() else {
            return;
        };
        for s in &self.stripes {
            let (h, m) = (
                s.hits.swap(0, Ordering::Relaxed),
                s.misses.swap(0, Ordering::Relaxed),
            );
            ctl.add_reads(h, m);
        }
    }
}

impl Store {
    /// Count a read for the hit ratio (cache mode). A read-write handle
    /// adds its counts to the store's, shared by every process; a
    /// read-only one cannot write them there and keeps its own.
    #[inline]
    pub(crate) fn count_read(&self, hit: bool) {
        if self.is_cache() {
            self.record_read(hit);
        }
    }

    /// Out of line: keeps the database-mode read path as small as before.
    #[inline(never)]
    fn record_read(&self, hit: bool) {
        let (h, m) = if hit { (1, 0) } else { (0, 1) };
        self.hits.record(self, h, m, !self.read_only());
    }

    /// Count `hits` and `misses` reads at once (`get_many`).
    pub(crate) fn count_reads(&self, hits: u64, misses: u64) {
        if self.is_cache() {
            self.hits.record(self, hits, misses, !self.read_only());
        }
    }

    /// Reads of a read-only handle, which only it can see: `(hits,
    /// misses)` (0 for a read-write handle, whose reads the store counts).
    pub(crate) fn own_reads(&self) -> (u64, u64) {
        if self.read_only() {
            self.hits.pending()
        } else {
            (0, 0)
        }
    }

    /// Add this handle's uncounted reads to the store's counters.
    pub(crate) fn flush_reads(&self) {
        if !self.read_only() {
            self.hits.flush(self);
        }
    }

    /// This handle follows the store from `self` to `new` (a compaction
    /// moved it): the reads it has not added yet go to the new store's
    /// counters, or to its own, not to the old file's.
    pub(crate) fn hand_reads_to(&self, new: &Store) {
        if self.read_only() {
            let (h, m) = self.hits.take();
            new.hits.add(h, m);
        } else {
            self.hits.flush(new);
        }
    }
}
