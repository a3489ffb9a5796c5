//! The decision on each alert (orchestrator, consumer `orchestrator-alerts`): every matching rule
//! runs its guards in order, and every outcome — acted, or suppressed and by which guard — is a
//! `remediation.decision` event, so no alert goes unaccounted for.
//!
//! Guards, in order: the rule acts on the alert's status (firing only by default); the templates
//! render; the rule's circuit breaker is closed; the threshold (N alerts within T for the target) is
//! reached; the target's cooldown has passed; no other remediation holds the target; not dry-run;
//! the rule's max targets per window and then the global rate limit have room. The two quotas come
//! last so an alert suppressed for another reason uses none. When the global rate limit is
//! already full (read beside the breaker), the later guards are only read, not claimed: the
//! decision is a refusal either way and claims would just be given back.
//!
//! Everything is idempotent per (alert, rule): the workflow id is derived from them, the threshold
//! and quotas count each id once, and a cooldown stamped by this very workflow is a resume, not a
//! refusal — so a redelivered alert re-sends the same work order (dropped by the stream's dedupe)
//! instead of acting twice.

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use proxflow_runtime::admission::{Admissions, Occurrences};
use proxflow_runtime::bus::{Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::guard::{self, Claimed, CooldownClaim};
use proxflow_runtime::kv::{self as cas, Change};
use proxflow_runtime::lease::{Acquired, Lease, LeaseRecord, Leases};
use proxflow_runtime::ops::CounterFamily;
use proxflow_runtime::workflow::Engine as Workflows;
use proxflow_schemas::Message;
use proxflow_schemas::alert::AlertReceived;
use proxflow_schemas::names::key::{self, key_part, target_key};
use proxflow_schemas::remediation::{
    Reason, RemediationAction, RemediationCommand, RemediationDecision, RemediationOutcome,
    RemediationPage, RemediationResult, Verdict,
};
use proxflow_schemas::workflow::Origin;
use serde::{Deserialize, Serialize};

use proxflow_platform::RemediationConfig;

use super::rules::{Action, MaxTargets, Rule, Rules};
use super::template;

/// Whether a quota is only looked at (a decision already refused by a later quota) or counted.
#[derive(Debug, Clone, Copy)]
enum Tally {
    Peek,
    Count,
}

/// The workflow kind the remediator runs for each acted decision.
pub const REMEDIATE: &str = "remediate";

/// The remediation workflow of (alert, rule).
pub fn workflow_id(alert: &AlertReceived, rule: &str) -> String {
    use std::hash::{Hash, Hasher};
    // Not a security boundary: a stable short id; collisions would only merge two audit records.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (alert.dedupe_id(), rule).hash(&mut h);
    format!("remed-{}-{:016x}", key_part(rule), h.finish())
}

/// A rule's breaker state, kept in `pf_cooldowns` under `remediation.breaker.<rule>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct BreakerState {
    /// (when, succeeded, workflow) of the outcomes within the window; the workflow makes a
    /// redelivered outcome count once.
    outcomes: Vec<(DateTime<Utc>, bool, String)>,
    open_until: Option<DateTime<Utc>>,
}

/// The decision on each alert: the guards, then the `remediate` workflow.
pub struct Decider {
    pub(crate) rules: Rules,
    pub(crate) config: RemediationConfig,
    pub(crate) admissions: Admissions,
    pub(crate) leases: Leases,
    pub(crate) kv: kv::Store,
    /// Starts the `remediate` workflows (the remediator advances them).
    pub(crate) workflows: Workflows,
    pub(crate) publisher: Publisher,
    pub(crate) clock: SharedClock,
    /// `proxflow_remediation_decisions_total{rule, verdict, reason}`.
    pub(crate) counts: CounterFamily<3>,
}

/// Why a decision could not be taken now (KV or bus trouble): the alert is retried.
struct Retry(String);

impl<E: std::fmt::Display> From<E> for Retry {
    fn from(e: E) -> Self {
        Retry(e.to_string())
    }
}

