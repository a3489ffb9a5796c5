//! The replicator service: runs each job when its schedule says (and once at start, to catch up),
//! retrying a failed job after `replication.retry_after`.
//!
//! One run, under the source dataset's lease (the one the snapshotter takes to prune it):
//! 1. where both sides can resume, an interrupted receive is continued from its resume token;
//! 2. both sides' snapshots are compared ([`crate::plan::decide`]): nothing to do, a first full
//!    send, an incremental `-I` from the newest common snapshot (by guid), or a refusal — a diverged
//!    target is never rolled back or destroyed, an alert event says why;
//! 3. the stream goes through [`proxflow_zfs::send_receive`] without `-F`; a receive that the old
//!    zfs-fuse daemon is still aborting ("dataset is busy") is retried briefly, anything else fails
//!    the run and the next run starts again from the common base (nothing partial survives a failed
//!    non-resumable receive);
//! 4. the new base gets the job's hold on both sides, then the job's older holds are released, so
//!    exactly one snapshot per side carries it and none leaks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::config::ConfigError;
use proxflow_runtime::lease::{Acquired, LeaseError, Leases};
use proxflow_runtime::ops::{CounterFamily, GaugeFamily, Metrics};
use proxflow_schemas::names::{durable, stream, subject};
use proxflow_schemas::replication::{
    DivergenceReason, ReplicationDiverged, ReplicationPhase, ReplicationRequested, ReplicationRun,
    TransferMode,
};
use proxflow_snapshotter::schedule::Schedule;
use proxflow_zfs::{PipeEnd, SendStream, SnapshotInfo, Transfer, Zfs, ZfsError, names};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{JobConfig, ReplicationConfig};
use crate::plan::{self, Action};

/// How often a receive refused with "dataset is busy" is tried again within one run.
const BUSY_RETRIES: u32 = 6;
/// First pause before such a retry; doubles each time (about a minute in all).
const BUSY_FIRST_PAUSE: Duration = Duration::from_secs(1);

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job of that name.
    #[error("no replication job named {0:?}")]
    UnknownJob(String),
    /// Someone else holds the dataset's lease (the snapshotter pruning, another replicator).
    #[error("lease {key} is held by {holder} ({purpose})")]
    Busy {
        /// The lease key.
        key: String,
        /// Who has it.
        holder: String,
        /// What for.
        purpose: String,
    },
    /// The lease could not be taken or was lost.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The source has no snapshot.
    #[error("{0} has no snapshot to send")]
    NothingToSend(String),
    /// The target diverged; nothing was sent, destroyed or rolled back.
    #[error("target diverged ({reason:?}): {detail}")]
    Diverged {
        /// What is wrong.
        reason: DivergenceReason,
        /// Details.
        detail: String,
    },
    /// zfs failed (a transfer included).
    #[error(transparent)]
    Zfs(#[from] ZfsError),
}

impl JobError {
    /// Label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownJob(_) => "unknown_job",
            Self::Busy { .. } => "busy",
            Self::Lease(_) => "lease",
            Self::NothingToSend(_) => "no_source_snapshot",
            Self::Diverged { .. } => "diverged",
            Self::Zfs(ZfsError::Pipe(p)) => match p.end {
                PipeEnd::TimedOut => "timeout",
                PipeEnd::Cancelled => "cancelled",
                PipeEnd::Failed => "transfer",
            },
            Self::Zfs(_) => "zfs",
        }
    }
}

/// Lets a caller follow and stop a run.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Cancelling kills the transfer (both sides' process groups).
    pub cancel: CancellationToken,
    /// Bytes moved so far by the current transfer.
    pub progress: Arc<AtomicU64>,
}

/// A completed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Its id (shared by its events).
    pub run_id: String,
    /// How the data went over (`UpToDate` when nothing had to).
    pub mode: TransferMode,
    /// The incremental base.
    pub base: Option<String>,
    /// The snapshot the target holds now.
    pub snapshot: Option<String>,
    /// Stream bytes.
    pub bytes: u64,
    /// Wall time of the whole run.
    pub duration: Duration,
    /// Of that, the time the stream took (send | receive).
    pub transfer_duration: Duration,
    /// Age of the target's newest snapshot at the end.
    pub lag: Option<Duration>,
    /// Dry run: nothing was sent.
    pub dry_run: bool,
}

/// One configured job with its zfs handles.
struct Job {
    config: JobConfig,
    source: Zfs,
    target: Zfs,
    schedule: Schedule,
    tz: Tz,
}

