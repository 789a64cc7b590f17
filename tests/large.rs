//! Scale: 1.5 M keys in the normal suite, 10 M keys (a file of several GiB)
//! behind `--ignored`:
//!
//! ```text
//! cargo test --release --test large -- --ignored
//! ```

mod common;

use common::store;
use mapkv::{Db, OpenKind, Options};

fn key(i: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k[16..].copy_from_slice(b"mapkv-k!");
    k
}

fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn scale(n: u64, value_len: usize) {
    let (_d, path) = store();
    {
        let db = Db::open(&path).unwrap();
        let mut b = db.batch();
        for i in 0..n {
            b.insert(key(i), value(i, value_len));
            if b.len() == 10_000 {
                std::mem::replace(&mut b, db.batch()).commit().unwrap();
            }
        }
        b.commit().unwrap();
        assert_eq!(db.len(), n);
        let s = db.stats();
        assert!(s.index_load <= 0.75);
        eprintln!(
            "{n} keys: file {} MiB, index {} slots, {} remaps",
            s.file_len >> 20,
            s.index_capacity,
            s.remaps
        );
        db.close().unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().opened, OpenKind::Clean);
    assert_eq!(db.len(), n);
    let mut buf = Vec::new();
    for i in 0..n {
        assert!(db.get_into(key(i), &mut buf).unwrap(), "key {i} missing");
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i);
        assert_eq!(buf.len(), value_len);
    }
    assert!(!db.contains_key(key(n)).unwrap());
    assert_eq!(db.iter().count() as u64, n);
}

#[test]
fn one_and_a_half_million_keys() {
    scale(1_500_000, 16);
}

#[test]
#[ignore = "10 M keys, about 2 GiB: run with --release -- --ignored"]
fn ten_million_keys() {
    scale(10_000_000, 150);
}

#[test]
#[ignore = "writes a 5 GiB value file: run with --release -- --ignored"]
fn file_past_4_gib_with_small_reservation_remaps() {
    let (_d, path) = store();
    let db = Options::new()
        .growth_step(256 << 20)
        .map_reserve(1 << 30)
        .open(&path)
        .unwrap();
    let chunk = vec![7u8; 64 << 20];
    for i in 0..80u32 {
        db.insert(i.to_le_bytes(), &chunk).unwrap();
    }
    let s = db.stats();
    assert!(s.file_len > 5 << 30);
    assert!(s.remaps >= 1);
    for i in 0..80u32 {
        assert_eq!(db.get(i.to_le_bytes()).unwrap().unwrap().len(), chunk.len());
    }
}
