//! The patch runs waiting for a decision: for each, the plan's approval hash, what the plan holds
//! (each VM or host, its package counts, its major changes flagged), when the run asked, until when
//! a decision may come, and the exact commands that decide.
//!
//! A run waits when its record is `waiting` on the signal its `data.awaiting` names
//! ([`Awaiting`]); the plan is its `data.plan`. Runs are found from the index (`patch_run`,
//! `waiting`), then read one by one: only the waiting ones.

use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::patch::{Awaiting, KIND, MajorChange, PatchPlan, TargetKind, TargetPlan};
use proxflow_schemas::workflow::{Wait, WorkflowRecord, WorkflowState};
use serde::Serialize;

use crate::ViewError;

/// How many hex digits of a hash the commands name (the gateway accepts 12 or more).
const SHORT_HASH: usize = 12;

/// One target of a plan waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedTarget {
    /// `vm/<vmid>` or `host/<node>`.
    pub target: String,
    /// The VM's (k3s node's) or host's name.
    pub name: String,
    /// What it is.
    pub kind: TargetKind,
    /// Packages the upgrade changes on it.
    pub packages: usize,
    /// Of those, from a security archive.
    pub security: usize,
    /// Whether it is expected to reboot.
    pub reboot: bool,
    /// Whether the decision covers it (it has major changes).
    pub major: bool,
    /// Why it needs the decision.
    pub majors: Vec<MajorChange>,
}

impl From<&TargetPlan> for PlannedTarget {
    fn from(t: &TargetPlan) -> Self {
        Self {
            target: t.target.clone(),
            name: t.name.clone(),
            kind: t.kind,
            packages: t.changes.len(),
            security: t.changes.iter().filter(|c| c.security).count(),
            reboot: t.reboot,
            major: t.is_major(),
            majors: t.majors.clone(),
        }
    }
}

/// A patch run waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingApproval {
    /// The run's workflow id.
    pub run: String,
    /// The approval hash a decision must name (full hex).
    pub plan_hash: String,
    /// When the run asked.
    pub requested_at: DateTime<Utc>,
    /// Until when a decision may come.
    pub expires_at: DateTime<Utc>,
    /// What the plan holds, in the order the run patches it.
    pub targets: Vec<PlannedTarget>,
    /// The command that approves exactly this plan.
    pub approve: String,
    /// The command that rejects it (its major packages are held).
    pub reject: String,
}

/// The patch runs waiting for a decision, the soonest to expire first.
pub async fn pending(engine: &Engine) -> Result<Vec<PendingApproval>, ViewError> {
    let mut pending = Vec::new();
    for entry in engine.list(KIND, WorkflowState::Waiting, None).await? {
        if let Some(record) = engine.get(&entry.id).await?
            && let Some(approval) = of_record(&record)
        {
            pending.push(approval);
        }
    }
    pending.sort_by(|a, b| (a.expires_at, &a.run).cmp(&(b.expires_at, &b.run)));
    Ok(pending)
}

