//! One test per error, and foreign or damaged files: a clear `Error`, the
//! file left byte-for-byte as it was, never a panic.

mod common;

use common::{store, Rng};
use mapkv::testing::layout::{self, meta};
use mapkv::{Db, Error, Options};

fn open_err(path: &std::path::Path) -> Error {
    match Db::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e,
    }
}

#[test]
fn io_error_names_the_path() {
    let (_d, path) = store();
    let bad = path.join("no").join("such").join("dir.mapkv");
    let e = open_err(&bad);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("dir.mapkv"), "{e}");
}

#[test]
fn foreign_files_are_refused_and_untouched() {
    let (_d, path) = store();
    let mut rng = Rng::new(7);
    let samples: Vec<Vec<u8>> = vec![
        b"hello, I am a text file\n".repeat(1000),
        rng.bytes(100),
        rng.bytes(layout::ARENA_START as usize),
        rng.bytes(1 << 20),
        vec![0u8; 1 << 16],
        b"\x89PNG\r\n\x1a\n"
            .iter()
            .copied()
            .chain(rng.bytes(5000))
            .collect(),
    ];
    for (i, bytes) in samples.iter().enumerate() {
        std::fs::write(&path, bytes).unwrap();
        let e = open_err(&path);
        assert!(matches!(e, Error::NotMapkv { .. }), "sample {i}: {e:?}");
        assert!(e.to_string().contains("not a mapkv store"), "{e}");
        let ro = Options::new().read_only(true).open(&path);
        assert!(
            matches!(ro, Err(Error::NotMapkv { .. })),
            "sample {i} read-only"
        );
        assert!(
            std::fs::read(&path).unwrap() == *bytes,
            "sample {i} was modified"
        );
    }
    // A directory is not a store either.
    let e = open_err(path.parent().unwrap());
    assert!(
        matches!(e, Error::NotMapkv { .. } | Error::Io { .. }),
        "{e:?}"
    );
}

fn made_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let (d, path) = store();
    let db = Db::open(&path).unwrap();
    for i in 0..100u32 {
        db.insert(i.to_le_bytes(), [i as u8; 50]).unwrap();
    }
    db.close().unwrap();
    (d, path)
}

