//! Progress bars, sizes, and the text pictures of `stats`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, or a hidden one when stderr is not a
/// terminal. `len` known: a bar with the position and the time left;
/// otherwise a spinner. `bytes`: the position is a size, with a rate.
pub fn progress(len: Option<u64>, bytes: bool, msg: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (pos, rate) = if bytes {
        ("{bytes}/{total_bytes}", "{binary_bytes_per_sec}, ")
    } else {
        ("{human_pos}/{human_len}", "")
    };
    let pb = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(&format!(
                "{{msg}} [{{bar:40}}] {pos} ({rate}{{eta}} left)"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(if bytes {
                "{spinner} {msg} {bytes} ({binary_bytes_per_sec}, {elapsed})"
            } else {
                "{spinner} {msg} ({elapsed})"
            })
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            s.push(',');
        }
        s.push(c);
    }
    s
}

/// `1 entry`, `2,000 entries`: the count and the word that goes with it.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// Commits made to the store, and how many of them its log still holds
/// (compactions and evictions drop the older ones): `stats` and `check`
/// both count the first.
pub fn commits(total: u64, in_log: u64) -> String {
    let all = plural(total, "commit", "commits");
    if in_log >= total {
        format!("{all}, all in the log")
    } else {
        format!(
            "{all}, {} still in the log (compaction dropped the others)",
            count(in_log)
        )
    }
}

/// `, 3 expired (not dropped yet)`, or `, none expired`.
pub fn expired_suffix(n: u64) -> String {
    if n == 0 {
        ", none expired".into()
    } else {
        format!(", {} expired (not dropped yet)", count(n))
    }
}

/// A size in binary units: `512 B`, `1.5 KiB`, `222.8 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Cells of a bar `width` wide for segments of these sizes: proportional
/// (largest remainders), and at least one cell for every non-empty
/// segment when there is room.
fn cells(sizes: &[u64], width: usize) -> Vec<usize> {
    let total: u128 = sizes.iter().map(|&s| u128::from(s)).sum();
    let mut out = vec![0usize; sizes.len()];
    if total == 0 || width == 0 {
        return out;
    }
    let mut rem = Vec::with_capacity(sizes.len());
    let mut used = 0usize;
    for (i, &s) in sizes.iter().enumerate() {
        let exact = u128::from(s) * width as u128;
        out[i] = (exact / total) as usize;
        used += out[i];
        rem.push((exact % total, i));
    }
    rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rem.iter().take(width - used) {
        out[i] += 1;
    }
    // Make tiny segments visible, taking cells from the largest.
    for i in 0..sizes.len() {
        if sizes[i] > 0 && out[i] == 0 {
            let (big, _) = out
                .iter()
                .enumerate()
                .max_by_key(|&(_, &c)| c)
                .unwrap_or((i, &0));
            if out[big] > 1 {
                out[big] -= 1;
                out[i] = 1;
            }
        }
    }
    out
}

/// The index table's load as a bar, with the rebuild threshold marked.
pub fn load_bar(used: u64, capacity: u64, width: usize) -> String {
    let filled = if capacity == 0 {
        0
    } else {
        ((used as f64 / capacity as f64) * width as f64).round() as usize
    }
    .min(width);
    let mark = width * 3 / 4;
    let mut s = String::from("[");
    for i in 0..width {
        s.push(if i == mark && i >= filled {
            '|'
        } else if i < filled {
            '█'
        } else {
            '░'
        });
    }
    s.push(']');
    s
}

