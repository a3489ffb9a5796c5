//! The monthly capacity review: what the `capacity_review` workflow is started with
//! ([`CapacityReviewInput`], by the shared scheduler or `proxflow capacity review`), the report it
//! writes as JSON beside its Markdown ([`CapacityReview`]), and the event that announces it
//! (`pf.evt.capacity.review`, [`CapacityReviewed`]).
//!
//! Trends are least-squares slopes per day; percentages are 0–100 and ratios plain factors, as in
//! [`crate::capacity`]. Byte figures are bytes; growth is signed (a VM that shrank grew negatively).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};

/// The workflow kind of a capacity review (subject `pf.cmd.workflow.capacity_review`), run by the
/// capacity service's engine. Here, not in the capacity crate, so the shared scheduler can start one
/// without depending on a service.
pub const KIND: &str = "capacity_review";

/// What a review is started with: the window it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityReviewInput {
    /// Start of the window (inclusive).
    pub from: DateTime<Utc>,
    /// End of the window (inclusive).
    pub to: DateTime<Utc>,
}

impl CapacityReviewInput {
    /// The workflow id of this window: the same window is the same run however often it is started
    /// (`capacity-review-20261001T0000Z-20261101T0000Z`).
    pub fn workflow_id(&self) -> String {
        format!(
            "capacity-review-{}-{}",
            self.from.format("%Y%m%dT%H%MZ"),
            self.to.format("%Y%m%dT%H%MZ")
        )
    }
}

/// Where a trend's points came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrendSource {
    /// The capacity service's `pf.evt.capacity.sample` events.
    Samples,
    /// The node's Proxmox RRD (`rrddata`, timeframe month, AVERAGE: one point per 12 hours).
    Rrd,
}

/// How long until a metric's trend reaches its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DaysLeft {
    /// The trend is already at or above the threshold (0 days).
    AlreadyAbove,
    /// Rising: reaches the threshold in this many days at the current slope.
    Days {
        /// Days from the last point.
        days: f64,
    },
    /// Flat or falling: never at this trend.
    Never,
    /// Fewer than two points at distinct times: no trend.
    Unknown,
}

impl DaysLeft {
    /// Days as a number: 0 when already above, `None` for never and unknown.
    pub fn days(self) -> Option<f64> {
        match self {
            Self::AlreadyAbove => Some(0.0),
            Self::Days { days } => Some(days),
            Self::Never | Self::Unknown => None,
        }
    }
}

/// One metric's trend over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricTrend {
    /// The metric id (`host/pve1/memory`, `zfs_pool/rpool/used`).
    pub metric: String,
    /// Its rule kind in `[capacity.rules]` (`host_memory`), whose threshold it is judged against.
    pub kind: String,
    /// Samples or RRD.
    pub source: TrendSource,
    /// Points in the window.
    pub points: u64,
    /// Time of the first point.
    pub first: DateTime<Utc>,
    /// Time of the last point.
    pub last: DateTime<Utc>,
    /// The last observed value.
    pub last_value: f64,
    /// The fitted line's value at `last`: what `days_left` starts from.
    pub trend_value: f64,
    /// Least-squares slope, units per day.
    pub slope_per_day: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// When the trend reaches the threshold.
    pub days_left: DaysLeft,
}

/// Σ max memory of the VMs against physical memory, and the room left under the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryCommitment {
    /// Physical memory, bytes.
    pub physical_bytes: u64,
    /// Σ max memory of the running VMs, bytes (what the platform's metric and scale-out budget use).
    pub committed_bytes: u64,
    /// Running, non-template VMs.
    pub running_vms: u32,
    /// Σ max memory of every non-template VM, running or not, bytes: the commitment if all started.
    pub committed_all_bytes: u64,
    /// Non-template VMs.
    pub vms: u32,
    /// `committed_bytes / physical_bytes`.
    pub ratio: f64,
    /// `committed_all_bytes / physical_bytes`.
    pub ratio_all: f64,
    /// The target ratio (`capacity.review.commitment_target`, 1.5 = 1.5:1).
    pub target: f64,
    /// `target × physical − committed`, bytes; negative when over the target.
    pub headroom_bytes: i64,
    /// `headroom_bytes` in GiB.
    pub headroom_gib: f64,
}

/// A VM's growth over the window, from its RRD (month, AVERAGE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmGrowth {
    /// VMID.
    pub vmid: u32,
    /// Name, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Memory in use at the last point, bytes.
    pub memory_bytes: u64,
    /// Memory growth over the window (trend), bytes.
    pub memory_growth_bytes: i64,
    /// Disk in use at the last point, bytes (0 where Proxmox does not know it without the agent).
    pub disk_bytes: u64,
    /// Disk growth over the window (trend), bytes.
    pub disk_growth_bytes: i64,
    /// RRD points in the window.
    pub points: u64,
}

