//! Group commit: threads of one process that commit with
//! [`Durability::Sync`] at the same time share one sync.
//!
//! In the manner of RocksDB's write groups. The first committer to find no
//! group in progress leads: it takes the writer lock, drains the queue of
//! commits that arrived meanwhile, writes them after its own, syncs once
//! and publishes them all (each commit still all or nothing, with its own
//! sequence number), then hands each follower its result. Followers wait
//! on a condition variable, bounded by the lock timeout. While one group
//! syncs, the next one gathers, so with N committers a sync serves about
//! N / 2 commits, and one committer alone pays exactly what it did before.
//!
//! Followers' operations are copied into the queue (the leader writes them
//! from another thread); the leader's own are not. Publish order holds for
//! every member: no slot points at a record of the group before the sync
//! that makes the group durable has returned.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::engine::{self, Failure, Op, Store};
use crate::options::Durability;
use crate::Error;

/// The queue of one handle (shared by its clones).
#[derive(Default)]
pub(crate) struct Group {
    state: Mutex<Queue>,
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    /// A leader is writing a group.
    leading: bool,
    /// Commits waiting for the next group.
    waiting: Vec<Arc<Ticket>>,
}

/// One follower's commit.
struct Ticket {
    ops: Vec<Owned>,
    /// `None` while queued or in a group; then the group's result.
    done: Mutex<Option<Outcome>>,
    /// Taken into a group (it can no longer be withdrawn).
    taken: std::sync::atomic::AtomicBool,
}

/// A group's result as a follower receives it (an `Error` is not `Clone`:
/// a follower gets the leader's error as text, in the same variant where
/// it matters to the caller's retry loop).
#[derive(Clone)]
enum Outcome {
    Ok,
    Moved,
    Full { wanted: u64, size: u64 },
    TableFull,
    Failed(String),
}

/// An operation copied out of the caller's borrow.
enum Owned {
    Put(Vec<u8>, Vec<u8>),
    PutTtl(Vec<u8>, Vec<u8>, u64),
    Del(Vec<u8>),
}

impl Owned {
    fn of(op: &Op<'_>) -> Owned {
        match *op {
            Op::Put(k, v) => Owned::Put(k.to_vec(), v.to_vec()),
            Op::PutTtl(k, v, at) => Owned::PutTtl(k.to_vec(), v.to_vec(), at),
            Op::Del(k) => Owned::Del(k.to_vec()),
        }
    }

    fn op(&self) -> Op<'_> {
        match self {
            Owned::Put(k, v) => Op::Put(k, v),
            Owned::PutTtl(k, v, at) => Op::PutTtl(k, v, *at),
            Owned::Del(k) => Op::Del(k),
        }
    }
}

impl Outcome {
    fn of(r: &engine::Result<()>) -> Outcome {
        match r {
            Ok(()) => Outcome::Ok,
            Err(Failure::Moved) => Outcome::Moved,
            Err(Failure::Full { wanted, size }) => Outcome::Full {
                wanted: *wanted,
                size: *size,
            },
            Err(Failure::TableFull) => Outcome::TableFull,
            Err(Failure::Error(e)) => Outcome::Failed(e.to_string()),
        }
    }

    fn into_result(self, store: &Store) -> engine::Result<()> {
        match self {
            Outcome::Ok => Ok(()),
            Outcome::Moved => Err(Failure::Moved),
            Outcome::Full { wanted, size } => Err(Failure::Full { wanted, size }),
            Outcome::TableFull => Err(Failure::TableFull),
            Outcome::Failed(why) => Err(Error::Poisoned {
                path: store.path.clone(),
                cause: format!("the group commit this write joined failed: {why}"),
            }
            .into()),
        }
    }
}

impl Group {
    /// Commit `ops` durably on `store`, sharing the sync with the other
    /// threads committing durably through this handle right now.
    pub(crate) fn commit(&self, store: &Store, ops: &[Op<'_>]) -> engine::Result<()> {
        for op in ops {
            op.check()?;
        }
        if ops.is_empty() {
            return Ok(());
        }
        let mut q = self.state.lock();
        if !q.leading {
            q.leading = true;
            drop(q);
            return self.lead(store, Some(ops));
        }
        let ticket = Arc::new(Ticket {
            ops: ops.iter().map(Owned::of).collect(),
            done: Mutex::new(None),
            taken: Default::default(),
        });
        q.waiting.push(ticket.clone());
        let deadline = Instant::now() + store.lock_timeout;
        loop {
            if let Some(out) = ticket.done.lock().take() {
                return out.into_result(store);
            }
            if !q.leading {
                // The last group is done and ours was not in it: lead the
                // next one (our ticket is in the queue).
                q.leading = true;
                drop(q);
                self.lead(store, None)?;
                q = self.state.lock();
                continue;
            }
            let ticket_taken = ticket.taken.load(std::sync::atomic::Ordering::Acquire);
            if Instant::now() >= deadline && !ticket_taken {
                q.waiting.retain(|t| !Arc::ptr_eq(t, &ticket));
                return Err(Error::Timeout {
                    path: store.path.clone(),
                    what: "a group commit (another thread of this process leads it)",
                    waited: store.lock_timeout,
                    holder: None,
                }
                .into());
            }
            // A group already holding our commit is bounded by the writer
            // lock's timeout and its sync; wait for it in steps.
            let _ = self.changed.wait_for(&mut q, STEP);
        }
    }

    /// Lead one group: `own` (the leader's commit, if any) and every
    /// queued one, in one writer-lock hold and one sync.
    fn lead(&self, store: &Store, own: Option<&[Op<'_>]>) -> engine::Result<()> {
        let tickets: Vec<Arc<Ticket>> = std::mem::take(&mut self.state.lock().waiting);
        for t in &tickets {
            t.taken.store(true, std::sync::atomic::Ordering::Release);
        }
        let owned: Vec<Vec<Op<'_>>> = tickets
            .iter()
            .map(|t| t.ops.iter().map(Owned::op).collect())
            .collect();
        let mut commits: Vec<&[Op<'_>]> = Vec::with_capacity(owned.len() + 1);
        commits.extend(own);
        commits.extend(owned.iter().map(|c| &c[..]));
        let res = store.commit_group(&commits, Durability::Sync);
        let out = Outcome::of(&res);
        for t in &tickets {
            *t.done.lock() = Some(out.clone());
        }
        let mut q = self.state.lock();
        q.leading = false;
        drop(q);
        self.changed.notify_all();
        res
    }
}

/// How often a waiting follower looks again (it is woken on every change;
/// this only bounds a missed wake-up).
const STEP: std::time::Duration = std::time::Duration::from_millis(50);
