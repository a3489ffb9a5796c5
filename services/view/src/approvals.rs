//! TEMPORARY stand-in until the `cli` branch's approvals land.

use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::workflow::{Wait, WorkflowState};
use serde::Serialize;

use crate::ViewError;

/// A patch plan waiting for a decision.
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    /// The run.
    pub run_id: String,
    /// The plan's hash.
    pub plan_hash: String,
    /// Since when it waits.
    pub requested_at: DateTime<Utc>,
    /// When the decision closes.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The patch runs waiting for a decision.
pub async fn pending(engine: &Engine) -> Result<Vec<PendingApproval>, ViewError> {
    let mut out = Vec::new();
    for entry in engine
        .list("patch_run", WorkflowState::Waiting, None)
        .await?
    {
        let Some(record) = engine.get(&entry.id).await? else {
            continue;
        };
        let Some(Wait::Signal { expires_at, .. }) = record.wait.clone() else {
            continue;
        };
        let Some(hash) = record.data.get("approval_hash").and_then(|v| v.as_str()) else {
            continue;
        };
        out.push(PendingApproval {
            run_id: record.id.clone(),
            plan_hash: hash.to_owned(),
            requested_at: record.updated_at,
            expires_at: record
                .data
                .get("awaiting")
                .and_then(|a| a.get("expires_at"))
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .or(expires_at),
        });
    }
    Ok(out)
}
