//! `mapkv`: inspect and edit mapkv stores from the shell.
//!
//! `mapkv --help` and `mapkv <command> --help` say everything; the README
//! has a tour.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mapkv::{Db, Durability, OpenKind, Options};
use serde_json::json;

mod bytes;
mod ui;

use bytes::{b64, from_b64, Encoding};

const AFTER_HELP: &str = "\
Keys and values are bytes. KEY, VALUE and --prefix arguments are taken as
they are, or as hex (--hex) or base64 (--base64); a key or value that
starts with '-' goes after '--' (mapkv put data.mapkv -- -k -v).

Exit status: 0 success; 1 a negative answer (get or del of an absent key,
check found corruption); 2 an error (bad arguments, missing file, not a
store, I/O error, a store that is damaged, ...). Errors are one line on
stderr: 'mapkv: <message>'.

Read commands (get, scan, stats, check, dump) open the store read-only:
they never create or modify the file, even one that was not closed
cleanly (it is recovered in memory). Any command works while other
processes have the store open; put, del and load take turns with their
writers. A command waits up to --lock-timeout seconds only for a process
that holds the store exclusively (one recovering it after a crash).";

const DUMP_FORMAT: &str = "\
Format (JSON lines, one entry per line, key and value in standard base64):
  {\"key\":\"dXNlcjox\",\"value\":\"YWRh\"}
This round-trips any bytes; 'mapkv load' reads it back. Other fields are
ignored; empty lines are skipped.";

/// Inspect and edit mapkv stores: get, put, del, scan, stats, check,
/// dump, load, compact, repair and watch.
#[derive(Parser, Debug)]
#[command(name = "mapkv", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    global: Global,
}

