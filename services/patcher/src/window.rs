//! The weekly maintenance window, in a time zone: which window an instant is in, and when the next
//! one starts. Days and the start are wall-clock times of the zone, so a window stays at 02:00
//! across a daylight-saving change (its length in hours is what is configured).

use std::time::Duration;

use chrono::{DateTime, Datelike, Days, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use proxflow_runtime::config::ConfigError;
use serde::{Deserialize, Serialize};

/// `[patch.window]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Days it opens on (`Sun`, `Mon`, ...).
    pub days: Vec<String>,
    /// Wall-clock start, `HH:MM`.
    pub start: String,
    /// How long it stays open.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// IANA time zone of `days` and `start`.
    pub timezone: String,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            days: vec!["Sun".into()],
            start: "02:00".into(),
            duration: Duration::from_secs(3 * 3600),
            timezone: "UTC".into(),
        }
    }
}

/// One opening of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// When it opens.
    pub start: DateTime<Utc>,
    /// When it closes.
    pub end: DateTime<Utc>,
}

impl Span {
    /// Whether `at` is inside.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

/// A checked window.
#[derive(Debug, Clone)]
pub struct Window {
    days: Vec<Weekday>,
    start: NaiveTime,
    length: chrono::Duration,
    tz: Tz,
}

impl WindowConfig {
    /// A window that is always open (every day from 00:00 for 24 hours): patching whenever a run is
    /// started, gated only by the gates.
    pub fn always_open() -> Self {
        Self {
            days: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
                .map(String::from)
                .to_vec(),
            start: "00:00".into(),
            duration: Duration::from_secs(24 * 3600),
            timezone: "UTC".into(),
        }
    }

    /// Checks it, naming the key of a bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked().map(|_| ())
    }

    /// The window it describes.
    pub fn checked(&self) -> Result<Window, ConfigError> {
        if self.days.is_empty() {
            return Err(ConfigError::value("patch.window.days", "must name a day"));
        }
        let days = self
            .days
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.parse::<Weekday>().map_err(|_| {
                    ConfigError::value(
                        format!("patch.window.days[{i}]"),
                        format!("{d:?} is not a day (Mon, Tue, ... Sun)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let start = NaiveTime::parse_from_str(&self.start, "%H:%M").map_err(|_| {
            ConfigError::value(
                "patch.window.start",
                format!("{:?} is not a time HH:MM", self.start),
            )
        })?;
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::value(
                "patch.window.duration",
                "must be above zero and at most 24h",
            ));
        }
        let tz: Tz = self.timezone.parse().map_err(|_| {
            ConfigError::value(
                "patch.window.timezone",
                format!("{:?} is not an IANA time zone", self.timezone),
            )
        })?;
        let length = chrono::Duration::from_std(self.duration)
            .map_err(|e| ConfigError::value("patch.window.duration", e.to_string()))?;
        Ok(Window {
            days,
            start,
            length,
            tz,
        })
    }
}

