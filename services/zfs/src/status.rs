//! A parser for `zpool status -v`, as zfs-fuse (OpenSolaris-era: `scrub:` line, repaired bytes per
//! device) and OpenZFS (0.7 … 2.x: `scan:` line with continuation lines, counters like `1.88K`)
//! print it. There is no machine-readable form common to both (`-j` is OpenZFS 2.3+), so the text
//! is read leniently: a line that does not fit is kept as text, never a reason to fail; only a
//! text without `pool:` and `state:` is not a status at all.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use proxflow_schemas::health::{
    DataErrors, PoolStatus, ScanKind, ScanState, ScanStatus, VdevStatus,
};

/// Why a text is not a `zpool status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a zpool status: {0}")]
pub struct StatusParseError(String);

/// The header keys of a pool's block (`  pool:`, ` state:`, `status:` …), right-aligned by zpool.
const KEYS: [&str; 12] = [
    "pool",
    "id",
    "state",
    "status",
    "action",
    "see",
    "scan",
    "scrub",
    "remove",
    "checkpoint",
    "config",
    "errors",
];

/// Section lines inside the config table (no state columns).
const SECTIONS: [&str; 5] = ["logs", "cache", "spares", "special", "dedup"];

/// `key: value` when the line is one of [`KEYS`].
fn key_line(line: &str) -> Option<(&'static str, &str)> {
    let trimmed = line.trim_start();
    let (key, rest) = trimmed.split_once(':')?;
    let key = KEYS.iter().find(|k| **k == key)?;
    Some((key, rest.trim()))
}

/// Every pool's block of `text` (one per `pool:` line); the dates of scans are read in `tz`.
pub fn parse_all<Tz: TimeZone>(text: &str, tz: &Tz) -> Result<Vec<PoolStatus>, StatusParseError> {
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        if matches!(key_line(line), Some(("pool", _))) {
            blocks.push(Vec::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push(line);
        }
    }
    if blocks.is_empty() {
        return Err(StatusParseError("no `pool:` line".to_owned()));
    }
    blocks.iter().map(|b| parse_block(b, tz)).collect()
}

/// The first pool's status in `text`.
pub fn parse<Tz: TimeZone>(text: &str, tz: &Tz) -> Result<PoolStatus, StatusParseError> {
    parse_all(text, tz)?
        .into_iter()
        .next()
        .ok_or_else(|| StatusParseError("no pool".to_owned()))
}

fn parse_block<Tz: TimeZone>(lines: &[&str], tz: &Tz) -> Result<PoolStatus, StatusParseError> {
    // Header values, continuation lines (indented, not a key) appended to the last key.
    let mut fields: Vec<(&'static str, Vec<String>)> = Vec::new();
    let mut config: Vec<&str> = Vec::new();
    let mut files: Vec<String> = Vec::new();
    let mut in_config = false;
    let mut in_errors = false;
    for line in lines {
        match key_line(line) {
            Some(("config", _)) => {
                in_config = true;
                in_errors = false;
            }
            Some(("errors", rest)) => {
                in_config = false;
                in_errors = true;
                fields.push(("errors", vec![rest.to_owned()]));
            }
            Some((key, rest)) if !in_config && !in_errors => {
                fields.push((key, vec![rest.to_owned()]));
            }
            _ if in_config => config.push(line),
            _ if in_errors => {
                let file = line.trim();
                if !file.is_empty() {
                    files.push(file.to_owned());
                }
            }
            _ => {
                let more = line.trim();
                if let (Some((_, values)), false) = (fields.last_mut(), more.is_empty()) {
                    values.push(more.to_owned());
                }
            }
        }
    }
    let field = |key: &str| -> Option<&Vec<String>> {
        fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    };
    let joined = |key: &str, sep: &str| field(key).map(|v| v.join(sep)).unwrap_or_default();
    let pool = joined("pool", " ");
    let state = joined("state", " ");
    if pool.is_empty() || state.is_empty() {
        return Err(StatusParseError(format!(
            "pool {pool:?} without a `state:` line"
        )));
    }
    let vdevs = parse_config(&config);
    let scan_lines = field("scan").or_else(|| field("scrub"));
    let mut scan = scan_lines.map(|l| parse_scan(l, tz)).unwrap_or_default();
    if scan.repaired_bytes.is_none() && scan.state != ScanState::None {
        // zfs-fuse prints what a scrub repaired per device (`24.7M repaired`), not in `scrub:`.
        let per_device: Vec<u64> = vdevs
            .iter()
            .filter_map(|v| v.note.strip_suffix(" repaired").and_then(size_bytes))
            .collect();
        if !per_device.is_empty() {
            scan.repaired_bytes = Some(per_device.iter().sum());
        }
    }
    let errors_text = joined("errors", " ");
    let errors = DataErrors {
        clean: errors_text.starts_with("No known data errors"),
        count: errors_text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|_| errors_text.contains("data error")),
        files,
        text: errors_text,
    };
    Ok(PoolStatus {
        pool,
        state,
        status: joined("status", " "),
        action: joined("action", " "),
        scan,
        vdevs,
        errors,
    })
}

