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
    /// Step output worth keeping (UPID, captured command output, IP address).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub output: serde_json::Value,
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
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Versioned for WorkflowRecord {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.kv.workflow",
        version: 1,
    };
}
