//! Workflow records: the durable state of one workflow (provision, scale-out, remediation, patch run),
//! kept in the `pf_workflows` bucket under the workflow id and updated with revision CAS by the
//! orchestrator. It says who asked, why, what happened at each step and under which trace.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{SchemaId, Versioned};

/// Where a workflow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// Accepted, no step started yet.
    Pending,
    /// Steps are running.
    Running,
    /// Suspended on a timer, a signal or a child workflow (`wait` says which); resumed by the
    /// workflow engine when it is due.
    Waiting,
    /// A step failed for good; completed steps are being undone.
    Compensating,
    /// Every step completed.
    Succeeded,
    /// Failed; compensation (if any) has run. `error` says why.
    Failed,
    /// Stopped by an operator or refused by a guard before acting.
    Cancelled,
}

impl WorkflowState {
    /// Every state.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Running,
        Self::Waiting,
        Self::Compensating,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];
    /// The states of a workflow that has not ended.
    pub const LIVE: [Self; 4] = [
        Self::Pending,
        Self::Running,
        Self::Waiting,
        Self::Compensating,
    ];

    /// Whether the workflow can still change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Where a step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Command sent, result not yet in.
    Running,
    /// Done.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// Undone by compensation.
    Compensated,
    /// Not needed (e.g. dry-run, or already in the desired state).
    Skipped,
}

/// What started a workflow and why: the audit trail's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `webhook`, `alert`, `capacity`, `schedule` or `operator`.
    pub source: String,
    /// The id that source gave: webhook id, alert fingerprint, rule name, schedule name, user.
    pub reference: String,
    /// Free text: the rule that matched, the threshold crossed, the operator's note.
    pub reason: String,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRecord {
    /// Step name, unique within the workflow (`clone`, `cloud_init`, `start`, ...).
    pub name: String,
    /// Current state.
    pub state: StepState,
    /// Deliveries of the step's command so far.
    pub attempts: u32,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the step reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Step output worth keeping (UPID, captured command output, IP address). For steps run by the
    /// workflow engine, the step's typed result: returned as is on resume, never recomputed.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub output: serde_json::Value,
    /// What undoes this step if the workflow fails later (the definition's compensation, as data),
    /// run in reverse step order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<serde_json::Value>,
}

impl StepRecord {
    /// A step record that has just started.
    pub fn started(name: &str, at: DateTime<Utc>) -> Self {
        Self {
            name: name.to_string(),
            state: StepState::Running,
            attempts: 1,
            started_at: Some(at),
            finished_at: None,
            error: None,
            output: serde_json::Value::Null,
            undo: None,
        }
    }
}

/// What a waiting workflow waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Wait {
    /// Resume at `until`.
    Timer {
        /// The waiting step.
        step: String,
        /// When it is due.
        until: DateTime<Utc>,
    },
    /// Resume when the signal `name` arrives, or at `expires_at` without it.
    Signal {
        /// The waiting step.
        step: String,
        /// The signal's name (an approval, an operator's go, another service's outcome).
        name: String,
        /// When the wait gives up; `None` waits for ever.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
    },
    /// Resume when the child workflow `child` ends.
    Child {
        /// The waiting step.
        step: String,
        /// The child's workflow id.
        child: String,
    },
}

impl Wait {
    /// When the engine must look at the workflow again even if nothing arrives.
    pub fn wake_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Timer { until, .. } => Some(*until),
            Self::Signal { expires_at, .. } => *expires_at,
            Self::Child { .. } => None,
        }
    }
}

