//! Single-flight claims: which caller computes a missing key while the
//! others wait for its result (`Db::get_or_insert_with`).
//!
//! A claim is a write lock on one byte of the file (chosen by the key's
//! hash) through an open file description of this process's own, plus an
//! entry in an in-process set (threads of one process share the
//! description, and OFD locks do not keep them apart). The kernel drops
//! the lock when the process dies; the guard drops both when the computing
//! caller returns or panics.

use std::collections::HashSet;
use std::fs::File;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::index;
use crate::storage::file::{self, CLAIM_BUCKETS};
use crate::Error;

use super::Store;

/// The claims this process holds on one store, and the description it
/// holds them through.
#[derive(Default)]
pub(crate) struct Claims {
    held: HashSet<u64>,
    /// A description of our own (the arena's belongs to the process that
    /// opened it, which a forked child shares), with the pid it is for.
    own: Option<(u32, File)>,
}

/// A claim, held: released when dropped.
pub(crate) struct Claim {
    store: Arc<Store>,
    bucket: u64,
}

impl Store {
    /// Claim the computation of `key`: `Some` if this caller is to compute
    /// it, `None` if another caller (thread or process) holds the claim.
    pub(crate) fn try_claim(self: &Arc<Store>, key: &[u8]) -> Result<Option<Claim>, Error> {
        self.check_writable()?;
        let bucket = index::hash(self.hash_seed, key) % CLAIM_BUCKETS;
        let ioe = |source| Error::Io {
            op: "claim a key to compute",
            path: self.path.clone(),
            source,
        };
        let mut claims = self.claims.lock();
        if claims.held.contains(&bucket) {
            return Ok(None); // another thread of this process
        }
        let pid = std::process::id();
        let file = if self.arena.opener_pid() == pid {
            self.arena.file()
        } else {
            if claims.own.as_ref().is_none_or(|(p, _)| *p != pid) {
                let f = file::reopen(self.arena.file(), self.arena.path()).map_err(ioe)?;
                claims.own = Some((pid, f));
            }
            &claims.own.as_ref().expect("opened just above").1
        };
        if !file::claim(file, bucket, true).map_err(ioe)? {
            return Ok(None); // another process
        }
        claims.held.insert(bucket);
        Ok(Some(Claim {
            store: self.clone(),
            bucket,
        }))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let s = &self.store;
        let mut claims = s.claims.lock();
        let file = match &claims.own {
            Some((pid, f))
                if s.arena.opener_pid() != std::process::id() && *pid == std::process::id() =>
            {
                f
            }
            _ => s.arena.file(),
        };
        // Unlocking a byte we hold cannot fail but for EBADF/EINTR-like
        // errors; the lock then goes with the description.
        let _ = file::claim(file, self.bucket, false);
        claims.held.remove(&self.bucket);
    }
}

/// The claims' state of a new store.
pub(crate) fn new_claims() -> Mutex<Claims> {
    Mutex::new(Claims::default())
}
