//! # proxflow-remediator
//!
//! The remediator service: runs the work orders the orchestrator's remediation engine sends
//! (`pf.cmd.remediator.act`) — restart or snapshot a VM, notify a webhook, run a command, or hand
//! the work to the service that owns it — and reports each outcome (`pf.evt.remediation.outcome`),
//! which feeds the rule's circuit breaker.
//!
//! ## Layout
//! - [`executor`] — the handler: adopts the target's lease, acts, reports.

pub mod executor;

use proxflow_pve::PveClient;
use proxflow_remediation::RemediationConfig;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::ConsumerLoop;
use proxflow_runtime::bus::consume::ConsumeError;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::lease::Leases;
use proxflow_runtime::workflow::WorkflowStore;
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
}

fn open_err(e: impl std::fmt::Display) -> RemediatorError {
    RemediatorError::Open(e.to_string())
}

/// Runs work orders until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    config: RemediationConfig,
    pve: PveClient,
    shutdown: CancellationToken,
) -> Result<(), RemediatorError> {
    let act = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::REMEDIATOR),
        config.consumer,
        executor::Remediator {
            pve,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(open_err)?,
            leases: Leases::open(&ctx.bus.js).await.map_err(open_err)?,
            store: WorkflowStore::open(&ctx.bus.js).await.map_err(open_err)?,
            publisher: ctx.bus.publisher.clone(),
        },
    );
    act.run(shutdown).await?;
    Ok(())
}
