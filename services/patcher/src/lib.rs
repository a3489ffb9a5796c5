//! # proxflow-patcher
//!
//! The patcher service: weekly security updates for the k3s node VMs and the Proxmox VE host, one
//! node at a time, in a maintenance window, gated on alerts, leases, replication and in-flight
//! workflows, with approval for major changes. Each run is one `patch_run` workflow on the
//! workflow engine: long, multi-node, resumable after a crash, waiting on gates, windows and
//! approvals.
//!
//! ## Layout
//! - [`config`] — `[patch]`.
//! - [`window`] — the weekly window in a time zone.
//! - [`classify`] — apt output → changes → minor or major.
//! - [`scan`] — scan → plan for the VMs (guest) and the host (Proxmox API).
//! - [`flow`] — the `patch_run` workflow: rounds, approvals, holds.
//! - [`node`] — one VM's steps, the gates and window before each target, failure handling.
//! - [`host`] — the host's steps, last.
//! - [`gate`] — the gates checked before each node.
//! - [`guest`] — commands in a VM (guest agent or a JSON-contract command).
//! - [`kube`] — cordon with an owner marker, drain, readiness, uncordon.
//! - [`schedule`] — starts a run when a window opens.

pub mod classify;
pub mod config;
pub mod flow;
pub mod gate;
pub mod guest;
mod host;
pub mod kube;
mod node;
mod ops;
mod scan;
pub mod schedule;
pub mod window;

use std::sync::Arc;

use proxflow_pve::PveClient;
use proxflow_runtime::workflow::Engine;
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::names::bucket;
use tokio_util::sync::CancellationToken;

pub use config::PatchConfig;
pub use flow::{RunReport, decision_signal};
/// The workflow kind of a patch run.
pub use proxflow_schemas::patch::KIND;

/// Why the patcher stopped.
#[derive(Debug, thiserror::Error)]
pub enum PatcherError {
    /// A bucket is missing, the configuration does not hold, or a client could not be built.
    #[error("patcher start-up: {0}")]
    Open(String),
    /// A task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Everything the patcher needs beyond the [`ServiceContext`].
#[derive(Debug, Clone)]
pub struct PatcherSettings {
    /// `[patch]`.
    pub config: PatchConfig,
    /// The Proxmox it patches.
    pub pve: PveClient,
    /// Whether replication jobs are configured (the RPO gate judges them).
    pub replication: bool,
}

fn open_err(e: impl std::fmt::Display) -> PatcherError {
    PatcherError::Open(e.to_string())
}

/// Runs patch workflows, and starts one when a window opens, until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    settings: PatcherSettings,
    shutdown: CancellationToken,
) -> Result<(), PatcherError> {
    let PatcherSettings {
        config,
        pve,
        replication,
    } = settings;
    let window = config.window.checked().map_err(open_err)?;
    let mut engine = Engine::new(&ctx).await.map_err(open_err)?;
    let kv = ctx
        .bus
        .js
        .get_key_value(bucket::PATCH)
        .await
        .map_err(open_err)?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(open_err)?;
    let ops = ops::Ops {
        window: window.clone(),
        guest: guest::Guest {
            pve: pve.clone(),
            config: config.guest.clone(),
        },
        kube: kube::Kubectl {
            config: config.kubectl.clone(),
        },
        gates: gate::Gates {
            config: config.gate.clone(),
            http,
            leases: ctx.leases.clone(),
            engine: engine.clone(),
            js: ctx.bus.js.clone(),
            replication,
        },
        pve,
        publisher: ctx.bus.publisher.clone(),
        nats: ctx.bus.client.clone(),
        kv,
        clock: ctx.clock.clone(),
        metrics: ops::PatchMetrics::register(&ctx.metrics),
        config: config.clone(),
    };
    engine.register(flow::PatchRun { ops: Arc::new(ops) });
    let mut tasks = Tasks::new(&ctx, &shutdown);
    engine.spawn(&ctx, &config.consumer, &mut tasks);
    if config.enabled {
        let scheduler = schedule::Scheduler {
            engine: engine.clone(),
            window,
            clock: ctx.clock.clone(),
        };
        let stop = tasks.shutdown();
        tasks.spawn("patch window schedule", scheduler.run(stop));
    }
    Ok(tasks.join().await?)
}
