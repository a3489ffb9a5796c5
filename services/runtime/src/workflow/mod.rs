//! Workflow records in the `pf_workflows` bucket, changed only by compare-and-set.
//!
//! Several processes touch one record (the gateway creates it, the orchestrator admits it, the
//! provisioner records each step), and any of them may be a second replica or a restarted copy. Every
//! change therefore reads the record with its revision, applies a pure function and writes it back only
//! if nobody wrote in between; on a conflict it reads again and re-applies. No change is ever lost and no
//! stale copy ever overwrites a newer one.

use async_nats::jetstream::{self, kv::Store};
use chrono::Utc;

use crate::kv::{self, CasError, Change};
use proxflow_schemas::names::bucket;
use proxflow_schemas::workflow::WorkflowRecord;

/// Why a workflow record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowStoreError {
    /// The bucket is not there (topology not declared) or the KV API failed.
    #[error("workflow store: {0}")]
    Open(String),
    /// Reading or writing a record failed (KV down, unreadable record, contention past the deadline).
    #[error(transparent)]
    Cas(#[from] CasError),
    /// No such workflow.
    #[error("workflow {0} does not exist")]
    NotFound(String),
}

impl WorkflowStoreError {
    /// Whether trying again later can help (KV unavailable, contention), as opposed to a missing or
    /// unreadable record.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Open(_) | Self::Cas(CasError::Kv { .. } | CasError::Contended { .. })
        )
    }
}

/// Handle on the workflow bucket.
#[derive(Clone)]
pub struct WorkflowStore {
    kv: Store,
}

impl WorkflowStore {
    /// Opens the bucket (declared by the topology).
    pub async fn open(js: &jetstream::Context) -> Result<Self, WorkflowStoreError> {
        let kv = js
            .get_key_value(bucket::WORKFLOWS)
            .await
            .map_err(|e| WorkflowStoreError::Open(e.to_string()))?;
        Ok(Self { kv })
    }

    /// The record and its revision.
    pub async fn get(&self, id: &str) -> Result<Option<(WorkflowRecord, u64)>, WorkflowStoreError> {
        let read = kv::read::<WorkflowRecord>(&self.kv, id).await?;
        Ok(read.value.zip(read.revision))
    }

    /// Creates the record unless one with its id exists; `false` when it did (nothing written).
    pub async fn create(&self, record: &WorkflowRecord) -> Result<bool, WorkflowStoreError> {
        let (created, _) =
            kv::change(
                &self.kv,
                &record.id,
                |current: Option<WorkflowRecord>| match current {
                    Some(_) => Change::Keep(false),
                    None => Change::Write(record.clone(), true),
                },
            )
            .await?;
        Ok(created)
    }

    /// Applies `change` to the current record and writes it with compare-and-set, re-reading and
    /// re-applying on conflict. `change` must be a pure function of the record it is given. Stamps
    /// `updated_at`. Returns the record as written.
    pub async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut WorkflowRecord),
    ) -> Result<WorkflowRecord, WorkflowStoreError> {
        let (record, _) = kv::change(&self.kv, id, |current: Option<WorkflowRecord>| {
            let Some(mut record) = current else {
                return Change::Keep(None);
            };
            change(&mut record);
            record.updated_at = Utc::now();
            Change::Write(record.clone(), Some(record))
        })
        .await?;
        record.ok_or_else(|| WorkflowStoreError::NotFound(id.to_string()))
    }
}
