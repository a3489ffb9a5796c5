//! The `remediate` workflow, run by the remediator's workflow engine. The orchestrator's decision
//! starts it with the work order ([`RemediationCommand`]); it runs the action, or hands it to the
//! service that owns it and waits for that owner's outcome, and reports how it ended
//! (`pf.evt.remediation.outcome`), which feeds the rule's circuit breaker.
//!
//! Direct actions (restart or snapshot a VM, notify, run a command) run in one step under the
//! target's lease, which the decision claimed for this workflow and the step adopts, so two
//! remediations never touch one VM at once. Handed-off actions (scale-out, replication, prune)
//! publish the owner's request and wait for its [`HandOffOutcome`] (`pf.evt.handoff.<owner>`,
//! delivered as the signal `outcome`), so a remediation ends with what the owner did, not with the
//! request being queued; a refusal by the owner's guard ends it `refused` with the owner's reason.

use std::time::Duration;

use chrono::{DateTime, Utc};
use proxflow_pve::{PveClient, PveError, ShutdownOptions};
use proxflow_runtime::bus::{Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::command::{self, CommandError, CommandSpec};
use proxflow_runtime::lease::{Acquired, Leases};
use proxflow_runtime::workflow::{Engine, Halt, Run, SignalError, StepError, Workflow};
use proxflow_schemas::capacity::ScaleOutRequested;
use proxflow_schemas::events::DeadLetter;
use proxflow_schemas::names::key::remediation_lock;
use proxflow_schemas::remediation::{
    HandOffOutcome, HandOffResult, RemediationAction, RemediationCommand, RemediationOutcome,
    RemediationResult,
};
use proxflow_schemas::replication::ReplicationRequested;
use proxflow_schemas::snapshot::PruneRequested;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Why a direct action failed. The messages are what the workflow record and the outcome carry.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Proxmox refused or failed the call or its task.
    #[error(transparent)]
    Pve(#[from] PveError),
    /// The webhook could not be reached.
    #[error("notify {url}: {source}")]
    Notify {
        /// The webhook.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The webhook answered with an error status.
    #[error("notify {url}: HTTP {status}")]
    NotifyStatus {
        /// The webhook.
        url: String,
        /// Its answer.
        status: reqwest::StatusCode,
    },
    /// The command could not be run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The command ran and failed.
    #[error("{command}: {summary}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit and output tail.
        summary: String,
    },
    /// A handed-off action reached the direct runner (a bug: they are handed off before).
    #[error("a handed-off action reached the direct runner")]
    HandedOff,
}

/// The `remediate` workflow definition.
pub struct Remediate {
    pub(crate) pve: PveClient,
    pub(crate) http: reqwest::Client,
    pub(crate) leases: Leases,
    pub(crate) publisher: Publisher,
    /// How long a handed-off action may take before the remediation gives up on its outcome.
    pub(crate) hand_off_timeout: Duration,
}

/// How the action went: the result the breaker counts and, unless it succeeded, why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acted {
    /// How it ended.
    pub result: RemediationResult,
    /// Why, unless it succeeded.
    pub error: Option<String>,
}

impl Workflow for Remediate {
    const KIND: &'static str = "remediate";
    type Input = RemediationCommand;
    type Output = ();
    type Undo = ();

    async fn run(&self, wf: &mut Run<Self>, cmd: RemediationCommand) -> Result<(), Halt> {
        let acted = match hand_off(&cmd) {
            Some(request) => self.hand_off(wf, &cmd, request).await?,
            None => wf.step("act", self.act_locked(&cmd)).await?,
        };
        let outcome = RemediationOutcome {
            workflow_id: cmd.workflow_id.clone(),
            rule: cmd.rule.clone(),
            target: cmd.target.clone(),
            action: cmd.action.kind().to_string(),
            error: acted.error.clone(),
            result: Some(acted.result),
            at: wf.now(),
        };
        let publisher = self.publisher.clone();
        wf.step("report", async move {
            publisher.publish(&outcome).await.map(drop).map_err(|e| {
                StepError::transient(format!("reporting the outcome: {e}")).with_source(e)
            })
        })
        .await?;
        let why = acted.error.unwrap_or_default();
        match acted.result {
            RemediationResult::Succeeded => Ok(()),
            RemediationResult::Failed => Err(StepError::terminal(why).into()),
            RemediationResult::Refused | RemediationResult::Busy => {
                Err(StepError::refused(why).into())
            }
        }
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }
}

/// A request to the service that owns a handed-off action.
enum Request {
    ScaleOut(ScaleOutRequested),
    Replicate(ReplicationRequested),
    Prune(PruneRequested),
}

