//! `[export]` (and the other lifecycle sections): what each job reads, where it writes, when it
//! runs. Every key is checked at start, errors naming the key (exit 78).

use std::path::PathBuf;
use std::time::Duration;

use proxflow_runtime::config::{ConfigError, ConsumerConfig, Validate};
use proxflow_runtime::workflow::scheduled::ScheduledJob;
use serde::{Deserialize, Serialize};

/// `[export]`: the weekly host-config export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// The ZFS dataset the bundles are written into (mounted where the lifecycle service runs),
    /// one that a replication job sends offsite. Empty: no export (unless `dir` is set).
    pub dataset: String,
    /// A directory the bundles are written into instead of a dataset's mountpoint, for a host
    /// without a replicated export dataset (`proxflow dev` writes into its state directory):
    /// nothing carries these bundles offsite, and the drill finds none to check. Set `dataset`
    /// or `dir`, not both.
    pub dir: Option<PathBuf>,
    /// When: `weekly@<day> HH:MM` (or any schedule form).
    pub schedule: String,
    /// IANA time zone of the schedule.
    pub timezone: String,
    /// How late a slot missed while proxflow was down is still run.
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
    /// Bundles kept; older ones are removed after a successful export (the dataset's snapshots
    /// and its offsite copy keep history longer).
    pub keep: u32,
    /// Pools whose properties and datasets' local properties are exported.
    pub pools: Vec<String>,
    /// Prefix for `zfs`/`zpool` (empty: this host; e.g. `["sudo", "-n"]`).
    pub zfs_command: Vec<String>,
    /// Bound on each `zfs`/`zpool` command.
    #[serde(with = "humantime_serde")]
    pub zfs_timeout: Duration,
    /// A command that writes files the API cannot give into `$PROXFLOW_EXPORT_DIR` (they go into
    /// the bundle under `host/`), e.g. `deploy/lifecycle/collect-host-files.sh`. Empty: none.
    pub collect_command: Vec<String>,
    /// Bound on it.
    #[serde(with = "humantime_serde")]
    pub collect_timeout: Duration,
    /// The advance consumer of the lifecycle workflows.
    pub consumer: ConsumerConfig,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            dataset: String::new(),
            dir: None,
            // Before the 03:00 daily snapshot, so that night's replication carries the bundle.
            schedule: "weekly@sun 02:30".to_owned(),
            timezone: "UTC".to_owned(),
            catch_up: Duration::from_secs(2 * 86_400),
            keep: 12,
            pools: vec!["rpool".to_owned()],
            zfs_command: Vec::new(),
            zfs_timeout: Duration::from_secs(60),
            collect_command: Vec::new(),
            collect_timeout: Duration::from_secs(300),
            consumer: ConsumerConfig::default(),
        }
    }
}

impl ExportConfig {
    /// Whether an export is configured.
    pub fn enabled(&self) -> bool {
        self.dataset().is_some() || self.dir.is_some()
    }

    /// The export dataset, when the bundles go into one (rather than `dir`).
    pub fn dataset(&self) -> Option<&str> {
        (!self.dataset.is_empty()).then_some(self.dataset.as_str())
    }

    /// Its schedule.
    pub fn job(&self) -> Result<ScheduledJob, ConfigError> {
        ScheduledJob::from_keys(
            "export",
            (crate::export::JOB, crate::export::KIND),
            &self.schedule,
            &self.timezone,
            self.catch_up,
        )
    }
}

