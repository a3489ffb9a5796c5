//! The shared periodic-schedule helper (snapshotter, replicator, later patcher): `daily@03:00`,
//! `weekly@sun 03:00`, `monthly@1 03:00`, in a configured time zone.
//!
//! A schedule is a series of *slots* (instants). What is due is decided from the slots, not from
//! timers: the most recent slot at or before now ([`Schedule::last_slot`]) is due when nothing was
//! done for it yet, so a service that was down at 03:00 catches up when it starts, and two instances
//! compute the same slot (and so the same snapshot name). Local times that do not exist (the hour
//! skipped when clocks go forward) move to the first instant after the gap; repeated local times
//! (clocks going back) take the earlier instant.
//!
//! [`every`] is the loop both services run those decisions in: a pass, then a pause, until shutdown.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;

use crate::lease::LeaseScope;

/// How often a schedule fires; also the kind marker in scheduled snapshot names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cadence {
    /// Every day.
    Daily,
    /// One day a week.
    Weekly,
    /// One day a month.
    Monthly,
    /// One day in the first month of each quarter (January, April, July, October).
    Quarterly,
}

impl Cadence {
    /// `daily`, `weekly`, `monthly`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Quarterly => "quarterly",
        }
    }

    /// The cadence with this label.
    pub fn from_label(label: &str) -> Option<Self> {
        match label {
            "daily" => Some(Self::Daily),
            "weekly" => Some(Self::Weekly),
            "monthly" => Some(Self::Monthly),
            "quarterly" => Some(Self::Quarterly),
            _ => None,
        }
    }
}

/// A parsed schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every day at `at`.
    Daily {
        /// Local time of day.
        at: NaiveTime,
    },
    /// Every `day` at `at`.
    Weekly {
        /// Day of the week.
        day: Weekday,
        /// Local time of day.
        at: NaiveTime,
    },
    /// On day `day` (1–28, so every month has it) at `at`.
    Monthly {
        /// Day of the month.
        day: u32,
        /// Local time of day.
        at: NaiveTime,
    },
    /// On day `day` (1–28) of January, April, July and October at `at`.
    Quarterly {
        /// Day of the month.
        day: u32,
        /// Local time of day.
        at: NaiveTime,
    },
}

/// Why a schedule did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "schedule {0:?} is not one of `daily@HH:MM`, `weekly@<mon..sun> HH:MM`, `monthly@<1..28> HH:MM`, \
     `quarterly@<1..28> HH:MM` (January, April, July, October)"
)]
pub struct ScheduleError(pub String);

/// How far back [`Schedule::last_slot`] looks; a quarterly schedule has a slot within 92 days.
const LOOKBACK_DAYS: i64 = 100;
/// The most slots [`Schedule::slots_between`] returns (a year and a half of daily slots).
pub const MAX_SLOTS: usize = 550;

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ScheduleError(text.to_owned());
        let (kind, rest) = text.trim().split_once('@').ok_or_else(err)?;
        let time = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| err());
        match kind {
            "daily" => Ok(Self::Daily { at: time(rest)? }),
            "weekly" => {
                let (day, at) = rest.trim().split_once(' ').ok_or_else(err)?;
                let day: Weekday = day.parse().map_err(|_| err())?;
                Ok(Self::Weekly { day, at: time(at)? })
            }
            "monthly" | "quarterly" => {
                let (day, at) = rest.trim().split_once(' ').ok_or_else(err)?;
                let day: u32 = day.parse().map_err(|_| err())?;
                if !(1..=28).contains(&day) {
                    return Err(err());
                }
                let at = time(at)?;
                Ok(if kind == "monthly" {
                    Self::Monthly { day, at }
                } else {
                    Self::Quarterly { day, at }
                })
            }
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Daily { at } => write!(f, "daily@{}", at.format("%H:%M")),
            Self::Weekly { day, at } => {
                write!(
                    f,
                    "weekly@{} {}",
                    day.to_string().to_lowercase(),
                    at.format("%H:%M")
                )
            }
            Self::Monthly { day, at } => write!(f, "monthly@{day} {}", at.format("%H:%M")),
            Self::Quarterly { day, at } => write!(f, "quarterly@{day} {}", at.format("%H:%M")),
        }
    }
}

impl Schedule {
    /// Its cadence.
    pub fn cadence(&self) -> Cadence {
        match self {
            Self::Daily { .. } => Cadence::Daily,
            Self::Weekly { .. } => Cadence::Weekly,
            Self::Monthly { .. } => Cadence::Monthly,
            Self::Quarterly { .. } => Cadence::Quarterly,
        }
    }

