//! Commands on the whole store: stats, check, copy, compact, repair,
//! set-capacity.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use mapkv::{OpenKind, Options};
use serde_json::json;

use crate::{print_json, read_only, stdout, ui, writable, Fail, JsonArg, LockArg, Res, SyncArg};

#[derive(Args, Debug)]
pub struct Stats {
    /// The store's file.
    file: PathBuf,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Check {
    /// The store's file.
    file: PathBuf,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Copy {
    /// The store's file.
    src: PathBuf,
    /// The new file (it must not exist).
    dest: PathBuf,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Compact {
    /// The store's file.
    file: PathBuf,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct Repair {
    /// The store's file.
    file: PathBuf,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

#[derive(Args, Debug)]
pub struct SetCapacity {
    /// The store's file.
    file: PathBuf,
    /// The new capacity (bytes, or K, M, G, T: 64M), rounded down to a
    /// multiple of 64 KiB, at least 256 KiB.
    #[arg(value_parser = crate::units::parse_size)]
    bytes: u64,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    lock: LockArg,
}

/// Options for the commands here that write: durability does not matter
/// to them (they sync what they write themselves).
fn admin_writable(lock: LockArg) -> Options {
    writable(lock, SyncArg { sync: false }, None)
}

pub fn opened_name(k: OpenKind) -> &'static str {
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

pub fn stats(a: Stats) -> Res {
    let file = &a.file;
    let db = read_only(a.lock).open(file)?;
    let st = db.stats();
    let cache = db.cache_stats();
    db.close()?;
    let header = st.tail.saturating_sub(st.used_bytes);
    if a.out.json {
        return print_json(&json!({
            "path": file.to_string_lossy(),
            "keys": st.keys,
            "expired_keys": st.expired_keys,
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
            "hits": cache.hits,
            "misses": cache.misses,
            "hit_ratio": cache.hit_ratio(),
            "evictions": cache.evictions,
            "eviction_runs": cache.eviction_runs,
            "expirations": cache.expirations,
        }));
    }
    let mut out = stdout();
    let text = ui::stats_text(
        &file.display().to_string(),
        &st,
        &cache,
        opened_name(st.opened),
    );
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub fn check(a: Check) -> Res {
    let file = &a.file;
    let pb = ui::progress(None, false, "checking");
    let result = read_only(a.lock).open(file).and_then(|db| {
        let r = db.check()?;
        // After the check, so that the count is at least the log's.
        let st = db.stats();
        db.close()?;
        Ok((r, st))
    });
    pb.finish_and_clear();
    let (r, st) = match result {
        Ok(x) => x,
        Err(e) => {
            // Damage found by the open's own checks is corruption too.
            let (offset, what) = match &e {
                mapkv::Error::Corrupted { offset, what, .. } => (Some(*offset), Some(what.clone())),
                _ => (None, None),
            };
            if a.out.json {
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
    if a.out.json {
        return print_json(&json!({
            "ok": true,
            "commits": st.commits,
            "commits_in_log": r.commits,
            "records": r.records,
            "index_chunks": r.index_chunks,
            "live_keys": r.live_keys,
            "expired_keys": r.expired_keys,
            "live_bytes": r.live_bytes,
            "tail": r.tail,
            "opened": opened_tag(st.opened),
        }));
    }
    let mut out = stdout();
    writeln!(out, "ok: {}", file.display())?;
    writeln!(out, "  {}", ui::commits(st.commits, r.commits))?;
    writeln!(
        out,
        "  {} and {} verified, log verified up to offset {}",
        ui::plural(r.records, "record", "records"),
        ui::plural(r.index_chunks, "index chunk", "index chunks"),
        ui::count(r.tail)
    )?;
    writeln!(
        out,
        "  {} ({} of records){}",
        ui::plural(r.live_keys, "live key", "live keys"),
        ui::size(r.live_bytes),
        ui::expired_suffix(r.expired_keys),
    )?;
    if st.opened != OpenKind::Clean {
        writeln!(
            out,
            "  the store was not closed cleanly: {}",
            opened_name(st.opened)
        )?;
    }
    out.flush()?;
    Ok(())
}

pub fn copy(a: Copy) -> Res {
    // A backup takes the store's compaction lock: it needs a handle that
    // may write, though it writes nothing to the store.
    let db = admin_writable(a.lock).open(&a.src)?;
    let pb = ui::progress(None, false, "copying");
    let r = db.backup(&a.dest);
    pb.finish_and_clear();
    let r = r?;
    db.close()?;
    if a.out.json {
        return print_json(&json!({
            "src": a.src.to_string_lossy(),
            "dest": a.dest.to_string_lossy(),
            "keys": r.keys,
            "len": r.len_after,
            "live_bytes": r.live_bytes,
            "expired_dropped": r.expired,
            "duration_us": r.duration.as_micros() as u64,
        }));
    }
    let mut out = stdout();
    writeln!(
        out,
        "copied {} to {}: {} ({} of live records), file {}; {:.1?}",
        a.src.display(),
        a.dest.display(),
        ui::plural(r.keys, "live key", "live keys"),
        ui::size(r.live_bytes),
        ui::size(r.len_after),
        r.duration
    )?;
    out.flush()?;
    Ok(())
}

pub fn compact(a: Compact) -> Res {
    let file = &a.file;
    let db = admin_writable(a.lock).open(file)?;
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
    if a.out.json {
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
        "compacted {}: {} -> {} ({}, {} of live records); \
         writers paused {:.1?}, {:.1?} in all",
        file.display(),
        ui::size(r.len_before),
        ui::size(r.len_after),
        ui::plural(r.keys, "live key", "live keys"),
        ui::size(r.live_bytes),
        r.writer_pause,
        r.duration
    )?;
    out.flush()?;
    Ok(())
}

pub fn repair(a: Repair) -> Res {
    let file = &a.file;
    let db = admin_writable(a.lock).open(file)?;
    let pb = ui::progress(None, false, "repairing");
    let r = db.repair();
    pb.finish_and_clear();
    let r = r?;
    db.close()?;
    if a.out.json {
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
            "repaired {}: index rebuilt from the log; kept {} ({} of live records), \
             log verified up to offset {}; {} of the old index disagreed with the log",
            file.display(),
            ui::plural(r.keys, "live key", "live keys"),
            ui::size(r.live_bytes),
            ui::count(r.tail),
            ui::plural(r.index_mismatches, "slot", "slots"),
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

pub fn set_capacity(a: SetCapacity) -> Res {
    let file: &Path = &a.file;
    let db = admin_writable(a.lock).open(file)?;
    let before = db.cache_stats();
    db.set_capacity(a.bytes)?;
    let after = db.cache_stats();
    db.close()?;
    let evicted = after.evictions.saturating_sub(before.evictions);
    if a.out.json {
        return print_json(&json!({
            "capacity": after.capacity,
            "was": before.capacity,
            "evicted": evicted,
            "file_len": after.file_len,
        }));
    }
    let was = if before.capacity == 0 {
        "none: it was not a cache".to_string()
    } else {
        ui::size(before.capacity)
    };
    let mut out = stdout();
    write!(
        out,
        "{}: capacity {} ({} bytes; was {})",
        file.display(),
        ui::size(after.capacity),
        ui::count(after.capacity),
        was
    )?;
    if evicted > 0 {
        write!(
            out,
            "; evicted {} to fit",
            ui::plural(evicted, "entry", "entries")
        )?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}
