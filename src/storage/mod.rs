//! The file and its mapping: layout constants, the meta copies, the control
//! block, page-aligned growth, msync, locks.
//!
//! This module holds all of mapkv's `unsafe` code, in three files, each
//! block with a `// SAFETY:` comment: [`mapping`] (the raw pointers into the
//! mapping), [`lock`] (the futex system calls and the fork hook) and
//! [`file`](mod@file) (`fcntl` locks and other system calls on the store's
//! descriptor). Everything above it sees bounds-checked byte copies and
//! atomic words at checked, aligned offsets.
//!
//! # Byte map of the file
//!
//! ```text
//! offset      size   what
//! 0           4096   meta A   (see meta.rs; 128 bytes used, rest zero)
//! 4096        4096   meta B
//! 8192        4096   control block (control.rs: live, shared state;
//!                    atomic words, the change futex and the writer lock)
//! 12288       ...    arena: index chunks and log records, bump-allocated
//!                    from the tail towards the end of the file
//! ```
//!
//! Each offset is derived from the one before (as in redb's
//! `page_store/header.rs`), and the control block's extent from its struct;
//! const asserts pin the results to the numbers above, which are the
//! format.
//!
//! The file length is always a multiple of [`GRANULE`] (64 KiB), which is a
//! multiple of every common OS page size (4, 16 and 64 KiB).

use std::mem::{offset_of, size_of};

use control::ControlBlock;

#[cfg(test)]
pub(crate) mod byte_map;
pub(crate) mod control;
pub(crate) mod file;
pub(crate) mod hooks;
pub(crate) mod lock;
pub(crate) mod mapping;
pub(crate) mod meta;

/// The unit of the on-disk layout. Independent of the OS page size.
pub(crate) const FORMAT_PAGE: u64 = 4096;
/// File offset of meta copy A.
pub(crate) const META_A_OFFSET: u64 = 0;
/// File offset of meta copy B: the page after copy A.
pub(crate) const META_B_OFFSET: u64 = META_A_OFFSET + FORMAT_PAGE;
/// File offset of the control block: the page after meta copy B.
pub(crate) const CONTROL_OFFSET: u64 = META_B_OFFSET + FORMAT_PAGE;
/// File offset of the writer lock word (inside the control page).
pub(crate) const WRITER_LOCK_OFFSET: u64 =
    CONTROL_OFFSET + offset_of!(ControlBlock, writer_lock) as u64;
/// First byte of the arena (index chunks and log records): right after the
/// control block.
pub(crate) const ARENA_START: u64 = CONTROL_OFFSET + size_of::<ControlBlock>() as u64;

// The derived offsets are the format: they never change.
const _: () = {
    assert!(META_B_OFFSET == 4096);
    assert!(CONTROL_OFFSET == 8192);
    assert!(WRITER_LOCK_OFFSET == 8192 + 512);
    assert!(ARENA_START == 12288);
    assert!(meta::META_LEN as u64 <= FORMAT_PAGE);
};
/// File lengths are multiples of this.
pub(crate) const GRANULE: u64 = 64 * 1024;
/// Largest file the slot encoding can address (36 bits of 8-byte units).
pub(crate) const MAX_FILE_LEN: u64 = 1 << 39;

/// The smallest cache capacity (`Options::capacity`): room for the header
/// pages, an index table and some records.
pub(crate) const MIN_CAPACITY: u64 = 4 * GRANULE;

/// A capacity in bytes as the meta stores it: whole granules, 0 for none.
pub(crate) fn capacity_granules(bytes: u64) -> u32 {
    (bytes / GRANULE).min(u32::MAX as u64) as u32
}

/// Round `x` up to a multiple of `to` (a power of two). `None` on overflow.
pub(crate) fn align_up(x: u64, to: u64) -> Option<u64> {
    debug_assert!(to.is_power_of_two());
    Some(x.checked_add(to - 1)? & !(to - 1))
}

/// How much a growth reserves ahead: `1 / GROW_FRACTION` of the file.
/// Doubling would leave an open store with up to twice its data on disk;
/// a sixteenth keeps what is allocated ahead under 6.25% of the file,
/// and still makes the number of growths logarithmic in the file's size
/// (about 37 per tenfold), each one an `fallocate` (no remap: the mapping
/// reserves address space ahead, see `mapping.rs`).
pub(crate) const GROW_FRACTION: u64 = 16;

