//! Remediation: every decision the orchestrator takes on an alert (`pf.evt.remediation.decision`,
//! the audit trail: acted, or suppressed and why), the work order for the remediator
//! (`pf.cmd.remediator.act`), how it went (`pf.evt.remediation.outcome`), and the page a rule's open
//! circuit breaker sends (`pf.evt.remediation.page`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::alert::{AlertReceived, AlertStatus};
use crate::message::{Message, SchemaId, Versioned};

/// An action with every template filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RemediationAction {
    /// Clean shutdown within the timeout, else stop; then start.
    RestartVm {
        /// VMID.
        vmid: u32,
        /// Seconds the guest gets to shut down.
        shutdown_timeout_secs: u64,
    },
    /// A pre-change snapshot of the VM.
    SnapshotVm {
        /// VMID.
        vmid: u32,
    },
    /// One more node for a k3s cluster, through the capacity scale-out.
    ScaleOut {
        /// Cluster name.
        cluster: String,
    },
    /// Run a replication job now.
    Replicate {
        /// Job name.
        job: String,
    },
    /// Apply the snapshot policies' retention on a pool now.
    PruneSnapshots {
        /// Pool name.
        pool: String,
    },
    /// Post the alert and the decision to a webhook.
    Notify {
        /// Where.
        url: String,
    },
    /// Run a command.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Seconds it may run.
        timeout_secs: u64,
    },
}

impl RemediationAction {
    /// An action in words, for audit details.
    pub fn describe(&self) -> String {
        match self {
            Self::RestartVm {
                vmid,
                shutdown_timeout_secs,
            } => {
                format!("restart VM {vmid} (shutdown within {shutdown_timeout_secs} s, else stop)")
            }
            Self::SnapshotVm { vmid } => format!("snapshot VM {vmid}"),
            Self::ScaleOut { cluster } => format!("scale out cluster {cluster}"),
            Self::Replicate { job } => format!("run replication job {job}"),
            Self::PruneSnapshots { pool } => {
                format!("apply the snapshot retention on pool {pool} now")
            }
            Self::Notify { url } => format!("notify {url}"),
            Self::Command { argv, .. } => format!("run {}", argv.join(" ")),
        }
    }

    /// `restart_vm`, `snapshot_vm`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RestartVm { .. } => "restart_vm",
            Self::SnapshotVm { .. } => "snapshot_vm",
            Self::ScaleOut { .. } => "scale_out",
            Self::Replicate { .. } => "replicate",
            Self::PruneSnapshots { .. } => "prune_snapshots",
            Self::Notify { .. } => "notify",
            Self::Command { .. } => "command",
        }
    }
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The action was started (`workflow_id` names it).
    Acted,
    /// A guard said no (`reason`).
    Suppressed,
    /// No rule matched, or no rule acts on this status.
    Ignored,
}

/// Which guard, or why nothing applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Acted.
    None,
    /// No rule matches the alert.
    NoRule,
    /// The rule does not act on this status (resolved alerts, by default).
    Status,
    /// A template needs a label the alert lacks.
    Template,
    /// The rule's circuit breaker is open.
    Breaker,
    /// Fewer than the rule's threshold of alerts within its window.
    Threshold,
    /// The rule acted on this target within its cooldown.
    Cooldown,
    /// The rule acted on its maximum of targets within the window.
    MaxTargets,
    /// The global rate limit is used up.
    RateLimit,
    /// Another remediation (or an operator) holds the target: busy.
    Lock,
    /// The rule is in dry-run.
    DryRun,
}

/// One decision on one alert by one rule (`pf.evt.remediation.decision`): the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemediationDecision {
    /// The alert's dedupe id (fingerprint, start, status).
    pub alert_id: String,
    /// Alertmanager's fingerprint.
    pub fingerprint: String,
    /// `alertname`.
    pub alertname: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// The rule (absent when none matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The target it would act on (absent when not rendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Acted, suppressed or ignored.
    pub verdict: Verdict,
    /// Which guard (or `none`).
    pub reason: Reason,
    /// The numbers behind it, in words.
    pub detail: String,
    /// The action (`restart_vm`, ...), when a rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The remediation workflow, when acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The trace the decision was taken under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl Versioned for RemediationDecision {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.remediation.decision",
        version: 1,
    };
}

impl Message for RemediationDecision {
    const SUBJECT: &'static str = "pf.evt.remediation.decision";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    /// One decision per (alert, rule), however often the alert is redelivered.
    fn dedupe_id(&self) -> String {
        format!(
            "remediation.decision/{}/{}",
            self.alert_id,
            self.rule.as_deref().unwrap_or("-")
        )
    }
}

