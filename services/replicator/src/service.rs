//! The replicator service: runs each job when its schedule says (and once at start, to catch up),
//! retrying a failed job after `replication.retry_after` ([`crate::job`]), and on request
//! (`pf.cmd.replicator.run`, durable [`durable::REPLICATOR_RUN`], [`crate::request`]). This module holds the
//! service's state and [`run`], which wires the scheduled loop and the request consumer together;
//! one replication run is [`crate::run`](mod@crate::run).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::config::ConfigError;
use proxflow_runtime::lease::{self, LeaseError, Leases};
use proxflow_schemas::names;
use proxflow_zfs::Zfs;
use tokio_util::sync::CancellationToken;

use crate::config::ReplicationConfig;
use crate::job::{Job, JobState};
use crate::metrics::ReplicationMetrics;
use crate::request::OnDemand;

// The paths other crates and the tests import from here, from before the service was split.
pub use crate::job::JobError;
pub use crate::run::{RunControl, RunReport};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The locks bucket is missing.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A job does not resolve.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The on-demand consumer failed.
    #[error("on-demand runs: {0}")]
    Consume(String),
}

/// The service's state.
pub struct Replicator {
    pub(crate) config: ReplicationConfig,
    pub(crate) jobs: Vec<Job>,
    pub(crate) clock: SharedClock,
    pub(crate) publisher: Publisher,
    pub(crate) leases: Leases,
    pub(crate) holder: String,
    pub(crate) metrics: ReplicationMetrics,
    state: Mutex<BTreeMap<String, JobState>>,
}

impl Replicator {
    /// Builds the service over `ctx`'s bus.
    pub async fn new(
        ctx: &ServiceContext,
        config: ReplicationConfig,
        clock: SharedClock,
    ) -> Result<Self, ServiceError> {
        let jobs = config
            .jobs
            .iter()
            .map(|j| {
                let (schedule, tz) = j.schedule()?;
                Ok(Job {
                    source: Zfs::new(j.source_command.clone(), j.command_timeout),
                    target: Zfs::new(j.target_command.clone(), j.command_timeout),
                    config: j.clone(),
                    schedule,
                    tz,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Self {
            jobs,
            clock,
            publisher: ctx.bus.publisher.clone(),
            leases: Leases::open(&ctx.bus.js).await?,
            holder: lease::holder_id("replicator"),
            metrics: ReplicationMetrics::register(&ctx.metrics),
            state: Mutex::new(BTreeMap::new()),
            config,
        })
    }

    /// The per-job state; a poisoned lock is taken over (the state is only bookkeeping).
    pub(crate) fn state(&self) -> MutexGuard<'_, BTreeMap<String, JobState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn failed_metric(&self, job: &str, reason: &str) {
        self.metrics.failures.inc([job, reason]);
    }
}

/// Runs the replicator until `shutdown`: every job on its schedule, and on request.
pub async fn run(
    ctx: ServiceContext,
    config: ReplicationConfig,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let interval = config.interval;
    // One request at a time, each a whole run: the default delivery settings fit.
    let consumer = proxflow_runtime::config::ConsumerConfig::default();
    let replicator = Arc::new(Replicator::new(&ctx, config, clock).await?);
    let on_demand = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(names::consumer::REPLICATOR_RUN),
        consumer,
        OnDemand {
            replicator: replicator.clone(),
            shutdown: shutdown.clone(),
        },
    );
    ctx.health.set("replicator", true);
    let scheduled = async {
        loop {
            for (job, result) in replicator.pass(&shutdown).await {
                if let Err(e) = result {
                    tracing::warn!(job = %job, error = %e, "replication run failed; retried later");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        Ok::<(), ServiceError>(())
    };
    let (scheduled, requested) = tokio::join!(scheduled, on_demand.run(shutdown.clone()));
    scheduled?;
    requested.map_err(|e| ServiceError::Consume(e.to_string()))
}
