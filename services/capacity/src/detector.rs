//! The sustained-threshold detector of one metric: a pure state machine, persisted as is.
//!
//! - **Normal → Exceeded** when every observation over a whole `window` is above `threshold`. The
//!   run starts at the first observation above it; any observation at or below it, a failed poll,
//!   or a gap between observations longer than `max_gap` ends the run. So a spike shorter than the
//!   window never fires, and time nobody looked never counts as sustained.
//! - **Exceeded → Normal** (recovered) when an observation falls below `clear_below` (hysteresis:
//!   values between `clear_below` and `threshold` neither recover nor keep the run going).
//! - **Exceeded, still over** for another whole window: fires again with the next `sequence`, so a
//!   cluster that one new node did not relieve can get another (cooldown and caps still apply).
//!
//! Each firing is identified by (metric, run start, sequence): the same from any replica and after
//! any restart, which is what makes the events' dedupe ids and the scale-out workflow ids stable.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxflow_schemas::capacity::Observation;
use serde::{Deserialize, Serialize};

use crate::config::Rule;

/// Where a metric stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not exceeded.
    #[default]
    Normal,
    /// Exceeded since `episode_since`.
    Exceeded,
}

/// A detector's state, as stored in the `pf_capacity` bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    /// Normal or exceeded.
    pub status: Status,
    /// Start of the current unbroken run above the threshold.
    pub run_since: Option<DateTime<Utc>>,
    /// The run's observations within the last window (the evidence of a firing).
    pub run: VecDeque<Observation>,
    /// Time of the last observation taken into account (older or equal ones are ignored, which
    /// makes a second replica's or a replayed poll harmless).
    pub last_at: Option<DateTime<Utc>>,
    /// When the current episode's first firing run began.
    pub episode_since: Option<DateTime<Utc>>,
    /// Firings so far in the current episode.
    pub fired: u32,
}

/// What one observation changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Fire `capacity.exceeded`.
    Exceeded {
        /// Run start (the firing id's time).
        since: DateTime<Utc>,
        /// Firing number within the episode.
        sequence: u32,
        /// The window's observations.
        evidence: Vec<Observation>,
    },
    /// Fire `capacity.recovered`.
    Recovered {
        /// Start of the episode that ended.
        episode_since: DateTime<Utc>,
    },
}

/// The outcome of feeding one observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The state changed and must be stored.
    pub changed: bool,
    /// An event to publish, if any.
    pub transition: Option<Transition>,
}

const UNCHANGED: Step = Step {
    changed: false,
    transition: None,
};

impl DetectorState {
    /// A poll failed (or returned nothing for this metric) at `at`: the run is broken.
    pub fn missed(&mut self, at: DateTime<Utc>) -> Step {
        if self.last_at.is_some_and(|last| at <= last) || self.run_since.is_none() {
            return UNCHANGED;
        }
        self.break_run();
        Step {
            changed: true,
            transition: None,
        }
    }

    fn break_run(&mut self) {
        self.run_since = None;
        self.run.clear();
    }

    /// Feeds the observation `value` at `at` under `rule`.
    pub fn observe(
        &mut self,
        rule: &Rule,
        max_gap: Duration,
        at: DateTime<Utc>,
        value: f64,
    ) -> Step {
        if self.last_at.is_some_and(|last| at <= last) {
            return UNCHANGED;
        }
        let window = chrono::Duration::from_std(rule.window).unwrap_or(chrono::Duration::MAX);
        let gap = chrono::Duration::from_std(max_gap).unwrap_or(chrono::Duration::MAX);
        if self.last_at.is_some_and(|last| at - last > gap) {
            self.break_run();
        }
        self.last_at = Some(at);
        let mut transition = None;
        if self.status == Status::Exceeded && value < rule.clear_below {
            transition = Some(Transition::Recovered {
                episode_since: self.episode_since.unwrap_or(at),
            });
            self.status = Status::Normal;
            self.episode_since = None;
            self.fired = 0;
            self.break_run();
        } else if value > rule.threshold && rule.enabled {
            let since = *self.run_since.get_or_insert(at);
            self.run.push_back(Observation { at, value });
            while self.run.front().is_some_and(|o| at - o.at > window) {
                self.run.pop_front();
            }
            if at - since >= window {
                let sequence = self.fired;
                transition = Some(Transition::Exceeded {
                    since,
                    sequence,
                    evidence: self.run.iter().copied().collect(),
                });
                if self.status == Status::Normal {
                    self.status = Status::Exceeded;
                    self.episode_since = Some(since);
                }
                self.fired += 1;
                // A re-firing needs another whole window over the threshold, starting now.
                self.run_since = Some(at);
                self.run.clear();
                self.run.push_back(Observation { at, value });
            }
        } else {
            self.break_run();
        }
        Step {
            changed: true,
            transition,
        }
    }

