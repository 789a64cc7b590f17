//! Durations (`--ttl 30s`, `expire KEY 5m`) and sizes (`--capacity 64M`)
//! as people write them, and back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Units of a duration, largest first (the order `duration` prints them).
const TIME_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parse a duration: one or more NUMBER UNIT pairs, with units `ms`, `s`,
/// `m`, `h` and `d` (`500ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`). A number
/// without a unit is refused: `30` could mean seconds or milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        |why: &str| format!("{s:?} is not a duration ({why}; e.g. 500ms, 30s, 5m, 2h, 1d, 1h30m)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let Some(&(_, per)) = TIME_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(bad(if unit.is_empty() {
                "a number needs a unit"
            } else {
                "unknown unit"
            }));
        };
        let n: u64 = num.parse().map_err(|_| bad("too large"))?;
        ms = n
            .checked_mul(per)
            .and_then(|x| ms.checked_add(x))
            .ok_or_else(|| bad("too large"))?;
        rest = tail;
    }
    Ok(Duration::from_millis(ms))
}

/// A duration in the syntax [`parse_duration`] reads, to the millisecond:
/// `1d2h`, `29s950ms`, `0ms`.
pub fn duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0ms".into();
    }
    let mut s = String::new();
    for (unit, per) in TIME_UNITS {
        if ms >= per {
            s.push_str(&format!("{}{unit}", ms / per));
            ms %= per;
        }
    }
    s
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Units of a size: binary multiples.
const SIZE_UNITS: [(&str, u32); 10] = [
    ("", 0),
    ("B", 0),
    ("K", 10),
    ("KiB", 10),
    ("M", 20),
    ("MiB", 20),
    ("G", 30),
    ("GiB", 30),
    ("T", 40),
    ("TiB", 40),
];

/// Parse a size in bytes: a number, optionally followed by `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB` or `T`/`TiB` (powers of 1024): `65536`, `256K`, `64MiB`.
/// Decimal units (`MB`) are refused rather than guessed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let unit = unit.trim_start();
    let bad = |why: &str| format!("{s:?} is not a size ({why}; e.g. 1048576, 256K, 64M, 1GiB)");
    if num.is_empty() {
        return Err(bad("expected a number"));
    }
    let Some(&(_, shift)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(bad(
            "unknown unit; sizes are in bytes or K, M, G, T (powers of 1024)",
        ));
    };
    let n: u64 = num.parse().map_err(|_| bad("too large"))?;
    n.checked_mul(1 << shift).ok_or_else(|| bad("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |s| parse_duration(s).map(|d| d.as_millis() as u64);
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms(" 0s "), Ok(0));
        for bad in [
            "",
            "30",
            "s",
            "3 s",
            "1y",
            "-1s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        for d in [0, 1, 999, 1_000, 61_001, 90_061_001, 86_400_000 * 400] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&duration(d)), Ok(d), "{}", duration(d));
        }
        assert_eq!(duration(Duration::from_millis(29_950)), "29s950ms");
        assert_eq!(duration(Duration::from_secs(93_600)), "1d2h");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "M", "64MB", "1.5G", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