/// The owner's request for a handed-off action; `None` for actions the remediator runs itself.
fn hand_off(cmd: &RemediationCommand) -> Option<Request> {
    let reason = format!("alert {} → rule {}", cmd.alert.name(), cmd.rule);
    let workflow_id = cmd.workflow_id.clone();
    match &cmd.action {
        RemediationAction::ScaleOut { cluster } => Some(Request::ScaleOut(ScaleOutRequested {
            cluster: cluster.clone(),
            workflow_id,
            reason,
        })),
        RemediationAction::Replicate { job } => Some(Request::Replicate(ReplicationRequested {
            job: job.clone(),
            workflow_id,
            reason,
        })),
        RemediationAction::PruneSnapshots { pool } => Some(Request::Prune(PruneRequested {
            pool: pool.clone(),
            workflow_id,
            reason,
        })),
        _ => None,
    }
}

impl Remediate {
    /// Publishes the owner's request once, then waits for its outcome.
    async fn hand_off(
        &self,
        wf: &mut Run<Self>,
        cmd: &RemediationCommand,
        request: Request,
    ) -> Result<Acted, Halt> {
        let publisher = self.publisher.clone();
        let leases = self.leases.clone();
        let now = wf.now();
        let what = cmd.action.describe();
        let lock = remediation_lock(&cmd.target);
        let holder = cmd.workflow_id.clone();
        let asked: DateTime<Utc> = wf
            .step("request", async move {
                let sent = match &request {
                    Request::ScaleOut(r) => publisher.publish(r).await,
                    Request::Replicate(r) => publisher.publish(r).await,
                    Request::Prune(r) => publisher.publish(r).await,
                };
                sent.map_err(|e| {
                    StepError::transient(format!("requesting: {what}: {e}")).with_source(e)
                })?;
                // The owner guards its own work from here; the target lock the decision claimed for
                // this workflow has done its part (one remediation per target at a time) and is
                // given back now, not left to age out while the owner works.
                release_claim(&leases, &lock, &holder).await;
                Ok(now)
            })
            .await?;
        let timeout =
            chrono::Duration::from_std(self.hand_off_timeout).unwrap_or(chrono::Duration::hours(6));
        let outcome = wf
            .signal::<HandOffOutcome>("outcome", Some(asked + timeout))
            .await?;
        Ok(match outcome {
            Some(o) => Acted {
                result: match o.result {
                    HandOffResult::Succeeded => RemediationResult::Succeeded,
                    HandOffResult::Failed => RemediationResult::Failed,
                    HandOffResult::Refused => RemediationResult::Refused,
                },
                error: (o.result != HandOffResult::Succeeded)
                    .then(|| format!("{}: {}", o.owner, o.detail)),
            },
            None => Acted {
                result: RemediationResult::Failed,
                error: Some(format!(
                    "no outcome for {} within {}",
                    cmd.action.describe(),
                    humantime_serde::re::humantime::format_duration(self.hand_off_timeout)
                )),
            },
        })
    }

    /// Runs a direct action under the target's lease (adopting the decision's claim).
    async fn act_locked(&self, cmd: &RemediationCommand) -> Result<Acted, StepError> {
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
                // Someone took the target after the decision's claim (an operator, or the claim
                // aged out): nothing ran, and the breaker ignores it.
                return Ok(Acted {
                    result: RemediationResult::Busy,
                    error: Some(format!(
                        "{} is held by {} ({})",
                        cmd.target, other.holder, other.purpose
                    )),
                });
            }
            Err(e) => {
                return Err(StepError::transient(e.to_string()).with_source(e));
            }
        };
        tracing::info!(workflow = %cmd.workflow_id, action = %cmd.action.describe(), "remediating");
        let result = self.act(cmd).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "lease release failed; it ages out");
        }
        Ok(match result {
            Ok(()) => Acted {
                result: RemediationResult::Succeeded,
                error: None,
            },
            Err(e) => Acted {
                result: RemediationResult::Failed,
                error: Some(e.to_string()),
            },
        })
    }
}

/// Ends the waiting remediation of a request its owner dead-lettered (its consumer gave up on it:
/// poison, or retries exhausted) with `failed` and the owner's reason, instead of leaving it to
/// wait out its timeout. One consumer per owner (`remediator-givenup-<owner>`).
pub struct GivenUp {
    pub(crate) engine: Engine,
    /// The owner, as its hand-off outcomes name it (`replication`, `prune`, `scale_out`).
    pub(crate) owner: &'static str,
}