#[derive(Args, Debug)]
struct Global {
    /// Machine-readable output on stdout (JSON; keys and values in base64).
    #[arg(long, global = true)]
    json: bool,
    /// KEY, VALUE and --prefix arguments are hex; keys and values are
    /// printed as hex.
    #[arg(long, global = true, conflicts_with = "base64")]
    hex: bool,
    /// KEY, VALUE and --prefix arguments are base64; keys and values are
    /// printed as base64.
    #[arg(long, global = true)]
    base64: bool,
    /// Make every commit durable before going on (Durability::Sync). Without
    /// it, writes become durable when the command closes the store.
    #[arg(long, global = true)]
    sync: bool,
    /// Seconds to wait for a process that holds the store exclusively
    /// (recovering it after a crash) before giving up.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30.0)]
    lock_timeout: f64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the value of KEY (exit status 1 if it is absent).
    ///
    /// The value's raw bytes (a newline is added only when stdout is a
    /// terminal), or hex or base64 and a newline with --hex or --base64
    /// (unless --raw).
    Get {
        /// The store's file.
        file: PathBuf,
        /// The key (decoded as --hex or --base64 say).
        key: OsString,
        /// Print the value's raw bytes even with --hex or --base64 (which
        /// then apply to KEY only).
        #[arg(long)]
        raw: bool,
    },
    /// Set KEY to VALUE, or to standard input, or to a file's bytes.
    ///
    /// Without VALUE and --file, the value is standard input read to its end
    /// (raw bytes). Creates the store if it is missing.
    Put {
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
    },
    /// Remove KEY (exit status 1 if it was absent).
    Del {
        /// The store's file.
        file: PathBuf,
        /// The key (decoded as --hex or --base64 say).
        key: OsString,
    },
    /// Print entries, in no particular order.
    ///
    /// One 'KEY<TAB>VALUE' line per entry; with --json, one JSON object per
    /// line (the dump format, so 'mapkv scan --json --prefix P A | mapkv load
    /// B' copies entries). mapkv is a hash store: the order is unspecified
    /// (it follows the index table). Without --hex or --base64, keys and values are printed
    /// as text with \\, \t, \n, \r, \u{..} (control characters) and \xNN
    /// (bytes that are not UTF-8) escaped.
    Scan {
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
    },
    /// Counters and sizes, with pictures of the index load and of the file.
    ///
    /// The file picture shows live records, dead records (overwritten and
    /// removed data, old index tables), the index table, the header (meta
    /// copies and control block) and free space.
    Stats {
        /// The store's file.
        file: PathBuf,
    },
    /// Verify every record's checksums, and the index against the log.
    ///
    /// Exit status 0 clean; 1 corrupted (the message names the offset and
    /// what is wrong); 2 other errors (not a store, missing file, ...).
    Check {
        /// The store's file.
        file: PathBuf,
    },
    /// Write every entry to standard output as JSON lines.
    ///
    /// The order is unspecified. A progress bar shows on stderr when it is
    /// a terminal.
    ///
    /// With --salvage, entries that fail their checks are skipped and
    /// listed on stderr (with their offsets), the others are written, and
    /// the exit status is 1 if anything was skipped.
    #[command(after_help = DUMP_FORMAT)]
    Dump {
        /// The store's file.
        file: PathBuf,
        /// Skip damaged entries (listed on stderr) instead of stopping at
        /// the first one; exit status 1 if any was skipped.
        #[arg(long)]
        salvage: bool,
    },
    /// Rebuild the index from the log, which is the truth.
    ///
    /// Verifies every record of the log, builds a new index table from it
    /// and switches to it (online: other processes keep reading). Reports
    /// what it kept (keys, bytes) and what it dropped (damaged log items,
    /// with offsets). Use it when 'mapkv check' says the log verifies but
    /// the index does not. Exit status 1 if anything was dropped.
    Repair {
        /// The store's file.
        file: PathBuf,
    },
    /// Rewrite the live entries into a new file and give the space of
    /// overwritten and removed data back to the filesystem.
    ///
    /// Online: other processes may keep the store open, reading and
    /// writing; they move to the compacted file by themselves. Crash-safe: a
    /// crash leaves the old store or the new one. Needs free disk space for
    /// the live data. A progress bar shows on stderr when it is a terminal.
    Compact {
        /// The store's file.
        file: PathBuf,
    },
    /// Print changes as they happen, from any process, until interrupted.
    ///
    /// One line per operation of every commit made after the command
    /// starts: 'SEQ<TAB>put<TAB>KEY<TAB>VALUE' or 'SEQ<TAB>del<TAB>KEY' (text
    /// escaped as in scan, or --hex/--base64), or a JSON object per line with
    /// --json. With KEY, only that key's changes. Sleeps on the store's
    /// change notification between commits (no polling); opens the store
    /// read-only.
    Watch {
        /// The store's file.
        file: PathBuf,
        /// Only changes to this key (decoded as --hex or --base64 say).
        key: Option<OsString>,
        /// Stop after N changes (lines).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop when no commit lands for this many seconds.
        #[arg(long, value_name = "SECS")]
        idle_exit: Option<f64>,
    },
    /// Insert the entries of a dump (JSON lines) from standard input.
    ///
    /// Reads standard input or INPUT, commits in batches, then flushes.
    /// Creates the store if it is missing. Each batch is one all-or-nothing commit. On a bad line, the batches
    /// before it stay committed and the error names the line.
    #[command(after_help = DUMP_FORMAT)]
    Load {
        /// The store's file.
        file: PathBuf,
        /// Read this file instead of standard input ('-' is standard input).
        input: Option<PathBuf>,
        /// Entries per commit.
        #[arg(long, value_name = "N", default_value_t = 1000,
              value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
    },
}

/// Why a command did not succeed: the exit status and the line for stderr.
#[derive(Debug)]
struct Fail {
    code: u8,
    msg: Option<String>,
}

impl Fail {
    fn error(msg: impl Into<String>) -> Fail {
        Fail {
            code: 2,
            msg: Some(msg.into()),
        }
    }
    fn negative(msg: impl Into<String>) -> Fail {
        Fail {
            code: 1,
            msg: Some(msg.into()),
        }
    }
}

impl From<mapkv::Error> for Fail {
    fn from(e: mapkv::Error) -> Fail {
        Fail::error(e.to_string())
    }
}

/// Writing to stdout: a closed pipe (`mapkv scan ... | head`) ends the
/// command quietly and successfully.
impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Fail { code: 0, msg: None }
        } else {
            Fail::error(format!("writing output: {e}"))
        }
    }
}

type Res<T = ()> = Result<T, Fail>;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("mapkv: internal error: {info}");
        std::process::exit(2);
    }));
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(m) = f.msg {
                eprintln!("mapkv: {m}");
            }
            ExitCode::from(f.code)
        }
    }
}

