//! What the gateway keeps in KV: the first record of each workflow it starts (`pf_workflows`, created
//! atomically, so two requests with one idempotency key start one workflow) and the webhook ids it
//! accepted (`pf_webhook_ids`, so a replayed delivery is refused), and the claims on VM names and
//! addresses (`pf_claims`, so a second request for either is refused).

use async_nats::jetstream::{self, kv};
use proxflow_platform::claims::Claims;
use proxflow_runtime::workflow::{WorkflowStore, WorkflowStoreError};
use proxflow_schemas::names::{bucket, key};
use proxflow_schemas::workflow::WorkflowRecord;

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A bucket could not be opened at start.
    #[error("KV bucket {bucket}: {message}")]
    Open {
        /// The bucket.
        bucket: &'static str,
        /// The client's error.
        message: String,
    },
    /// The webhook-id bucket did not answer; the request may be retried.
    #[error("KV {bucket} unavailable: {message}")]
    Unavailable {
        /// The bucket.
        bucket: &'static str,
        /// The client's error.
        message: String,
    },
    /// Reading or creating a workflow record failed.
    #[error(transparent)]
    Workflow(#[from] WorkflowStoreError),
}

/// What creating a workflow record found.
#[derive(Debug)]
pub enum Created {
    /// This request created it.
    New,
    /// It existed already (an earlier request with the same idempotency key).
    Existing(Box<WorkflowRecord>),
}

/// The workflow records (through the runtime's [`WorkflowStore`]) and the accepted webhook ids.
#[derive(Clone)]
pub struct Store {
    workflows: WorkflowStore,
    webhook_ids: kv::Store,
    /// VM names and static addresses in use.
    pub claims: Claims,
}

fn unavailable(message: impl ToString) -> StoreError {
    StoreError::Unavailable {
        bucket: bucket::WEBHOOK_IDS,
        message: message.to_string(),
    }
}

/// Whether `id` can be a workflow KV key (and so be looked up at all).
pub fn is_workflow_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

impl Store {
    /// Opens the buckets (declared by the topology at start).
    pub async fn open(js: &jetstream::Context) -> Result<Self, StoreError> {
        let workflows = WorkflowStore::open(js)
            .await
            .map_err(|e| StoreError::Open {
                bucket: bucket::WORKFLOWS,
                message: e.to_string(),
            })?;
        let webhook_ids =
            js.get_key_value(bucket::WEBHOOK_IDS)
                .await
                .map_err(|e| StoreError::Open {
                    bucket: bucket::WEBHOOK_IDS,
                    message: e.to_string(),
                })?;
        let claims = Claims::open(js).await.map_err(|e| StoreError::Open {
            bucket: bucket::CLAIMS,
            message: e.to_string(),
        })?;
        Ok(Self {
            workflows,
            webhook_ids,
            claims,
        })
    }

    /// Creates `record` unless a record with its id exists, which is then returned.
    pub async fn create_workflow(&self, record: &WorkflowRecord) -> Result<Created, StoreError> {
        if self.workflows.create(record).await? {
            return Ok(Created::New);
        }
        match self.workflow(&record.id).await? {
            Some(existing) => Ok(Created::Existing(Box::new(existing))),
            // Deleted between the two calls: the record cannot be trusted either way.
            None => Err(StoreError::Unavailable {
                bucket: proxflow_schemas::names::bucket::WORKFLOWS,
                message: format!("record {} vanished while being read", record.id),
            }),
        }
    }

    /// Reads a workflow record.
    pub async fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        Ok(self.workflows.get(id).await?.map(|(record, _)| record))
    }

    /// What an accepted webhook id maps to, if it was accepted (within the id's lifetime).
    pub async fn webhook(&self, webhook_id: &str) -> Result<Option<WebhookSeen>, StoreError> {
        let value = self
            .webhook_ids
            .get(key::webhook_id(webhook_id))
            .await
            .map_err(unavailable)?;
        Ok(value.map(|bytes| {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| WebhookSeen {
                // Written before the body digest was recorded: the value is the workflow id.
                workflow_id: String::from_utf8_lossy(&bytes).into_owned(),
                body_sha256: None,
            })
        }))
    }

    /// Records that `webhook_id` (with a body of digest `body_sha256`) was accepted as
    /// `workflow_id`; `false` when another delivery of it recorded first.
    pub async fn record_webhook(
        &self,
        webhook_id: &str,
        workflow_id: &str,
        body_sha256: &str,
    ) -> Result<bool, StoreError> {
        let seen = WebhookSeen {
            workflow_id: workflow_id.to_string(),
            body_sha256: Some(body_sha256.to_string()),
        };
        let value = serde_json::to_vec(&seen).map_err(unavailable)?;
        match self
            .webhook_ids
            .create(key::webhook_id(webhook_id), value.into())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// An accepted webhook id, as `pf_webhook_ids` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookSeen {
    /// The workflow it was accepted as.
    pub workflow_id: String,
    /// SHA-256 of the body it came with (hex); a retry must carry the same body.
    pub body_sha256: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_ids_are_checked_before_they_reach_kv() {
        assert!(is_workflow_id("prov-0123456789abcdef0123"));
        for bad in ["", "a.b", "a/b", "a b", "*", ">", &"a".repeat(129)] {
            assert!(!is_workflow_id(bad), "{bad}");
        }
    }
}