/// What `record` asks an approver, if it waits for a decision now.
pub fn of_record(record: &WorkflowRecord) -> Option<PendingApproval> {
    let Some(Wait::Signal { name, .. }) = record
        .wait
        .as_ref()
        .filter(|_| record.state == WorkflowState::Waiting)
    else {
        return None;
    };
    let awaiting: Awaiting = serde_json::from_value(record.data.get("awaiting")?.clone()).ok()?;
    if awaiting.signal != *name {
        return None;
    }
    let targets = record
        .data
        .get("plan")
        .and_then(|p| serde_json::from_value::<PatchPlan>(p.clone()).ok())
        .map(|plan| plan.targets.iter().map(PlannedTarget::from).collect())
        .unwrap_or_default();
    let short: String = awaiting.approval_hash.chars().take(SHORT_HASH).collect();
    let command = |verb: &str| format!("proxflow patch {verb} {} --plan {short}", record.id);
    Some(PendingApproval {
        run: record.id.clone(),
        approve: command("approve"),
        reject: command("reject"),
        requested_at: awaiting.requested_at.unwrap_or(record.updated_at),
        expires_at: awaiting.expires_at,
        plan_hash: awaiting.approval_hash,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxflow_schemas::patch::PackageChange;
    use proxflow_schemas::workflow::Origin;
    use serde_json::json;

    fn waiting(data: serde_json::Value, signal: &str) -> WorkflowRecord {
        let at = "2026-12-06T02:05:00Z".parse().unwrap_or_default();
        WorkflowRecord {
            id: "patch-now-1".into(),
            kind: KIND.into(),
            state: WorkflowState::Waiting,
            origin: Origin {
                source: "schedule".into(),
                reference: "patch".into(),
                reason: String::new(),
            },
            steps: Vec::new(),
            data,
            error: None,
            trace_id: None,
            traceparent: None,
            wait: Some(Wait::Signal {
                step: signal.into(),
                name: signal.into(),
                expires_at: None,
            }),
            parent: None,
            created_at: at,
            updated_at: at,
        }
    }

    fn plan() -> PatchPlan {
        let change = |package: &str, security: bool| PackageChange {
            package: package.into(),
            from: Some("1".into()),
            to: Some("2".into()),
            security,
            origin: String::new(),
        };
        let target = |id: &str, majors: Vec<MajorChange>| TargetPlan {
            target: id.into(),
            kind: TargetKind::Agent,
            name: id.replace("vm/", "k3s-"),
            vmid: None,
            kernel: None,
            address: None,
            changes: vec![change("openssl", true), change("vim", false)],
            skipped: Vec::new(),
            reboot: !majors.is_empty(),
            majors,
            changelogs: Default::default(),
        };
        let major = MajorChange {
            package: Some("linux-image-6.5.0-41-generic".into()),
            reason: "kernel series 5.15 -> 6.5".into(),
        };
        PatchPlan::new(
            vec![target("vm/101", vec![major]), target("vm/102", Vec::new())],
            "2026-12-06T02:05:00Z".parse().unwrap_or_default(),
        )
    }

    #[test]
    fn a_run_waiting_on_its_decision_asks_for_its_plan() {
        let plan = plan();
        let hash = plan.approval_hash.clone().unwrap_or_default();
        let record = waiting(
            json!({
                "plan": plan,
                "approval_hash": hash,
                "awaiting": {"signal": "decision.0", "approval_hash": hash,
                             "requested_at": "2026-12-06T02:06:00Z",
                             "expires_at": "2026-12-13T05:00:00Z"},
            }),
            "decision.0",
        );
        let Some(asked) = of_record(&record) else {
            panic!("no approval in {record:#?}");
        };
        assert_eq!(asked.plan_hash, hash);
        assert_eq!(
            asked.approve,
            format!("proxflow patch approve patch-now-1 --plan {}", &hash[..12])
        );
        assert!(
            asked
                .reject
                .starts_with("proxflow patch reject patch-now-1 --plan ")
        );
        assert_eq!(asked.requested_at.to_rfc3339(), "2026-12-06T02:06:00+00:00");
        let summary: Vec<_> = asked
            .targets
            .iter()
            .map(|t| (t.target.as_str(), t.packages, t.security, t.major))
            .collect();
        assert_eq!(summary, [("vm/101", 2, 1, true), ("vm/102", 2, 1, false)]);
    }

    #[test]
    fn a_run_waiting_on_something_else_asks_nothing() {
        let awaiting = json!({"signal": "decision.0", "approval_hash": "ab", "expires_at": "2026-12-13T05:00:00Z"});
        // Waiting on a timer's step name, not the decision it noted.
        let record = waiting(json!({ "awaiting": awaiting }), "resume.0.wait");
        assert_eq!(of_record(&record), None);
        // Noted nothing.
        let record = waiting(json!({ "awaiting": null }), "decision.0");
        assert_eq!(of_record(&record), None);
        // Ended.
        let mut record = waiting(json!({ "awaiting": awaiting }), "decision.0");
        record.state = WorkflowState::Succeeded;
        assert_eq!(of_record(&record), None);
    }
}
