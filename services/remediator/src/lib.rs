//! # proxflow-remediator
//!
//! The remediator service: runs the `remediate` workflows the orchestrator's remediation decisions
//! start — restart or snapshot a VM, notify a webhook, run a command, or hand the work to the
//! service that owns it and wait for its outcome — and reports each outcome
//! (`pf.evt.remediation.outcome`), which feeds the rule's circuit breaker.
//!
//! ## Layout
//! - [`executor`] — the `remediate` workflow definition and the hand-off outcome consumer.

pub mod executor;

use proxflow_platform::RemediationConfig;
use proxflow_pve::PveClient;
use proxflow_runtime::bus::ConsumerLoop;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::workflow::Engine;
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::names::consumer;
use tokio_util::sync::CancellationToken;

/// Why the remediator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemediatorError {
    /// A bucket is missing, KV failed or the HTTP client could not be built at start.
    #[error("remediator start-up: {0}")]
    Open(String),
    /// The work-order consumer failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Everything the remediator needs beyond the [`ServiceContext`].
#[derive(Debug, Clone)]
pub struct RemediatorSettings {
    /// `[remediation]` (its consumer settings).
    pub config: RemediationConfig,
    /// The Proxmox it acts on.
    pub pve: PveClient,
}

fn open_err(e: impl std::fmt::Display) -> RemediatorError {
    RemediatorError::Open(e.to_string())
}

/// How long a remediation waits for the owner of a handed-off action (a replication run of a
/// large dataset takes hours) before it ends `failed`.
const HAND_OFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Runs `remediate` workflows and ends them on hand-off outcomes until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    settings: RemediatorSettings,
    shutdown: CancellationToken,
) -> Result<(), RemediatorError> {
    let RemediatorSettings { config, pve } = settings;
    let mut engine = Engine::new(&ctx).await.map_err(open_err)?;
    engine.register(executor::Remediate {
        pve,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(open_err)?,
        leases: ctx.leases.clone(),
        publisher: ctx.bus.publisher.clone(),
        hand_off_timeout: HAND_OFF_TIMEOUT,
    });
    let hand_offs = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::REMEDIATOR_HANDOFFS),
        config.consumer.clone(),
        executor::HandOffs {
            engine: engine.clone(),
        },
    );
    let mut tasks = Tasks::new(&ctx, &shutdown);
    engine.spawn(&ctx, &config.consumer, &mut tasks);
    tasks.spawn("hand-off outcomes", hand_offs.run(tasks.shutdown()));
    for (spec, owner) in [
        (consumer::REMEDIATOR_GIVEN_UP_REPLICATION, "replication"),
        (consumer::REMEDIATOR_GIVEN_UP_PRUNE, "prune"),
        (consumer::REMEDIATOR_GIVEN_UP_SCALE_OUT, "scale_out"),
    ] {
        let given_up = ConsumerLoop::new(
            ctx.clone(),
            ConsumerSpec::from(spec),
            config.consumer.clone(),
            executor::GivenUp {
                engine: engine.clone(),
                owner,
            },
        );
        tasks.spawn(
            format!("{owner} requests given up"),
            given_up.run(tasks.shutdown()),
        );
    }
    Ok(tasks.join().await?)
}
