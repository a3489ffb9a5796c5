//! The replicator service: runs each job when its schedule says (and once at start, to catch up),
//! retrying a failed job after `replication.retry_after` ([`crate::job`]), and on request
//! (`pf.cmd.replicator.run`, durable [`durable::REPLICATOR_RUN`], [`crate::request`]). This module holds the
//! service's state and [`run`], which wires the scheduled loop and the request consumer together;
//! one replication run is [`crate::run`](mod@crate::run).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::config::ConfigError;
use proxflow_runtime::lease::{self, Leases};
use proxflow_runtime::schedule;
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
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

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A job does not resolve.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// One of its tasks (scheduled runs, on-demand runs) failed.
    #[error(transparent)]
    Task(#[from] TaskError),
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
    /// Builds the service over `ctx`'s bus and clock.
    pub fn new(ctx: &ServiceContext, config: ReplicationConfig) -> Result<Self, ServiceError> {
        // One handle per host (command prefix), which each job's handles derive from: a host's
        // capabilities are probed once for all the jobs that reach it, not once per job and side.
        let mut hosts: BTreeMap<Vec<String>, Zfs> = BTreeMap::new();
        let mut on_host = |prefix: &Vec<String>, timeout| {
            hosts
                .entry(prefix.clone())
                .or_insert_with(|| Zfs::new(prefix.clone(), timeout))
                .with_timeout(timeout)
        };
        let jobs = config
            .jobs
            .iter()
            .map(|j| {
                let (schedule, tz) = j.schedule()?;
                Ok(Job {
                    source: on_host(&j.source_command, j.command_timeout),
                    target: on_host(&j.target_command, j.command_timeout),
                    config: j.clone(),
                    schedule,
                    tz,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Self {
            jobs,
            clock: ctx.clock.clone(),
            publisher: ctx.bus.publisher.clone(),
            leases: ctx.leases.clone(),
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
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let interval = config.interval;
    // One request at a time, each a whole run: the default delivery settings fit.
    let consumer = proxflow_runtime::config::ConsumerConfig::default();
    let replicator = Arc::new(Replicator::new(&ctx, config)?);
    let mut tasks = Tasks::new(&ctx, &shutdown);
    let on_demand = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(names::consumer::REPLICATOR_RUN),
        consumer,
        OnDemand {
            replicator: replicator.clone(),
            shutdown: tasks.shutdown(),
        },
    );
    ctx.health.set("replicator", true);
    let stop = tasks.shutdown();
    tasks.spawn("scheduled runs", async move {
        schedule::every(interval, &stop, ctx.shutdown_grace, || async {
            for (job, result) in replicator.pass(&stop).await {
                if let Err(e) = result {
                    tracing::warn!(job = %job, error = %e, "replication run failed; retried later");
                }
            }
        })
        .await;
        Ok::<(), ServiceError>(())
    });
    tasks.spawn("on-demand runs", on_demand.run(tasks.shutdown()));
    Ok(tasks.join().await?)
}
