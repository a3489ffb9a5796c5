//! Scale-out: a k3s cluster's `capacity.exceeded` becomes one more node, through the same provision
//! path as a webhook request, unless a guard says no.
//!
//! Guards, in order, each ending the scale-out workflow `cancelled` with the numbers:
//! 1. **cap** — the cluster already has `max_nodes` nodes;
//! 2. **cooldown** — the last scale-out of the cluster started less than `cooldown` ago;
//! 3. **host headroom** — with one more node the host's memory commitment would pass its budget
//!    (1.5:1) or the node's storage its limit: vetoed, and `capacity.host_exhausted` is published,
//!    because more automation cannot fix a full host;
//! 4. **dry-run** — everything above is evaluated and recorded, nothing is done;
//! 5. **one at a time** — the cluster's scale-out slot in KV (`pf_admissions`, key
//!    `scaleout.<cluster>`) is free; it is held until the new node's provision ends.
//!
//! The workflow id is derived from the firing (cluster, run start, sequence), so a re-delivered or
//! re-published event, or a second capacity replica, finds the workflow already there and does not
//! scale twice.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use proxflow_platform::{ClusterConfig, Clusters, Profile, Profiles};
use proxflow_runtime::admission::{Admissions, Caps, Decision};
use proxflow_runtime::bus::{Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::workflow::WorkflowStore;

use crate::admit::{Admitted, ProvisionAdmission};
use proxflow_schemas::Message;
use proxflow_schemas::capacity::{
    CapacityExceeded, CapacitySample, HostExhausted, MetricId, ScaleOutRequested, Scope,
};
use proxflow_schemas::names::key;
use proxflow_schemas::provision::{IpConfig, ProvisionRequested, VmOverrides};
use proxflow_schemas::remediation::{HandOffOutcome, HandOffResult};
use proxflow_schemas::workflow::{Origin, WorkflowRecord, WorkflowState};
use serde::{Deserialize, Serialize};
use serde_json::json;

const GIB: f64 = (1u64 << 30) as f64;

/// The scale-out workflow of a firing.
pub fn workflow_id(event: &CapacityExceeded) -> String {
    format!(
        "scaleout-{}-{}-{}",
        event.metric.name,
        event.since.timestamp_millis(),
        event.sequence
    )
}

/// The last scale-out of a cluster, kept in `pf_cooldowns` under `scaleout.<cluster>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastScaleOut {
    workflow_id: String,
    started_at: DateTime<Utc>,
    node: String,
}

pub(crate) struct ScaleOut {
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) store: WorkflowStore,
    pub(crate) admissions: Admissions,
    /// Provision admission, entered directly (not through the webhook's ingest subject).
    pub(crate) provisions: ProvisionAdmission,
    pub(crate) cooldowns: kv::Store,
    pub(crate) publisher: Publisher,
    pub(crate) profiles: Profiles,
    pub(crate) clusters: Clusters,
    pub(crate) clock: SharedClock,
}

/// The provision a scale-out dispatches.
fn provision_of(scale_out: &str) -> String {
    format!("{scale_out}-node")
}

/// The scale-out a provision was dispatched by, if it was.
pub(crate) fn of_provision(provision: &str) -> Option<&str> {
    provision
        .strip_suffix("-node")
        .filter(|s| s.starts_with("scaleout-"))
}

/// Tells the remediation that asked for scale-out `record` (if one did) how it ended
/// (`pf.evt.handoff.scale_out`). A scale-out the capacity detector started has no one to tell.
pub(crate) async fn tell_requester(
    publisher: &Publisher,
    record: &WorkflowRecord,
    result: HandOffResult,
    detail: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), Outcome> {
    if record.origin.source != REQUESTED {
        return Ok(());
    }
    let mut outcome =
        HandOffOutcome::new(&record.origin.reference, "scale_out", result, detail, at);
    outcome.reference = Some(record.id.clone());
    publisher
        .publish(&outcome)
        .await
        .map(drop)
        .map_err(|e| Outcome::retry(format!("reporting the scale-out's outcome: {e}")))
}

