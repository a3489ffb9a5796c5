//! The snapshotter service: every `snapshot.interval` it evaluates each policy on each of its
//! targets ([`crate::pass`]), it answers pre-change requests on
//! [`subject::RPC_SNAPSHOTTER_PRECHANGE`] ([`crate::prechange`]), and it applies the retention on a
//! pool when a remediation asks (`pf.cmd.snapshotter.prune`, durable [`durable::SNAPSHOTTER_PRUNE`],
//! [`crate::prune`]). This module holds the service's state and [`run`], which wires those tasks
//! together.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use proxflow_pve::PveClient;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::config::ConfigError;
use proxflow_runtime::lease::{self, Leases};
use proxflow_runtime::schedule::{self, Schedule};
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::names::consumer;
use tokio_util::sync::CancellationToken;

use crate::config::{PolicyConfig, SnapshotConfig};
use crate::metrics::SnapshotMetrics;
use crate::plan::Rules;
use crate::prune::PruneOnRequest;
use crate::target::Backends;

// The paths other crates and the tests import from here, from before the service was split.
pub use crate::pass::{PassReport, TargetPlan, TargetReport, plan_all, render_plans};
pub use crate::prechange::{QUEUE_GROUP, RequestError, request_prechange};

/// Everything the snapshotter needs beyond the [`ServiceContext`].
#[derive(Debug, Clone)]
pub struct SnapshotterSettings {
    /// `[snapshot]`.
    pub config: SnapshotConfig,
    /// Serves VM targets and pre-change requests naming a VM.
    pub pve: Option<PveClient>,
}

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A policy does not resolve (validation should have caught it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// One of its tasks (pass loop, pre-change responder, prune requests) failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The pre-change subject could not be subscribed.
    #[error("subscribing to {subject}: {reason}")]
    Subscribe {
        /// The subject.
        subject: &'static str,
        /// The client's error.
        reason: String,
    },
}

/// The service's state.
pub struct Snapshotter {
    pub(crate) config: SnapshotConfig,
    pub(crate) policies: Vec<(PolicyConfig, Rules)>,
    pub(crate) check_schedule: Schedule,
    pub(crate) backends: Backends,
    pub(crate) clock: SharedClock,
    pub(crate) publisher: Publisher,
    pub(crate) leases: Leases,
    pub(crate) holder: String,
    pub(crate) metrics: SnapshotMetrics,
    pub(crate) last_check: Mutex<Option<DateTime<Utc>>>,
}

impl Snapshotter {
    /// Builds the service over `ctx`'s bus and clock; `pve` serves VM targets.
    pub fn new(
        ctx: &ServiceContext,
        config: SnapshotConfig,
        pve: Option<PveClient>,
    ) -> Result<Self, ServiceError> {
        let policies = config
            .policies
            .iter()
            .map(|p| config.rules(p).map(|r| (p.clone(), r)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            check_schedule: config.check_schedule()?,
            policies,
            backends: Backends::from_config(&config, pve),
            clock: ctx.clock.clone(),
            publisher: ctx.bus.publisher.clone(),
            leases: ctx.leases.clone(),
            holder: lease::holder_id("snapshotter"),
            metrics: SnapshotMetrics::register(&ctx.metrics),
            last_check: Mutex::new(None),
            config,
        })
    }

    /// The systems it snapshots.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }
}

/// Runs the snapshotter until `shutdown`: a pass every `snapshot.interval`, pre-change and prune
/// requests answered meanwhile.
pub async fn run(
    ctx: ServiceContext,
    settings: SnapshotterSettings,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let interval = settings.config.interval;
    let snapshotter = Arc::new(Snapshotter::new(&ctx, settings.config, settings.pve)?);
    let mut tasks = Tasks::new(&ctx, &shutdown);
    tasks.spawn(
        "pre-change responder",
        snapshotter.clone().serve_prechange(
            ctx.bus.client.clone(),
            ctx.health.clone(),
            tasks.shutdown(),
        ),
    );
    // One request at a time, each a short pass over one pool: the default delivery settings fit.
    tasks.spawn(
        "prune requests",
        ConsumerLoop::new(
            ctx.clone(),
            ConsumerSpec::from(consumer::SNAPSHOTTER_PRUNE),
            proxflow_runtime::config::ConsumerConfig::default(),
            PruneOnRequest {
                snapshotter: snapshotter.clone(),
            },
        )
        .run(tasks.shutdown()),
    );
    let stop = tasks.shutdown();
    tasks.spawn("scheduled passes", async move {
        schedule::every(interval, &stop, ctx.shutdown_grace, || async {
            let report = snapshotter.pass().await;
            let errors =
                report.errors.len() + report.targets.iter().map(|t| t.errors.len()).sum::<usize>();
            tracing::debug!(targets = report.targets.len(), errors, "snapshot pass done");
        })
        .await;
        Ok::<(), ServiceError>(())
    });
    Ok(tasks.join().await?)
}
