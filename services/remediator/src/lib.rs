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

use proxflow_pve::PveClient;
use proxflow_remediation::RemediationConfig;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::ConsumerLoop;
use proxflow_runtime::bus::consume::ConsumeError;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::clock;
use proxflow_runtime::lease::Leases;
use proxflow_runtime::workflow::{Engine, EngineError};
use proxflow_schemas::names::consumer;
use tokio_util::sync::CancellationToken;

/// Why the remediator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemediatorError {
    /// A bucket is missing, KV failed or the HTTP client could not be built at start.
    #[error("remediator start-up: {0}")]
    Open(String),
    /// A consumer failed.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// The workflow engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    config: RemediationConfig,
    pve: PveClient,
    shutdown: CancellationToken,
) -> Result<(), RemediatorError> {
    let mut engine = Engine::new(&ctx, clock::system()).await.map_err(open_err)?;
    engine.register(executor::Remediate {
        pve,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(open_err)?,
        leases: Leases::open(&ctx.bus.js).await.map_err(open_err)?,
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
    let (workflows, outcomes) = tokio::join!(
        engine.run(ctx.clone(), config.consumer, shutdown.clone()),
        hand_offs.run(shutdown)
    );
    workflows?;
    outcomes?;
    Ok(())
}
