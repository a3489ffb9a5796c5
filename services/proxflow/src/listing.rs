//! What the listing commands (`workflows`, `workflow`, `approvals`, `deadletters`) share: aligned
//! tables, times and ages as an operator reads them, the `--since` argument, and printing a model
//! as JSON.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A text table: a header and rows, each column as wide as its widest cell, two spaces apart. An
/// empty cell shows as `-`, so every column of every row has something at its start.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column; line breaks in a cell become spaces).
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let cells = cells
            .into_iter()
            .map(|c| {
                let c = c.replace(['\n', '\r'], " ");
                if c.trim().is_empty() {
                    "-".to_owned()
                } else {
                    c
                }
            })
            .collect();
        self.rows.push(cells);
    }

    /// The table, every line starting with `indent`; the last column is not padded.
    pub fn render(&self, indent: &str) -> String {
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in lines {
            out.push_str(indent);
            let last = line.len().saturating_sub(1);
            for (i, cell) in line.iter().enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    let width = widths.get(i).copied().unwrap_or(0);
                    let pad = width.saturating_sub(cell.chars().count());
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// A time as the listings show it: UTC to the second.
pub fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// How long ago `then` was, in its largest unit: `42s`, `5m`, `3h`, `12d`.
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `--since`: a duration back from now (`90m`, `2d`) or an RFC 3339 time.
pub fn since(arg: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(arg) {
        return Ok(t.with_timezone(&Utc));
    }
    let back = humantime_serde::re::humantime::parse_duration(arg).map_err(|e| {
        format!("{arg:?} is neither a duration (90m, 2d) nor an RFC 3339 time: {e}")
    })?;
    chrono::Duration::from_std(back)
        .ok()
        .and_then(|back| Utc::now().checked_sub_signed(back))
        .ok_or_else(|| format!("{arg:?} reaches too far back"))
}

/// Prints `model` as indented JSON.
pub fn print_json(model: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(model)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_start_where_their_header_starts() {
        let mut t = Table::new(&["ID", "STATE", "NOTE"]);
        t.row(["a-long-id".to_owned(), "ok".to_owned(), "x".to_owned()]);
        t.row(["b".to_owned(), String::new(), "two\nlines".to_owned()]);
        assert_eq!(
            t.render(""),
            "ID         STATE  NOTE\n\
             a-long-id  ok     x\n\
             b          -      two lines\n"
        );
        assert!(t.render("  ").lines().all(|l| l.starts_with("  ")));
    }

    #[test]
    fn ages_in_their_largest_unit() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap_or_default();
        let ago = |s: i64| age(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(300), "5m");
        assert_eq!(ago(3 * 3600 + 59), "3h");
        assert_eq!(ago(3 * 86_400), "3d");
        assert_eq!(ago(-5), "0s");
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        assert_eq!(
            since("2026-12-06T10:00:00+02:00").map(|t| t.to_rfc3339()),
            Ok("2026-12-06T08:00:00+00:00".to_owned())
        );
        let hour_ago = since("1h").unwrap_or_default();
        let drift = (Utc::now() - chrono::Duration::hours(1) - hour_ago).num_seconds();
        assert!(drift.abs() < 5, "{hour_ago}");
        assert!(since("yesterday-ish").is_err());
    }
}
