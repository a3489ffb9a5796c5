//! Provision starts: a `ProvisionRequested` (from the gateway's webhook, or from a scale-out
//! directly) starts its `provision` workflow, which the provisioner runs: the gateway's pending
//! record is kept as it is (the first writer wins), one is written if there is none, and the
//! provisioner's engine is told to advance it (deduplicated, so a redelivered request never starts
//! a second provision). Admission to the profile's caps is the workflow's first step.

use proxflow_runtime::bus::{Delivery, Handler, Outcome};
use proxflow_runtime::workflow::{Engine, EngineError};
use proxflow_schemas::provision::ProvisionRequested;

/// Starts provision workflows. Shared by the request consumer and the scale-out, which enters here
/// directly instead of looping back through the webhook's ingest subject.
#[derive(Clone)]
pub(crate) struct ProvisionStart {
    pub(crate) engine: Engine,
}

impl ProvisionStart {
    /// Starts (or nudges) the provision of `req`.
    pub(crate) async fn start(&self, req: &ProvisionRequested) -> Result<(), EngineError> {
        let record = req.pending_workflow(&req.requested_by, None);
        let created = self.engine.start_record(&record).await?;
        tracing::info!(workflow = %req.workflow_id, created, "provision started");
        Ok(())
    }
}

/// The gateway's requests (`pf.ingest.webhook.provision`).
impl Handler<ProvisionRequested> for ProvisionStart {
    async fn handle(&self, delivery: Delivery<ProvisionRequested>) -> Outcome {
        match self.start(&delivery.message).await {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}
