//! Recovery: bring the index in line with the log, when a store is opened
//! and when a writer takes over from one that died mid-change.
//!
//! Three cases, told apart by the chosen meta and the boot id:
//!
//! 1. **Clean close** (meta CLEAN flag): the index was made durable at close.
//!    Its descriptor and counters come from the meta; a sample of slots is
//!    verified against the log. O(1).
//! 2. **Process crash** (not clean, same boot): the page cache survived, so
//!    the index and control block are what the dead writer left. If the
//!    control block is consistent (even seqlock version, plausible fields),
//!    only the commits past its tail are replayed (roll-forward). O(tail).
//! 3. **OS crash or power loss** (not clean, other boot), or anything that
//!    fails a check above: the index is rebuilt from the log. Every record
//!    below the meta's durable tail must verify (else `Corrupted`); past it
//!    the log ends at the first record or commit that does not, unless a
//!    process crash left a control block naming a published tail past
//!    that point: then the log is damaged, not torn, and the open fails
//!    with `Corrupted` rather than drop published commits. O(log).
//!
//! Every unclean open bumps the generation (written durably before the first
//! new record), so bytes a crashed writer left past the recovered tail can
//! never be mistaken for new records later.

use crate::index::{self, Desc, Table, MIN_LOG2CAP};
use crate::log::record::{self, seq_gen, seq_of};
use crate::log::{Item, RecordRef, Scanner, Stop};
use crate::storage::control::{State, CONTROL_MAGIC, MOVED_MAGIC, MOVING_MAGIC};
use crate::storage::mapping::MapMode;
use crate::storage::meta::{self, Meta, MetaRead, META_LEN};
use crate::storage::{ARENA_START, CONTROL_OFFSET, META_B_OFFSET};
use crate::Error;

use super::{Failure, Growth, Result, Store, Writer};

/// How [`Db::open`](crate::Db::open) found the store.
///
/// # Examples
///
/// Read it from [`Stats::opened`](crate::Stats::opened):
///
/// ```
/// use mapkv::{Db, OpenKind};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("ok.mapkv");
/// let db = Db::open(&path)?;
/// assert_eq!(db.stats().opened, OpenKind::Clean); // just created
/// db.insert(b"k", b"v")?;
/// db.close()?;
/// let db = Db::open(&path)?;
/// match db.stats().opened {
///     OpenKind::Clean => {} // closed cleanly: nothing to recover
///     other => panic!("unexpected recovery: {other:?}"),
/// }
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenKind {
    /// Closed cleanly (or just created): nothing to recover.
    Clean,
    /// A process died with the store open; its last commits were replayed
    /// from the log into the surviving index.
    Replayed,
    /// The index was rebuilt from the log (after an OS crash or power loss,
    /// or because a check failed).
    Rebuilt,
    /// A read-write handle (in this or another process) had the store
    /// open: this one joined its live state, with nothing to recover. (A
    /// writer that finds only read-only handles starts the session itself,
    /// and reports how it found the store: `Clean`, `Replayed`, `Rebuilt`.)
    Joined,
}

/// The generation after `g`: 16 bits, wrapping. `g` may come from the
/// control block, which may hold any value.
fn next_generation(g: u64) -> u64 {
    (g & 0xffff).wrapping_add(1) & 0xffff
}

/// The recovery rule (in the manner of fjall's
/// `RecoveryMode::TolerateCorruptTail`): every item below the durable tail
/// must verify, since it was synced before a meta named it, so damage
/// there is corruption and the open fails; past it, the log ends at the
/// first item that does not verify (a torn write of the crash: nothing
/// there was acknowledged as durable, and a commit counts only whole).
pub(crate) struct TolerateTornTail {
    /// The meta's tail: everything below it is durable.
    pub(crate) durable_tail: u64,
}

impl TolerateTornTail {
    /// The valid log ends at `end`, where the scan stopped for `stop`:
    /// fine past the durable tail, corruption below it.
    pub(crate) fn check(&self, store: &Store, end: u64, stop: &Stop) -> Result<(), Error> {
        if end < self.durable_tail {
            return Err(store.corrupt(
                stop.bad,
                format!(
                    "{}, below the durable tail at {}",
                    stop.why, self.durable_tail
                ),
            ));
        }
        Ok(())
    }
}

