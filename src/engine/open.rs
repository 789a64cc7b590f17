//! Opening a store: create the file or open it, lock it, validate it
//! (nothing of a file that is not ours is ever written), map it, then join
//! the live session other handles run or start one (recovering the store
//! first: see recover.rs).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::index::{self, Desc};
use crate::log::record;
use crate::storage::control::{ControlCopy, Durable, CONTROL_MAGIC};
use crate::storage::file::{self, OpenLock};
use crate::storage::lock::Registration;
use crate::storage::mapping::{Arena, MapMode};
use crate::storage::meta::{self, Meta, MetaRead, FLAG_CLEAN, FORMAT_VERSION, MAGIC, META_LEN};
use crate::storage::{align_up, ARENA_START, FORMAT_PAGE, GRANULE, META_B_OFFSET};
use crate::{Error, Options};

use super::grow::Limits;
use super::recover::{self, state_of, OpenKind};
use super::{Access, Failure, Poison, Result, Role, Store, Writer};

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

/// Open and map the store's file. `distrust_clean`: a read-only opener
/// that found the clean state failing its checks (see `Store::open`)
/// maps privately, to recover, whatever the control block says.
pub(crate) fn open_file(
    path: &Path,
    opts: &Options,
    distrust_clean: bool,
) -> crate::Result<Opened> {
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
    } else if live || (!distrust_clean && clean_and_current(&file, &meta)) {
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
pub(crate) fn resolve(path: &Path) -> crate::Result<std::path::PathBuf> {
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
fn adoptable(md: &std::fs::Metadata, opts: &Options, path: &Path) -> crate::Result<()> {
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
fn fill_holes(f: &std::fs::File, len: u64, path: &Path) -> crate::Result<()> {
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
    ControlCopy::read(f).is_ok_and(|c| c.is_session_of(boot_id))
}

/// For a read-only opener that is alone: was the store closed cleanly, with
/// a control block that says exactly what the meta says? Read with `pread`.
fn clean_and_current(f: &std::fs::File, meta: &Meta) -> bool {
    if !meta.is_clean() {
        return false;
    }
    ControlCopy::read(f).is_ok_and(|c| {
        c.magic() == CONTROL_MAGIC && c.version() % 2 == 0 && c.state() == state_of(meta)
    })
}

/// Read both meta copies with `pread` (nothing is mapped or written before
/// the file is known to be ours) and pick the durable one. Returns it and
/// the offset of the copy it came from.
fn read_meta(f: &std::fs::File, len: u64, path: &Path) -> crate::Result<(Meta, u64)> {
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

/// A store whose file is mapped and validated but whose index is not yet
/// in line with its log: recovery runs on it, and dropping it writes
/// nothing (a store that fails to open is left as it was). Only
/// [`finish`](Unrecovered::finish) gives the [`Store`] that closes cleanly
/// when dropped.
pub(crate) struct Unrecovered(Store);

impl std::ops::Deref for Unrecovered {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0
    }
}

impl Unrecovered {
    /// Recovered: the store from now on closes cleanly when dropped.
    fn finish(self, opened: OpenKind) -> Store {
        let mut store = self.0;
        store.opened = opened;
        store.closed = AtomicBool::new(false);
        store
    }
}

impl Store {
    /// Open the store at `path`: create, lock, validate, recover or join.
    pub(crate) fn open(path: &Path, opts: Options) -> Result<Store> {
        Self::open_trusting(path, opts, false)
    }

    fn open_trusting(path: &Path, opts: Options, distrust_clean: bool) -> Result<Store> {
        let Opened {
            arena,
            meta,
            meta_copy,
            boot_id,
            sole,
            live,
            upgrade,
        } = open_file(path, &opts, distrust_clean)?;
        let mode = arena.mode();
        let file_id = {
            use std::os::unix::fs::MetadataExt;
            let md = arena.file().metadata().map_err(|source| Error::Io {
                op: "stat",
                path: path.to_path_buf(),
                source,
            })?;
            (md.dev(), md.ino())
        };
        let dur = Durable {
            tail: meta.tail,
            seq_gen: meta.seq_gen,
            // Never more than the file has (see open_file).
            len: meta.file_len.min(arena.len()),
            meta_seq: meta.meta_seq,
            synced_copy: meta_copy,
        };
        let access = if opts.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let mut store = Unrecovered(Store {
            path: path.to_path_buf(),
            hash_seed: meta.hash_seed,
            salt: meta.crc_salt,
            access,
            // Settled once the session is (the capacity may change).
            role: Role::Database,
            limits: Limits {
                step: opts.growth_step,
                max_size: opts.max_size,
            },
            writer: Mutex::new(Writer::new(dur, boot_id)),
            pid: std::process::id() as u64,
            lock_timeout: opts.lock_timeout,
            open_lock: Mutex::new(if sole {
                OpenLock::Exclusive
            } else {
                OpenLock::Shared
            }),
            poison: Poison::default(),
            claims: super::claim::new_claims(),
            hits: Default::default(),
            // Nothing to close before recovery is done: see `finish`.
            closed: AtomicBool::new(true),
            opened: OpenKind::Clean,
            file_id,
            file_nonce: meta.file_nonce,
            arena,
        });
        let ioe = |op: &'static str| {
            move |source| Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        if access == Access::ReadWrite {
            // Registered from the start, so that every opener sees a writer
            // has the store open (the kernel's word) as soon as it can open.
            let reg = Registration::new(&store.arena).map_err(ioe("register as a writer"))?;
            store.0.writer.get_mut().reg = Some(reg);
        }
        let opened = if live {
            store.join_session(&meta, &opts)?
        } else if mode == MapMode::Private {
            // Read-only, on a store that needs recovery, and no writer has
            // it open: recover in private memory. (A read-only handle opens
            // the file read-only, so it never holds the open lock
            // exclusively: a writer may start a session meanwhile.)
            let mut wr = store.writer_alone();
            recover::recover(&store, &mut wr, &meta, boot_id, true)?
        } else if opts.read_only {
            // Read-only on a cleanly closed store whose control block
            // matches its meta: share the live mapping, if the clean state
            // passes the checks a writer's open makes. If it fails them, a
            // writer would rebuild the index from the log: recover the same
            // way, in private memory, so that both read the same store.
            if !recover::clean_state_ok(&store, &meta) {
                drop(store);
                return Self::open_trusting(path, opts, true);
            }
            OpenKind::Clean
        } else {
            match store.start_session(&meta, &opts, sole, upgrade)? {
                Some(opened) => opened,
                // Another writer started one while we waited for the lock.
                None => store.join_session(&meta, &opts)?,
            }
        };
        if sole && mode != MapMode::Private {
            // Let others in (converting the lock is atomic).
            file::open_lock(store.arena.file(), OpenLock::Shared).map_err(ioe("lock"))?;
            *store.0.open_lock.get_mut() = OpenLock::Shared;
        }
        // Readers count hits for eviction only in cache mode, and only
        // where they may write the mapping.
        if store.control().is_ok_and(|c| c.capacity() != 0) {
            store.0.role = Role::Cache {
                counts_hits: mode == MapMode::Shared && !opts.read_only,
            };
        }
        Ok(store.finish(opened))
    }

    /// A capacity given at open must be the store's: a second process
    /// must not resize a shared cache by accident (see
    /// `Db::set_capacity`).
    fn same_capacity(&self, opts: &Options, stored: u64) -> Result<(), Error> {
        match opts.capacity {
            Some(requested) if requested != stored => Err(Error::CapacityMismatch {
                path: self.path.clone(),
                stored,
                requested,
            }),
            _ => Ok(()),
        }
    }

    /// Join the live session another handle runs. Taking the writer lock
    /// repairs the store if a writer died mid-change. If the store still
    /// says it was closed cleanly (only read-only handles had it open),
    /// say otherwise before anything is written.
    fn join_session(&self, meta: &Meta, opts: &Options) -> Result<OpenKind> {
        recover::join(self)?;
        if opts.read_only {
            return Ok(OpenKind::Joined);
        }
        let mut wr = self.lock_writer()?;
        let c = self.control()?;
        self.same_capacity(opts, c.capacity())?;
        c.writers().fetch_add(1, Ordering::AcqRel);
        // Re-read under the lock: the last writer may have closed cleanly
        // since we read the meta.
        if meta.is_clean() || recover::live_meta_is_clean(self) {
            self.write_meta(&mut wr, 0, true)?;
        }
        Ok(OpenKind::Joined)
    }

    /// Start a session: no writer has the store open (or it is the first
    /// open since boot). Recover the store under the writer lock, then
    /// mark the control block as this boot's live state. `None` if another
    /// writer started a session while this one waited for the lock.
    ///
    /// Alone (`sole`), nobody can hold the lock or read the store: the
    /// lock word is set free first, and a compaction's leftovers go. Not
    /// alone, the others are read-only handles or not mapkv at all (a
    /// process that holds a read lock on the file): the lock keeps two
    /// starting writers apart.
    fn start_session(
        &self,
        meta: &Meta,
        opts: &Options,
        sole: bool,
        upgrade: bool,
    ) -> Result<Option<OpenKind>> {
        let ioe = |op: &'static str| {
            move |source| Error::Io {
                op,
                path: self.path.clone(),
                source,
            }
        };
        let boot_id = file::boot_id();
        if self.path_names_other_file() {
            // A compaction moved the store to a new file after we opened
            // this one (which it then let go of): open the name again.
            return Err(Failure::Moved);
        }
        let start = |wr: &mut Writer, meta: &Meta| -> Result<OpenKind> {
            let c = self.control()?;
            let stored = meta.capacity as u64 * GRANULE;
            self.same_capacity(opts, stored)?;
            // Not alone, readers may be in the current table: a rebuild
            // writes a new one.
            let opened = recover::recover(self, wr, meta, boot_id, sole)?;
            // The store's capacity (0: not a cache).
            c.set_capacity(stored);
            if opened == OpenKind::Rebuilt {
                // After an OS crash the control block may hold anything.
                c.set_cache_counters([0; 5]);
            }
            // Clear the clean flag, and record this boot and the new
            // generation, durably before anything else is written.
            self.write_meta(wr, 0, true)?;
            if upgrade {
                // Both copies in the new format before an older mapkv may
                // look.
                self.write_meta(wr, 0, true)?;
                file::legacy_unlock(self.arena.file()).map_err(ioe("unlock"))?;
            }
            c.set_durable(&wr.dur);
            c.writers().store(1, Ordering::Release);
            c.set_session_boot(&boot_id);
            Ok(opened)
        };
        if sole {
            // Nobody else has the file open: nobody can hold the writer
            // lock or be inside a change, and no compaction of this store
            // is running anywhere (it would hold the store open), so a new
            // file left by one that crashed is garbage. Nothing is written
            // before recovery succeeds (a store that fails to open is left
            // as it was).
            let mut wr = self.writer_alone();
            let opened = start(&mut wr, meta)?;
            file::remove_compact_leftovers(&self.path);
            let c = self.control()?;
            c.reset_session();
            c.writers().store(1, Ordering::Release);
            self.arena
                .init_writer_lock()
                .map_err(ioe("initialise the writer lock"))?;
            return Ok(Some(opened));
        }
        let mut g = self.take_lock()?;
        // Did another writer start a session while we waited? (Its
        // registration says it is still there; our own does not count.)
        if self.control()?.is_session_of(&boot_id)
            && file::writer_registered(self.arena.file()).map_err(ioe("lock"))?
        {
            return Ok(None);
        }
        // Re-read under the lock: a session that started and ended while
        // we waited may have written a newer one.
        let (m, copy) = recover::durable_meta_and_copy(self)?;
        g.dur = Durable {
            tail: m.tail,
            seq_gen: m.seq_gen,
            len: m.file_len.min(self.arena.len()),
            meta_seq: m.meta_seq,
            synced_copy: copy,
        };
        let opened = start(&mut g, &m)?;
        self.control()?.set_writer(0);
        Ok(Some(opened))
    }
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
        let e = open_file(&link, &Options::default(), false)
            .map(|_| ())
            .expect_err("a dangling symlink");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
