//! `[snapshot]`: the name prefix, the policies (targets, schedule, time zone, retention grid, SLO),
//! pre-change TTLs, the validity check's schedule and dry-run.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use proxflow_runtime::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

use crate::naming;
use crate::plan::Rules;
use crate::retention::Grid;
use proxflow_runtime::schedule::Schedule;

/// `[snapshot]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Prefix of every snapshot proxflow takes; only snapshots carrying it are ever pruned.
    pub prefix: String,
    /// `[[snapshot.policies]]`; none by default (the service then only answers pre-change requests).
    pub policies: Vec<PolicyConfig>,
    /// How long a pre-change snapshot is protected when the request names no TTL.
    #[serde(with = "humantime_serde")]
    pub prechange_ttl: Duration,
    /// The longest TTL a request may ask for.
    #[serde(with = "humantime_serde")]
    pub prechange_max_ttl: Duration,
    /// When the validity check publishes its events (`daily@..`, `weekly@..`, `monthly@..`, UTC);
    /// its gauges are refreshed on every pass.
    pub check_schedule: String,
    /// Schedule slots younger than this are not yet expected by the check.
    #[serde(with = "humantime_serde")]
    pub check_grace: Duration,
    /// How often the policies are evaluated.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Log what would be created and pruned, change nothing.
    pub dry_run: bool,
    /// Command prefix for the datasets' `zfs` (empty: this host; e.g. `["sudo", "-n"]`).
    pub zfs_command: Vec<String>,
    /// Bound on each `zfs` command.
    #[serde(with = "humantime_serde")]
    pub zfs_timeout: Duration,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            prefix: "pf-".into(),
            policies: Vec::new(),
            prechange_ttl: Duration::from_secs(7 * 24 * 3600),
            prechange_max_ttl: Duration::from_secs(30 * 24 * 3600),
            check_schedule: "weekly@mon 06:00".into(),
            check_grace: Duration::from_secs(3600),
            interval: Duration::from_secs(60),
            dry_run: false,
            zfs_command: Vec::new(),
            zfs_timeout: Duration::from_secs(60),
        }
    }
}

/// What one policy snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Targets {
    /// VMs by id.
    pub vms: Vec<u32>,
    /// VMs carrying any of these Proxmox tags (resolved on every pass; templates excluded).
    pub tags: Vec<String>,
    /// ZFS datasets, snapshotted directly.
    pub datasets: Vec<String>,
}

impl Targets {
    fn is_empty(&self) -> bool {
        self.vms.is_empty() && self.tags.is_empty() && self.datasets.is_empty()
    }
}

/// `[[snapshot.policies]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Name, for events, metrics and logs.
    pub name: String,
    /// What it snapshots.
    pub targets: Targets,
    /// `daily@03:00`, `weekly@sun 03:00` or `monthly@1 03:00`.
    pub schedule: String,
    /// IANA time zone of the schedule and of the retention periods (`Europe/Berlin`).
    pub timezone: String,
    /// Newest snapshot of each of the last N hours / days / weeks / months (like sanoid).
    pub retention: Grid,
    /// Alert when the newest scheduled snapshot is older than this.
    #[serde(with = "humantime_serde")]
    pub slo_max_age: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            targets: Targets::default(),
            schedule: "daily@03:00".into(),
            timezone: "UTC".into(),
            retention: Grid::default(),
            slo_max_age: Duration::from_secs(26 * 3600),
        }
    }
}

impl SnapshotConfig {
    /// The resolved rules of a policy (validated configs always resolve).
    pub fn rules(&self, policy: &PolicyConfig) -> Result<Rules, ConfigError> {
        let at = format!("snapshot.policies.{}", policy.name);
        Ok(Rules {
            prefix: self.prefix.clone(),
            schedule: Schedule::from_str(&policy.schedule)
                .map_err(|e| ConfigError::value(format!("{at}.schedule"), e.to_string()))?,
            timezone: Tz::from_str(&policy.timezone).map_err(|_| {
                ConfigError::value(
                    format!("{at}.timezone"),
                    format!(
                        "{:?} is not an IANA time zone (e.g. UTC, Europe/Berlin)",
                        policy.timezone
                    ),
                )
            })?,
            grid: policy.retention,
            prechange_ttl: self.prechange_ttl,
            slo_max_age: policy.slo_max_age,
            check_grace: self.check_grace,
        })
    }

    /// Whether a policy snapshots VMs (and so needs a Proxmox client).
    pub fn needs_pve(&self) -> bool {
        self.policies
            .iter()
            .any(|p| !p.targets.vms.is_empty() || !p.targets.tags.is_empty())
    }

    /// The check schedule, parsed.
    pub fn check_schedule(&self) -> Result<Schedule, ConfigError> {
        Schedule::from_str(&self.check_schedule)
            .map_err(|e| ConfigError::value("snapshot.check_schedule", e.to_string()))
    }
}

