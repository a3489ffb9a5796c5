//! On-demand runs: `pf.cmd.replicator.run` (a remediation of a lag alert) runs a job now.

use std::sync::Arc;

use proxflow_runtime::bus::{Delivery, Handler, Outcome};
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
                Outcome::Ack
            }
            Err(JobError::UnknownJob(job)) => {
                Outcome::poison(format!("no replication job {job:?}"))
            }
            // Transient: the snapshotter is pruning the dataset, or shutdown interrupted the
            // transfer. Redelivered (after a restart, in the second case), not dropped.
            Err(e) if matches!(e, JobError::Busy { .. }) || e.reason() == "cancelled" => {
                Outcome::retry(e.to_string())
            }
            Err(e) => {
                tracing::warn!(job = %request.job, error = %e, "requested replication failed");
                Outcome::Ack
            }
        }
    }
}