    /// Bytes this state holds in memory (the struct and its evidence buffer).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.run.capacity() * std::mem::size_of::<Observation>()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).expect("time")
    }

    fn rule() -> Rule {
        Rule::default()
    }

    const GAP: Duration = Duration::from_secs(90);

    fn feed(d: &mut DetectorState, from: i64, values: &[f64]) -> Vec<(i64, Transition)> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let m = from + i as i64;
                d.observe(&rule(), GAP, t(m), *v)
                    .transition
                    .map(|tr| (m, tr))
            })
            .collect()
    }

    #[test]
    fn a_spike_shorter_than_the_window_never_fires() {
        let mut d = DetectorState::default();
        let mut values = vec![80.0; 15];
        values.push(50.0);
        values.extend(vec![80.0; 15]);
        assert_eq!(feed(&mut d, 0, &values), vec![]);
        assert_eq!(d.status, Status::Normal);
    }

    #[test]
    fn fifteen_minutes_over_fires_once_with_the_window_as_evidence() {
        let mut d = DetectorState::default();
        let fired = feed(&mut d, 0, &[80.0; 17]);
        assert_eq!(fired.len(), 1, "{fired:?}");
        let (
            minute,
            Transition::Exceeded {
                since,
                sequence,
                evidence,
            },
        ) = &fired[0]
        else {
            panic!("{fired:?}");
        };
        assert_eq!((*minute, *since, *sequence), (15, t(0), 0));
        assert_eq!(evidence.len(), 16);
        assert_eq!(evidence.first().map(|o| o.at), Some(t(0)));
    }

    #[test]
    fn values_between_clear_and_threshold_neither_recover_nor_sustain() {
        let mut d = DetectorState::default();
        feed(&mut d, 0, &[80.0; 16]);
        assert_eq!(d.status, Status::Exceeded);
        // 65 %: still exceeded (hysteresis), but the re-fire run is broken.
        assert_eq!(feed(&mut d, 16, &[65.0; 30]), vec![]);
        assert_eq!(d.status, Status::Exceeded);
        let recovered = feed(&mut d, 46, &[55.0]);
        assert_eq!(
            recovered,
            vec![(
                46,
                Transition::Recovered {
                    episode_since: t(0)
                }
            )]
        );
    }

    #[test]
    fn staying_over_fires_again_after_another_window() {
        let mut d = DetectorState::default();
        let fired = feed(&mut d, 0, &[90.0; 31]);
        let seqs: Vec<(i64, u32)> = fired
            .iter()
            .map(|(m, tr)| match tr {
                Transition::Exceeded { sequence, .. } => (*m, *sequence),
                Transition::Recovered { .. } => (*m, 99),
            })
            .collect();
        assert_eq!(seqs, vec![(15, 0), (30, 1)]);
    }

    #[test]
    fn a_missed_poll_or_a_gap_breaks_the_run() {
        let mut d = DetectorState::default();
        feed(&mut d, 0, &[80.0; 10]);
        assert!(d.missed(t(10)).changed);
        assert_eq!(feed(&mut d, 11, &[80.0; 14]), vec![]);
        // A 5-minute silence (service down) also breaks it.
        let mut d = DetectorState::default();
        feed(&mut d, 0, &[80.0; 10]);
        assert_eq!(feed(&mut d, 15, &[80.0; 15]), vec![]);
        assert_eq!(d.run_since, Some(t(15)));
    }

    #[test]
    fn old_or_repeated_observations_are_ignored() {
        let mut d = DetectorState::default();
        feed(&mut d, 0, &[80.0; 5]);
        let before = d.clone();
        assert_eq!(d.observe(&rule(), GAP, t(4), 10.0), UNCHANGED);
        assert_eq!(d.observe(&rule(), GAP, t(2), 10.0), UNCHANGED);
        assert_eq!(d, before);
    }
}
