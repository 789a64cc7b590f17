//! The slot table: fixed-size, open addressing with linear probing, one
//! atomic 64-bit word per slot. Pure logic over `&[AtomicU64]`, so it runs on
//! heap memory in tests (and under Miri) exactly as on the mapping.
//!
//! # Slot word
//!
//! ```text
//! bits 63..38  tag     top 26 bits of the key's 64-bit hash
//! bits 37..36  freq    reads since the entry was written or last kept by
//!                      an eviction, saturating at 3 (cache mode only)
//! bits 35..0   offset  record offset / 8 (records are 8-byte aligned)
//! word 0 = empty, word 1 = tombstone (offset 8 lies in meta A: never a record)
//! ```
//!
//! A key's home slot is the top `log2(capacity)` bits of its hash and probing
//! goes forward one slot at a time, wrapping. Because the tag *is* the top of
//! the hash, a table of up to 2^26 slots can be rebuilt into a larger one
//! from the slot words alone, without reading a single record.
//!
//! # Concurrency
//!
//! One writer (holding the writer lock) stores words with `Release`; any
//! number of readers load them with `Acquire`. Entries never move while a
//! table is in use: an overwrite replaces a word in place, a removal stores a
//! tombstone, an insertion fills the first tombstone or empty slot on the
//! key's probe path. A reader therefore sees, for every slot, either the old
//! or the new word, and every word it can see points at a record that was
//! completely written before the word was stored. Tombstones are cleared only
//! by rebuilding into a fresh table, which readers switch to atomically.
//!
//! In cache mode readers also count hits in the `freq` bits, with a
//! compare-and-swap from the word they found to the same word with `freq`
//! one higher. The swap fails harmlessly if the writer changed the slot
//! meanwhile, so a reader never turns an empty slot or a tombstone into
//! something else and never changes where a slot points. A lost count only
//! makes eviction a little less precise.

use std::sync::atomic::{AtomicU64, Ordering};

/// An empty slot.
pub(crate) const EMPTY: u64 = 0;
/// A slot whose entry was removed.
pub(crate) const TOMBSTONE: u64 = 1;
const OFF_BITS: u32 = 36;
const OFF_MASK: u64 = (1 << OFF_BITS) - 1;
/// Where the hit counter starts, and its mask.
const FREQ_SHIFT: u32 = OFF_BITS;
const FREQ_MASK: u64 = 3 << FREQ_SHIFT;
/// The highest hit count a slot keeps.
pub(crate) const FREQ_MAX: u64 = 3;
/// Where the tag starts.
const TAG_SHIFT: u32 = OFF_BITS + 2;
/// Bits of the hash kept in a slot.
pub(crate) const TAG_BITS: u32 = 64 - TAG_SHIFT;
/// Smallest table: 512 slots (one 4 KiB page).
pub(crate) const MIN_LOG2CAP: u32 = 9;
/// Largest table: 2^32 slots (32 GiB).
pub(crate) const MAX_LOG2CAP: u32 = 32;

/// The stable, seeded key hash (xxh3-64). Part of the file format.
#[inline]
pub(crate) fn hash(seed: u64, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

/// The slot word for a record at `off` whose key hashes to `h`.
#[inline]
pub(crate) fn make_word(h: u64, off: u64) -> u64 {
    debug_assert!(off % 8 == 0 && off >> 3 <= OFF_MASK && off >= 16);
    (h >> TAG_SHIFT << TAG_SHIFT) | (off >> 3)
}

/// The hit count (0..=3) of a live slot word.
#[inline]
pub(crate) fn word_freq(w: u64) -> u64 {
    (w & FREQ_MASK) >> FREQ_SHIFT
}

/// `w` with its hit count set to `f` (at most 3).
#[inline]
pub(crate) fn with_freq(w: u64, f: u64) -> u64 {
    (w & !FREQ_MASK) | (f.min(FREQ_MAX) << FREQ_SHIFT)
}

/// Record offset stored in a live slot word.
#[inline]
pub(crate) fn word_offset(w: u64) -> u64 {
    (w & OFF_MASK) << 3
}

#[inline]
pub(crate) fn same_tag(w: u64, h: u64) -> bool {
    (w ^ h) >> TAG_SHIFT == 0
}

#[inline]
pub(crate) fn is_live(w: u64) -> bool {
    w > TOMBSTONE
}

/// The bits of a descriptor word below the format page hold log2 of the
/// table's capacity; the rest is the table's page-aligned offset.
pub(crate) const DESC_LOG2_MASK: u64 = crate::storage::FORMAT_PAGE - 1;

/// Where a table lives: a page-aligned offset and log2 of its capacity,
/// packed into one word so readers load both at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desc {
    pub start: u64,
    pub log2cap: u32,
}

