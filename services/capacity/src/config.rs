//! `[capacity]`: how often to poll, the detector rule of each metric kind, the k3s clusters with
//! their scale-out settings ([`proxflow_platform::cluster`], shared with the orchestrator, which runs
//! the scale-out), and `[capacity.review]`, the monthly review.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use proxflow_platform::Clusters;
use proxflow_runtime::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// The metric kinds a detector can watch. Percent kinds are 0–100; `memory_commitment` and
/// `vcpu_ratio` are factors.
pub const KINDS: &[&str] = &[
    "host_cpu",
    "host_memory",
    "memory_commitment",
    "vcpu_ratio",
    "storage",
    "zfs_pool",
    "cluster_cpu_avg",
    "cluster_cpu_max",
    "cluster_memory_avg",
    "cluster_memory_max",
];

/// `[capacity]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Time between polls.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A gap longer than this between two successful polls (failed polls, the service down) breaks
    /// every over-threshold run: what was not observed never counts as sustained.
    #[serde(with = "humantime_serde")]
    pub max_gap: Duration,
    /// Detector rule per metric kind (`[capacity.rules.cluster_cpu_avg]`). A configured table
    /// replaces the defaults; kinds left out of it keep their built-in rule.
    pub rules: BTreeMap<String, Rule>,
    /// k3s clusters by name (`[capacity.clusters.k3s]`), with the orchestrator's scale-out settings.
    pub clusters: Clusters,
    /// `[capacity.review]`: the monthly capacity review.
    pub review: ReviewConfig,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            max_gap: Duration::from_secs(90),
            rules: KINDS
                .iter()
                .map(|k| (k.to_string(), default_rule(k)))
                .collect(),
            clusters: Clusters::default(),
            review: ReviewConfig::default(),
        }
    }
}

/// `[capacity.review]`: where the monthly review goes and what it judges against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Directory the reports are written to (`<workflow id>.md` and `.json`).
    pub dir: PathBuf,
    /// Memory commitment target (1.5 = 1.5:1): the headroom is measured under it.
    pub commitment_target: f64,
    /// How many VMs and datasets the "top growing" lists hold.
    pub top: usize,
    /// The window a review looks back over when none is given.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// ZFS datasets whose trees are reviewed (growth, snapshot space by policy), through
    /// `snapshot.zfs_command`; none by default (those sections are then left out).
    pub datasets: Vec<String>,
    /// When the review runs on its own (`monthly@<day> HH:MM`; any schedule form); it covers the
    /// `window` ending at the slot.
    pub schedule: String,
    /// IANA time zone of the schedule.
    pub timezone: String,
    /// How late a slot missed while proxflow was down is still run.
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(".proxflow/capacity-reviews"),
            commitment_target: 1.5,
            top: 10,
            window: Duration::from_secs(30 * 24 * 3600),
            datasets: Vec::new(),
            schedule: "monthly@1 06:00".into(),
            timezone: "UTC".into(),
            catch_up: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ReviewConfig {
    /// Its schedule.
    pub fn job(&self) -> Result<proxflow_runtime::workflow::scheduled::ScheduledJob, ConfigError> {
        proxflow_runtime::workflow::scheduled::ScheduledJob::from_keys(
            "capacity.review",
            ("capacity-review", proxflow_schemas::capacity_review::KIND),
            &self.schedule,
            &self.timezone,
            self.catch_up,
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.job()?;
        if !(self.commitment_target.is_finite() && self.commitment_target > 0.0) {
            return Err(ConfigError::value(
                "capacity.review.commitment_target",
                "must be a number above zero (1.5 = 1.5:1)",
            ));
        }
        if self.top == 0 {
            return Err(ConfigError::value(
                "capacity.review.top",
                "must be at least 1",
            ));
        }
        if self.window.is_zero() {
            return Err(ConfigError::value(
                "capacity.review.window",
                "must be greater than zero",
            ));
        }
        if let Some(bad) = self
            .datasets
            .iter()
            .find(|d| !proxflow_zfs::names::is_dataset_name(d))
        {
            return Err(ConfigError::value(
                "capacity.review.datasets",
                format!("{bad:?} is not a ZFS dataset name"),
            ));
        }
        Ok(())
    }
}

/// When a metric counts as exceeded and when as recovered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    /// `false` measures and exports the metric but never fires.
    pub enabled: bool,
    /// Exceeded when every observation for `window` is above this.
    pub threshold: f64,
    /// Recovered when an observation falls below this (hysteresis: below the threshold).
    pub clear_below: f64,
    /// How long the metric must stay above `threshold`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 70.0,
            clear_below: 60.0,
            window: Duration::from_secs(15 * 60),
        }
    }
}

