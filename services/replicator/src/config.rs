//! `[replication]`: the jobs (source and target dataset, how to reach each side's zfs, schedule,
//! timeouts), the retry delay after a failure, dry-run.

use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use proxflow_runtime::config::{ConfigError, Validate};
use proxflow_runtime::schedule::Schedule;
use proxflow_zfs::names;
use serde::{Deserialize, Serialize};

/// `[replication]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// `[[replication.jobs]]`; none by default.
    pub jobs: Vec<JobConfig>,
    /// How often the jobs' schedules are looked at.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// After a failed run, how long until the next attempt (before the next scheduled slot).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Work out and log what each run would send, send nothing.
    pub dry_run: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            jobs: Vec::new(),
            interval: Duration::from_secs(60),
            retry_after: Duration::from_secs(15 * 60),
            dry_run: false,
        }
    }
}

/// `[[replication.jobs]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// Name, for events, metrics, the hold tag (`proxflow-repl-<name>`).
    pub name: String,
    /// Source dataset (`tank/data`).
    pub source: String,
    /// Target dataset (`offsite/data`); created by the first (full) run, never overwritten.
    pub target: String,
    /// Prefix for the source's `zfs` (empty: this host).
    pub source_command: Vec<String>,
    /// Prefix for the target's `zfs`, e.g. `["ssh", "-o", "BatchMode=yes", "backup@offsite"]`.
    pub target_command: Vec<String>,
    /// `daily@03:30` (after the snapshotter's 03:00), `weekly@...`, `monthly@...`.
    pub schedule: String,
    /// IANA time zone of the schedule.
    pub timezone: String,
    /// Bound on each short `zfs` command (listings, holds).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Bound on one send | receive; both sides are killed past it.
    #[serde(with = "humantime_serde")]
    pub transfer_timeout: Duration,
    /// Set `readonly=on` on the target after the first full receive: an incremental receive
    /// without `-F` refuses a target that changed since its newest snapshot, and a mounted target
    /// changes when merely read (atime).
    pub readonly_target: bool,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            source: String::new(),
            target: String::new(),
            source_command: Vec::new(),
            target_command: Vec::new(),
            schedule: "daily@03:30".into(),
            timezone: "UTC".into(),
            command_timeout: Duration::from_secs(120),
            transfer_timeout: Duration::from_secs(12 * 3600),
            readonly_target: true,
        }
    }
}

impl JobConfig {
    /// The parsed schedule and time zone.
    pub fn schedule(&self) -> Result<(Schedule, Tz), ConfigError> {
        let at = format!("replication.jobs.{}", self.name);
        let schedule = Schedule::from_str(&self.schedule)
            .map_err(|e| ConfigError::value(format!("{at}.schedule"), e.to_string()))?;
        let tz = Tz::from_str(&self.timezone).map_err(|_| {
            ConfigError::value(
                format!("{at}.timezone"),
                format!("{:?} is not an IANA time zone", self.timezone),
            )
        })?;
        Ok((schedule, tz))
    }
}

impl Validate for ReplicationConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() || self.retry_after.is_zero() {
            return Err(ConfigError::value(
                "replication.interval",
                "interval and retry_after must be above zero",
            ));
        }
        for (i, job) in self.jobs.iter().enumerate() {
            let at = format!("replication.jobs[{i}]");
            if job.name.is_empty()
                || job.name.len() > 64
                || !job
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::value(
                    format!("{at}.name"),
                    "must be set: up to 64 letters, digits, '-', '_' (it is part of the hold tag)",
                ));
            }
            if self.jobs[..i].iter().any(|j| j.name == job.name) {
                return Err(ConfigError::value(
                    format!("{at}.name"),
                    "duplicate job name",
                ));
            }
            for (key, dataset) in [("source", &job.source), ("target", &job.target)] {
                if !names::is_dataset_name(dataset) {
                    return Err(ConfigError::value(
                        format!("{at}.{key}"),
                        format!("{dataset:?} is not a dataset name"),
                    ));
                }
            }
            if job.source == job.target && job.source_command == job.target_command {
                return Err(ConfigError::value(
                    format!("{at}.target"),
                    "is the source itself",
                ));
            }
            // One job per source: each moves the source's hold, and they would release each other's.
            if self.jobs[..i]
                .iter()
                .any(|j| j.source == job.source && j.source_command == job.source_command)
            {
                return Err(ConfigError::value(
                    format!("{at}.source"),
                    "already replicated by another job",
                ));
            }
            if job.command_timeout.is_zero() || job.transfer_timeout.is_zero() {
                return Err(ConfigError::value(
                    format!("{at}.transfer_timeout"),
                    "timeouts must be above zero",
                ));
            }
            job.schedule()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(name: &str, source: &str) -> JobConfig {
        JobConfig {
            name: name.into(),
            source: source.into(),
            target: format!("offsite/{name}"),
            ..JobConfig::default()
        }
    }

    fn error_key(config: &ReplicationConfig) -> String {
        match config.validate().unwrap_err() {
            ConfigError::Value { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn jobs_are_validated() {
        assert!(ReplicationConfig::default().validate().is_ok());
        let mut c = ReplicationConfig {
            jobs: vec![job("data", "tank/data")],
            ..ReplicationConfig::default()
        };
        assert!(c.validate().is_ok());
        c.jobs.push(job("data", "tank/other"));
        assert_eq!(error_key(&c), "replication.jobs[1].name");
        c.jobs[1] = job("again", "tank/data");
        assert_eq!(error_key(&c), "replication.jobs[1].source");
        c.jobs[1] = job("bad", "tank/x y");
        assert_eq!(error_key(&c), "replication.jobs[1].source");
        c.jobs[1] = JobConfig {
            timezone: "Nowhere".into(),
            ..job("tz", "tank/tz")
        };
        assert_eq!(error_key(&c), "replication.jobs.tz.timezone");
        c.jobs[1] = JobConfig {
            target: "tank/self".into(),
            ..job("self", "tank/self")
        };
        assert_eq!(error_key(&c), "replication.jobs[1].target");
    }
}