impl Validate for SnapshotConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        naming::validate_prefix(&self.prefix)
            .map_err(|e| ConfigError::value("snapshot.prefix", e.to_string()))?;
        if self.prechange_ttl.is_zero() || self.prechange_max_ttl < self.prechange_ttl {
            return Err(ConfigError::value(
                "snapshot.prechange_max_ttl",
                "prechange_ttl must be above zero and prechange_max_ttl at least prechange_ttl",
            ));
        }
        if self.interval.is_zero() || self.zfs_timeout.is_zero() {
            return Err(ConfigError::value(
                "snapshot.interval",
                "interval and zfs_timeout must be above zero",
            ));
        }
        self.check_schedule()?;
        // A target in two policies would have two retention grids fighting over its snapshots.
        let mut owners: BTreeMap<String, &str> = BTreeMap::new();
        for (i, policy) in self.policies.iter().enumerate() {
            let at = format!("snapshot.policies[{i}]");
            if policy.name.is_empty()
                || !policy
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::value(
                    format!("{at}.name"),
                    "must be set: letters, digits, '-', '_'",
                ));
            }
            if self.policies[..i].iter().any(|p| p.name == policy.name) {
                return Err(ConfigError::value(
                    format!("{at}.name"),
                    "duplicate policy name",
                ));
            }
            self.rules(policy)?;
            if policy.targets.is_empty() {
                return Err(ConfigError::value(
                    format!("{at}.targets"),
                    "names no vms, tags or datasets",
                ));
            }
            if policy.retention.is_empty() {
                return Err(ConfigError::value(
                    format!("{at}.retention"),
                    "keeps nothing but the newest snapshot; set hourly, daily, weekly or monthly",
                ));
            }
            if policy.slo_max_age.is_zero() {
                return Err(ConfigError::value(
                    format!("{at}.slo_max_age"),
                    "must be above zero",
                ));
            }
            for dataset in &policy.targets.datasets {
                if !proxflow_zfs::names::is_dataset_name(dataset) {
                    return Err(ConfigError::value(
                        format!("{at}.targets.datasets"),
                        format!("{dataset:?} is not a dataset name"),
                    ));
                }
            }
            let keys = policy
                .targets
                .datasets
                .iter()
                .map(|d| format!("dataset {d}"))
                .chain(policy.targets.vms.iter().map(|v| format!("vm {v}")));
            for key in keys {
                if let Some(other) = owners.insert(key.clone(), &policy.name) {
                    return Err(ConfigError::value(
                        format!("{at}.targets"),
                        format!("{key} is already in policy {other}: one policy per target"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(name: &str, dataset: &str) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            targets: Targets {
                datasets: vec![dataset.into()],
                ..Targets::default()
            },
            ..PolicyConfig::default()
        }
    }

    fn error_key(config: &SnapshotConfig) -> String {
        match config.validate().unwrap_err() {
            ConfigError::Value { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_policies_are_checked() {
        assert!(SnapshotConfig::default().validate().is_ok());
        let mut c = SnapshotConfig {
            policies: vec![policy("data", "tank/data")],
            ..SnapshotConfig::default()
        };
        assert!(c.validate().is_ok());
        c.policies[0].timezone = "Mars/Olympus".into();
        assert_eq!(error_key(&c), "snapshot.policies.data.timezone");
        c.policies[0].timezone = "Europe/Berlin".into();
        c.policies[0].schedule = "hourly".into();
        assert_eq!(error_key(&c), "snapshot.policies.data.schedule");
        c.policies[0].schedule = "weekly@sun 03:00".into();
        c.policies.push(policy("other", "tank/data"));
        assert_eq!(error_key(&c), "snapshot.policies[1].targets");
        c.policies[1].targets.datasets = vec!["tank/$(x)".into()];
        assert_eq!(error_key(&c), "snapshot.policies[1].targets.datasets");
        c.policies[1] = policy("data", "tank/b");
        assert_eq!(error_key(&c), "snapshot.policies[1].name");
        c.policies[1] = PolicyConfig {
            retention: Grid {
                hourly: 0,
                daily: 0,
                weekly: 0,
                monthly: 0,
            },
            ..policy("b", "tank/b")
        };
        assert_eq!(error_key(&c), "snapshot.policies[1].retention");
    }

    #[test]
    fn prefix_and_ttls() {
        let c = SnapshotConfig {
            prefix: "1x".into(),
            ..SnapshotConfig::default()
        };
        assert_eq!(error_key(&c), "snapshot.prefix");
        let c = SnapshotConfig {
            prechange_max_ttl: Duration::from_secs(1),
            ..SnapshotConfig::default()
        };
        assert_eq!(error_key(&c), "snapshot.prechange_max_ttl");
    }
}
