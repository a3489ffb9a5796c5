//! The remediator: runs the work orders the engine sends (`pf.cmd.remediator.act`) and reports each
//! outcome (`pf.evt.remediation.outcome`), which feeds the rule's circuit breaker. It holds the
//! target's lease while acting, so two remediations never touch one VM at once.

use std::time::Duration;

use chrono::Utc;
use proxflow_pve::{PveClient, ShutdownOptions};
use proxflow_runtime::bus::{Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::command::{self, CommandSpec};
use proxflow_runtime::lease::{Acquired, Leases};
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::Message;
use proxflow_schemas::capacity::ScaleOutRequested;
use proxflow_schemas::remediation::{
    RemediationAction, RemediationCommand, RemediationOutcome, RemediationResult,
};
use proxflow_schemas::replication::ReplicationRequested;
use proxflow_schemas::snapshot::PruneRequested;
use proxflow_schemas::workflow::WorkflowState;
use serde_json::json;

use proxflow_schemas::names::key::remediation_lock;

/// Why a handed-off request was made, for the owning service's log and record.
fn hand_off_reason(cmd: &RemediationCommand) -> String {
    format!("alert {} → rule {}", cmd.alert.name(), cmd.rule)
}

/// Runs remediation work orders.
pub struct Remediator {
    pub(crate) pve: PveClient,
    pub(crate) http: reqwest::Client,
    pub(crate) leases: Leases,
    pub(crate) store: WorkflowStore,
    pub(crate) publisher: Publisher,
}

impl Handler<RemediationCommand> for Remediator {
    async fn handle(&self, delivery: Delivery<RemediationCommand>) -> Outcome {
        let cmd = delivery.message;
        match self.store.get(&cmd.workflow_id).await {
            Ok(Some((record, _))) if record.state.is_terminal() => {
                let result = match record.state {
                    WorkflowState::Succeeded => RemediationResult::Succeeded,
                    WorkflowState::Cancelled => RemediationResult::Busy,
                    _ => RemediationResult::Failed,
                };
                return self.report(&cmd, result, record.error).await;
            }
            Ok(_) => {}
            Err(e) => return Outcome::retry(e.to_string()),
        }
        let lease = match self
            .leases
            .acquire(
                &remediation_lock(&cmd.target),
                &cmd.workflow_id,
                &cmd.action.describe(),
            )
            .await
        {
            Ok(Acquired::Held(lease)) => lease,
            Ok(Acquired::Busy(other)) => {
                // Someone took the target after the engine's claim (an operator, or the claim aged
                // out): nothing ran, so the workflow ends cancelled and the breaker ignores it.
                let error = format!(
                    "{} is held by {} ({})",
                    cmd.target, other.holder, other.purpose
                );
                return self
                    .finish(&cmd, RemediationResult::Busy, Some(error))
                    .await;
            }
            Err(e) => return Outcome::retry(e.to_string()),
        };
        tracing::info!(workflow = %cmd.workflow_id, action = %cmd.action.describe(), "remediating");
        let result = self.act(&cmd).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "lease release failed; it ages out");
        }
        match result {
            Ok(()) => self.finish(&cmd, RemediationResult::Succeeded, None).await,
            Err(e) => self.finish(&cmd, RemediationResult::Failed, Some(e)).await,
        }
    }
}