/// The durable record of one workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRecord {
    /// Workflow id (also the KV key).
    pub id: String,
    /// Workflow kind: `provision`, `scale_out`, `remediate`, `patch_run`, ...
    pub kind: String,
    /// Current state.
    pub state: WorkflowState,
    /// Who or what started it, and why.
    pub origin: Origin,
    /// Steps in execution order.
    pub steps: Vec<StepRecord>,
    /// Kind-specific inputs and results (requested VM spec, VMID, IP, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// OpenTelemetry trace id (32 hex digits) under which every step ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The W3C `traceparent` of the span that created it: every step, on every resume, is recorded
    /// under it, so a workflow is one trace however often it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// What it waits for while `Waiting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// The parent workflow of a child workflow; it is resumed when this one ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl WorkflowRecord {
    /// The step an operator looks at first: the one it waits in, else the one running, else the
    /// last one recorded (where it ended, or failed).
    pub fn current_step(&self) -> Option<&str> {
        let waited = self.wait.as_ref().map(|w| match w {
            Wait::Timer { step, .. } | Wait::Signal { step, .. } | Wait::Child { step, .. } => {
                step.as_str()
            }
        });
        waited
            .or_else(|| {
                self.steps
                    .iter()
                    .rev()
                    .find(|s| s.state == StepState::Running)
                    .map(|s| s.name.as_str())
            })
            .or_else(|| self.steps.last().map(|s| s.name.as_str()))
    }
}

impl Versioned for WorkflowRecord {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.kv.workflow",
        version: 2,
    };
}

/// Tells the workflow engine to look at a workflow again (`pf.cmd.workflow.<kind>`): it was
/// started, a timer fell due, a signal arrived or a child ended. Carries no state: the record is
/// the truth, so a duplicate or stale advance is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowAdvance {
    /// The workflow's kind (selects the definition and the subject).
    pub kind: String,
    /// The workflow id.
    pub id: String,
    /// Why now (`start`, `wake/<time>`, `signal/<name>`, `child/<id>`); also its dedupe key.
    pub reason: String,
}

impl Versioned for WorkflowAdvance {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.cmd.workflow.advance",
        version: 1,
    };
}

impl crate::Message for WorkflowAdvance {
    const SUBJECT: &'static str = "pf.cmd.workflow.*";

    fn subject(&self) -> String {
        crate::names::subject::cmd("workflow", &crate::names::key::key_part(&self.kind))
    }

    fn dedupe_id(&self) -> String {
        format!("workflow/{}/{}", self.id, self.reason)
    }
}

/// A signal delivered to a waiting workflow, stored until the workflow reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRecord {
    /// Who sent it (a user, a service).
    pub sender: String,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// Its payload.
    pub payload: serde_json::Value,
}

/// A workflow's line in the index (`idx.<kind>.<state>.<id>` in the workflow bucket), so workflows
/// can be listed by kind, state and age without reading every record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Workflow id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: WorkflowState,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of its state, current step or wake time.
    pub updated_at: DateTime<Utc>,
    /// Its current step ([`WorkflowRecord::current_step`]), for listings; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// When a waiting workflow is due to be looked at again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
}

impl IndexEntry {
    /// The index line `record` is due to have.
    pub fn of(record: &WorkflowRecord) -> Self {
        Self {
            id: record.id.clone(),
            kind: record.kind.clone(),
            state: record.state,
            created_at: record.created_at,
            updated_at: record.updated_at,
            step: record.current_step().map(str::to_owned),
            wake_at: record.wait.as_ref().and_then(Wait::wake_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(steps: &[(&str, StepState)], wait: Option<Wait>) -> WorkflowRecord {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        WorkflowRecord {
            id: "w".into(),
            kind: "k".into(),
            state: WorkflowState::Running,
            origin: Origin {
                source: "test".into(),
                reference: "r".into(),
                reason: String::new(),
            },
            steps: steps
                .iter()
                .map(|(name, state)| StepRecord {
                    state: *state,
                    ..StepRecord::started(name, at)
                })
                .collect(),
            data: serde_json::Value::Null,
            error: None,
            trace_id: None,
            traceparent: None,
            wait,
            parent: None,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn the_current_step_is_the_wait_else_the_running_else_the_last() {
        use StepState::{Failed, Running, Succeeded};
        assert_eq!(record(&[], None).current_step(), None);
        assert_eq!(
            record(&[("a", Succeeded), ("b", Failed)], None).current_step(),
            Some("b")
        );
        assert_eq!(
            record(&[("a", Running), ("b", Succeeded)], None).current_step(),
            Some("a")
        );
        let wait = Wait::Signal {
            step: "decision.0".into(),
            name: "decision.0".into(),
            expires_at: None,
        };
        assert_eq!(
            record(&[("a", Succeeded)], Some(wait)).current_step(),
            Some("decision.0")
        );
    }
}
