//! The workflow index: one small key per workflow, `idx.<kind>.<state>.<id>`, in the workflow
//! bucket, so the engine's waker, the CLI and the console list workflows by kind and state (or all
//! of them, newest first) with a subject filter instead of reading every record. Written only by
//! the record's owner, after the record: a crash in between leaves the index one state behind,
//! which the next write repairs (until then a listing of every state shows the newer line).

use std::collections::HashMap;

use async_nats::jetstream::kv::Store;
use chrono::{DateTime, Utc};
use proxflow_schemas::names::key::key_part;
use proxflow_schemas::workflow::{IndexEntry, WorkflowRecord, WorkflowState};

use super::EngineError;
use crate::kv;

/// The snake-case name of a state, as in the records' JSON.
pub fn state_name(state: WorkflowState) -> &'static str {
    match state {
        WorkflowState::Pending => "pending",
        WorkflowState::Running => "running",
        WorkflowState::Waiting => "waiting",
        WorkflowState::Compensating => "compensating",
        WorkflowState::Succeeded => "succeeded",
        WorkflowState::Failed => "failed",
        WorkflowState::Cancelled => "cancelled",
    }
}

/// The KV key filter of the lines of `kind` in `state`; either `None` for any.
pub(crate) fn filter(kind: Option<&str>, state: Option<WorkflowState>) -> String {
    format!(
        "idx.{}.{}.>",
        kind.map_or_else(|| "*".to_owned(), key_part),
        state.map_or("*", state_name)
    )
}

/// What a workflow's line says besides its times; the line is written again only when this
/// changes (a step ends, a wait begins), not on every write of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) state: WorkflowState,
    step: Option<String>,
    wake_at: Option<DateTime<Utc>>,
}

impl Line {
    /// The line `record` is due to have.
    pub(crate) fn of(record: &WorkflowRecord) -> Self {
        Self {
            state: record.state,
            step: record.current_step().map(str::to_owned),
            wake_at: record.wait.as_ref().and_then(|w| w.wake_at()),
        }
    }
}

fn key(kind: &str, state: WorkflowState, id: &str) -> String {
    format!(
        "idx.{}.{}.{}",
        key_part(kind),
        state_name(state),
        key_part(id)
    )
}

/// Indexes `record` under its state, and removes its line under `before` when that differs.
pub(crate) async fn put(
    kv: &Store,
    record: &WorkflowRecord,
    before: Option<WorkflowState>,
) -> Result<(), EngineError> {
    let entry = IndexEntry::of(record);
    let value = serde_json::to_vec(&entry).map_err(|e| EngineError::Encode {
        id: record.id.clone(),
        source: e,
    })?;
    let new_key = key(&record.kind, record.state, &record.id);
    kv.put(&new_key, value.into())
        .await
        .map_err(|e| EngineError::Index(e.to_string()))?;
    if let Some(old) = before.filter(|b| *b != record.state) {
        kv.delete(key(&record.kind, old, &record.id))
            .await
            .map_err(|e| EngineError::Index(e.to_string()))?;
    }
    Ok(())
}

/// Every state a line can be under.
const STATES: [WorkflowState; 7] = WorkflowState::ALL;

/// Repairs the index of an ended workflow that was found still listed as live (a crash between a
/// record write and its index write leaves a line behind): its line under its state, none under any
/// other. Rare, so it may cost a write per state.
pub(crate) async fn settle(kv: &Store, record: &WorkflowRecord) -> Result<(), EngineError> {
    put(kv, record, None).await?;
    for state in STATES.into_iter().filter(|s| *s != record.state) {
        let stale = key(&record.kind, state, &record.id);
        let present = kv
            .entry(&stale)
            .await
            .map_err(|e| EngineError::Index(e.to_string()))?
            .is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put);
        if present {
            kv.delete(&stale)
                .await
                .map_err(|e| EngineError::Index(e.to_string()))?;
        }
    }
    Ok(())
}

/// The index lines of `kind` in `state` (either `None` for any) created at or after `since`,
/// newest first: one pass over the matching lines, no record read.
pub(crate) async fn search(
    store: &Store,
    kind: Option<&str>,
    state: Option<WorkflowState>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<IndexEntry>, EngineError> {
    let lines = kv::latest(store, &filter(kind, state)).await?;
    // A line a crash left under an older state is shadowed by the newer one.
    let mut newest: HashMap<String, IndexEntry> = HashMap::new();
    for entry in lines
        .iter()
        .filter_map(|(_, value)| serde_json::from_slice::<IndexEntry>(value).ok())
        .filter(|e| since.is_none_or(|s| e.created_at >= s))
    {
        match newest.get(&entry.id) {
            Some(seen) if seen.updated_at >= entry.updated_at => {}
            _ => {
                newest.insert(entry.id.clone(), entry);
            }
        }
    }
    let mut entries: Vec<IndexEntry> = newest.into_values().collect();
    entries.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    Ok(entries)
}
