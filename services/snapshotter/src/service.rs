//! The snapshotter service: every `snapshot.interval` it evaluates each policy on each of its
//! targets (take the due snapshot, prune what the grid lets go under the target's lease, refresh the
//! validity gauges, publish the validity check when its schedule says), it answers pre-change
//! requests on [`subject::RPC_SNAPSHOTTER_PRECHANGE`], and it applies the retention on a pool when a
//! remediation asks (`pf.cmd.snapshotter.prune`, durable [`durable::SNAPSHOTTER_PRUNE`]).
//!
//! Pruning re-reads the target's snapshots after taking the lease: the replicator moves its hold to a
//! new base while it holds the same lease, so the holds seen under the lease are current, and a
//! held snapshot is never destroyed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxflow_pve::PveClient;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::config::ConfigError;
use proxflow_runtime::lease::{Acquired, LeaseError, Leases};
use proxflow_runtime::ops::{CounterFamily, GaugeFamily, Health, Metrics};
use proxflow_schemas::Versioned;
use proxflow_schemas::names::{durable, header, stream, subject};
use proxflow_schemas::snapshot::{
    PreChangeReply, PreChangeRequest, PruneRequested, SnapshotCheck, SnapshotKind, SnapshotTaken,
    SnapshotTarget, SnapshotsPruned,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{PolicyConfig, SnapshotConfig};
use crate::naming::{self, NameKind};
use crate::plan::{self, Plan, Rules};
use crate::schedule::Schedule;
use crate::target::{self, Backends};

/// Queue group of the pre-change responders: one instance answers each request.
pub const QUEUE_GROUP: &str = "snapshotter";

/// How long a pre-change request waits for another one on the same target (a snapshot takes
/// seconds; callers time out after tens of seconds).
const PRECHANGE_LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often it looks again meanwhile.
const PRECHANGE_LOCK_POLL: Duration = Duration::from_millis(50);

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

/// The snapshotter's Prometheus metrics.
#[derive(Debug, Clone)]
struct SnapshotMetrics {
    newest_age: GaugeFamily<2>,
    expected: GaugeFamily<2>,
    missing: GaugeFamily<2>,
    taken: CounterFamily<2>,
    pruned: CounterFamily<1>,
    failures: CounterFamily<2>,
}

impl SnapshotMetrics {
    fn register(metrics: &Metrics) -> Self {
        Self {
            newest_age: metrics.gauge_family(
                "snapshot_newest_age_seconds",
                "Age of the newest scheduled snapshot, per policy and target",
                ["policy", "target"],
            ),
            expected: metrics.gauge_family(
                "snapshot_expected",
                "Scheduled snapshots the policy says should exist now",
                ["policy", "target"],
            ),
            missing: metrics.gauge_family(
                "snapshot_missing",
                "Expected scheduled snapshots that do not exist",
                ["policy", "target"],
            ),
            taken: metrics.counter_family(
                "snapshots_taken",
                "Snapshots taken, per policy (or prechange) and kind",
                ["policy", "kind"],
            ),
            pruned: metrics.counter_family(
                "snapshots_pruned",
                "Snapshots destroyed by retention, per policy",
                ["policy"],
            ),
            failures: metrics.counter_family(
                "snapshot_failures",
                "Failed snapshot operations, per policy and operation",
                ["policy", "operation"],
            ),
        }
    }

    fn failed(&self, policy: &str, operation: &str) {
        self.failures.inc([policy, operation]);
    }
}

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
    fn new(policy: &PolicyConfig, target: &SnapshotTarget) -> Self {
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
#[derive(Debug, Clone)]
pub struct TargetPlan {
    /// The policy.
    pub policy: String,
    /// The target.
    pub target: SnapshotTarget,
    /// Its plan, or why there is none.
    pub plan: Result<Plan, String>,
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
                    plan: Err(e.to_string()),
                });
                continue;
            }
        };
        for target in targets.into_iter().filter(|t| claimed.insert(t.clone())) {
            let plan = backends
                .list(&target)
                .await
                .map(|existing| plan::plan(&rules, &existing, now))
                .map_err(|e| e.to_string());
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

/// The service's state.
pub struct Snapshotter {
    config: SnapshotConfig,
    policies: Vec<(PolicyConfig, Rules)>,
    check_schedule: Schedule,
    backends: Backends,
    clock: SharedClock,
    publisher: Publisher,
    leases: Leases,
    holder: String,
    metrics: SnapshotMetrics,
    last_check: Mutex<Option<DateTime<Utc>>>,
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
            holder: format!(
                "snapshotter-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            metrics: SnapshotMetrics::register(&ctx.metrics),
            last_check: Mutex::new(None),
            config,
        })
    }

    /// The systems it snapshots.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

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
    async fn targets(
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
                    target_report.errors.push(e);
                }
            }
            .instrument(span)
            .await;
            report.targets.push(target_report);
        }
        report
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
                    self.announce(&SnapshotTaken {
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
                Err(e) => report.errors.push(e),
            }
        }
        let check = self
            .check(policy, rules, target, &current, now, check_due)
            .await;
        (report, check)
    }

    /// Prunes under the target's lease; returns the snapshots as they were under it.
    async fn prune(
        &self,
        policy: &PolicyConfig,
        rules: &Rules,
        target: &SnapshotTarget,
        now: DateTime<Utc>,
        report: &mut TargetReport,
    ) -> Result<Option<Vec<plan::Existing>>, String> {
        let key = target::lease_key(target);
        let lease = match self
            .leases
            .acquire(
                &key,
                &self.holder,
                &format!("prune {target} ({})", policy.name),
            )
            .await
        {
            Ok(Acquired::Held(lease)) => lease,
            Ok(Acquired::Busy(by)) => {
                tracing::info!(lease = %key, holder = %by.holder, purpose = %by.purpose, "target busy; pruning next pass");
                report.skipped = Some(format!(
                    "lease {key} held by {} ({})",
                    by.holder, by.purpose
                ));
                return Ok(None);
            }
            Err(e) => {
                self.metrics.failed(&policy.name, "lease");
                return Err(e.to_string());
            }
        };
        let result = async {
            let existing = self
                .backends
                .list(target)
                .await
                .map_err(|e| e.to_string())?;
            let plan = plan::plan(rules, &existing, now);
            let mut pruned = Vec::new();
            for name in &plan.prune {
                if !lease.is_held() {
                    return Err(format!("lease {key} lost while pruning"));
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
        .await;
        if let Err(e) = lease.release().await {
            tracing::warn!(lease = %key, error = %e, "lease not released; it ages out");
        }
        let (plan, pruned, remaining) = result?;
        if !pruned.is_empty() {
            self.metrics
                .pruned
                .inc_by([&policy.name], pruned.len() as u64);
            self.announce(&SnapshotsPruned {
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
        self.announce(&event).await;
        Some(event)
    }

    async fn announce<M: proxflow_schemas::Message>(&self, event: &M) {
        if let Err(e) = self.publisher.publish(event).await {
            tracing::error!(error = %e, subject = %event.subject(), "event not published");
        }
    }

    /// Takes (or finds, for a repeated request) the pre-change snapshot `request` asks for.
    pub async fn prechange(&self, request: &PreChangeRequest) -> PreChangeReply {
        let span = tracing::info_span!(
            "snapshot.prechange",
            otel.name = %format!("pre-change snapshot {}", request.target),
            request = %request.request_id,
            target = %request.target,
        );
        self.prechange_inner(request).instrument(span).await
    }

    async fn prechange_inner(&self, request: &PreChangeRequest) -> PreChangeReply {
        let refuse = |error: String| refused(request, error);
        if request.request_id.trim().is_empty()
            || request.request_id.len() > 200
            || request.request_id.chars().any(char::is_control)
        {
            return refuse("request_id must be 1-200 printable characters".into());
        }
        if let SnapshotTarget::Dataset { dataset } = &request.target
            && !proxflow_zfs::names::is_dataset_name(dataset)
        {
            return refuse(format!("{dataset:?} is not a dataset name"));
        }
        let ttl = request
            .ttl_secs
            .map(Duration::from_secs)
            .unwrap_or(self.config.prechange_ttl)
            .min(self.config.prechange_max_ttl);
        if ttl.is_zero() {
            return refuse("ttl_secs must be above zero".into());
        }
        // One pre-change snapshot of a target at a time, across replicas: otherwise two copies of
        // one request (a retry racing the original) both find no snapshot and both take one. A
        // lease of its own, not the target's: a replication holding the dataset for an hour must
        // not delay a patch. The holder is unique per call, so requests within this process
        // exclude each other too.
        let key = format!("prechange/{}", target::lease_key(&request.target));
        let holder = format!("{}/{:08x}", self.holder, rand::random::<u32>());
        let purpose = format!("pre-change {}", request.request_id);
        let deadline = tokio::time::Instant::now() + PRECHANGE_LOCK_WAIT;
        let lease = loop {
            match self.leases.acquire(&key, &holder, &purpose).await {
                Ok(Acquired::Held(lease)) => break lease,
                Ok(Acquired::Busy(by)) if tokio::time::Instant::now() >= deadline => {
                    return refuse(format!(
                        "another pre-change snapshot of {} is being taken ({}, {}); ask again",
                        request.target, by.holder, by.purpose
                    ));
                }
                Ok(Acquired::Busy(_)) => tokio::time::sleep(PRECHANGE_LOCK_POLL).await,
                Err(e) => {
                    self.metrics.failed("prechange", "lease");
                    return refuse(e.to_string());
                }
            }
        };
        let reply = self.prechange_locked(request, ttl).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(lease = %key, error = %e, "lease not released; it ages out");
        }
        reply
    }

    /// The pre-change snapshot under the target's pre-change lease: the existing one for this
    /// request, or a new one.
    async fn prechange_locked(&self, request: &PreChangeRequest, ttl: Duration) -> PreChangeReply {
        let refuse = |error: String| refused(request, error);
        let prefix = &self.config.prefix;
        let existing = match self.backends.list(&request.target).await {
            Ok(e) => e,
            Err(e) => {
                self.metrics.failed("prechange", "list");
                return refuse(e.to_string());
            }
        };
        let stem = naming::prechange_stem(prefix, &request.request_id);
        if let Some((found, parsed)) = existing.iter().find_map(|e| {
            naming::parse(prefix, &e.name)
                .filter(|p| p.kind == NameKind::PreChange && e.name.starts_with(&stem))
                .map(|p| (e, p))
        }) {
            tracing::info!(snapshot = %found.name, "pre-change snapshot already taken for this request");
            let fallback = chrono::Duration::from_std(self.config.prechange_ttl)
                .unwrap_or(chrono::Duration::MAX);
            return PreChangeReply {
                request_id: request.request_id.clone(),
                snapshot: Some(found.name.clone()),
                expires_at: Some(found.expires.unwrap_or(parsed.at + fallback)),
                existing: true,
                error: None,
            };
        }
        let now = self.clock.now();
        let name = naming::prechange(prefix, &request.request_id, now);
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let reason: String = request
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        let description = format!("proxflow pre-change {}: {reason}", request.request_id);
        if let Err(e) = self
            .backends
            .create(&request.target, &name, &description, Some(expires))
            .await
        {
            self.metrics.failed("prechange", "create");
            return refuse(format!("snapshot {name}: {e}"));
        }
        tracing::info!(snapshot = %name, expires = %expires, "pre-change snapshot taken");
        self.metrics.taken.inc(["prechange", "prechange"]);
        self.announce(&SnapshotTaken {
            target: request.target.clone(),
            snapshot: name.clone(),
            kind: SnapshotKind::PreChange,
            reference: request.request_id.clone(),
            expires_at: Some(expires),
            at: now,
        })
        .await;
        PreChangeReply {
            request_id: request.request_id.clone(),
            snapshot: Some(name),
            expires_at: Some(expires),
            existing: false,
            error: None,
        }
    }

    /// Answers pre-change requests until `shutdown` (queue group [`QUEUE_GROUP`]).
    pub async fn serve_prechange(
        self: Arc<Self>,
        client: async_nats::Client,
        health: Health,
        shutdown: CancellationToken,
    ) -> Result<(), ServiceError> {
        let mut requests = client
            .queue_subscribe(subject::RPC_SNAPSHOTTER_PRECHANGE, QUEUE_GROUP.into())
            .await
            .map_err(|e| ServiceError::Subscribe {
                subject: subject::RPC_SNAPSHOTTER_PRECHANGE,
                reason: e.to_string(),
            })?;
        // The subscription exists on the server once the client flushed it.
        let _ = client.flush().await;
        health.set("snapshotter.prechange", true);
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = requests.next() => {
                    let Some(message) = next else { break };
                    let (this, client) = (self.clone(), client.clone());
                    tracker.spawn(async move { this.answer(&client, message).await });
                }
            }
        }
        health.set("snapshotter.prechange", false);
        let _ = requests.unsubscribe().await;
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    async fn answer(&self, client: &async_nats::Client, message: async_nats::Message) {
        let Some(reply_to) = message.reply.clone() else {
            tracing::warn!("pre-change request without a reply subject ignored");
            return;
        };
        let reply = match serde_json::from_slice::<PreChangeRequest>(&message.payload) {
            Ok(request) => self.prechange(&request).await,
            Err(e) => PreChangeReply {
                request_id: String::new(),
                snapshot: None,
                expires_at: None,
                existing: false,
                error: Some(format!("undecodable request: {e}")),
            },
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::SCHEMA, PreChangeReply::SCHEMA.to_string().as_str());
        match serde_json::to_vec(&reply) {
            Ok(body) => {
                if let Err(e) = client
                    .publish_with_headers(reply_to, headers, body.into())
                    .await
                {
                    tracing::error!(error = %e, "pre-change reply not sent");
                }
            }
            Err(e) => tracing::error!(error = %e, "pre-change reply not encodable"),
        }
    }
}

/// Why a pre-change request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Encoding failed.
    #[error("encoding the request: {0}")]
    Encode(#[from] serde_json::Error),
    /// No reply within the timeout, or no snapshotter listening.
    #[error("no answer from the snapshotter: {0}")]
    NoAnswer(String),
    /// The reply does not decode.
    #[error("undecodable reply: {0}")]
    Decode(String),
}

/// Asks the snapshotter for a pre-change snapshot and waits up to `timeout` for its answer (the
/// caller's side of [`Snapshotter::serve_prechange`]).
pub async fn request_prechange(
    client: &async_nats::Client,
    request: &PreChangeRequest,
    timeout: Duration,
) -> Result<PreChangeReply, RequestError> {
    let body = serde_json::to_vec(request)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SCHEMA,
        PreChangeRequest::SCHEMA.to_string().as_str(),
    );
    let answer = tokio::time::timeout(
        timeout,
        client.request_with_headers(subject::RPC_SNAPSHOTTER_PRECHANGE, headers, body.into()),
    )
    .await
    .map_err(|_| RequestError::NoAnswer(format!("timed out after {timeout:?}")))?
    .map_err(|e| RequestError::NoAnswer(e.to_string()))?;
    serde_json::from_slice(&answer.payload).map_err(|e| RequestError::Decode(e.to_string()))
}

/// A refused pre-change request's answer.
fn refused(request: &PreChangeRequest, error: String) -> PreChangeReply {
    tracing::warn!(%error, "pre-change request refused");
    PreChangeReply {
        request_id: request.request_id.clone(),
        snapshot: None,
        expires_at: None,
        existing: false,
        error: Some(error),
    }
}

/// Prunes a pool on request (a remediation of a filling pool).
struct PruneOnRequest {
    snapshotter: Arc<Snapshotter>,
}

impl Handler<PruneRequested> for PruneOnRequest {
    async fn handle(&self, delivery: Delivery<PruneRequested>) -> Outcome {
        let request = delivery.message;
        tracing::info!(pool = %request.pool, reason = %request.reason, "prune requested");
        let report = self.snapshotter.prune_pool(&request).await;
        if report.targets.is_empty() {
            // A human must look: the pool fills and no policy here can free anything on it.
            return Outcome::poison(format!(
                "no snapshot policy covers a dataset on pool {:?}; nothing to prune",
                request.pool
            ));
        }
        // Pruning again is harmless (the plan is recomputed), so a busy target is retried.
        if let Some(busy) = report.targets.iter().find_map(|t| t.skipped.clone()) {
            return Outcome::retry(busy);
        }
        let pruned: usize = report.targets.iter().map(|t| t.pruned.len()).sum();
        let errors: Vec<&String> = report.targets.iter().flat_map(|t| &t.errors).collect();
        if errors.is_empty() {
            tracing::info!(pool = %request.pool, pruned, "requested prune done");
        } else {
            // The failures are counted in the metrics; the next scheduled pass tries again.
            tracing::warn!(pool = %request.pool, pruned, ?errors, "requested prune partly failed");
        }
        Outcome::Ack
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
            ConsumerSpec {
                stream: stream::CMD,
                durable: durable::SNAPSHOTTER_PRUNE.into(),
                filter_subject: subject::cmd("snapshotter", "prune"),
            },
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
