//! `mapkv`: inspect and edit mapkv stores from the shell.
//!
//! `mapkv --help` and `mapkv <command> --help` say everything; the README
//! has a tour. This file defines the commands and their options and opens
//! stores; the commands live in `keys.rs` (one key at a time, and watching),
//! `admin.rs` (the whole store) and `transfer.rs` (dump and load).

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mapkv::{Durability, Options};

mod admin;
mod bytes;
mod format;
mod keys;
mod transfer;
mod ui;
mod units;

use bytes::Encoding;

const AFTER_HELP: &str = "\
Keys and values are bytes. KEY, VALUE and --prefix arguments are taken as
they are, or as hex (--hex) or base64 (--base64); a key or value that
starts with '-' goes after '--' (mapkv put data.mapkv -- -k -v). Each
command takes only the options it uses: 'mapkv <command> --help'.

Durations (--ttl, expire) are a number and a unit: 500ms, 30s, 5m, 2h, 1d,
or several (1h30m). Sizes (--capacity, set-capacity) are bytes, or K, M, G
or T (powers of 1024): 64M.

Exit status: 0 success; 1 a negative answer (get, del, ttl or expire of an
absent key; check found corruption; dump --salvage skipped entries); 2 an
error (bad arguments, missing file, not a store, I/O error, a store that
is damaged, ...). Errors are one line on stderr: 'mapkv: <message>'.

Read commands (get, ttl, scan, stats, check, dump, watch) open the store
read-only: they never create or modify the file, even one that was not
closed cleanly (it is recovered in memory). Any command works while other
processes have the store open; writing commands take turns with their
writers. A command waits up to --lock-timeout seconds only for a process
that holds the store exclusively (one recovering it after a crash).";

/// Inspect and edit mapkv stores: get, put, del, ttl, expire, scan, stats,
/// check, dump, load, copy, compact, repair, set-capacity and watch.
#[derive(Parser, Debug)]
#[command(name = "mapkv", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--hex` and `--base64`: for commands that take keys or values.
#[derive(Args, Debug, Clone, Copy)]
struct EncArgs {
    /// KEY, VALUE and --prefix arguments are hex; keys and values are
    /// printed as hex.
    #[arg(long, conflicts_with = "base64")]
    hex: bool,
    /// KEY, VALUE and --prefix arguments are base64; keys and values are
    /// printed as base64.
    #[arg(long)]
    base64: bool,
}

impl EncArgs {
    fn encoding(self) -> Encoding {
        if self.hex {
            Encoding::Hex
        } else if self.base64 {
            Encoding::Base64
        } else {
            Encoding::Raw
        }
    }
}

/// `--json`: for commands with something to report.
#[derive(Args, Debug, Clone, Copy)]
struct JsonArg {
    /// Machine-readable output on stdout (JSON; keys and values in base64).
    #[arg(long)]
    json: bool,
}

/// `--lock-timeout`: for every command that opens a store.
#[derive(Args, Debug, Clone, Copy)]
struct LockArg {
    /// Seconds to wait for a process that holds the store exclusively
    /// (recovering it after a crash) before giving up.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    lock_timeout: Duration,
}

/// `--sync`: for commands that write entries.
#[derive(Args, Debug, Clone, Copy)]
struct SyncArg {
    /// Make every commit durable before going on (Durability::Sync).
    /// Without it, writes become durable when the command closes the store.
    #[arg(long)]
    sync: bool,
}