/// Everything `Db::stats` reports, with the two pictures, as text.
pub fn stats_text(
    path: &str,
    st: &mapkv::Stats,
    cache: &mapkv::CacheStats,
    opened: &str,
) -> String {
    let header = st.tail.saturating_sub(st.used_bytes);
    let free = st.file_len.saturating_sub(st.tail);
    let f = st.file_len;
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "{k:<14}{v}");
    };
    line(&mut s, "file", path.to_string());
    line(
        &mut s,
        "keys",
        format!("{} live{}", count(st.keys), expired_suffix(st.expired_keys)),
    );
    line(
        &mut s,
        "file size",
        format!("{} ({} bytes)", size(f), count(f)),
    );
    for (name, v) in [
        ("live", st.live_bytes),
        ("dead", st.dead_bytes),
        ("index", st.index_bytes),
        ("header", header),
        ("free", free),
    ] {
        line(
            &mut s,
            &format!("  {name}"),
            format!("{:>10}  {:5.1}%", size(v), percent(v, f)),
        );
    }
    line(
        &mut s,
        "index table",
        format!(
            "{} slots, {} used ({:.1}% load; rebuilt larger before 75%)",
            count(st.index_capacity),
            count(st.index_used),
            st.index_load * 100.0
        ),
    );
    line(
        &mut s,
        "log tail",
        format!(
            "offset {} (durable up to {})",
            count(st.tail),
            count(st.durable_tail)
        ),
    );
    line(&mut s, "commits", count(st.commits));
    line(&mut s, "generation", count(st.generation));
    line(&mut s, "remaps", count(st.remaps));
    line(&mut s, "opened", opened.to_string());
    if cache.capacity > 0 {
        line(
            &mut s,
            "cache",
            format!(
                "capacity {} ({:.1}% used)",
                size(cache.capacity),
                percent(cache.used_bytes, cache.capacity)
            ),
        );
        let reads = cache.hits + cache.misses;
        line(
            &mut s,
            "  hit ratio",
            if reads == 0 {
                "no reads counted yet".to_string()
            } else {
                format!(
                    "{:.1}% ({} of {}, by every process)",
                    cache.hit_ratio() * 100.0,
                    plural(cache.hits, "hit", "hits"),
                    plural(reads, "read", "reads")
                )
            },
        );
        line(
            &mut s,
            "  evictions",
            format!(
                "{} evicted in {}",
                plural(cache.evictions, "entry", "entries"),
                plural(cache.eviction_runs, "run", "runs")
            ),
        );
        line(
            &mut s,
            "  expired",
            format!("{} dropped", plural(cache.expirations, "entry", "entries")),
        );
    } else {
        line(
            &mut s,
            "cache",
            "none (not a cache: 'mapkv set-capacity' makes it one)".to_string(),
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "index  {}  {:.1}% ('|' = 75%)",
        load_bar(st.index_used, st.index_capacity, 40),
        st.index_load * 100.0
    );
    let segs = [
        ('▀', header),
        ('█', st.live_bytes),
        ('▓', st.index_bytes),
        ('▒', st.dead_bytes),
        ('░', free),
    ];
    let widths = cells(&segs.map(|(_, v)| v), 60);
    let mut bar = String::from("[");
    for ((c, _), n) in segs.iter().zip(widths) {
        bar.extend(std::iter::repeat_n(*c, n));
    }
    bar.push(']');
    let _ = writeln!(s, "file   {bar}  {}", size(f));
    let _ = writeln!(
        s,
        "       █ live {:.1}%  ▒ dead {:.1}%  ▓ index {:.1}%  ░ free {:.1}%  ▀ header {:.1}%",
        percent(st.live_bytes, f),
        percent(st.dead_bytes, f),
        percent(st.index_bytes, f),
        percent(free, f),
        percent(header, f),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_add_up() {
        assert_eq!(cells(&[1, 1, 1], 9), vec![3, 3, 3]);
        assert_eq!(cells(&[0, 0], 10), vec![0, 0]);
        let c = cells(&[1, 1_000_000, 0, 5], 60);
        assert_eq!(c.iter().sum::<usize>(), 60);
        assert_eq!(c[0], 1);
        assert_eq!(c[2], 0);
        assert_eq!(c[3], 1);
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "live key", "live keys"), "1 live key");
        assert_eq!(plural(2, "live key", "live keys"), "2 live keys");
        assert_eq!(plural(0, "entry", "entries"), "0 entries");
        assert_eq!(plural(1_000, "entry", "entries"), "1,000 entries");
        assert_eq!(commits(3, 3), "3 commits, all in the log");
        assert_eq!(commits(1, 1), "1 commit, all in the log");
        assert_eq!(
            commits(3, 1),
            "3 commits, 1 still in the log (compaction dropped the others)"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
    }

    #[test]
    fn load() {
        assert_eq!(load_bar(0, 8, 4), "[░░░|]");
        assert_eq!(load_bar(8, 8, 4), "[████]");
    }
}
