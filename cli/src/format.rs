//! The two dump formats, one entry per line: JSON lines with base64 (the
//! default) and escaped text (`--text`). Both round-trip any bytes and
//! carry each entry's expiry.

use std::io::{self, Write};

use crate::bytes::{b64, from_b64};

/// `mapkv dump --help` and `mapkv load --help` end with this.
pub const HELP: &str = "\
Formats (one entry per line, in no particular order):

JSON lines (the default): key and value in standard base64; an entry with
an expiry has 'expires_at_ms', milliseconds since the Unix epoch:
  {\"key\":\"dXNlcjox\",\"value\":\"YWRh\"}
  {\"key\":\"c2Vzc2lvbg==\",\"value\":\"dG9rZW4=\",\"expires_at_ms\":1767225600000}
Other fields are ignored; empty lines are skipped.

Text (--text), like mdb_dump -p:
  KEY<TAB>VALUE
  KEY<TAB>VALUE<TAB>EXPIRES_AT_MS
Bytes 0x20-0x7e stand for themselves, except '\\', written '\\\\'; every other
byte is '\\' and two hex digits (tab '\\09', newline '\\0a', 0xff '\\ff'). A key
that starts with '#' is written with '\\23', because lines that start with
'#' are comments (a dump starts with two). Empty lines are skipped. Load
also takes upper-case hex and other bytes as they are (UTF-8 typed by
hand), but not a tab or a newline inside a key or value.

Both round-trip any bytes. An entry whose expiry has passed by the time
it is loaded is skipped (and counted).";

/// One entry of a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
}

/// The first lines of a text dump.
pub const TEXT_HEADER: &str = "\
# mapkv text dump: KEY<TAB>VALUE[<TAB>EXPIRES_AT_MS], one entry a line; load it with 'mapkv load --text'
# bytes 0x20-0x7e as themselves but '\\' as '\\\\', others as '\\' and two hex digits; expiry in ms since the Unix epoch
";

/// Write `e` as one JSON line, fields in the order of the help (base64
/// needs no JSON escapes).
pub fn write_json(out: &mut impl Write, e: &Entry) -> io::Result<()> {
    let (k, v) = (b64(&e.key), b64(&e.value));
    match e.expires_at_ms {
        Some(at) => writeln!(out, r#"{{"key":"{k}","value":"{v}","expires_at_ms":{at}}}"#),
        None => writeln!(out, r#"{{"key":"{k}","value":"{v}"}}"#),
    }
}

/// One JSON line: `{"key":"<base64>","value":"<base64>"}`, maybe with
/// `"expires_at_ms":<integer>`.
pub fn parse_json(line: &[u8]) -> Result<Entry, String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let s = v
            .get(name)
            .ok_or_else(|| format!("no \"{name}\" field"))?
            .as_str()
            .ok_or_else(|| format!("\"{name}\" is not a string"))?;
        from_b64(s).map_err(|e| format!("\"{name}\" is not base64: {e}"))
    };
    let expires_at_ms = match v.get("expires_at_ms") {
        None | Some(serde_json::Value::Null) => None,
        Some(t) => Some(t.as_u64().ok_or_else(|| {
            "\"expires_at_ms\" is not a whole number of milliseconds".to_string()
        })?),
    };
    Ok(Entry {
        key: field("key")?,
        value: field("value")?,
        expires_at_ms,
    })
}

/// Write `e` as one text line.
pub fn write_text(out: &mut impl Write, e: &Entry) -> io::Result<()> {
    let mut line = Vec::with_capacity(e.key.len() + e.value.len() + 8);
    escape_into(&e.key, true, &mut line);
    line.push(b'\t');
    escape_into(&e.value, false, &mut line);
    if let Some(at) = e.expires_at_ms {
        line.extend_from_slice(format!("\t{at}").as_bytes());
    }
    line.push(b'\n');
    out.write_all(&line)
}

/// Bytes as text-dump field: printable ASCII as itself, `\` as `\\`,
/// anything else (and a leading `#` of a key) as `\` and two hex digits.
fn escape_into(bytes: &[u8], key: bool, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'#' if key && i == 0 => out.extend_from_slice(b"\\23"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[
                b'\\',
                DIGITS[usize::from(b >> 4)],
                DIGITS[usize::from(b & 15)],
            ]),
        }
    }
}

