//! `dump` and `load`: every entry out as lines, and lines back in
//! (formats in format.rs).

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use mapkv::Db;
use serde_json::json;

use crate::format::{self, Entry};
use crate::{
    print_json, read_only, stdout, ui, units, writable, CapacityArg, Fail, JsonArg, LockArg, Res,
    SyncArg,
};

#[derive(Args, Debug)]
pub struct Dump {
    /// The store's file.
    file: PathBuf,
    /// Write the text format instead of JSON lines.
    #[arg(long)]
    text: bool,
    /// Skip damaged entries (listed on stderr) instead of stopping at
    /// the first one; exit status 1 if any was skipped.
    #[arg(long)]
    salvage: bool,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Load {
    /// The store's file.
    file: PathBuf,
    /// Read this file instead of standard input ('-' is standard input).
    input: Option<PathBuf>,
    /// Read the text format instead of JSON lines.
    #[arg(long)]
    text: bool,
    /// Keep the keys the store has: insert only absent ones (one commit
    /// per entry).
    #[arg(long)]
    no_overwrite: bool,
    /// Entries per commit.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..),
          conflicts_with = "no_overwrite")]
    batch: u64,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    sync: SyncArg,
    #[command(flatten)]
    capacity: CapacityArg,
    #[command(flatten)]
    lock: LockArg,
}

fn entries(n: u64) -> String {
    ui::plural(n, "entry", "entries")
}

