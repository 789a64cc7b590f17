//! Growth: how the file grows when the log needs room, within the size
//! limit and, in cache mode, the capacity; and the bounds every counter
//! read from the file is held to.

use crate::index::Desc;
use crate::log::record::HEADER_LEN;
use crate::storage::control::State;
use crate::storage::mapping::MapMode;
use crate::storage::{self, ARENA_START, GRANULE};
use crate::Error;

use super::{Failure, Result, Store};

/// The growth settings of a handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Grow by a sixteenth of the file, but by no more than this.
    pub(crate) step: u64,
    /// The file never grows past this.
    pub(crate) max_size: u64,
}

/// Whose growth it is: a cache's capacity bounds a commit; recovery may
/// overshoot it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Growth {
    /// A commit: in cache mode the capacity is a hard bound (the write
    /// evicts and runs again: `Failure::Full`).
    Bounded,
    /// Recovery or repair: it may overshoot a cache's capacity by the index
    /// table it rebuilds (no more: no doubling); the next eviction gives
    /// the space back.
    Recovery,
}

/// The smallest record: a header and an empty key (an upper bound on how
/// many keys a log of a given length can hold).
pub(crate) const MIN_RECORD_LEN: u64 = HEADER_LEN;

/// `st` with every counter clamped to what a file of `file_len` bytes can
/// hold. The control block may hold anything (another process, a crash, an
/// attacker): a counter read from it drives a choice or an allocation only
/// after passing through here (or `recover::plausible`).
pub(crate) fn bounded(mut st: State, file_len: u64) -> State {
    st.tail = st.tail.min(file_len).min(storage::MAX_FILE_LEN);
    let log = st.tail.saturating_sub(ARENA_START);
    st.live_bytes = st.live_bytes.min(log);
    st.live_keys = st.live_keys.min(log / MIN_RECORD_LEN);
    let slots = Desc::decode(st.index_desc).map_or(0, |d| d.capacity());
    st.index_used = st.index_used.min(slots);
    st.live_keys = st.live_keys.min(slots);
    st
}

impl Store {
    /// Make sure the file is at least `end` bytes long.
    pub(crate) fn ensure_space(&self, end: u64, growth: Growth) -> Result<()> {
        let len = self.arena.len();
        if end <= len {
            return Ok(());
        }
        let max_size = self.limits.max_size;
        let out_of_space = |wanted, reason: String| Error::OutOfSpace {
            path: self.path.clone(),
            wanted,
            reason,
        };
        let c = self.control().ok();
        let mut cap = c.map_or(0, |c| c.capacity());
        if cap != 0 && end > cap && end <= max_size {
            match growth {
                Growth::Recovery => cap = storage::align_up(end, GRANULE).unwrap_or(end),
                Growth::Bounded => {
                    // Cache mode: eviction makes room (see Db::write).
                    let tail = c.map_or(0, |c| c.tail());
                    return Err(Failure::Full {
                        wanted: end,
                        size: end.saturating_sub(tail),
                    });
                }
            }
        }
        let limit = if cap != 0 {
            cap.min(max_size)
        } else {
            max_size
        };
        if end > max_size {
            return Err(out_of_space(end, format!("the size limit is {max_size} bytes")).into());
        }
        let mut new_len = storage::next_file_len(len, end, self.limits.step)
            .ok_or_else(|| out_of_space(end, "length overflows".into()))?;
        if new_len > limit {
            new_len = storage::align_up(end, GRANULE)
                .filter(|&n| n <= limit)
                .unwrap_or(limit);
        }
        if self.arena.mode() == MapMode::Private {
            // Only recovery on a read-only handle gets here.
            return Err(Error::NeedsRecovery {
                path: self.path.clone(),
                reason: "the index must be rebuilt into new space, which a read-only handle cannot add; \
                         open the store read-write once"
                    .into(),
            }
            .into());
        }
        self.arena
            .grow(new_len)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT) => {
                    out_of_space(new_len, e.to_string())
                }
                _ => Error::Io {
                    op: "grow file",
                    path: self.path.clone(),
                    source: e,
                },
            })?;
        if let Ok(c) = self.control() {
            c.set_file_len(new_len);
        }
        Ok(())
    }
}