    /// The slot on local date `date`, if the schedule has one that day.
    fn slot_on(&self, tz: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
        let at = match *self {
            Self::Daily { at } => at,
            Self::Weekly { day, at } if date.weekday() == day => at,
            Self::Monthly { day, at } if date.day() == day => at,
            Self::Quarterly { day, at } if date.day() == day && date.month() % 3 == 1 => at,
            _ => return None,
        };
        let local = date.and_time(at);
        let instant = tz
            .from_local_datetime(&local)
            .earliest()
            // In a spring-forward gap: the same wall time an hour later exists.
            .or_else(|| {
                tz.from_local_datetime(&(local + Duration::hours(1)))
                    .earliest()
            })?;
        Some(instant.with_timezone(&Utc))
    }

    /// The most recent slot at or before `now`.
    pub fn last_slot(&self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&tz).date_naive();
        (0..=LOOKBACK_DAYS)
            .filter_map(|back| today.checked_sub_signed(Duration::days(back)))
            .filter_map(|date| self.slot_on(tz, date))
            .find(|slot| *slot <= now)
    }

    /// The first slot after `now` (within the next [`LOOKBACK_DAYS`] days, which every schedule
    /// has one in).
    pub fn next_slot(&self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&tz).date_naive();
        (0..=LOOKBACK_DAYS)
            .filter_map(|ahead| today.checked_add_signed(Duration::days(ahead)))
            .filter_map(|date| self.slot_on(tz, date))
            .find(|slot| *slot > now)
    }

    /// Slots in `[from, to]`, oldest first, at most [`MAX_SLOTS`] (the newest ones).
    pub fn slots_between(
        &self,
        tz: Tz,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let mut slots = Vec::new();
        let Some(mut date) = from.with_timezone(&tz).date_naive().pred_opt() else {
            return slots;
        };
        let last = to.with_timezone(&tz).date_naive();
        while date <= last {
            if let Some(slot) = self.slot_on(tz, date)
                && slot >= from
                && slot <= to
            {
                slots.push(slot);
            }
            let Some(next) = date.succ_opt() else { break };
            date = next;
        }
        if slots.len() > MAX_SLOTS {
            slots.drain(..slots.len() - MAX_SLOTS);
        }
        slots
    }
}

