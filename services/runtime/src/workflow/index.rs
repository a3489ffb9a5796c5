//! The workflow index: one small key per workflow, `idx.<kind>.<state>.<id>`, in the workflow
//! bucket, so the engine's waker, the CLI and the console list workflows by kind and state with a
//! subject filter instead of reading every record. Written only by the record's owner, after the
//! record: a crash in between leaves the index one state behind, which the next write repairs.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::kv::Store;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxflow_schemas::names::key::key_part;
use proxflow_schemas::workflow::{IndexEntry, WorkflowRecord, WorkflowState};

use super::EngineError;

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

/// The KV key filter of the lines of `kind` in `state`.
pub(crate) fn filter(kind: &str, state: WorkflowState) -> String {
    format!("idx.{}.{}.>", key_part(kind), state_name(state))
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
    let entry = IndexEntry {
        id: record.id.clone(),
        kind: record.kind.clone(),
        state: record.state,
        created_at: record.created_at,
        updated_at: record.updated_at,
        wake_at: record.wait.as_ref().and_then(|w| w.wake_at()),
    };
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

/// The index lines of `kind` in `state`, created at or after `since`, newest first.
pub(crate) async fn list(
    kv: &Store,
    kind: &str,
    state: WorkflowState,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<IndexEntry>, EngineError> {
    let err = |e: &dyn std::fmt::Display| EngineError::Index(e.to_string());
    let filter = format!("{}{}", kv.prefix, filter(kind, state));
    let consumer = kv
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    let pending = consumer.cached_info().num_pending;
    let mut entries = Vec::new();
    if pending == 0 {
        return Ok(entries);
    }
    let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
    let mut seen = 0;
    while seen < pending {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| err(&e))?;
        seen += 1;
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if deleted || message.payload.is_empty() {
            continue;
        }
        if let Ok(entry) = serde_json::from_slice::<IndexEntry>(&message.payload)
            && since.is_none_or(|s| entry.created_at >= s)
        {
            entries.push(entry);
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.created_at));
    Ok(entries)
}
