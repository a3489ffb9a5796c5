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
use proxflow_runtime::bus::ConsumerLoop;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::names::{durable, stream, subject};
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

/// Runs work orders until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    settings: RemediatorSettings,
    shutdown: CancellationToken,
) -> Result<(), RemediatorError> {
    let RemediatorSettings { config, pve } = settings;
    let act = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec {
            stream: stream::CMD,
            durable: durable::REMEDIATOR.into(),
            filter_subject: subject::cmd("remediator", "act"),
        },
        config.consumer,
        executor::Remediator {
            pve,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(open_err)?,
            leases: ctx.leases.clone(),
            store: WorkflowStore::open(&ctx.bus.js).await.map_err(open_err)?,
            publisher: ctx.bus.publisher.clone(),
        },
    );
    let mut tasks = Tasks::new(&ctx, &shutdown);
    tasks.spawn("work orders", act.run(tasks.shutdown()));
    Ok(tasks.join().await?)
}
