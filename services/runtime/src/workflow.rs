//! Workflow records in the `pf_workflows` bucket, changed only by compare-and-set.
//!
//! Several processes touch one record (the gateway creates it, the orchestrator admits it, the
//! provisioner records each step), and any of them may be a second replica or a restarted copy. Every
//! change therefore reads the record with its revision, applies a pure function and writes it back only
//! if nobody wrote in between; on a conflict it reads again and re-applies. No change is ever lost and no
//! stale copy ever overwrites a newer one.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::Utc;
use proxflow_schemas::names::bucket;
use proxflow_schemas::workflow::WorkflowRecord;

/// Conflicting writers tolerated before giving up on one change.
const CAS_ATTEMPTS: usize = 20;

/// Why a workflow record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowStoreError {
    /// The bucket is not there (topology not declared) or the KV API failed.
    #[error("workflow store: {0}")]
    Kv(String),
    /// A stored record does not decode.
    #[error("workflow {id}: stored record is unreadable: {reason}")]
    Corrupt {
        /// Workflow id.
        id: String,
        /// Decode error.
        reason: String,
    },
    /// No such workflow.
    #[error("workflow {0} does not exist")]
    NotFound(String),
    /// Too many concurrent writers.
    #[error("workflow {0}: gave up after {CAS_ATTEMPTS} conflicting writes")]
    Contended(String),
}

/// Handle on the workflow bucket.
#[derive(Clone)]
pub struct WorkflowStore {
    kv: kv::Store,
}

impl WorkflowStore {
    /// Opens the bucket (declared by the topology).
    pub async fn open(js: &jetstream::Context) -> Result<Self, WorkflowStoreError> {
        let kv = js
            .get_key_value(bucket::WORKFLOWS)
            .await
            .map_err(|e| WorkflowStoreError::Kv(e.to_string()))?;
        Ok(Self { kv })
    }

    /// The record and its revision.
    pub async fn get(&self, id: &str) -> Result<Option<(WorkflowRecord, u64)>, WorkflowStoreError> {
        let entry = self
            .kv
            .entry(id)
            .await
            .map_err(|e| WorkflowStoreError::Kv(e.to_string()))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&e.value).map_err(|err| {
                    WorkflowStoreError::Corrupt {
                        id: id.to_string(),
                        reason: err.to_string(),
                    }
                })?;
                Ok(Some((record, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Creates the record unless one with its id exists; `false` when it did (nothing written).
    pub async fn create(&self, record: &WorkflowRecord) -> Result<bool, WorkflowStoreError> {
        let value = encode(record)?;
        match self.kv.create(&record.id, value).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(WorkflowStoreError::Kv(e.to_string())),
        }
    }

    /// Applies `change` to the current record and writes it with compare-and-set, re-reading and
    /// re-applying on conflict. `change` must be a pure function of the record it is given. Stamps
    /// `updated_at`. Returns the record as written.
    pub async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut WorkflowRecord),
    ) -> Result<WorkflowRecord, WorkflowStoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = self
                .get(id)
                .await?
                .ok_or_else(|| WorkflowStoreError::NotFound(id.to_string()))?;
            change(&mut record);
            record.updated_at = Utc::now();
            match self.kv.update(id, encode(&record)?, revision).await {
                Ok(_) => return Ok(record),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(WorkflowStoreError::Kv(e.to_string())),
            }
        }
        Err(WorkflowStoreError::Contended(id.to_string()))
    }
}

fn encode(record: &WorkflowRecord) -> Result<Bytes, WorkflowStoreError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| WorkflowStoreError::Kv(format!("encoding workflow {}: {e}", record.id)))
}