impl Handler<AlertReceived> for Decider {
    async fn handle(&self, delivery: Delivery<AlertReceived>) -> Outcome {
        let alert = delivery.message;
        let trace = proxflow_runtime::telemetry::trace_id(&tracing::Span::current());
        let matched: Vec<&Rule> = self.rules.matching(&alert).collect();
        let mut decisions = Vec::new();
        if matched.is_empty() {
            decisions.push(self.decision(
                &alert,
                None,
                Verdict::Ignored,
                Reason::NoRule,
                "no rule matches".into(),
                None,
                &trace,
            ));
        }
        for rule in matched {
            match self.decide(&alert, rule, &trace).await {
                Ok(d) => decisions.push(d),
                Err(Retry(reason)) => return Outcome::retry(reason),
            }
        }
        for d in &decisions {
            tracing::info!(alert = %d.alertname, rule = ?d.rule, verdict = ?d.verdict, reason = ?d.reason, detail = %d.detail, "remediation decision");
            if let Err(e) = self.publisher.publish(d).await {
                return Outcome::retry(format!("auditing the decision: {e}"));
            }
            let name = |v: serde_json::Result<serde_json::Value>| {
                v.ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            self.counts.inc([
                d.rule.as_deref().unwrap_or("-"),
                &name(serde_json::to_value(d.verdict)),
                &name(serde_json::to_value(d.reason)),
            ]);
        }
        Outcome::Ack
    }
}

impl Decider {
    #[allow(clippy::too_many_arguments)]
    fn decision(
        &self,
        alert: &AlertReceived,
        rule: Option<&Rule>,
        verdict: Verdict,
        reason: Reason,
        detail: String,
        target: Option<String>,
        trace: &Option<String>,
    ) -> RemediationDecision {
        RemediationDecision {
            alert_id: alert.dedupe_id(),
            fingerprint: alert.fingerprint.clone(),
            alertname: alert.name().to_string(),
            status: alert.status,
            rule: rule.map(|r| r.spec.name.clone()),
            target,
            verdict,
            reason,
            detail,
            action: rule.map(|r| r.spec.action.kind().to_string()),
            workflow_id: (verdict == Verdict::Acted)
                .then(|| rule.map(|r| workflow_id(alert, &r.spec.name)))
                .flatten(),
            trace_id: trace.clone(),
            at: self.clock.now(),
        }
    }

