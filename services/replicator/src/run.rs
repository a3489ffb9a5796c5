//! One replication run of one job, under the source dataset's lease (the one the snapshotter takes
//! to prune it):
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
//!
//! Steps 3 and 4 are in the `transfer` and `holds` modules; this module holds the lease, the
//! events and the metrics around them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proxflow_runtime::lease::Held;
use proxflow_schemas::replication::{ReplicationPhase, ReplicationRun, TransferMode};
use proxflow_zfs::SendStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::holds::Listings;
use crate::job::{Job, JobError};
use crate::plan::{self, Action};
use crate::service::Replicator;

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

/// The outcome of the zfs part of a run.
pub(crate) struct Moved {
    pub(crate) mode: TransferMode,
    pub(crate) base: Option<String>,
    pub(crate) snapshot: Option<String>,
    pub(crate) bytes: u64,
    pub(crate) transfer_duration: Duration,
    pub(crate) newest_creation: Option<DateTime<Utc>>,
}

/// A span for one step of a run (`replication.phase` with `phase` = probe, resume_check, listing,
/// transfer, holds — the readonly setting included —, announce), so a trace — or the replication bench — shows where a run's time goes besides the
/// stream itself.
pub(crate) fn phase(name: &'static str) -> tracing::Span {
    tracing::info_span!("replication.phase", otel.name = %format!("replication {name}"), phase = name)
}

impl Replicator {
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
        let key = proxflow_schemas::names::key::dataset_lease(&job.config.source);
        let purpose = format!(
            "replicate {} to {} ({name})",
            job.config.source, job.config.target
        );
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
        let held = self
            .leases
            .with(&key, &self.holder, &purpose, |lease| {
                let (event, run_id, key) = (&event, &run_id, &key);
                async move {
                    if !self.config.dry_run {
                        self.publisher
                            .announce(&event(ReplicationPhase::Started, None, None))
                            .instrument(phase("announce"))
                            .await;
                    }
                    let result = self.replicate(job, run_id, control).await;
                    if !lease.is_held() {
                        tracing::error!(lease = %key, "lease lost during the run");
                    }
                    result
                }
            })
            .await?;
        let result = match held {
            Held::Done(result) => result,
            Held::Busy(by) => {
                self.failed_metric(name, "busy");
                tracing::info!(lease = %key, holder = %by.holder, "dataset busy; replication later");
                return Err(JobError::Busy {
                    key,
                    holder: by.holder,
                    purpose: by.purpose,
                });
            }
        };
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
                self.publisher
                    .announce(&event(ReplicationPhase::Completed, Some(&moved), None))
                    .instrument(phase("announce"))
                    .await;
                Ok(report)
            }
            Err(e) => {
                self.failed_metric(name, e.reason());
                tracing::error!(error = %e, "replication failed");
                if !self.config.dry_run {
                    self.publisher
                        .announce(&event(ReplicationPhase::Failed, None, Some(e.to_string())))
                        .instrument(phase("announce"))
                        .await;
                }
                Err(e)
            }
        }
    }

    async fn replicate(
        &self,
        job: &Job,
        run_id: &str,
        control: &RunControl,
    ) -> Result<Moved, JobError> {
        let (src, tgt) = (&job.config.source, &job.config.target);
        // Probed once per host and remembered; both sides at once when they are two hosts.
        let (source_caps, target_caps) =
            async { tokio::try_join!(job.source.capabilities(src), job.target.capabilities(tgt)) }
                .instrument(phase("probe"))
                .await?;
        let resumable = source_caps.resumable_receive && target_caps.resumable_receive;
        let mut resumed_bytes = 0;
        let mut transfer_duration = Duration::ZERO;
        let mut resumed = false;
        if resumable
            && !self.config.dry_run
            && let Some(token) = job
                .target
                .receive_resume_token(tgt)
                .instrument(phase("resume_check"))
                .await?
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
        // The two sides' listings are independent: both at once, and the target's in one command
        // whether or not it exists yet.
        let (source_snaps, target_listing) = async {
            tokio::try_join!(
                job.source.snapshots(src),
                job.target.snapshots_if_exists(tgt)
            )
        }
        .instrument(phase("listing"))
        .await?;
        let target_exists = target_listing.is_some();
        let target_snaps = target_listing.unwrap_or_default();
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
        let received = stream.is_some() || resumed;
        if let Some(stream) = stream {
            match self
                .transfer(job, &stream, resumable, control)
                .instrument(phase("transfer"))
                .await
            {
                Ok(t) => {
                    bytes += t.bytes;
                    transfer_duration += t.duration;
                }
                Err(e) => return Err(self.classify(job, run_id, e).await),
            }
        }
        let Some(newest) = source_snaps.iter().find(|s| s.name == snapshot) else {
            return Err(JobError::NothingToSend(src.clone()));
        };
        // A new target is made readonly while the holds move: independent commands, so at once.
        // Both finish before either's error counts, so neither is cut off half-way.
        let readonly = async {
            if mode == TransferMode::Full && job.config.readonly_target {
                job.target.set(tgt, "readonly", "on").await?;
            }
            Ok::<_, JobError>(())
        };
        let listings = Listings {
            source: &source_snaps,
            target: &target_snaps,
            received,
        };
        let (readonly, holds) =
            async { tokio::join!(readonly, self.move_holds(job, newest, listings)) }
                .instrument(phase("holds"))
                .await;
        readonly?;
        holds?;
        Ok(Moved {
            mode,
            base,
            snapshot: Some(snapshot.clone()),
            bytes,
            transfer_duration,
            newest_creation: Some(newest.creation),
        })
    }
}