/// The state a meta describes (meaningful when CLEAN).
pub(super) fn state_of(meta: &Meta) -> State {
    State {
        tail: meta.tail,
        seq_gen: meta.seq_gen,
        index_desc: meta.index_desc,
        index_used: meta.index_used,
        live_keys: meta.live_keys,
        live_bytes: meta.live_bytes,
        generation: meta.generation as u64 & 0xffff,
    }
}

/// Bring the index in line with the log; fills `wr.st` and the control block.
/// `reuse_tables`: a rebuild may write into an existing index table (no
/// other handle can be reading it); otherwise it writes a new one.
pub(crate) fn recover(
    store: &Store,
    wr: &mut Writer,
    meta: &Meta,
    boot: [u8; 16],
    reuse_tables: bool,
) -> Result<OpenKind> {
    let rw = store.arena.mode() == MapMode::Shared;
    let clean = state_of(meta);
    if clean_state_ok(store, meta) {
        wr.st = clean;
        publish(store, wr);
        store
            .control()?
            .set_may_hold_ttl(meta.flags & meta::FLAG_TTL != 0);
        return Ok(OpenKind::Clean);
    }
    // Every check below reads only; nothing is written to the file until
    // the log has been verified, so a store that turns out to be corrupted
    // is left exactly as it was.
    let next_gen = (meta.generation as u64 + 1) & 0xffff;
    let same_boot = boot != [0; 16] && meta.boot_id == boot;
    if !meta.is_clean() && same_boot {
        if let Some(st) = control_state(store, meta) {
            if let Ok(plan) = plan_replay(store, &st) {
                wr.st = st;
                mark_changing(store);
                replay(store, wr, plan)?;
                wr.st.generation = next_gen;
                publish(store, wr);
                return Ok(OpenKind::Replayed);
            }
        }
    }
    let scanned = scan_log(store, meta)?;
    if !meta.is_clean() && same_boot {
        // A process crash: the page cache survived, so a consistent
        // control block of ours names a tail that a writer published.
        if let Ok(c) = store.control() {
            let (st, consistent) = c.snapshot(1);
            if c.magic() == CONTROL_MAGIC && consistent {
                keep_published(store, &scanned, st.tail)?;
            }
        }
    }
    if meta.is_clean() && rw {
        // The clean meta failed its checks. Retract it durably before the
        // index is touched, so a crash during the rebuild cannot leave a
        // CLEAN meta over a half-rebuilt index.
        wr.st = clean;
        store.write_meta(wr, 0, true)?;
    }
    mark_changing(store);
    install(store, wr, scanned, reuse_tables)?;
    wr.st.generation = next_gen;
    publish(store, wr);
    Ok(OpenKind::Rebuilt)
}

/// Repair a live store, with the writer lock held, after the previous
/// holder died (or failed) in the middle of a change: other processes may
/// be reading. Rolls forward the complete commits it left past the tail, or,
/// if it died while changing the index (odd seqlock) or the control block
/// fails its checks, rebuilds the index from the log into a new table and
/// switches readers to it. Then bumps the generation, durably, so that bytes
/// the dead writer left past the new tail can never join a later commit.
pub(crate) fn repair_live(store: &Store, wr: &mut Writer) -> Result<()> {
    sane_durable(store, wr, u64::MAX)?;
    let c = store.control()?;
    let (st, consistent) = c.snapshot(1);
    let replayed = consistent
        && plausible(store, &st)
        && match plan_replay(store, &st) {
            Ok(plan) => {
                wr.st = st;
                mark_changing(store);
                replay(store, wr, plan)?;
                true
            }
            Err(_) => false,
        };
    if !replayed {
        let meta = durable_meta(store)?;
        let scanned = scan_log(store, &meta)?;
        if consistent {
            keep_published(store, &scanned, st.tail)?;
        }
        // Keep the old counters' generation if the control block has a
        // newer one than the meta.
        let generation = if consistent {
            st.generation
        } else {
            scanned.st.generation
        };
        mark_changing(store);
        install(store, wr, scanned, false)?;
        wr.st.generation = wr.st.generation.max(generation);
    }
    // Generations are 16 bits; the control block's word may hold anything.
    wr.st.generation = next_generation(wr.st.generation);
    sane_durable(store, wr, wr.st.tail)?;
    publish(store, wr);
    store.write_meta(wr, 0, true)?;
    Ok(())
}

