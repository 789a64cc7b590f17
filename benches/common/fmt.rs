//! Number formatting shared by the benchmarks' reports.
#![allow(dead_code)]

/// Operations (or requests) per second, short: `1.25 M`, `859 k`, `412`.
pub fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Bytes in MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}