    async fn decide(
        &self,
        alert: &AlertReceived,
        rule: &Rule,
        trace: &Option<String>,
    ) -> Result<RemediationDecision, Retry> {
        let spec = &rule.spec;
        let now = self.clock.now();
        let no = |reason: Reason, detail: String, target: Option<String>| {
            Ok(self.decision(
                alert,
                Some(rule),
                Verdict::Suppressed,
                reason,
                detail,
                target,
                trace,
            ))
        };
        if !rule.acts_on(alert.status) {
            return Ok(self.decision(
                alert,
                Some(rule),
                Verdict::Ignored,
                Reason::Status,
                format!("the rule does not act on {} alerts", alert.status.as_str()),
                None,
                trace,
            ));
        }
        let (target, action) = match render(rule, alert) {
            Ok(x) => x,
            Err(e) => return no(Reason::Template, e.to_string(), None),
        };
        let t = Some(target.clone());
        let id = workflow_id(alert, &spec.name);
        let tkey = target_key(&target);

        let rate = self.config.rate_limit;
        // The breaker and (for a live rule) the global rate limit are read together: one round
        // trip of latency. A full rate ledger lets the decision below skip the claims it would
        // only give back (see `Admissions::peek`); dry-run claims nothing and needs no look.
        let (breaker, rate_full) = tokio::join!(self.breaker(&spec.name), async {
            if spec.dry_run {
                return Ok(None);
            }
            self.admissions
                .peek("remediation.rate", &id, rate.per, Some(rate.count), now)
                .await
                .map(|o| Some(o).filter(|o| !o.counted))
        });
        let (breaker, rate_full) = (breaker?, rate_full?);
        if let Some(until) = breaker.open_until.filter(|u| *u > now) {
            return no(
                Reason::Breaker,
                format!(
                    "the circuit breaker of rule {} is open until {}",
                    spec.name,
                    until.to_rfc3339()
                ),
                t,
            );
        }
        if let Some(th) = spec.threshold {
            let seen = self
                .admissions
                .occur(
                    &key::remediation_threshold(&spec.name, &target),
                    &alert.dedupe_id(),
                    th.within,
                    None,
                    now,
                )
                .await?;
            if seen.count < th.count {
                return no(
                    Reason::Threshold,
                    format!(
                        "{} of {} alerts for {target} within {}",
                        seen.count,
                        th.count,
                        humantime_serde::re::humantime::format_duration(th.within)
                    ),
                    t,
                );
            }
        }
        // Cooldown, lock and quotas are claimed, each in one compare-and-set or create, so of N
        // concurrent decisions for one target exactly one acts. A claim that a later guard makes
        // pointless is given back (compensated) before the decision is recorded.
        let cooldown_key = key::remediation_cooldown(&spec.name, &target);
        let until = now + chrono::Duration::from_std(spec.cooldown).unwrap_or_default();
        let cooled = |c: &CooldownClaim| {
            format!(
                "rule {} acted on {target} at {} ({}); cooldown until {}",
                spec.name,
                c.at.to_rfc3339(),
                c.workflow_id,
                c.until.to_rfc3339()
            )
        };
        let held = |l: &LeaseRecord| format!("{target} is held by {} ({})", l.holder, l.purpose);
        let too_many_targets = |count: u32, m: &MaxTargets| {
            format!(
                "rule {} acted on {count} targets within {} (max {})",
                spec.name,
                humantime_serde::re::humantime::format_duration(m.per),
                m.count
            )
        };
        let rate_limited = |count: u32| {
            format!(
                "{count} remediations within {} (rate limit {})",
                humantime_serde::re::humantime::format_duration(rate.per),
                rate.count
            )
        };
        if spec.dry_run {
            // Dry-run claims nothing: it reports what the live rule would meet.
            let last = cas::read::<CooldownClaim>(&self.kv, &cooldown_key).await?;
            if let Some(c) = last.value.filter(|c| c.until > now && c.workflow_id != id) {
                return no(Reason::Cooldown, cooled(&c), t);
            }
            if let Some(holder) = self.leases.holder(&key::remediation_lock(&target)).await? {
                return no(Reason::Lock, held(&holder), t);
            }
            return no(
                Reason::DryRun,
                format!("dry-run: would {} ({target})", action.describe()),
                t,
            );
        }
        if let Some(full) = rate_full {
            // The rate limit refuses whatever else happens, so nothing is claimed: the claims would
            // only be given back (claim, lease, rate CAS read, release, give back: 8 KV round trips
            // in sequence against 2 here, and under an alert storm nearly every decision ends
            // here). The guards before it are read, in order, so the decision names
            // the same guard the claims would have: the reads see what the claims would have seen
            // at that instant, and a refusal needs no atomicity (only acting does, and this path
            // never acts).
            let lock_key = key::remediation_lock(&target);
            let (last, holder) = tokio::join!(
                cas::read::<CooldownClaim>(&self.kv, &cooldown_key),
                self.leases.holder(&lock_key)
            );
            if let Some(c) = last?.value.filter(|c| c.until > now && c.workflow_id != id) {
                return no(Reason::Cooldown, cooled(&c), t);
            }
            if let Some(holder) = holder?.filter(|h| h.holder != id) {
                return no(Reason::Lock, held(&holder), t);
            }
            if let Some(m) = spec.max_targets {
                let targets = self
                    .targets(&spec.name, &tkey, &m, now, Tally::Peek)
                    .await?;
                if !targets.counted {
                    return no(Reason::MaxTargets, too_many_targets(targets.count, &m), t);
                }
            }
            return no(Reason::RateLimit, rate_limited(full.count), t);
        }
        let claim = guard::claim_cooldown(&self.kv, &cooldown_key, &id, now, until).await?;
        if let Claimed::Held(c) = &claim {
            return no(Reason::Cooldown, cooled(c), t);
        }
        let lease = match self
            .leases
            .acquire(&key::remediation_lock(&target), &id, &action.describe())
            .await?
        {
            Acquired::Held(lease) => lease,
            Acquired::Busy(other) => {
                self.give_back(&cooldown_key, &id, None).await?;
                return no(Reason::Lock, held(&other), t);
            }
        };
        if let Some(m) = spec.max_targets {
            let targets = self
                .targets(&spec.name, &tkey, &m, now, Tally::Count)
                .await?;
            if !targets.counted {
                self.give_back(&cooldown_key, &id, Some(lease)).await?;
                return no(Reason::MaxTargets, too_many_targets(targets.count, &m), t);
            }
        }
        let used = self
            .admissions
            .occur("remediation.rate", &id, rate.per, Some(rate.count), now)
            .await?;
        if !used.counted {
            self.give_back(&cooldown_key, &id, Some(lease)).await?;
            return no(Reason::RateLimit, rate_limited(used.count), t);
        }
        // The remediator adopts the lease (same holder) and releases it when done; until then it
        // is not renewed here, so a lost work order frees the target with the bucket's max age.
        drop(lease);
        let origin = Origin {
            source: "alert".into(),
            reference: alert.fingerprint.clone(),
            reason: format!(
                "{} ({}) → rule {}: {}",
                alert.name(),
                alert.status.as_str(),
                spec.name,
                action.describe()
            ),
        };
        let command = RemediationCommand {
            workflow_id: id.clone(),
            rule: spec.name.clone(),
            target: target.clone(),
            action: action.clone(),
            alert: alert.clone(),
        };
        // The remediator runs it; a redelivered alert re-starts the same id, which changes nothing.
        self.workflows
            .start_kind(REMEDIATE, &id, origin, &command)
            .await?;
        Ok(self.decision(
            alert,
            Some(rule),
            Verdict::Acted,
            Reason::None,
            action.describe(),
            t,
            trace,
        ))
    }

