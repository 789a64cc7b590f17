//! How keys and values travel through arguments, stdout and JSON.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// How KEY, VALUE and `--prefix` arguments are read, and how `get` and
/// `scan` print keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The argument's bytes as they are; values printed raw (`get`) or
    /// escaped (`scan`).
    Raw,
    /// Hexadecimal, two digits a byte, either case.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl Encoding {
    /// Decode an argument named `what` (for the error message).
    pub fn decode(self, what: &str, arg: OsString) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Raw => Ok(arg.into_vec()),
            Encoding::Hex => {
                let s = arg
                    .into_string()
                    .map_err(|_| format!("{what} is not valid hex"))?;
                from_hex(&s).map_err(|e| format!("{what} is not valid hex: {e}"))
            }
            Encoding::Base64 => {
                let s = arg
                    .into_string()
                    .map_err(|_| format!("{what} is not valid base64"))?;
                STANDARD
                    .decode(s.trim())
                    .map_err(|e| format!("{what} is not valid base64: {e}"))
            }
        }
    }

    /// Text for a key or value in line-oriented output: hex, base64, or
    /// escaped text (see [`escape`]).
    pub fn text(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Raw => escape(bytes),
            Encoding::Hex => to_hex(bytes),
            Encoding::Base64 => b64(bytes),
        }
    }
}

/// Standard base64, as used in every JSON output and in dump files.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decode a base64 string from a JSON field.
pub fn from_b64(s: &str) -> Result<Vec<u8>, String> {
    STANDARD.decode(s).map_err(|e| e.to_string())
}

/// Lower-case hex, two digits a byte.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parse hex (either case, no separators).
pub fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return Err(format!("odd number of digits ({})", s.len()));
    }
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    s.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, p)| match (digit(p[0]), digit(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(format!(
                "{:?} at position {} is not a hex digit pair",
                String::from_utf8_lossy(p),
                2 * i
            )),
        })
        .collect()
}

/// Bytes as one line of text that names them exactly: UTF-8 is shown as
/// it is, except backslash (`\\`), tab (`\t`), newline (`\n`), carriage
/// return (`\r`) and other control characters (`\u{7f}`); bytes that are
/// not UTF-8 are `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\t' => s.push_str("\\t"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                c if c.is_control() => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&all)).unwrap(), all);
        assert_eq!(from_hex("00FFaB").unwrap(), vec![0, 255, 0xab]);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn escapes() {
        assert_eq!(escape(b"caf\xc3\xa9"), "café");
        assert_eq!(escape(b"a\tb\nc\\d\x00\xff"), "a\\tb\\nc\\\\d\\u{0}\\xff");
    }
}