/// What the service remembers per job between passes.
#[derive(Debug, Default, Clone)]
struct JobState {
    done_slot: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
    replicated_creation: Option<DateTime<Utc>>,
}

/// The replicator's Prometheus metrics, per `replication_job` (not `job`: Prometheus sets that
/// label to the scrape job and would rename this one).
#[derive(Debug, Clone)]
struct ReplicationMetrics {
    last_success: GaugeFamily<1>,
    lag: GaugeFamily<1>,
    bytes: CounterFamily<1>,
    failures: CounterFamily<2>,
}

impl ReplicationMetrics {
    fn register(metrics: &Metrics) -> Self {
        Self {
            last_success: metrics.gauge_family(
                "replication_last_success_timestamp_seconds",
                "When each job last completed (Unix time)",
                ["replication_job"],
            ),
            lag: metrics.gauge_family(
                "replication_lag_seconds",
                "Age of the newest snapshot the target holds, per job",
                ["replication_job"],
            ),
            bytes: metrics.counter_family(
                "replication_bytes",
                "Stream bytes replicated, per job",
                ["replication_job"],
            ),
            failures: metrics.counter_family(
                "replication_failures",
                "Failed replication runs, per job and reason",
                ["replication_job", "reason"],
            ),
        }
    }
}

/// The outcome of the zfs part of a run.
struct Moved {
    mode: TransferMode,
    base: Option<String>,
    snapshot: Option<String>,
    bytes: u64,
    transfer_duration: Duration,
    newest_creation: Option<DateTime<Utc>>,
}

