//! Jobs: a configured job with its zfs handles, what the service remembers about it between
//! passes, the scheduled pass that decides which jobs are due, and why a run fails.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use proxflow_runtime::lease::LeaseError;
use proxflow_runtime::schedule::Schedule;
use proxflow_schemas::replication::DivergenceReason;
use proxflow_zfs::{PipeEnd, Zfs, ZfsError};
use tokio_util::sync::CancellationToken;

use crate::config::JobConfig;
use crate::run::{RunControl, RunReport};
use crate::service::Replicator;

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job of that name.
    #[error("no replication job named {0:?}")]
    UnknownJob(String),
    /// Someone else holds the dataset's lease (the snapshotter pruning, another replicator).
    #[error("lease {key} is held by {holder} ({purpose})")]
    Busy {
        /// The lease key.
        key: String,
        /// Who has it.
        holder: String,
        /// What for.
        purpose: String,
    },
    /// The lease could not be taken or was lost.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The source has no snapshot.
    #[error("{0} has no snapshot to send")]
    NothingToSend(String),
    /// The target diverged; nothing was sent, destroyed or rolled back.
    #[error("target diverged ({reason:?}): {detail}")]
    Diverged {
        /// What is wrong.
        reason: DivergenceReason,
        /// Details.
        detail: String,
    },
    /// zfs failed (a transfer included).
    #[error(transparent)]
    Zfs(#[from] ZfsError),
}

impl JobError {
    /// Label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownJob(_) => "unknown_job",
            Self::Busy { .. } => "busy",
            Self::Lease(_) => "lease",
            Self::NothingToSend(_) => "no_source_snapshot",
            Self::Diverged { .. } => "diverged",
            Self::Zfs(ZfsError::Pipe(p)) => match p.end {
                PipeEnd::TimedOut => "timeout",
                PipeEnd::Cancelled => "cancelled",
                PipeEnd::Failed => "transfer",
            },
            Self::Zfs(_) => "zfs",
        }
    }
}

/// One configured job with its zfs handles.
pub(crate) struct Job {
    pub(crate) config: JobConfig,
    pub(crate) source: Zfs,
    pub(crate) target: Zfs,
    pub(crate) schedule: Schedule,
    pub(crate) tz: Tz,
}

/// What the service remembers per job between passes.
#[derive(Debug, Default, Clone)]
pub(crate) struct JobState {
    pub(crate) done_slot: Option<DateTime<Utc>>,
    pub(crate) failed_at: Option<DateTime<Utc>>,
    pub(crate) replicated_creation: Option<DateTime<Utc>>,
}

impl Replicator {
    /// Runs every due job once (sequentially: two sends compete for the same disks and link).
    pub async fn pass(
        &self,
        shutdown: &CancellationToken,
    ) -> Vec<(String, Result<RunReport, JobError>)> {
        let mut out = Vec::new();
        for job in &self.jobs {
            let now = self.clock.now();
            let name = job.config.name.clone();
            let state = self.state().get(&name).cloned().unwrap_or_default();
            // The lag grows while nothing new arrives, also between runs.
            if let Some(created) = state.replicated_creation {
                self.metrics.lag.set(
                    [name.as_str()],
                    (now - created).num_milliseconds() as f64 / 1e3,
                );
            }
            let Some(slot) = job.schedule.last_slot(job.tz, now) else {
                continue;
            };
            let retry_at = state.failed_at.map(|f| {
                f + chrono::Duration::from_std(self.config.retry_after)
                    .unwrap_or(chrono::Duration::MAX)
            });
            let due = state.done_slot != Some(slot) && retry_at.is_none_or(|at| now >= at);
            if !due || shutdown.is_cancelled() {
                continue;
            }
            let control = RunControl {
                cancel: shutdown.child_token(),
                ..RunControl::default()
            };
            let result = self.run_job(&name, &control).await;
            let mut states = self.state();
            let entry = states.entry(name.clone()).or_default();
            match &result {
                Ok(_) => {
                    entry.done_slot = Some(slot);
                    entry.failed_at = None;
                }
                Err(_) => entry.failed_at = Some(now),
            }
            drop(states);
            out.push((name, result));
        }
        out
    }
}