impl Validate for ExportConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.job()?;
        if let Some(dataset) = self.dataset()
            && !proxflow_zfs::names::is_dataset_name(dataset)
        {
            return Err(ConfigError::value(
                "export.dataset",
                format!("{dataset:?} is not a ZFS dataset name"),
            ));
        }
        match &self.dir {
            Some(_) if self.dataset().is_some() => {
                return Err(ConfigError::value(
                    "export.dir",
                    "set export.dataset or export.dir, not both",
                ));
            }
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(ConfigError::value(
                    "export.dir",
                    "must name a directory (leave it out for none)",
                ));
            }
            _ => {}
        }
        if self.keep == 0 {
            return Err(ConfigError::value(
                "export.keep",
                "must keep at least the newest bundle (the next export diffs against it)",
            ));
        }
        for (i, pool) in self.pools.iter().enumerate() {
            if !proxflow_zfs::names::is_dataset_name(pool) || pool.contains('/') {
                return Err(ConfigError::value(
                    format!("export.pools[{i}]"),
                    format!("{pool:?} is not a pool name"),
                ));
            }
        }
        for (key, d) in [
            ("export.zfs_timeout", self.zfs_timeout),
            ("export.collect_timeout", self.collect_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::value(key, "must be above zero"));
            }
        }
        self.consumer.validate_at("export.consumer")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn error_key(c: &ExportConfig) -> String {
        match c.validate() {
            Err(ConfigError::Value { key, .. }) => key,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_hold_and_bad_values_name_their_key() {
        ExportConfig::default().validate().unwrap();
        let bad = |f: fn(&mut ExportConfig)| {
            let mut c = ExportConfig::default();
            f(&mut c);
            error_key(&c)
        };
        assert_eq!(
            bad(|c| c.schedule = "weekly@someday 03:00".into()),
            "export.schedule"
        );
        assert_eq!(
            bad(|c| c.timezone = "Mars/Olympus".into()),
            "export.timezone"
        );
        assert_eq!(
            bad(|c| c.dataset = "tank/with space".into()),
            "export.dataset"
        );
        assert_eq!(bad(|c| c.keep = 0), "export.keep");
        assert_eq!(
            bad(|c| {
                c.dataset = "tank/export".into();
                c.dir = Some("/tmp/export".into());
            }),
            "export.dir"
        );
        assert_eq!(bad(|c| c.dir = Some(PathBuf::new())), "export.dir");
        assert_eq!(
            bad(|c| c.pools = vec!["tank/sub".into()]),
            "export.pools[0]"
        );
        assert_eq!(
            bad(|c| c.zfs_timeout = Duration::ZERO),
            "export.zfs_timeout"
        );
    }

    #[test]
    fn the_schedule_keys_sit_in_the_section() {
        let c: ExportConfig = toml::from_str(
            "dataset = \"tank/pf-export\"\nschedule = \"weekly@sat 01:00\"\ntimezone = \"Europe/Berlin\"\ncatch_up = \"1d\"\n",
        )
        .unwrap();
        assert_eq!(c.schedule, "weekly@sat 01:00");
        assert_eq!(c.job().unwrap().tz, chrono_tz::Europe::Berlin);
    }
}

/// `[drill]`: the quarterly restore drill, on the offsite side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillConfig {
    /// Run it on its schedule (needs `[[replication.jobs]]`).
    pub enabled: bool,
    /// The replication jobs whose offsite copies are drilled, by name; empty: every job.
    pub jobs: Vec<String>,
    /// When: `quarterly@<day> HH:MM` (or any schedule form).
    pub schedule: String,
    /// IANA time zone of the schedule.
    pub timezone: String,
    /// How late a slot missed while proxflow was down is still run.
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
    /// The oldest the newest replicated snapshot may be.
    #[serde(with = "humantime_serde")]
    pub rpo: Duration,
    /// Restore one VM of the newest export bundle (needs `[export]`).
    pub restore: bool,
    /// Which VM of the bundle (its VMID there); none: the lowest VMID that is not a template.
    pub restore_vm: Option<u32>,
    /// The VMIDs a restored VM may take, `[first, last]`: a range no one else uses.
    pub scratch_vmids: [u32; 2],
    /// The storage a restored VM's disks are allocated on (fresh, of the exported sizes).
    pub scratch_storage: String,
    /// How long the restored VM has to answer its guest agent.
    #[serde(with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// Bound on reading and checksumming each dataset's files.
    #[serde(with = "humantime_serde")]
    pub files_timeout: Duration,
    /// Where the Markdown reports go.
    pub report_dir: std::path::PathBuf,
    /// Bound on each `zfs` command.
    #[serde(with = "humantime_serde")]
    pub zfs_timeout: Duration,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            jobs: Vec::new(),
            schedule: "quarterly@1 04:00".to_owned(),
            timezone: "UTC".to_owned(),
            catch_up: Duration::from_secs(14 * 86_400),
            rpo: Duration::from_secs(26 * 3600),
            restore: true,
            restore_vm: None,
            scratch_vmids: [9900, 9999],
            scratch_storage: "local-zfs".to_owned(),
            agent_timeout: Duration::from_secs(300),
            files_timeout: Duration::from_secs(3600),
            report_dir: "/var/lib/proxflow/drills".into(),
            zfs_timeout: Duration::from_secs(60),
        }
    }
}

impl DrillConfig {
    /// Its schedule.
    pub fn job(&self) -> Result<ScheduledJob, ConfigError> {
        ScheduledJob::from_keys(
            "drill",
            (crate::drill::JOB, crate::drill::KIND),
            &self.schedule,
            &self.timezone,
            self.catch_up,
        )
    }
}

impl Validate for DrillConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.job()?;
        let [first, last] = self.scratch_vmids;
        if !(100..=999_999_999).contains(&first) || last < first || last > 999_999_999 {
            return Err(ConfigError::value(
                "drill.scratch_vmids",
                "must be [first, last] with 100 <= first <= last <= 999999999",
            ));
        }
        if self.scratch_storage.is_empty() {
            return Err(ConfigError::value(
                "drill.scratch_storage",
                "must name a storage",
            ));
        }
        for (key, d) in [
            ("drill.rpo", self.rpo),
            ("drill.agent_timeout", self.agent_timeout),
            ("drill.files_timeout", self.files_timeout),
            ("drill.zfs_timeout", self.zfs_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::value(key, "must be above zero"));
            }
        }
        Ok(())
    }
}
