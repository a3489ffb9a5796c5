//! On-demand runs: `pf.cmd.replicator.run` (a remediation of a lag alert) runs a job now.

use std::sync::Arc;

use proxflow_runtime::bus::{Delivery, Handler, Outcome};
use proxflow_schemas::remediation::{HandOffOutcome, HandOffResult};
use proxflow_schemas::replication::ReplicationRequested;
use tokio_util::sync::CancellationToken;

use crate::job::JobError;
use crate::run::RunControl;
use crate::service::Replicator;

/// Runs a job on request (a remediation of a lag alert). The run announces itself through the usual
/// events and metrics; a failed run is not retried from here (the schedule retries it). Shutdown
/// kills its transfer, as it does a scheduled one's.
pub(crate) struct OnDemand {
    pub(crate) replicator: Arc<Replicator>,
    pub(crate) shutdown: CancellationToken,
}

impl Handler<ReplicationRequested> for OnDemand {
    async fn handle(&self, delivery: Delivery<ReplicationRequested>) -> Outcome {
        let request = delivery.message;
        tracing::info!(job = %request.job, reason = %request.reason, "replication requested");
        match self
            .replicator
            .run_job(
                &request.job,
                &RunControl {
                    cancel: self.shutdown.child_token(),
                    ..RunControl::default()
                },
            )
            .await
        {
            Ok(report) => {
                tracing::info!(job = %request.job, run = %report.run_id, "requested replication done");
                let (result, detail) = if report.dry_run {
                    (
                        HandOffResult::Refused,
                        format!("dry-run: job {} sent nothing", request.job),
                    )
                } else {
                    (
                        HandOffResult::Succeeded,
                        format!(
                            "job {} replicated ({:?}, {} bytes) up to {}",
                            request.job,
                            report.mode,
                            report.bytes,
                            report.snapshot.as_deref().unwrap_or("-")
                        ),
                    )
                };
                self.tell(&request, result, detail, Some(report.run_id), Outcome::Ack)
                    .await
            }
            Err(JobError::UnknownJob(job)) => {
                let why = format!("no replication job {job:?}");
                self.tell(
                    &request,
                    HandOffResult::Failed,
                    why.clone(),
                    None,
                    Outcome::poison(why),
                )
                .await
            }
            // Transient: the snapshotter is pruning the dataset, or shutdown interrupted the
            // transfer. Redelivered (after a restart, in the second case), not dropped.
            Err(e) if matches!(e, JobError::Busy { .. }) || e.reason() == "cancelled" => {
                Outcome::retry(e.to_string())
            }
            Err(e) => {
                tracing::warn!(job = %request.job, error = %e, "requested replication failed");
                let why = format!("job {}: {e}", request.job);
                self.tell(&request, HandOffResult::Failed, why, None, Outcome::Ack)
                    .await
            }
        }
    }
}

impl OnDemand {
    /// Tells the workflow that asked how its run ended (`pf.evt.handoff.replication`), then settles
    /// the request with `then`.
    async fn tell(
        &self,
        request: &ReplicationRequested,
        result: HandOffResult,
        detail: String,
        run: Option<String>,
        then: Outcome,
    ) -> Outcome {
        let now = self.replicator.clock.now();
        let mut outcome =
            HandOffOutcome::new(&request.workflow_id, "replication", result, detail, now);
        outcome.reference = run;
        match self.replicator.publisher.publish(&outcome).await {
            Ok(_) => then,
            Err(e) => Outcome::retry(format!("reporting the run's outcome: {e}")),
        }
    }
}
