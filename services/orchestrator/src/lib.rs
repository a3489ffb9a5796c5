//! # proxflow-orchestrator
//!
//! Owns the life of workflows. For provisioning it admits each `ProvisionRequested` from the gateway
//! (`admit`): the record exists, the profile's caps allow one more, then the provisioner gets its
//! work order. Outcome events (`pf.evt.vm.*`) free the workflow's slot again.
//!
//! For capacity it turns a k3s cluster's `capacity.exceeded` into a guarded scale-out ([`scaleout`]):
//! cap, cooldown, host-headroom veto, dry-run and one at a time, then one more node through the same
//! provision admission, entered directly.
//!
//! For alerts it runs the remediation engine ([`remediation`]): a decision per
//! alert and matching rule, every one audited, and the rules' circuit breakers.

mod admit;
pub mod remediation;
pub mod scaleout;

use proxflow_platform::RemediationConfig;
use proxflow_platform::{Clusters, Profiles};

use crate::remediation::Rules;

use proxflow_runtime::admission::{AdmissionError, Admissions};
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::config::ConsumerConfig;
use proxflow_runtime::workflow::{WorkflowStore, WorkflowStoreError};
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::events::DeadLetter;
use proxflow_schemas::names::{bucket, consumer, key};
use proxflow_schemas::provision::{ProvisionCommand, ProvisionOutcome};
use proxflow_schemas::remediation::HandOffResult;
use proxflow_schemas::workflow::WorkflowState;
use tokio_util::sync::CancellationToken;

/// `[orchestrator]`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Delivery settings of its consumers (requests and outcomes).
    pub consumer: ConsumerConfig,
}

/// Why the orchestrator stopped.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The workflow bucket is missing.
    #[error(transparent)]
    Store(#[from] WorkflowStoreError),
    /// The admissions bucket is missing.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// A consumer or the remediation engine failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// What the orchestrator works with.
#[derive(Debug, Clone)]
pub struct Orchestration {
    /// Delivery settings of its consumers.
    pub consumer: ConsumerConfig,
    /// Provision profiles and their caps.
    pub profiles: Profiles,
    /// Clusters and their scale-out settings (`[capacity.clusters]`).
    pub clusters: Clusters,
    /// `[remediation]`: rate limit, breaker, consumer.
    pub remediation: RemediationConfig,
    /// The remediation rules (loaded and validated before start).
    pub rules: Rules,
}

impl Orchestration {
    /// The default cluster and remediation settings, no remediation rules.
    pub fn new(consumer: ConsumerConfig, profiles: Profiles) -> Self {
        Self {
            consumer,
            profiles,
            clusters: Clusters::default(),
            remediation: RemediationConfig::default(),
            rules: Rules::default(),
        }
    }
}

/// Runs the orchestrator until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    o: Orchestration,
    shutdown: CancellationToken,
) -> Result<(), OrchestratorError> {
    let store = WorkflowStore::open(&ctx.bus.js).await?;
    let admissions = Admissions::open(&ctx.bus.js).await?;
    let slots = Slots {
        admissions: admissions.clone(),
        scale_out: o.clusters.names().map(key::scale_out).collect(),
    };
    let cooldowns = ctx
        .bus
        .js
        .get_key_value(bucket::COOLDOWNS)
        .await
        .map_err(|e| AdmissionError::Open(format!("{}: {e}", bucket::COOLDOWNS)))?;
    let admission = admit::ProvisionAdmission {
        store: store.clone(),
        admissions: admissions.clone(),
        slots: slots.clone(),
        profiles: o.profiles.clone(),
        publisher: ctx.bus.publisher.clone(),
        clock: ctx.clock.clone(),
    };
    let admit = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_PROVISION),
        o.consumer.clone(),
        admission.clone(),
    );
    let release = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_OUTCOMES),
        o.consumer.clone(),
        Release {
            slots: slots.clone(),
            store: store.clone(),
            publisher: ctx.bus.publisher.clone(),
            clock: ctx.clock.clone(),
        },
    );
    let given_up = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_GIVEN_UP),
        o.consumer.clone(),
        GivenUp {
            store: store.clone(),
            slots,
            publisher: ctx.bus.publisher.clone(),
            clock: ctx.clock.clone(),
        },
    );
    let scale_out_handler = |store: WorkflowStore| scaleout::ScaleOut {
        js: ctx.bus.js.clone(),
        store,
        admissions: admissions.clone(),
        provisions: admission.clone(),
        cooldowns: cooldowns.clone(),
        publisher: ctx.bus.publisher.clone(),
        profiles: o.profiles.clone(),
        clusters: o.clusters.clone(),
        clock: ctx.clock.clone(),
    };
    let scale_out = ConsumerLoop::<proxflow_schemas::capacity::CapacityExceeded, _>::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_SCALE_OUT),
        o.consumer.clone(),
        scale_out_handler(store.clone()),
    );
    let scale_out_requested = ConsumerLoop::<proxflow_schemas::capacity::ScaleOutRequested, _>::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_SCALE_OUT_REQUESTED),
        o.consumer.clone(),
        scale_out_handler(store),
    );
    let remediation =
        remediation::run_engine(ctx.clone(), o.remediation, o.rules, shutdown.clone());
    let mut tasks = Tasks::new(&ctx, &shutdown);
    tasks.spawn("provision requests", admit.run(tasks.shutdown()));
    tasks.spawn("provision outcomes", release.run(tasks.shutdown()));
    tasks.spawn("given-up provisions", given_up.run(tasks.shutdown()));
    tasks.spawn("capacity exceeded", scale_out.run(tasks.shutdown()));
    tasks.spawn(
        "scale-out requests",
        scale_out_requested.run(tasks.shutdown()),
    );
    tasks.spawn("remediation", remediation);
    Ok(tasks.join().await?)
}

