//! The `mapkv` command-line tool, run as a user would: a built binary,
//! arguments, stdin, stdout, stderr and exit status.

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
    let j = ok(["--json", "put", f, "k", "v"], None).json();
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

    // A bad line: named, and the batches before it are kept.
    let mut bad = dump.clone();
    bad.extend_from_slice(b"\n{\"key\":\"a2V5\"}\n");
    let fourth = d.path().join("fourth.mapkv");
    let r = mapkv(["load", "--batch", "1000", p(&fourth)], Some(&bad));
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = want.len() + 2;
    assert!(
        r.stderr.contains(&format!("line {line}:")) && r.stderr.contains("no \"value\" field"),
        "{}",
        r.stderr
    );
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
    let j = ok(["--json", "repair", p(&path)], None).json();
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
