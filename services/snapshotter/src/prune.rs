//! Pruning: one target's retention applied under its lease (the one the replicator takes while
//! sending the dataset), for a scheduled pass and for prune requests on `pf.cmd.snapshotter.prune`
//! (a remediation of a filling pool).
//!
//! Pruning re-reads the target's snapshots after taking the lease: the replicator moves its hold to a
//! new base while it holds the same lease, so the holds seen under the lease are current, and a
//! held snapshot is never destroyed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use proxflow_runtime::bus::{Delivery, Handler, Outcome};
use proxflow_runtime::lease::{Held, LeaseError};
use proxflow_schemas::remediation::{HandOffOutcome, HandOffResult};
use proxflow_schemas::snapshot::{PruneRequested, SnapshotTarget, SnapshotsPruned};
use tracing::Instrument;

use crate::config::PolicyConfig;
use crate::pass::{PassReport, TargetReport};
use crate::plan::{self, Plan, Rules};
use crate::service::Snapshotter;
use crate::target::{self, TargetError};

/// Why a target's retention could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PruneError {
    /// Its lease could not be taken.
    #[error(transparent)]
    Lease(LeaseError),
    /// Its snapshots could not be listed.
    #[error(transparent)]
    List(TargetError),
    /// A renewal found the lease taken over: pruning on could destroy a snapshot the new holder
    /// (a replication) now relies on.
    #[error("lease {key} lost while pruning")]
    LeaseLost {
        /// The lease key.
        key: String,
    },
}

/// Prunes a pool on request (a remediation of a filling pool).
pub(crate) struct PruneOnRequest {
    pub(crate) snapshotter: Arc<Snapshotter>,
}

impl Handler<PruneRequested> for PruneOnRequest {
    async fn handle(&self, delivery: Delivery<PruneRequested>) -> Outcome {
        let request = delivery.message;
        tracing::info!(pool = %request.pool, reason = %request.reason, "prune requested");
        let report = self.snapshotter.prune_pool(&request).await;
        if report.targets.is_empty() {
            // A human must look: the pool fills and no policy here can free anything on it.
            let why = format!(
                "no snapshot policy covers a dataset on pool {:?}; nothing to prune",
                request.pool
            );
            return match self.tell(&request, HandOffResult::Failed, &why).await {
                Ok(()) => Outcome::poison(why),
                Err(retry) => retry,
            };
        }
        // Pruning again is harmless (the plan is recomputed), so a busy target is retried.
        if let Some(busy) = report.targets.iter().find_map(|t| t.skipped.clone()) {
            return Outcome::retry(busy);
        }
        let pruned: usize = report.targets.iter().map(|t| t.pruned.len()).sum();
        let errors: Vec<&String> = report.targets.iter().flat_map(|t| &t.errors).collect();
        let (result, detail) = if errors.is_empty() {
            tracing::info!(pool = %request.pool, pruned, "requested prune done");
            let done = format!("pruned {pruned} snapshots on pool {}", request.pool);
            if self.snapshotter.config.dry_run {
                (
                    HandOffResult::Refused,
                    format!("dry-run: nothing pruned on pool {}", request.pool),
                )
            } else {
                (HandOffResult::Succeeded, done)
            }
        } else {
            // The failures are counted in the metrics; the next scheduled pass tries again.
            tracing::warn!(pool = %request.pool, pruned, ?errors, "requested prune partly failed");
            let listed: Vec<&str> = errors.iter().map(|e| e.as_str()).collect();
            (
                HandOffResult::Failed,
                format!("pruned {pruned}, then failed: {}", listed.join("; ")),
            )
        };
        match self.tell(&request, result, &detail).await {
            Ok(()) => Outcome::Ack,
            Err(retry) => retry,
        }
    }
}

impl PruneOnRequest {
    /// Tells the workflow that asked how its prune ended (`pf.evt.handoff.prune`).
    async fn tell(
        &self,
        request: &PruneRequested,
        result: HandOffResult,
        detail: &str,
    ) -> Result<(), Outcome> {
        let now = self.snapshotter.clock.now();
        let outcome = HandOffOutcome::new(&request.workflow_id, "prune", result, detail, now);
        self.snapshotter
            .publisher
            .publish(&outcome)
            .await
            .map(drop)
            .map_err(|e| Outcome::retry(format!("reporting the prune's outcome: {e}")))
    }
}

