//! The `mapkv` command-line tool, run as a user would: a built binary,
//! arguments, stdin, stdout, stderr and exit status.

// The library's test helpers, shared rather than copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{seed, store, Rng};
use serde_json::Value as Json;

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }
    fn json(&self) -> Json {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON value ({e}): {:?}",
                String::from_utf8_lossy(&self.stdout)
            )
        })
    }
    fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_string).collect()
    }
}

/// Run `mapkv ARGS` with `stdin` (empty if `None`).
fn mapkv<I, S>(args: I, stdin: Option<&[u8]>) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_mapkv"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE")
        .spawn()
        .expect("run mapkv");
    let input = stdin.unwrap_or_default().to_vec();
    let mut pipe = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        // The command may exit before reading everything (an error).
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for mapkv");
    writer.join().expect("stdin writer");
    let r = Run {
        code: out.status.code().expect("mapkv was killed by a signal"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("internal error"),
        "mapkv panicked: {}",
        r.stderr
    );
    r
}

/// Run and expect exit status 0.
fn ok<I, S>(args: I, stdin: Option<&[u8]>) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let r = mapkv(&args, stdin);
    assert_eq!(r.code, 0, "mapkv {args:?} failed: {}", r.stderr);
    r
}

/// Run and expect `code` and exactly one `mapkv: ` line on stderr.
fn fails<I, S>(code: i32, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let r = mapkv(&args, None);
    assert_eq!(r.code, code, "mapkv {args:?}: {}", r.stderr);
    assert!(
        r.stderr.starts_with("mapkv: ") && r.stderr.lines().count() == 1,
        "mapkv {args:?}: not one clear line: {:?}",
        r.stderr
    );
    r
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(v: &Json) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .expect("valid base64")
}

#[test]
fn put_get_del_round_trip() {
    let (_d, path) = store();
    let f = p(&path);
    ok(["put", f, "user:1", "ada"], None);
    assert!(path.exists());
    assert_eq!(ok(["get", f, "user:1"], None).stdout, b"ada");
    ok(["put", f, "user:1", "grace"], None);
    assert_eq!(ok(["get", f, "user:1"], None).stdout, b"grace");
    // An empty value, and a key that looks like an option.
    ok(["put", f, "empty", ""], None);
    assert_eq!(ok(["get", f, "empty"], None).stdout, b"");
    ok(["put", f, "--", "-k", "-v"], None);
    assert_eq!(ok(["get", f, "--", "-k"], None).stdout, b"-v");

    ok(["del", f, "user:1"], None);
    let r = fails(1, ["get", f, "user:1"]);
    assert!(r.stderr.contains("key not found: user:1"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let r = fails(1, ["del", f, "user:1"]);
    assert!(r.stderr.contains("key not found"), "{}", r.stderr);

    // --json
    let j = ok(["get", "--json", f, "--", "-k"], None).json();
    assert_eq!(unb64(&j["key"]), b"-k");
    assert_eq!(unb64(&j["value"]), b"-v");
    let r = mapkv(["get", "--json", f, "nope"], None);
    assert_eq!(r.code, 1);
    assert!(r.json()["value"].is_null());
    let j = ok(["put", "--json", f, "k", "v"], None).json();
    assert_eq!(j["ok"], true);
    let j = ok(["del", f, "k", "--json"], None).json();
    assert_eq!(j["removed"], true);
    let r = mapkv(["del", f, "k", "--json"], None);
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["removed"], false);
}

#[test]
fn binary_keys_and_values() {
    let (_d, path) = store();
    let f = p(&path);
    let all: Vec<u8> = (0..=255).collect();
    let key = b"\x00\xffkey\n\t\\".to_vec();

    // --hex in, raw and hex out.
    ok(["put", "--hex", f, &hex(&key), &hex(&all)], None);
    assert_eq!(
        ok(["get", "--hex", "--raw", f, &hex(&key)], None).stdout,
        all
    );
    let r = ok(["get", "--hex", f, &hex(&key)], None);
    assert_eq!(r.text(), format!("{}\n", hex(&all)));
    // Upper-case hex is accepted.
    let r = ok(["get", "--hex", f, &hex(&key).to_uppercase()], None);
    assert_eq!(r.text().trim_end(), hex(&all));

    // --base64 in and out.
    let k2 = vec![0u8; 3];
    let v2 = b"\xde\xad\xbe\xef".repeat(100);
    ok(["put", "--base64", f, &b64(&k2), &b64(&v2)], None);
    let r = ok(["get", "--base64", f, &b64(&k2)], None);
    assert_eq!(r.text(), format!("{}\n", b64(&v2)));
    assert_eq!(ok(["get", "--hex", f, "000000", "--raw"], None).stdout, v2);

    // Raw bytes as arguments (not UTF-8).
    let raw_key = OsString::from_vec(b"raw\xff\xfe".to_vec());
    let raw_val = OsString::from_vec(b"val\x80".to_vec());
    ok([OsStr::new("put"), OsStr::new(f), &raw_key, &raw_val], None);
    let r = ok([OsStr::new("get"), OsStr::new(f), &raw_key], None);
    assert_eq!(r.stdout, raw_val.as_bytes());

    // Value from stdin, and from --file.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    ok(["put", f, "stdin"], Some(&big));
    assert_eq!(ok(["get", f, "stdin"], None).stdout, big);
    ok(["put", "--hex", f, "00"], Some(&all));
    assert_eq!(ok(["get", "--raw", "--hex", f, "00"], None).stdout, all);
    let vf = path.with_extension("value");
    std::fs::write(&vf, &all[..100]).expect("write value file");
    ok(["put", f, "from-file", "--file", p(&vf)], None);
    assert_eq!(ok(["get", f, "from-file"], None).stdout, &all[..100]);

    // JSON carries base64.
    let j = ok(["get", "--json", "--hex", f, &hex(&key)], None).json();
    assert_eq!(unb64(&j["key"]), key);
    assert_eq!(unb64(&j["value"]), all);

    // Bad encodings are errors, not guesses.
    let r = fails(2, ["put", "--hex", f, "zz", "00"]);
    assert!(r.stderr.contains("KEY is not valid hex"), "{}", r.stderr);
    let r = fails(2, ["put", "--hex", f, "00", "abc"]);
    assert!(r.stderr.contains("VALUE is not valid hex"), "{}", r.stderr);
    let r = fails(2, ["get", "--base64", f, "!!!"]);
    assert!(r.stderr.contains("not valid base64"), "{}", r.stderr);
}

#[test]
fn scan_prefix_and_limit() {
    let (_d, path) = store();
    let f = p(&path);
    let mut lines = String::new();
    let mut want = BTreeMap::new();
    for i in 0..30u32 {
        let k = if i < 20 {
            format!("a:{i}")
        } else {
            format!("b:{i}")
        };
        let v = format!("value {i}\n");
        lines.push_str(&format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}\n",
            b64(k.as_bytes()),
            b64(v.as_bytes())
        ));
        want.insert(k, v);
    }
    ok(["load", f], Some(lines.as_bytes()));

    // Text: KEY<TAB>VALUE, escaped.
    let all = ok(["scan", f], None).lines();
    assert_eq!(all.len(), 30);
    for l in &all {
        let (k, v) = l.split_once('\t').expect("a tab");
        assert_eq!(
            format!("{}\n", v.strip_suffix("\\n").expect("escaped \\n")),
            want[k]
        );
    }
    let b = ok(["scan", f, "--prefix", "b:"], None).lines();
    assert_eq!(b.len(), 10);
    assert!(b.iter().all(|l| l.starts_with("b:")), "{b:?}");
    assert_eq!(ok(["scan", f, "--limit", "3"], None).lines().len(), 3);
    let l = ok(["scan", f, "--prefix", "a:", "--limit", "5"], None).lines();
    assert_eq!(l.len(), 5);
    assert!(l.iter().all(|l| l.starts_with("a:")));
    assert_eq!(ok(["scan", f, "--limit", "0"], None).lines().len(), 0);
    assert_eq!(ok(["scan", f, "--prefix", "zz"], None).lines().len(), 0);

    // Keys only, hex.
    let k = ok(
        ["scan", f, "--hex", "--prefix", &hex(b"b:2"), "--keys-only"],
        None,
    )
    .lines();
    let mut k: Vec<String> = k;
    k.sort();
    let mut expect: Vec<String> = (20..30).map(|i| hex(format!("b:{i}").as_bytes())).collect();
    expect.sort();
    assert_eq!(k, expect);

    // --json: one object per line, base64.
    let r = ok(["scan", "--json", f, "--prefix", "a:"], None);
    let mut got = BTreeMap::new();
    for l in r.lines() {
        let j: Json = serde_json::from_str(&l).expect("a JSON line");
        got.insert(
            String::from_utf8(unb64(&j["key"])).unwrap(),
            String::from_utf8(unb64(&j["value"])).unwrap(),
        );
    }
    let want_a: BTreeMap<_, _> = want
        .iter()
        .filter(|(k, _)| k.starts_with("a:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want_a);

    // The help says the order is unspecified.
    let help = ok(["scan", "--help"], None).text();
    assert!(help.contains("order is unspecified"), "{help}");
}

#[test]
fn stats_and_check() {
    let (_d, path) = store();
    let f = p(&path);
    for i in 0..50 {
        ok(["put", f, &format!("k{i}"), &"x".repeat(i * 10)], None);
    }
    ok(["put", f, "k0", "overwritten"], None);
    ok(["del", f, "k1"], None);

    let j = ok(["stats", "--json", f], None).json();
    assert_eq!(j["keys"], 49);
    let file_len = j["file_len"].as_u64().unwrap();
    assert_eq!(file_len, std::fs::metadata(&path).unwrap().len());
    let parts: u64 = [
        "live_bytes",
        "dead_bytes",
        "index_bytes",
        "header_bytes",
        "free_bytes",
    ]
    .iter()
    .map(|k| j[*k].as_u64().unwrap())
    .sum();
    assert_eq!(parts, file_len, "{j}");
    assert!(j["dead_bytes"].as_u64().unwrap() > 0);
    let load = j["index_load"].as_f64().unwrap();
    assert!(load > 0.0 && load < 0.75, "{load}");
    assert_eq!(j["commits"], 52);
    assert_eq!(j["opened"], "clean");

    let text = ok(["stats", f], None).text();
    for want in ["keys", "49", "live", "dead", "free", "index", "█", "░"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }

    let r = ok(["check", f], None);
    assert!(r.text().starts_with("ok: "), "{}", r.text());
    let j = ok(["check", "--json", f], None).json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["live_keys"], 49);
    assert_eq!(j["records"], 52);
}