/// The service's state.
pub struct Replicator {
    config: ReplicationConfig,
    jobs: Vec<Job>,
    clock: SharedClock,
    publisher: Publisher,
    leases: Leases,
    holder: String,
    metrics: ReplicationMetrics,
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
            holder: format!(
                "replicator-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            metrics: ReplicationMetrics::register(&ctx.metrics),
            state: Mutex::new(BTreeMap::new()),
            config,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JobState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs every due job once (sequentially: two sends compete for the same disks and link).
    pub async fn pass(
        &self,
        shutdown: &CancellationToken,
    ) -> Vec<(String, Result<RunReport, JobError>)> {
        let mut out = Vec::new();
        for job in &self.jobs {
            let now = self.clock.now();
            let name = job.config.name.clone();
            let state = self.state().get(&name).cloned().unwrap_or_default();
            // The lag grows while nothing new arrives, also between runs.
            if let Some(created) = state.replicated_creation {
                self.metrics.lag.set(
                    [name.as_str()],
                    (now - created).num_milliseconds() as f64 / 1e3,
                );
            }
            let Some(slot) = job.schedule.last_slot(job.tz, now) else {
                continue;
            };
            let retry_at = state.failed_at.map(|f| {
                f + chrono::Duration::from_std(self.config.retry_after)
                    .unwrap_or(chrono::Duration::MAX)
            });
            let due = state.done_slot != Some(slot) && retry_at.is_none_or(|at| now >= at);
            if !due || shutdown.is_cancelled() {
                continue;
            }
            let control = RunControl {
                cancel: shutdown.child_token(),
                ..RunControl::default()
            };
            let result = self.run_job(&name, &control).await;
            let mut states = self.state();
            let entry = states.entry(name.clone()).or_default();
            match &result {
                Ok(_) => {
                    entry.done_slot = Some(slot);
                    entry.failed_at = None;
                }
                Err(_) => entry.failed_at = Some(now),
            }
            drop(states);
            out.push((name, result));
        }
        out
    }

    /// Runs job `name` now, whatever its schedule.
    pub async fn run_job(&self, name: &str, control: &RunControl) -> Result<RunReport, JobError> {
        let job = self
            .jobs
            .iter()
            .find(|j| j.config.name == name)
            .ok_or_else(|| JobError::UnknownJob(name.to_owned()))?;
        let span = tracing::info_span!(
            "replication.run",
            otel.name = %format!("replicate {name}"),
            job = %name,
            source = %job.config.source,
            target = %job.config.target,
        );
        self.run_locked(job, control).instrument(span).await
    }

    async fn run_locked(&self, job: &Job, control: &RunControl) -> Result<RunReport, JobError> {
        let started_at = self.clock.now();
        let started = Instant::now();
        let run_id = format!(
            "{}-{:06x}",
            started_at.format("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>() & 0xff_ffff
        );
        let name = &job.config.name;
        let key = names::lease_key(&job.config.source);
        let lease = match self
            .leases
            .acquire(
                &key,
                &self.holder,
                &format!(
                    "replicate {} to {} ({name})",
                    job.config.source, job.config.target
                ),
            )
            .await?
        {
            Acquired::Held(lease) => lease,
            Acquired::Busy(by) => {
                self.failed_metric(name, "busy");
                tracing::info!(lease = %key, holder = %by.holder, "dataset busy; replication later");
                return Err(JobError::Busy {
                    key,
                    holder: by.holder,
                    purpose: by.purpose,
                });
            }
        };
        let event = |phase, moved: Option<&Moved>, error: Option<String>| ReplicationRun {
            job: name.clone(),
            run_id: run_id.clone(),
            phase,
            source: job.config.source.clone(),
            target: job.config.target.clone(),
            mode: moved.map(|m| m.mode),
            base: moved.and_then(|m| m.base.clone()),
            snapshot: moved.and_then(|m| m.snapshot.clone()),
            bytes: moved.map_or(control.progress.load(Ordering::Relaxed), |m| m.bytes),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            lag_secs: moved
                .and_then(|m| m.newest_creation)
                .map(|c| (self.clock.now() - c).num_seconds().max(0) as u64),
            error,
            at: self.clock.now(),
        };
        if !self.config.dry_run {
            self.announce(&event(ReplicationPhase::Started, None, None))
                .await;
        }
        let result = self.replicate(job, &run_id, control).await;
        if !lease.is_held() {
            tracing::error!(lease = %key, "lease lost during the run");
        }
        if let Err(e) = lease.release().await {
            tracing::warn!(lease = %key, error = %e, "lease not released; it ages out");
        }
        match result {
            Ok(moved) => {
                let report = RunReport {
                    run_id: run_id.clone(),
                    mode: moved.mode,
                    base: moved.base.clone(),
                    snapshot: moved.snapshot.clone(),
                    bytes: moved.bytes,
                    duration: started.elapsed(),
                    transfer_duration: moved.transfer_duration,
                    lag: moved
                        .newest_creation
                        .map(|c| (self.clock.now() - c).to_std().unwrap_or_default()),
                    dry_run: self.config.dry_run,
                };
                if self.config.dry_run {
                    tracing::info!(mode = ?report.mode, base = ?report.base, snapshot = ?report.snapshot, "dry run: would replicate");
                    return Ok(report);
                }
                let job = [name.as_str()];
                self.metrics.bytes.inc_by(job, moved.bytes);
                self.metrics
                    .last_success
                    .set(job, self.clock.now().timestamp_millis() as f64 / 1e3);
                if let Some(lag) = report.lag {
                    self.metrics.lag.set(job, lag.as_secs_f64());
                }
                self.state()
                    .entry(name.clone())
                    .or_default()
                    .replicated_creation = moved.newest_creation;
                tracing::info!(mode = ?report.mode, bytes = report.bytes, snapshot = ?report.snapshot, "replication completed");
                self.announce(&event(ReplicationPhase::Completed, Some(&moved), None))
                    .await;
                Ok(report)
            }
            Err(e) => {
                self.failed_metric(name, e.reason());
                tracing::error!(error = %e, "replication failed");
                if !self.config.dry_run {
                    self.announce(&event(ReplicationPhase::Failed, None, Some(e.to_string())))
                        .await;
                }
                Err(e)
            }
        }
    }

    fn failed_metric(&self, job: &str, reason: &str) {
        self.metrics.failures.inc([job, reason]);
    }

    async fn announce<M: proxflow_schemas::Message>(&self, event: &M) {
        if let Err(e) = self.publisher.publish(event).await {
            tracing::error!(error = %e, subject = %event.subject(), "event not published");
        }
    }

    async fn replicate(
        &self,
        job: &Job,
        run_id: &str,
        control: &RunControl,
    ) -> Result<Moved, JobError> {
        let (src, tgt) = (&job.config.source, &job.config.target);
        let source_caps = job.source.capabilities(src).await?;
        let target_caps = job.target.capabilities(tgt).await?;
        let resumable = source_caps.resumable_receive && target_caps.resumable_receive;
        let mut resumed_bytes = 0;
        let mut transfer_duration = Duration::ZERO;
        let mut resumed = false;
        if resumable
            && !self.config.dry_run
            && let Some(token) = job.target.receive_resume_token(tgt).await?
        {
            match self
                .transfer(job, &SendStream::Resume { token }, true, control)
                .await
            {
                Ok(t) => {
                    tracing::info!(bytes = t.bytes, "interrupted receive resumed");
                    resumed_bytes = t.bytes;
                    transfer_duration = t.duration;
                    resumed = true;
                }
                Err(e) => {
                    // A token the source cannot serve (its snapshot was destroyed): drop the
                    // partial state — never a received snapshot — and go on from the common base.
                    tracing::warn!(error = %e, "resume failed; aborting the partial receive");
                    job.target.abort_resumable_receive(tgt).await?;
                }
            }
        }
        let source_snaps = job.source.snapshots(src).await?;
        let target_exists = job.target.exists(tgt).await?;
        let target_snaps = if target_exists {
            job.target.snapshots(tgt).await?
        } else {
            Vec::new()
        };
        let action = plan::decide(&source_snaps, target_exists, &target_snaps);
        tracing::info!(?action, "replication plan");
        let newest_creation = |name: &str| {
            source_snaps
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.creation)
        };
        let (mode, base, snapshot) = match action {
            Action::NothingToSend => return Err(JobError::NothingToSend(src.clone())),
            Action::Diverged {
                reason,
                common_base,
                target_only,
            } => {
                let detail = format!(
                    "common base {}, target-only snapshots [{}]",
                    common_base.as_deref().unwrap_or("none"),
                    target_only.join(", ")
                );
                self.diverged(job, run_id, reason, common_base, target_only, None)
                    .await;
                return Err(JobError::Diverged { reason, detail });
            }
            Action::UpToDate { snapshot } => (
                if resumed {
                    TransferMode::Resumed
                } else {
                    TransferMode::UpToDate
                },
                None,
                snapshot,
            ),
            Action::Full { snapshot } => (TransferMode::Full, None, snapshot),
            Action::Incremental { base, snapshot } => {
                (TransferMode::Incremental, Some(base), snapshot)
            }
        };
        if self.config.dry_run {
            return Ok(Moved {
                mode,
                base,
                snapshot: Some(snapshot.clone()),
                bytes: 0,
                transfer_duration,
                newest_creation: newest_creation(&snapshot),
            });
        }
        let stream = match (&mode, &base) {
            (TransferMode::Full, _) => Some(SendStream::Full {
                snapshot: snapshot.clone(),
            }),
            (TransferMode::Incremental, Some(base)) => Some(SendStream::Incremental {
                base: base.clone(),
                snapshot: snapshot.clone(),
            }),
            _ => None,
        };
        let mut bytes = resumed_bytes;
        if let Some(stream) = stream {
            match self.transfer(job, &stream, resumable, control).await {
                Ok(t) => {
                    bytes += t.bytes;
                    transfer_duration += t.duration;
                }
                Err(e) => return Err(self.classify(job, run_id, e).await),
            }
            if mode == TransferMode::Full && job.config.readonly_target {
                job.target.set(tgt, "readonly", "on").await?;
            }
        }
        let Some(newest) = source_snaps.iter().find(|s| s.name == snapshot) else {
            return Err(JobError::NothingToSend(src.clone()));
        };
        self.move_holds(job, newest).await?;
        Ok(Moved {
            mode,
            base,
            snapshot: Some(snapshot.clone()),
            bytes,
            transfer_duration,
            newest_creation: Some(newest.creation),
        })
    }

    /// One send | receive, retried while the target is still busy with an aborted receive.
    async fn transfer(
        &self,
        job: &Job,
        stream: &SendStream,
        resumable: bool,
        control: &RunControl,
    ) -> Result<Transfer, ZfsError> {
        let mut pause = BUSY_FIRST_PAUSE;
        let mut attempt = 0;
        loop {
            control.progress.store(0, Ordering::Relaxed);
            let result = proxflow_zfs::send_receive(
                &job.source,
                &job.config.source,
                stream,
                &job.target,
                &job.config.target,
                resumable,
                job.config.transfer_timeout,
                &control.cancel,
                Some(&control.progress),
            )
            .await;
            match result {
                Err(ZfsError::Pipe(p))
                    if p.end == PipeEnd::Failed
                        && p.stderr().contains("dataset is busy")
                        && attempt < BUSY_RETRIES =>
                {
                    attempt += 1;
                    tracing::info!(
                        attempt,
                        "target busy (an aborted receive still finishing); retrying"
                    );
                    tokio::select! {
                        _ = control.cancel.cancelled() => return Err(ZfsError::Pipe(p)),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    /// Turns a failed transfer into the run's error; a receive refused because the target changed
    /// is a divergence (alerted), not a transient failure.
    async fn classify(&self, job: &Job, run_id: &str, error: ZfsError) -> JobError {
        let ZfsError::Pipe(pipe) = &error else {
            return JobError::Zfs(error);
        };
        let stderr = pipe.stderr();
        let reason = if stderr.contains("has been modified") {
            Some(DivergenceReason::TargetModified)
        } else if stderr.contains("must specify -F") || stderr.contains("already exists") {
            Some(DivergenceReason::TargetNotEmpty)
        } else {
            None
        };
        let Some(reason) = reason.filter(|_| pipe.end == PipeEnd::Failed) else {
            return JobError::Zfs(error);
        };
        let detail = pipe
            .receive_stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        self.diverged(job, run_id, reason, None, Vec::new(), Some(detail.clone()))
            .await;
        JobError::Diverged { reason, detail }
    }

    async fn diverged(
        &self,
        job: &Job,
        run_id: &str,
        reason: DivergenceReason,
        common_base: Option<String>,
        target_only: Vec<String>,
        detail: Option<String>,
    ) {
        tracing::error!(
            ?reason,
            ?common_base,
            ?target_only,
            "target diverged; refusing to touch it"
        );
        self.announce(&ReplicationDiverged {
            job: job.config.name.clone(),
            run_id: run_id.to_owned(),
            source: job.config.source.clone(),
            target: job.config.target.clone(),
            reason,
            common_base,
            target_only,
            detail,
            at: self.clock.now(),
        })
        .await;
    }

    /// Puts the job's hold on `base` (found by guid) on both sides, then releases the job's hold
    /// from every other snapshot. Holding first means the base is never unprotected in between.
    async fn move_holds(&self, job: &Job, base: &SnapshotInfo) -> Result<(), JobError> {
        let tag = names::hold_tag(&job.config.name);
        let sides = [
            (&job.source, &job.config.source),
            (&job.target, &job.config.target),
        ];
        let mut listings = Vec::with_capacity(2);
        for (zfs, dataset) in sides {
            let snaps = zfs.snapshots(dataset).await?;
            match snaps.iter().find(|s| s.guid == base.guid) {
                Some(copy) => {
                    zfs.hold(&tag, dataset, &copy.name).await?;
                }
                None => {
                    return Err(JobError::Zfs(ZfsError::Unsupported {
                        host: zfs.host(),
                        what: format!("{dataset} lacks the base {} after the receive", base.name),
                    }));
                }
            }
            listings.push((zfs, dataset, snaps));
        }
        for (zfs, dataset, snaps) in listings {
            let hold_listing = zfs.capabilities(dataset).await?.hold_listing;
            for old in snaps.iter().filter(|s| s.guid != base.guid && s.is_held()) {
                // Where holds can be listed, only ours are touched; elsewhere a release of our tag
                // is tried and a "no such tag" answer means the hold is someone else's.
                if hold_listing
                    && !zfs
                        .holds(dataset, &old.name)
                        .await?
                        .unwrap_or_default()
                        .contains(&tag)
                {
                    continue;
                }
                if zfs.release(&tag, dataset, &old.name).await? {
                    tracing::info!(snapshot = %old.full_name(), host = %zfs.host(), "older replication hold released");
                }
            }
        }
        Ok(())
    }
}

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

/// Runs a job on request (a remediation of a lag alert). The run announces itself through the usual
/// events and metrics; a failed run is not retried from here (the schedule retries it). Shutdown
/// kills its transfer, as it does a scheduled one's.
struct OnDemand {
    replicator: Arc<Replicator>,
    shutdown: CancellationToken,
}

impl Handler<ReplicationRequested> for OnDemand {
    async fn handle(&self, delivery: Delivery<ReplicationRequested>) -> Outcome {
        let request = delivery.message;
        tracing::info!(job = %request.job, reason = %request.reason, "replication requested");
        match self
            .replicator
            .run_job(
                &request.job,
                &RunControl {
                    cancel: self.shutdown.child_token(),
                    ..RunControl::default()
                },
            )
            .await
        {
            Ok(report) => {
                tracing::info!(job = %request.job, run = %report.run_id, "requested replication done");
                Outcome::Ack
            }
            Err(JobError::UnknownJob(job)) => {
                Outcome::poison(format!("no replication job {job:?}"))
            }
            // Transient: the snapshotter is pruning the dataset, or shutdown interrupted the
            // transfer. Redelivered (after a restart, in the second case), not dropped.
            Err(e) if matches!(e, JobError::Busy { .. }) || e.reason() == "cancelled" => {
                Outcome::retry(e.to_string())
            }
            Err(e) => {
                tracing::warn!(job = %request.job, error = %e, "requested replication failed");
                Outcome::Ack
            }
        }
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
        ConsumerSpec {
            stream: stream::CMD,
            durable: durable::REPLICATOR_RUN.into(),
            filter_subject: subject::cmd("replicator", "run"),
        },
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
