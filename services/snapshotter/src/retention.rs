//! The retention grid, as sanoid keeps snapshots: for each period (hour, day, ISO week, month, in
//! the policy's time zone) with a count N, the newest snapshot of each of the N most recent periods
//! that have a snapshot is kept. A snapshot kept by any period is kept; the newest snapshot is
//! always kept. Counting periods that *have* snapshots (rather than calendar periods back from now)
//! means a snapshotter that was stopped for a while does not wake up and prune everything older than
//! its window.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How many periods of each length to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grid {
    /// Newest snapshot of each of this many hours.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks (Monday to Sunday).
    pub weekly: u32,
    /// ... calendar months.
    pub monthly: u32,
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            hourly: 0,
            daily: 7,
            weekly: 4,
            monthly: 3,
        }
    }
}

impl Grid {
    /// Whether it keeps anything beyond the newest snapshot.
    pub fn is_empty(&self) -> bool {
        self.hourly == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeptBy {
    /// The newest of all.
    Newest,
    /// Newest of its hour.
    Hourly,
    /// Newest of its day.
    Daily,
    /// Newest of its week.
    Weekly,
    /// Newest of its month.
    Monthly,
}

/// A period key: which hour/day/week/month an instant falls in, in `tz`.
fn period(kind: KeptBy, at: DateTime<Utc>, tz: Tz) -> (i32, u32, u32, u32) {
    let local = at.with_timezone(&tz);
    match kind {
        KeptBy::Hourly => (local.year(), local.ordinal(), local.hour(), 0),
        KeptBy::Daily => (local.year(), local.ordinal(), 0, 0),
        KeptBy::Weekly => {
            let week = local.iso_week();
            (week.year(), week.week(), 0, 0)
        }
        KeptBy::Monthly | KeptBy::Newest => (local.year(), local.month(), 0, 0),
    }
}

/// Which of `snapshots` (name, time) the grid keeps, each with the periods that keep it.
pub fn keep<'a>(
    snapshots: &'a [(String, DateTime<Utc>)],
    grid: &Grid,
    tz: Tz,
) -> BTreeMap<&'a str, BTreeSet<KeptBy>> {
    let mut newest_first: Vec<&(String, DateTime<Utc>)> = snapshots.iter().collect();
    // Ties on time break by name, so the result does not depend on input order.
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept: BTreeMap<&str, BTreeSet<KeptBy>> = BTreeMap::new();
    if let Some((name, _)) = newest_first.first() {
        kept.entry(name.as_str())
            .or_default()
            .insert(KeptBy::Newest);
    }
    for (kind, count) in [
        (KeptBy::Hourly, grid.hourly),
        (KeptBy::Daily, grid.daily),
        (KeptBy::Weekly, grid.weekly),
        (KeptBy::Monthly, grid.monthly),
    ] {
        let mut seen = BTreeSet::new();
        for (name, at) in &newest_first {
            if seen.len() >= count as usize {
                break;
            }
            // The first snapshot met in a period is its newest.
            if seen.insert(period(kind, *at, tz)) {
                kept.entry(name.as_str()).or_default().insert(kind);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Duration;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn daily_from(start: &str, days: i64) -> Vec<(String, DateTime<Utc>)> {
        (0..days)
            .map(|d| {
                let at = utc(start) + Duration::days(d);
                (at.format("d%m%d").to_string(), at)
            })
            .collect()
    }

    fn names(kept: &BTreeMap<&str, BTreeSet<KeptBy>>) -> Vec<String> {
        kept.keys().map(|k| k.to_string()).collect()
    }

    /// One daily snapshot at 03:00 UTC from 2026-10-01 to 2026-11-30 (61 days), grid daily 7,
    /// weekly 4, monthly 3. 2026-11-30 is a Monday, so the ISO weeks are: 11-30 (week 49, only
    /// Monday), 11-23..29 (48), 11-16..22 (47), 11-09..15 (46).
    #[test]
    fn two_months_of_dailies_keep_exactly_the_grid() {
        let snaps = daily_from("2026-10-01T03:00:00Z", 61);
        let kept = keep(&snaps, &Grid::default(), chrono_tz::UTC);
        let mut expected: Vec<String> = [
            // daily 7: the last seven days
            "d1124", "d1125", "d1126", "d1127", "d1128", "d1129", "d1130",
            // weekly 4: newest of weeks 49 (11-30), 48 (11-29), 47 (11-22), 46 (11-15)
            "d1122", "d1115",
            // monthly 3: newest of November (11-30), October (10-31); only two months exist
            "d1031",
        ]
        .map(String::from)
        .to_vec();
        expected.sort();
        assert_eq!(names(&kept), expected);
        assert!(kept["d1130"].contains(&KeptBy::Newest));
        assert!(kept["d1130"].contains(&KeptBy::Monthly));
        assert_eq!(kept["d1122"], BTreeSet::from([KeptBy::Weekly]));
        assert_eq!(kept["d1031"], BTreeSet::from([KeptBy::Monthly]));
    }

    #[test]
    fn hourly_periods_and_ties() {
        let base = utc("2026-11-24T10:00:00Z");
        let snaps: Vec<(String, DateTime<Utc>)> = (0..6)
            .map(|i| (format!("s{i}"), base + Duration::minutes(30 * i)))
            .collect();
        // Hours 10 (s0, s1), 11 (s2, s3), 12 (s4, s5): hourly 2 keeps s5 and s3.
        let grid = Grid {
            hourly: 2,
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(names(&keep(&snaps, &grid, chrono_tz::UTC)), ["s3", "s5"]);
        // Input order does not matter.
        let mut reversed = snaps.clone();
        reversed.reverse();
        assert_eq!(names(&keep(&reversed, &grid, chrono_tz::UTC)), ["s3", "s5"]);
    }

    #[test]
    fn an_empty_grid_still_keeps_the_newest_and_gaps_do_not_empty_the_grid() {
        let snaps = daily_from("2026-01-01T03:00:00Z", 3);
        let empty = Grid {
            hourly: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        assert!(empty.is_empty());
        assert_eq!(names(&keep(&snaps, &empty, chrono_tz::UTC)), ["d0103"]);
        // Snapshots stopped in January; in "November" the daily 7 still keeps the 3 there are.
        let grid = Grid { daily: 7, ..empty };
        assert_eq!(keep(&snaps, &grid, chrono_tz::UTC).len(), 3);
        assert!(keep(&[], &grid, chrono_tz::UTC).is_empty());
    }

    #[test]
    fn days_follow_the_time_zone() {
        // 23:30 UTC on the 1st is already the 2nd in Berlin: two snapshots, one Berlin day.
        let snaps = vec![
            ("a".to_string(), utc("2026-11-02T00:30:00Z")),
            ("b".to_string(), utc("2026-11-01T23:30:00Z")),
        ];
        let grid = Grid {
            hourly: 0,
            daily: 2,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(keep(&snaps, &grid, chrono_tz::UTC).len(), 2);
        assert_eq!(
            names(&keep(&snaps, &grid, chrono_tz::Europe::Berlin)),
            ["a"]
        );
    }
}
