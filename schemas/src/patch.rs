//! Patching: the plan a `patch_run` workflow scans and classifies (stored in its record, shown by
//! `proxflow patch plan`), the decision an approver gives on it, and the run's events on
//! `pf.evt.patch.*` (every decision, gate wait, node and page is one).
//!
//! A plan is content-addressed: [`PatchPlan::hash`] is the SHA-256 of its targets' changes in a
//! canonical order, so an approval names exactly the set of packages that was reviewed and a plan
//! that gained or lost a package has another hash.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::{Message, SchemaId, Versioned};

/// The workflow kind of a patch run.
pub const KIND: &str = "patch_run";

/// One package change on one target, as the package manager's simulation lists it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PackageChange {
    /// Package name.
    pub package: String,
    /// Installed version; absent for a new package (a new kernel image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Version it goes to; absent when the upgrade removes the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Whether it comes from a security archive (`jammy-security`).
    pub security: bool,
    /// Where it comes from (archive or origin).
    #[serde(default)]
    pub origin: String,
}

/// Why a change needs an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MajorChange {
    /// The package (absent for the host's reboot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// The rule that made it major (`kernel series 5.15 -> 6.5`, `removes the package`).
    pub reason: String,
}

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A k3s agent VM.
    Agent,
    /// A k3s server VM.
    Server,
    /// The Proxmox VE host (patched last: its reboot takes every VM down).
    Host,
}

/// One target's part of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetPlan {
    /// `vm/<vmid>` or `host/<node>`.
    pub target: String,
    /// What it is.
    pub kind: TargetKind,
    /// VM name (the k3s node name) or the host's node name.
    pub name: String,
    /// VMID (VMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// The running kernel when scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The VM's static address (for a guest command transport).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What the upgrade changes (sorted by package).
    pub changes: Vec<PackageChange>,
    /// Pending but not applied: held (rejected earlier) or not security while only security
    /// updates are applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<PackageChange>,
    /// Whether the upgrade is expected to need a reboot (a new kernel, a reboot package).
    pub reboot: bool,
    /// Why the target waits for an approval; empty: minor, applied in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub majors: Vec<MajorChange>,
    /// Changelog excerpts of its major changes, by package (host packages, from the API).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub changelogs: std::collections::BTreeMap<String, String>,
}

impl TargetPlan {
    /// Whether it needs an approval.
    pub fn is_major(&self) -> bool {
        !self.majors.is_empty()
    }
}

/// A scanned, classified plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchPlan {
    /// SHA-256 (hex) of the changes of every target ([`PatchPlan::hash_of`]).
    pub hash: String,
    /// SHA-256 of the changes of the targets that need an approval: what an approval covers.
    /// Absent when nothing needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_hash: Option<String>,
    /// Targets in the order they are patched (agents, servers, the host last); only those with
    /// changes.
    pub targets: Vec<TargetPlan>,
    /// When it was scanned.
    pub scanned_at: DateTime<Utc>,
}

impl PatchPlan {
    /// The content address of `targets`' changes: each target's id, its changes (sorted) and its
    /// expected reboot, in target order. Classification is not part of it (a changed rule does not
    /// void an approval of the same packages).
    pub fn hash_of<'a>(targets: impl IntoIterator<Item = &'a TargetPlan>) -> String {
        let mut digest = Sha256::new();
        for t in targets {
            digest.update(t.target.as_bytes());
            digest.update([0]);
            let mut changes: Vec<&PackageChange> = t.changes.iter().collect();
            changes.sort();
            for c in changes {
                for part in [
                    c.package.as_str(),
                    c.from.as_deref().unwrap_or("-"),
                    c.to.as_deref().unwrap_or("-"),
                ] {
                    digest.update(part.as_bytes());
                    digest.update([0]);
                }
            }
            digest.update([u8::from(t.reboot), 0xff]);
        }
        hex(&digest.finalize())
    }

    /// A plan of `targets` scanned at `at`, with its hashes.
    pub fn new(targets: Vec<TargetPlan>, at: DateTime<Utc>) -> Self {
        let hash = Self::hash_of(&targets);
        let majors: Vec<&TargetPlan> = targets.iter().filter(|t| t.is_major()).collect();
        let approval_hash = (!majors.is_empty()).then(|| Self::hash_of(majors));
        Self {
            hash,
            approval_hash,
            targets,
            scanned_at: at,
        }
    }

    /// Whether nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Whether `given` names the hash `full` (the whole hex, or a prefix of at least 12 digits as
/// `proxflow patch plan` prints it).
pub fn hash_matches(full: &str, given: &str) -> bool {
    let given = given.trim().to_ascii_lowercase();
    given.len() >= 12 && full.starts_with(&given)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an approver decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Apply the major changes of exactly this plan.
    Approve,
    /// Do not: hold those packages until a newer version replaces them.
    Reject,
}

/// An approver's decision on a run's plan (the signal the run waits for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// What was decided.
    pub verdict: Verdict,
    /// The approval hash it covers (full hex).
    pub plan_hash: String,
    /// The approver's token name.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Until when an approval may be used (the end of the window after it was given).
    pub expires_at: DateTime<Utc>,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

/// What a run waiting for a decision asks (its record's `data.awaiting`, absent otherwise): the
/// signal the decision is, the approval hash it must name, when it was asked and until when it may
/// come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Awaiting {
    /// The signal the run waits on (`decision.<round>`).
    pub signal: String,
    /// The approval hash a decision must name (full hex).
    pub approval_hash: String,
    /// When the run asked (absent in records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<DateTime<Utc>>,
    /// The decision's deadline.
    pub expires_at: DateTime<Utc>,
}