impl Handler<DeadLetter> for GivenUp {
    async fn handle(&self, delivery: Delivery<DeadLetter>) -> Outcome {
        let letter = delivery.message;
        // The three requests carry the asking workflow as `workflow_id`; one without it (or not
        // JSON) was nobody's hand-off.
        let asking = serde_json::from_str::<serde_json::Value>(&letter.payload)
            .ok()
            .and_then(|v| v.get("workflow_id")?.as_str().map(str::to_string));
        let Some(asking) = asking else {
            return Outcome::Ack;
        };
        let outcome = HandOffOutcome::new(
            &asking,
            self.owner,
            HandOffResult::Failed,
            format!(
                "{} gave up after {} deliveries: {}",
                letter.consumer, letter.deliveries, letter.detail
            ),
            letter.dead_lettered_at,
        );
        signal_outcome(&self.engine, &outcome).await
    }
}

/// Gives `outcome` to the remediation that asked, as its signal `outcome`.
async fn signal_outcome(engine: &Engine, outcome: &HandOffOutcome) -> Outcome {
    match engine
        .signal(&outcome.requested_by, "outcome", &outcome.owner, outcome)
        .await
    {
        Ok(()) => Outcome::Ack,
        // Work asked for by something other than a remediation, a remediation that gave up
        // waiting or already has its answer (the owner may report and then dead-letter), or a
        // redelivery: nothing waits for it.
        Err(
            e @ (SignalError::NotFound(_)
            | SignalError::Ended { .. }
            | SignalError::WaitOver { .. }
            | SignalError::AlreadyGiven { .. }),
        ) => {
            tracing::debug!(requested_by = %outcome.requested_by, reason = %e, "hand-off outcome not awaited");
            Outcome::Ack
        }
        Err(e) => Outcome::retry(e.to_string()),
    }
}

/// Gives back the target lock `holder` (the workflow) claimed, if it still has it.
async fn release_claim(leases: &Leases, key: &str, holder: &str) {
    match leases
        .acquire(key, holder, "releasing the decision's claim")
        .await
    {
        Ok(Acquired::Held(lease)) => {
            if let Err(e) = lease.release().await {
                tracing::warn!(lease = %key, error = %e, "lease not released; it ages out");
            }
        }
        // Someone else's now (the claim aged out and was taken): not ours to release.
        Ok(Acquired::Busy(_)) => {}
        Err(e) => tracing::warn!(lease = %key, error = %e, "lease not released; it ages out"),
    }
}

/// Ends the waiting remediation of each hand-off outcome (durable `remediator-handoffs` on
/// `pf.evt.handoff.>`) by giving it the signal `outcome`.
pub struct HandOffs {
    pub(crate) engine: Engine,
}

impl Handler<HandOffOutcome> for HandOffs {
    async fn handle(&self, delivery: Delivery<HandOffOutcome>) -> Outcome {
        signal_outcome(&self.engine, &delivery.message).await
    }
}

impl Remediate {
    /// Runs an action the remediator does itself.
    async fn act(&self, cmd: &RemediationCommand) -> Result<(), ActionError> {
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
                    .await?;
                self.pve.wait_task(&upid, None).await?;
                Ok(())
            }
            RemediationAction::Notify { url } => {
                let body = json!({ "workflow_id": cmd.workflow_id, "rule": cmd.rule, "target": cmd.target, "alert": cmd.alert });
                let r = self
                    .http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|source| ActionError::Notify {
                        url: url.clone(),
                        source,
                    })?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(ActionError::NotifyStatus {
                        url: url.clone(),
                        status: r.status(),
                    })
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
                let out = command::run(&spec).await?;
                if out.success() {
                    Ok(())
                } else {
                    Err(ActionError::CommandFailed {
                        command: argv.join(" "),
                        summary: out.summary(),
                    })
                }
            }
            // Handed-off actions are not run here: see `Remediate::hand_off`.
            RemediationAction::ScaleOut { .. }
            | RemediationAction::Replicate { .. }
            | RemediationAction::PruneSnapshots { .. } => Err(ActionError::HandedOff),
        }
    }

    /// Shutdown within the timeout; a shutdown that fails or times out is followed by a hard stop;
    /// then start.
    async fn restart(&self, vmid: u32, timeout_secs: u64) -> Result<(), ActionError> {
        let timeout = u32::try_from(timeout_secs).unwrap_or(u32::MAX);
        let status = self.pve.vm_status(vmid).await?;
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
                    .map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = clean {
                tracing::warn!(vmid, error = %e, "clean shutdown failed, stopping");
                let upid = self.pve.stop_vm(vmid, None).await?;
                self.pve.wait_task(&upid, None).await?;
            }
        }
        let upid = self.pve.start_vm(vmid).await?;
        self.pve.wait_task(&upid, None).await?;
        Ok(())
    }
}