/// Refuse a rebuild that would drop published commits.
///
/// `published` is a tail that a writer of this boot published (a
/// consistent control block, read in the same boot as its writer): every
/// commit below it was readable, and some were acknowledged. A writer that
/// died mid-commit left its unfinished bytes past that tail, not below it,
/// and the page cache is shared, so nothing below it is torn. A log that
/// ends before it is therefore damage, not a torn tail, and rebuilding the
/// index from the part before the damage would drop every commit after it.
/// So: `Corrupted` naming where the log ends, and nothing changed.
fn keep_published(store: &Store, scanned: &Scanned, published: u64) -> Result<()> {
    if scanned.st.tail < published && published <= store.arena.len() {
        return Err(store
            .corrupt(
                scanned.stop.bad,
                format!(
                    "{}: the log ends there, {} bytes before the tail writers published ({}); \
                     a rebuild of the index would drop the commits after it, so none was made \
                     (`mapkv dump --salvage` copies out what the index still reaches)",
                    scanned.stop.why,
                    published - scanned.st.tail,
                    published
                ),
            )
            .into());
    }
    Ok(())
}

/// The writer's durable bookkeeping comes from the control block, which
/// may hold anything: if it names a log tail outside `ARENA_START..=upto`
/// or the file, a meta copy that does not exist or an impossible sequence
/// number, take it from the newest valid meta copy in the mapping instead
/// (what the file itself says is durable), so that the next meta written
/// never names more log than there is.
fn sane_durable(store: &Store, wr: &mut Writer, upto: u64) -> Result<()> {
    let d = &wr.dur;
    let len = store.arena.len();
    let ok = d.tail % 8 == 0
        && d.tail >= ARENA_START
        && d.tail <= len.min(upto)
        && d.len <= crate::storage::MAX_FILE_LEN
        && (d.synced_copy == 0 || d.synced_copy == META_B_OFFSET)
        && d.meta_seq <= u64::MAX / 4;
    if ok {
        return Ok(());
    }
    let (m, copy) = durable_meta_and_copy(store)?;
    wr.dur.tail = m.tail.min(upto);
    wr.dur.seq_gen = m.seq_gen;
    wr.dur.len = m.file_len.min(len);
    wr.dur.meta_seq = m.meta_seq;
    wr.dur.synced_copy = copy;
    Ok(())
}

/// The newest valid meta, read from the mapping.
pub(crate) fn durable_meta(store: &Store) -> Result<Meta> {
    durable_meta_and_copy(store).map(|(m, _)| m)
}

/// The newest valid meta, read from the mapping, and the offset of the
/// copy it is in.
pub(crate) fn durable_meta_and_copy(store: &Store) -> Result<(Meta, u64)> {
    let read = |off: u64| -> MetaRead {
        let mut b = [0u8; META_LEN];
        match store.arena.read(off, &mut b) {
            Ok(()) => Meta::decode(&b),
            Err(_) => MetaRead::Foreign,
        }
    };
    let a = read(0);
    let m = meta::choose(a, read(META_B_OFFSET)).map_err(|r| {
        store.corrupt(
            0,
            format!("no valid meta copy while repairing the store: {r}"),
        )
    })?;
    Ok((
        m,
        if a == MetaRead::Valid(m) {
            0
        } else {
            META_B_OFFSET
        },
    ))
}

/// Whether the newest meta in the mapping says "closed cleanly".
pub(crate) fn live_meta_is_clean(store: &Store) -> bool {
    durable_meta(store).is_ok_and(|m| m.is_clean())
}

/// Check a live store that this handle joins (another process has it
/// open): the control block must be ours and name an index table inside
/// the file.
pub(crate) fn join(store: &Store) -> Result<()> {
    let _ = store.arena.refresh();
    let c = store.control()?;
    match c.magic() {
        CONTROL_MAGIC => {}
        // A compaction has moved the store to a new file under the same
        // name since we opened it: the caller opens the name again.
        MOVED_MAGIC => return Err(Failure::Moved),
        // One is moving it right now: this file is still valid to read, and
        // the first operation follows once the rename is done.
        MOVING_MAGIC => {}
        _ => return Err(store
            .corrupt(
                CONTROL_OFFSET,
                "the store is open in another process, but its control block is not initialised",
            )
            .into()),
    }
    store.table()?;
    Ok(())
}

/// Make the control block odd: a crash from here until `publish` makes the
/// next open rebuild instead of trusting a half-changed index.
pub(crate) fn mark_changing(store: &Store) {
    if let Ok(c) = store.control() {
        c.begin();
    }
}

