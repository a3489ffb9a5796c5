//! # proxflow-lifecycle
//!
//! The platform's lifecycle jobs, each a workflow on the engine started by the shared calendar
//! ([`proxflow_runtime::workflow::scheduled`]) or by hand (`proxflow export run`):
//! - the weekly host-config export ([`export`]): the Proxmox configuration, ZFS properties and host
//!   files as a deterministic bundle with a manifest and a `REBUILD.md`, written into a dataset
//!   that replication carries offsite, diffed week to week;
//! - the quarterly restore drill ([`drill`]);
//! - disk and pool health ([`health`]): a daily check, a quarterly audit, a monthly scrub.
//!
//! ## Layout
//! - [`config`] — `[export]`, `[drill]`.
//! - [`bundle`] — writing, reading, verifying and comparing bundles (also `proxflow export
//!   verify|diff`).
//! - [`export`] — the `config_export` workflow: [`export::collect`], [`export::normalize`],
//!   [`export::rebuild`].
//! - [`drill`] — the `restore_drill` workflow: [`drill::datasets`] (lineage, guid, RPO, files via
//!   clones), [`drill::files`], [`drill::bundle`], [`drill::restore`], [`drill::report`].
//! - [`health`] — disk and pool health: the `disk_health` workflow (daily check, quarterly audit)
//!   and `pool_scrub` ([`health::scrub`]); [`health::config`] (`[health]`), [`health::judge`]
//!   (findings), [`health::metrics`] (the gauges the shipped alerts read).

pub mod bundle;
pub mod config;
pub mod drill;
pub mod export;
pub mod health;

use std::sync::Arc;

use proxflow_pve::PveClient;
use proxflow_runtime::ops::GaugeFamily;
use proxflow_runtime::workflow::Engine;
use proxflow_runtime::workflow::scheduled::Scheduler;
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::health::{CheckMode, HealthInput, ScrubInput};
use proxflow_schemas::lifecycle::JobInput;
use proxflow_zfs::Zfs;
use tokio_util::sync::CancellationToken;

pub use config::{DrillConfig, ExportConfig};
pub use drill::datasets::DrillTarget;
pub use health::HealthConfig;

/// Why the lifecycle service stopped.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The engine or the configuration could not be opened.
    #[error("lifecycle start-up: {0}")]
    Open(String),
    /// A task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Everything the lifecycle service needs beyond the [`ServiceContext`].
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// `[export]`.
    pub export: ExportConfig,
    /// `[drill]`.
    pub drill: DrillConfig,
    /// `[health]`.
    pub health: HealthConfig,
    /// The replication jobs the drill checks (from `[[replication.jobs]]` and `drill.jobs`).
    pub drill_targets: Vec<DrillTarget>,
    /// The Proxmox host.
    pub pve: PveClient,
}

fn open_err(e: impl std::fmt::Display) -> LifecycleError {
    LifecycleError::Open(e.to_string())
}

/// What a scheduled run gets.
fn scheduled_input() -> serde_json::Value {
    serde_json::to_value(JobInput {
        dry_run: false,
        requested_by: "schedule".to_owned(),
    })
    .unwrap_or_default()
}

/// Sets `gauge` to when the newest run of `kind` succeeded (0: none on record): a restart must
/// not make an alert on its age forget (or invent) a success — the drill's 100-day alert, the
/// health check's staleness.
async fn restore_newest_success(engine: &Engine, kind: &str, gauge: &GaugeFamily<0>) {
    match engine
        .list(
            kind,
            proxflow_schemas::workflow::WorkflowState::Succeeded,
            None,
        )
        .await
    {
        Ok(passed) => {
            let newest = passed.iter().map(|e| e.updated_at).max();
            let at = newest.map_or(0.0, |t| t.timestamp() as f64);
            gauge.set([], at);
        }
        Err(e) => tracing::warn!(kind, error = %e, "could not read the newest successful run"),
    }
}

/// What a scheduled health run gets.
fn health_input(mode: CheckMode) -> serde_json::Value {
    serde_json::to_value(HealthInput {
        mode,
        requested_by: "schedule".to_owned(),
    })
    .unwrap_or_default()
}

/// What a scheduled scrub gets: every configured pool.
fn scrub_input() -> serde_json::Value {
    serde_json::to_value(ScrubInput {
        pools: Vec::new(),
        requested_by: "schedule".to_owned(),
    })
    .unwrap_or_default()
}

/// Runs the lifecycle workflows and their schedules until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    settings: LifecycleSettings,
    shutdown: CancellationToken,
) -> Result<(), LifecycleError> {
    let LifecycleSettings {
        export,
        drill,
        health,
        drill_targets,
        pve,
    } = settings;
    let mut engine = Engine::new(&ctx).await.map_err(open_err)?;
    let mut scheduler = Scheduler::new(engine.clone(), ctx.clock.clone());
    if export.enabled() {
        let zfs = Zfs::new(export.zfs_command.clone(), export.zfs_timeout);
        let exporter = export::Exporter {
            collector: export::collect::Collector {
                pve: pve.clone(),
                zfs: zfs.clone(),
                config: export.clone(),
            },
            config: export.clone(),
            zfs,
            publisher: ctx.bus.publisher.clone(),
            metrics: export::ExportMetrics::register(&ctx.metrics),
        };
        engine.register(export::ConfigExport {
            exporter: Arc::new(exporter),
        });
        scheduler = scheduler.job(export.job().map_err(open_err)?, |_| scheduled_input());
    }
    // Registered even when not scheduled: `proxflow drill run` runs one by hand.
    let metrics = drill::DrillMetrics::register(&ctx.metrics);
    restore_newest_success(&engine, drill::KIND, &metrics.last_pass).await;
    let schedule_drill = drill.enabled && !drill_targets.is_empty();
    let driller = drill::Driller {
        targets: drill_targets,
        config: drill.clone(),
        pve: pve.clone(),
        export_dataset: export.dataset().map(str::to_owned),
        publisher: ctx.bus.publisher.clone(),
        metrics,
    };
    engine.register(drill::RestoreDrill {
        driller: Arc::new(driller),
    });
    if schedule_drill {
        scheduler = scheduler.job(drill.job().map_err(open_err)?, |_| scheduled_input());
    }
    // Registered even when not scheduled: `proxflow health check` runs one by hand.
    let checker = Arc::new(health::HealthChecker {
        zfs: Zfs::new(health.zfs_command.clone(), health.zfs_timeout),
        config: health.clone(),
        pve,
        publisher: ctx.bus.publisher.clone(),
        metrics: health::HealthMetrics::register(&ctx.metrics),
    });
    restore_newest_success(&engine, health::KIND, &checker.metrics.last_check).await;
    engine.register(health::DiskHealth {
        checker: Arc::clone(&checker),
    });
    engine.register(health::scrub::PoolScrub { checker });
    if health.enabled {
        let [check, audit, scrub] = health.jobs().map_err(open_err)?;
        scheduler = scheduler
            .job(check, |_| health_input(CheckMode::Daily))
            .job(audit, |_| health_input(CheckMode::Audit))
            .job(scrub, |_| scrub_input());
    }
    let mut tasks = Tasks::new(&ctx, &shutdown);
    engine.spawn(&ctx, &export.consumer, &mut tasks);
    let stop = tasks.shutdown();
    tasks.spawn("lifecycle schedules", scheduler.run(stop));
    Ok(tasks.join().await?)
}
