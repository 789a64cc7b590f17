//! Opening a store: create, lock, validate the file, then bring the index
//! in line with the log.
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
//!    the log ends at the first record or commit that does not. O(log).
//!
//! Every unclean open bumps the generation (written durably before the first
//! new record), so bytes a crashed writer left past the recovered tail can
//! never be mistaken for new records later.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::db::{Inner, Writer};
use crate::index::{self, Desc, Table, MIN_LOG2CAP};
use crate::log::record::{self, seq_gen, seq_of, KIND_PUT};
use crate::log::{Item, RecordRef, Scanner};
use crate::storage::control::{State, CONTROL_MAGIC};
use crate::storage::mapping::{Arena, MapMode};
use crate::storage::meta::{self, Meta, MetaRead, FLAG_CLEAN, FORMAT_VERSION, MAGIC, META_LEN};
use crate::storage::{align_up, file, ARENA_START, FORMAT_PAGE, GRANULE, META_B_OFFSET};
use crate::{Error, Options, Result};

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

/// The file, mapped and validated, before recovery.
pub(crate) struct Opened {
    pub arena: Arena,
    pub meta: Meta,
    /// Offset of the copy `meta` was read from.
    pub meta_copy: u64,
    pub boot_id: [u8; 16],
    /// This handle holds the exclusive open lock: no other handle, in any
    /// process, has the file open. Otherwise it holds the shared one.
    pub sole: bool,
    /// Not alone, and the control block is a live session of this boot
    /// (its magic is ours and its session boot id is this boot's): the
    /// handle joins it. Not alone and not live (the other handles are
    /// read-only, or whoever holds the open lock is not mapkv), a writer
    /// starts a session under the writer lock.
    pub live: bool,
    /// The file is in format 1 (shared under `flock`): this handle holds
    /// the exclusive `flock`, so no older mapkv has it open, and rewrites
    /// both meta copies in this format before letting go of it.
    pub upgrade: bool,
}

