//! A scheduled pass: every policy on each of its targets — take the due snapshot, prune what the
//! grid lets go (under the target's lease, [`crate::prune`]), refresh the validity gauges, publish
//! the validity check when its schedule says — and the dry-run plans of `proxflow snapshot plan`.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use proxflow_runtime::config::ConfigError;
use proxflow_schemas::snapshot::{SnapshotCheck, SnapshotKind, SnapshotTaken, SnapshotTarget};
use tracing::Instrument;

use crate::config::{PolicyConfig, SnapshotConfig};
use crate::plan::{self, Plan, Rules};
use crate::service::Snapshotter;
use crate::target::{Backends, TargetError};

/// What one pass did to one target.
#[derive(Debug, Clone)]
pub struct TargetReport {
    /// The policy.
    pub policy: String,
    /// The target.
    pub target: SnapshotTarget,
    /// The plan it followed (the one computed under the lease, when pruning took it).
    pub plan: Plan,
    /// The snapshot taken.
    pub created: Option<String>,
    /// Snapshots destroyed.
    pub pruned: Vec<String>,
    /// Why pruning was skipped (lease busy).
    pub skipped: Option<String>,
    /// What failed.
    pub errors: Vec<String>,
}

impl TargetReport {
    /// Nothing done yet.
    pub(crate) fn new(policy: &PolicyConfig, target: &SnapshotTarget) -> Self {
        Self {
            policy: policy.name.clone(),
            target: target.clone(),
            plan: Plan::default(),
            created: None,
            pruned: Vec::new(),
            skipped: None,
            errors: Vec::new(),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Per policy and target.
    pub targets: Vec<TargetReport>,
    /// Policy-level failures (a tag lookup).
    pub errors: Vec<String>,
    /// Validity checks published in this pass.
    pub checks: Vec<SnapshotCheck>,
}

/// One planned target, for dry-run output.
#[derive(Debug)]
pub struct TargetPlan {
    /// The policy.
    pub policy: String,
    /// The target.
    pub target: SnapshotTarget,
    /// Its plan, or why there is none.
    pub plan: Result<Plan, TargetError>,
}

/// Plans every policy's targets without changing anything (`proxflow snapshot plan`, dry-run).
pub async fn plan_all(
    config: &SnapshotConfig,
    backends: &Backends,
    now: DateTime<Utc>,
) -> Result<Vec<TargetPlan>, ConfigError> {
    let mut out = Vec::new();
    let mut claimed = BTreeSet::new();
    for policy in &config.policies {
        let rules = config.rules(policy)?;
        let targets = match backends.resolve(&policy.targets).await {
            Ok(t) => t,
            Err(e) => {
                out.push(TargetPlan {
                    policy: policy.name.clone(),
                    target: SnapshotTarget::Dataset {
                        dataset: "<targets>".into(),
                    },
                    plan: Err(e),
                });
                continue;
            }
        };
        for target in targets.into_iter().filter(|t| claimed.insert(t.clone())) {
            let plan = backends
                .list(&target)
                .await
                .map(|existing| plan::plan(&rules, &existing, now));
            out.push(TargetPlan {
                policy: policy.name.clone(),
                target,
                plan,
            });
        }
    }
    Ok(out)
}

/// Human-readable plans: per target, what would be created, pruned, and kept despite the grid.
pub fn render_plans(plans: &[TargetPlan]) -> String {
    let mut out = String::new();
    for p in plans {
        out.push_str(&format!("{} (policy {})\n", p.target, p.policy));
        match &p.plan {
            Err(e) => out.push_str(&format!("  error   {e}\n")),
            Ok(plan) => {
                match &plan.create {
                    Some(name) => out.push_str(&format!("  create  {name}\n")),
                    None => out.push_str("  create  nothing due\n"),
                }
                for name in &plan.prune {
                    out.push_str(&format!("  prune   {name}\n"));
                }
                for kept in &plan.protected {
                    out.push_str(&format!("  protect {} ({})\n", kept.name, kept.reason));
                }
                out.push_str(&format!(
                    "  keep    {} by the grid, {} not proxflow's\n",
                    plan.kept.len(),
                    plan.foreign
                ));
            }
        }
    }
    out
}

impl Snapshotter {
    /// One evaluation of every policy on every target.
    pub async fn pass(&self) -> PassReport {
        let now = self.clock.now();
        let check_slot = self.check_schedule.last_slot(chrono_tz::UTC, now);
        let check_due = {
            let last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
            check_slot.is_some() && *last != check_slot
        };
        let mut report = PassReport::default();
        for (policy, rules, target) in self.targets(&mut report).await {
            let span = tracing::info_span!(
                "snapshot.target",
                otel.name = %format!("snapshot policy {} {target}", policy.name),
                policy = %policy.name,
                target = %target,
            );
            let (target_report, check) = self
                .evaluate(policy, rules, &target, now, check_due)
                .instrument(span)
                .await;
            report.targets.push(target_report);
            report.checks.extend(check);
        }
        if check_due {
            *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = check_slot;
        }
        report
    }

    /// Every policy's targets, each once: tags can name a VM another policy already covers, and the
    /// first policy owns it. A policy whose targets do not resolve goes into `report.errors`.
    pub(crate) async fn targets(
        &self,
        report: &mut PassReport,
    ) -> Vec<(&PolicyConfig, &Rules, SnapshotTarget)> {
        let mut claimed = BTreeSet::new();
        let mut out = Vec::new();
        for (policy, rules) in &self.policies {
            let targets = match self.backends.resolve(&policy.targets).await {
                Ok(t) => t,
                Err(e) => {
                    self.metrics.failed(&policy.name, "resolve");
                    tracing::error!(policy = %policy.name, error = %e, "targets not resolved");
                    report.errors.push(format!("{}: {e}", policy.name));
                    continue;
                }
            };
            for target in targets {
                if claimed.insert(target.clone()) {
                    out.push((policy, rules, target));
                } else {
                    tracing::warn!(policy = %policy.name, %target, "target already covered by an earlier policy; skipped");
                }
            }
        }
        out
    }

    async fn evaluate(
        &self,
        policy: &PolicyConfig,
        rules: &Rules,
        target: &SnapshotTarget,
        now: DateTime<Utc>,
        check_due: bool,
    ) -> (TargetReport, Option<SnapshotCheck>) {
        let mut report = TargetReport::new(policy, target);
        let existing = match self.backends.list(target).await {
            Ok(e) => e,
            Err(e) => {
                self.metrics.failed(&policy.name, "list");
                tracing::error!(error = %e, "listing snapshots failed");
                report.errors.push(e.to_string());
                return (report, None);
            }
        };
        report.plan = plan::plan(rules, &existing, now);
        if self.config.dry_run {
            tracing::info!(
                plan = %render_plans(&[TargetPlan {
                    policy: policy.name.clone(),
                    target: target.clone(),
                    plan: Ok(report.plan.clone()),
                }]),
                "dry run: nothing changed"
            );
            // The check only reads: it runs in dry-run too.
            let check = self
                .check(policy, rules, target, &existing, now, check_due)
                .await;
            return (report, check);
        }
        if let Some(name) = report.plan.create.clone() {
            let description = format!(
                "proxflow {} snapshot, policy {}",
                rules.schedule.cadence().label(),
                policy.name
            );
            match self
                .backends
                .create(target, &name, &description, None)
                .await
            {
                Ok(()) => {
                    tracing::info!(snapshot = %name, "snapshot taken");
                    self.metrics.taken.inc([&policy.name, "scheduled"]);
                    self.publisher
                        .announce(&SnapshotTaken {
                            target: target.clone(),
                            snapshot: name.clone(),
                            kind: SnapshotKind::Scheduled,
                            reference: policy.name.clone(),
                            expires_at: None,
                            at: now,
                        })
                        .await;
                    report.created = Some(name);
                }
                Err(e) => {
                    self.metrics.failed(&policy.name, "create");
                    tracing::error!(snapshot = %name, error = %e, "snapshot failed");
                    report.errors.push(format!("create {name}: {e}"));
                }
            }
        }
        let mut current = existing;
        if report.created.is_some() || !report.plan.prune.is_empty() {
            // Pruning decisions are made again under the lease (holds may have moved meanwhile).
            match self.prune(policy, rules, target, now, &mut report).await {
                Ok(Some(after)) => current = after,
                Ok(None) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        let check = self
            .check(policy, rules, target, &current, now, check_due)
            .await;
        (report, check)
    }

    /// Refreshes the validity gauges and, when due, publishes the check.
    async fn check(
        &self,
        policy: &PolicyConfig,
        rules: &Rules,
        target: &SnapshotTarget,
        existing: &[plan::Existing],
        now: DateTime<Utc>,
        publish: bool,
    ) -> Option<SnapshotCheck> {
        let check = plan::check(rules, existing, now);
        let target_label = target.to_string();
        let l = [policy.name.as_str(), target_label.as_str()];
        self.metrics.newest_age.set(
            l,
            check.newest_age.map_or(f64::INFINITY, |a| a.as_secs_f64()),
        );
        self.metrics.expected.set(l, check.expected.len() as f64);
        self.metrics.missing.set(l, check.missing.len() as f64);
        if !publish {
            return None;
        }
        let event = SnapshotCheck {
            target: target.clone(),
            policy: policy.name.clone(),
            expected: u32::try_from(check.expected.len()).unwrap_or(u32::MAX),
            missing: check.missing.clone(),
            newest: check.newest.as_ref().map(|(n, _)| n.clone()),
            newest_age_secs: check.newest_age.map(|a| a.as_secs()),
            slo_max_age_secs: rules.slo_max_age.as_secs(),
            ok: check.ok,
            checked_at: now,
        };
        if check.ok {
            tracing::info!(expected = event.expected, "snapshot check passed");
        } else {
            tracing::warn!(missing = ?event.missing, newest_age_secs = ?event.newest_age_secs, "snapshot check failed");
        }
        self.publisher.announce(&event).await;
        Some(event)
    }
}
