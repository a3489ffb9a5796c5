//! Snapshots: the snapshotter's pre-change request/reply (core NATS request on
//! [`crate::names::subject::RPC_SNAPSHOTTER_PRECHANGE`], outside the streams) and its events on
//! `pf.evt.snapshot.*` (taken, pruned, validity check).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};
use crate::names::subject;

/// What a snapshot is of: a VM (through the Proxmox snapshot API) or a ZFS dataset.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SnapshotTarget {
    /// A Proxmox VM; the snapshot covers its disks and config.
    Vm {
        /// VMID.
        vmid: u32,
    },
    /// A ZFS dataset (`tank/data`).
    Dataset {
        /// Dataset name.
        dataset: String,
    },
}

impl std::fmt::Display for SnapshotTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vm { vmid } => write!(f, "vm/{vmid}"),
            Self::Dataset { dataset } => write!(f, "zfs/{dataset}"),
        }
    }
}

/// "Apply the retention of every policy on this pool now": what a remediation of a filling pool
/// asks of the snapshotter (`pf.cmd.snapshotter.prune`). It prunes only what the policies' grids
/// already let go (expired pre-change snapshots included) and never more; held snapshots and a
/// replication target's newest common base stay, as in a scheduled pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequested {
    /// The pool (`tank`): every policy target on it, the pool's own dataset included.
    pub pool: String,
    /// The workflow that asks (dedupe: one prune per asking workflow).
    pub workflow_id: String,
    /// Who and why, for the log.
    pub reason: String,
}

impl PruneRequested {
    /// Whether `target` lives on the requested pool (only datasets do: a VM's disks are on a
    /// Proxmox storage, whose pool the snapshotter does not know).
    pub fn covers(&self, target: &SnapshotTarget) -> bool {
        match target {
            SnapshotTarget::Dataset { dataset } => {
                dataset == &self.pool
                    || dataset
                        .strip_prefix(self.pool.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            SnapshotTarget::Vm { .. } => false,
        }
    }
}

impl Versioned for PruneRequested {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.cmd.prune_requested",
        version: 1,
    };
}

impl Message for PruneRequested {
    const SUBJECT: &'static str = "pf.cmd.snapshotter.prune";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("{}/prune", self.workflow_id)
    }
}

/// "Snapshot this before a change": sent by patching and remediation before they touch a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreChangeRequest {
    /// The caller's id for this change (`patch-run-2026w48/vm-104`). Asking again with the same id
    /// returns the snapshot the first request made instead of taking another.
    pub request_id: String,
    /// What to snapshot.
    pub target: SnapshotTarget,
    /// Why, for the audit trail and the snapshot's description.
    pub reason: String,
    /// How long the snapshot is protected from pruning; absent: `snapshot.prechange_ttl`. Capped at
    /// `snapshot.prechange_max_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl Versioned for PreChangeRequest {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.rpc.snapshotter.prechange",
        version: 1,
    };
}

/// The answer to a [`PreChangeRequest`]: the snapshot's name, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreChangeReply {
    /// The request's id.
    pub request_id: String,
    /// The snapshot (absent on error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Until when it is kept (absent on error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// `true` when an earlier request with this id had already taken it.
    #[serde(default)]
    pub existing: bool,
    /// Why no snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Versioned for PreChangeReply {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.rpc.snapshotter.prechange_reply",
        version: 1,
    };
}

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// By a policy's schedule.
    Scheduled,
    /// On a pre-change request.
    PreChange,
}

/// A snapshot was taken (`pf.evt.snapshot.taken`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTaken {
    /// Of what.
    pub target: SnapshotTarget,
    /// Snapshot name (without `dataset@`).
    pub snapshot: String,
    /// Why.
    pub kind: SnapshotKind,
    /// The policy (scheduled) or the request id (pre-change).
    pub reference: String,
    /// When it is no longer protected (pre-change snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was taken.
    pub at: DateTime<Utc>,
}