impl Snapshotter {
    /// Applies the retention of every policy target on the requested pool now, without taking
    /// snapshots (a remediation of a filling pool). It prunes exactly what a scheduled pass would:
    /// the same plan, under the same lease, honouring holds, the replication base and pre-change
    /// TTLs. In dry-run it only logs the plan.
    pub async fn prune_pool(&self, request: &PruneRequested) -> PassReport {
        let now = self.clock.now();
        let mut report = PassReport::default();
        for (policy, rules, target) in self.targets(&mut report).await {
            if !request.covers(&target) {
                continue;
            }
            let span = tracing::info_span!(
                "snapshot.prune_request",
                otel.name = %format!("prune on request {} {target}", policy.name),
                policy = %policy.name,
                target = %target,
                workflow = %request.workflow_id,
            );
            let mut target_report = TargetReport::new(policy, &target);
            async {
                if self.config.dry_run {
                    match self.backends.list(&target).await {
                        Ok(existing) => {
                            target_report.plan = plan::plan(rules, &existing, now);
                            tracing::info!(prune = ?target_report.plan.prune, "dry run: nothing pruned");
                        }
                        Err(e) => target_report.errors.push(e.to_string()),
                    }
                } else if let Err(e) = self
                    .prune(policy, rules, &target, now, &mut target_report)
                    .await
                {
                    target_report.errors.push(e.to_string());
                }
            }
            .instrument(span)
            .await;
            report.targets.push(target_report);
        }
        report
    }

    /// Prunes under the target's lease; returns the snapshots as they were under it.
    pub(crate) async fn prune(
        &self,
        policy: &PolicyConfig,
        rules: &Rules,
        target: &SnapshotTarget,
        now: DateTime<Utc>,
        report: &mut TargetReport,
    ) -> Result<Option<Vec<plan::Existing>>, PruneError> {
        let key = target::lease_key(target);
        let purpose = format!("prune {target} ({})", policy.name);
        let held = self
            .leases
            .with(&key, &self.holder, &purpose, |lease| {
                let (key, report) = (&key, &mut *report);
                async move {
                    let existing = self.backends.list(target).await.map_err(PruneError::List)?;
                    let plan = plan::plan(rules, &existing, now);
                    let mut pruned = Vec::new();
                    for name in &plan.prune {
                        if !lease.is_held() {
                            return Err(PruneError::LeaseLost { key: key.clone() });
                        }
                        match self.backends.destroy(target, name).await {
                            Ok(()) => {
                                tracing::info!(snapshot = %name, "snapshot pruned");
                                pruned.push(name.clone());
                            }
                            Err(e) => {
                                self.metrics.failed(&policy.name, "prune");
                                tracing::error!(snapshot = %name, error = %e, "prune failed");
                                report.errors.push(format!("prune {name}: {e}"));
                            }
                        }
                    }
                    let remaining = existing
                        .into_iter()
                        .filter(|e| !pruned.contains(&e.name))
                        .collect::<Vec<_>>();
                    Ok((plan, pruned, remaining))
                }
            })
            .await;
        let result = match held {
            Ok(Held::Done(result)) => result,
            Ok(Held::Busy(by)) => {
                tracing::info!(lease = %key, holder = %by.holder, purpose = %by.purpose, "target busy; pruning next pass");
                report.skipped = Some(format!(
                    "lease {key} held by {} ({})",
                    by.holder, by.purpose
                ));
                return Ok(None);
            }
            Err(e) => {
                self.metrics.failed(&policy.name, "lease");
                return Err(PruneError::Lease(e));
            }
        };
        let (plan, pruned, remaining) = result?;
        if !pruned.is_empty() {
            self.metrics
                .pruned
                .inc_by([&policy.name], pruned.len() as u64);
            self.publisher
                .announce(&SnapshotsPruned {
                    target: target.clone(),
                    policy: policy.name.clone(),
                    pruned: pruned.clone(),
                    protected: plan
                        .protected
                        .iter()
                        .map(|p| format!("{} ({})", p.name, p.reason))
                        .collect(),
                    at: now,
                })
                .await;
        }
        report.plan = Plan {
            create: report.plan.create.clone(),
            ..plan
        };
        report.pruned = pruned;
        Ok(Some(remaining))
    }
}