impl Window {
    /// The openings that start on the local days around `at` (yesterday to two weeks ahead: an
    /// opening that falls into a daylight-saving gap does not happen that week), oldest first.
    fn openings_around(&self, at: DateTime<Utc>) -> impl Iterator<Item = Span> + '_ {
        let today = at.with_timezone(&self.tz).date_naive();
        (0..=15u64).filter_map(move |offset| {
            let day = today
                .checked_sub_days(Days::new(1))?
                .checked_add_days(Days::new(offset))?;
            if !self.days.contains(&day.weekday()) {
                return None;
            }
            // A start inside a DST gap does not exist that day; take the earliest of an ambiguous one.
            let start = self
                .tz
                .from_local_datetime(&day.and_time(self.start))
                .earliest()?
                .with_timezone(&Utc);
            Some(Span {
                start,
                end: start + self.length,
            })
        })
    }

    /// The opening `at` is in, if any.
    pub fn current(&self, at: DateTime<Utc>) -> Option<Span> {
        self.openings_around(at).find(|s| s.contains(at))
    }

    /// The first opening that starts after `at`.
    pub fn next_after(&self, at: DateTime<Utc>) -> Option<Span> {
        self.openings_around(at).find(|s| s.start > at)
    }

    /// The opening `at` is in, else the next one.
    pub fn current_or_next(&self, at: DateTime<Utc>) -> Option<Span> {
        self.current(at).or_else(|| self.next_after(at))
    }

    /// Until when a decision asked for at `at` may be given and used: the end of the next window
    /// that opens after `at` (asked during Sunday's window, it is good through next Sunday's).
    pub fn approval_expiry(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(at).map(|s| s.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[&str], start: &str, hours: u64, tz: &str) -> Window {
        WindowConfig {
            days: days.iter().map(|d| (*d).to_string()).collect(),
            start: start.into(),
            duration: Duration::from_secs(hours * 3600),
            timezone: tz.into(),
        }
        .checked()
        .expect("valid")
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn sunday_two_to_five_utc() {
        let w = window(&["Sun"], "02:00", 3, "UTC");
        // 2026-12-06 is a Sunday.
        let inside = at("2026-12-06T03:00:00Z");
        assert_eq!(
            w.current(inside),
            Some(Span {
                start: at("2026-12-06T02:00:00Z"),
                end: at("2026-12-06T05:00:00Z")
            })
        );
        assert_eq!(w.current(at("2026-12-06T05:00:00Z")), None);
        assert_eq!(w.current(at("2026-12-06T12:00:00Z")), None);
        assert_eq!(
            w.next_after(at("2026-12-06T12:00:00Z")).map(|s| s.start),
            Some(at("2026-12-13T02:00:00Z"))
        );
        assert_eq!(
            w.next_after(inside).map(|s| s.start),
            Some(at("2026-12-13T02:00:00Z"))
        );
        assert_eq!(
            w.approval_expiry(at("2026-12-08T10:00:00Z")),
            Some(at("2026-12-13T05:00:00Z"))
        );
        assert_eq!(w.approval_expiry(inside), Some(at("2026-12-13T05:00:00Z")));
    }

    #[test]
    fn the_window_keeps_its_wall_clock_time_across_daylight_saving() {
        let w = window(&["Sun"], "02:30", 3, "Europe/Berlin");
        // 2026-03-29: clocks go 02:00 -> 03:00 in Berlin; 02:30 does not exist that day.
        assert_eq!(
            w.next_after(at("2026-03-28T12:00:00Z")).map(|s| s.start),
            Some(at("2026-04-05T00:30:00Z"))
        );
        // Winter: 02:30 CET is 01:30 UTC.
        assert_eq!(
            w.next_after(at("2026-12-01T00:00:00Z")).map(|s| s.start),
            Some(at("2026-12-06T01:30:00Z"))
        );
    }

    #[test]
    fn the_always_open_window_contains_any_instant() {
        let w = WindowConfig::always_open().checked().expect("valid");
        for t in [
            "2026-12-06T00:00:00Z",
            "2026-12-09T13:37:00Z",
            "2026-03-29T23:59:59Z",
        ] {
            assert!(w.current(at(t)).is_some(), "{t}");
        }
    }

    #[test]
    fn bad_windows_name_their_key() {
        let bad = |c: WindowConfig| c.validate().expect_err("refused").to_string();
        let base = WindowConfig::default();
        assert!(
            bad(WindowConfig {
                days: vec!["Sonntag".into()],
                ..base.clone()
            })
            .contains("patch.window.days[0]")
        );
        assert!(
            bad(WindowConfig {
                timezone: "Mars/Olympus".into(),
                ..base.clone()
            })
            .contains("patch.window.timezone")
        );
        assert!(
            bad(WindowConfig {
                duration: Duration::ZERO,
                ..base
            })
            .contains("patch.window.duration")
        );
    }
}
