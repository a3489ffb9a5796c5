//! Disk and pool health, a lifecycle job: what starts a check or a scrub, what `zpool status` and
//! the Proxmox disk list said, what is wrong (each finding naming its pool, vdev or disk), and the
//! events `pf.evt.health.checked` (every check), `pf.evt.health.degraded` (something is wrong) and
//! `pf.evt.health.scrubbed` (a scrub's result).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};

/// The workflow kind of a health check (daily, or the quarterly audit).
pub const DISK_HEALTH_KIND: &str = "disk_health";
/// The workflow kind of a scrub.
pub const POOL_SCRUB_KIND: &str = "pool_scrub";

/// Which check a `disk_health` run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckMode {
    /// The cheap daily check: disk health and wearout, SMART verdicts, `zpool status`.
    #[default]
    Daily,
    /// The quarterly audit: the daily check plus every disk's full SMART report and every pool's
    /// properties, kept in the report.
    Audit,
}

/// What a `disk_health` run is started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthInput {
    /// Daily check or audit.
    #[serde(default)]
    pub mode: CheckMode,
    /// Who or what started it (`schedule`, `cli`).
    pub requested_by: String,
}

/// What a `pool_scrub` run is started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrubInput {
    /// The pools to scrub; empty: `health.pools`.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Who or what started it.
    pub requested_by: String,
}

/// One line of `zpool status`'s config table: the pool itself, a mirror/raidz group or a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VdevStatus {
    /// As printed (`mirror-0`, `/dev/sdb1`, `nvme-Samsung…-part3`).
    pub name: String,
    /// Nesting below the pool line (0: the pool itself, 1: a top-level vdev, 2: its device).
    pub depth: u32,
    /// The section it is listed in: empty for the pool's data vdevs, else `logs`, `cache`,
    /// `spares`, `special`, `dedup`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub section: String,
    /// `ONLINE`, `DEGRADED`, `FAULTED`, `OFFLINE`, `UNAVAIL`, `REMOVED`, `AVAIL`, `INUSE`, …
    pub state: String,
    /// Read errors.
    pub read: u64,
    /// Write errors.
    pub write: u64,
    /// Checksum errors.
    pub cksum: u64,
    /// What follows the counters (`24.7M repaired`, `was /dev/sdb1`, `too many errors`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl VdevStatus {
    /// Read + write + checksum errors.
    pub fn errors(&self) -> u64 {
        self.read
            .saturating_add(self.write)
            .saturating_add(self.cksum)
    }
}

/// Whether the last scan was a scrub or a resilver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScanKind {
    /// `zpool scrub`.
    Scrub,
    /// Rebuilding a replaced or returning device.
    Resilver,
}

/// Where the last scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScanState {
    /// Never scanned since the pool was created or imported (`none requested`).
    #[default]
    None,
    /// In progress.
    Running,
    /// Paused (`zpool scrub -p`).
    Paused,
    /// Cancelled or stopped before the end.
    Canceled,
    /// Completed.
    Finished,
}

/// The `scan:` (OpenZFS) or `scrub:` (zfs-fuse) part of `zpool status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanStatus {
    /// Scrub or resilver; none when never scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ScanKind>,
    /// Where it is.
    pub state: ScanState,
    /// Bytes repaired (resilvered, for a resilver); for zfs-fuse, which prints it per device, the
    /// devices' sum. Sizes are printed rounded (`24.7M`), so this is approximate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired_bytes: Option<u64>,
    /// Errors it found (`with N errors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// How long it ran, seconds (minute resolution on zfs-fuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// When it ended (completed or cancelled), read in the configured time zone: zpool prints
    /// the host's local time without a zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Percent done, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_done: Option<f64>,
    /// The text as printed, continuation lines joined with `; `.
    pub text: String,
}

/// The `errors:` part of `zpool status -v`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataErrors {
    /// `No known data errors`.
    pub clean: bool,
    /// `N data errors` (without `-v`), when printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The files (or `<metadata>:<0x…>` objects) with permanent errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The `errors:` line as printed.
    pub text: String,
}

/// `zpool status -v <pool>`, parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolStatus {
    /// The pool.
    pub pool: String,
    /// `ONLINE`, `DEGRADED`, `FAULTED`, `UNAVAIL`, `SUSPENDED`, …
    pub state: String,
    /// The `status:` explanation, when zpool gives one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// The `action:` advice, when zpool gives one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// The last scrub or resilver.
    pub scan: ScanStatus,
    /// The config table, in order; the first entry is the pool itself.
    pub vdevs: Vec<VdevStatus>,
    /// Data errors.
    pub errors: DataErrors,
}