/// The slots a workflow may hold: its profile's provision slot and, for a scale-out's provision,
/// its cluster's scale-out slot. Freed together whenever a provision ends, however it ends.
#[derive(Clone)]
pub(crate) struct Slots {
    admissions: Admissions,
    scale_out: Vec<String>,
}

impl Slots {
    pub(crate) async fn free(
        &self,
        profile: &str,
        workflow_id: &str,
    ) -> Result<(), AdmissionError> {
        self.admissions
            .finish(&key::provision_ledger(profile), workflow_id)
            .await?;
        for key in &self.scale_out {
            self.admissions.finish(key, workflow_id).await?;
        }
        Ok(())
    }
}

struct Release {
    slots: Slots,
    store: WorkflowStore,
    publisher: Publisher,
    clock: SharedClock,
}

impl Handler<ProvisionOutcome> for Release {
    async fn handle(&self, delivery: Delivery<ProvisionOutcome>) -> Outcome {
        let outcome = delivery.message;
        if let Err(e) = self
            .slots
            .free(&outcome.profile, &outcome.workflow_id)
            .await
        {
            return Outcome::retry(e.to_string());
        }
        let (result, detail) = match &outcome.error {
            None => (
                HandOffResult::Succeeded,
                format!(
                    "node {} provisioned (VMID {})",
                    outcome.name,
                    outcome.vmid.map_or("-".into(), |v| v.to_string())
                ),
            ),
            Some(e) => (
                HandOffResult::Failed,
                format!("provisioning node {} failed: {e}", outcome.name),
            ),
        };
        provision_ended(
            &self.store,
            &self.publisher,
            &outcome.workflow_id,
            result,
            &detail,
            self.clock.now(),
        )
        .await
    }
}

/// A provision ended: when a scale-out an alert asked for dispatched it, the asking remediation
/// hears how its scale-out ended.
async fn provision_ended(
    store: &WorkflowStore,
    publisher: &Publisher,
    provision: &str,
    result: HandOffResult,
    detail: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Outcome {
    let Some(scale_out) = scaleout::of_provision(provision) else {
        return Outcome::Ack;
    };
    match store.get(scale_out).await {
        Ok(Some((record, _))) => {
            match scaleout::tell_requester(publisher, &record, result, detail, at).await {
                Ok(()) => Outcome::Ack,
                Err(retry) => retry,
            }
        }
        Ok(None) => Outcome::Ack,
        Err(e) => Outcome::retry(e.to_string()),
    }
}

/// A provision command the provisioner dead-lettered (its handler could not even record an outcome,
/// e.g. the workflow store was unreachable through every retry): the workflow ends `failed` with the
/// dead letter's reason, so it neither shows `running` forever nor holds its cap slot.
struct GivenUp {
    store: WorkflowStore,
    slots: Slots,
    publisher: Publisher,
    clock: SharedClock,
}

impl Handler<DeadLetter> for GivenUp {
    async fn handle(&self, delivery: Delivery<DeadLetter>) -> Outcome {
        let letter = delivery.message;
        let command: ProvisionCommand = match serde_json::from_str(&letter.payload) {
            Ok(c) => c,
            Err(e) => {
                return Outcome::poison(format!("dead letter without a provision command: {e}"));
            }
        };
        let reason = format!(
            "the provisioner gave up after {} deliveries: {}",
            letter.deliveries, letter.detail
        );
        let ended = self
            .store
            .update(&command.workflow_id, |r| {
                if !r.state.is_terminal() {
                    r.state = WorkflowState::Failed;
                    r.error = Some(reason.clone());
                }
            })
            .await;
        match ended {
            Ok(_) | Err(WorkflowStoreError::NotFound(_)) => {}
            Err(e) => return Outcome::retry(e.to_string()),
        }
        if let Err(e) = self
            .slots
            .free(&command.request.profile, &command.workflow_id)
            .await
        {
            return Outcome::retry(e.to_string());
        }
        provision_ended(
            &self.store,
            &self.publisher,
            &command.workflow_id,
            HandOffResult::Failed,
            &reason,
            self.clock.now(),
        )
        .await
    }
}