impl Remediator {
    async fn act(&self, cmd: &RemediationCommand) -> Result<(), String> {
        match &cmd.action {
            RemediationAction::RestartVm {
                vmid,
                shutdown_timeout_secs,
            } => self.restart(*vmid, *shutdown_timeout_secs).await,
            RemediationAction::SnapshotVm { vmid } => {
                let name = format!("pf-remed-{}", Utc::now().format("%Y%m%dT%H%M%SZ"));
                let upid = self
                    .pve
                    .create_snapshot(
                        *vmid,
                        &name,
                        Some(&format!("proxflow remediation {}", cmd.workflow_id)),
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                self.pve
                    .wait_task(&upid, None)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            RemediationAction::Notify { url } => {
                let body = json!({ "workflow_id": cmd.workflow_id, "rule": cmd.rule, "target": cmd.target, "alert": cmd.alert });
                let r = self
                    .http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| format!("notify {url}: {e}"))?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("notify {url}: HTTP {}", r.status()))
                }
            }
            RemediationAction::Command { argv, timeout_secs } => {
                // The alert goes to the command on stdin, as JSON.
                let spec = CommandSpec {
                    argv: argv.clone(),
                    env: Vec::new(),
                    stdin: serde_json::to_vec(&cmd.alert).unwrap_or_default(),
                    cwd: None,
                    timeout: Duration::from_secs(*timeout_secs),
                };
                let out = command::run(&spec).await.map_err(|e| e.to_string())?;
                if out.success() {
                    Ok(())
                } else {
                    Err(format!("{}: {}", argv.join(" "), out.summary()))
                }
            }
            // Handed to the service that owns it, with its own guards and audit: the capacity
            // scale-out (cap, cooldown, headroom veto), the replicator's run, the snapshotter's
            // retention.
            RemediationAction::ScaleOut { cluster } => {
                let request = ScaleOutRequested {
                    cluster: cluster.clone(),
                    workflow_id: cmd.workflow_id.clone(),
                    reason: hand_off_reason(cmd),
                };
                self.hand_off(&request, "the scale-out").await
            }
            RemediationAction::Replicate { job } => {
                let request = ReplicationRequested {
                    job: job.clone(),
                    workflow_id: cmd.workflow_id.clone(),
                    reason: hand_off_reason(cmd),
                };
                self.hand_off(&request, "the replication run").await
            }
            RemediationAction::PruneSnapshots { pool } => {
                let request = PruneRequested {
                    pool: pool.clone(),
                    workflow_id: cmd.workflow_id.clone(),
                    reason: hand_off_reason(cmd),
                };
                self.hand_off(&request, "the prune").await
            }
        }
    }

    /// Publishes a request to the service that owns the action; acknowledged by the stream is done.
    async fn hand_off<M: Message>(&self, request: &M, what: &str) -> Result<(), String> {
        self.publisher
            .publish(request)
            .await
            .map(drop)
            .map_err(|e| format!("requesting {what}: {e}"))
    }

    /// Shutdown within the timeout; a shutdown that fails or times out is followed by a hard stop;
    /// then start.
    async fn restart(&self, vmid: u32, timeout_secs: u64) -> Result<(), String> {
        let timeout = u32::try_from(timeout_secs).unwrap_or(u32::MAX);
        let status = self.pve.vm_status(vmid).await.map_err(|e| e.to_string())?;
        if status.status == "running" {
            let clean = match self
                .pve
                .shutdown_vm(
                    vmid,
                    ShutdownOptions {
                        timeout: Some(timeout),
                        force_stop: false,
                    },
                )
                .await
            {
                Ok(upid) => self
                    .pve
                    .wait_task(&upid, Some(Duration::from_secs(timeout_secs + 30)))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = clean {
                tracing::warn!(vmid, error = %e, "clean shutdown failed, stopping");
                let upid = self
                    .pve
                    .stop_vm(vmid, None)
                    .await
                    .map_err(|e| e.to_string())?;
                self.pve
                    .wait_task(&upid, None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let upid = self.pve.start_vm(vmid).await.map_err(|e| e.to_string())?;
        self.pve
            .wait_task(&upid, None)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn finish(
        &self,
        cmd: &RemediationCommand,
        result: RemediationResult,
        error: Option<String>,
    ) -> Outcome {
        let state = match result {
            RemediationResult::Succeeded => WorkflowState::Succeeded,
            RemediationResult::Failed => WorkflowState::Failed,
            RemediationResult::Refused | RemediationResult::Busy => WorkflowState::Cancelled,
        };
        if let Err(e) = self
            .store
            .update(&cmd.workflow_id, |r| {
                if !r.state.is_terminal() {
                    r.state = state;
                    r.error = error.clone();
                }
            })
            .await
        {
            return Outcome::retry(e.to_string());
        }
        self.report(cmd, result, error).await
    }

    async fn report(
        &self,
        cmd: &RemediationCommand,
        result: RemediationResult,
        error: Option<String>,
    ) -> Outcome {
        let outcome = RemediationOutcome {
            workflow_id: cmd.workflow_id.clone(),
            rule: cmd.rule.clone(),
            target: cmd.target.clone(),
            action: cmd.action.kind().to_string(),
            error,
            result: Some(result),
            at: Utc::now(),
        };
        match self.publisher.publish(&outcome).await {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::retry(format!("reporting the outcome: {e}")),
        }
    }
}