struct Ctx {
    json: bool,
    enc: Encoding,
    sync: bool,
    lock_timeout: std::time::Duration,
}

impl Ctx {
    fn arg(&self, what: &str, a: OsString) -> Res<Vec<u8>> {
        self.enc.decode(what, a).map_err(Fail::error)
    }

    fn open_read(&self, file: &Path) -> Res<Db> {
        Ok(Options::new()
            .read_only(true)
            .create(false)
            .lock_timeout(self.lock_timeout)
            .open(file)?)
    }

    fn open_write(&self, file: &Path, create: bool) -> Res<Db> {
        let d = if self.sync {
            Durability::Sync
        } else {
            Durability::None
        };
        Ok(Options::new()
            .create(create)
            .durability(d)
            .lock_timeout(self.lock_timeout)
            .open(file)?)
    }
}

fn run(cli: Cli) -> Res {
    let g = cli.global;
    let cx = Ctx {
        json: g.json,
        enc: if g.hex {
            Encoding::Hex
        } else if g.base64 {
            Encoding::Base64
        } else {
            Encoding::Raw
        },
        sync: g.sync,
        lock_timeout: std::time::Duration::try_from_secs_f64(g.lock_timeout).map_err(|_| {
            Fail::error(format!("--lock-timeout {}: not a duration", g.lock_timeout))
        })?,
    };
    match cli.cmd {
        Cmd::Get { file, key, raw } => get(&cx, &file, key, raw),
        Cmd::Put {
            file,
            key,
            value,
            from_file,
        } => put(&cx, &file, key, value, from_file),
        Cmd::Del { file, key } => del(&cx, &file, key),
        Cmd::Scan {
            file,
            prefix,
            limit,
            keys_only,
        } => scan(&cx, &file, prefix, limit, keys_only),
        Cmd::Stats { file } => stats(&cx, &file),
        Cmd::Check { file } => check(&cx, &file),
        Cmd::Dump { file, salvage } => dump(&cx, &file, salvage),
        Cmd::Repair { file } => repair(&cx, &file),
        Cmd::Load { file, input, batch } => load(&cx, &file, input, batch),
        Cmd::Compact { file } => compact(&cx, &file),
        Cmd::Watch {
            file,
            key,
            count,
            idle_exit,
        } => watch(&cx, &file, key, count, idle_exit),
    }
}

fn stdout() -> BufWriter<io::StdoutLock<'static>> {
    BufWriter::with_capacity(1 << 16, io::stdout().lock())
}

fn print_json(v: &serde_json::Value) -> Res {
    let mut out = stdout();
    serde_json::to_writer(&mut out, v).map_err(io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn opened_name(k: OpenKind) -> &'static str {
    match k {
        OpenKind::Clean => "clean",
        OpenKind::Replayed => "replayed (a process had crashed; recovered in memory)",
        OpenKind::Rebuilt => "rebuilt (the index was rebuilt from the log)",
        OpenKind::Joined => "joined (another process has the store open)",
        _ => "recovered",
    }
}

fn opened_tag(k: OpenKind) -> &'static str {
    match k {
        OpenKind::Clean => "clean",
        OpenKind::Replayed => "replayed",
        OpenKind::Rebuilt => "rebuilt",
        OpenKind::Joined => "joined",
        _ => "other",
    }
}

fn not_found(cx: &Ctx, key: &[u8]) -> Fail {
    Fail::negative(format!("key not found: {}", cx.enc.text(key)))
}