pub(crate) fn publish(store: &Store, wr: &Writer) {
    if let Some(d) = Desc::decode(wr.st.index_desc) {
        store.arena.advise_hugepage(d.start, d.bytes());
    }
    if let Ok(c) = store.control() {
        c.reset(&wr.st, store.arena.len());
    }
}

/// Basic bounds of a state read from the file.
pub(crate) fn plausible(store: &Store, st: &State) -> bool {
    let len = store.arena.len();
    let Some(d) = Desc::decode(st.index_desc) else {
        return false;
    };
    st.tail % 8 == 0
        && st.tail >= ARENA_START
        && st.tail <= len
        && d.start >= ARENA_START + record::HEADER_LEN
        && d.start.checked_add(d.bytes()).is_some_and(|e| e <= st.tail)
        && st.index_used < d.capacity()
        && st.live_keys <= st.index_used
        && st.live_bytes <= st.tail
}

/// Is the meta clean, and does the state it names pass the checks that let
/// an opener use it as it is (plausible counters, a sample of slots that
/// lead to their records)? If not, recovery rebuilds the index from the
/// log. Reads only.
pub(crate) fn clean_state_ok(store: &Store, meta: &Meta) -> bool {
    let clean = state_of(meta);
    meta.is_clean() && plausible(store, &clean) && sample_ok(store, &clean)
}

/// Check up to 64 live slots: each must point at a valid put record whose
/// key leads back to that slot (odht-style sampling on open).
fn sample_ok(store: &Store, st: &State) -> bool {
    let Ok((t, _)) = store.table_at(st.index_desc) else {
        return false;
    };
    let mut checked = 0;
    for word in t.live_words().take(64) {
        let off = index::word_offset(word);
        let ok = (|| -> Result<bool> {
            if off + record::HEADER_LEN > st.tail {
                return Ok(false);
            }
            let rec = store.records();
            let h = rec.header(off)?;
            if !h.is_put() || !h.check(store.salt, off) {
                return Ok(false);
            }
            let key = rec.key(off, &h)?;
            let found = t.find(index::hash(store.hash_seed, &key), |o| -> Result<bool> {
                Ok(rec.key_eq(o, &key)?)
            })?;
            Ok(found.map(|(_, found)| found) == Some(word))
        })();
        if !matches!(ok, Ok(true)) {
            return false;
        }
        checked += 1;
    }
    checked as u64 == st.live_keys.min(64)
}

/// The control block's state, if it can be trusted after a process crash.
fn control_state(store: &Store, meta: &Meta) -> Option<State> {
    let c = store.control().ok()?;
    if c.magic() != CONTROL_MAGIC {
        return None;
    }
    let (st, consistent) = c.snapshot(1);
    (consistent
        && plausible(store, &st)
        && st.tail >= meta.tail
        && seq_of(st.seq_gen) >= seq_of(meta.seq_gen)
        && sample_ok(store, &st))
    .then_some(st)
}

/// What a replay will apply: the end of the valid log past the control
/// block's tail and the number of puts in it.
struct ReplayPlan {
    end: u64,
    commits: u64,
    puts: u64,
}

/// Read-only first half of a replay: find the complete commits past the
/// control block's tail, and look every one of their keys up in the index
/// (the same probes the replay will make), so that any damage shows up
/// before the index is changed; the caller then rebuilds instead.
fn plan_replay(store: &Store, st: &State) -> Result<ReplayPlan> {
    let (t, _) = store.table_at(st.index_desc)?;
    let rec = store.records();
    let mut sc = Scanner::new(
        &store.arena,
        store.salt,
        st.tail,
        store.arena.len(),
        Some(st.seq_gen),
    );
    let mut puts = 0u64;
    let mut commits = 0u64;
    while let Ok(item) = sc.next_item() {
        if let Item::Commit { records, .. } = item {
            commits += 1;
            for r in &records {
                let key = rec.key(r.off, &r.header)?;
                t.find(index::hash(store.hash_seed, &key), |o| -> Result<bool> {
                    Ok(rec.key_eq(o, &key)?)
                })?;
                puts += r.header.is_put() as u64;
            }
        }
    }
    Ok(ReplayPlan {
        end: sc.pos(),
        commits,
        puts,
    })
}