impl Desc {
    pub(crate) fn encode(self) -> u64 {
        debug_assert!(self.start & DESC_LOG2_MASK == 0 && self.log2cap < 64);
        self.start | self.log2cap as u64
    }

    /// Decode and sanity-check a descriptor read from the file.
    pub(crate) fn decode(w: u64) -> Option<Desc> {
        let log2cap = (w & DESC_LOG2_MASK) as u32;
        let start = w & !DESC_LOG2_MASK;
        if !(MIN_LOG2CAP..=MAX_LOG2CAP).contains(&log2cap) || start == 0 {
            return None;
        }
        Some(Desc { start, log2cap })
    }

    pub(crate) fn capacity(self) -> u64 {
        1 << self.log2cap
    }

    pub(crate) fn bytes(self) -> u64 {
        8 << self.log2cap
    }
}

/// The probe sequence ran through the whole table without finding an empty
/// slot: the table is full, which mapkv never lets happen, so the file is
/// damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableFull;

/// Result of [`Table::upsert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Upsert {
    /// The word that was replaced, if the key was present.
    pub old: Option<u64>,
    /// True if a previously empty slot was taken (occupancy grew).
    pub took_empty: bool,
}

/// A slot table over a slice of atomic words (mapped or on the heap).
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    slots: &'a [AtomicU64],
    log2cap: u32,
}