#[test]
fn dump_then_load_round_trips_every_byte() {
    let (d, path) = store();
    let f = p(&path);
    let mut rng = Rng::new(seed("dump_then_load_round_trips_every_byte"));
    let mut want = BTreeMap::new();
    {
        let db = mapkv::Db::open(&path).expect("open");
        let mut b = db.batch();
        for i in 0..3000u32 {
            let klen = rng.below(40) as usize;
            let mut k = rng.bytes(klen);
            k.extend_from_slice(&i.to_le_bytes()); // unique
            let vlen = rng.below(if i % 100 == 0 { 20_000 } else { 300 }) as usize;
            let v = rng.bytes(vlen);
            b.insert(&k, &v);
            want.insert(k, v);
        }
        // Every byte value, in a key and in a value; empty ones too.
        let all: Vec<u8> = (0..=255).collect();
        b.insert(&all, &all);
        want.insert(all.clone(), all);
        b.insert(b"", b"");
        want.insert(Vec::new(), Vec::new());
        b.commit().expect("commit");
        db.close().expect("close");
    }

    let dump = ok(["dump", f], None).stdout;
    assert_eq!(dump.iter().filter(|&&c| c == b'\n').count(), want.len());
    let copy = d.path().join("copy.mapkv");
    ok(["load", p(&copy), "--batch", "100"], Some(&dump));
    ok(["check", p(&copy)], None);

    // Byte for byte, through the library.
    let db = mapkv::Options::new()
        .read_only(true)
        .open(&copy)
        .expect("open copy");
    assert_eq!(db.len(), want.len() as u64);
    for (k, v) in &want {
        assert_eq!(db.get(k).expect("get").as_deref(), Some(&v[..]));
    }
    drop(db);

    // And through the tool: a dump of the copy holds the same entries.
    let mut got = BTreeMap::new();
    for l in ok(["dump", p(&copy)], None).lines() {
        let j: Json = serde_json::from_str(&l).expect("JSON line");
        got.insert(unb64(&j["key"]), unb64(&j["value"]));
    }
    assert_eq!(got, want);

    // load from a file argument, with --json and --sync.
    let dump_file = d.path().join("entries.jsonl");
    std::fs::write(&dump_file, &dump).unwrap();
    let third = d.path().join("third.mapkv");
    let j = ok(["load", "--sync", "--json", p(&third), p(&dump_file)], None).json();
    assert_eq!(j["loaded"].as_u64(), Some(want.len() as u64));
    assert_eq!(
        j["batches"].as_u64(),
        Some(want.len().div_ceil(1000) as u64)
    );

    // A bad line: named; the store did not exist, so none is left behind.
    let mut bad = dump.clone();
    bad.extend_from_slice(b"\n{\"key\":\"a2V5\"}\n");
    let fourth = d.path().join("fourth.mapkv");
    let r = mapkv(["load", "--batch", "1000", p(&fourth)], Some(&bad));
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = want.len() + 2;
    assert!(
        r.stderr.contains(&format!("line {line}:"))
            && r.stderr.contains("no \"value\" field")
            && r.stderr.contains("nothing was loaded"),
        "{}",
        r.stderr
    );
    assert!(!fourth.exists());
    // Into an existing store, the batches before the bad line are kept.
    ok(["put", p(&fourth), "first", "1"], None);
    let r = mapkv(["load", "--batch", "1000", p(&fourth)], Some(&bad));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(want.len(), 3_002);
    assert!(
        r.stderr.contains("3,000 entries committed before it"),
        "{}",
        r.stderr
    );
    let db = mapkv::Options::new().read_only(true).open(&fourth).unwrap();
    assert_eq!(db.len(), 3_001);
    drop(db);
    for junk in [
        &b"not json\n"[..],
        b"[1,2]\n",
        b"{\"key\":1,\"value\":\"\"}\n",
    ] {
        let r = mapkv(["load", p(&fourth)], Some(junk));
        assert_eq!(
            r.code,
            2,
            "{:?}: {}",
            String::from_utf8_lossy(junk),
            r.stderr
        );
        assert!(r.stderr.contains("line 1:"), "{}", r.stderr);
    }
}