/// Roll forward: apply the complete commits past the control block's tail.
fn replay(store: &Store, wr: &mut Writer, plan: ReplayPlan) -> Result<()> {
    let start = wr.st.tail;
    let last = wr.st.seq_gen;
    // A larger index, if needed, goes after the records, not on them; a
    // half-written index chunk past the tail (a resize that never
    // published) is dead space.
    wr.st.tail = plan.end;
    if plan.commits == 0 {
        return Ok(());
    }
    store.ensure_index_room(wr, plan.puts, 0, Growth::Recovery)?;
    let (t, _) = store.table_at(wr.st.index_desc)?;
    let mut st = wr.st;
    let mut sc = Scanner::new(&store.arena, store.salt, start, plan.end, Some(last));
    while let Ok(item) = sc.next_item() {
        if let Item::Commit {
            records, seq_gen, ..
        } = item
        {
            if apply_records(store, &t, &mut st, &records)? {
                store.control()?.set_may_hold_ttl(true);
            }
            st.seq_gen = seq_gen;
        }
    }
    wr.st = st;
    Ok(())
}

/// Apply a commit's records to `t`. Returns whether one of them is a put
/// with an expiry.
fn apply_records(
    store: &Store,
    t: &Table<'_>,
    st: &mut State,
    records: &[RecordRef],
) -> Result<bool> {
    let mut ttl = false;
    for r in records {
        let key = store.records().key(r.off, &r.header)?;
        store.apply(t, st, r.off, &r.header, &key)?;
        ttl |= r.header.has_ttl();
    }
    Ok(ttl)
}

fn heap_table(log2: u32) -> Vec<std::sync::atomic::AtomicU64> {
    (0..1usize << log2)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect()
}

/// The result of scanning the whole log: the live index in heap memory.
pub(crate) struct Scanned {
    pub(crate) heap: Vec<std::sync::atomic::AtomicU64>,
    log2: u32,
    pub(crate) st: State,
    chunks: Vec<Desc>,
    /// Where and why the valid log ends.
    pub(crate) stop: crate::log::Stop,
    /// The log holds a put with an expiry (which may still be live).
    ttl: bool,
}

/// Read-only first half of a rebuild: verify the whole log and build the
/// index in heap memory.
pub(crate) fn scan_log(store: &Store, meta: &Meta) -> Result<Scanned> {
    let mut log2 = MIN_LOG2CAP;
    let mut heap = heap_table(log2);
    let mut st = State {
        generation: meta.generation as u64 & 0xffff,
        ..State::default()
    };
    let mut chunks: Vec<Desc> = Vec::new();
    let mut ttl = false;
    let mut sc = Scanner::new(
        &store.arena,
        store.salt,
        ARENA_START,
        store.arena.len(),
        None,
    );
    let stop = loop {
        match sc.next_item() {
            Ok(Item::Commit { records, .. }) => {
                let puts = records.iter().filter(|r| r.header.is_put()).count() as u64;
                if !index::fits(1 << log2, st.index_used, puts) {
                    let nl =
                        index::log2cap_for(st.live_keys.saturating_add(puts).saturating_mul(3) / 2)
                            .max(log2);
                    let bigger = heap_table(nl);
                    let n = Table::new(&heap, log2)
                        .copy_into(&Table::new(&bigger, nl), |word| store.rehash(word))?;
                    heap = bigger;
                    log2 = nl;
                    st.index_used = n;
                }
                ttl |= apply_records(store, &Table::new(&heap, log2), &mut st, &records)?;
            }
            Ok(Item::Index { desc, .. }) => chunks.push(desc),
            Err(stop) => break stop,
        }
    };
    let tail = sc.pos();
    TolerateTornTail {
        durable_tail: meta.tail,
    }
    .check(store, tail, &stop)?;
    st.tail = tail;
    // A log without commits goes on from the meta's last commit: a
    // compaction's new file that copied nothing continues its store's
    // sequence (counting from 0 again would send `commit_seq` back, and
    // make a later crash image fail the replay checks).
    st.seq_gen = sc
        .last_seq_gen()
        .unwrap_or(seq_gen(seq_of(meta.seq_gen), st.generation as u16));
    Ok(Scanned {
        heap,
        log2,
        st,
        chunks,
        stop,
        ttl,
    })
}

