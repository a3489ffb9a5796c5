//! Capacity: what the capacity service measured (`pf.evt.capacity.sample`), when a metric stayed over
//! its threshold for a whole window (`pf.evt.capacity.exceeded`) or came back under its hysteresis
//! level (`pf.evt.capacity.recovered`), and why a scale-out was vetoed for lack of host headroom
//! (`pf.evt.capacity.host_exhausted`).
//!
//! Percentages are 0–100; ratios (memory commitment, vCPU per logical CPU) are plain factors, so
//! `1.5` is the seed's 1.5:1 overcommit budget.

use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};

/// What a metric is measured over.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// A Proxmox node.
    Host,
    /// A Proxmox storage on a node.
    Storage,
    /// A ZFS pool on a node.
    ZfsPool,
    /// A k3s cluster: the VMs carrying its tag.
    Cluster,
}

impl Scope {
    /// The lower-case name used in metric ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Storage => "storage",
            Self::ZfsPool => "zfs_pool",
            Self::Cluster => "cluster",
        }
    }
}

/// One measured series: `cluster/k3s/cpu_avg`, `host/pve1/memory_commitment`, `storage/local-zfs/used`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct MetricId {
    /// What it is measured over.
    pub scope: Scope,
    /// Node, storage, pool or cluster name.
    pub name: String,
    /// The metric (`cpu`, `memory`, `memory_commitment`, `vcpu_ratio`, `used`, `cpu_avg`, ...).
    pub metric: String,
}

impl MetricId {
    /// A metric id.
    pub fn new(scope: Scope, name: impl Into<String>, metric: impl Into<String>) -> Self {
        Self {
            scope,
            name: name.into(),
            metric: metric.into(),
        }
    }
}

impl fmt::Display for MetricId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.scope.as_str(), self.name, self.metric)
    }
}

/// One storage's use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageUse {
    /// Storage id (`local-zfs`) or pool name (`rpool`).
    pub name: String,
    /// Bytes used.
    pub used: u64,
    /// Bytes in all.
    pub total: u64,
    /// `used / total`, percent.
    pub used_percent: f64,
}

/// A node's figures at one poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSample {
    /// Node name.
    pub node: String,
    /// CPU busy, percent of all logical CPUs.
    pub cpu_percent: f64,
    /// Physical memory in use, percent.
    pub memory_percent: f64,
    /// Physical memory, bytes.
    pub memory_total: u64,
    /// Physical memory in use, bytes.
    pub memory_used: u64,
    /// Σ max memory of the running VMs, bytes: what the guests may claim.
    pub memory_committed: u64,
    /// Σ balloon minimum (max memory where ballooning is off) of the running VMs, bytes: what the
    /// host cannot take back by ballooning.
    pub memory_floor: u64,
    /// `memory_committed / memory_total` (1.5 = 1.5:1 overcommit).
    pub memory_commitment_ratio: f64,
    /// `memory_floor / memory_total`.
    pub memory_floor_ratio: f64,
    /// Logical CPUs of the node.
    pub logical_cpus: u32,
    /// Σ vCPUs of the running VMs.
    pub vcpus_committed: u32,
    /// `vcpus_committed / logical_cpus`.
    pub vcpu_ratio: f64,
    /// Active storages.
    pub storages: Vec<StorageUse>,
    /// ZFS pools.
    pub zfs_pools: Vec<StorageUse>,
    /// Running, non-template VMs.
    pub running_vms: u32,
}

/// A k3s cluster's figures at one poll: its running VMs (those with the cluster's tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSample {
    /// Cluster name (configuration key).
    pub name: String,
    /// The Proxmox tag that marks its nodes.
    pub tag: String,
    /// Names of its VMs (running or not), sorted: what a scale-out numbers the next node after.
    pub nodes: Vec<String>,
    /// Running nodes measured.
    pub running: u32,
    /// Mean CPU busy of the running nodes, percent of their vCPUs.
    pub cpu_avg: f64,
    /// Highest CPU busy of one node, percent.
    pub cpu_max: f64,
    /// Mean memory use of the running nodes, percent of their max memory.
    pub memory_avg: f64,
    /// Highest memory use of one node, percent.
    pub memory_max: f64,
}

/// What one poll measured (`pf.evt.capacity.sample`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacitySample {
    /// When the poll was taken (the capacity service's clock).
    pub at: DateTime<Utc>,
    /// The node.
    pub host: HostSample,
    /// Each configured cluster.
    pub clusters: Vec<ClusterSample>,
}

impl CapacitySample {
    /// The cluster `name`, if configured and measured.
    pub fn cluster(&self, name: &str) -> Option<&ClusterSample> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

impl Versioned for CapacitySample {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.capacity.sample",
        version: 1,
    };
}