/// The origin source of a scale-out an alert remediation asked for.
const REQUESTED: &str = "alert";

/// Why a scale-out did not provision.
enum Stop {
    /// A guard said no; the reason names it and its numbers.
    Refused(String),
    /// Host headroom veto.
    Vetoed(Box<HostExhausted>),
    /// Dry-run: what would have been done.
    DryRun(String),
}

impl Handler<CapacityExceeded> for ScaleOut {
    async fn handle(&self, delivery: Delivery<CapacityExceeded>) -> Outcome {
        let event = delivery.message;
        if event.metric.scope != Scope::Cluster {
            return Outcome::Ack;
        }
        let Some(cluster) = self.clusters.get(&event.metric.name) else {
            tracing::info!(metric = %event.metric, "exceeded metric of an unconfigured cluster; not scaling");
            return Outcome::Ack;
        };
        let so = &cluster.scale_out;
        if !so.enabled || !so.triggers.contains(&event.metric.metric) {
            return Outcome::Ack;
        }
        let origin = Origin {
            source: "capacity".into(),
            reference: event.firing_id(),
            reason: format!(
                "{} at {:.1} above {} for {}",
                event.metric,
                event.value,
                event.threshold,
                humantime_serde::re::humantime::format_duration(Duration::from_secs(
                    event.window_secs
                ))
            ),
        };
        self.scale(&workflow_id(&event), &event, cluster, origin)
            .await
    }
}

/// A scale-out asked for by an alert remediation: decided on the newest `capacity.sample`, under
/// the same guards as one the capacity detector starts.
impl Handler<ScaleOutRequested> for ScaleOut {
    async fn handle(&self, delivery: Delivery<ScaleOutRequested>) -> Outcome {
        let request = delivery.message;
        let Some(cluster) = self.clusters.get(&request.cluster) else {
            let why = format!("no cluster {:?} in [capacity.clusters]", request.cluster);
            return self.fail_request(&request, why).await;
        };
        let sample = match self.latest_sample().await {
            Ok(Some(sample)) => sample,
            Ok(None) => {
                let why = "no capacity.sample on the bus yet: is the capacity service running?";
                return self.fail_request(&request, why.into()).await;
            }
            Err(e) => return Outcome::retry(e),
        };
        let event = CapacityExceeded {
            metric: MetricId::new(Scope::Cluster, &request.cluster, "requested"),
            value: 0.0,
            threshold: 0.0,
            clear_below: 0.0,
            window_secs: 0,
            since: sample.at,
            sequence: 0,
            evidence: Vec::new(),
            sample,
        };
        let origin = Origin {
            source: REQUESTED.into(),
            reference: request.workflow_id.clone(),
            reason: request.reason.clone(),
        };
        let id = format!("scaleout-{}-{}", request.cluster, request.workflow_id);
        self.scale(&id, &event, cluster, origin).await
    }
}

impl ScaleOut {
    /// A request that can never be decided: its requester hears `failed`, and it is dead-lettered.
    async fn fail_request(&self, request: &ScaleOutRequested, why: String) -> Outcome {
        let now = self.clock.now();
        let outcome = HandOffOutcome::new(
            &request.workflow_id,
            "scale_out",
            HandOffResult::Failed,
            &why,
            now,
        );
        match self.publisher.publish(&outcome).await {
            Ok(_) => Outcome::poison(why),
            Err(e) => Outcome::retry(format!("reporting the scale-out's outcome: {e}")),
        }
    }