/// Read commands on a missing file: exit 2, one line, and no file created.
#[test]
fn missing_file_is_an_error_and_is_not_created() {
    let (_d, path) = store();
    let f = p(&path);
    for args in [
        vec!["get", f, "k"],
        vec!["scan", f],
        vec!["stats", f],
        vec!["check", f],
        vec!["dump", f],
        vec!["del", f, "k"],
        vec!["check", "--json", f],
    ] {
        let r = fails(2, &args);
        assert!(r.stderr.contains("No such file"), "{args:?}: {}", r.stderr);
        assert!(!path.exists(), "{args:?} created the file");
    }
    let j = mapkv(["check", "--json", f], None).json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["corrupted"], false);
}

/// A file that is not a store: every command refuses it and leaves it
/// byte-for-byte as it was.
#[test]
fn foreign_file_is_refused_and_unchanged() {
    let (d, path) = store();
    let f = p(&path);
    let mut rng = Rng::new(seed("foreign_file_is_refused_and_unchanged"));
    let bytes = rng.bytes(100_000);
    std::fs::write(&path, &bytes).unwrap();
    let entries = format!("{{\"key\":\"{}\",\"value\":\"\"}}\n", b64(b"k"));
    for args in [
        vec!["get", f, "k"],
        vec!["scan", f],
        vec!["stats", f],
        vec!["check", f],
        vec!["dump", f],
        vec!["put", f, "k", "v"],
        vec!["del", f, "k"],
    ] {
        let r = fails(2, &args);
        assert!(
            r.stderr.contains("not a mapkv store"),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{args:?} changed it");
    }
    let r = mapkv(["load", f], Some(entries.as_bytes()));
    assert_eq!(r.code, 2);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // An empty file is not a store for readers either; a directory neither.
    let empty = d.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let r = fails(2, ["stats", p(&empty)]);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    fails(2, ["get", p(d.path()), "k"]);
}

/// A flipped byte in a record value: `check` exits 1 and says where.
#[test]
fn corrupted_store_is_reported_with_its_offset() {
    let (_d, path) = store();
    let f = p(&path);
    for i in 0..5 {
        ok(
            ["put", f, &format!("key{i}"), &format!("value-{i}-MARKER")],
            None,
        );
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(14)
        .position(|w| w == b"value-3-MARKER")
        .expect("value in the file");
    bytes[at + 3] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let r = fails(1, ["check", f]);
    assert!(r.stderr.contains("corrupted at offset"), "{}", r.stderr);
    let r = mapkv(["check", "--json", f], None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["corrupted"], true);
    let off = j["offset"].as_u64().expect("an offset");
    // The offset is the damaged record's, at or before the flipped byte.
    assert!(
        off <= at as u64 && at as u64 - off < 64,
        "offset {off}, byte {at}"
    );
    assert!(j["error"].as_str().unwrap().contains(&off.to_string()));
    // Checking is reading: the file is as it was.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn works_while_another_process_has_the_store_open() {
    let (_d, path) = store();
    let db = mapkv::Db::open(&path).expect("open");
    db.insert(b"k", b"v").unwrap();
    // Reads and writes go through while the store is open here.
    assert_eq!(ok(["get", p(&path), "k"], None).stdout, b"v");
    ok(["put", p(&path), "k2", "w"], None);
    assert_eq!(db.get(b"k2").unwrap().as_deref(), Some(&b"w"[..]));
    let r = ok(["stats", "--json", p(&path)], None);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["opened"], "joined", "{v}");
}

#[test]
fn exclusively_locked_store_is_an_error() {
    let (_d, path) = store();
    mapkv::Db::open(&path).unwrap().insert(b"k", b"v").unwrap();
    // A reader's flock locks nobody out.
    let reader = std::fs::File::open(&path).unwrap();
    fs2::FileExt::lock_exclusive(&reader).unwrap();
    assert_eq!(ok(["get", p(&path), "k"], None).stdout, b"v");
    // An opener holding the open lock exclusively (recovering) does.
    let f = common::hold_open_lock(&path);
    let r = fails(2, ["get", "--lock-timeout", "0.2", p(&path), "k"]);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    let r = fails(2, ["put", "--lock-timeout", "0.2", p(&path), "k", "w"]);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    drop(f);
    assert_eq!(ok(["get", p(&path), "k"], None).stdout, b"v");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (_d, path) = store();
    let f = p(&path);
    for args in [
        vec![],
        vec!["frobnicate", f],
        vec!["get", f],
        vec!["get", "--hex", "--base64", f, "00"],
        vec!["scan", f, "--limit", "many"],
        vec!["load", f, "--batch", "0"],
        vec!["put", f, "k", "v", "--file", "/etc/hostname"],
        vec!["stats"],
    ] {
        let r = mapkv(&args, None);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("Usage") || r.stderr.contains("error:"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!path.exists(), "{args:?} created the store");
    }
    let r = ok(["--help"], None);
    for cmd in [
        "get", "put", "del", "scan", "stats", "check", "dump", "load",
    ] {
        assert!(r.text().contains(cmd), "{cmd} missing from --help");
    }
    assert!(ok(["dump", "--help"], None).text().contains("base64"));
    assert!(ok(["--version"], None)
        .text()
        .contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn watch_prints_changes_from_another_process_as_they_happen() {
    let (_d, path) = store();
    let db = mapkv::Db::open(&path).unwrap();
    db.insert(b"before", b"not shown").unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mapkv"))
        .args(["watch", "--json", "--count", "4", p(&path)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let keyed = std::process::Command::new(env!("CARGO_BIN_EXE_mapkv"))
        .args(["watch", "--idle-exit", "1.5", p(&path), "k2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Give the watchers time to open the store; changes made before they
    // read their starting position would simply not be shown.
    std::thread::sleep(std::time::Duration::from_millis(500));
    db.insert(b"k1", b"v1").unwrap();
    let mut b = db.batch();
    b.insert(b"k2", b"v2").remove(b"before");
    b.commit().unwrap();
    db.insert(b"k2", b"v3").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let ops: Vec<(String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["op"].as_str().unwrap().to_string(),
                v["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let k = |s: &[u8]| b64(s);
    assert_eq!(
        ops,
        vec![
            ("put".into(), k(b"k1")),
            ("put".into(), k(b"k2")),
            ("del".into(), k(b"before")),
            ("put".into(), k(b"k2")),
        ]
    );
    assert_eq!(lines[1]["seq"], lines[2]["seq"], "one batch, one commit");
    let keyed = keyed.wait_with_output().unwrap();
    assert!(keyed.status.success());
    let text = String::from_utf8(keyed.stdout).unwrap();
    let got: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').nth(3).unwrap())
        .collect();
    assert_eq!(got, ["v2", "v3"], "{text}");
}

#[test]
fn compact_shrinks_the_file_and_keeps_every_entry() {
    let (_d, path) = store();
    {
        let db = mapkv::Db::open(&path).unwrap();
        for i in 0..5_000u32 {
            db.insert(i.to_le_bytes(), [3u8; 200]).unwrap();
        }
        for i in 0..4_000u32 {
            db.remove(i.to_le_bytes()).unwrap();
        }
    }
    let before = std::fs::metadata(&path).unwrap().len();
    let r = ok(["compact", "--json", p(&path)], None);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["keys"], 1000, "{v}");
    assert_eq!(v["len_before"], before, "{v}");
    let after = std::fs::metadata(&path).unwrap().len();
    assert_eq!(v["len_after"], after, "{v}");
    assert!(after < before / 2, "{before} -> {after}");
    let text = ok(["compact", p(&path)], None);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("compacted "));
    ok(["check", p(&path)], None);
    let db = mapkv::Db::open(&path).unwrap();
    assert_eq!(db.len(), 1000);
    assert_eq!(
        db.get(4_999u32.to_le_bytes()).unwrap().as_deref(),
        Some(&[3u8; 200][..])
    );
    drop(db);
    // A missing store is an error, not a new empty one.
    let missing = path.with_file_name("missing.mapkv");
    fails(2, ["compact", p(&missing)]);
    assert!(!missing.exists());
}

#[test]
fn stats_shows_a_caches_capacity_and_put_keeps_to_it() {
    let (_d, path) = store();
    let f = p(&path);
    let db = mapkv::Options::new()
        .capacity(256 << 10)
        .open(&path)
        .unwrap();
    for i in 0..5_000u32 {
        db.insert(i.to_le_bytes(), [7u8; 100]).unwrap();
    }
    db.close().unwrap();
    // A plain open by the tool keeps to the stored capacity.
    ok(["put", f, "extra", &"y".repeat(1000)], None);
    let j = ok(["stats", "--json", f], None).json();
    assert_eq!(j["capacity"], 256 << 10);
    assert!(j["file_len"].as_u64().unwrap() <= 256 << 10, "{j}");
    let text = ok(["stats", f], None).text();
    assert!(text.contains("capacity 256"), "{text}");
    assert_eq!(
        ok(["get", f, "extra"], None).text().trim_end(),
        "y".repeat(1000)
    );
}

/// Damage the live slot that comes `nth` in slot order in the index of a
/// cleanly closed store (past the 64 the open samples): its offset points
/// past the end of the file.
fn damage_slot(path: &Path, nth: usize) {
    use mapkv::testing::layout::{self, meta};
    use std::os::unix::fs::FileExt;
    let b = std::fs::read(path).unwrap();
    let le = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let [a, b_copy] = layout::META_COPIES.map(|m| m as usize);
    let copy = if le(a + meta::META_SEQ) >= le(b_copy + meta::META_SEQ) {
        a
    } else {
        b_copy
    };
    let desc = le(copy + meta::INDEX_DESC);
    let start = (desc & !layout::INDEX_DESC_LOG2_MASK) as usize;
    let live: Vec<usize> = (0..1usize << (desc & layout::INDEX_DESC_LOG2_MASK))
        .map(|i| start + 8 * i)
        .filter(|&at| le(at) > 1)
        .collect();
    let at = live[nth];
    let bad = le(at) | ((1 << 36) - 1);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&bad.to_le_bytes(), at as u64).unwrap();
}

/// A store with 2,000 keys and one bad slot past the open's sample.
fn damaged_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let (d, path) = store();
    let input: String = (0..2_000)
        .map(|i| {
            format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}\n",
                b64(format!("k{i}").as_bytes()),
                b64(b"v")
            )
        })
        .collect();
    ok(["load", p(&path)], Some(input.as_bytes()));
    damage_slot(&path, 500);
    (d, path)
}

/// `check` on a store whose log verifies but whose index does not says
/// so and suggests `mapkv repair`; `repair` rebuilds the index, reports
/// what it kept and dropped, and then `check` and `dump` pass.
#[test]
fn check_suggests_repair_and_repair_fixes_the_index() {
    let (_d, path) = damaged_store();
    let r = fails(1, ["check", p(&path)]);
    assert!(r.stderr.contains("the log verifies"), "{}", r.stderr);
    assert!(r.stderr.contains("mapkv repair"), "{}", r.stderr);
    // Plain dump stops at the damage.
    fails(2, ["dump", p(&path)]);

    let r = ok(["repair", p(&path)], None);
    let text = r.text();
    assert!(
        text.contains("kept 2,000 live keys") || text.contains("kept 2000 live keys"),
        "{text}"
    );
    // The bad slot, and the key it no longer leads to.
    assert!(
        text.contains("2 slots of the old index disagreed"),
        "{text}"
    );
    assert!(text.contains("dropped: nothing"), "{text}");
    ok(["check", p(&path)], None);
    assert_eq!(ok(["dump", p(&path)], None).lines().len(), 2_000);

    // JSON, on a healthy store: nothing to fix.
    let j = ok(["repair", "--json", p(&path)], None).json();
    assert_eq!(j["keys"], 2_000);
    assert_eq!(j["index_mismatches"], 0);
    assert_eq!(j["dropped"].as_array().unwrap().len(), 0);
}

/// `dump --salvage` writes every entry it can, lists the damaged ones
/// (with their offsets) on stderr and exits 1; it writes nothing to the
/// file (it opens the store read-only).
#[test]
fn dump_salvage_skips_damaged_entries_and_exits_non_zero() {
    let (_d, path) = damaged_store();
    let before = std::fs::read(&path).unwrap();
    let r = mapkv(["dump", "--salvage", p(&path)], None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.lines().len(), 1_999, "every other entry is dumped");
    assert!(
        r.stderr.contains("skipped damaged entry at offset"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("skipped 1 entry"), "{}", r.stderr);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // On a healthy store it is a plain dump.
    ok(["repair", p(&path)], None);
    let r = ok(["dump", "--salvage", p(&path)], None);
    assert_eq!(r.lines().len(), 2_000);
}

/// A duration as `mapkv ttl` prints it (`1h2m3s4ms`), in milliseconds.
fn ttl_ms(s: &str) -> u64 {
    let mut ms = 0;
    let mut num = String::new();
    let mut unit = String::new();
    let mut flush = |num: &mut String, unit: &mut String| {
        let per = match unit.as_str() {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            u => panic!("unit {u:?} in {s:?}"),
        };
        ms += num.parse::<u64>().expect("a number") * per;
        num.clear();
        unit.clear();
    };
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            if !unit.is_empty() {
                flush(&mut num, &mut unit);
            }
            num.push(c);
        } else {
            unit.push(c);
        }
    }
    flush(&mut num, &mut unit);
    ms
}

#[test]
fn put_ttl_and_expire_set_and_show_expiries() {
    let (_d, path) = store();
    let f = p(&path);
    ok(["put", "--ttl", "30s", f, "session", "token"], None);
    let left = ttl_ms(&ok(["ttl", f, "session"], None).text());
    assert!(left > 25_000 && left <= 30_000, "{left}");
    ok(["put", f, "plain", "v"], None);
    assert_eq!(ok(["ttl", f, "plain"], None).text(), "no expiry\n");
    let r = fails(1, ["ttl", f, "absent"]);
    assert!(r.stderr.contains("key not found: absent"), "{}", r.stderr);
    assert!(r.stdout.is_empty());

    // Each unit, and a compound one.
    for (d, ms) in [
        ("500ms", 500),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1h30m", 5_400_000),
    ] {
        ok(["expire", f, "plain", d], None);
        let left = ttl_ms(&ok(["ttl", f, "plain"], None).text());
        assert!(left <= ms && left + 5_000 > ms, "{d}: {left}");
    }
    ok(["expire", f, "plain", "never"], None);
    assert_eq!(ok(["ttl", f, "plain"], None).text(), "no expiry\n");
    assert_eq!(ok(["get", f, "plain"], None).stdout, b"v", "value kept");
    let r = fails(1, ["expire", f, "absent", "5s"]);
    assert!(r.stderr.contains("key not found"), "{}", r.stderr);
    assert!(!mapkv::Db::open(&path)
        .unwrap()
        .contains_key(b"absent")
        .unwrap());

    // JSON, with --hex.
    let j = ok(["ttl", "--json", "--hex", f, &hex(b"session")], None).json();
    assert_eq!(j["present"], true);
    let ms = j["ttl_ms"].as_u64().unwrap();
    assert!(ms > 20_000 && ms <= 30_000, "{j}");
    let at = j["expires_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(at > now && at <= now + 30_000, "{j}");
    let r = mapkv(["ttl", "--json", f, "plain"], None);
    assert_eq!((r.code, r.json()["ttl_ms"].is_null()), (0, true));
    let r = mapkv(["ttl", "--json", f, "absent"], None);
    assert_eq!(
        (r.code, r.json()["present"].clone()),
        (1, Json::from(false))
    );
    let j = ok(["expire", "--json", f, "plain", "1m"], None).json();
    assert_eq!(
        (j["found"].clone(), j["ttl_ms"].clone()),
        (Json::from(true), Json::from(60_000))
    );

    // It does expire.
    ok(["put", "--ttl", "100ms", f, "brief", "x"], None);
    std::thread::sleep(std::time::Duration::from_millis(300));
    fails(1, ["get", f, "brief"]);
    fails(1, ["ttl", f, "brief"]);
    fails(1, ["expire", f, "brief", "1h"]);

    // Durations that are not: usage errors that say why.
    for (args, why) in [
        (vec!["put", "--ttl", "30", f, "k", "v"], "needs a unit"),
        (vec!["put", "--ttl", "1y", f, "k", "v"], "unknown unit"),
        (vec!["put", "--ttl=-1s", f, "k", "v"], "expected a number"),
        (vec!["expire", f, "plain", "soon"], "or 'never'"),
    ] {
        let r = mapkv(&args, None);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stderr.contains(why), "{args:?}: {}", r.stderr);
    }
    assert!(!mapkv::Db::open(&path).unwrap().contains_key(b"k").unwrap());
}

/// Each command takes only the options it uses: global options used to be
/// accepted (and ignored) everywhere.
#[test]
fn commands_refuse_options_they_do_not_use() {
    let (_d, path) = store();
    let f = p(&path);
    ok(["put", f, "k", "v"], None);
    let before = std::fs::read(&path).unwrap();
    for args in [
        vec!["stats", "--hex", "--sync", f],
        vec!["stats", "--sync", f],
        vec!["stats", "--hex", f],
        vec!["check", "--base64", f],
        vec!["get", "--sync", f, "k"],
        vec!["scan", "--sync", f],
        vec!["dump", "--json", f],
        vec!["dump", "--hex", f],
        vec!["compact", "--hex", f],
        vec!["copy", "--sync", f, "/nonexistent/copy"],
        vec!["ttl", "--sync", f, "k"],
        vec!["del", "--capacity", "1M", f, "k"],
        vec!["load", "--hex", f],
        vec!["--json", "get", f, "k"],
        vec!["--hex", "stats", f],
    ] {
        let r = mapkv(&args, None);
        assert_eq!(r.code, 2, "{args:?} was accepted: {}", r.stderr);
        assert!(
            r.stderr.contains("unexpected argument") || r.stderr.contains("cannot be used"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a refused command wrote"
    );
    // The ones they do use still work, before or after FILE.
    ok(["stats", "--json", "--lock-timeout", "1", f], None);
    ok(["get", f, "k", "--json"], None);
    ok(["del", "--sync", f, "k"], None);
}

#[test]
fn counts_have_their_plurals_right() {
    let (_d, path) = store();
    let f = p(&path);
    ok(["put", f, "only", "v"], None);
    let check = ok(["check", f], None).text();
    for want in ["1 live key (", "1 commit,", "1 record and 1 index chunk"] {
        assert!(check.contains(want), "{want:?} missing from:\n{check}");
    }
    let compact = ok(["compact", f], None).text();
    assert!(compact.contains("(1 live key,"), "{compact}");
    let repair = ok(["repair", f], None).text();
    assert!(repair.contains("kept 1 live key ("), "{repair}");
    assert!(repair.contains("0 slots of the old index"), "{repair}");

    ok(["put", f, "second", "v"], None);
    let check = ok(["check", f], None).text();
    assert!(check.contains("2 live keys ("), "{check}");
    assert!(check.contains("2 commits,"), "{check}");
    let compact = ok(["compact", f], None).text();
    assert!(compact.contains("(2 live keys,"), "{compact}");
    let copy = path.with_file_name("copy.mapkv");
    let text = ok(["copy", f, p(&copy)], None).text();
    assert!(text.contains(": 2 live keys ("), "{text}");
    for text in [check, compact, text] {
        assert!(
            !text.contains("1 live keys") && !text.contains("entrys"),
            "{text}"
        );
    }
}

/// `stats` and `check` report the same number of commits, also after a
/// compaction dropped the old ones from the log.
#[test]
fn stats_and_check_count_commits_the_same_way() {
    let (_d, path) = store();
    let f = p(&path);
    for i in 0..20 {
        ok(["put", f, &format!("k{}", i % 5), "v"], None);
    }
    ok(["del", f, "k0"], None);
    for compacted in [false, true] {
        if compacted {
            ok(["compact", f], None);
        }
        let s = ok(["stats", "--json", f], None).json();
        let c = ok(["check", "--json", f], None).json();
        assert_eq!(s["commits"], 21, "{s}");
        assert_eq!(c["commits"], s["commits"], "compacted {compacted}: {c}");
        assert_eq!(c["live_keys"], s["keys"]);
        let in_log = c["commits_in_log"].as_u64().unwrap();
        assert_eq!(in_log < 21, compacted, "{c}");
        let stats_text = ok(["stats", f], None).text();
        let check_text = ok(["check", f], None).text();
        assert!(stats_text.contains("commits       21\n"), "{stats_text}");
        assert!(check_text.contains("  21 commits, "), "{check_text}");
    }
}

/// `stats` of a cache: capacity, the hit ratio of reads by every process,
/// evictions, expired entries dropped.
#[test]
fn stats_shows_a_caches_counters() {
    let (_d, path) = store();
    let f = p(&path);
    {
        let db = mapkv::Options::new()
            .capacity(256 << 10)
            .open(&path)
            .unwrap();
        // The oldest entries, expired by the time an eviction looks.
        for i in 0..100u32 {
            db.insert_with_ttl(
                format!("brief{i}"),
                b"x",
                std::time::Duration::from_millis(1),
            )
            .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        for i in 0..5_000u32 {
            db.insert(i.to_le_bytes(), [7u8; 100]).unwrap();
        }
        db.close().unwrap();
    }
    {
        // Three hits and one miss, in this process, through a handle
        // that no eviction moves while it reads.
        let db = mapkv::Db::open(&path).unwrap();
        for k in [4_999u32, 4_998, 4_997] {
            assert!(db.get(k.to_le_bytes()).unwrap().is_some());
        }
        assert!(db.get(b"never there").unwrap().is_none());
        db.close().unwrap();
    }
    let j = ok(["stats", "--json", f], None).json();
    assert_eq!(j["capacity"], 256 << 10, "{j}");
    assert!(j["evictions"].as_u64().unwrap() > 0, "{j}");
    assert!(j["eviction_runs"].as_u64().unwrap() > 0, "{j}");
    assert!(j["expirations"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(
        (j["hits"].clone(), j["misses"].clone()),
        (Json::from(3), Json::from(1)),
        "{j}"
    );
    assert_eq!(j["hit_ratio"], 0.75, "{j}");
    let text = ok(["stats", f], None).text();
    for want in [
        "capacity 256.0 KiB",
        "75.0% (3 hits of 4 reads, by every process)",
        " entries evicted in ",
        " entries dropped\n",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

/// `stats` and `check` of any store count live and expired keys apart.
#[test]
fn stats_and_check_show_expired_keys() {
    let (_d, path) = store();
    let f = p(&path);
    ok(["put", f, "live", "v"], None);
    ok(["put", "--ttl", "50ms", f, "brief", "v"], None);
    let text = ok(["stats", f], None).text();
    assert!(text.contains("2 live, none expired"), "{text}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let j = ok(["stats", "--json", f], None).json();
    assert_eq!(
        (j["keys"].clone(), j["expired_keys"].clone()),
        (Json::from(1), Json::from(1)),
        "{j}"
    );
    let text = ok(["stats", f], None).text();
    assert!(
        text.contains("1 live, 1 expired (not dropped yet)"),
        "{text}"
    );
    assert!(text.contains("cache         none"), "{text}");
    let j = ok(["check", "--json", f], None).json();
    assert_eq!(
        (j["live_keys"].clone(), j["expired_keys"].clone()),
        (Json::from(1), Json::from(1)),
        "{j}"
    );
    let text = ok(["check", f], None).text();
    assert!(
        text.contains("1 live key (") && text.contains("1 expired"),
        "{text}"
    );
}

/// `copy` while another process commits: the copy is one commit's state
/// (the counter and the keys it counts agree), verifies, and is compact.
#[test]
fn copy_is_consistent_while_another_process_writes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let (d, path) = store();
    {
        let db = mapkv::Db::open(&path).unwrap();
        let mut b = db.batch();
        for i in 0..30_000u32 {
            b.insert(format!("pre{i}"), [1u8; 100]);
        }
        b.commit().unwrap();
        // Dead space, for the copy to leave out.
        for i in 0..10_000u32 {
            db.remove(format!("pre{i}")).unwrap();
        }
        db.close().unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (path, stop, done) = (path.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            // Each commit: k<i> and the counter that says i is the last.
            let db = mapkv::Db::open(&path).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut b = db.batch();
                b.insert(format!("k{i}"), i.to_le_bytes())
                    .insert(b"count", i.to_le_bytes());
                b.commit().unwrap();
                i += 1;
                done.store(i, Ordering::Relaxed);
                // A steady stream, not a flood that starves the copy.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            i
        })
    };
    while done.load(Ordering::Relaxed) < 100 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let copy = d.path().join("copy.mapkv");
    let started = done.load(Ordering::Relaxed);
    let j = ok(["copy", "--json", p(&path), p(&copy)], None).json();
    let ended = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let total = writer.join().unwrap();
    assert!(ended > started, "the writer made no commit during the copy");

    ok(["check", p(&copy)], None);
    let db = mapkv::Options::new().read_only(true).open(&copy).unwrap();
    let count = u64::from_le_bytes(
        db.get(b"count").unwrap().expect("the counter")[..]
            .try_into()
            .unwrap(),
    );
    assert!(count < total, "{count} {total}");
    for i in (0..=count).step_by(7).chain([count]) {
        assert!(db.contains_key(format!("k{i}")).unwrap(), "k{i} of {count}");
    }
    assert!(!db.contains_key(format!("k{}", count + 1)).unwrap());
    assert_eq!(db.len(), 20_000 + count + 2);
    assert_eq!(j["keys"], db.len());
    // Compacted: without the 10,000 removed entries (the commits it
    // caught up with may leave some dead space of their own).
    let (copy_len, src_len) = (db.stats().file_len, std::fs::metadata(&path).unwrap().len());
    assert!(copy_len < src_len, "copy {copy_len} >= source {src_len}");
    drop(db);

    // The copy never replaces a file, and a missing source is not created.
    let r = fails(2, ["copy", p(&path), p(&copy)]);
    assert!(r.stderr.contains("exists"), "{}", r.stderr);
    let missing = d.path().join("missing.mapkv");
    fails(2, ["copy", p(&missing), p(&d.path().join("c2.mapkv"))]);
    assert!(!missing.exists() && !d.path().join("c2.mapkv").exists());
}

/// Every byte value in keys and values, and expiries, through `dump
/// --text` and `load --text` (and through the JSON format).
#[test]
fn text_dump_and_load_round_trip_every_byte_and_expiries() {
    use std::time::Duration;

    let (d, path) = store();
    let all: Vec<u8> = (0..=255).collect();
    let mut want: BTreeMap<Vec<u8>, (Vec<u8>, Option<Duration>)> = BTreeMap::new();
    {
        let db = mapkv::Db::open(&path).unwrap();
        for b in 0..=255u8 {
            // Each byte value first in a key (a '#' too) and alone.
            let mut k = vec![b];
            k.extend_from_slice(&all);
            let v: Vec<u8> = all.iter().map(|x| x.wrapping_add(b)).collect();
            db.insert(&k, &v).unwrap();
            want.insert(k, (v, None));
            db.insert([b], [b]).unwrap();
            want.insert(vec![b], (vec![b], None));
        }
        for (k, ttl) in [(&b"in an hour"[..], 3_600), (b"#tomorrow\t\n", 86_400)] {
            let ttl = Duration::from_secs(ttl);
            db.insert_with_ttl(k, &all, ttl).unwrap();
            want.insert(k.to_vec(), (all.clone(), Some(ttl)));
        }
        db.insert(b"", b"").unwrap();
        want.insert(Vec::new(), (Vec::new(), None));
        // Gone before the dump: not in it.
        db.insert_with_ttl(b"brief", b"x", Duration::from_millis(1))
            .unwrap();
        db.close().unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));

    let dump = ok(["dump", "--text", p(&path)], None).stdout;
    // Printable, one line an entry after the two comment lines.
    assert!(dump
        .iter()
        .all(|&b| (0x20..=0x7e).contains(&b) || b == b'\t' || b == b'\n'));
    let lines: Vec<&[u8]> = dump
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), want.len() + 2);
    assert!(lines[..2].iter().all(|l| l.starts_with(b"#")));
    assert!(lines[2..].iter().all(|l| !l.starts_with(b"#")));
    // The key that starts with '#' does not start its line with one.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(b"\\23tomorrow\\09\\0a\t")),
        "{}",
        String::from_utf8_lossy(&dump)
    );
    assert!(!dump.windows(5).any(|w| w == b"brief"));

    let check_copy = |copy: &Path| {
        let db = mapkv::Options::new().read_only(true).open(copy).unwrap();
        assert_eq!(db.len(), want.len() as u64);
        for (k, (v, ttl)) in &want {
            assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]), "{k:?}");
            let left = db.time_to_live(k).unwrap();
            match (ttl, left) {
                (None, None) => {}
                (Some(t), Some(l)) => {
                    assert!(l <= *t && *t - l < Duration::from_secs(60), "{t:?} {l:?}")
                }
                _ => panic!("{k:?}: expiry {ttl:?} came back as {left:?}"),
            }
        }
    };
    let copy = d.path().join("text.mapkv");
    ok(["load", "--text", p(&copy)], Some(&dump));
    check_copy(&copy);
    // A dump of the copy is the same dump, but for the clock's
    // millisecond in the absolute expiries.
    let entries = |dump: &[u8]| -> BTreeMap<Vec<u8>, Option<u64>> {
        dump.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
            .map(|l| {
                let mut f = l.split(|&b| b == b'\t');
                let kv = [f.next().unwrap(), b"\t", f.next().unwrap()].concat();
                let at = f
                    .next()
                    .map(|t| std::str::from_utf8(t).unwrap().parse().unwrap());
                (kv, at)
            })
            .collect()
    };
    let (a, b) = (
        entries(&dump),
        entries(&ok(["dump", "--text", p(&copy)], None).stdout),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, at) in &a {
        match (at, b[k]) {
            (None, None) => {}
            (Some(x), Some(y)) => assert!(x.abs_diff(y) <= 5, "{x} {y}"),
            _ => panic!("{}: {at:?} {:?}", String::from_utf8_lossy(k), b[k]),
        }
    }

    // The JSON format carries expiries too.
    let json = ok(["dump", p(&path)], None).stdout;
    let with_expiry = json
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter(|l| serde_json::from_slice::<Json>(l).unwrap()["expires_at_ms"].is_u64())
        .count();
    assert_eq!(with_expiry, 2);
    let copy2 = d.path().join("json.mapkv");
    ok(["load", p(&copy2)], Some(&json));
    check_copy(&copy2);

    // An expiry already past when loaded: skipped and counted.
    let past = b"old\tv\t1000\nnew\tv\n";
    let third = d.path().join("third.mapkv");
    let j = ok(["load", "--text", "--json", p(&third)], Some(past)).json();
    assert_eq!(
        (j["loaded"].clone(), j["expired"].clone()),
        (Json::from(1), Json::from(1)),
        "{j}"
    );
}

#[test]
fn load_no_overwrite_keeps_existing_keys() {
    let (_d, path) = store();
    let f = p(&path);
    ok(["put", f, "a", "old"], None);
    ok(["put", "--ttl", "1h", f, "b", "old"], None);
    let input = "a\tnew\nb\tnew\nc\tnew\nd\tnew\t99999999999999\n";
    let j = ok(
        ["load", "--text", "--no-overwrite", "--json", f],
        Some(input.as_bytes()),
    )
    .json();
    assert_eq!(j["loaded"], 2, "{j}");
    assert_eq!(j["kept"], 2, "{j}");
    assert_eq!(ok(["get", f, "a"], None).stdout, b"old");
    assert_eq!(ok(["get", f, "b"], None).stdout, b"old");
    assert_ne!(
        ok(["ttl", f, "b"], None).text(),
        "no expiry\n",
        "b keeps its expiry"
    );
    assert_eq!(ok(["get", f, "c"], None).stdout, b"new");
    assert_ne!(
        ok(["ttl", f, "d"], None).text(),
        "no expiry\n",
        "d gets its expiry"
    );
    // Without it, the load overwrites.
    ok(["load", "--text", f], Some(input.as_bytes()));
    assert_eq!(ok(["get", f, "a"], None).stdout, b"new");
    // --batch means nothing to it.
    let r = mapkv(["load", "--no-overwrite", "--batch", "5", f], None);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot be used with"), "{}", r.stderr);
}

/// A load that fails leaves no store (and no temporary file) behind when
/// there was none before.
#[test]
fn failed_load_leaves_no_file_behind() {
    let (d, path) = store();
    let f = p(&path);
    let good = format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}\n",
        b64(b"k"),
        b64(b"v")
    );
    for (args, input, line) in [
        (vec!["load", f], format!("{good}{good}not json\n"), 3),
        (
            vec!["load", "--batch", "1", f],
            format!("{good}{good}{{\"key\":1}}\n"),
            3,
        ),
        (
            vec!["load", "--text", f],
            "k\tv\nk2\tv\\zz\n".to_string(),
            2,
        ),
        (vec!["load", "--text", f], "no tab here\n".to_string(), 1),
    ] {
        let r = mapkv(&args, Some(input.as_bytes()));
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(&format!("line {line}:")), "{}", r.stderr);
        assert!(r.stderr.contains("nothing was loaded"), "{}", r.stderr);
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    // A missing input file: nothing created either.
    fails(2, ["load", f, p(&d.path().join("no-such-input"))]);
    assert!(std::fs::read_dir(d.path()).unwrap().next().is_none());
    // A good load creates it, in place.
    ok(["load", f], Some(good.as_bytes()));
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [OsString::from("test.mapkv")]);
    assert_eq!(ok(["get", f, "k"], None).stdout, b"v");
}