/// One text line (without its newline): `Ok(None)` for a comment or an
/// empty line.
pub fn parse_text(line: &[u8]) -> Result<Option<Entry>, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() || line[0] == b'#' {
        return Ok(None);
    }
    let mut fields = line.split(|&b| b == b'\t');
    let key = fields.next().unwrap_or_default();
    let Some(value) = fields.next() else {
        return Err("no tab: expected KEY<TAB>VALUE[<TAB>EXPIRES_AT_MS]".into());
    };
    let expires_at_ms = match fields.next() {
        None => None,
        Some(t) => Some(
            std::str::from_utf8(t)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| {
                    format!(
                        "the third field, {:?}, is not an expiry (milliseconds since the Unix epoch)",
                        String::from_utf8_lossy(t)
                    )
                })?,
        ),
    };
    if fields.next().is_some() {
        return Err("more than three fields (a tab in a key or value is written \\09)".into());
    }
    Ok(Some(Entry {
        key: unescape(key).map_err(|e| format!("key: {e}"))?,
        value: unescape(value).map_err(|e| format!("value: {e}"))?,
        expires_at_ms,
    }))
}

/// The bytes a text-dump field stands for.
fn unescape(field: &[u8]) -> Result<Vec<u8>, String> {
    fn digit(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' {
            out.push(field[i]);
            i += 1;
            continue;
        }
        let hex = |at: usize| field.get(at).and_then(|&c| digit(c));
        if field.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
            out.push(h << 4 | l);
            i += 3;
        } else {
            return Err(format!(
                "bad escape at byte {}: '\\' must be followed by '\\' or two hex digits",
                i + 1
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(e: &Entry) -> Vec<u8> {
        let mut v = Vec::new();
        write_text(&mut v, e).unwrap();
        v
    }

    #[test]
    fn text_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        for (key, value, exp) in [
            (all.clone(), all.clone(), None),
            (
                b"#hash".to_vec(),
                b"#not a comment".to_vec(),
                Some(1_767_225_600_000),
            ),
            (Vec::new(), Vec::new(), None),
            (b"a\\b".to_vec(), b"\\".to_vec(), Some(0)),
        ] {
            let e = Entry {
                key,
                value,
                expires_at_ms: exp,
            };
            let line = text(&e);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert!(line[..line.len() - 1]
                .iter()
                .all(|&b| (0x20..=0x7e).contains(&b) || b == b'\t'));
            assert_ne!(line[0], b'#');
            assert_eq!(parse_text(&line[..line.len() - 1]), Ok(Some(e)));
        }
    }

    #[test]
    fn text_is_readable() {
        let e = Entry {
            key: b"user:1".to_vec(),
            value: b"a\tb\\c\xff".to_vec(),
            expires_at_ms: Some(42),
        };
        assert_eq!(text(&e), b"user:1\ta\\09b\\\\c\\ff\t42\n");
    }

    #[test]
    fn text_parse_errors_and_leniency() {
        assert_eq!(parse_text(b""), Ok(None));
        assert_eq!(parse_text(b"# comment"), Ok(None));
        assert_eq!(parse_text(b"k\tv\r").unwrap().unwrap().value, b"v");
        assert_eq!(
            parse_text(b"\\FF\tcaf\xc3\xa9").unwrap().unwrap().key,
            [0xff]
        );
        assert_eq!(
            parse_text(b"k\tcaf\xc3\xa9").unwrap().unwrap().value,
            "café".as_bytes()
        );
        for (bad, why) in [
            (&b"no tab"[..], "no tab"),
            (b"k\tv\tsoon", "not an expiry"),
            (b"k\tv\t1\tx", "more than three"),
            (b"k\\q\tv", "key: bad escape at byte 2"),
            (b"k\tv\\", "value: bad escape"),
            (b"k\tv\\0", "value: bad escape"),
        ] {
            let e = parse_text(bad).unwrap_err();
            assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn json_round_trips_and_carries_expiry() {
        for exp in [None, Some(1_767_225_600_000)] {
            let e = Entry {
                key: (0..=255).collect(),
                value: b"v".to_vec(),
                expires_at_ms: exp,
            };
            let mut line = Vec::new();
            write_json(&mut line, &e).unwrap();
            assert_eq!(parse_json(&line), Ok(e));
        }
        // Old dumps have no expiry field; other fields are ignored.
        let e = parse_json(br#"{"key":"aw==","value":"","x":1}"#).unwrap();
        assert_eq!((e.key, e.expires_at_ms), (b"k".to_vec(), None));
        assert!(parse_json(br#"{"key":"aw==","value":"","expires_at_ms":-1}"#).is_err());
    }
}