/// What a remediation does: the input of a `remediate` workflow, which the orchestrator's decision
/// starts and the remediator runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemediationCommand {
    /// The remediation workflow.
    pub workflow_id: String,
    /// The rule.
    pub rule: String,
    /// The target (lock key).
    pub target: String,
    /// What to do.
    pub action: RemediationAction,
    /// The alert that caused it.
    pub alert: AlertReceived,
}

impl Versioned for RemediationCommand {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.cmd.remediation",
        // v2: the alert it carries is `pf.ingest.alert_received` v2 (`group` instead of
        // `group_key`, which is still read).
        version: 2,
    };
}

/// How a remediation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemediationResult {
    /// The action ran (or its owner finished the handed-off work) and succeeded.
    Succeeded,
    /// The action or the owner's work failed; `error` says why.
    Failed,
    /// The owner of a handed-off action refused it by its own guard (cooldown, cap, veto); `error`
    /// carries its reason. The breaker counts it: an automation whose requests keep being refused
    /// is misconfigured.
    Refused,
    /// The target was held by someone else when the work order arrived; nothing ran. Never counted
    /// by the breaker.
    Busy,
}

/// How a remediation went (`pf.evt.remediation.outcome`); feeds the rule's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemediationOutcome {
    /// The workflow.
    pub workflow_id: String,
    /// The rule.
    pub rule: String,
    /// The target.
    pub target: String,
    /// The action kind.
    pub action: String,
    /// Absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How it ended (v2; absent in v1 outcomes, which were succeeded or failed by `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RemediationResult>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

impl RemediationOutcome {
    /// How it ended, for v1 outcomes too.
    pub fn result(&self) -> RemediationResult {
        self.result.unwrap_or(if self.error.is_some() {
            RemediationResult::Failed
        } else {
            RemediationResult::Succeeded
        })
    }
}

impl Versioned for RemediationOutcome {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.remediation.outcome",
        version: 2,
    };
}

impl Message for RemediationOutcome {
    const SUBJECT: &'static str = "pf.evt.remediation.outcome";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("remediation.outcome/{}", self.workflow_id)
    }
}

/// A rule's circuit breaker opened (`pf.evt.remediation.page`): automation stopped, a human is needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemediationPage {
    /// The rule.
    pub rule: String,
    /// Why, with the numbers.
    pub reason: String,
    /// Failed outcomes within the breaker window.
    pub failures: u32,
    /// All outcomes within the window.
    pub outcomes: u32,
    /// Until when the rule stays suppressed.
    pub open_until: DateTime<Utc>,
    /// When it opened.
    pub at: DateTime<Utc>,
}

impl Versioned for RemediationPage {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.remediation.page",
        version: 1,
    };
}

impl Message for RemediationPage {
    const SUBJECT: &'static str = "pf.evt.remediation.page";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!(
            "remediation.page/{}/{}",
            self.rule,
            self.at.timestamp_millis()
        )
    }
}

/// How handed-off work ended, as its owner reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandOffResult {
    /// Done.
    Succeeded,
    /// Tried and failed.
    Failed,
    /// Refused by the owner's guard (cooldown, cap, veto, dry-run) before anything was done.
    Refused,
}

/// The owner of work another workflow handed to it reports how it ended
/// (`pf.evt.handoff.<owner>`): the capacity scale-out, the replicator's run, the snapshotter's
/// prune. The asking workflow ends on this, not on its request being queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandOffOutcome {
    /// The workflow that asked (its request's `workflow_id`).
    pub requested_by: String,
    /// The owner: `scale_out`, `replication`, `prune`.
    pub owner: String,
    /// How it ended.
    pub result: HandOffResult,
    /// What happened, in words (the guard's reason on a refusal).
    pub detail: String,
    /// The owner's own record of it (scale-out workflow, replication run), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

impl HandOffOutcome {
    /// The outcome of the work `requested_by` asked `owner` for.
    pub fn new(
        requested_by: &str,
        owner: &str,
        result: HandOffResult,
        detail: impl Into<String>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            requested_by: requested_by.to_string(),
            owner: owner.to_string(),
            result,
            detail: detail.into(),
            reference: None,
            at,
        }
    }
}

impl Versioned for HandOffOutcome {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.handoff.outcome",
        version: 1,
    };
}

impl Message for HandOffOutcome {
    const SUBJECT: &'static str = "pf.evt.handoff.*";

    fn subject(&self) -> String {
        crate::names::subject::evt("handoff", &self.owner)
    }

    fn dedupe_id(&self) -> String {
        format!("handoff/{}/{}", self.owner, self.requested_by)
    }
}
