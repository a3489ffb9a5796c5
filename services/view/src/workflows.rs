//! TEMPORARY stand-in until the `cli` branch's workflow listing lands (same API).

use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::workflow::{IndexEntry, WorkflowState};

use crate::ViewError;

/// Which workflows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Of this kind only.
    pub kind: Option<String>,
    /// In this state only.
    pub state: Option<WorkflowState>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// Kinds known to the stand-in.
const KINDS: [&str; 9] = [
    "provision",
    "scale_out",
    "remediate",
    "patch_run",
    "config_export",
    "restore_drill",
    "disk_health",
    "pool_scrub",
    "capacity_review",
];

/// The workflows matching `filter`, newest first.
pub async fn list(engine: &Engine, filter: &Filter) -> Result<Vec<IndexEntry>, ViewError> {
    let mut out = Vec::new();
    for kind in KINDS {
        if filter.kind.as_deref().is_some_and(|k| k != kind) {
            continue;
        }
        for state in WorkflowState::ALL {
            if filter.state.is_some_and(|s| s != state) {
                continue;
            }
            out.extend(engine.list(kind, state, filter.since).await?);
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.created_at));
    out.truncate(filter.limit.max(1));
    Ok(out)
}