#[test]
fn truncated_header_is_corrupted_and_untouched() {
    let (_d, path) = made_store();
    let full = std::fs::read(&path).unwrap();
    let (meta_b, arena) = (layout::META_B_OFFSET as usize, layout::ARENA_START as usize);
    // In meta A's page, at meta B, in meta B's page, one byte short of
    // the arena.
    for cut in [200usize, meta_b, meta_b + 904, arena - 1] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let e = open_err(&path);
        assert!(matches!(e, Error::Corrupted { .. }), "cut {cut}: {e:?}");
        assert!(
            std::fs::read(&path).unwrap() == full[..cut],
            "cut {cut} was modified"
        );
    }
    // Cut below the durable log tail (the store's log ends near 28 KiB).
    let cut = 16384;
    std::fs::write(&path, &full[..cut]).unwrap();
    let e = open_err(&path);
    assert!(matches!(e, Error::Corrupted { .. }), "{e:?}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn unsupported_version() {
    let (_d, path) = made_store();
    let mut bytes = std::fs::read(&path).unwrap();
    for at in layout::META_COPIES.map(|m| m as usize) {
        if bytes[at + meta::MAGIC..][..8] == layout::META_MAGIC {
            bytes[at + meta::VERSION..][..4].copy_from_slice(&77u32.to_le_bytes());
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    match open_err(&path) {
        Error::UnsupportedVersion {
            found, supported, ..
        } => {
            assert_eq!((found, supported), (77, 2));
        }
        e => panic!("{e:?}"),
    }
    assert!(std::fs::read(&path).unwrap() == bytes);
}

#[test]
fn damaged_metas_are_corrupted() {
    let (_d, path) = made_store();
    let mut bytes = std::fs::read(&path).unwrap();
    for at in layout::META_COPIES.map(|m| m as usize) {
        bytes[at + meta::TAIL + 6] ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(matches!(e, Error::Corrupted { offset: 0, .. }), "{e:?}");
    assert!(std::fs::read(&path).unwrap() == bytes);
}

/// CRC-32 (IEEE) continuing from `init`, as mapkv's metas use it.
fn crc32(init: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(init);
    h.update(data);
    h.finalize()
}

/// The error of a meta says which check each copy failed: a CRC mismatch
/// (with the stored and computed CRCs), or a page size this format does
/// not use.
#[test]
fn damaged_metas_name_the_failed_check() {
    let (_d, path) = made_store();
    let good = std::fs::read(&path).unwrap();
    let [a, b] = layout::META_COPIES.map(|m| m as usize);

    // Meta A: a flipped bit, CRC left alone. Meta B: page size 16384,
    // resealed so that its CRC holds.
    let mut bytes = good.clone();
    bytes[a + meta::TAIL] ^= 1;
    let stored = u32::from_le_bytes(bytes[a + meta::CRC..][..4].try_into().unwrap());
    let salt = u32::from_le_bytes(bytes[b + meta::CRC_SALT..][..4].try_into().unwrap());
    bytes[b + meta::PAGE_SIZE..][..4].copy_from_slice(&16384u32.to_le_bytes());
    let crc = crc32(salt ^ layout::META_CRC_XOR, &bytes[b..b + meta::CRC]);
    bytes[b + meta::CRC..][..4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let e = open_err(&path);
    assert!(matches!(e, Error::Corrupted { offset: 0, .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("meta CRC mismatch"), "{text}");
    assert!(text.contains(&format!("stored {stored:#010x}")), "{text}");
    assert!(
        text.contains(&format!(
            "page size 16384, this format uses {}",
            layout::FORMAT_PAGE
        )),
        "{text}"
    );
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the file was modified"
    );

    // Each alone, the other copy without its magic.
    for (blank, want) in [(b, "meta CRC mismatch"), (a, "page size 16384")] {
        let mut only = bytes.clone();
        only[blank..blank + layout::META_LEN].fill(0);
        std::fs::write(&path, &only).unwrap();
        let text = open_err(&path).to_string();
        assert!(text.contains(want), "{text}");
        assert!(text.contains("no mapkv magic number"), "{text}");
    }
}

#[test]
fn damaged_record_is_reported_by_get_with_its_offset() {
    let (_d, path) = made_store();
    // Find the record of key 5 and flip a byte of its value.
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = [5u8; 50];
    let pos = bytes.windows(50).position(|w| w == needle).unwrap();
    bytes[pos + 10] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let db = Db::open(&path).unwrap();
    match db.get(5u32.to_le_bytes()) {
        Err(Error::Corrupted { offset, what, .. }) => {
            assert!(
                offset < pos as u64 && pos as u64 - offset < 64,
                "offset {offset} vs {pos}"
            );
            assert!(what.contains("checksum"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    // Other keys are fine.
    assert_eq!(db.get(6u32.to_le_bytes()).unwrap().unwrap(), &[6u8; 50][..]);
    // Iteration reports the bad entry and goes on.
    let (ok, bad): (Vec<_>, Vec<_>) = db.iter().partition(|r| r.is_ok());
    assert_eq!((ok.len(), bad.len()), (99, 1));
}

#[test]
fn size_limits() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    let key = vec![1u8; mapkv::MAX_KEY_LEN + 1];
    match db.insert(&key, b"v") {
        Err(Error::KeyTooLarge { len, max }) => assert_eq!((len, max), (65536, 65535)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(db.remove(&key), Err(Error::KeyTooLarge { .. })));
    // vec! of zeros is a lazily zeroed allocation: no 4 GiB of real memory.
    let value = vec![0u8; mapkv::MAX_VALUE_LEN + 1];
    match db.insert(b"k", &value) {
        Err(Error::ValueTooLarge { len, max }) => assert_eq!((len, max), (1 << 32, (1 << 32) - 1)),
        other => panic!("{other:?}"),
    }
    assert!(db.is_empty());
}

#[test]
fn second_handle_shares_the_store() {
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    db.insert(b"k", b"v").unwrap();
    let other = Db::open(&path).unwrap();
    assert_eq!(other.stats().opened, mapkv::OpenKind::Joined);
    assert_eq!(other.get(b"k").unwrap().unwrap(), &b"v"[..]);
    other.insert(b"k2", b"w").unwrap();
    assert_eq!(db.get(b"k2").unwrap().unwrap(), &b"w"[..]);
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(ro.len(), 2);
    drop((db, other, ro));
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, mapkv::OpenKind::Clean);
    assert_eq!(db.len(), 2);
}

#[test]
fn exclusive_holder_gives_locked_after_the_timeout() {
    let (_d, path) = store();
    Db::open(&path).unwrap().insert(b"k", b"v").unwrap();
    // Hold the open lock exclusively, as an opener recovering the store does.
    let f = common::hold_open_lock(&path);
    let opts = Options::new().lock_timeout(std::time::Duration::from_millis(200));
    match opts.clone().open(&path) {
        Err(e @ Error::Locked { .. }) => assert!(e.to_string().contains("locked"), "{e}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("opened past an exclusive lock"),
    }
    assert!(matches!(
        opts.clone().read_only(true).open(&path),
        Err(Error::Locked { .. })
    ));
    drop(f);
    let db = opts.open(&path).unwrap();
    assert_eq!(db.get(b"k").unwrap().unwrap(), &b"v"[..]);
}

#[test]
fn second_writer_in_another_process_shares_the_store() {
    if let Ok(p) = std::env::var("MAPKV_TEST_CHILD_OPEN") {
        // Child: write through its own handle and report what it saw.
        let code = match Db::open(&p) {
            Ok(db) => match (db.get(b"parent"), db.insert(b"child", b"hello")) {
                (Ok(Some(v)), Ok(())) if &*v == b"here" => 0,
                _ => 4,
            },
            Err(_) => 5,
        };
        std::process::exit(code);
    }
    let (_d, path) = store();
    let db = Db::open(&path).unwrap();
    db.insert(b"parent", b"here").unwrap();
    let st = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "second_writer_in_another_process_shares_the_store",
            "--nocapture",
        ])
        .env("MAPKV_TEST_CHILD_OPEN", &path)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0), "child could not share the store");
    // The child's write is visible at once, without reopening.
    assert_eq!(db.get(b"child").unwrap().unwrap(), &b"hello"[..]);
}

#[test]
fn out_of_space_at_max_size_keeps_the_store_usable() {
    let (_d, path) = store();
    let db = Options::new()
        .initial_size(256 << 10)
        .max_size(1 << 20)
        .open(&path)
        .unwrap();
    let mut n = 0u32;
    let err = loop {
        match db.insert(n.to_le_bytes(), [3u8; 1000]) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10_000, "max_size not enforced");
    };
    assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
    assert!(err.to_string().contains("out of space"), "{err}");
    assert!(std::fs::metadata(&path).unwrap().len() <= 1 << 20);
    // Reads work, small writes that fit still work, and nothing was lost.
    for i in 0..n {
        assert_eq!(
            db.get(i.to_le_bytes()).unwrap().unwrap().len(),
            1000,
            "key {i}"
        );
    }
    assert!(db.remove(0u32.to_le_bytes()).unwrap());
    db.close().unwrap();
    let db = Db::open(&path).unwrap_or_else(|e| panic!("reopen after out of space: {e:?}"));
    assert_eq!(db.len(), n as u64 - 1);
}