pub(crate) fn open_file(path: &Path, opts: &Options) -> Result<Opened> {
    let ioe = |op: &'static str| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    // Bounded: each pass either opens the file or creates it (and another
    // process may remove it again before we open it).
    let mut attempts = 0;
    let file = loop {
        attempts += 1;
        // A read-only handle opens the file read-only and maps it so: it
        // never writes the file, not even a hit count or a waiter count
        // (the kernel holds it to that). See Db::wait_for_change.
        match file::open_existing(path, !opts.read_only) {
            Ok(f) => break f,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && opts.create && !opts.read_only =>
            {
                if let Some(e) = dangling_symlink(path) {
                    return Err(e);
                }
                if attempts > OPEN_ATTEMPTS {
                    return Err(ioe("open (the file was created, but kept disappearing before it could be opened)")(e));
                }
                let (f, tmp) = file::create_temp(path, opts.mode).map_err(ioe("create file"))?;
                if let Err(e) = init_file(&f, opts) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(ioe("initialise new file")(e));
                }
                drop(f);
                // If another process created the file first, open theirs.
                file::publish(&tmp, path).map_err(ioe("publish new file"))?;
            }
            Err(e) => return Err(dangling_symlink(path).unwrap_or_else(|| ioe("open")(e))),
        }
    };
    let md = file.metadata().map_err(ioe("stat"))?;
    if !md.is_file() {
        return Err(Error::NotMapkv {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    // The open lock (an OFD lock on one byte past the end): every open
    // handle holds it shared; the exclusive one means "alone", and only a
    // handle that is alone may re-initialise the session words or cut the
    // file. A user who can only read the file can share it, never hold it
    // exclusively. See docs/ARCHITECTURE.md, "Locks".
    let sole = file::open_lock(&file, file::OpenLock::Exclusive).map_err(ioe("lock"))?;
    if !sole && !lock_shared_within(&file, opts.lock_timeout).map_err(ioe("lock"))? {
        return Err(Error::Locked {
            path: path.to_path_buf(),
            detail: "another handle holds it exclusively (it is recovering the store, \
                     or it is a read-only handle reading it after a crash)",
        });
    }
    let writable = file::is_writable(&file);
    let mut len = file.metadata().map_err(ioe("stat"))?.len();
    if len == 0 {
        if opts.read_only || !opts.create || !sole {
            return Err(Error::NotMapkv {
                path: path.to_path_buf(),
                reason: "the file is empty".into(),
            });
        }
        adoptable(&md, opts, path)?;
        init_file(&file, opts).map_err(ioe("initialise empty file"))?;
        len = file.metadata().map_err(ioe("stat"))?.len();
    }
    let (meta, meta_copy) = read_meta(&file, len, path)?;
    let upgrade = meta.version != FORMAT_VERSION;
    if upgrade {
        // Format 1: processes of an older mapkv share it under `flock` and
        // know nothing of our locks. Upgrade only when none has it open
        // (they all hold a flock while they do); once both metas say
        // format 2, an older mapkv refuses the file.
        if opts.read_only {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: meta.version,
                supported: FORMAT_VERSION,
            });
        }
        if !sole || !file::legacy_lock(&file).map_err(ioe("lock"))? {
            return Err(Error::Locked {
                path: path.to_path_buf(),
                detail: "the store is in format 1 and another process has it open (an older \
                         mapkv?); it is upgraded to format 2 by the first read-write open \
                         that finds it alone",
            });
        }
    }
    if !opts.read_only {
        // Only now that the file is known to be a store: never allocate
        // into a file that is something else.
        fill_holes(&file, len, path)?;
    }
    let corrupt = |offset, what: String| Error::Corrupted {
        path: path.to_path_buf(),
        offset,
        what,
    };
    // Everything below the durable tail must still be there. (The length the
    // meta names may be more than the file has: a clean close trims the
    // file after writing the shorter length into the newer copy only, so an
    // older copy can name the longer one. Nothing past the tail is needed.)
    if meta.tail > len {
        return Err(corrupt(
            len,
            format!(
                "the file is {len} bytes but its meta says {} bytes of log are durable: it was truncated",
                meta.tail
            ),
        ));
    }
    if meta.meta_seq > u64::MAX / 2 {
        return Err(corrupt(
            0,
            format!("meta sequence number {} is out of range", meta.meta_seq),
        ));
    }
    if meta.tail < ARENA_START || meta.tail % 8 != 0 {
        return Err(corrupt(
            0,
            format!("meta tail {} is outside the file", meta.tail),
        ));
    }
    let reserve = align_up(len.saturating_mul(2).max(opts.map_reserve), GRANULE).unwrap_or(len);
    let shared = if writable {
        MapMode::Shared
    } else {
        MapMode::SharedReadOnly
    };
    // A read-only handle alone on the store shares the live mapping only if
    // the store was closed cleanly and its control block agrees with the
    // meta; otherwise it recovers in private memory and keeps the exclusive
    // lock (writers wait) until it closes.
    let boot_id = file::boot_id();
    // Live: a writer of this boot's session still has the store open (its
    // registration is the kernel's word). Otherwise nobody maintains the
    // control block, however recent it looks.
    let live = !sole
        && session_is_live(&file, &boot_id)
        && file::writer_registered(&file).map_err(ioe("lock"))?;
    let mode = if !opts.read_only {
        MapMode::Shared
    } else if live || clean_and_current(&file, &meta) {
        shared
    } else {
        MapMode::Private
    };
    let arena = Arena::new(file, path, len, reserve, mode).map_err(ioe("map file"))?;
    Ok(Opened {
        arena,
        meta,
        meta_copy,
        boot_id,
        sole,
        live,
        upgrade,
    })
}

