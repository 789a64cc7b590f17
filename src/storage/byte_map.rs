//! Test support: read the byte maps written in doc comments and in
//! docs/FORMAT.md, so that unit tests can check them against the structs
//! that define the layout (`offset_of!`, `size_of`). A map that drifts from
//! its struct fails a test instead of misleading a reader.

use std::mem::size_of;

/// One row of a byte map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    pub offset: usize,
    /// `None` where the map has no size column.
    pub size: Option<usize>,
    /// The field's name; padding rows are named in parentheses.
    pub field: String,
}

impl Row {
    pub(crate) fn is_padding(&self) -> bool {
        self.field.starts_with('(')
    }
}

/// The size of a field, named by a projection (`|c: &ControlBlock| &c.tail`):
/// works without a value of the struct.
pub(crate) fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// `[(name, offset, size)]` of the named fields of a struct.
macro_rules! fields {
    ($t:ty: $($f:ident),* $(,)?) => {
        vec![$((
            stringify!($f),
            std::mem::offset_of!($t, $f),
            $crate::storage::byte_map::size_of_field(|x: &$t| &x.$f),
        )),*]
    };
}
pub(crate) use fields;

/// The rows of the first `text` block of the `//!` doc comment in
/// `source` whose header line starts with `offset` (`offset size field
/// ...` or `offset field ...`), up to the block's end. Continuation lines
/// (indented) are skipped.
pub(crate) fn doc_comment(source: &str) -> Vec<Row> {
    let doc: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let mut rows = Vec::new();
    let mut sized = None;
    for line in doc {
        let words: Vec<&str> = line.split_whitespace().collect();
        match sized {
            None if words.first() == Some(&"offset") => {
                sized = Some(words.get(1) == Some(&"size"));
            }
            None => {}
            Some(_) if line.starts_with("```") => break,
            // A continuation line is indented.
            Some(_) if line.starts_with(char::is_whitespace) => {}
            Some(sized) => {
                let Some(offset) = words.first().and_then(|w| w.parse().ok()) else {
                    continue;
                };
                let (size, field) = if sized {
                    (words.get(1).and_then(|w| w.parse().ok()), words.get(2))
                } else {
                    (None, words.get(1))
                };
                rows.push(Row {
                    offset,
                    size,
                    field: field.expect("a field name after the offset").to_string(),
                });
            }
        }
    }
    rows
}

/// The rows of the first Markdown table after the first line of
/// `markdown` that contains `heading`, whose header row starts with
/// `| offset |`. Offsets may be written as sums (`8192 + 24`); field names
/// may be in backquotes.
pub(crate) fn markdown_table(markdown: &str, heading: &str) -> Vec<Row> {
    let mut lines = markdown
        .lines()
        .skip_while(|l| !l.contains(heading))
        .skip_while(|l| !l.starts_with("| offset |"));
    let header = lines.next().expect("a table with an offset column");
    let sized = header.starts_with("| offset | size |");
    let mut rows = Vec::new();
    for line in lines.skip(1) {
        let Some(line) = line.strip_prefix('|') else {
            break;
        };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let offset = cells[0]
            .split('+')
            .map(|t| t.trim().parse::<usize>().expect("a numeric offset"))
            .sum();
        let (size, field) = if sized {
            (Some(cells[1].parse().expect("a numeric size")), cells[2])
        } else {
            (None, cells[1])
        };
        rows.push(Row {
            offset,
            size,
            field: field.trim_matches('`').to_string(),
        });
    }
    rows
}

/// Check `rows` against the struct's `fields` (`(name, offset, size)`):
/// every row names a field (or padding) at that field's offset and size;
/// every field has a row; where sizes are given, the rows tile
/// `0..struct_len` with no gap or overlap. `base` is subtracted from each
/// row's offset (a table written in file offsets). Panics with `what`
/// and the first disagreement.
pub(crate) fn check(
    what: &str,
    rows: &[Row],
    base: usize,
    fields: &[(&str, usize, usize)],
    struct_len: usize,
) {
    assert!(!rows.is_empty(), "{what}: no byte map found");
    let mut end = 0;
    for row in rows {
        let offset = row
            .offset
            .checked_sub(base)
            .unwrap_or_else(|| panic!("{what}: {row:?} lies before the structure's start {base}"));
        if let Some(size) = row.size {
            assert_eq!(
                offset, end,
                "{what}: {row:?} does not start where the row before ends"
            );
            end = offset + size;
        }
        if row.is_padding() {
            continue;
        }
        let &(_, at, len) = fields
            .iter()
            .find(|(name, ..)| *name == row.field)
            .unwrap_or_else(|| panic!("{what}: {row:?} names no field of the struct"));
        assert_eq!(offset, at, "{what}: offset of `{}`", row.field);
        if let Some(size) = row.size {
            assert_eq!(size, len, "{what}: size of `{}`", row.field);
        }
    }
    if rows.iter().all(|r| r.size.is_some()) {
        assert_eq!(end, struct_len, "{what}: the rows end at {end}");
    }
    for (name, ..) in fields {
        assert!(
            rows.iter().any(|r| r.field == *name),
            "{what}: field `{name}` is missing from the byte map"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_styles() {
        let src = "//! ```text\n//! offset size field  meaning\n//! 0      4    a      x\n\
                   //!                    8 more\n//! 4      2    (zero)\n//! ```\n//! 9 9 z\n";
        let rows = doc_comment(src);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            Row {
                offset: 0,
                size: Some(4),
                field: "a".into()
            }
        );
        assert!(rows[1].is_padding());
        let md = "## T (`x.rs`)\n\n| offset | field | meaning |\n| --- | --- | --- |\n\
                  | 10 + 8 | `b` | y |\n| 10 + 16 | c | |\n\nafter\n";
        let rows = markdown_table(md, "(`x.rs`)");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].offset, rows[0].size), (18, None));
        assert_eq!(rows[0].field, "b");
    }

    #[test]
    #[should_panic(expected = "offset of `b`")]
    fn drift_is_caught() {
        let rows = doc_comment("//! offset field\n//! 0 a\n//! 8 b\n");
        check("t", &rows, 0, &[("a", 0, 8), ("b", 16, 8)], 24);
    }
}