    /// The newest `capacity.sample` in the event stream.
    async fn latest_sample(&self) -> Result<Option<CapacitySample>, String> {
        let stream = self
            .js
            .get_stream(proxflow_schemas::names::stream::EVT)
            .await
            .map_err(|e| e.to_string())?;
        match stream
            .get_last_raw_message_by_subject(CapacitySample::SUBJECT)
            .await
        {
            Ok(message) => serde_json::from_slice(&message.payload)
                .map(Some)
                .map_err(|e| format!("the newest capacity sample does not decode: {e}")),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Records the scale-out workflow (once) and runs the guards and the dispatch.
    async fn scale(
        &self,
        id: &str,
        event: &CapacityExceeded,
        cluster: &ClusterConfig,
        origin: Origin,
    ) -> Outcome {
        let id = id.to_string();
        match self.store.get(&id).await {
            Ok(Some((record, _))) if record.state.is_terminal() => {
                tracing::info!(workflow = %id, "scale-out already decided");
                // A redelivered request after a refusal tells its requester again (deduplicated).
                if record.state == WorkflowState::Cancelled {
                    let why = record.error.clone().unwrap_or_default();
                    let now = self.clock.now();
                    if let Err(retry) =
                        tell_requester(&self.publisher, &record, HandOffResult::Refused, &why, now)
                            .await
                    {
                        return retry;
                    }
                }
                return Outcome::Ack;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let trace = proxflow_runtime::telemetry::trace_id(&tracing::Span::current());
                let record = self.new_record(&id, origin, trace);
                if let Err(e) = self.store.create(&record).await {
                    return Outcome::retry(e.to_string());
                }
            }
            Err(e) if !e.is_transient() => return Outcome::poison(e.to_string()),
            Err(e) => return Outcome::retry(e.to_string()),
        }
        match self.decide(&id, event, cluster).await {
            Ok(Ok((node, provision))) => {
                let data = json!({ "node": node, "provision_workflow": provision });
                self.end(&id, WorkflowState::Succeeded, None, data).await
            }
            Ok(Err(Stop::Refused(reason))) => {
                tracing::info!(workflow = %id, %reason, "scale-out refused");
                self.end(&id, WorkflowState::Cancelled, Some(reason), json!({}))
                    .await
            }
            Ok(Err(Stop::DryRun(what))) => {
                tracing::info!(workflow = %id, %what, "scale-out dry-run");
                let data = json!({ "dry_run": true });
                self.end(&id, WorkflowState::Cancelled, Some(what), data)
                    .await
            }
            Ok(Err(Stop::Vetoed(exhausted))) => {
                tracing::warn!(workflow = %id, reason = %exhausted.reason, "scale-out vetoed: host exhausted");
                if let Err(e) = self.publisher.publish(exhausted.as_ref()).await {
                    return Outcome::retry(format!("publishing capacity.host_exhausted: {e}"));
                }
                let data = serde_json::to_value(exhausted.as_ref()).unwrap_or_default();
                let reason = format!("vetoed: {}", exhausted.reason);
                self.end(&id, WorkflowState::Cancelled, Some(reason), data)
                    .await
            }
            Err(retry) => retry,
        }
    }
}

impl ScaleOut {
    fn new_record(&self, id: &str, origin: Origin, trace_id: Option<String>) -> WorkflowRecord {
        let now = self.clock.now();
        WorkflowRecord {
            id: id.to_string(),
            kind: "scale_out".into(),
            state: WorkflowState::Running,
            origin,
            steps: Vec::new(),
            data: json!({}),
            error: None,
            trace_id,
            traceparent: None,
            wait: None,
            parent: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Records how the scale-out ended; a refusal is also told to the remediation that asked (a
    /// dispatched one is told when its provision ends, see [`tell_requester`]).
    async fn end(
        &self,
        id: &str,
        state: WorkflowState,
        reason: Option<String>,
        data: serde_json::Value,
    ) -> Outcome {
        let record = match self
            .store
            .update(id, |r| {
                r.state = state;
                r.error = reason.clone();
                r.data = data.clone();
            })
            .await
        {
            Ok(record) => record,
            Err(e) => return Outcome::retry(e.to_string()),
        };
        if state == WorkflowState::Cancelled {
            let why = reason.unwrap_or_default();
            let now = self.clock.now();
            if let Err(retry) =
                tell_requester(&self.publisher, &record, HandOffResult::Refused, &why, now).await
            {
                return retry;
            }
        }
        Outcome::Ack
    }

    /// Runs the guards and, when all pass, dispatches the provision. `Ok(Ok((node, provision id)))`
    /// when provisioned; `Err` is the outcome to hand back for a retry.
    async fn decide(
        &self,
        id: &str,
        event: &CapacityExceeded,
        cluster: &ClusterConfig,
    ) -> Result<Result<(String, String), Stop>, Outcome> {
        let so = &cluster.scale_out;
        let name = &event.metric.name;
        let dry = |s: String| {
            if so.dry_run {
                format!("dry-run: {s}")
            } else {
                s
            }
        };
        let Some(profile) = self.profiles.get(&so.profile) else {
            return Ok(Err(Stop::Refused(format!(
                "scale-out profile '{}' is not configured (known: {})",
                so.profile,
                self.profiles.names().join(", ")
            ))));
        };
        let Some(members) = event.sample.cluster(name) else {
            return Ok(Err(Stop::Refused(format!(
                "the event carries no sample of cluster {name}"
            ))));
        };
        let last = self.last(name).await?;
        // A redelivery of the event after its provision was dispatched resumes at the dispatch.
        let resumed = last.as_ref().filter(|l| l.workflow_id == id).cloned();
        let now = self.clock.now();
        let node = match &resumed {
            Some(l) => l.node.clone(),
            None => next_name(&so.name_prefix, &members.nodes, last.as_ref()),
        };
        if resumed.is_none() {
            let nodes = members.nodes.len() as u32;
            if nodes >= so.max_nodes {
                return Ok(Err(Stop::Refused(dry(format!(
                    "cap reached: cluster {name} has {nodes} nodes, max_nodes {}",
                    so.max_nodes
                )))));
            }
            if let Some(l) = &last {
                let cooldown = chrono::Duration::from_std(so.cooldown).unwrap_or_default();
                if now < l.started_at + cooldown {
                    return Ok(Err(Stop::Refused(dry(format!(
                        "cooldown: the last scale-out of {name} ({}, node {}) started at {}; the next is allowed from {}",
                        l.workflow_id,
                        l.node,
                        l.started_at.to_rfc3339(),
                        (l.started_at + cooldown).to_rfc3339()
                    )))));
                }
            }
            if let Some(veto) = headroom(id, name, event, cluster, profile, now) {
                if so.dry_run {
                    return Ok(Err(Stop::DryRun(dry(format!(
                        "would veto: {}",
                        veto.reason
                    )))));
                }
                return Ok(Err(Stop::Vetoed(Box::new(veto))));
            }
            if so.dry_run {
                let h = &event.sample.host;
                return Ok(Err(Stop::DryRun(format!(
                    "dry-run: would provision {node} (profile {}) for cluster {name}: {} nodes, memory commitment {:.2}:1 of budget {:.2}:1",
                    so.profile,
                    members.nodes.len(),
                    h.memory_commitment_ratio,
                    so.memory_commitment_budget
                ))));
            }
        }
        let provision = provision_of(id);
        let caps = Caps {
            max_running: 1,
            max_per_window: u32::MAX,
            window: Duration::from_secs(3600),
        };
        match self
            .admissions
            .admit(&key::scale_out(name), &provision, caps, now)
            .await
        {
            Ok(Decision::Admitted) => {}
            Ok(Decision::Refused(why)) => {
                return Ok(Err(Stop::Refused(format!(
                    "one scale-out at a time for {name}: {why}"
                ))));
            }
            Err(e) => return Err(Outcome::retry(e.to_string())),
        }
        if resumed.is_none() {
            let record = LastScaleOut {
                workflow_id: id.to_string(),
                started_at: now,
                node: node.clone(),
            };
            let bytes = serde_json::to_vec(&record)
                .map(Bytes::from)
                .unwrap_or_default();
            if let Err(e) = self.cooldowns.put(key::scale_out(name), bytes).await {
                return Err(Outcome::retry(format!("recording the cooldown: {e}")));
            }
        }
        let request = ProvisionRequested {
            workflow_id: provision.clone(),
            idempotency_key: id.to_string(),
            name: node.clone(),
            profile: so.profile.clone(),
            overrides: VmOverrides::default(),
            ssh_keys: so.ssh_keys.clone(),
            ip: IpConfig::Dhcp,
            tags: Vec::new(),
            requested_by: format!("capacity:{id}"),
            requested_at: now,
        };
        match self.provisions.admit(request).await {
            Admitted::Dispatched => {}
            // Refused by the profile's caps (or ended before): the scale-out is refused with the
            // provision's reason; the admission freed the cluster's slot.
            Admitted::Ended { reason, .. } => {
                return Ok(Err(Stop::Refused(format!(
                    "provision {provision} of {node}: {reason}"
                ))));
            }
            Admitted::Retry(why) => return Err(Outcome::retry(why)),
            Admitted::Poison(why) => return Err(Outcome::poison(why)),
        }
        tracing::info!(workflow = %id, %node, provision = %provision, "scale-out dispatched");
        Ok(Ok((node, provision)))
    }

    async fn last(&self, cluster: &str) -> Result<Option<LastScaleOut>, Outcome> {
        match self.cooldowns.get(key::scale_out(cluster)).await {
            Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(Outcome::retry(format!("reading the cooldown: {e}"))),
        }
    }
}

/// `<prefix><n>`, n one above the highest number among the cluster's nodes and the last node a
/// scale-out asked for (which may not be in the sample yet).
fn next_name(prefix: &str, nodes: &[String], last: Option<&LastScaleOut>) -> String {
    let highest = nodes
        .iter()
        .map(String::as_str)
        .chain(last.map(|l| l.node.as_str()))
        .filter_map(|n| n.strip_prefix(prefix)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    format!("{prefix}{}", highest + 1)
}

/// The headroom veto, if one more node of `profile` would break the host's budget.
fn headroom(
    id: &str,
    cluster_name: &str,
    event: &CapacityExceeded,
    cluster: &ClusterConfig,
    profile: &Profile,
    now: DateTime<Utc>,
) -> Option<HostExhausted> {
    let so = &cluster.scale_out;
    let h = &event.sample.host;
    let total = h.memory_total as f64;
    let added = f64::from(profile.memory_mib) * (1u64 << 20) as f64;
    let after = if total > 0.0 {
        (h.memory_committed as f64 + added) / total
    } else {
        f64::INFINITY
    };
    let storage = h.storages.iter().find(|s| s.name == so.storage);
    let storage_after = storage.map(|s| {
        let disk = f64::from(profile.disk_gib) * GIB;
        if s.total > 0 {
            (s.used as f64 + disk) / s.total as f64 * 100.0
        } else {
            100.0
        }
    });
    let mut reasons = Vec::new();
    if after > so.memory_commitment_budget {
        reasons.push(format!(
            "memory commitment would be {after:.2}:1 ({:.1} GiB committed + {:.1} GiB of the new node, on {:.1} GiB), budget {:.2}:1",
            h.memory_committed as f64 / GIB,
            added / GIB,
            total / GIB,
            so.memory_commitment_budget
        ));
    }
    if let Some(pct) = storage_after.filter(|p| *p > so.storage_limit_percent) {
        reasons.push(format!(
            "storage {} would be {pct:.1} % full with the new node's {} GiB disk, limit {:.1} %",
            so.storage, profile.disk_gib, so.storage_limit_percent
        ));
    }
    if reasons.is_empty() {
        return None;
    }
    Some(HostExhausted {
        workflow_id: id.to_string(),
        cluster: cluster_name.to_string(),
        node: h.node.clone(),
        reason: reasons.join("; "),
        memory_commitment_ratio: h.memory_commitment_ratio,
        memory_commitment_after: after,
        memory_commitment_budget: so.memory_commitment_budget,
        storage_percent_after: storage_after,
        storage_limit_percent: so.storage_limit_percent,
        at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_name_is_one_above_the_highest_known() {
        let nodes = ["k3s-1", "k3s-3", "other", "k3s-x"].map(String::from);
        assert_eq!(next_name("k3s-", &nodes, None), "k3s-4");
        let last = LastScaleOut {
            workflow_id: "w".into(),
            started_at: Utc::now(),
            node: "k3s-7".into(),
        };
        assert_eq!(next_name("k3s-", &nodes, Some(&last)), "k3s-8");
        assert_eq!(next_name("k3s-", &[], None), "k3s-1");
    }
}