/// Second half of a rebuild: put the heap index into an index chunk of the
/// file (the largest existing one that holds it comfortably, or a new one
/// at the tail) and make it current.
///
/// `reuse` allows an existing chunk; a live repair passes `false`, because
/// readers in other processes may be reading any old table.
pub(crate) fn install(store: &Store, wr: &mut Writer, scanned: Scanned, reuse: bool) -> Result<()> {
    let Scanned {
        heap,
        log2,
        mut st,
        chunks,
        ttl,
        ..
    } = scanned;
    // Whether entries with an expiry may be live: as the log says.
    store.control()?.set_may_hold_ttl(ttl);
    let target = chunks
        .iter()
        .copied()
        .filter(|_| reuse)
        .filter(|d| index::fits(d.capacity(), st.live_keys.saturating_mul(3) / 2, 0))
        .max_by_key(|d| d.log2cap);
    let target = match target {
        Some(d) => d,
        None => {
            let nl = index::log2cap_for(st.live_keys.saturating_mul(3) / 2);
            let off = st.tail;
            let start = record::index_table_start(off)
                .ok_or_else(|| store.corrupt(off, "tail overflows"))?;
            let d = Desc { start, log2cap: nl };
            store.ensure_space(start + d.bytes(), Growth::Recovery)?;
            store
                .arena
                .write(off, &record::encode_index(store.salt, off, nl).to_bytes())
                .map_err(|_| store.corrupt(off, "index chunk outside the file"))?;
            st.tail = start + d.bytes();
            d
        }
    };
    store.arena.advise_hugepage(target.start, target.bytes());
    store
        .arena
        .zero(target.start, target.bytes())
        .map_err(|_| store.corrupt(target.start, "index table outside the file"))?;
    let (t, _) = store.table_at(target.encode())?;
    let n = Table::new(&heap, log2).copy_into(&t, |word| store.rehash(word))?;
    st.index_desc = target.encode();
    st.index_used = n;
    wr.st = st;
    Ok(())
}

/// What [`rebuild_index`] found and did.
pub(crate) struct Rebuild {
    pub(crate) keys: u64,
    pub(crate) live_bytes: u64,
    pub(crate) tail: u64,
    /// Slots of the old table that disagreed with the log, and live keys
    /// of the log it had lost.
    pub(crate) index_mismatches: u64,
    /// The valid log ended before the tail the store claimed: where, why,
    /// and the claimed tail.
    pub(crate) log_ends_early: Option<(Stop, u64)>,
}

/// Rebuild the index of a live store from its log, with the writer lock
/// held, into a new table (readers in other processes may be reading any
/// old one).
pub(crate) fn rebuild_index(store: &Store) -> Result<Rebuild> {
    let mut g = store.lock_writer()?;
    let c = store.control()?;
    let _ = store.arena.refresh();
    let meta = durable_meta(store)?;
    let scanned = scan_log(store, &meta)?;
    // What the old table says, compared with the log.
    let mut latest: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for word in &scanned.heap {
        let word = word.load(std::sync::atomic::Ordering::Relaxed);
        if index::is_live(word) {
            latest.insert(index::word_offset(word), word);
        }
    }
    // Each record of the log may be matched by one slot only: a second
    // slot for it is a mismatch too, and the records left unmatched are
    // live keys the old index had lost.
    let mut mismatches = 0u64;
    if let Ok((t, _)) = store.table_at(g.st.index_desc) {
        for word in t.live_words() {
            let off = index::word_offset(word);
            match latest.get(&off) {
                Some(&l) if index::same_tag(word, l) => {
                    latest.remove(&off);
                }
                _ => mismatches += 1,
            }
        }
    }
    mismatches += latest.len() as u64;
    let stop = scanned.stop;
    let log_ends_early =
        (stop.at < g.st.tail && stop.at < store.arena.len()).then_some((stop, g.st.tail));
    let (old, consistent) = c.snapshot(1);
    let generation = if consistent {
        old.generation.max(scanned.st.generation)
    } else {
        scanned.st.generation
    };
    mark_changing(store);
    install(store, &mut g, scanned, false)?;
    g.st.generation = next_generation(g.st.generation.max(generation));
    if g.dur.tail > g.st.tail {
        g.dur.tail = meta.tail;
        g.dur.seq_gen = meta.seq_gen;
    }
    publish(store, &g);
    store.write_meta(&mut g, 0, true)?;
    Ok(Rebuild {
        keys: g.st.live_keys,
        live_bytes: g.st.live_bytes,
        tail: g.st.tail,
        index_mismatches: mismatches,
        log_ends_early,
    })
}