/// A dataset's space and growth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetGrowth {
    /// Dataset name.
    pub dataset: String,
    /// `used`, bytes (itself, its children and snapshots).
    pub used_bytes: u64,
    /// `referenced`, bytes (its live data).
    pub referenced_bytes: u64,
    /// `usedbysnapshots`, bytes.
    pub snapshots_bytes: u64,
    /// Growth of `referenced` since `baseline`, bytes: ZFS keeps no history, so this is the live data
    /// now less what the oldest snapshot inside the window referenced. `None` without such a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_bytes: Option<i64>,
    /// The snapshot the growth is measured from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// When it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_at: Option<DateTime<Utc>>,
}

/// A snapshot naming policy, as the snapshotter names them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPolicy {
    /// `<prefix>daily-<timestamp>`.
    Daily,
    /// `<prefix>weekly-<timestamp>`.
    Weekly,
    /// `<prefix>monthly-<timestamp>`.
    Monthly,
    /// `<prefix>quarterly-<timestamp>`.
    Quarterly,
    /// `<prefix>pre-<request>-<timestamp>`.
    Prechange,
    /// Anything else (taken by hand, by another tool, another prefix).
    Other,
}

impl SnapshotPolicy {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Quarterly => "quarterly",
            Self::Prechange => "prechange",
            Self::Other => "other",
        }
    }
}

/// Snapshot space of one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpace {
    /// The policy.
    pub policy: SnapshotPolicy,
    /// Snapshots.
    pub snapshots: u64,
    /// Σ of their `used`, bytes: what destroying each alone would free.
    pub used_bytes: u64,
}

/// Snapshot space of the reviewed datasets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpace {
    /// Per policy, in [`SnapshotPolicy`] order; policies without snapshots left out.
    pub by_policy: Vec<PolicySpace>,
    /// Σ `usedbysnapshots` of the datasets, bytes.
    pub usedbysnapshots_bytes: u64,
    /// `usedbysnapshots` not in any one snapshot's `used` (blocks two or more snapshots share; only
    /// destroying all of them frees it), bytes.
    pub shared_bytes: u64,
}

/// The review (written as `<dir>/<id>.json` beside `<id>.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityReview {
    /// The node reviewed.
    pub node: String,
    /// Window start.
    pub from: DateTime<Utc>,
    /// Window end.
    pub to: DateTime<Utc>,
    /// Capacity samples of the node read in the window.
    pub samples: u64,
    /// Per metric (samples first, then RRD), in metric order.
    pub trends: Vec<MetricTrend>,
    /// Memory commitment now.
    pub commitment: MemoryCommitment,
    /// The VMs that grew most (memory + disk), at most `top`; none that did not grow.
    pub top_vms: Vec<VmGrowth>,
    /// The datasets that grew most, at most `top`.
    pub top_datasets: Vec<DatasetGrowth>,
    /// Snapshot space by policy (empty when no dataset is reviewed).
    pub snapshot_space: SnapshotSpace,
    /// What was approximated or left out, in words.
    pub notes: Vec<String>,
}

impl CapacityReview {
    /// The metric whose trend reaches its threshold first, with the days left.
    pub fn soonest(&self) -> Option<(&MetricTrend, f64)> {
        self.trends
            .iter()
            .filter_map(|t| t.days_left.days().map(|d| (t, d)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

impl Versioned for CapacityReview {
    const SCHEMA: SchemaId = SchemaId {
        name: "capacity.review_report",
        version: 1,
    };
}

/// A review was written (`pf.evt.capacity.review`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityReviewed {
    /// The `capacity_review` workflow.
    pub workflow_id: String,
    /// The node reviewed.
    pub node: String,
    /// Window start.
    pub from: DateTime<Utc>,
    /// Window end.
    pub to: DateTime<Utc>,
    /// One line: the soonest threshold and the commitment.
    pub summary: String,
    /// The metric that reaches its threshold first, if any does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soonest_metric: Option<String>,
    /// Its days left (0 when already above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soonest_days: Option<f64>,
    /// Memory commitment now.
    pub memory_commitment_ratio: f64,
    /// Headroom under the commitment target, GiB (negative when over).
    pub headroom_gib: f64,
    /// The Markdown report.
    pub markdown_path: String,
    /// The JSON report.
    pub json_path: String,
    /// SHA-256 of the JSON report file, hex.
    pub sha256: String,
    /// When it was written.
    pub at: DateTime<Utc>,
}

impl Versioned for CapacityReviewed {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.capacity.review",
        version: 1,
    };
}

impl Message for CapacityReviewed {
    const SUBJECT: &'static str = "pf.evt.capacity.review";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("capacity.review/{}", self.workflow_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_one_workflow_id() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let input = CapacityReviewInput {
            from: at("2026-10-01T00:00:00Z"),
            to: at("2026-11-01T00:00:00Z"),
        };
        assert_eq!(
            input.workflow_id(),
            "capacity-review-20261001T0000Z-20261101T0000Z"
        );
        assert_eq!(
            DaysLeft::AlreadyAbove.days(),
            Some(0.0),
            "already above is 0 days"
        );
        assert_eq!(DaysLeft::Never.days(), None);
    }
}
