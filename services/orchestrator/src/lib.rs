//! # proxflow-orchestrator
//!
//! Starts workflows. For provisioning it starts the `provision` workflow of each
//! `ProvisionRequested` from the gateway (`admit`); the provisioner runs it, its caps included.
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
use proxflow_runtime::workflow::{Engine, EngineError, WorkflowStore, WorkflowStoreError};
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::names::{bucket, consumer, key};
use proxflow_schemas::provision::ProvisionOutcome;
use proxflow_schemas::remediation::HandOffResult;
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
    /// The workflow bucket is missing (the engine that starts provisions).
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    // Starts provisions (the provisioner advances them); runs no definition itself.
    let provisions = admit::ProvisionStart {
        engine: Engine::new(&ctx).await?,
    };
    let admit = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_PROVISION),
        o.consumer.clone(),
        provisions.clone(),
    );
    let release = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_OUTCOMES),
        o.consumer.clone(),
        Release {
            slots,
            store,
            publisher: ctx.bus.publisher.clone(),
            clock: ctx.clock.clone(),
        },
    );
    let mut engine = Engine::new(&ctx).await?;
    engine.register(scaleout::ScaleOutFlow {
        admissions: admissions.clone(),
        cooldowns: scaleout::Cooldowns(cooldowns),
        provisions,
        publisher: ctx.bus.publisher.clone(),
        profiles: o.profiles.clone(),
        clusters: o.clusters.clone(),
        clock: ctx.clock.clone(),
    });
    let scale_out_handler = || scaleout::ScaleOut {
        js: ctx.bus.js.clone(),
        engine: engine.clone(),
        publisher: ctx.bus.publisher.clone(),
        clusters: o.clusters.clone(),
        clock: ctx.clock.clone(),
    };
    let scale_out = ConsumerLoop::<proxflow_schemas::capacity::CapacityExceeded, _>::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_SCALE_OUT),
        o.consumer.clone(),
        scale_out_handler(),
    );
    let scale_out_requested = ConsumerLoop::<proxflow_schemas::capacity::ScaleOutRequested, _>::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_SCALE_OUT_REQUESTED),
        o.consumer.clone(),
        scale_out_handler(),
    );
    let remediation =
        remediation::run_engine(ctx.clone(), o.remediation, o.rules, shutdown.clone());
    let mut tasks = Tasks::new(&ctx, &shutdown);
    tasks.spawn("provision requests", admit.run(tasks.shutdown()));
    tasks.spawn("provision outcomes", release.run(tasks.shutdown()));
    tasks.spawn("capacity exceeded", scale_out.run(tasks.shutdown()));
    tasks.spawn(
        "scale-out requests",
        scale_out_requested.run(tasks.shutdown()),
    );
    tasks.spawn("remediation", remediation);
    engine.spawn(&ctx, &o.consumer, &mut tasks);
    Ok(tasks.join().await?)
}

/// The cluster scale-out slots a provision may hold (a scale-out's provision holds its cluster's),
/// freed whenever a provision ends, however it ends. The provision frees its profile's slot itself.
#[derive(Clone)]
pub(crate) struct Slots {
    admissions: Admissions,
    scale_out: Vec<String>,
}

impl Slots {
    pub(crate) async fn free(&self, workflow_id: &str) -> Result<(), AdmissionError> {
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
        if let Err(e) = self.slots.free(&outcome.workflow_id).await {
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
