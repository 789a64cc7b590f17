//! Which entries an eviction drops (cache mode): FIFO with second chance
//! over the live entries in log order. Compaction (src/compact.rs) copies
//! the ones kept into the new file.

/// A live entry of the old file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) off: u64,
    /// Its slot word when the compaction started (for the tag check).
    pub(crate) word: u64,
    /// Its slot in the old table.
    pub(crate) slot: usize,
    /// Hits counted since it was written or last kept (0..=3), when the
    /// compaction started.
    pub(crate) hits: u64,
    /// The count to give it in the new file.
    pub(crate) freq: u64,
    /// Record bytes.
    pub(crate) len: u64,
}

/// Choose the entries to evict so that at least `need` record bytes go, and
/// leave in `live` the ones to keep, in the order to write them. CLOCK with
/// a 2-bit count, over the entries in log order: the oldest entry (lowest
/// offset: the log is written in order) goes first, unless it was read
/// since it was written or last kept; then it stays, moves behind every
/// newer entry and its count goes down by one. If everything left was read,
/// the sweep goes round again with the lowered counts. Returns how many
/// were evicted.
pub(crate) fn select_for_eviction(live: &mut Vec<Entry>, need: u64) -> u64 {
    if need == 0 {
        return 0;
    }
    live.sort_unstable_by_key(|e| e.off);
    let mut queue: std::collections::VecDeque<Entry> = std::mem::take(live).into();
    let mut freed = 0;
    let mut evicted = 0;
    while freed < need {
        let Some(mut e) = queue.pop_front() else {
            break;
        };
        if e.freq > 0 {
            e.freq -= 1;
            queue.push_back(e);
        } else {
            freed += e.len;
            evicted += 1;
        }
    }
    *live = queue.into();
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries written in this order (offsets 100, 110, ...) with these hit
    /// counts, handed over newest first to show that the order comes from
    /// the offsets.
    fn entries(freqs: &[u64]) -> Vec<Entry> {
        let mut v: Vec<Entry> = freqs
            .iter()
            .enumerate()
            .map(|(i, &freq)| Entry {
                off: 100 + 10 * i as u64,
                word: 0,
                slot: i,
                hits: freq,
                freq,
                len: 10,
            })
            .collect();
        v.reverse();
        v
    }

    fn offs(v: &[Entry]) -> Vec<(u64, u64)> {
        v.iter().map(|e| (e.off, e.freq)).collect()
    }

    #[test]
    fn nothing_to_free_keeps_everything_in_place() {
        let mut v = entries(&[0, 1, 2]);
        let before = v.clone();
        assert_eq!(select_for_eviction(&mut v, 0), 0);
        assert_eq!(v, before);
    }

    #[test]
    fn oldest_unread_go_first_and_read_ones_move_behind_with_one_hit_less() {
        // 100 unread, 110 read twice, 120 and 130 unread, 140 read once.
        let mut v = entries(&[0, 2, 0, 0, 1]);
        // 20 bytes to free: 100 and 120 go; 110 gets a second chance and
        // moves behind the newer ones.
        assert_eq!(select_for_eviction(&mut v, 20), 2);
        assert_eq!(offs(&v), [(130, 0), (140, 1), (110, 1)]);
    }

    #[test]
    fn further_sweeps_take_the_survivors_oldest_first() {
        let mut v = entries(&[3, 3, 3, 3]);
        // Everyone was read three times: three sweeps free nothing (each
        // lowers every count); the fourth takes the two oldest.
        assert_eq!(select_for_eviction(&mut v, 20), 2);
        assert_eq!(offs(&v), [(120, 0), (130, 0)]);
        // Counts differ: the first to reach 0 on the way round go first.
        let mut v = entries(&[2, 1, 2, 3]);
        assert_eq!(select_for_eviction(&mut v, 20), 2);
        assert_eq!(offs(&v), [(120, 0), (130, 1)]); // 110, then 100, went
                                                    // Asking for more than there is evicts everything.
        let mut v = entries(&[0, 1, 2]);
        assert_eq!(select_for_eviction(&mut v, 1_000), 3);
        assert!(v.is_empty());
    }
}