pub fn dump(a: Dump) -> Res {
    let db = read_only(a.lock).open(&a.file)?;
    let pb = ui::progress(Some(db.len()), false, "dumping");
    let mut out = stdout();
    let mut n = 0u64;
    let mut skipped = 0u64;
    let result = (|| -> Res {
        if a.text {
            out.write_all(format::TEXT_HEADER.as_bytes())?;
        }
        for item in db.iter() {
            let entry = item.and_then(|(key, value)| {
                Ok(expiry(&db, &key)?.map(|expires_at_ms| Entry {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    expires_at_ms,
                }))
            });
            let e = match entry {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(mapkv::Error::Corrupted { offset, what, .. }) if a.salvage => {
                    pb.suspend(|| {
                        eprintln!("mapkv: skipped damaged entry at offset {offset}: {what}")
                    });
                    skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if a.text {
                format::write_text(&mut out, &e)?;
            } else {
                format::write_json(&mut out, &e)?;
            }
            n += 1;
            if n % 256 == 0 {
                pb.set_position(n);
            }
        }
        out.flush()?;
        Ok(())
    })();
    pb.finish_and_clear();
    result?;
    db.close()?;
    if skipped > 0 {
        return Err(Fail::negative(format!(
            "dumped {}, skipped {} that failed their checks (listed above); \
             if 'mapkv check' says the log verifies, 'mapkv repair' rebuilds the index",
            entries(n),
            entries(skipped)
        )));
    }
    if io::stderr().is_terminal() {
        eprintln!("mapkv: dumped {}", entries(n));
    }
    Ok(())
}

/// When the entry of `key`, just read by the iterator, expires (ms since
/// the Unix epoch): `Some(None)` never, `None` if it is gone (it expired or
/// was removed since), so that a dump never turns an expired entry into a
/// permanent one.
fn expiry(db: &Db, key: &[u8]) -> mapkv::Result<Option<Option<u64>>> {
    match db.time_to_live(key)? {
        Some(left) => Ok(Some(Some(
            units::now_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
        ))),
        None if db.contains_key(key)? => Ok(Some(None)),
        None => Ok(None),
    }
}

/// What a load did.
#[derive(Default)]
struct Counts {
    /// Entries written.
    loaded: u64,
    /// Entries not written because the key was there (--no-overwrite).
    kept: u64,
    /// Entries not written because their expiry had passed.
    expired: u64,
    /// Commits.
    commits: u64,
}

pub fn load(a: Load) -> Res {
    let (reader, name, len) = open_input(a.input.as_deref())?;
    let opts = writable(a.lock, a.sync, a.capacity.capacity);
    // A new store is built under a temporary name and linked into place at
    // the end, so that a failed load leaves nothing behind and no other
    // process ever sees a half-loaded store.
    let fresh = std::fs::symlink_metadata(&a.file).is_err();
    let target = if fresh {
        temp_path(&a.file)
    } else {
        a.file.clone()
    };
    let db = match opts.create(fresh).open(&target) {
        Ok(db) => db,
        Err(e) if fresh => {
            let _ = std::fs::remove_file(&target);
            return Err(Fail::error(format!(
                "{}: cannot create the store: {e}",
                a.file.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let pb = ui::progress(len, true, "loading");
    let mut counts = Counts::default();
    let result = fill(&db, &a, fresh, (reader, &name), &pb, &mut counts).and_then(|()| {
        db.flush()?;
        Ok(())
    });
    pb.finish_and_clear();
    let result = result.and_then(|()| Ok(db.close()?));
    if fresh {
        match result {
            Ok(()) => publish(&target, &a.file)?,
            Err(e) => {
                let _ = std::fs::remove_file(&target);
                return Err(e);
            }
        }
    } else {
        result?;
    }
    let c = counts;
    if a.out.json {
        print_json(&json!({
            "ok": true,
            "loaded": c.loaded,
            "kept": c.kept,
            "expired": c.expired,
            "batches": c.commits,
        }))?;
    } else if io::stderr().is_terminal() {
        let mut msg = format!(
            "mapkv: loaded {} in {}",
            entries(c.loaded),
            ui::plural(c.commits, "commit", "commits")
        );
        if c.kept > 0 {
            msg.push_str(&format!(
                "; kept the store's value of {}",
                ui::plural(c.kept, "key", "keys")
            ));
        }
        if c.expired > 0 {
            msg.push_str(&format!(
                "; skipped {} whose expiry had passed",
                entries(c.expired)
            ));
        }
        eprintln!("{msg}");
    }
    Ok(())
}

type Input = (Box<dyn Read>, String, Option<u64>);

/// The input, its name for messages, and its length if it is a file.
fn open_input(input: Option<&Path>) -> Res<Input> {
    Ok(match input {
        Some(p) if p.as_os_str() != "-" => {
            let f = File::open(p).map_err(|e| Fail::error(format!("{}: {e}", p.display())))?;
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(f), p.display().to_string(), len)
        }
        _ => {
            if io::stdin().is_terminal() {
                eprintln!("mapkv: reading entries from standard input (end with Ctrl-D)");
            }
            // The length is known when stdin is a regular file.
            let len = io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .and_then(|fd| File::from(fd).metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len());
            (Box::new(io::stdin()), "standard input".to_string(), len)
        }
    })
}

/// `.NAME.load-PID` next to `file`.
fn temp_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    file.with_file_name(format!(".{name}.load-{}", std::process::id()))
}

/// Give the loaded store at `tmp` its name, unless a file took that name
/// meanwhile (a link never replaces one), and make the name durable.
fn publish(tmp: &Path, file: &Path) -> Res {
    if let Err(e) = std::fs::hard_link(tmp, file) {
        let why = if e.kind() == io::ErrorKind::AlreadyExists {
            "another process created it during the load".to_string()
        } else {
            e.to_string()
        };
        return Err(Fail::error(format!(
            "{}: {why}; the loaded store is at {}",
            file.display(),
            tmp.display()
        )));
    }
    let _ = std::fs::remove_file(tmp);
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Fail::error(format!("{}: sync directory: {e}", dir.display())))
}

/// Read the entries from `reader` into `db`, committing every `a.batch`
/// (or each one, with --no-overwrite). `fresh`: `db` is a new store that
/// goes away if this fails.
fn fill(
    db: &Db,
    a: &Load,
    fresh: bool,
    (reader, name): (Box<dyn Read>, &str),
    pb: &indicatif::ProgressBar,
    c: &mut Counts,
) -> Res {
    let mut rd = BufReader::with_capacity(1 << 16, reader);
    let mut line = Vec::new();
    let mut lineno = 0u64;
    let mut b = db.batch();
    loop {
        line.clear();
        let got = rd
            .read_until(b'\n', &mut line)
            .map_err(|e| Fail::error(format!("reading {name}: {e}")))?;
        if got == 0 {
            break;
        }
        lineno += 1;
        pb.inc(got as u64);
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let parsed = if a.text {
            format::parse_text(text)
        } else if text.iter().all(u8::is_ascii_whitespace) {
            Ok(None)
        } else {
            format::parse_json(text).map(Some)
        };
        let e = match parsed {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                let kept = if fresh {
                    "nothing was loaded".to_string()
                } else {
                    format!("{} committed before it", entries(c.loaded))
                };
                return Err(Fail::error(format!("{name}: line {lineno}: {e} ({kept})")));
            }
        };
        let ttl = match e.expires_at_ms {
            None => None,
            Some(at) => {
                let now = units::now_ms();
                if at <= now {
                    c.expired += 1;
                    continue;
                }
                Some(Duration::from_millis(at - now))
            }
        };
        if a.no_overwrite {
            // Two commits for an entry with an expiry: the library has no
            // insert-if-absent with a TTL.
            if db.insert_if_absent(&e.key, &e.value)? {
                if ttl.is_some() {
                    db.expire(&e.key, ttl)?;
                }
                c.loaded += 1;
                c.commits += 1;
            } else {
                c.kept += 1;
            }
            continue;
        }
        match ttl {
            Some(t) => b.insert_with_ttl(&e.key, &e.value, t),
            None => b.insert(&e.key, &e.value),
        };
        if b.len() as u64 >= a.batch {
            let n = b.len() as u64;
            std::mem::replace(&mut b, db.batch()).commit()?;
            c.loaded += n;
            c.commits += 1;
        }
    }
    if !b.is_empty() {
        let n = b.len() as u64;
        b.commit()?;
        c.loaded += n;
        c.commits += 1;
    }
    Ok(())
}
