//! The shape of a service: what its `run` receives ([`ServiceContext`]) and how it runs its tasks
//! ([`Tasks`]).
//!
//! Every service crate exposes one entry point,
//! `pub async fn run(ctx: ServiceContext, settings: <Svc>Settings, shutdown: CancellationToken)
//! -> Result<(), <Svc>Error>`: the context carries what all services share (bus, health, metrics,
//! clock, leases, shutdown grace), the settings struct everything this service needs beyond it (its
//! config section and the clients built from config). Its consumer and periodic loops run as named
//! [`Tasks`]; the first to fail stops the others, and shutdown waits for them within the grace.
//!
//! ```ignore
//! pub struct EchoSettings { pub consumer: ConsumerConfig, pub interval: Duration }
//!
//! pub async fn run(ctx: ServiceContext, s: EchoSettings, shutdown: CancellationToken)
//!     -> Result<(), EchoError> {
//!     let mut tasks = Tasks::new(&ctx, &shutdown);
//!     let echo = ConsumerLoop::new(ctx.clone(), spec(), s.consumer, Echo { clock: ctx.clock.clone() });
//!     tasks.spawn("echo requests", echo.run(tasks.shutdown()));
//!     let (grace, stop) = (ctx.shutdown_grace, tasks.shutdown());
//!     tasks.spawn("heartbeat", async move { every(s.interval, &stop, grace, beat).await; Ok::<_, EchoError>(()) });
//!     Ok(tasks.join().await?)   // EchoError has a `Task(#[from] TaskError)` variant
//! }
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::clock::{self, SharedClock};
use crate::lease::{LeaseError, Leases};
use crate::ops::{Health, Metrics, OpsState};

/// Shared handles of one process, passed to every service's `run`.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    /// The connected bus.
    pub bus: Bus,
    /// Readiness checks.
    pub health: Health,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// How long in-flight work may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// What every decision by elapsed time asks (the wall clock; a manual one in tests).
    pub clock: SharedClock,
    /// The locks bucket, opened once for the process.
    pub leases: Leases,
}

impl ServiceContext {
    /// A context over `bus` (its topology declared, so the locks bucket exists) on the wall clock.
    pub async fn new(
        bus: Bus,
        health: Health,
        metrics: Metrics,
        shutdown_grace: Duration,
    ) -> Result<Self, LeaseError> {
        let leases = Leases::open(&bus.js).await?;
        Ok(Self {
            bus,
            health,
            metrics,
            shutdown_grace,
            clock: clock::system(),
            leases,
        })
    }

    /// The same context on `clock` (a [`clock::ManualClock`] in tests).
    pub fn with_clock(self, clock: SharedClock) -> Self {
        Self { clock, ..self }
    }