    /// The rule's max-targets ledger with `target` in it: only looked at, or counted.
    async fn targets(
        &self,
        rule: &str,
        target: &str,
        max: &MaxTargets,
        now: DateTime<Utc>,
        tally: Tally,
    ) -> Result<Occurrences, Retry> {
        let ledger = key::remediation_targets(rule);
        let cap = Some(max.count);
        Ok(match tally {
            Tally::Peek => {
                self.admissions
                    .peek(&ledger, target, max.per, cap, now)
                    .await?
            }
            Tally::Count => {
                self.admissions
                    .occur(&ledger, target, max.per, cap, now)
                    .await?
            }
        })
    }

    /// Gives back the cooldown claim (and the lease) of a decision a later guard refused.
    async fn give_back(
        &self,
        cooldown_key: &str,
        id: &str,
        lease: Option<Lease>,
    ) -> Result<(), Retry> {
        if let Some(lease) = lease {
            lease.release().await?;
        }
        guard::release_cooldown(&self.kv, cooldown_key, id).await?;
        Ok(())
    }

    async fn breaker(&self, rule: &str) -> Result<BreakerState, Retry> {
        Ok(self
            .kv
            .get(key::remediation_breaker(rule))
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }
}

/// Why a rule's target or action could not be filled in from an alert (the decision is then
/// suppressed with reason `template`, naming the field).
#[derive(Debug, thiserror::Error)]
enum RenderError {
    /// A template needs what the alert lacks.
    #[error("{field}: {source}")]
    Template {
        /// The rule's field (`target`, `action.vmid`, `action.argv[1]`).
        field: String,
        /// What is missing.
        #[source]
        source: template::TemplateError,
    },
    /// The rendered VMID is not one.
    #[error("action.vmid: {value:?} is not a VMID")]
    Vmid {
        /// What the template gave.
        value: String,
    },
}

/// The rule's target and action with the alert's labels filled in.
fn render(rule: &Rule, alert: &AlertReceived) -> Result<(String, RemediationAction), RenderError> {
    let r = |text: &str, field: &str| {
        template::render(text, alert).map_err(|source| RenderError::Template {
            field: field.to_string(),
            source,
        })
    };
    let vmid = |text: &str| -> Result<u32, RenderError> {
        let value = r(text, "action.vmid")?;
        value.parse().map_err(|_| RenderError::Vmid { value })
    };
    let target = r(&rule.spec.target, "target")?;
    let action = match &rule.spec.action {
        Action::RestartVm {
            vmid: v,
            shutdown_timeout,
        } => RemediationAction::RestartVm {
            vmid: vmid(v)?,
            shutdown_timeout_secs: shutdown_timeout.as_secs(),
        },
        Action::SnapshotVm { vmid: v, .. } => RemediationAction::SnapshotVm { vmid: vmid(v)? },
        Action::ScaleOut { cluster } => RemediationAction::ScaleOut {
            cluster: r(cluster, "action.cluster")?,
        },
        Action::Replicate { job } => RemediationAction::Replicate {
            job: r(job, "action.job")?,
        },
        Action::PruneSnapshots { pool } => RemediationAction::PruneSnapshots {
            pool: r(pool, "action.pool")?,
        },
        Action::Notify { url } => RemediationAction::Notify {
            url: template::render_url(url, alert).map_err(|source| RenderError::Template {
                field: "action.url".to_string(),
                source,
            })?,
        },
        Action::Command { argv, timeout } => RemediationAction::Command {
            argv: argv
                .iter()
                .enumerate()
                .map(|(i, a)| r(a, &format!("action.argv[{i}]")))
                .collect::<Result<_, _>>()?,
            timeout_secs: timeout.as_secs(),
        },
    };
    Ok((target, action))
}

/// Feeds each outcome into its rule's breaker (consumer `orchestrator-remediation-outcomes`); the
/// breaker opening pages (`remediation.page`) once.
pub struct Breakers {
    pub(crate) config: RemediationConfig,
    pub(crate) kv: kv::Store,
    pub(crate) publisher: Publisher,
    pub(crate) clock: SharedClock,
}

impl Handler<RemediationOutcome> for Breakers {
    async fn handle(&self, delivery: Delivery<RemediationOutcome>) -> Outcome {
        let outcome = delivery.message;
        // A target found busy is not a remediation that ran: the breaker never counts it.
        let succeeded = match outcome.result() {
            RemediationResult::Busy => return Outcome::Ack,
            RemediationResult::Succeeded => true,
            RemediationResult::Failed | RemediationResult::Refused => false,
        };
        let key = key::remediation_breaker(&outcome.rule);
        let b = self.config.breaker;
        let window = chrono::Duration::from_std(b.window).unwrap_or(chrono::Duration::hours(1));
        let now = self.clock.now();
        let changed = cas::change(&self.kv, &key, |current: Option<BreakerState>| {
            let mut state = current.unwrap_or_default();
            state.outcomes.retain(|(t, _, _)| now - *t < window);
            if state
                .outcomes
                .iter()
                .any(|(_, _, w)| *w == outcome.workflow_id)
            {
                return Change::Keep(None);
            }
            state
                .outcomes
                .push((outcome.at, succeeded, outcome.workflow_id.clone()));
            let total = u32::try_from(state.outcomes.len()).unwrap_or(u32::MAX);
            let failures = u32::try_from(state.outcomes.iter().filter(|(_, ok, _)| !ok).count())
                .unwrap_or(u32::MAX);
            let was_open = state.open_until.is_some_and(|u| u > now);
            let opens = !was_open
                && total >= b.min_outcomes
                && f64::from(failures) / f64::from(total) >= b.failure_ratio;
            if opens {
                state.open_until =
                    Some(now + chrono::Duration::from_std(b.open_for).unwrap_or_default());
            }
            let opened = state
                .open_until
                .filter(|_| opens)
                .map(|until| (until, failures, total));
            Change::Write(state, opened)
        })
        .await;
        let (until, failures, total) = match changed {
            Ok((Some(opened), _)) => opened,
            Ok((None, _)) => return Outcome::Ack,
            Err(e) => return Outcome::retry(e.to_string()),
        };
        let page = RemediationPage {
            rule: outcome.rule.clone(),
            reason: format!(
                "{failures} of {total} remediations by rule {} failed within {} (breaker at {:.0} %); the rule is suppressed until {}; last error: {}",
                outcome.rule,
                humantime_serde::re::humantime::format_duration(b.window),
                b.failure_ratio * 100.0,
                until.to_rfc3339(),
                outcome.error.as_deref().unwrap_or("-")
            ),
            failures,
            outcomes: total,
            open_until: until,
            at: now,
        };
        tracing::error!(rule = %outcome.rule, reason = %page.reason, "remediation breaker opened");
        match self.publisher.publish(&page).await {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::retry(format!("paging: {e}")),
        }
    }
}