impl<'a> Table<'a> {
    /// `slots.len()` must be `1 << log2cap`.
    pub(crate) fn new(slots: &'a [AtomicU64], log2cap: u32) -> Table<'a> {
        assert!(log2cap >= 1 && slots.len() == 1usize << log2cap);
        Table { slots, log2cap }
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// The home slot of hash `h`.
    #[inline]
    pub(crate) fn home(&self, h: u64) -> usize {
        (h >> (64 - self.log2cap)) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Find the slot of the key hashing to `h`. `eq(offset)` says whether the
    /// record at `offset` holds the key (called only on tag matches).
    #[inline]
    pub(crate) fn find<E: From<TableFull>>(
        &self,
        h: u64,
        mut eq: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<Option<(usize, u64)>, E> {
        let mask = self.mask();
        let mut i = self.home(h);
        for _ in 0..self.slots.len() {
            let w = self.slots[i].load(Ordering::Acquire);
            if w == EMPTY {
                return Ok(None);
            }
            if w != TOMBSTONE && same_tag(w, h) && eq(word_offset(w))? {
                return Ok(Some((i, w)));
            }
            i = (i + 1) & mask;
        }
        Err(TableFull.into())
    }

    /// Insert `word` for the key hashing to `h`, replacing the key's current
    /// word if `eq` finds it. Writer only.
    pub(crate) fn upsert<E: From<TableFull>>(
        &self,
        h: u64,
        word: u64,
        mut eq: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<Upsert, E> {
        let mask = self.mask();
        let mut i = self.home(h);
        let mut tomb = None;
        for _ in 0..self.slots.len() {
            let w = self.slots[i].load(Ordering::Acquire);
            if w == EMPTY {
                let (at, took_empty) = match tomb {
                    Some(t) => (t, false),
                    None => (i, true),
                };
                self.slots[at].store(word, Ordering::Release);
                return Ok(Upsert {
                    old: None,
                    took_empty,
                });
            }
            if w == TOMBSTONE {
                tomb.get_or_insert(i);
            } else if same_tag(w, h) && eq(word_offset(w))? {
                // An overwrite keeps the key's hit count.
                self.slots[i].store(with_freq(word, word_freq(w)), Ordering::Release);
                return Ok(Upsert {
                    old: Some(w),
                    took_empty: false,
                });
            }
            i = (i + 1) & mask;
        }
        match tomb {
            Some(t) => {
                self.slots[t].store(word, Ordering::Release);
                Ok(Upsert {
                    old: None,
                    took_empty: false,
                })
            }
            None => Err(TableFull.into()),
        }
    }

    /// Replace the word in `slot` (found by `find`) with a tombstone.
    pub(crate) fn remove_at(&self, slot: usize) {
        self.slots[slot].store(TOMBSTONE, Ordering::Release);
    }

    /// Put `word` into the first empty slot of its probe path, without
    /// looking for an existing entry (used when building a fresh table).
    fn place(&self, h: u64, word: u64) -> Result<(), TableFull> {
        let mask = self.mask();
        let mut i = self.home(h);
        for _ in 0..self.slots.len() {
            if self.slots[i].load(Ordering::Relaxed) == EMPTY {
                self.slots[i].store(word, Ordering::Release);
                return Ok(());
            }
            i = (i + 1) & mask;
        }
        Err(TableFull)
    }

    /// Copy every live entry into `dst` (which must be empty and no smaller
    /// than the live count). For tables of up to 2^28 slots the home slot
    /// comes from the tag; larger ones need the full hash, which
    /// `hash_of(word)` supplies (by reading the record's key). Returns the
    /// number of entries copied.
    pub(crate) fn copy_into<E: From<TableFull>>(
        &self,
        dst: &Table<'_>,
        hash_of: impl FnMut(u64) -> Result<u64, E>,
    ) -> Result<u64, E> {
        self.copy_into_with(dst, TAG_BITS, hash_of)
    }

    /// `copy_into`, with the largest table whose homes come from tags as a
    /// parameter (tests lower it to reach the full-hash path cheaply).
    fn copy_into_with<E: From<TableFull>>(
        &self,
        dst: &Table<'_>,
        tag_home_max: u32,
        mut hash_of: impl FnMut(u64) -> Result<u64, E>,
    ) -> Result<u64, E> {
        let mut n = 0;
        for w in self.live_words() {
            let h = if dst.log2cap <= tag_home_max {
                w >> TAG_SHIFT << TAG_SHIFT
            } else {
                hash_of(w)?
            };
            dst.place(h, w)?;
            n += 1;
        }
        Ok(n)
    }

    /// Count a hit on the entry in `slot`, whose word a reader found to be
    /// `w`: one compare-and-swap to `w` with its count one higher, unless
    /// the count is at its maximum. Fails (harmlessly) if the slot changed.
    #[inline(never)]
    pub(crate) fn touch(&self, slot: usize, w: u64) {
        if word_freq(w) < FREQ_MAX && is_live(w) {
            if let Some(s) = self.slots.get(slot) {
                let _ = s.compare_exchange(
                    w,
                    w + (1 << FREQ_SHIFT),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Set the hit count of the entry in `slot` to `f`, if the slot still
    /// holds `w` (writer only: eviction carries counts to the new file).
    pub(crate) fn set_freq(&self, slot: usize, w: u64, f: u64) {
        if let Some(s) = self.slots.get(slot) {
            let _ = s.compare_exchange(w, with_freq(w, f), Ordering::Release, Ordering::Relaxed);
        }
    }

    /// Every live word, in slot order.
    pub(crate) fn live_words(&self) -> impl Iterator<Item = u64> + 'a {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&w| is_live(w))
    }

    /// The word in `slot` (for iteration by position).
    pub(crate) fn word_at(&self, slot: usize) -> Option<u64> {
        self.slots.get(slot).map(|s| s.load(Ordering::Acquire))
    }
}

/// The smallest capacity (log2) whose table holds `entries` below the
/// maximum load of 3/4, and at least `MIN_LOG2CAP`.
pub(crate) fn log2cap_for(entries: u64) -> u32 {
    let need = entries.saturating_mul(4) / 3 + 1;
    let l = 64 - (need.max(2) - 1).leading_zeros();
    l.clamp(MIN_LOG2CAP, MAX_LOG2CAP)
}

/// Whether a table of `cap` slots with `used` occupied slots may take
/// `more` new ones and stay at or below 3/4 load.
pub(crate) fn fits(cap: u64, used: u64, more: u64) -> bool {
    used.saturating_add(more).saturating_mul(4) <= cap.saturating_mul(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn heap(log2cap: u32) -> Vec<AtomicU64> {
        (0..1usize << log2cap).map(|_| AtomicU64::new(0)).collect()
    }

    /// A tiny model of the log: offset -> key.
    struct Log {
        keys: HashMap<u64, Vec<u8>>,
        next: u64,
    }

    impl Log {
        fn new() -> Log {
            Log {
                keys: HashMap::new(),
                next: 4096,
            }
        }
        fn append(&mut self, k: &[u8]) -> u64 {
            let off = self.next;
            self.next += 64;
            self.keys.insert(off, k.to_vec());
            off
        }
    }

    #[test]
    fn word_encoding() {
        let h = 0xdead_beef_1234_5678u64;
        let w = make_word(h, 4096 * 9 + 8);
        assert_eq!(word_offset(w), 4096 * 9 + 8);
        assert!(same_tag(w, h));
        assert!(!same_tag(w, h ^ (1 << 63)));
        assert!(is_live(w));
        assert!(!is_live(EMPTY) && !is_live(TOMBSTONE));
        // The largest offset the format allows round-trips.
        let max = (1u64 << 39) - 8;
        assert_eq!(word_offset(make_word(0, max)), max);
        // The hit count lives beside the tag and the offset, touching
        // neither.
        assert_eq!(word_freq(w), 0);
        for f in 0..=FREQ_MAX {
            let x = with_freq(w, f);
            assert_eq!((word_freq(x), word_offset(x)), (f, word_offset(w)));
            assert!(same_tag(x, h) && is_live(x));
        }
        assert_eq!(word_freq(with_freq(w, 9)), FREQ_MAX);
        // A hash differing only below the tag still matches the tag.
        assert!(same_tag(w, h ^ (1 << 37)));
    }

    #[test]
    fn touch_counts_hits_and_never_changes_what_a_slot_means() {
        let slots = heap(4);
        let t = Table::new(&slots, 4);
        let h = 0x1234_5678_9abc_def0u64;
        let w = make_word(h, 4096);
        let home = t.home(h);
        slots[home].store(w, Ordering::Relaxed);
        for expect in [1, 2, 3, 3] {
            let cur = slots[home].load(Ordering::Relaxed);
            t.touch(home, cur);
            assert_eq!(word_freq(slots[home].load(Ordering::Relaxed)), expect);
        }
        // A stale word (the writer changed the slot) is not applied.
        slots[home].store(TOMBSTONE, Ordering::Relaxed);
        t.touch(home, w);
        assert_eq!(slots[home].load(Ordering::Relaxed), TOMBSTONE);
        slots[(home + 1) % 16].store(EMPTY, Ordering::Relaxed);
        t.touch((home + 1) % 16, EMPTY);
        t.touch((home + 1) % 16, TOMBSTONE);
        assert_eq!(slots[(home + 1) % 16].load(Ordering::Relaxed), EMPTY);
        // An overwrite keeps the count; set_freq changes only that.
        slots[home].store(with_freq(w, 2), Ordering::Relaxed);
        let w2 = make_word(h, 8192);
        let up = t.upsert::<TableFull>(h, w2, |o| Ok(o == 4096)).unwrap();
        assert_eq!(up.old, Some(with_freq(w, 2)));
        assert_eq!(slots[home].load(Ordering::Relaxed), with_freq(w2, 2));
        t.set_freq(home, with_freq(w2, 2), 0);
        assert_eq!(slots[home].load(Ordering::Relaxed), w2);
    }

    #[test]
    fn desc_roundtrip_and_checks() {
        let d = Desc {
            start: 4096 * 5,
            log2cap: 12,
        };
        assert_eq!(Desc::decode(d.encode()), Some(d));
        assert_eq!(Desc::decode(4096 * 5 + 3), None);
        assert_eq!(Desc::decode(4096 * 5 + 40), None);
        assert_eq!(Desc::decode(12), None);
    }

    #[test]
    fn capacity_policy() {
        assert_eq!(log2cap_for(0), MIN_LOG2CAP);
        assert_eq!(log2cap_for(1000), 11);
        assert!(fits(1 << log2cap_for(1_000_000), 1_000_000, 0));
        assert!(fits(1024, 700, 68));
        assert!(!fits(1024, 700, 69));
    }

    /// Random operations against a HashMap, with frequent collisions (small
    /// table, hashes forced into few home slots) and rebuilds.
    #[test]
    fn model_with_collisions_and_rebuilds() {
        let mut log = Log::new();
        let mut model: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut store = heap(MIN_LOG2CAP);
        let mut log2 = MIN_LOG2CAP;
        let mut used = 0u64;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Only 3 high bits vary for half the keys: long shared probe runs.
        let h_of = |k: &[u8]| {
            let h = hash(1, k);
            if k[0] % 2 == 0 {
                h & 0xe000_0000_ffff_ffff
            } else {
                h
            }
        };
        for _ in 0..50_000 {
            let k = vec![(next() % 400) as u8, (next() % 3) as u8];
            let h = h_of(&k);
            let t = Table::new(&store, log2);
            let lk = &log.keys;
            let eq = |off: u64| Ok::<_, TableFull>(lk[&off] == k);
            match next() % 3 {
                0 | 1 => {
                    if !fits(t.capacity(), used, 1) {
                        let nl = log2cap_for(model.len() as u64 + 1).max(log2);
                        let ns = heap(nl);
                        let nt = Table::new(&ns, nl);
                        let n = t
                            .copy_into(&nt, |_| -> Result<u64, TableFull> { unreachable!() })
                            .unwrap();
                        assert_eq!(n, model.len() as u64);
                        store = ns;
                        log2 = nl;
                        used = n;
                    }
                    let off = log.append(&k);
                    let lk = &log.keys;
                    let t = Table::new(&store, log2);
                    let r = t
                        .upsert(h, make_word(h, off), |o| Ok::<_, TableFull>(lk[&o] == k))
                        .unwrap();
                    used += r.took_empty as u64;
                    let prev = model.insert(k.clone(), off);
                    assert_eq!(r.old.map(word_offset), prev);
                }
                _ => {
                    let found = t.find(h, eq).unwrap();
                    assert_eq!(found.map(|(_, w)| word_offset(w)), model.get(&k).copied());
                    if let Some((slot, _)) = found {
                        t.remove_at(slot);
                        model.remove(&k);
                    }
                }
            }
        }
        let t = Table::new(&store, log2);
        for (k, off) in &model {
            let lk = &log.keys;
            let got = t
                .find(h_of(k), |o| Ok::<_, TableFull>(lk[&o] == *k))
                .unwrap();
            assert_eq!(got.map(|(_, w)| word_offset(w)), Some(*off));
        }
        assert_eq!(t.live_words().count(), model.len());
    }

    #[test]
    fn copy_into_large_tables_uses_full_hash() {
        let mut log = Log::new();
        let src = heap(10);
        let t = Table::new(&src, 10);
        let keys: Vec<Vec<u8>> = (0..600u32).map(|i| i.to_le_bytes().to_vec()).collect();
        for k in &keys {
            let h = hash(7, k);
            let off = log.append(k);
            t.upsert(h, make_word(h, off), |_| Ok::<_, TableFull>(false))
                .unwrap();
        }
        for (limit, expect_calls) in [(TAG_BITS, 0), (10, keys.len())] {
            let dst = heap(11);
            let mut calls = 0;
            let lk = &log.keys;
            t.copy_into_with(&Table::new(&dst, 11), limit, |w| {
                calls += 1;
                Ok::<_, TableFull>(hash(7, &lk[&word_offset(w)]))
            })
            .unwrap();
            assert_eq!(calls, expect_calls);
            let d = Table::new(&dst, 11);
            for k in &keys {
                let got = d
                    .find(hash(7, k), |o| Ok::<_, TableFull>(lk[&o] == *k))
                    .unwrap();
                assert!(got.is_some(), "lost a key with tag limit {limit}");
            }
        }
    }

    #[test]
    fn full_table_is_reported_not_looped() {
        let s = heap(MIN_LOG2CAP);
        for w in &s {
            w.store(TOMBSTONE, Ordering::Relaxed);
        }
        let t = Table::new(&s, MIN_LOG2CAP);
        assert_eq!(t.find(5, |_| Ok::<_, TableFull>(true)), Err(TableFull));
        // Upsert reuses a tombstone even in a table with no empty slot.
        let r = t
            .upsert(5, make_word(5, 4096), |_| Ok::<_, TableFull>(false))
            .unwrap();
        assert!(!r.took_empty && r.old.is_none());
        for w in &s {
            w.store(make_word(0, 4096), Ordering::Relaxed);
        }
        assert_eq!(
            t.upsert(5, make_word(5, 8192), |_| Ok::<_, TableFull>(false)),
            Err(TableFull)
        );
    }
}