impl Message for CapacitySample {
    const SUBJECT: &'static str = "pf.evt.capacity.sample";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!(
            "capacity.sample/{}/{}",
            self.host.node,
            self.at.timestamp_millis()
        )
    }
}

/// One observation of a metric, part of an event's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// When.
    pub at: DateTime<Utc>,
    /// The value.
    pub value: f64,
}

/// A metric stayed above its threshold for a whole window (`pf.evt.capacity.exceeded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityExceeded {
    /// The metric.
    pub metric: MetricId,
    /// The value that completed the window.
    pub value: f64,
    /// Its threshold.
    pub threshold: f64,
    /// The level it must fall below to recover.
    pub clear_below: f64,
    /// The window, seconds.
    pub window_secs: u64,
    /// Start of the unbroken run of over-threshold observations that filled the window.
    pub since: DateTime<Utc>,
    /// 0 for the first firing of an episode; n for the n-th re-firing while it stays exceeded for
    /// another whole window each time.
    pub sequence: u32,
    /// Every observation of the window, oldest first: the proof it was sustained.
    pub evidence: Vec<Observation>,
    /// The whole poll that completed the window, for decisions that need the context (node counts,
    /// host memory, storage).
    pub sample: CapacitySample,
}

impl CapacityExceeded {
    /// The id of this firing, the same from any replica or after any restart: metric, run start and
    /// sequence.
    pub fn firing_id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.metric,
            self.since.timestamp_millis(),
            self.sequence
        )
    }
}

impl Versioned for CapacityExceeded {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.capacity.exceeded",
        version: 1,
    };
}

impl Message for CapacityExceeded {
    const SUBJECT: &'static str = "pf.evt.capacity.exceeded";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("capacity.exceeded/{}", self.firing_id())
    }
}

/// An exceeded metric fell below its hysteresis level (`pf.evt.capacity.recovered`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityRecovered {
    /// The metric.
    pub metric: MetricId,
    /// The value below `clear_below`.
    pub value: f64,
    /// The hysteresis level.
    pub clear_below: f64,
    /// When the episode began (the `since` of its first `capacity.exceeded`).
    pub exceeded_since: DateTime<Utc>,
    /// When it recovered.
    pub at: DateTime<Utc>,
}

impl Versioned for CapacityRecovered {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.capacity.recovered",
        version: 1,
    };
}

impl Message for CapacityRecovered {
    const SUBJECT: &'static str = "pf.evt.capacity.recovered";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!(
            "capacity.recovered/{}/{}",
            self.metric,
            self.exceeded_since.timestamp_millis()
        )
    }
}

/// A scale-out was vetoed: one more node would break the host's headroom
/// (`pf.evt.capacity.host_exhausted`). Page a human: the platform needs hardware, not automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostExhausted {
    /// The scale-out workflow that was vetoed.
    pub workflow_id: String,
    /// The cluster that wanted a node.
    pub cluster: String,
    /// The node that has no room.
    pub node: String,
    /// The numbers, in words (`memory commitment would be 1.56:1 (200 GiB of 128 GiB), budget 1.50:1`).
    pub reason: String,
    /// Memory commitment now.
    pub memory_commitment_ratio: f64,
    /// Memory commitment with the new node.
    pub memory_commitment_after: f64,
    /// The budget.
    pub memory_commitment_budget: f64,
    /// Use of the new node's storage with its disk added, percent (absent when the storage is unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_percent_after: Option<f64>,
    /// The storage limit, percent.
    pub storage_limit_percent: f64,
    /// When.
    pub at: DateTime<Utc>,
}

impl Versioned for HostExhausted {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.capacity.host_exhausted",
        version: 1,
    };
}

impl Message for HostExhausted {
    const SUBJECT: &'static str = "pf.evt.capacity.host_exhausted";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("capacity.host_exhausted/{}", self.workflow_id)
    }
}

/// One more node for a k3s cluster, asked for by an alert remediation (`pf.cmd.orchestrator.scale_out`).
/// Decided on the newest `capacity.sample` under the same guards as a detector's firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleOutRequested {
    /// The cluster (`[capacity.clusters.<name>]`).
    pub cluster: String,
    /// The remediation workflow that asks.
    pub workflow_id: String,
    /// Why, for the scale-out record.
    pub reason: String,
}

impl Versioned for ScaleOutRequested {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.cmd.scale_out_requested",
        version: 1,
    };
}

impl Message for ScaleOutRequested {
    const SUBJECT: &'static str = "pf.cmd.orchestrator.scale_out";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("{}/scale_out", self.workflow_id)
    }
}