impl Versioned for SnapshotTaken {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.snapshot.taken",
        version: 1,
    };
}

impl Message for SnapshotTaken {
    const SUBJECT: &'static str = "pf.evt.snapshot.taken";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("snapshot/{}/{}/taken", self.target, self.snapshot)
    }
}

/// Snapshots a policy's retention let go (`pf.evt.snapshot.pruned`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsPruned {
    /// Of what.
    pub target: SnapshotTarget,
    /// The policy whose grid decided.
    pub policy: String,
    /// Destroyed snapshots.
    pub pruned: Vec<String>,
    /// Snapshots the grid would have let go but that were kept, with why (`held`, `pre-change ttl`).
    #[serde(default)]
    pub protected: Vec<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl Versioned for SnapshotsPruned {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.snapshot.pruned",
        version: 1,
    };
}

impl Message for SnapshotsPruned {
    const SUBJECT: &'static str = "pf.evt.snapshot.pruned";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("snapshot/{}/pruned/{}", self.target, self.pruned.join(","))
    }
}

/// The validity check of one target (`pf.evt.snapshot.check_passed` / `check_failed`): do the
/// snapshots its policy should have exist, and is the newest one young enough.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCheck {
    /// Of what.
    pub target: SnapshotTarget,
    /// The policy.
    pub policy: String,
    /// Snapshots the schedule and retention say should exist now.
    pub expected: u32,
    /// Those missing.
    pub missing: Vec<String>,
    /// The newest scheduled snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<String>,
    /// Its age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_age_secs: Option<u64>,
    /// The policy's bound on that age.
    pub slo_max_age_secs: u64,
    /// Nothing missing and the newest within its SLO.
    pub ok: bool,
    /// When it ran (also part of the dedupe key: one event per check).
    pub checked_at: DateTime<Utc>,
}

impl Versioned for SnapshotCheck {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.snapshot.check",
        version: 1,
    };
}

impl Message for SnapshotCheck {
    /// The last token is the result (`check_passed`, `check_failed`).
    const SUBJECT: &'static str = "pf.evt.snapshot.*";

    fn subject(&self) -> String {
        subject::evt(
            "snapshot",
            if self.ok {
                "check_passed"
            } else {
                "check_failed"
            },
        )
    }

    fn dedupe_id(&self) -> String {
        format!(
            "snapshot/{}/check/{}",
            self.target,
            self.checked_at.timestamp()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_travel_tagged_and_print_as_lease_style_keys() {
        let vm = SnapshotTarget::Vm { vmid: 104 };
        assert_eq!(
            serde_json::to_value(&vm).ok(),
            Some(serde_json::json!({"kind": "vm", "vmid": 104}))
        );
        assert_eq!(vm.to_string(), "vm/104");
        let ds: Result<SnapshotTarget, _> =
            serde_json::from_str(r#"{"kind":"dataset","dataset":"tank/data"}"#);
        assert_eq!(
            ds.map(|d| d.to_string()).ok().as_deref(),
            Some("zfs/tank/data")
        );
    }

    #[test]
    fn check_subject_follows_the_verdict() {
        let mut check = SnapshotCheck {
            target: SnapshotTarget::Vm { vmid: 1 },
            policy: "p".into(),
            expected: 1,
            missing: vec![],
            newest: None,
            newest_age_secs: None,
            slo_max_age_secs: 1,
            ok: true,
            checked_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        assert_eq!(check.subject(), "pf.evt.snapshot.check_passed");
        assert!(crate::names::subject::matches(
            SnapshotCheck::SUBJECT,
            &check.subject()
        ));
        check.ok = false;
        assert_eq!(check.subject(), "pf.evt.snapshot.check_failed");
        assert!(crate::names::subject::matches(
            SnapshotCheck::SUBJECT,
            &check.subject()
        ));
    }
}