impl CapacityConfig {
    /// The rule for `kind`: configured, else the kind's default.
    pub fn rule(&self, kind: &str) -> Rule {
        self.rules
            .get(kind)
            .copied()
            .unwrap_or_else(|| default_rule(kind))
    }
}

/// Defaults: the seed's 70 % sustained for 15 minutes, clearing below 60 %, for every percentage;
/// memory commitment fires above the 1.5:1 budget and clears below 1.4:1; the vCPU ratio is only
/// measured (CPU contention shows in CPU busy, which is watched).
pub fn default_rule(kind: &str) -> Rule {
    match kind {
        "memory_commitment" => Rule {
            threshold: 1.5,
            clear_below: 1.4,
            ..Rule::default()
        },
        "vcpu_ratio" => Rule {
            enabled: false,
            threshold: 4.0,
            clear_below: 3.5,
            ..Rule::default()
        },
        _ => Rule::default(),
    }
}

impl Validate for CapacityConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::value(
                "capacity.interval",
                "must be greater than zero",
            ));
        }
        if self.max_gap < self.interval {
            return Err(ConfigError::value(
                "capacity.max_gap",
                format!(
                    "must be at least the poll interval ({})",
                    humantime_serde::re::humantime::format_duration(self.interval)
                ),
            ));
        }
        for (kind, rule) in &self.rules {
            let at = format!("capacity.rules.{kind}");
            if !KINDS.contains(&kind.as_str()) {
                return Err(ConfigError::value(
                    at,
                    format!("unknown metric kind (known: {})", KINDS.join(", ")),
                ));
            }
            if !(rule.threshold.is_finite() && rule.clear_below.is_finite()) {
                return Err(ConfigError::value(
                    at,
                    "threshold and clear_below must be numbers",
                ));
            }
            if rule.clear_below > rule.threshold {
                return Err(ConfigError::value(
                    format!("{at}.clear_below"),
                    format!(
                        "{} is above the threshold {}: hysteresis must clear below it",
                        rule.clear_below, rule.threshold
                    ),
                ));
            }
            if rule.window.is_zero() {
                return Err(ConfigError::value(
                    format!("{at}.window"),
                    "must be greater than zero",
                ));
            }
        }
        self.review.validate()?;
        self.clusters.validate_at("capacity.clusters")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        assert!(CapacityConfig::default().validate().is_ok());
        let mut c = CapacityConfig::default();
        c.rules.insert(
            "host_cpu".into(),
            Rule {
                clear_below: 80.0,
                ..Rule::default()
            },
        );
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("capacity.rules.host_cpu.clear_below"), "{e}");
        let mut c = CapacityConfig::default();
        c.rules.insert("disk_io".into(), Rule::default());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("unknown metric kind"), "{e}");
        let mut c = CapacityConfig::default();
        if let Some(k3s) = c.clusters.get_mut("k3s") {
            k3s.scale_out.triggers = vec!["load".into()];
        }
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("capacity.clusters.k3s.scale_out.triggers"),
            "{e}"
        );
        let mut c = CapacityConfig::default();
        c.review.commitment_target = 0.0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("capacity.review.commitment_target"), "{e}");
        let mut c = CapacityConfig::default();
        c.review.datasets = vec!["tank/../x y".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("capacity.review.datasets"), "{e}");
    }

    #[test]
    fn commitment_has_its_own_default_rule() {
        let c = CapacityConfig::default();
        assert_eq!(c.rule("memory_commitment").threshold, 1.5);
        assert_eq!(c.rule("cluster_cpu_avg").threshold, 70.0);
        assert!(!c.rule("vcpu_ratio").enabled);
    }
}
