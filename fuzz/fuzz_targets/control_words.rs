//! `control_words`: control-block words changed to anything while a handle
//! holds the store open (so the control block is live and no open resets
//! it), between and during operations, compactions and evictions.
//!
//! Nothing is compared with a model: the file is damaged on purpose. Every
//! call must return (`Ok` or an `Err`); a panic, an abort (a huge
//! allocation) or a hang (libFuzzer's timeout) is a failure.
//!
//! Every word of the control block that mapkv reads is changed: the state
//! words from `version` to `evict_runs`, among them the writer's pid and
//! the writer count, the two words of the session boot id, the futex
//! waiter count and the writer lock word. A lock word that names a live handle's
//! registration makes writers time out (`lock_timeout` is 200 ms here); one
//! that names nobody is taken over and repaired.

#![no_main]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mapkv::testing::layout::control as c;
use mapkv::testing::CONTROL_OFFSET;
use mapkv::Options;

/// Offsets (in the control block) of the words that may be changed.
const WORDS: [usize; 24] = [
    c::VERSION,
    c::TAIL,
    c::SEQ_GEN,
    c::INDEX_DESC,
    c::INDEX_USED,
    c::LIVE_KEYS,
    c::LIVE_BYTES,
    c::GENERATION,
    c::FILE_LEN,
    c::DURABLE_TAIL,
    c::DURABLE_SEQ_GEN,
    c::DURABLE_LEN,
    c::META_SEQ,
    c::SYNCED_COPY,
    c::WRITER,
    c::WRITERS,
    c::CAPACITY,
    c::EVICTED,
    c::EXPIRED,
    c::EVICT_RUNS,
    c::SESSION_BOOT,
    c::SESSION_BOOT + 8,
    c::WAITERS,
    c::WRITER_LOCK,
];
const MAX_OPS: usize = 48;

#[derive(Arbitrary, Debug)]
enum Value {
    Zero,
    One,
    Pow39,
    Pow60,
    Max,
    /// The word's current value plus or minus a little.
    Nudge(i16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Poke {
        word: u8,
        value: Value,
    },
    Insert {
        key: u8,
        len: u16,
    },
    Remove {
        key: u8,
    },
    Get {
        key: u8,
    },
    Fill {
        n: u8,
    },
    Iter,
    Stats,
    Check,
    Compact,
    /// Compact while another thread keeps changing a word.
    CompactWhilePoking {
        word: u8,
        value: Value,
    },
    Repair,
    Reopen,
}

#[derive(Arbitrary, Debug)]
struct Input {
    cache: bool,
    ops: Vec<Op>,
}

fn word(i: u8) -> u64 {
    WORDS[i as usize % WORDS.len()] as u64
}

fn poke(path: &Path, off: u64, v: &Value) {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    else {
        return;
    };
    let at = CONTROL_OFFSET + off;
    let mut cur = [0u8; 8];
    let _ = f.read_exact_at(&mut cur, at);
    let cur = u64::from_le_bytes(cur);
    let v = match *v {
        Value::Zero => 0,
        Value::One => 1,
        Value::Pow39 => 1 << 39,
        Value::Pow60 => 1 << 60,
        Value::Max => u64::MAX,
        Value::Nudge(d) => cur.wrapping_add(d as i64 as u64),
        Value::Any(x) => x,
    };
    let _ = f.write_all_at(&v.to_le_bytes(), at);
}

fn opts(cache: bool) -> Options {
    let o = Options::new()
        .lock_timeout(Duration::from_millis(10))
        .initial_size(64 << 10);
    if cache {
        o.capacity(256 << 10)
    } else {
        o
    }
}

/// A store with 64 entries, made once per process (per mode) and copied
/// for each execution: making it anew each time (creating the file,
/// allocating it, 64 inserts) was most of an execution's time. The ops
/// target covers creating stores.
fn template(cache: bool) -> &'static [u8] {
    static T: [OnceLock<Vec<u8>>; 2] = [OnceLock::new(), OnceLock::new()];
    T[cache as usize].get_or_init(|| {
        let path = mapkv_fuzz::process_scratch_dir().join(format!("template-{cache}.mapkv"));
        let _ = std::fs::remove_file(&path);
        let db = opts(cache).open(&path).expect("create the template store");
        for i in 0..64u32 {
            db.insert(i.to_le_bytes(), [i as u8; 64]).unwrap();
        }
        db.close().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

fuzz_target!(|input: Input| {
    // On tmpfs when there is one: the msyncs cost nothing there. A copy of
    // the template, renamed over the last execution's file: never written
    // in place, because a background compaction or eviction of the last
    // execution may still have that file mapped (`close` waits for it only
    // `lock_timeout`), and cutting a mapped file faults its readers.
    let dir = mapkv_fuzz::process_scratch_dir();
    let path = dir.join("cw.mapkv");
    let fresh = dir.join("cw.mapkv.new");
    std::fs::write(&fresh, template(input.cache)).expect("write the store");
    std::fs::rename(&fresh, &path).expect("rename the store");
    let Ok(holder) = opts(input.cache).open(&path) else {
        return;
    };
    let mut db = holder.clone();
    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            Op::Poke { word: w, value } => poke(&path, word(*w), value),
            Op::Insert { key, len } => {
                let _ = db.insert([*key], vec![*key; (*len as usize) % 4096]);
            }
            Op::Remove { key } => {
                let _ = db.remove([*key]);
            }
            Op::Get { key } => {
                let _ = db.get([*key]);
            }
            Op::Fill { n } => {
                // Up to 510 entries of 512 bytes: enough to fill the
                // 256 KiB cache and make it evict a few times. (Up to 2040,
                // as it was, made 40 evictions, each a compaction, and a
                // tenth of the executions' time.)
                for i in 0..(*n as u32) * 2 {
                    if db.insert((1000 + i).to_le_bytes(), [7u8; 512]).is_err() {
                        break;
                    }
                }
            }
            Op::Iter => {
                for item in db.iter().take(10_000) {
                    let _ = item;
                }
            }
            Op::Stats => {
                let _ = (db.len(), db.is_empty(), db.stats(), db.cache_stats());
            }
            Op::Check => {
                let _ = db.check();
            }
            Op::Compact => {
                let _ = db.compact();
            }
            Op::CompactWhilePoking { word: w, value } => {
                let off = word(*w);
                let stop = std::sync::atomic::AtomicBool::new(false);
                std::thread::scope(|s| {
                    s.spawn(|| {
                        for _ in 0..50 {
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            poke(&path, off, value);
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    });
                    let _ = db.compact();
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                });
            }
            Op::Repair => {
                let _ = db.repair();
            }
            Op::Reopen => {
                // Another handle joins the live, damaged store.
                if let Ok(d) = opts(input.cache).open(&path) {
                    db = d;
                }
            }
        }
    }
    let _ = db.len();
    drop(db);
    let _ = holder.close();
});