/// Runs `pass` until `shutdown`, waiting `interval` after each one. A pass running when shutdown
/// comes gets `grace` to finish; past it, it is dropped and the leases it held are released (a
/// dropped pass cannot release them itself, and they would block the dataset for 15 minutes).
pub async fn every<F, Fut>(
    interval: StdDuration,
    shutdown: &CancellationToken,
    grace: StdDuration,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    while !shutdown.is_cancelled() {
        let scope = LeaseScope::new();
        // Boxed, not pinned on the stack, so that it can be dropped before its leases are released.
        let mut running = Box::pin(scope.run(pass()));
        tokio::select! {
            () = &mut running => {}
            () = shutdown.cancelled() => {
                if tokio::time::timeout(grace, &mut running).await.is_err() {
                    tracing::warn!(?grace, "pass still running after the grace period; abandoned");
                    // Dropped first: it must not renew or use what is released next.
                    drop(running);
                    scope.release_abandoned().await;
                }
                return;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Passes taking `takes` every minute, with 10 s of grace: shutdown comes during the second.
    /// Returns how many started and how many finished.
    async fn passes_until_shutdown(takes: StdDuration) -> (u32, u32) {
        use std::sync::atomic::{AtomicU32, Ordering};
        let (started, finished) = (AtomicU32::new(0), AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let (interval, grace) = (StdDuration::from_secs(60), StdDuration::from_secs(10));
        every(interval, &shutdown, grace, || async {
            if started.fetch_add(1, Ordering::SeqCst) == 1 {
                shutdown.cancel();
            }
            tokio::time::sleep(takes).await;
            finished.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        (started.into_inner(), finished.into_inner())
    }

    #[tokio::test(start_paused = true)]
    async fn every_lets_a_running_pass_finish_within_the_grace_and_drops_it_after() {
        assert_eq!(
            passes_until_shutdown(StdDuration::from_secs(5)).await,
            (2, 2)
        );
        assert_eq!(
            passes_until_shutdown(StdDuration::from_secs(20)).await,
            (2, 1)
        );
    }

    #[test]
    fn parses_and_prints_the_four_forms() {
        for text in [
            "daily@03:00",
            "weekly@sun 03:30",
            "monthly@1 23:59",
            "quarterly@15 04:00",
        ] {
            let s: Schedule = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        assert_eq!(
            "weekly@Sunday 03:00"
                .parse::<Schedule>()
                .unwrap()
                .to_string(),
            "weekly@sun 03:00"
        );
        for bad in [
            "",
            "daily",
            "daily@25:00",
            "hourly@00",
            "weekly@03:00",
            "monthly@29 03:00",
            "monthly@0 01:00",
            "quarterly@31 01:00",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn last_slot_is_the_most_recent_at_or_before_now() {
        let daily: Schedule = "daily@03:00".parse().unwrap();
        let tz = chrono_tz::UTC;
        assert_eq!(
            daily.last_slot(tz, utc("2026-11-24T02:59:59Z")),
            Some(utc("2026-11-23T03:00:00Z"))
        );
        assert_eq!(
            daily.last_slot(tz, utc("2026-11-24T03:00:00Z")),
            Some(utc("2026-11-24T03:00:00Z"))
        );
        // 2026-11-24 is a Tuesday.
        let weekly: Schedule = "weekly@sun 03:00".parse().unwrap();
        assert_eq!(
            weekly.last_slot(tz, utc("2026-11-24T12:00:00Z")),
            Some(utc("2026-11-22T03:00:00Z"))
        );
        let monthly: Schedule = "monthly@28 03:00".parse().unwrap();
        assert_eq!(
            monthly.last_slot(tz, utc("2026-11-24T12:00:00Z")),
            Some(utc("2026-10-28T03:00:00Z"))
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let daily: Schedule = "daily@03:00".parse().unwrap();
        let berlin = chrono_tz::Europe::Berlin;
        // Winter: CET = UTC+1.
        assert_eq!(
            daily.last_slot(berlin, utc("2026-11-24T12:00:00Z")),
            Some(utc("2026-11-24T02:00:00Z"))
        );
        // 2026-03-29 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        let in_gap: Schedule = "daily@02:30".parse().unwrap();
        assert_eq!(
            in_gap.last_slot(berlin, utc("2026-03-29T12:00:00Z")),
            Some(utc("2026-03-29T01:30:00Z"))
        );
        // 2026-10-25 02:30 happens twice; the first (CEST, UTC+2) counts.
        assert_eq!(
            in_gap.last_slot(berlin, utc("2026-10-25T12:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn slots_between_lists_every_slot_in_range() {
        let daily: Schedule = "daily@03:00".parse().unwrap();
        let slots = daily.slots_between(
            chrono_tz::UTC,
            utc("2026-11-01T03:00:00Z"),
            utc("2026-11-30T12:00:00Z"),
        );
        assert_eq!(slots.len(), 30);
        assert_eq!(slots[0], utc("2026-11-01T03:00:00Z"));
        assert_eq!(slots[29], utc("2026-11-30T03:00:00Z"));
        let weekly: Schedule = "weekly@mon 06:00".parse().unwrap();
        assert_eq!(
            weekly
                .slots_between(
                    chrono_tz::UTC,
                    utc("2026-11-01T00:00:00Z"),
                    utc("2026-11-30T23:00:00Z")
                )
                .len(),
            5
        );
    }

    #[test]
    fn quarterly_slots_fall_in_the_first_month_of_each_quarter_and_catch_up_across_a_quarter() {
        let q: Schedule = "quarterly@2 03:00".parse().unwrap();
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // Mid-March: the last slot was 2 January (CET, UTC+1), the next is 2 April (CEST, UTC+2).
        let now = utc("2026-03-15T12:00:00Z");
        assert_eq!(q.last_slot(tz, now), Some(utc("2026-01-02T02:00:00Z")));
        assert_eq!(q.next_slot(tz, now), Some(utc("2026-04-02T01:00:00Z")));
        let year = q.slots_between(tz, utc("2026-01-01T00:00:00Z"), utc("2026-12-31T00:00:00Z"));
        let months: Vec<u32> = year.iter().map(|s| s.month()).collect();
        assert_eq!(months, [1, 4, 7, 10]);
        // A slot is not after itself: the next one after a slot is the one a quarter later.
        assert_eq!(
            q.next_slot(tz, utc("2026-04-02T01:00:00Z")),
            Some(utc("2026-07-02T01:00:00Z"))
        );
    }
}
