//! Provision admission: a `ProvisionRequested` (from the gateway, or from a scale-out directly)
//! gets its workflow record if it has none, passes its profile's caps (`max_concurrent` running,
//! `max_per_hour` started — a refusal ends the workflow `cancelled` with the numbers), and then the
//! provisioner gets its work order (`pf.cmd.provisioner.provision`, deduplicated by workflow id, so
//! a redelivered request never starts a second provision).

use std::time::Duration;

use proxflow_platform::Profiles;
use proxflow_runtime::admission::{Admissions, Caps, Decision};
use proxflow_runtime::bus::{Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::names::key;
use proxflow_schemas::provision::{ProvisionCommand, ProvisionRequested};
use proxflow_schemas::workflow::WorkflowState;

use crate::Slots;

/// What admitting one provision request came to.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// The provisioner has its work order (or already had it).
    Dispatched,
    /// The workflow ended here (refused by the caps, unknown profile) or had ended before; the
    /// reason names the cap and its numbers.
    Ended {
        /// Why.
        reason: String,
    },
    /// Try again later (KV or the bus unavailable).
    Retry(String),
    /// The stored record cannot be read.
    Poison(String),
}

/// Admits provision requests. Shared by the request consumer and the scale-out, which enters here
/// directly instead of looping back through the webhook's ingest subject.
#[derive(Clone)]
pub(crate) struct ProvisionAdmission {
    pub(crate) store: WorkflowStore,
    pub(crate) admissions: Admissions,
    pub(crate) slots: Slots,
    pub(crate) profiles: Profiles,
    pub(crate) publisher: Publisher,
    pub(crate) clock: SharedClock,
}

impl ProvisionAdmission {
    /// Admits `req` and dispatches it to the provisioner, or ends its workflow with the reason.
    pub(crate) async fn admit(&self, req: ProvisionRequested) -> Admitted {
        let record = match self.store.get(&req.workflow_id).await {
            Ok(Some((record, _))) => record,
            Ok(None) => {
                let record = req.pending_workflow(&req.requested_by, None);
                if let Err(e) = self.store.create(&record).await {
                    return Admitted::Retry(e.to_string());
                }
                record
            }
            Err(e) if !e.is_transient() => return Admitted::Poison(e.to_string()),
            Err(e) => return Admitted::Retry(e.to_string()),
        };
        if record.state.is_terminal() {
            tracing::info!(workflow = %req.workflow_id, state = ?record.state, "already finished");
            return Admitted::Ended {
                reason: record.error.unwrap_or_default(),
            };
        }
        let Some(profile) = self.profiles.get(&req.profile) else {
            let reason = format!(
                "unknown profile '{}' (known: {})",
                req.profile,
                self.profiles.names().join(", ")
            );
            return self.end(&req, WorkflowState::Failed, reason).await;
        };
        let caps = Caps {
            max_running: profile.max_concurrent,
            max_per_window: profile.max_per_hour,
            window: Duration::from_secs(3600),
        };
        let decision = self
            .admissions
            .admit(
                &key::provision_ledger(&req.profile),
                &req.workflow_id,
                caps,
                self.clock.now(),
            )
            .await;
        match decision {
            Ok(Decision::Admitted) => {}
            Ok(Decision::Refused(why)) => {
                let reason = format!("refused by the {} profile's caps: {why}", req.profile);
                tracing::warn!(workflow = %req.workflow_id, %reason, "provision refused");
                return self.end(&req, WorkflowState::Cancelled, reason).await;
            }
            Err(e) => return Admitted::Retry(e.to_string()),
        }
        if let Err(e) = self
            .store
            .update(&req.workflow_id, |r| {
                if r.state == WorkflowState::Pending {
                    r.state = WorkflowState::Running;
                }
            })
            .await
        {
            return Admitted::Retry(e.to_string());
        }
        let command = ProvisionCommand {
            workflow_id: req.workflow_id.clone(),
            request: req,
        };
        // Re-sent for a running workflow too: the command's dedupe id drops it within the window,
        // and after it a provisioner resumes from the record instead of starting over.
        match self.publisher.publish(&command).await {
            Ok(receipt) => {
                tracing::info!(workflow = %command.workflow_id, duplicate = receipt.duplicate, "provision dispatched");
                Admitted::Dispatched
            }
            Err(e) => Admitted::Retry(format!("dispatching the provision: {e}")),
        }
    }

    /// Ends a workflow that never reached the provisioner. It holds no provision slot, but a
    /// scale-out's provision holds its cluster's slot, which must not stay taken.
    async fn end(
        &self,
        req: &ProvisionRequested,
        state: WorkflowState,
        reason: String,
    ) -> Admitted {
        if let Err(e) = self
            .store
            .update(&req.workflow_id, |r| {
                r.state = state;
                r.error = Some(reason.clone());
            })
            .await
        {
            return Admitted::Retry(e.to_string());
        }
        match self.slots.free(&req.profile, &req.workflow_id).await {
            Ok(()) => Admitted::Ended { reason },
            Err(e) => Admitted::Retry(e.to_string()),
        }
    }
}

/// The gateway's requests (`pf.ingest.webhook.provision`).
impl Handler<ProvisionRequested> for ProvisionAdmission {
    async fn handle(&self, delivery: Delivery<ProvisionRequested>) -> Outcome {
        match self.admit(delivery.message).await {
            Admitted::Dispatched | Admitted::Ended { .. } => Outcome::Ack,
            Admitted::Retry(why) => Outcome::retry(why),
            Admitted::Poison(why) => Outcome::poison(why),
        }
    }
}