    /// What the ops endpoints read.
    pub fn ops_state(&self) -> OpsState {
        OpsState {
            health: self.health.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// How long after the grace period the supervisor still waits: the consumer loops spend the grace on
/// their handlers and only then return unfinished messages, which takes a few requests more.
const SETTLE_MARGIN: Duration = Duration::from_secs(5);

/// Why a service's tasks stopped.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A task returned an error (the first one; the others were stopped).
    #[error("task {task} failed")]
    Failed {
        /// The task's name.
        task: String,
        /// Its error.
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// A task panicked or was aborted.
    #[error("task {task} panicked")]
    Panicked {
        /// The task's name.
        task: String,
        /// What the runtime reported.
        #[source]
        source: JoinError,
    },
    /// Tasks still running when the grace period (and the settle margin) ran out; they were aborted.
    #[error("tasks {tasks:?} did not stop within the grace period ({grace:?}) and were aborted")]
    Abandoned {
        /// Their names.
        tasks: Vec<String>,
        /// The grace period.
        grace: Duration,
    },
}

/// A service's named tasks: the first to fail cancels the others, and once stopping began (shutdown
/// or a failure) all get the grace period to finish.
pub struct Tasks {
    set: JoinSet<Result<(), Box<dyn Error + Send + Sync>>>,
    names: HashMap<Id, String>,
    stop: CancellationToken,
    grace: Duration,
}

impl Tasks {
    /// No tasks yet; they stop when `shutdown` is cancelled or one of them fails.
    pub fn new(ctx: &ServiceContext, shutdown: &CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
            // A child: a failing task stops its siblings without stopping the whole process (the
            // caller decides that from the error).
            stop: shutdown.child_token(),
            grace: ctx.shutdown_grace,
        }
    }

    /// The token the tasks watch: cancelled at shutdown or when one of them fails.
    pub fn shutdown(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Starts `task` under `name`, in the OpenTelemetry context of the caller: a service run under
    /// [`crate::telemetry::service::scope`] keeps its service in the spans of its tasks.
    pub fn spawn<E>(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) where
        E: Error + Send + Sync + 'static,
    {
        let handle = self.set.spawn(
            async move {
                task.await
                    .map_err(|e| Box::new(e) as Box<dyn Error + Send + Sync>)
            }
            .with_current_context(),
        );
        self.names.insert(handle.id(), name.into());
    }

    /// Waits for every task: returns the first failure (naming its task) once all have stopped, or
    /// [`TaskError::Abandoned`] when some outlive the grace period after stopping began.
    pub async fn join(mut self) -> Result<(), TaskError> {
        let mut first: Option<TaskError> = None;
        loop {
            let joined = if self.stop.is_cancelled() {
                let deadline = self.grace + SETTLE_MARGIN;
                match tokio::time::timeout(deadline, self.set.join_next_with_id()).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        self.set.abort_all();
                        let tasks: Vec<String> = self.names.into_values().collect();
                        tracing::error!(?tasks, "tasks outlived the grace period; aborted");
                        return Err(first.unwrap_or(TaskError::Abandoned {
                            tasks,
                            grace: self.grace,
                        }));
                    }
                }
            } else {
                tokio::select! {
                    joined = self.set.join_next_with_id() => joined,
                    () = self.stop.cancelled() => continue,
                }
            };
            let Some(joined) = joined else { break };
            let error = match joined {
                Ok((id, result)) => {
                    let task = self.names.remove(&id).unwrap_or_default();
                    result
                        .err()
                        .map(|source| TaskError::Failed { task, source })
                }
                Err(source) => {
                    let task = self.names.remove(&source.id()).unwrap_or_default();
                    Some(TaskError::Panicked { task, source })
                }
            };
            if let Some(error) = error {
                tracing::error!(error = %error, "service task stopped; stopping the others");
                first.get_or_insert(error);
                self.stop.cancel();
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    fn tasks(grace: Duration) -> (Tasks, CancellationToken) {
        let shutdown = CancellationToken::new();
        let tasks = Tasks {
            set: JoinSet::new(),
            names: HashMap::new(),
            stop: shutdown.child_token(),
            grace,
        };
        (tasks, shutdown)
    }

    #[tokio::test]
    async fn the_first_failure_stops_the_others_and_names_its_task() {
        let (mut tasks, shutdown) = tasks(Duration::from_secs(5));
        let stop = tasks.shutdown();
        tasks.spawn("loop", async move {
            stop.cancelled().await;
            Ok::<(), Boom>(())
        });
        tasks.spawn("failing", async { Err::<(), _>(Boom) });
        let err = tasks.join().await.unwrap_err();
        assert!(
            matches!(&err, TaskError::Failed { task, .. } if task == "failing"),
            "{err}"
        );
        assert_eq!(err.source().unwrap().to_string(), "boom");
        assert!(
            !shutdown.is_cancelled(),
            "the process-wide token is the caller's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_within_the_grace_then_aborts() {
        let (mut tasks, shutdown) = tasks(Duration::from_secs(1));
        let stop = tasks.shutdown();
        tasks.spawn("prompt", async move {
            stop.cancelled().await;
            Ok::<(), Boom>(())
        });
        tasks.spawn("stuck", std::future::pending::<Result<(), Boom>>());
        shutdown.cancel();
        let err = tasks.join().await.unwrap_err();
        assert!(
            matches!(&err, TaskError::Abandoned { tasks, .. } if tasks == &["stuck"]),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_panic_is_reported_with_the_task_name() {
        let (mut tasks, _shutdown) = tasks(Duration::from_secs(1));
        tasks.spawn("panicky", async {
            if true {
                panic!("bad");
            }
            Ok::<(), Boom>(())
        });
        let err = tasks.join().await.unwrap_err();
        assert!(
            matches!(&err, TaskError::Panicked { task, .. } if task == "panicky"),
            "{err}"
        );
    }
}
