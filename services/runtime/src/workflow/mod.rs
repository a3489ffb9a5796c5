//! Workflows: records in the `pf_workflows` bucket, changed only by compare-and-set, and the
//! engine that runs typed, durable workflow definitions over them.
//!
//! ## The engine
//! A workflow is a [`Workflow`] definition: a `run` of named steps and waits. Each step's typed
//! output is written to the record before the next step starts and is returned as is on resume,
//! so a crash anywhere resumes from KV and no completed step runs again. A step may register its
//! compensation (data, run in reverse order by the definition's `undo` after a terminal failure).
//! Waits survive restarts: a timer ([`Run::sleep_until`]), a signal with an expiry
//! ([`Run::signal`], given with [`Engine::signal`]: approvals, another service's outcome) and a
//! child workflow ([`Run::child`]). Exactly one component creates a record ([`Engine::start`]) and
//! exactly one advances it (the kind's advance consumer, holding the workflow's lease); everyone
//! else reads. Workflows are listed by kind, state and age from an index ([`Engine::list`], and
//! across kinds and states with [`Engine::search`]).
//!
//! ```ignore
//! struct Restart;
//! impl Workflow for Restart {
//!     const KIND: &'static str = "restart";
//!     type Input = u32;            // the VMID
//!     type Output = ();
//!     type Undo = ();
//!     async fn run(&self, wf: &mut Run<Self>, vmid: u32) -> Result<(), Halt> {
//!         let upid: String = wf.step("shutdown", shutdown(vmid)).await?;
//!         wf.step("start", start(vmid, upid)).await?;
//!         Ok(())
//!     }
//!     async fn undo(&self, (): ()) -> Result<(), StepError> { Ok(()) }
//! }
//! ```
//!
//! ## Records
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

mod advance;
mod definition;
mod engine;
mod index;
pub mod metrics;
mod run;
pub mod scheduled;
mod waker;

pub use definition::{Ending, ErrorKind, Halt, StepError, Unrunnable, Workflow};
pub use engine::Engine;
pub use index::state_name;
pub use run::{ChildOutcome, Run};

use proxflow_schemas::names::key::key_part;
use proxflow_schemas::workflow::WorkflowState;

/// Why the engine could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A bucket is missing at start (topology not declared).
    #[error("workflow engine start-up: {0}")]
    Open(String),
    /// A record could not be read or written.
    #[error(transparent)]
    Store(#[from] WorkflowStoreError),
    /// A signal or index key could not be read or written.
    #[error(transparent)]
    Kv(CasError),
    /// The index could not be written.
    #[error("workflow index: {0}")]
    Index(String),
    /// The index or the signals could not be listed.
    #[error(transparent)]
    List(#[from] crate::kv::ListError),
    /// An advance could not be published.
    #[error("advancing the workflow: {0}")]
    Publish(#[from] crate::bus::PublishError),
    /// A value does not encode.
    #[error("workflow {id}: does not encode: {source}")]
    Encode {
        /// The workflow.
        id: String,
        /// The encode error.
        #[source]
        source: serde_json::Error,
    },
    /// A record it just saw is gone.
    #[error("workflow {0} vanished")]
    Vanished(String),
    /// A consumer failed.
    #[error(transparent)]
    Consume(#[from] crate::bus::consume::ConsumeError),
    /// An engine task panicked.
    #[error("workflow engine task: {0}")]
    Task(String),
}

/// Why a signal was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// No such workflow.
    #[error("workflow {0} does not exist")]
    NotFound(String),
    /// It ended.
    #[error("workflow {id} has ended ({})", state_name(*state))]
    Ended {
        /// The workflow.
        id: String,
        /// How it ended.
        state: WorkflowState,
    },
    /// Its wait for this signal is over.
    #[error("workflow {id} no longer waits for {name}: {}", if *expired { "the wait expired" } else { "it was already given" })]
    WaitOver {
        /// The workflow.
        id: String,
        /// The signal.
        name: String,
        /// When the wait ended.
        at: Option<chrono::DateTime<Utc>>,
        /// Whether it ended by expiring (rather than by an earlier signal).
        expired: bool,
    },
    /// The same signal was given before.
    #[error("signal {name} was already given to workflow {id}")]
    AlreadyGiven {
        /// The workflow.
        id: String,
        /// The signal.
        name: String,
    },
    /// The payload does not encode.
    #[error("signal payload does not encode: {0}")]
    Encode(#[source] serde_json::Error),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The id of the child `name` of workflow `parent`.
pub fn child_id(parent: &str, name: &str) -> String {
    format!("{parent}-{}", key_part(name))
}

/// The KV key prefix of the signals of workflow `id`.
fn signal_prefix(id: &str) -> String {
    format!("sig.{}.", key_part(id))
}

/// The KV key where signal `name` for workflow `id` waits to be read.
fn signal_key(id: &str, name: &str) -> String {
    format!("{}{}", signal_prefix(id), key_part(name))
}

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
    /// The record changed under its owner (another advance wrote it).
    #[error("workflow {0} changed under its owner")]
    Stale(String),
}

impl WorkflowStoreError {
    /// Whether trying again later can help (KV unavailable, contention), as opposed to a missing or
    /// unreadable record.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Open(_)
                | Self::Stale(_)
                | Self::Cas(CasError::Kv { .. } | CasError::Contended { .. })
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

    /// A store over an opened workflow bucket.
    pub(crate) fn from_store(kv: Store) -> Self {
        Self { kv }
    }

    /// Writes `record` over `revision` (its owner's write); a conflict is an error here, not a
    /// retry: the owner's copy is stale and it must stop.
    pub(crate) async fn replace(
        &self,
        record: &WorkflowRecord,
        revision: u64,
    ) -> Result<u64, WorkflowStoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| CasError::Encode {
            key: record.id.clone(),
            source,
        })?;
        use async_nats::jetstream::kv::UpdateErrorKind;
        let bytes = bytes::Bytes::from(bytes);
        let written = kv::patiently(
            || self.kv.update(&record.id, bytes.clone(), revision),
            |e: &async_nats::jetstream::kv::UpdateError| {
                !matches!(
                    e.kind(),
                    UpdateErrorKind::InvalidKey | UpdateErrorKind::WrongLastRevision
                )
            },
        )
        .await;
        match written {
            Ok(next) => Ok(next),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                // An attempt that timed out may have landed before the retry: then the stored
                // record is exactly this one (it carries its own update time), and that is success.
                match self.kv.entry(&record.id).await {
                    Ok(Some(entry)) if entry.value == bytes => Ok(entry.revision),
                    _ => Err(WorkflowStoreError::Stale(record.id.clone())),
                }
            }
            Err(e) => Err(CasError::kv(&record.id, e).into()),
        }
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
