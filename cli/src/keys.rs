//! Commands on one key at a time (get, put, del, ttl, expire), and the ones
//! that print entries or changes as they go (scan, watch).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::bytes::{b64, Encoding};
use crate::{
    print_json, read_only, stdout, units, writable, CapacityArg, EncArgs, Fail, JsonArg, LockArg,
    Res, SyncArg,
};

#[derive(Args, Debug)]
pub struct Get {
    /// The store's file.
    file: PathBuf,
    /// The key (decoded as --hex or --base64 say).
    key: OsString,
    /// Print the value's raw bytes even with --hex or --base64 (which
    /// then apply to KEY only).
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    enc: EncArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Put {
    /// The store's file.
    file: PathBuf,
    /// The key (decoded as --hex or --base64 say).
    key: OsString,
    /// The value (decoded as --hex or --base64 say). Omit it to read
    /// standard input.
    value: Option<OsString>,
    /// Read the value from this file (raw bytes).
    #[arg(long = "file", value_name = "PATH", conflicts_with = "value")]
    from_file: Option<PathBuf>,
    /// The entry expires after this long (500ms, 30s, 5m, 2h, 1d, 1h30m).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    ttl: Option<Duration>,
    #[command(flatten)]
    enc: EncArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    sync: SyncArg,
    #[command(flatten)]
    capacity: CapacityArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Del {
    /// The store's file.
    file: PathBuf,
    /// The key (decoded as --hex or --base64 say).
    key: OsString,
    #[command(flatten)]
    enc: EncArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    sync: SyncArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Ttl {
    /// The store's file.
    file: PathBuf,
    /// The key (decoded as --hex or --base64 say).
    key: OsString,
    #[command(flatten)]
    enc: EncArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Expire {
    /// The store's file.
    file: PathBuf,
    /// The key (decoded as --hex or --base64 say).
    key: OsString,
    /// How long from now (500ms, 30s, 5m, 2h, 1d, 1h30m), or 'never'.
    #[arg(value_name = "DURATION|never", value_parser = parse_expiry)]
    ttl: Expiry,
    #[command(flatten)]
    enc: EncArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    sync: SyncArg,
    #[command(flatten)]
    lock: LockArg,
}

/// The argument of `expire`: a time to live, or none.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    After(Duration),
    Never,
}

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s == "never" {
        Ok(Expiry::Never)
    } else {
        units::parse_duration(s)
            .map(Expiry::After)
            .map_err(|e| format!("{e}, or 'never'"))
    }
}

#[derive(Args, Debug)]
pub struct Scan {
    /// The store's file.
    file: PathBuf,
    /// Only keys that start with these bytes (filtered while iterating:
    /// it still reads every entry).
    #[arg(long, value_name = "P")]
    prefix: Option<OsString>,
    /// Stop after N entries.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Print keys only.
    #[arg(long)]
    keys_only: bool,
    #[command(flatten)]
    enc: EncArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Watch {
    /// The store's file.
    file: PathBuf,
    /// Only changes to this key (decoded as --hex or --base64 say).
    key: Option<OsString>,
    /// Stop after N changes (lines).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop when no commit lands for this many seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::parse_secs)]
    idle_exit: Option<Duration>,
    #[command(flatten)]
    enc: EncArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

/// Decode a KEY, VALUE or --prefix argument named `what`.
fn arg(enc: Encoding, what: &str, a: OsString) -> Res<Vec<u8>> {
    enc.decode(what, a).map_err(Fail::error)
}

fn not_found(enc: Encoding, key: &[u8]) -> Fail {
    Fail::negative(format!("key not found: {}", enc.text(key)))
}

pub fn get(a: Get) -> Res {
    let enc = a.enc.encoding();
    let key = arg(enc, "KEY", a.key)?;
    let db = read_only(a.lock).open(&a.file)?;
    let value = db.get(&key)?;
    db.close()?;
    match (value, a.out.json) {
        (Some(v), true) => print_json(&json!({"key": b64(&key), "value": b64(&v)})),
        (None, true) => {
            print_json(&json!({"key": b64(&key), "value": null}))?;
            Err(not_found(enc, &key))
        }
        (Some(v), false) => {
            let mut out = stdout();
            match if a.raw { Encoding::Raw } else { enc } {
                Encoding::Raw => {
                    out.write_all(&v)?;
                    if io::stdout().is_terminal() && !v.ends_with(b"\n") {
                        out.write_all(b"\n")?;
                    }
                }
                e => writeln!(out, "{}", e.text(&v))?,
            }
            out.flush()?;
            Ok(())
        }
        (None, false) => Err(not_found(enc, &key)),
    }
}

pub fn put(a: Put) -> Res {
    let enc = a.enc.encoding();
    let key = arg(enc, "KEY", a.key)?;
    let value = match (a.value, a.from_file) {
        (Some(v), _) => arg(enc, "VALUE", v)?,
        (None, Some(p)) => {
            let what = p.display().to_string();
            let f = std::fs::File::open(&p).map_err(|e| Fail::error(format!("{what}: {e}")))?;
            // Refuse an oversized file by its length, before reading any
            // of it; `read_limited` catches the ones whose length says
            // nothing (pipes, devices).
            let len = f
                .metadata()
                .map_err(|e| Fail::error(format!("{what}: {e}")))?
                .len();
            if len > mapkv::MAX_VALUE_LEN as u64 {
                return Err(too_large(&what, len, true));
            }
            read_limited(f, &what)?
        }
        (None, None) => {
            if io::stdin().is_terminal() {
                eprintln!("mapkv: reading the value from standard input (end it with Ctrl-D)");
            }
            read_limited(io::stdin().lock(), "standard input")?
        }
    };
    let db = writable(a.lock, a.sync, a.capacity.capacity)
        .create(true)
        .open(&a.file)?;
    match a.ttl {
        Some(ttl) => db.insert_with_ttl(&key, &value, ttl)?,
        None => db.insert(&key, &value)?,
    }
    db.close()?;
    if a.out.json {
        print_json(&json!({
            "ok": true,
            "key": b64(&key),
            "value_len": value.len(),
            "ttl_ms": a.ttl.map(|t| t.as_millis() as u64),
        }))?;
    }
    Ok(())
}

/// Read a value to its end, but never more than one byte past the largest
/// value a store takes.
fn read_limited(r: impl Read, what: &str) -> Res<Vec<u8>> {
    let mut v = Vec::new();
    r.take(mapkv::MAX_VALUE_LEN as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| Fail::error(format!("reading {what}: {e}")))?;
    if v.len() > mapkv::MAX_VALUE_LEN {
        return Err(too_large(what, mapkv::MAX_VALUE_LEN as u64, false));
    }
    Ok(v)
}

/// The refusal of a value over the limit: `len` bytes, or more if it
/// was only read up to the limit (`exact` false).
fn too_large(what: &str, len: u64, exact: bool) -> Fail {
    let more = if exact { "" } else { "more than " };
    Fail::error(format!(
        "{what}: the value would be {more}{len} bytes, but a value is at most {} bytes; nothing was written",
        mapkv::MAX_VALUE_LEN
    ))
}

pub fn del(a: Del) -> Res {
    let enc = a.enc.encoding();
    let key = arg(enc, "KEY", a.key)?;
    let db = writable(a.lock, a.sync, None).open(&a.file)?;
    let removed = db.remove(&key)?;
    db.close()?;
    if a.out.json {
        print_json(&json!({"key": b64(&key), "removed": removed}))?;
    }
    if removed {
        Ok(())
    } else {
        Err(not_found(enc, &key))
    }
}

pub fn ttl(a: Ttl) -> Res {
    let enc = a.enc.encoding();
    let key = arg(enc, "KEY", a.key)?;
    let db = read_only(a.lock).open(&a.file)?;
    // `None` is both "no expiry" and "absent": ask again to tell them
    // apart. Should the key expire in between, it is absent.
    let left = db.time_to_live(&key)?;
    let present = left.is_some() || db.contains_key(&key)?;
    db.close()?;
    if a.out.json {
        print_json(&json!({
            "key": b64(&key),
            "present": present,
            "ttl_ms": left.map(|t| t.as_millis() as u64),
            "expires_at_ms": left.map(|t| units::now_ms().saturating_add(t.as_millis() as u64)),
        }))?;
    } else if present {
        let mut out = stdout();
        match left {
            Some(t) => writeln!(out, "{}", units::duration(t))?,
            None => writeln!(out, "no expiry")?,
        }
        out.flush()?;
    }
    if present {
        Ok(())
    } else {
        Err(not_found(enc, &key))
    }
}

pub fn expire(a: Expire) -> Res {
    let enc = a.enc.encoding();
    let key = arg(enc, "KEY", a.key)?;
    let ttl = match a.ttl {
        Expiry::After(d) => Some(d),
        Expiry::Never => None,
    };
    let db = writable(a.lock, a.sync, None).open(&a.file)?;
    let found = db.expire(&key, ttl)?;
    db.close()?;
    if a.out.json {
        print_json(&json!({
            "key": b64(&key),
            "found": found,
            "ttl_ms": ttl.map(|t| t.as_millis() as u64),
        }))?;
    }
    if found {
        Ok(())
    } else {
        Err(not_found(enc, &key))
    }
}

pub fn scan(a: Scan) -> Res {
    let enc = a.enc.encoding();
    let prefix = match a.prefix {
        Some(p) => arg(enc, "--prefix", p)?,
        None => Vec::new(),
    };
    let db = read_only(a.lock).open(&a.file)?;
    let mut out = stdout();
    let mut n = 0u64;
    for item in db.iter() {
        if a.limit.is_some_and(|l| n >= l) {
            break;
        }
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            continue;
        }
        n += 1;
        if a.out.json {
            let obj = if a.keys_only {
                json!({"key": b64(&k)})
            } else {
                json!({"key": b64(&k), "value": b64(&v)})
            };
            serde_json::to_writer(&mut out, &obj).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        } else if a.keys_only {
            writeln!(out, "{}", enc.text(&k))?;
        } else {
            writeln!(out, "{}\t{}", enc.text(&k), enc.text(&v))?;
        }
    }
    out.flush()?;
    db.close()?;
    Ok(())
}

pub fn watch(a: Watch) -> Res {
    let enc = a.enc.encoding();
    let key = a.key.map(|k| arg(enc, "KEY", k)).transpose()?;
    let db = read_only(a.lock).open(&a.file)?;
    let mut pos = db.log_position();
    let mut seen = db.commit_seq();
    let mut printed = 0u64;
    let nap = a.idle_exit.unwrap_or(Duration::from_secs(3600));
    loop {
        let (commits, next) = match db.changes_after(pos, 1024) {
            Err(mapkv::Error::BadPosition { .. }) => {
                // A compaction moved the store to a new file: positions in
                // the old one mean nothing there.
                eprintln!("mapkv: the store was compacted; watching from its new end");
                pos = db.log_position();
                continue;
            }
            r => r?,
        };
        pos = next;
        let mut out = stdout();
        for c in &commits {
            for ch in &c.changes {
                if key.as_deref().is_some_and(|k| k != ch.key()) {
                    continue;
                }
                let value = match ch {
                    mapkv::Change::Put { value, .. } => Some(&value[..]),
                    _ => None,
                };
                if a.out.json {
                    let obj = json!({
                        "seq": c.seq,
                        "op": if value.is_some() { "put" } else { "del" },
                        "key": b64(ch.key()),
                        "value": value.map(b64),
                    });
                    serde_json::to_writer(&mut out, &obj).map_err(io::Error::from)?;
                    out.write_all(b"\n")?;
                } else if let Some(v) = value {
                    writeln!(
                        out,
                        "{}\tput\t{}\t{}",
                        c.seq,
                        enc.text(ch.key()),
                        enc.text(v)
                    )?;
                } else {
                    writeln!(out, "{}\tdel\t{}", c.seq, enc.text(ch.key()))?;
                }
                printed += 1;
                if a.count.is_some_and(|n| printed >= n) {
                    out.flush()?;
                    return Ok(());
                }
            }
        }
        out.flush()?;
        if commits.len() == 1024 {
            continue; // more are waiting
        }
        let w = db.wait_for_change(seen, nap);
        if w.timed_out() && a.idle_exit.is_some() {
            return Ok(());
        }
        seen = w.seq();
    }
}