/// The config table: a `NAME STATE READ WRITE CKSUM` header sets the left edge; each vdev's
/// depth is its indentation beyond the pool line's, two columns a level.
fn parse_config(lines: &[&str]) -> Vec<VdevStatus> {
    let mut base: Option<usize> = None;
    let mut section = String::new();
    let mut vdevs = Vec::new();
    for line in lines {
        let expanded = line.replace('\t', "        ");
        let indent = expanded.len() - expanded.trim_start().len();
        let tokens: Vec<&str> = expanded.split_whitespace().collect();
        let Some(name) = tokens.first() else {
            continue;
        };
        if *name == "NAME" && tokens.get(1) == Some(&"STATE") {
            base = Some(indent);
            continue;
        }
        let Some(base) = base else {
            continue;
        };
        let depth = u32::try_from(indent.saturating_sub(base) / 2).unwrap_or(u32::MAX);
        if tokens.len() == 1 && SECTIONS.contains(name) {
            section = (*name).to_owned();
            continue;
        }
        let state = tokens.get(1).copied().unwrap_or("").to_owned();
        let counters: Vec<Option<u64>> = tokens.iter().skip(2).take(3).map(|t| count(t)).collect();
        let (read, write, cksum, rest_from) = match counters.as_slice() {
            [Some(r), Some(w), Some(c)] => (*r, *w, *c, 5),
            _ => (0, 0, 0, 2),
        };
        vdevs.push(VdevStatus {
            name: (*name).to_owned(),
            // A section's devices are listed one level in, like a pool's top-level vdevs.
            depth: if section.is_empty() {
                depth
            } else {
                depth.saturating_sub(1).max(1)
            },
            section: section.clone(),
            state,
            read,
            write,
            cksum,
            note: tokens.get(rest_from..).unwrap_or_default().join(" "),
        });
    }
    vdevs
}

/// An error counter: `0`, `514`, or OpenZFS's abbreviated `1.88K`.
fn count(token: &str) -> Option<u64> {
    token.parse().ok().or_else(|| size_bytes(token))
}

/// A size as zpool prints it (`0`, `0B`, `114K`, `24.7M`, `2.10T`), in bytes (rounded: the text
/// is). Powers of 1024, as zfs's `nicenum`.
pub fn size_bytes(token: &str) -> Option<u64> {
    let raw = token.trim();
    let t = raw.strip_suffix('B').unwrap_or(raw);
    if t.is_empty() {
        return None;
    }
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], Some(c.to_ascii_uppercase())),
        _ => (t, None),
    };
    let exponent = match unit {
        None => 0,
        Some('K') => 1,
        Some('M') => 2,
        Some('G') => 3,
        Some('T') => 4,
        Some('P') => 5,
        Some('E') => 6,
        Some(_) => return None,
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    // Truncation is fine: the printed figure is already rounded to three digits.
    Some((value * 1024f64.powi(exponent)) as u64)
}

/// The scan text (first line and continuations).
fn parse_scan<Tz: TimeZone>(lines: &[String], tz: &Tz) -> ScanStatus {
    let text = lines.join("; ");
    let flat = lines.join(" ");
    let words: Vec<&str> = flat.split_whitespace().collect();
    let mut scan = ScanStatus {
        text,
        ..ScanStatus::default()
    };
    if flat.trim().is_empty() || flat.contains("none requested") {
        return scan;
    }
    scan.kind = Some(if flat.contains("resilver") {
        ScanKind::Resilver
    } else {
        ScanKind::Scrub
    });
    scan.state = if flat.contains("in progress") {
        ScanState::Running
    } else if flat.contains("paused") {
        ScanState::Paused
    } else if flat.contains("canceled") || flat.contains("stopped") {
        ScanState::Canceled
    } else if flat.contains("completed") || flat.contains(" with ") {
        ScanState::Finished
    } else {
        // Something newer than this parser knows: keep the text, claim nothing.
        scan.kind = None;
        ScanState::None
    };
    let after = |word: &str| {
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|i| words.get(i + 1))
    };
    let before = |word: &str| {
        words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| words.get(i))
    };
    scan.errors = words
        .windows(3)
        .find(|w| w[0] == "with" && w[2].starts_with("error"))
        .and_then(|w| w[1].parse().ok());
    scan.repaired_bytes = match scan.state {
        // `scrub repaired 0B in …`, `resilvered 2.10T in …`.
        ScanState::Finished => after("repaired")
            .or_else(|| after("resilvered"))
            .and_then(|t| size_bytes(t)),
        // `0B repaired, 23.81% done`.
        _ => before("repaired")
            .or_else(|| before("resilvered"))
            .and_then(|t| size_bytes(t)),
    };
    scan.percent_done = words
        .iter()
        .find_map(|w| w.strip_suffix("%"))
        .and_then(|p| p.parse().ok());
    if matches!(scan.state, ScanState::Finished | ScanState::Canceled) {
        scan.duration_secs =
            duration_after(&words, "in").or_else(|| duration_after(&words, "after"));
        scan.ended_at = words
            .iter()
            .rposition(|w| *w == "on")
            .and_then(|i| words.get(i + 1..))
            .and_then(|rest| local_time(&rest.join(" "), tz));
    }
    scan
}

/// The duration after `word`: `00:04:12`, `0 days 17:49:44`, `3h40m`, `0h0m`.
fn duration_after(words: &[&str], word: &str) -> Option<u64> {
    let i = words.iter().position(|w| *w == word)?;
    let first = words.get(i + 1)?;
    let (days, clock) = match words.get(i + 2) {
        Some(&"days") | Some(&"day") => (first.parse::<u64>().ok()?, *words.get(i + 3)?),
        _ => (0, *first),
    };
    let secs = if let Some((h, rest)) = clock.split_once('h') {
        let m = rest.trim_end_matches(',').trim_end_matches('m');
        h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60
    } else {
        let parts: Vec<u64> = clock
            .trim_end_matches(',')
            .split(':')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        parts.iter().fold(0, |acc, p| acc * 60 + p)
    };
    Some(days * 86_400 + secs)
}

/// `Sun Dec  6 18:12:28 2026` (ctime, the host's local time) in `tz`.
fn local_time<Tz: TimeZone>(text: &str, tz: &Tz) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text.trim(), "%a %b %e %H:%M:%S %Y").ok()?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests;