/// `--capacity`: for commands that may create the store.
#[derive(Args, Debug, Clone, Copy)]
struct CapacityArg {
    /// Make a new store a cache bounded to this size (rounded down to a
    /// multiple of 64 KiB, at least 256 KiB). An existing store keeps its
    /// own: a different capacity is an error (change it with 'mapkv
    /// set-capacity').
    #[arg(long, value_name = "BYTES", value_parser = units::parse_size)]
    capacity: Option<u64>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|f| Duration::try_from_secs_f64(f).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the value of KEY (exit status 1 if it is absent).
    ///
    /// The value's raw bytes (a newline is added only when stdout is a
    /// terminal), or hex or base64 and a newline with --hex or --base64
    /// (unless --raw).
    Get(keys::Get),
    /// Set KEY to VALUE, or to standard input, or to a file's bytes.
    ///
    /// Without VALUE and --file, the value is standard input read to its end
    /// (raw bytes). Creates the store if it is missing.
    Put(keys::Put),
    /// Remove KEY (exit status 1 if it was absent).
    Del(keys::Del),
    /// Print how long KEY has until it expires.
    ///
    /// The time left (like 29s950ms), or 'no expiry'. Exit status 1 if the
    /// key is absent (or has expired).
    Ttl(keys::Ttl),
    /// Set or clear the expiry of KEY, keeping its value.
    ///
    /// 'mapkv expire FILE KEY 30s' makes it expire 30 seconds from now;
    /// 'mapkv expire FILE KEY never' makes it permanent. Exit status 1 if
    /// the key is absent (or has expired).
    Expire(keys::Expire),
    /// Print entries, in no particular order.
    ///
    /// One 'KEY<TAB>VALUE' line per entry; with --json, one JSON object per
    /// line (the dump format, so 'mapkv scan --json --prefix P A | mapkv load
    /// B' copies entries, without their expiries). mapkv is a hash store:
    /// the order is unspecified (it follows the index table). Without --hex
    /// or --base64, keys and values are printed as text with \\, \t, \n,
    /// \r, \u{..} (control characters) and \xNN (bytes that are not UTF-8)
    /// escaped.
    Scan(keys::Scan),
    /// Counters and sizes, with pictures of the index load and of the file.
    ///
    /// Keys (live, and expired ones not dropped yet), the file's parts, the
    /// index, commits and, for a cache, its capacity, hit ratio (reads by
    /// every process), evictions and expired entries dropped. The file
    /// picture shows live records, dead records (overwritten and removed
    /// data, old index tables), the index table, the header (meta copies
    /// and control block) and free space.
    Stats(admin::Stats),
    /// Verify every record's checksums, and the index against the log.
    ///
    /// Exit status 0 clean; 1 corrupted (the message names the offset and
    /// what is wrong); 2 other errors (not a store, missing file, ...).
    Check(admin::Check),
    /// Write every entry, with its expiry, to standard output.
    ///
    /// JSON lines by default, escaped text with --text (see below). The
    /// order is unspecified. A progress bar shows on stderr when it is a
    /// terminal.
    ///
    /// With --salvage, entries that fail their checks are skipped and
    /// listed on stderr (with their offsets), the others are written, and
    /// the exit status is 1 if anything was skipped.
    #[command(after_help = format::HELP)]
    Dump(transfer::Dump),
    /// Insert the entries of a dump from standard input or INPUT.
    ///
    /// Commits in batches, then flushes. Entries keep their expiries; those
    /// already expired are skipped. A store that does not exist is built in
    /// a temporary file next to it (.NAME.load-PID) and moved into place
    /// at the end: a failed load leaves no file behind (an interrupted one
    /// may leave the temporary file). Into an existing store, each
    /// batch is one all-or-nothing commit: on a bad line, the batches
    /// before it stay committed and the error names the line.
    #[command(after_help = format::HELP)]
    Load(transfer::Load),
    /// Write a compacted copy of the store to a new file, while other
    /// processes go on reading and writing.
    ///
    /// The copy holds the store as of one commit (every commit before it
    /// whole, nothing after it), without dead space, closed cleanly and
    /// durable when the command ends; like 'mdb_copy -c'. DEST must not
    /// exist. Writers are never paused; compactions and evictions wait.
    Copy(admin::Copy),
    /// Rewrite the live entries into a new file and give the space of
    /// overwritten and removed data back to the filesystem.
    ///
    /// Online: other processes may keep the store open, reading and
    /// writing; they move to the compacted file by themselves. Crash-safe: a
    /// crash leaves the old store or the new one. Needs free disk space for
    /// the live data. A progress bar shows on stderr when it is a terminal.
    Compact(admin::Compact),
    /// Rebuild the index from the log, which is the truth.
    ///
    /// Verifies every record of the log, builds a new index table from it
    /// and switches to it (online: other processes keep reading). Reports
    /// what it kept (keys, bytes) and what it dropped (damaged log items,
    /// with offsets). Use it when 'mapkv check' says the log verifies but
    /// the index does not. Exit status 1 if anything was dropped.
    Repair(admin::Repair),
    /// Change a cache's capacity (the bound on its file), for every process.
    ///
    /// A store that is not a cache becomes one. If the store is larger than
    /// the new capacity, an eviction brings it under before the command
    /// ends. Processes that open the store with a capacity must then ask
    /// for this one.
    SetCapacity(admin::SetCapacity),
    /// Print changes as they happen, from any process, until interrupted.
    ///
    /// One line per operation of every commit made after the command
    /// starts: 'SEQ<TAB>put<TAB>KEY<TAB>VALUE' or 'SEQ<TAB>del<TAB>KEY' (text
    /// escaped as in scan, or --hex/--base64), or a JSON object per line with
    /// --json. With KEY, only that key's changes. Sleeps on the store's
    /// change notification between commits (no polling); opens the store
    /// read-only.
    Watch(keys::Watch),
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
        match e {
            // The library's message names its API; say what to type.
            mapkv::Error::CapacityMismatch {
                path,
                stored,
                requested,
            } => Fail::error(format!(
                "{}: the store's capacity is {}, but --capacity asked for {} ({requested} bytes); \
                 leave out --capacity to keep the store's, or change it with \
                 'mapkv set-capacity {} {requested}'",
                path.display(),
                if stored == 0 {
                    "none (it is not a cache)".to_string()
                } else {
                    format!("{} ({stored} bytes)", ui::size(stored))
                },
                ui::size(requested),
                path.display(),
            )),
            e => Fail::error(e.to_string()),
        }
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
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(m) = f.msg {
                eprintln!("mapkv: {m}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cmd: Cmd) -> Res {
    match cmd {
        Cmd::Get(a) => keys::get(a),
        Cmd::Put(a) => keys::put(a),
        Cmd::Del(a) => keys::del(a),
        Cmd::Ttl(a) => keys::ttl(a),
        Cmd::Expire(a) => keys::expire(a),
        Cmd::Scan(a) => keys::scan(a),
        Cmd::Watch(a) => keys::watch(a),
        Cmd::Stats(a) => admin::stats(a),
        Cmd::Check(a) => admin::check(a),
        Cmd::Copy(a) => admin::copy(a),
        Cmd::Compact(a) => admin::compact(a),
        Cmd::Repair(a) => admin::repair(a),
        Cmd::SetCapacity(a) => admin::set_capacity(a),
        Cmd::Dump(a) => transfer::dump(a),
        Cmd::Load(a) => transfer::load(a),
    }
}

/// Options for a command that only reads: never creates or writes the file.
fn read_only(lock: LockArg) -> Options {
    Options::new()
        .read_only(true)
        .create(false)
        .lock_timeout(lock.lock_timeout)
}

/// Options for a command that writes; it does not create the store unless
/// the command says so.
fn writable(lock: LockArg, sync: SyncArg, capacity: Option<u64>) -> Options {
    let o = Options::new()
        .create(false)
        .durability(if sync.sync {
            Durability::Sync
        } else {
            Durability::None
        })
        .lock_timeout(lock.lock_timeout);
    match capacity {
        Some(c) => o.capacity(c),
        None => o,
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
