//! A store whose log holds no commit (a compaction or `clear` that copied
//! nothing) keeps its commit sequence through a rebuild after an OS crash:
//! `commit_seq` never goes back, and a later process crash replays.
//!
//! Its own test binary: it changes the boot id this process sees
//! (`MAPKV_BOOT_ID`), which would disturb other tests running beside it.

use mapkv::{Db, OpenKind};

/// The file as it is now, under a new name: what a crash leaves.
fn image(from: &std::path::Path, to: &std::path::Path) {
    std::fs::copy(from, to).unwrap();
}

#[test]
fn an_empty_log_keeps_its_sequence_through_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: u32| dir.path().join(format!("s{n}.mapkv"));
    std::env::set_var("MAPKV_BOOT_ID", "reboot-seq-boot-0");
    let db = Db::open(p(0)).unwrap();
    for i in 0..5u32 {
        db.insert(i.to_le_bytes(), b"v").unwrap();
    }
    db.clear().unwrap(); // the new file holds no commit
    let seq = db.commit_seq();
    assert!(seq >= 5, "{seq}");
    // An OS crash: the image opens under another boot and is rebuilt.
    image(&p(0), &p(1));
    std::env::set_var("MAPKV_BOOT_ID", "reboot-seq-boot-1");
    let rebuilt = Db::open(p(1)).unwrap();
    assert_eq!(rebuilt.stats().opened, OpenKind::Rebuilt);
    assert_eq!(rebuilt.commit_seq(), seq, "the sequence went back");
    // A process crash of that: replayed, not rebuilt again.
    image(&p(1), &p(2));
    let replayed = Db::open(p(2)).unwrap();
    assert_eq!(replayed.stats().opened, OpenKind::Replayed);
    replayed.insert(b"after", b"1").unwrap();
    assert_eq!(replayed.commit_seq(), seq + 1);
    replayed.check().unwrap();
    drop((db, rebuilt));
}
