//! # proxflow-capacity
//!
//! Watches the Proxmox host and its k3s clusters and says, with evidence, when utilisation has been
//! too high for too long. It polls Proxmox on an interval (node status, cluster resources, the VM
//! list, storages, ZFS pools), computes per host CPU busy, memory use, memory commitment (Σ max
//! memory of running VMs over physical memory, and its balloon-aware floor), the vCPU : logical CPU
//! ratio, storage and pool use, and per k3s cluster (VMs carrying its tag) the average and highest
//! CPU and memory use of its nodes. Every figure is a Prometheus gauge and every poll a
//! `capacity.sample` event. A sustained-threshold detector per metric publishes
//! `capacity.exceeded` (70 % for 15 minutes by default) and `capacity.recovered` (below 60 %);
//! the orchestrator turns a cluster's `capacity.exceeded` into a guarded scale-out.
//!
//! ## Layout
//! - [`config`] — `[capacity]`: interval, rules per metric kind, clusters and their scale-out settings
//!   (the cluster types are [`proxflow_platform`]'s).
//! - [`compute`] — Proxmox responses to a [`proxflow_schemas::capacity::CapacitySample`] (pure).
//! - [`detector`] — the sustained-threshold state machine (pure, persisted as is).
//! - [`monitor`] — one poll: fetch, compute, gauges, events, detector state in KV.
//! - [`gauges`] — the `proxflow_capacity_*` metrics.
//! - [`flow`] — the `capacity_review` workflow (compute → write → announce), registered here.
//! - [`review`] — the monthly capacity review: trends, days to threshold, commitment, growth,
//!   snapshot space (pure), and what it reads ([`review::collect`]).

pub mod compute;
pub mod config;
pub mod detector;
pub mod flow;
pub mod gauges;
pub mod monitor;
pub mod review;

use proxflow_pve::PveClient;
use proxflow_runtime::config::ConsumerConfig;
use proxflow_runtime::workflow::scheduled::Scheduler;
use proxflow_runtime::workflow::{Engine, EngineError};
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use tokio_util::sync::CancellationToken;

pub use config::{CapacityConfig, ReviewConfig, Rule};
pub use monitor::{Monitor, MonitorError, PollReport};
/// The workflow kind of a capacity review (its input is
/// [`proxflow_schemas::capacity_review::CapacityReviewInput`]).
pub use proxflow_schemas::capacity_review::KIND as REVIEW_KIND;

/// Everything the capacity service needs beyond the [`ServiceContext`].
#[derive(Debug, Clone)]
pub struct CapacitySettings {
    /// `[capacity]`.
    pub config: CapacityConfig,
    /// The Proxmox it watches.
    pub pve: PveClient,
    /// zfs of the reviewed datasets (`snapshot.zfs_command`).
    pub zfs: proxflow_zfs::Zfs,
    /// The snapshot name prefix (`snapshot.prefix`), by which reviews group snapshot space.
    pub snapshot_prefix: String,
}

/// Why the capacity service stopped.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// The state bucket is missing.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The poll loop failed (the bus or the state bucket).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The workflow engine could not open its bucket.
    #[error("capacity review workflows")]
    Engine(#[from] EngineError),
    /// `[capacity.review]`'s schedule does not hold (checked at load; kept total here).
    #[error("capacity.review: {0}")]
    Config(String),
}

/// Polls every `config.interval`, runs the `capacity_review` workflows and starts one at every
/// `capacity.review.schedule` slot, until `shutdown`. A failed poll is logged and counted (and
/// breaks every running window); only the bus or the state bucket failing stops the service.
pub async fn run(
    ctx: ServiceContext,
    settings: CapacitySettings,
    shutdown: CancellationToken,
) -> Result<(), CapacityError> {
    let mut interval = tokio::time::interval(settings.config.interval);
    // A late tick is taken once, not in a burst: a burst of polls would only repeat one reading.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let review_job = settings
        .config
        .review
        .job()
        .map_err(|e| CapacityError::Config(e.to_string()))?;
    let settings_review_window = settings.config.review.window;
    let mut engine = Engine::new(&ctx).await?;
    engine.register(flow::CapacityReviewFlow {
        sources: review::Sources {
            js: ctx.bus.js.clone(),
            pve: settings.pve.clone(),
            zfs: settings.zfs,
            snapshot_prefix: settings.snapshot_prefix,
        },
        config: settings.config.clone(),
        publisher: ctx.bus.publisher.clone(),
        clock: ctx.clock.clone(),
    });
    let mut monitor = Monitor::new(&ctx, settings.config, settings.pve).await?;
    ctx.health.set("capacity", true);
    let mut tasks = Tasks::new(&ctx, &shutdown);
    // Reviews are started by the schedule (the window ending at each slot) or an operator; this
    // engine advances them.
    engine.spawn(&ctx, &ConsumerConfig::default(), &mut tasks);
    let window = chrono::Duration::from_std(settings_review_window).unwrap_or_default();
    let scheduler =
        Scheduler::new(engine.clone(), ctx.clock.clone()).job(review_job, move |slot| {
            serde_json::to_value(proxflow_schemas::capacity_review::CapacityReviewInput {
                from: slot - window,
                to: slot,
            })
            .unwrap_or_default()
        });
    tasks.spawn("capacity review schedule", scheduler.run(tasks.shutdown()));
    let stop = tasks.shutdown();
    tasks.spawn("polls", async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok::<(), MonitorError>(()),
                _ = interval.tick() => {}
            }
            let report = monitor.poll().await?;
            tracing::debug!(
                failed = report.failed.is_some(),
                exceeded = report.exceeded.len(),
                recovered = report.recovered.len(),
                "capacity poll"
            );
        }
    });
    Ok(tasks.join().await?)
}