/// The next file length when `needed` bytes must fit and the file is `cur`
/// bytes long: grow by a sixteenth of the file (at least [`GRANULE`], at
/// most `step`), never less than `needed`, always a multiple of
/// [`GRANULE`].
pub(crate) fn next_file_len(cur: u64, needed: u64, step: u64) -> Option<u64> {
    let grown = cur.checked_add((cur / GROW_FRACTION).min(step).max(GRANULE))?;
    align_up(grown.max(needed), GRANULE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::byte_map;

    #[test]
    fn growth_reserves_a_fraction_then_steps() {
        let step = 1 << 30;
        // Small files grow by the granule.
        assert_eq!(next_file_len(GRANULE, GRANULE, step), Some(2 * GRANULE));
        assert_eq!(
            next_file_len(1 << 20, 1 << 20, step),
            Some((1 << 20) + GRANULE)
        );
        // Then by a sixteenth.
        assert_eq!(
            next_file_len(1 << 30, 1 << 30, step),
            Some((1 << 30) + (1 << 26))
        );
        // Then by the step.
        assert_eq!(next_file_len(64 << 30, 64 << 30, step), Some(65 << 30));
        // What is reserved ahead stays within a sixteenth of the file (and
        // the granule the length is rounded up to).
        let mut len = GRANULE;
        while len < 100 << 30 {
            let next = next_file_len(len, len + 1, step).unwrap();
            assert!(
                next - len <= len / GROW_FRACTION + GRANULE,
                "{len} -> {next}"
            );
            len = next;
        }
        // A single large request is honoured and rounded to the granule.
        assert_eq!(
            next_file_len(1 << 20, (100 << 20) + 1, step),
            Some((100 << 20) + GRANULE)
        );
        // Every result is granule-aligned.
        for cur in [GRANULE, 3 * GRANULE, 1 << 25] {
            for need in [cur, cur + 1, cur * 3 + 17] {
                let n = next_file_len(cur, need, step).unwrap();
                assert_eq!(n % GRANULE, 0);
                assert!(n >= need && n > cur);
            }
        }
        assert_eq!(next_file_len(u64::MAX - 10, u64::MAX, step), None);
    }

    /// The file's byte map, here and in docs/FORMAT.md, says what the
    /// constants say.
    #[test]
    fn file_byte_map_matches_the_constants() {
        let expected = [
            (META_A_OFFSET, Some(FORMAT_PAGE), "meta A"),
            (META_B_OFFSET, Some(FORMAT_PAGE), "meta B"),
            (CONTROL_OFFSET, Some(control::CONTROL_LEN), "control block"),
            (ARENA_START, None, "arena"),
        ];
        let rows = byte_map::doc_comment(include_str!("mod.rs"));
        assert_eq!(rows.len(), expected.len(), "{rows:?}");
        for (row, (off, size, what)) in rows.iter().zip(expected) {
            assert_eq!(row.offset as u64, off, "{row:?}");
            assert_eq!(row.size.map(|s| s as u64), size, "{row:?}");
            assert!(what.starts_with(row.field.trim_end_matches(':')), "{row:?}");
        }
        // docs/FORMAT.md: `offset N   what   SIZE bytes ...` lines.
        let md = include_str!("../../docs/FORMAT.md");
        let rows: Vec<(u64, &str)> = md
            .lines()
            .filter_map(|l| l.strip_prefix("offset "))
            .filter_map(|l| {
                let (n, rest) = l.split_once(' ')?;
                Some((n.parse().ok()?, rest.trim_start()))
            })
            .collect();
        assert_eq!(rows.len(), expected.len(), "{rows:?}");
        for ((off, rest), (want, size, what)) in rows.into_iter().zip(expected) {
            assert_eq!(off, want, "{rest}");
            assert!(rest.starts_with(what), "{rest}");
            if let Some(size) = size {
                assert!(rest.contains(&format!(" {size} bytes")), "{rest}");
            }
        }
    }

    #[test]
    fn align_up_works() {
        assert_eq!(align_up(0, 8), Some(0));
        assert_eq!(align_up(1, 8), Some(8));
        assert_eq!(align_up(8, 8), Some(8));
        assert_eq!(align_up(u64::MAX, 8), None);
    }
}