fn get(cx: &Ctx, file: &Path, key: OsString, raw: bool) -> Res {
    let key = cx.arg("KEY", key)?;
    let db = cx.open_read(file)?;
    let value = db.get(&key)?;
    db.close()?;
    match (value, cx.json) {
        (Some(v), true) => print_json(&json!({"key": b64(&key), "value": b64(&v)})),
        (None, true) => {
            print_json(&json!({"key": b64(&key), "value": null}))?;
            Err(not_found(cx, &key))
        }
        (Some(v), false) => {
            let mut out = stdout();
            match if raw { Encoding::Raw } else { cx.enc } {
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
        (None, false) => Err(not_found(cx, &key)),
    }
}

fn compact(cx: &Ctx, file: &Path) -> Res {
    let db = cx.open_write(file, false)?;
    let pb = ui::progress(None, false, "compacting");
    let mut total_set = false;
    let r = db.compact_with_progress(&mut |done, total| {
        if !total_set {
            pb.set_length(total);
            total_set = true;
        }
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let r = r?;
    db.close()?;
    if cx.json {
        return print_json(&json!({
            "keys": r.keys,
            "len_before": r.len_before,
            "len_after": r.len_after,
            "live_bytes": r.live_bytes,
            "caught_up": r.caught_up,
            "writer_pause_us": r.writer_pause.as_micros() as u64,
            "duration_us": r.duration.as_micros() as u64,
        }));
    }
    let mut out = stdout();
    writeln!(
        out,
        "compacted {}: {} -> {} ({} live keys, {} of live records); \
         writers paused {:.1?}, {:.1?} in all",
        file.display(),
        ui::size(r.len_before),
        ui::size(r.len_after),
        ui::count(r.keys),
        ui::size(r.live_bytes),
        r.writer_pause,
        r.duration
    )?;
    out.flush()?;
    Ok(())
}

fn watch(
    cx: &Ctx,
    file: &Path,
    key: Option<OsString>,
    count: Option<u64>,
    idle_exit: Option<f64>,
) -> Res {
    let key = key.map(|k| cx.arg("KEY", k)).transpose()?;
    let idle = idle_exit
        .map(|s| {
            std::time::Duration::try_from_secs_f64(s)
                .map_err(|_| Fail::error(format!("--idle-exit {s}: not a duration")))
        })
        .transpose()?;
    let db = cx.open_read(file)?;
    let mut pos = db.log_position();
    let mut seen = db.commit_seq();
    let mut printed = 0u64;
    let nap = idle.unwrap_or(std::time::Duration::from_secs(3600));
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
                if cx.json {
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
                        cx.enc.text(ch.key()),
                        cx.enc.text(v)
                    )?;
                } else {
                    writeln!(out, "{}\tdel\t{}", c.seq, cx.enc.text(ch.key()))?;
                }
                printed += 1;
                if count.is_some_and(|n| printed >= n) {
                    out.flush()?;
                    return Ok(());
                }
            }
        }
        out.flush()?;
        if commits.len() == 1024 {
            continue; // more are waiting
        }
        let now = db.wait_for_change(seen, nap).seq();
        if now == seen && idle.is_some() {
            return Ok(());
        }
        seen = now;
    }
}

