//! The stream of a run: `zfs send | zfs receive`, retried briefly while an aborted receive still
//! holds the target ("dataset is busy"), and a failed receive classified — a target that changed
//! is a divergence (alerted, never rolled back), anything else a transient failure.

use std::sync::atomic::Ordering;
use std::time::Duration;

use proxflow_runtime::backoff::Backoff;
use proxflow_schemas::replication::{DivergenceReason, ReplicationDiverged};
use proxflow_zfs::{PipeEnd, SendStream, Transfer, ZfsError};
use tracing::Instrument;

use crate::job::{Job, JobError};
use crate::run::RunControl;
use crate::service::Replicator;

/// Spacing of the attempts while a receive is refused with "dataset is busy": 6 retries, the
/// pause capped at 1 s, then 2, 4 … 32 s (at most about a minute in all).
const BUSY: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(32),
    attempts: 7,
    deadline: Duration::MAX,
};

impl Replicator {
    /// One send | receive, retried while the target is still busy with an aborted receive.
    pub(crate) async fn transfer(
        &self,
        job: &Job,
        stream: &SendStream,
        resumable: bool,
        control: &RunControl,
    ) -> Result<Transfer, ZfsError> {
        let mut retries = BUSY.start();
        // The first attempt: at once.
        retries.next().await;
        loop {
            control.progress.store(0, Ordering::Relaxed);
            let result = proxflow_zfs::send_receive(
                &job.source,
                &job.config.source,
                stream,
                &job.target,
                &job.config.target,
                resumable,
                job.config.transfer_timeout,
                &control.cancel,
                Some(&control.progress),
            )
            .await;
            match result {
                Err(ZfsError::Pipe(p))
                    if p.end == PipeEnd::Failed
                        && p.stderr().contains("dataset is busy")
                        && retries.attempts() < BUSY.attempts =>
                {
                    tracing::info!(
                        attempt = retries.attempts(),
                        "target busy (an aborted receive still finishing); retrying"
                    );
                    tokio::select! {
                        _ = control.cancel.cancelled() => return Err(ZfsError::Pipe(p)),
                        next = retries.next() => if next.is_none() {
                            return Err(ZfsError::Pipe(p));
                        },
                    }
                }
                other => return other,
            }
        }
    }

    /// Turns a failed transfer into the run's error; a receive refused because the target changed
    /// is a divergence (alerted), not a transient failure.
    pub(crate) async fn classify(&self, job: &Job, run_id: &str, error: ZfsError) -> JobError {
        let ZfsError::Pipe(pipe) = &error else {
            return JobError::Zfs(error);
        };
        let stderr = pipe.stderr();
        let reason = if stderr.contains("has been modified") {
            Some(DivergenceReason::TargetModified)
        } else if stderr.contains("must specify -F") || stderr.contains("already exists") {
            Some(DivergenceReason::TargetNotEmpty)
        } else {
            None
        };
        let Some(reason) = reason.filter(|_| pipe.end == PipeEnd::Failed) else {
            return JobError::Zfs(error);
        };
        let detail = pipe
            .receive_stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        self.diverged(job, run_id, reason, None, Vec::new(), Some(detail.clone()))
            .await;
        JobError::Diverged { reason, detail }
    }

    /// Logs and announces a diverged target (the alert a human acts on).
    pub(crate) async fn diverged(
        &self,
        job: &Job,
        run_id: &str,
        reason: DivergenceReason,
        common_base: Option<String>,
        target_only: Vec<String>,
        detail: Option<String>,
    ) {
        tracing::error!(
            ?reason,
            ?common_base,
            ?target_only,
            "target diverged; refusing to touch it"
        );
        self.publisher
            .announce(&ReplicationDiverged {
                job: job.config.name.clone(),
                run_id: run_id.to_owned(),
                source: job.config.source.clone(),
                target: job.config.target.clone(),
                reason,
                common_base,
                target_only,
                detail,
                at: self.clock.now(),
            })
            .instrument(crate::run::phase("announce"))
            .await;
    }
}