/// What a patch run is started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRunInput {
    /// Scan, plan, classify and check the gates; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Who or what started it (`schedule`, `token:<name>`).
    pub requested_by: String,
}

/// What happened in a patch run (`pf.evt.patch.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PatchEventKind {
    /// A plan was scanned and classified.
    Planned,
    /// Major changes wait for an approval of the plan's approval hash.
    ApprovalRequested,
    /// An approver approved.
    Approved,
    /// An approver rejected (the packages are held).
    Rejected,
    /// An approval no longer applies (the plan changed or it expired).
    ApprovalVoid,
    /// A gate is closed; the run waits before the target.
    GateClosed,
    /// The window ended; the run waits for the next one.
    Paused,
    /// A target was skipped (cordoned by hand, nothing to do).
    Skipped,
    /// A target is done.
    NodeDone,
    /// The run stopped on a failure; a human is needed.
    Page,
    /// The run ended.
    Finished,
}

impl PatchEventKind {
    /// The subject token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::ApprovalRequested => "approval_requested",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::ApprovalVoid => "approval_void",
            Self::GateClosed => "gate_closed",
            Self::Paused => "paused",
            Self::Skipped => "skipped",
            Self::NodeDone => "node_done",
            Self::Page => "page",
            Self::Finished => "finished",
        }
    }
}

/// One event of a patch run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEvent {
    /// The run's workflow id.
    pub run: String,
    /// What happened.
    pub kind: PatchEventKind,
    /// The target it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What, in words (the gate's reason, the approver, the failure).
    pub detail: String,
    /// Kind-specific figures (the node report, the plan hash).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// The step that published it: with `run`, its dedupe key (a replayed step publishes the same
    /// event again and the stream drops it).
    pub step: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl Versioned for PatchEvent {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.patch",
        version: 1,
    };
}

impl Message for PatchEvent {
    const SUBJECT: &'static str = "pf.evt.patch.*";

    fn subject(&self) -> String {
        format!("pf.evt.patch.{}", self.kind.token())
    }

    fn dedupe_id(&self) -> String {
        format!("patch/{}/{}", self.run, self.step)
    }
}

/// How one target went, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    /// `vm/<vmid>` or `host/<node>`.
    pub target: String,
    /// Package versions before (of the packages it changed).
    pub before: std::collections::BTreeMap<String, String>,
    /// Package versions after, as verified.
    pub after: std::collections::BTreeMap<String, String>,
    /// Whether it was rebooted.
    pub rebooted: bool,
    /// The kernel running at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The pre-change snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Seconds from the first step on it to its last.
    pub seconds: f64,
    /// Seconds spent in drains, upgrades, reboots and boots (the unavoidable part).
    pub waited_seconds: f64,
    /// Seconds spent waiting for the window and the gates (the sleeps between looks included).
    #[serde(default)]
    pub gate_wait_seconds: f64,
    /// Who approved its major changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, changes: &[(&str, &str, &str)], majors: usize) -> TargetPlan {
        TargetPlan {
            target: id.into(),
            kind: TargetKind::Agent,
            name: id.into(),
            vmid: None,
            kernel: None,
            address: None,
            changes: changes
                .iter()
                .map(|(p, f, t)| PackageChange {
                    package: (*p).into(),
                    from: Some((*f).into()),
                    to: Some((*t).into()),
                    security: true,
                    origin: String::new(),
                })
                .collect(),
            skipped: Vec::new(),
            reboot: false,
            majors: (0..majors)
                .map(|_| MajorChange {
                    package: None,
                    reason: "x".into(),
                })
                .collect(),
            changelogs: Default::default(),
        }
    }

    #[test]
    fn the_hash_is_of_the_changes_not_their_order_or_classification() {
        let a = target("vm/1", &[("a", "1", "2"), ("b", "1", "2")], 0);
        let b = target("vm/1", &[("b", "1", "2"), ("a", "1", "2")], 1);
        assert_eq!(PatchPlan::hash_of([&a]), PatchPlan::hash_of([&b]));
        let c = target("vm/1", &[("a", "1", "2"), ("b", "1", "3")], 0);
        assert_ne!(PatchPlan::hash_of([&a]), PatchPlan::hash_of([&c]));
        let d = target("vm/2", &[("a", "1", "2"), ("b", "1", "2")], 0);
        assert_ne!(PatchPlan::hash_of([&a]), PatchPlan::hash_of([&d]));
    }

    #[test]
    fn the_approval_hash_covers_only_the_targets_that_need_one() {
        let minor = target("vm/1", &[("a", "1", "2")], 0);
        let major = target("vm/2", &[("k", "1", "2")], 1);
        let plan = PatchPlan::new(vec![minor.clone(), major.clone()], Utc::now());
        assert_eq!(plan.approval_hash, Some(PatchPlan::hash_of([&major])));
        assert_ne!(plan.approval_hash.as_deref(), Some(plan.hash.as_str()));
        assert_eq!(PatchPlan::new(vec![minor], Utc::now()).approval_hash, None);
    }

    #[test]
    fn a_hash_is_named_by_its_whole_hex_or_a_long_prefix() {
        let full = "0123456789abcdef0123";
        assert!(hash_matches(full, full));
        assert!(hash_matches(full, "0123456789AB"));
        assert!(!hash_matches(full, "0123456789a"));
        assert!(!hash_matches(full, "1123456789ab"));
    }
}
