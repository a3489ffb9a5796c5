//! `[health]`: which pools, when the daily check, the quarterly audit and the monthly scrub run,
//! and what counts as worn out. Every key is checked at start, errors naming the key.

use std::time::Duration;

use proxflow_runtime::config::{ConfigError, Validate};
use proxflow_runtime::workflow::scheduled::ScheduledJob;
use proxflow_schemas::health::{DISK_HEALTH_KIND, POOL_SCRUB_KIND};
use serde::{Deserialize, Serialize};

/// The schedule's job name of the daily check (prefix of its runs' ids).
pub const CHECK_JOB: &str = "health";
/// The schedule's job name of the quarterly audit.
pub const AUDIT_JOB: &str = "health-audit";
/// The schedule's job name of the monthly scrub.
pub const SCRUB_JOB: &str = "scrub";

/// `[health]`: disk and pool health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Run the check, audit and scrub on their schedules (`proxflow health check` works either
    /// way).
    pub enabled: bool,
    /// The pools checked and scrubbed.
    pub pools: Vec<String>,
    /// The cheap daily check: disk list, SMART verdicts, `zpool status`.
    pub check_schedule: String,
    /// The audit: the check plus every disk's full SMART report and the pools' properties.
    pub audit_schedule: String,
    /// `zpool scrub` of every pool.
    pub scrub_schedule: String,
    /// IANA time zone of the schedules, and of the dates `zpool status` prints (the host's local
    /// time, printed without a zone).
    pub timezone: String,
    /// How late a slot missed while proxflow was down is still run.
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
    /// Prefix for `zpool` (empty: this host; e.g. `["ssh", "root@pve1"]`).
    pub zfs_command: Vec<String>,
    /// Bound on each `zpool` command.
    #[serde(with = "humantime_serde")]
    pub zfs_timeout: Duration,
    /// A disk with this much life left (percent) or less is a finding.
    pub wearout_threshold: u8,
    /// How often a scrub is looked at while it runs (a durable timer between looks).
    #[serde(with = "humantime_serde")]
    pub scrub_poll: Duration,
    /// How long a scrub is waited for; after that its run reports it "still running" (the daily
    /// check reads its result later).
    #[serde(with = "humantime_serde")]
    pub scrub_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pools: vec!["rpool".to_owned()],
            // After the night's snapshots (03:00) and replication, before anyone starts work.
            check_schedule: "daily@05:00".to_owned(),
            audit_schedule: "quarterly@1 05:30".to_owned(),
            // Second week of the month, at night: clear of the 1st (drills, reviews) and of the
            // daily snapshot and replication around 03:00.
            scrub_schedule: "monthly@8 01:00".to_owned(),
            timezone: "UTC".to_owned(),
            catch_up: Duration::from_secs(2 * 86_400),
            zfs_command: Vec::new(),
            zfs_timeout: Duration::from_secs(60),
            wearout_threshold: 10,
            scrub_poll: Duration::from_secs(300),
            scrub_timeout: Duration::from_secs(12 * 3600),
        }
    }
}

impl HealthConfig {
    fn job(
        &self,
        key: &str,
        job: (&'static str, &'static str),
        schedule: &str,
    ) -> Result<ScheduledJob, ConfigError> {
        ScheduledJob::from_named_keys("health", key, job, schedule, &self.timezone, self.catch_up)
    }

    /// The daily check, the quarterly audit and the monthly scrub.
    pub fn jobs(&self) -> Result<[ScheduledJob; 3], ConfigError> {
        Ok([
            self.job(
                "check_schedule",
                (CHECK_JOB, DISK_HEALTH_KIND),
                &self.check_schedule,
            )?,
            self.job(
                "audit_schedule",
                (AUDIT_JOB, DISK_HEALTH_KIND),
                &self.audit_schedule,
            )?,
            self.job(
                "scrub_schedule",
                (SCRUB_JOB, POOL_SCRUB_KIND),
                &self.scrub_schedule,
            )?,
        ])
    }

    /// The zone `zpool status` dates are read in (checked by `validate`; UTC otherwise).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}

impl Validate for HealthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.jobs()?;
        if self.pools.is_empty() {
            return Err(ConfigError::value(
                "health.pools",
                "must name at least one pool",
            ));
        }
        for (i, pool) in self.pools.iter().enumerate() {
            if !proxflow_zfs::names::is_dataset_name(pool) || pool.contains('/') {
                return Err(ConfigError::value(
                    format!("health.pools[{i}]"),
                    format!("{pool:?} is not a pool name"),
                ));
            }
        }
        if self.wearout_threshold > 100 {
            return Err(ConfigError::value(
                "health.wearout_threshold",
                "is a percentage of life left (0..=100)",
            ));
        }
        for (key, d) in [
            ("health.zfs_timeout", self.zfs_timeout),
            ("health.scrub_poll", self.scrub_poll),
            ("health.scrub_timeout", self.scrub_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::value(key, "must be above zero"));
            }
        }
        if self.scrub_poll > self.scrub_timeout {
            return Err(ConfigError::value(
                "health.scrub_poll",
                "must not be longer than health.scrub_timeout",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_hold_and_bad_values_name_their_key() {
        HealthConfig::default().validate().unwrap();
        let bad = |f: fn(&mut HealthConfig)| {
            let mut c = HealthConfig::default();
            f(&mut c);
            match c.validate() {
                Err(ConfigError::Value { key, .. }) => key,
                other => panic!("expected a key error, got {other:?}"),
            }
        };
        assert_eq!(
            bad(|c| c.check_schedule = "daily@25:00".into()),
            "health.check_schedule"
        );
        assert_eq!(
            bad(|c| c.audit_schedule = "yearly@1".into()),
            "health.audit_schedule"
        );
        assert_eq!(
            bad(|c| c.scrub_schedule = "monthly@31 01:00".into()),
            "health.scrub_schedule"
        );
        assert_eq!(
            bad(|c| c.timezone = "Mars/Olympus".into()),
            "health.timezone"
        );
        assert_eq!(
            bad(|c| c.pools = vec!["tank/sub".into()]),
            "health.pools[0]"
        );
        assert_eq!(bad(|c| c.pools.clear()), "health.pools");
        assert_eq!(
            bad(|c| c.wearout_threshold = 101),
            "health.wearout_threshold"
        );
        assert_eq!(
            bad(|c| c.scrub_poll = Duration::from_secs(86_400)),
            "health.scrub_poll"
        );
        assert_eq!(
            bad(|c| c.scrub_timeout = Duration::ZERO),
            "health.scrub_timeout"
        );
    }

    #[test]
    fn the_three_jobs_and_their_kinds() {
        let [check, audit, scrub] = HealthConfig::default().jobs().unwrap();
        assert_eq!((check.name, check.kind), ("health", "disk_health"));
        assert_eq!((audit.name, audit.kind), ("health-audit", "disk_health"));
        assert_eq!((scrub.name, scrub.kind), ("scrub", "pool_scrub"));
        let slot = "2026-12-08T01:00:00Z".parse().unwrap();
        assert_eq!(scrub.due(slot), Some(slot));
    }
}