/// A capacity other than the store's is explained, with the command that
/// changes it; `set-capacity` changes it for everyone.
#[test]
fn capacity_mismatch_is_explained_and_set_capacity_changes_it() {
    let (_d, path) = store();
    let f = p(&path);
    ok(["put", "--capacity", "1M", f, "k", "v"], None);
    assert_eq!(ok(["stats", "--json", f], None).json()["capacity"], 1 << 20);
    ok(["put", "--capacity", "1024K", f, "k2", "v"], None); // the same
    let r = fails(2, ["put", "--capacity", "2M", f, "k3", "v"]);
    assert!(
        r.stderr.contains("capacity is 1.0 MiB")
            && r.stderr.contains("2.0 MiB")
            && r.stderr.contains("mapkv set-capacity"),
        "{}",
        r.stderr
    );
    let r = fails(2, ["load", "--capacity", "2M", f]);
    assert!(r.stderr.contains("mapkv set-capacity"), "{}", r.stderr);
    fails(1, ["get", f, "k3"]);

    let text = ok(["set-capacity", f, "2M"], None).text();
    assert!(
        text.contains("capacity 2.0 MiB") && text.contains("was 1.0 MiB"),
        "{text}"
    );
    ok(["put", "--capacity", "2M", f, "k3", "v"], None);
    let j = ok(["set-capacity", "--json", f, "512K"], None).json();
    assert_eq!(
        (j["capacity"].clone(), j["was"].clone()),
        (Json::from(512 << 10), Json::from(2 << 20))
    );

    // A plain store becomes a cache.
    let plain = path.with_file_name("plain.mapkv");
    ok(["put", p(&plain), "k", "v"], None);
    let r = fails(2, ["put", "--capacity", "1M", p(&plain), "k", "v"]);
    assert!(r.stderr.contains("not a cache"), "{}", r.stderr);
    let text = ok(["set-capacity", p(&plain), "1M"], None).text();
    assert!(text.contains("was none"), "{text}");
    for bad in ["lots", "1MB", "1.5M"] {
        let r = mapkv(["set-capacity", p(&plain), bad], None);
        assert_eq!(r.code, 2, "{bad}");
        assert!(r.stderr.contains("not a size"), "{}", r.stderr);
    }
    fails(
        2,
        ["set-capacity", p(&path.with_file_name("missing")), "1M"],
    );
}

/// A value file over the limit is refused by its length, at once, without
/// reading it (it used to read all 4 GiB first).
#[test]
fn put_file_over_the_limit_is_refused_before_reading() {
    let (d, path) = store();
    let big = d.path().join("big");
    // Sparse: no disk used.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(mapkv::MAX_VALUE_LEN as u64 + 1)
        .unwrap();
    let started = std::time::Instant::now();
    let r = fails(2, ["put", p(&path), "key", "--file", p(&big)]);
    assert!(
        r.stderr.contains("at most") && r.stderr.contains("big"),
        "{}",
        r.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!path.exists(), "nothing was written");
}