/// The real path of the store at `path`, resolved once at open: symlinks
/// followed to the real file (or, if nothing is there yet, the real
/// directory joined with the name). Compaction renames its new file over
/// this path, so a symlink at the caller's path keeps pointing at the store.
pub(crate) fn resolve(path: &Path) -> Result<std::path::PathBuf> {
    let io = |source| Error::Io {
        op: "resolve the path",
        path: path.to_path_buf(),
        source,
    };
    match std::fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(e) = dangling_symlink(path) {
                return Err(e);
            }
            // Nothing there yet: the real directory, and the name.
            let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
                return Ok(path.to_path_buf());
            };
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            match std::fs::canonicalize(dir) {
                Ok(d) => Ok(d.join(name)),
                // A missing directory: the open reports it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

/// How many times `open_file` creates the file because it was missing
/// before it gives up.
const OPEN_ATTEMPTS: u32 = 8;

/// If `path` is a symlink whose target does not exist, the error that
/// says so. (Creating the target through it would put the store somewhere
/// the caller did not name; `link` refuses to replace the symlink, so the
/// open would never find the file it made.)
fn dangling_symlink(path: &Path) -> Option<Error> {
    let md = std::fs::symlink_metadata(path).ok()?;
    if !md.file_type().is_symlink() || std::fs::metadata(path).is_ok() {
        return None;
    }
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into());
    Some(Error::Io {
        op: "open",
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the path is a symlink to {target}, which does not exist (mapkv does not create a store through a dangling symlink)"),
        ),
    })
}

/// Whether an existing empty file may become a store: only if it is the
/// opener's own (effective uid) and no more open to group and others than
/// `Options::mode`. Anything else may have been put there by someone else
/// to read or change what the store will hold.
fn adoptable(md: &std::fs::Metadata, opts: &Options, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = file::euid();
    let refuse = |reason: String| Error::Refused {
        path: path.to_path_buf(),
        reason,
    };
    if md.uid() != me {
        return Err(refuse(format!(
            "the file is empty and owned by uid {}, not by this process's uid {me}: \
             mapkv makes an existing empty file into a store only if it is the opener's own \
             (someone else may have created it to read the store); remove it, or create it as this user",
            md.uid()
        )));
    }
    let mode = md.mode() & 0o7777;
    let extra = mode & 0o077 & !(opts.mode & 0o077);
    if extra != 0 || mode & 0o7000 != 0 {
        return Err(refuse(format!(
            "the file is empty and its mode {mode:04o} is more open than the requested {:04o}: \
             mapkv makes an existing empty file into a store only if group and others get no more \
             than asked for; chmod it or remove it",
            opts.mode
        )));
    }
    Ok(())
}

