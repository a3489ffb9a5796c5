//! The snapshotter service: every `snapshot.interval` it evaluates each policy on each of its
//! targets ([`crate::pass`]), it answers pre-change requests on
//! [`subject::RPC_SNAPSHOTTER_PRECHANGE`] ([`crate::prechange`]), and it applies the retention on a
//! pool when a remediation asks (`pf.cmd.snapshotter.prune`, durable [`durable::SNAPSHOTTER_PRUNE`],
//! [`crate::prune`]). This module holds the service's state and [`run`], which wires those tasks
//! together.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use proxflow_pve::PveClient;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::config::ConfigError;
use proxflow_runtime::lease::{self, LeaseError, Leases};
use proxflow_runtime::schedule::Schedule;
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

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The locks bucket is missing.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A policy does not resolve (validation should have caught it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The prune-request consumer failed.
    #[error("prune requests: {0}")]
    Consume(String),
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
    /// Builds the service over `ctx`'s bus; `pve` serves VM targets.
    pub async fn new(
        ctx: &ServiceContext,
        config: SnapshotConfig,
        pve: Option<PveClient>,
        clock: SharedClock,
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
            clock,
            publisher: ctx.bus.publisher.clone(),
            leases: Leases::open(&ctx.bus.js).await?,
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
    config: SnapshotConfig,
    pve: Option<PveClient>,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let interval = config.interval;
    let snapshotter = Arc::new(Snapshotter::new(&ctx, config, pve, clock).await?);
    let rpc = tokio::spawn(snapshotter.clone().serve_prechange(
        ctx.bus.client.clone(),
        ctx.health.clone(),
        shutdown.clone(),
    ));
    // One request at a time, each a short pass over one pool: the default delivery settings fit.
    let prune = tokio::spawn(
        ConsumerLoop::new(
            ctx.clone(),
            ConsumerSpec::from(consumer::SNAPSHOTTER_PRUNE),
            proxflow_runtime::config::ConsumerConfig::default(),
            PruneOnRequest {
                snapshotter: snapshotter.clone(),
            },
        )
        .run(shutdown.clone()),
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            report = snapshotter.pass() => {
                let errors = report.errors.len()
                    + report.targets.iter().map(|t| t.errors.len()).sum::<usize>();
                tracing::debug!(targets = report.targets.len(), errors, "snapshot pass done");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    match prune.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServiceError::Consume(e.to_string())),
        Err(e) => tracing::error!(error = %e, "prune consumer panicked"),
    }
    match rpc.await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "pre-change responder panicked");
            Ok(())
        }
    }
}