/// One disk of the node, as Proxmox reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskStatus {
    /// Device path (`/dev/nvme0n1`).
    pub devpath: String,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SMART overall health from the disk list (`PASSED`, `FAILED`, `UNKNOWN`).
    pub health: String,
    /// SMART overall health from the disk's own SMART report, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_health: Option<String>,
    /// Life left in percent (100 = new); none for disks without a wear figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wearout: Option<u64>,
    /// The full SMART report as Proxmox returns it (audit only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<serde_json::Value>,
}

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The pool is not `ONLINE`.
    PoolState,
    /// A vdev or device is not `ONLINE` (nor an available spare).
    VdevState,
    /// A vdev or device has read, write or checksum errors.
    VdevErrors,
    /// The pool has data errors (files or metadata it could not repair).
    DataErrors,
    /// SMART says the disk is failing.
    DiskFailed,
    /// The disk's life left is at or below `health.wearout_threshold`.
    DiskWearout,
    /// A scrub finished with errors.
    ScrubErrors,
    /// The pool's or disks' status could not be read.
    Unreadable,
}

/// One thing wrong, naming where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The pool, for pool and vdev findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The vdev or device, for vdev findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdev: Option<String>,
    /// The disk, for disk findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// In words: `pool tank is DEGRADED: vdev /dev/sdb is OFFLINE`.
    pub detail: String,
}

/// A pool property as `zpool get all` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolProperty {
    /// Its name.
    pub property: String,
    /// Its value.
    pub value: String,
    /// `default`, `local`, …
    pub source: String,
}

/// What a health check found (`pf.evt.health.checked`, every check).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// The run's workflow id.
    pub run: String,
    /// Daily check or audit.
    pub mode: CheckMode,
    /// When it looked.
    pub at: DateTime<Utc>,
    /// No findings.
    pub healthy: bool,
    /// What is wrong.
    pub findings: Vec<Finding>,
    /// Every configured pool's status (a pool that could not be read is a finding instead).
    pub pools: Vec<PoolStatus>,
    /// The node's disks.
    pub disks: Vec<DiskStatus>,
    /// Each pool's properties (audit only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pool_properties: BTreeMap<String, Vec<PoolProperty>>,
}

impl Versioned for HealthReport {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.health.checked",
        version: 1,
    };
}

impl Message for HealthReport {
    const SUBJECT: &'static str = "pf.evt.health.checked";

    fn subject(&self) -> String {
        Self::SUBJECT.to_owned()
    }

    fn dedupe_id(&self) -> String {
        format!("health-checked/{}", self.run)
    }
}

/// Something is wrong (`pf.evt.health.degraded`): from a check or a scrub, each finding naming
/// its pool, vdev or disk. Page on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthDegraded {
    /// The run's workflow id (a `disk_health` or `pool_scrub` run).
    pub run: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What is wrong; never empty.
    pub findings: Vec<Finding>,
}

impl Versioned for HealthDegraded {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.health.degraded",
        version: 1,
    };
}

impl Message for HealthDegraded {
    const SUBJECT: &'static str = "pf.evt.health.degraded";

    fn subject(&self) -> String {
        Self::SUBJECT.to_owned()
    }

    fn dedupe_id(&self) -> String {
        format!("health-degraded/{}", self.run)
    }
}

/// One pool's scrub, as a `pool_scrub` run saw it end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrubOutcome {
    /// The pool.
    pub pool: String,
    /// A scrub was already running when the run began: it was waited on, not restarted.
    pub already_running: bool,
    /// It ended within `health.scrub_timeout`; false: still running when the run stopped waiting.
    pub finished: bool,
    /// The scan as last read (repaired bytes, errors, duration).
    pub scan: ScanStatus,
    /// The pool's state afterwards.
    pub state: String,
    /// Why the scrub could not be started or read, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A scrub run ended (`pf.evt.health.scrubbed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrubReport {
    /// The run's workflow id.
    pub run: String,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// Each pool's scrub.
    pub pools: Vec<ScrubOutcome>,
    /// What is wrong after it (scrub errors, vdev errors, a degraded pool).
    pub findings: Vec<Finding>,
}

impl Versioned for ScrubReport {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.health.scrubbed",
        version: 1,
    };
}

impl Message for ScrubReport {
    const SUBJECT: &'static str = "pf.evt.health.scrubbed";

    fn subject(&self) -> String {
        Self::SUBJECT.to_owned()
    }

    fn dedupe_id(&self) -> String {
        format!("health-scrubbed/{}", self.run)
    }
}