/// A writable open fills the file's holes (see `file::fill_holes`), or
/// fails: a full disk is an `OutOfSpace` here, never a SIGBUS later.
fn fill_holes(f: &std::fs::File, len: u64, path: &Path) -> Result<()> {
    file::fill_holes(f, len).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => Error::OutOfSpace {
            path: path.to_path_buf(),
            wanted: len,
            reason: format!(
                "the file has holes (a sparse copy or restore?) and the filesystem cannot \
                 allocate them ({e}); writing into a hole on a full disk would end in SIGBUS, \
                 so the store is not opened for writing: free some space, or open it read-only"
            ),
        },
        _ => Error::Io {
            op: "allocate the file's holes",
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Take the open lock shared, waiting up to `timeout` for an exclusive
/// holder (an opener that is recovering the store) to finish. OFD locks
/// have no timed wait, so poll, backing off from 1 to 20 ms.
fn lock_shared_within(file: &std::fs::File, timeout: std::time::Duration) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        if file::open_lock(file, file::OpenLock::Shared)? {
            return Ok(true);
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// For an opener that is not alone: is the control block the live state
/// of a session that a writer started in this boot? Read with `pread`.
/// (Whoever else has the file open may be read-only handles of a store no
/// writer has opened since the last boot, or a process that is not mapkv
/// at all: then the control block is stale, and nobody maintains it.)
fn session_is_live(f: &std::fs::File, boot_id: &[u8; 16]) -> bool {
    use crate::storage::control::SESSION_BOOT;
    use crate::storage::control::{MOVED_MAGIC, MOVING_MAGIC};
    let at = SESSION_BOOT as usize;
    let mut b = [0u8; SESSION_BOOT as usize + 16];
    if f.read_exact_at(&mut b, crate::storage::CONTROL_OFFSET)
        .is_err()
    {
        return false;
    }
    let magic = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
    [CONTROL_MAGIC, MOVING_MAGIC, MOVED_MAGIC].contains(&magic)
        && b[at..at + 16] == boot_id[..]
        && *boot_id != [0; 16]
}

/// For a read-only opener that is alone: was the store closed cleanly, with
/// a control block that says exactly what the meta says? Read with `pread`.
fn clean_and_current(f: &std::fs::File, meta: &Meta) -> bool {
    if !meta.is_clean() {
        return false;
    }
    let mut b = [0u8; 80];
    if f.read_exact_at(&mut b, crate::storage::CONTROL_OFFSET)
        .is_err()
    {
        return false;
    }
    let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let st = state_of(meta);
    w(0) == CONTROL_MAGIC
        && w(1) % 2 == 0
        && w(2) == st.tail
        && w(3) == st.seq_gen
        && w(4) == st.index_desc
        && w(5) == st.index_used
        && w(6) == st.live_keys
        && w(7) == st.live_bytes
        && w(8) == st.generation
}

/// Read both meta copies with `pread` (nothing is mapped or written before
/// the file is known to be ours) and pick the durable one. Returns it and
/// the offset of the copy it came from.
fn read_meta(f: &std::fs::File, len: u64, path: &Path) -> Result<(Meta, u64)> {
    let n = len.min(2 * FORMAT_PAGE) as usize;
    let mut buf = vec![0u8; n];
    f.read_exact_at(&mut buf, 0).map_err(|source| Error::Io {
        op: "read header",
        path: path.to_path_buf(),
        source,
    })?;
    let copy = |at: usize| -> MetaRead {
        match buf.get(at..at + META_LEN) {
            Some(b) => Meta::decode(b.try_into().expect("slice of META_LEN")),
            None => MetaRead::Foreign,
        }
    };
    let (a, b) = (copy(0), copy(META_B_OFFSET as usize));
    let ours = !matches!((a, b), (MetaRead::Foreign, MetaRead::Foreign)) || buf.starts_with(&MAGIC);
    if len < ARENA_START {
        return Err(if ours {
            Error::Corrupted {
                path: path.to_path_buf(),
                offset: len,
                what: format!("the file is truncated: {len} bytes, shorter than the {ARENA_START}-byte header"),
            }
        } else {
            Error::NotMapkv {
                path: path.to_path_buf(),
                reason: format!("{len} bytes is too short for a mapkv store, and there is no mapkv magic number"),
            }
        });
    }
    let chosen = meta::choose(a, b).map_err(|r| match r {
        meta::Refused::Version(found) => Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        },
        meta::Refused::Damaged(why) => Error::Corrupted {
            path: path.to_path_buf(),
            offset: 0,
            what: format!("no valid meta copy: {why}"),
        },
        meta::Refused::Foreign => Error::NotMapkv {
            path: path.to_path_buf(),
            reason: "no mapkv magic number at offset 0 or 4096".into(),
        },
    })?;
    let copy = if a == MetaRead::Valid(chosen) {
        0
    } else {
        META_B_OFFSET
    };
    Ok((chosen, copy))
}

/// Lay out a new store in an empty file: one index chunk, both meta copies
/// (A valid and CLEAN, B zero). The meta is written last, after everything
/// it points at is durable, so a crash during creation leaves a file without
/// a valid meta (reported as not-a-store), never a half-made store.
fn init_file(f: &std::fs::File, opts: &Options) -> std::io::Result<()> {
    let log2 = index::log2cap_for(opts.expected_keys);
    let chunk = ARENA_START;
    let table = record::index_table_start(chunk).unwrap_or(chunk);
    let tail = table + (8u64 << log2);
    // Options clamp the initial size to the format's limit; saturate anyway
    // (the limit below cuts it).
    let len = align_up(opts.initial_size.max(tail + GRANULE), GRANULE).unwrap_or(u64::MAX);
    let limit = opts.size_limit();
    if tail > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a size limit of {limit} bytes is too small for an empty store ({tail} bytes)"),
        ));
    }
    let len = len
        .min(align_up(limit, GRANULE).unwrap_or(len))
        .max(align_up(tail, GRANULE).unwrap_or(tail));
    file::allocate(f, 0, len)?;
    // A compaction's new file continues its store: same hash seed and CRC
    // salt, and its sequence numbers go on from where the old file's are.
    let (seed, salt, seq_gen0, generation) = match opts.lineage {
        Some(l) => (l.hash_seed, l.crc_salt, l.seq_gen, l.generation),
        None => (
            file::random_u64(),
            (file::random_u64() >> 17) as u32 | 1,
            0,
            0,
        ),
    };
    f.write_all_at(&record::encode_index(salt, chunk, log2).to_bytes(), chunk)?;
    f.sync_all()?;
    let m = Meta {
        magic: MAGIC,
        version: FORMAT_VERSION,
        page_size: FORMAT_PAGE as u32,
        meta_seq: 1,
        hash_seed: seed,
        crc_salt: salt,
        flags: FLAG_CLEAN,
        boot_id: [0; 16],
        file_len: len,
        tail,
        seq_gen: seq_gen0,
        generation,
        file_nonce: (file::random_u64() >> 32) as u32 | 1,
        index_desc: Desc {
            start: table,
            log2cap: log2,
        }
        .encode(),
        index_used: 0,
        live_keys: 0,
        live_bytes: 0,
        capacity: crate::storage::capacity_granules(opts.capacity.unwrap_or(0)),
        crc: 0,
    }
    .seal();
    f.write_all_at(&m.encode(), 0)?;
    f.sync_all()
}