fn put(
    cx: &Ctx,
    file: &Path,
    key: OsString,
    value: Option<OsString>,
    from_file: Option<PathBuf>,
) -> Res {
    let key = cx.arg("KEY", key)?;
    let value = match (value, from_file) {
        (Some(v), _) => cx.arg("VALUE", v)?,
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
    let db = cx.open_write(file, true)?;
    db.insert(&key, &value)?;
    db.close()?;
    if cx.json {
        print_json(&json!({"ok": true, "key": b64(&key), "value_len": value.len()}))?;
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

fn del(cx: &Ctx, file: &Path, key: OsString) -> Res {
    let key = cx.arg("KEY", key)?;
    let db = cx.open_write(file, false)?;
    let removed = db.remove(&key)?;
    db.close()?;
    if cx.json {
        print_json(&json!({"key": b64(&key), "removed": removed}))?;
    }
    if removed {
        Ok(())
    } else {
        Err(not_found(cx, &key))
    }
}

fn scan(
    cx: &Ctx,
    file: &Path,
    prefix: Option<OsString>,
    limit: Option<u64>,
    keys_only: bool,
) -> Res {
    let prefix = match prefix {
        Some(p) => cx.arg("--prefix", p)?,
        None => Vec::new(),
    };
    let db = cx.open_read(file)?;
    let mut out = stdout();
    let mut n = 0u64;
    for item in db.iter() {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            continue;
        }
        n += 1;
        if cx.json {
            let obj = if keys_only {
                json!({"key": b64(&k)})
            } else {
                json!({"key": b64(&k), "value": b64(&v)})
            };
            serde_json::to_writer(&mut out, &obj).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        } else if keys_only {
            writeln!(out, "{}", cx.enc.text(&k))?;
        } else {
            writeln!(out, "{}\t{}", cx.enc.text(&k), cx.enc.text(&v))?;
        }
    }
    out.flush()?;
    db.close()?;
    Ok(())
}

fn stats(cx: &Ctx, file: &Path) -> Res {
    let db = cx.open_read(file)?;
    let st = db.stats();
    let cache = db.cache_stats();
    db.close()?;
    let header = st.tail.saturating_sub(st.used_bytes);
    if cx.json {
        print_json(&json!({
            "path": file.to_string_lossy(),
            "keys": st.keys,
            "file_len": st.file_len,
            "live_bytes": st.live_bytes,
            "dead_bytes": st.dead_bytes,
            "index_bytes": st.index_bytes,
            "header_bytes": header,
            "free_bytes": st.file_len.saturating_sub(st.tail),
            "used_bytes": st.used_bytes,
            "index_capacity": st.index_capacity,
            "index_used": st.index_used,
            "index_load": st.index_load,
            "tail": st.tail,
            "durable_tail": st.durable_tail,
            "commits": st.commits,
            "generation": st.generation,
            "remaps": st.remaps,
            "opened": opened_tag(st.opened),
            "capacity": cache.capacity,
            "evictions": cache.evictions,
            "eviction_runs": cache.eviction_runs,
            "expirations": cache.expirations,
        }))
    } else {
        let mut out = stdout();
        out.write_all(
            ui::stats_text(
                &file.display().to_string(),
                &st,
                &cache,
                opened_name(st.opened),
            )
            .as_bytes(),
        )?;
        out.flush()?;
        Ok(())
    }
}

fn check(cx: &Ctx, file: &Path) -> Res {
    let pb = ui::progress(None, false, "checking");
    let result = Options::new()
        .read_only(true)
        .create(false)
        .open(file)
        .and_then(|db| {
            let opened = db.stats().opened;
            let r = db.check()?;
            db.close()?;
            Ok((r, opened))
        });
    pb.finish_and_clear();
    let (r, opened) = match result {
        Ok(x) => x,
        Err(e) => {
            // Damage found by the open's own checks is corruption too.
            let (offset, what) = match &e {
                mapkv::Error::Corrupted { offset, what, .. } => (Some(*offset), Some(what.clone())),
                _ => (None, None),
            };
            if cx.json {
                print_json(&json!({
                    "ok": false,
                    "corrupted": offset.is_some(),
                    "error": e.to_string(),
                    "offset": offset,
                    "what": what,
                }))?;
            }
            let mut msg = e.to_string();
            if what
                .as_deref()
                .is_some_and(|w| w.contains("the log verifies"))
            {
                msg.push_str(&format!(
                    " (run 'mapkv repair {}' to rebuild the index from the log)",
                    file.display()
                ));
            }
            return Err(Fail {
                code: if offset.is_some() { 1 } else { 2 },
                msg: Some(msg),
            });
        }
    };
    if cx.json {
        return print_json(&json!({
            "ok": true,
            "records": r.records,
            "commits": r.commits,
            "index_chunks": r.index_chunks,
            "live_keys": r.live_keys,
            "live_bytes": r.live_bytes,
            "tail": r.tail,
            "opened": opened_tag(opened),
        }));
    }
    let mut out = stdout();
    writeln!(out, "ok: {}", file.display())?;
    writeln!(
        out,
        "  {} in {}, {}",
        ui::plural(r.records, "record"),
        ui::plural(r.commits, "commit"),
        ui::plural(r.index_chunks, "index chunk")
    )?;
    writeln!(
        out,
        "  {} live keys ({} of records), log verified up to offset {}",
        ui::count(r.live_keys),
        ui::size(r.live_bytes),
        ui::count(r.tail)
    )?;
    if opened != OpenKind::Clean {
        writeln!(
            out,
            "  the store was not closed cleanly: {}",
            opened_name(opened)
        )?;
    }
    out.flush()?;
    Ok(())
}

fn dump(cx: &Ctx, file: &Path, salvage: bool) -> Res {
    let db = cx.open_read(file)?;
    let pb = ui::progress(Some(db.len()), false, "dumping");
    let mut out = stdout();
    let mut n = 0u64;
    let mut skipped = 0u64;
    let result = (|| -> Res {
        for item in db.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(mapkv::Error::Corrupted { offset, what, .. }) if salvage => {
                    pb.suspend(|| {
                        eprintln!("mapkv: skipped damaged entry at offset {offset}: {what}")
                    });
                    skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            serde_json::to_writer(&mut out, &json!({"key": b64(&k), "value": b64(&v)}))
                .map_err(io::Error::from)?;
            out.write_all(b"\n")?;
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
    let entries = |n| ui::plural(n, "entry").replace("entrys", "entries");
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

fn repair(cx: &Ctx, file: &Path) -> Res {
    let db = cx.open_write(file, false)?;
    let pb = ui::progress(None, false, "repairing");
    let r = db.repair();
    pb.finish_and_clear();
    let r = r?;
    db.close()?;
    if cx.json {
        print_json(&json!({
            "keys": r.keys,
            "live_bytes": r.live_bytes,
            "tail": r.tail,
            "index_mismatches": r.index_mismatches,
            "dropped": r.dropped.iter().map(|d| json!({"offset": d.offset, "what": d.what})).collect::<Vec<_>>(),
        }))?;
    } else {
        let mut out = stdout();
        writeln!(
            out,
            "repaired {}: index rebuilt from the log; kept {} live keys ({} of live records), \
             log verified up to offset {}; {} of the old index disagreed with the log",
            file.display(),
            ui::count(r.keys),
            ui::size(r.live_bytes),
            ui::count(r.tail),
            ui::plural(r.index_mismatches, "slot"),
        )?;
        for d in &r.dropped {
            writeln!(
                out,
                "  dropped: damaged log item at offset {}: {}",
                d.offset, d.what
            )?;
        }
        if r.dropped.is_empty() {
            writeln!(out, "  dropped: nothing")?;
        }
        out.flush()?;
    }
    if !r.dropped.is_empty() {
        return Err(Fail { code: 1, msg: None });
    }
    Ok(())
}

fn load(cx: &Ctx, file: &Path, input: Option<PathBuf>, batch: u64) -> Res {
    let (reader, name, len): (Box<dyn Read>, String, Option<u64>) = match input {
        Some(p) if p.as_os_str() != "-" => {
            let f = File::open(&p).map_err(|e| Fail::error(format!("{}: {e}", p.display())))?;
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
    };
    let db = cx.open_write(file, true)?;
    let pb = ui::progress(len, true, "loading");
    let mut rd = BufReader::with_capacity(1 << 16, reader);
    let mut line = Vec::new();
    let mut lineno = 0u64;
    let mut loaded = 0u64;
    let mut batches = 0u64;
    let mut b = db.batch();
    let result = (|| -> Res {
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
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (k, v) = parse_entry(&line).map_err(|e| {
                Fail::error(format!(
                    "{name}: line {lineno}: {e} ({} entries committed before it)",
                    loaded
                ))
            })?;
            b.insert(k, v);
            if b.len() as u64 >= batch {
                let n = b.len() as u64;
                std::mem::replace(&mut b, db.batch()).commit()?;
                loaded += n;
                batches += 1;
            }
        }
        if !b.is_empty() {
            let n = b.len() as u64;
            std::mem::replace(&mut b, db.batch()).commit()?;
            loaded += n;
            batches += 1;
        }
        Ok(())
    })();
    pb.finish_and_clear();
    result?;
    db.flush()?;
    db.close()?;
    if cx.json {
        print_json(&json!({"ok": true, "loaded": loaded, "batches": batches}))?;
    } else if io::stderr().is_terminal() {
        eprintln!(
            "mapkv: loaded {} in {}",
            ui::plural(loaded, "entry").replace("entrys", "entries"),
            ui::plural(batches, "commit")
        );
    }
    Ok(())
}

/// One line of a dump: `{"key":"<base64>","value":"<base64>"}`.
fn parse_entry(line: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let s = v
            .get(name)
            .ok_or_else(|| format!("no \"{name}\" field"))?
            .as_str()
            .ok_or_else(|| format!("\"{name}\" is not a string"))?;
        from_b64(s).map_err(|e| format!("\"{name}\" is not base64: {e}"))
    };
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    Ok((field("key")?, field("value")?))
}
