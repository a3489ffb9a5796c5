//! Workflows started by the calendar: one run per slot of a [`Schedule`], across every replica.
//!
//! A slot's run has a fixed id (`<job>-<slot in UTC>`, e.g. `export-20261206T0300Z`), and starting
//! a workflow is a create on the record store, so two replicas (or a restarted process) that both
//! find the slot due start it once: the loser finds the record and does nothing. Nothing remembers
//! "last run" besides the records themselves, so `proxflow schedule` reads the same place.
//!
//! Catch-up: when a service was down at the slot, the most recent slot is still due after it starts
//! if no more than `catch_up` has passed since it (a quarterly drill missed by a day still runs; a
//! daily job missed by a week runs at its next slot, not seven times). Only the newest slot is ever
//! made up for.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::schedule::Schedule;
use crate::workflow::{Engine, EngineError};
use proxflow_schemas::workflow::{Origin, WorkflowRecord};

/// How often the schedules look at the clock (reading one record per job).
const TICK: Duration = Duration::from_secs(2);

/// One job: a workflow kind started at each slot of a schedule.
#[derive(Debug, Clone)]
pub struct ScheduledJob {
    /// The job's name, the prefix of its runs' ids (`export`, `drill`, …).
    pub name: &'static str,
    /// The workflow kind each run is.
    pub kind: &'static str,
    /// When.
    pub schedule: Schedule,
    /// In which time zone the schedule's wall times are.
    pub tz: Tz,
    /// How late a missed slot may still be started.
    pub catch_up: chrono::Duration,
}

impl ScheduledJob {
    /// The job from a config section's `schedule`, `timezone` and `catch_up` keys; errors name
    /// `<section>.<key>`.
    pub fn from_keys(
        section: &str,
        job: (&'static str, &'static str),
        schedule: &str,
        timezone: &str,
        catch_up: Duration,
    ) -> Result<Self, crate::config::ConfigError> {
        Self::from_named_keys(section, "schedule", job, schedule, timezone, catch_up)
    }

    /// Like [`ScheduledJob::from_keys`], for a section with several schedules sharing one
    /// `timezone` and `catch_up` (`[health]`: `check_schedule`, `scrub_schedule`): errors name
    /// `<section>.<schedule_key>`.
    pub fn from_named_keys(
        section: &str,
        schedule_key: &str,
        (name, kind): (&'static str, &'static str),
        schedule: &str,
        timezone: &str,
        catch_up: Duration,
    ) -> Result<Self, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let key = |k: &str| format!("{section}.{k}");
        let schedule: Schedule =
            schedule
                .parse()
                .map_err(|e: crate::schedule::ScheduleError| {
                    ConfigError::value(key(schedule_key), e.to_string())
                })?;
        let tz: Tz = timezone.parse().map_err(|_| {
            ConfigError::value(
                key("timezone"),
                format!("{timezone:?} is not an IANA time zone"),
            )
        })?;
        let catch_up = chrono::Duration::from_std(catch_up)
            .map_err(|_| ConfigError::value(key("catch_up"), "is too long"))?;
        Ok(Self {
            name,
            kind,
            schedule,
            tz,
            catch_up,
        })
    }

    /// The id of the run of `slot`.
    pub fn run_id(&self, slot: DateTime<Utc>) -> String {
        run_id(self.name, slot)
    }

    /// The slot due at `now`: the most recent one, unless more than `catch_up` ago.
    pub fn due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .last_slot(self.tz, now)
            .filter(|slot| now - *slot <= self.catch_up)
    }

    /// The next slot after `now`.
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.next_slot(self.tz, now)
    }

    /// The run of the most recent slot at or before `now`, if it was started.
    pub async fn last_run(
        &self,
        engine: &Engine,
        now: DateTime<Utc>,
    ) -> Result<Option<WorkflowRecord>, EngineError> {
        match self.schedule.last_slot(self.tz, now) {
            Some(slot) => engine.get(&self.run_id(slot)).await,
            None => Ok(None),
        }
    }
}

