//! Scale-out: a k3s cluster's `capacity.exceeded` becomes one more node, through the same provision
//! workflow as a webhook request, unless a guard says no. Each scale-out is a `scale_out` workflow
//! of the orchestrator's engine ([`flow`]); the consumers here only start it.
//!
//! Guards, in order, each ending the scale-out workflow `cancelled` with the numbers
//! ([`guards`]):
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

mod flow;
mod guards;

use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use proxflow_platform::Clusters;
use proxflow_runtime::bus::{Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::capacity::{
    CapacityExceeded, CapacitySample, MetricId, ScaleOutRequested, Scope,
};
use proxflow_schemas::remediation::{HandOffOutcome, HandOffResult};
use proxflow_schemas::workflow::{Origin, WorkflowRecord};
use serde::{Deserialize, Serialize};

pub(crate) use flow::ScaleOutFlow;
pub(crate) use guards::Cooldowns;

/// The scale-out workflow of a firing.
pub fn workflow_id(event: &CapacityExceeded) -> String {
    format!(
        "scaleout-{}-{}-{}",
        event.metric.name,
        event.since.timestamp_millis(),
        event.sequence
    )
}

/// What a scale-out starts from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleOutInput {
    /// The firing; for a requested scale-out, the newest sample dressed as one.
    pub event: CapacityExceeded,
    /// The remediation that asked for it, told how it ends.
    pub requester: Option<String>,
}

/// Starts scale-outs from capacity firings and remediation requests.
pub(crate) struct ScaleOut {
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) engine: Engine,
    pub(crate) publisher: Publisher,
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
    answer(
        publisher,
        &record.origin.reference,
        &record.id,
        result,
        detail,
        at,
    )
    .await
    .map_err(|e| Outcome::retry(format!("reporting the scale-out's outcome: {e}")))
}

/// Publishes how scale-out `id` that `requester` asked for ended.
async fn answer(
    publisher: &Publisher,
    requester: &str,
    id: &str,
    result: HandOffResult,
    detail: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), proxflow_runtime::bus::PublishError> {
    let mut outcome = HandOffOutcome::new(requester, "scale_out", result, detail, at);
    outcome.reference = Some(id.to_string());
    publisher.publish(&outcome).await.map(drop)
}

/// Why the newest capacity sample could not be read (a requested scale-out is retried).
#[derive(Debug, thiserror::Error)]
enum SampleError {
    /// The event stream is unavailable.
    #[error("the event stream: {0}")]
    Stream(#[source] async_nats::jetstream::context::GetStreamError),
    /// Reading its last sample failed.
    #[error("reading the newest capacity sample: {0}")]
    Read(#[source] async_nats::jetstream::stream::LastRawMessageError),
    /// The sample does not decode.
    #[error("the newest capacity sample does not decode: {0}")]
    Decode(#[source] serde_json::Error),
}

/// The origin source of a scale-out an alert remediation asked for.
const REQUESTED: &str = "alert";

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
        self.start(&workflow_id(&event), event, None, origin).await
    }
}

/// A scale-out asked for by an alert remediation: decided on the newest `capacity.sample`, under
/// the same guards as one the capacity detector starts.
impl Handler<ScaleOutRequested> for ScaleOut {
    async fn handle(&self, delivery: Delivery<ScaleOutRequested>) -> Outcome {
        let request = delivery.message;
        if self.clusters.get(&request.cluster).is_none() {
            let why = format!("no cluster {:?} in [capacity.clusters]", request.cluster);
            return self.fail_request(&request, why).await;
        }
        let sample = match self.latest_sample().await {
            Ok(Some(sample)) => sample,
            Ok(None) => {
                let why = "no capacity.sample on the bus yet: is the capacity service running?";
                return self.fail_request(&request, why.into()).await;
            }
            Err(e) => return Outcome::retry(e.to_string()),
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
        let requester = Some(request.workflow_id.clone());
        self.start(&id, event, requester, origin).await
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
    async fn latest_sample(&self) -> Result<Option<CapacitySample>, SampleError> {
        let stream = self
            .js
            .get_stream(proxflow_schemas::names::stream::EVT)
            .await
            .map_err(SampleError::Stream)?;
        match stream
            .get_last_raw_message_by_subject(CapacitySample::SUBJECT)
            .await
        {
            Ok(message) => serde_json::from_slice(&message.payload)
                .map(Some)
                .map_err(SampleError::Decode),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(SampleError::Read(e)),
        }
    }

    /// Starts scale-out `id` (once: a redelivered or re-published event, or a second replica, finds
    /// it started and changes nothing).
    async fn start(
        &self,
        id: &str,
        event: CapacityExceeded,
        requester: Option<String>,
        origin: Origin,
    ) -> Outcome {
        let input = ScaleOutInput { event, requester };
        match self
            .engine
            .start::<flow::ScaleOutFlow>(id, origin, &input)
            .await
        {
            Ok(created) => {
                tracing::info!(workflow = %id, created, "scale-out started");
                Outcome::Ack
            }
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}