/// The state a meta describes (meaningful when CLEAN).
fn state_of(meta: &Meta) -> State {
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

/// Bring the index in line with the log; fills `w.st` and the control block.
/// `reuse_tables`: a rebuild may write into an existing index table (no
/// other handle can be reading it); otherwise it writes a new one.
pub(crate) fn recover(
    inner: &Inner,
    w: &mut Writer,
    meta: &Meta,
    boot: [u8; 16],
    reuse_tables: bool,
) -> Result<OpenKind> {
    let rw = inner.arena.mode() == MapMode::Shared;
    let clean = state_of(meta);
    if meta.is_clean() && plausible(inner, &clean) && sample_ok(inner, &clean) {
        w.st = clean;
        publish(inner, w);
        return Ok(OpenKind::Clean);
    }
    // Every check below reads only; nothing is written to the file until
    // the log has been verified, so a store that turns out to be corrupted
    // is left exactly as it was.
    let next_gen = (meta.generation as u64 + 1) & 0xffff;
    let same_boot = boot != [0; 16] && meta.boot_id == boot;
    if !meta.is_clean() && same_boot {
        if let Some(st) = control_state(inner, meta) {
            if let Ok(plan) = plan_replay(inner, &st) {
                w.st = st;
                mark_changing(inner);
                replay(inner, w, plan)?;
                w.st.generation = next_gen;
                publish(inner, w);
                return Ok(OpenKind::Replayed);
            }
        }
    }
    let scanned = scan_log(inner, meta)?;
    if meta.is_clean() && rw {
        // The clean meta failed its checks. Retract it durably before the
        // index is touched, so a crash during the rebuild cannot leave a
        // CLEAN meta over a half-rebuilt index.
        w.st = clean;
        inner.write_meta(w, 0, true)?;
    }
    mark_changing(inner);
    install(inner, w, scanned, reuse_tables)?;
    w.st.generation = next_gen;
    publish(inner, w);
    Ok(OpenKind::Rebuilt)
}

/// Repair a live store, with the writer lock held, after the previous
/// holder died (or failed) in the middle of a change: other processes may
/// be reading. Rolls forward the complete commits it left past the tail, or,
/// if it died while changing the index (odd seqlock) or the control block
/// fails its checks, rebuilds the index from the log into a new table and
/// switches readers to it. Then bumps the generation, durably, so that bytes
/// the dead writer left past the new tail can never join a later commit.
pub(crate) fn repair_live(inner: &Inner, w: &mut Writer) -> Result<()> {
    sane_durable(inner, w, u64::MAX)?;
    let c = inner.control()?;
    let (st, consistent) = c.snapshot(1);
    let replayed = consistent
        && plausible(inner, &st)
        && match plan_replay(inner, &st) {
            Ok(plan) => {
                w.st = st;
                mark_changing(inner);
                replay(inner, w, plan)?;
                true
            }
            Err(_) => false,
        };
    if !replayed {
        let meta = durable_meta(inner)?;
        let scanned = scan_log(inner, &meta)?;
        // Keep the old counters' generation if the control block has a
        // newer one than the meta.
        let generation = if consistent {
            st.generation
        } else {
            scanned.st.generation
        };
        mark_changing(inner);
        install(inner, w, scanned, false)?;
        w.st.generation = w.st.generation.max(generation);
    }
    w.st.generation = (w.st.generation + 1) & 0xffff;
    sane_durable(inner, w, w.st.tail)?;
    publish(inner, w);
    inner.write_meta(w, 0, true)?;
    Ok(())
}

/// The writer's durable bookkeeping comes from the control block, which
/// may hold anything: if it names a log tail outside `ARENA_START..=upto`
/// or the file, a meta copy that does not exist or an impossible sequence
/// number, take it from the newest valid meta copy in the mapping instead
/// (what the file itself says is durable), so that the next meta written
/// never names more log than there is.
fn sane_durable(inner: &Inner, w: &mut Writer, upto: u64) -> Result<()> {
    let d = &w.dur;
    let len = inner.arena.len();
    let ok = d.tail % 8 == 0
        && d.tail >= ARENA_START
        && d.tail <= len.min(upto)
        && d.len <= crate::storage::MAX_FILE_LEN
        && (d.synced_copy == 0 || d.synced_copy == META_B_OFFSET)
        && d.meta_seq <= u64::MAX / 4;
    if ok {
        return Ok(());
    }
    let (m, copy) = durable_meta_and_copy(inner)?;
    w.dur.tail = m.tail.min(upto);
    w.dur.seq_gen = m.seq_gen;
    w.dur.len = m.file_len.min(len);
    w.dur.meta_seq = m.meta_seq;
    w.dur.synced_copy = copy;
    Ok(())
}

/// The newest valid meta, read from the mapping.
pub(crate) fn durable_meta(inner: &Inner) -> Result<Meta> {
    durable_meta_and_copy(inner).map(|(m, _)| m)
}

/// The newest valid meta, read from the mapping, and the offset of the
/// copy it is in.
pub(crate) fn durable_meta_and_copy(inner: &Inner) -> Result<(Meta, u64)> {
    let read = |off: u64| -> MetaRead {
        let mut b = [0u8; META_LEN];
        match inner.arena.read(off, &mut b) {
            Ok(()) => Meta::decode(&b),
            Err(_) => MetaRead::Foreign,
        }
    };
    let a = read(0);
    let m = meta::choose(a, read(META_B_OFFSET)).map_err(|r| {
        inner.corrupt(
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
pub(crate) fn live_meta_is_clean(inner: &Inner) -> bool {
    durable_meta(inner).is_ok_and(|m| m.is_clean())
}

/// Check a live store that this handle joins (another process has it
/// open): the control block must be ours and name an index table inside
/// the file.
pub(crate) fn join(inner: &Inner) -> Result<()> {
    let _ = inner.arena.refresh();
    let c = inner.control()?;
    match c.magic() {
        CONTROL_MAGIC => {}
        // A compaction has moved the store to a new file under the same
        // name since we opened it: the caller opens the name again.
        crate::storage::control::MOVED_MAGIC => return Err(Error::Moved),
        // One is moving it right now: this file is still valid to read, and
        // the first operation follows once the rename is done.
        crate::storage::control::MOVING_MAGIC => {}
        _ => {
            return Err(inner.corrupt(
                crate::storage::CONTROL_OFFSET,
                "the store is open in another process, but its control block is not initialised",
            ))
        }
    }
    inner.table()?;
    Ok(())
}

/// Make the control block odd: a crash from here until `publish` makes the
/// next open rebuild instead of trusting a half-changed index.
pub(crate) fn mark_changing(inner: &Inner) {
    if let Ok(c) = inner.control() {
        c.begin();
    }
}

pub(crate) fn publish(inner: &Inner, w: &Writer) {
    if let Some(d) = Desc::decode(w.st.index_desc) {
        inner.arena.advise_hugepage(d.start, d.bytes());
    }
    if let Ok(c) = inner.control() {
        c.reset(&w.st, inner.arena.len());
    }
}

/// Basic bounds of a state read from the file.
pub(crate) fn plausible(inner: &Inner, st: &State) -> bool {
    let len = inner.arena.len();
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

/// Check up to 64 live slots: each must point at a valid put record whose
/// key leads back to that slot (odht-style sampling on open).
fn sample_ok(inner: &Inner, st: &State) -> bool {
    let Ok((t, _)) = inner.table_at(st.index_desc) else {
        return false;
    };
    let mut checked = 0;
    for word in t.live_words().take(64) {
        let off = index::word_offset(word);
        let ok = (|| -> Result<bool> {
            if off + record::HEADER_LEN > st.tail {
                return Ok(false);
            }
            let h = inner.header_at(off)?;
            if h.kind != KIND_PUT || !h.check(inner.salt, off) {
                return Ok(false);
            }
            let key = inner.read_key(off, &h)?;
            let found = t.find(index::hash(inner.hash_seed, &key), |o| {
                inner.key_eq(o, &key)
            })?;
            Ok(found.map(|(_, w)| w) == Some(word))
        })();
        if !matches!(ok, Ok(true)) {
            return false;
        }
        checked += 1;
    }
    checked as u64 == st.live_keys.min(64)
}

/// The control block's state, if it can be trusted after a process crash.
fn control_state(inner: &Inner, meta: &Meta) -> Option<State> {
    let c = inner.control().ok()?;
    if c.magic() != CONTROL_MAGIC {
        return None;
    }
    let (st, consistent) = c.snapshot(1);
    (consistent
        && plausible(inner, &st)
        && st.tail >= meta.tail
        && seq_of(st.seq_gen) >= seq_of(meta.seq_gen)
        && sample_ok(inner, &st))
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
fn plan_replay(inner: &Inner, st: &State) -> Result<ReplayPlan> {
    let (t, _) = inner.table_at(st.index_desc)?;
    let mut sc = Scanner::new(
        &inner.arena,
        inner.salt,
        st.tail,
        inner.arena.len(),
        Some(st.seq_gen),
    );
    let mut puts = 0u64;
    let mut commits = 0u64;
    while let Ok(item) = sc.next_item() {
        if let Item::Commit { records, .. } = item {
            commits += 1;
            for r in &records {
                let key = inner.read_key(r.off, &r.header)?;
                t.find(index::hash(inner.hash_seed, &key), |o| {
                    inner.key_eq(o, &key)
                })?;
                puts += (r.header.kind == KIND_PUT) as u64;
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
fn replay(inner: &Inner, w: &mut Writer, plan: ReplayPlan) -> Result<()> {
    let start = w.st.tail;
    let last = w.st.seq_gen;
    // A larger index, if needed, goes after the records, not on them; a
    // half-written index chunk past the tail (a resize that never
    // published) is dead space.
    w.st.tail = plan.end;
    if plan.commits == 0 {
        return Ok(());
    }
    inner.ensure_index_room(w, plan.puts, 0)?;
    let (t, _) = inner.table_at(w.st.index_desc)?;
    let mut st = w.st;
    let mut sc = Scanner::new(&inner.arena, inner.salt, start, plan.end, Some(last));
    while let Ok(item) = sc.next_item() {
        if let Item::Commit {
            records, seq_gen, ..
        } = item
        {
            apply_records(inner, &t, &mut st, &records)?;
            st.seq_gen = seq_gen;
        }
    }
    w.st = st;
    Ok(())
}

fn apply_records(
    inner: &Inner,
    t: &Table<'_>,
    st: &mut State,
    records: &[RecordRef],
) -> Result<()> {
    for r in records {
        let key = inner.read_key(r.off, &r.header)?;
        inner.apply(t, st, r.off, &r.header, &key)?;
    }
    Ok(())
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
}

/// Read-only first half of a rebuild: verify the whole log and build the
/// index in heap memory.
pub(crate) fn scan_log(inner: &Inner, meta: &Meta) -> Result<Scanned> {
    let mut log2 = MIN_LOG2CAP;
    let mut heap = heap_table(log2);
    let mut st = State {
        generation: meta.generation as u64 & 0xffff,
        ..State::default()
    };
    let mut chunks: Vec<Desc> = Vec::new();
    let mut sc = Scanner::new(
        &inner.arena,
        inner.salt,
        ARENA_START,
        inner.arena.len(),
        None,
    );
    let stop = loop {
        match sc.next_item() {
            Ok(Item::Commit { records, .. }) => {
                let puts = records.iter().filter(|r| r.header.kind == KIND_PUT).count() as u64;
                if !index::fits(1 << log2, st.index_used, puts) {
                    let nl =
                        index::log2cap_for(st.live_keys.saturating_add(puts).saturating_mul(3) / 2)
                            .max(log2);
                    let bigger = heap_table(nl);
                    let n = Table::new(&heap, log2)
                        .copy_into(&Table::new(&bigger, nl), |w| inner.rehash(w))?;
                    heap = bigger;
                    log2 = nl;
                    st.index_used = n;
                }
                apply_records(inner, &Table::new(&heap, log2), &mut st, &records)?;
            }
            Ok(Item::Index { desc, .. }) => chunks.push(desc),
            Err(stop) => break stop,
        }
    };
    let tail = sc.pos();
    if tail < meta.tail {
        return Err(inner.corrupt(
            stop.bad,
            format!("{}, below the durable tail at {}", stop.why, meta.tail),
        ));
    }
    st.tail = tail;
    st.seq_gen = sc
        .last_seq_gen()
        .unwrap_or(seq_gen(0, st.generation as u16));
    Ok(Scanned {
        heap,
        log2,
        st,
        chunks,
        stop,
    })
}

/// Second half of a rebuild: put the heap index into an index chunk of the
/// file (the largest existing one that holds it comfortably, or a new one
/// at the tail) and make it current.
///
/// `reuse` allows an existing chunk; a live repair passes `false`, because
/// readers in other processes may be reading any old table.
pub(crate) fn install(inner: &Inner, w: &mut Writer, scanned: Scanned, reuse: bool) -> Result<()> {
    let Scanned {
        heap,
        log2,
        mut st,
        chunks,
        ..
    } = scanned;
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
                .ok_or_else(|| inner.corrupt(off, "tail overflows"))?;
            let d = Desc { start, log2cap: nl };
            inner.ensure_space(start + d.bytes())?;
            inner
                .arena
                .write(off, &record::encode_index(inner.salt, off, nl).to_bytes())
                .map_err(|_| inner.corrupt(off, "index chunk outside the file"))?;
            st.tail = start + d.bytes();
            d
        }
    };
    inner.arena.advise_hugepage(target.start, target.bytes());
    inner
        .arena
        .zero(target.start, target.bytes())
        .map_err(|_| inner.corrupt(target.start, "index table outside the file"))?;
    let (t, _) = inner.table_at(target.encode())?;
    let n = Table::new(&heap, log2).copy_into(&t, |w| inner.rehash(w))?;
    st.index_desc = target.encode();
    st.index_used = n;
    w.st = st;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `open_file` itself (not only `Db::open`, which resolves the path
    /// first) stops at a dangling symlink instead of creating a file it
    /// can never publish, again and again.
    #[test]
    fn open_file_through_a_dangling_symlink_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("missing"), &link).unwrap();
        let e = open_file(&link, &Options::default())
            .map(|_| ())
            .expect_err("a dangling symlink");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