/// The id of job `name`'s run of `slot`.
pub fn run_id(name: &str, slot: DateTime<Utc>) -> String {
    format!("{name}-{}", slot.format("%Y%m%dT%H%MZ"))
}

/// What a run of a slot is given: its input, built from the slot (a review's window ends there).
pub type InputFor = Box<dyn Fn(DateTime<Utc>) -> Value + Send + Sync>;

/// Starts every job's due run, until `stop`.
pub struct Scheduler {
    engine: Engine,
    clock: SharedClock,
    jobs: Vec<(ScheduledJob, InputFor)>,
}

impl Scheduler {
    /// A scheduler starting runs on `engine` at `clock`'s time.
    pub fn new(engine: Engine, clock: SharedClock) -> Self {
        Self {
            engine,
            clock,
            jobs: Vec::new(),
        }
    }

    /// Adds a job whose runs get `input(slot)`.
    pub fn job(
        mut self,
        job: ScheduledJob,
        input: impl Fn(DateTime<Utc>) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.jobs.push((job, Box::new(input)));
        self
    }

    /// Looks every [`TICK`] until `stop`. A store briefly away is logged and looked at again.
    pub async fn run(self, stop: CancellationToken) -> Result<(), EngineError> {
        // Slots this process has seen started (by it or another replica): not read again.
        let mut seen: Vec<Option<String>> = vec![None; self.jobs.len()];
        loop {
            for ((job, input), seen) in self.jobs.iter().zip(seen.iter_mut()) {
                if let Err(e) = self.tick(job, input, seen).await {
                    tracing::warn!(job = job.name, error = %e, "schedule could not start its run");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn tick(
        &self,
        job: &ScheduledJob,
        input: &InputFor,
        seen: &mut Option<String>,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let Some(slot) = job.due(now) else {
            return Ok(());
        };
        let id = job.run_id(slot);
        if seen.as_deref() == Some(id.as_str()) {
            return Ok(());
        }
        // Not `start_kind` blindly: it advances an existing run too, which every tick would do.
        if self.engine.get(&id).await?.is_none() {
            let origin = Origin {
                source: "schedule".into(),
                reference: id.clone(),
                reason: format!("{} {} (slot {slot})", job.name, job.schedule),
            };
            let created = self
                .engine
                .start_kind(job.kind, &id, origin, &input(slot))
                .await?;
            if created {
                let late = now - slot;
                tracing::info!(job = job.name, run = %id, late_s = late.num_seconds(), "scheduled run started");
            }
        }
        *seen = Some(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_newest_missed_slot_is_due_within_the_catch_up_and_never_an_older_one() {
        let job = ScheduledJob {
            name: "export",
            kind: "config_export",
            schedule: "weekly@sun 03:00".parse().unwrap(),
            tz: chrono_tz::UTC,
            catch_up: chrono::Duration::days(2),
        };
        // Sunday 2026-12-06 03:00 UTC was the slot.
        assert_eq!(job.due(utc("2026-12-06T02:59:00Z")), None);
        assert_eq!(
            job.due(utc("2026-12-06T03:00:00Z")),
            Some(utc("2026-12-06T03:00:00Z"))
        );
        // Down until Monday evening: still caught up.
        assert_eq!(
            job.due(utc("2026-12-07T20:00:00Z")),
            Some(utc("2026-12-06T03:00:00Z"))
        );
        // Down until Wednesday: too late, the next Sunday's slot runs instead.
        assert_eq!(job.due(utc("2026-12-09T12:00:00Z")), None);
        assert_eq!(
            job.next(utc("2026-12-09T12:00:00Z")),
            Some(utc("2026-12-13T03:00:00Z"))
        );
        assert_eq!(
            job.run_id(utc("2026-12-06T03:00:00Z")),
            "export-20261206T0300Z"
        );
    }
}
