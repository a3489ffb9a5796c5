//! The workflow list and one workflow's detail.
//!
//! The list reads only the index (`idx.<kind>.<state>.<id>`, one small line per workflow): newest
//! first across every kind and state, or narrowed by kind, state and creation time, in one pass over
//! the matching lines whatever the number of workflows. The detail is the record itself (steps with
//! attempts, errors and outputs; origin; what it waits for; its parent) with the signals it was
//! given (who approved, when) and the child workflows it started.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::{Engine, child_id};
use proxflow_schemas::workflow::{IndexEntry, Wait, WorkflowRecord, WorkflowState};
use serde::Serialize;

use crate::ViewError;

/// How many workflows a listing shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 50;

/// Which workflows to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only this kind (`provision`, `patch_run`, ...).
    pub kind: Option<String>,
    /// Only workflows in this state.
    pub state: Option<WorkflowState>,
    /// Only workflows created at or after this.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, the newest.
    pub limit: usize,
}

impl Default for Filter {
    /// Every kind and state, the [`DEFAULT_LIMIT`] newest.
    fn default() -> Self {
        Self {
            kind: None,
            state: None,
            since: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// The workflows `filter` selects, newest first (by creation, then id).
pub async fn list(engine: &Engine, filter: &Filter) -> Result<Vec<IndexEntry>, ViewError> {
    let mut entries = engine
        .search(filter.kind.as_deref(), filter.state, filter.since)
        .await?;
    entries.truncate(filter.limit);
    Ok(entries)
}

/// A signal a workflow was given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    /// Its name (`decision.0`, `outcome`).
    pub name: String,
    /// Who sent it (a user, a token, a service).
    pub sender: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What (an approver's decision, another service's outcome).
    pub payload: serde_json::Value,
}

/// One workflow, as its detail page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowDetail {
    /// The record: state, origin, steps (attempts, errors, outputs), data, wait, parent, error.
    pub record: WorkflowRecord,
    /// The signals it was given, oldest first.
    pub signals: Vec<Signal>,
    /// The workflows it started as its children, oldest first.
    pub children: Vec<IndexEntry>,
}

/// Workflow `id` in detail; `None` when there is no such workflow.
pub async fn detail(engine: &Engine, id: &str) -> Result<Option<WorkflowDetail>, ViewError> {
    let Some(record) = engine.get(id).await? else {
        return Ok(None);
    };
    let signals = engine
        .signals(&record)
        .await?
        .into_iter()
        .map(|(name, s)| Signal {
            name,
            sender: s.sender,
            at: s.at,
            payload: s.payload,
        })
        .collect();
    let children = children(engine, &record).await?;
    Ok(Some(WorkflowDetail {
        record,
        signals,
        children,
    }))
}

/// The children of `record`: a child's id is derived from its parent's and the step that started
/// it, so the candidates come from the parent's steps (and the child it waits for now), each read
/// directly (a handful of gets, not a scan of the index) and confirmed by the parent its own record
/// names.
async fn children(engine: &Engine, record: &WorkflowRecord) -> Result<Vec<IndexEntry>, ViewError> {
    let waited = match &record.wait {
        Some(Wait::Child { child, .. }) => Some(child.clone()),
        _ => None,
    };
    let candidates: BTreeSet<String> = record
        .steps
        .iter()
        .map(|s| child_id(&record.id, &s.name))
        .chain(waited)
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut children = Vec::new();
    for id in &candidates {
        if let Some(child) = engine.get(id).await?
            && child.parent.as_deref() == Some(record.id.as_str())
        {
            children.push(IndexEntry::of(&child));
        }
    }
    children.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(children)
}
