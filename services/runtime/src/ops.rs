//! The operations surface of a process: `/healthz` (alive), `/readyz` (NATS connected, JetStream
//! answering with a quorum — the `jetstream` check, set by [`crate::bus::probe`] — and every
//! component ready) and `/metrics` (Prometheus text). One per process; the gateway also mounts it on
//! its public listener.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use proxflow_schemas::events::DeadLetterReason;

use crate::workflow::metrics::WorkflowMetrics;

mod registrar;
mod requests;

pub(crate) use registrar::Registrar;
pub use requests::{RequestMetrics, count_requests};

/// Readiness of the process: NATS plus named components (consumers, listeners).
#[derive(Clone, Default, Debug)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, bool>>>,
    nats: Arc<OnceLock<async_nats::Client>>,
}

impl Health {
    /// Marks a component ready or not; a component never set does not count.
    pub fn set(&self, component: &str, ready: bool) {
        self.lock().insert(component.to_owned(), ready);
    }

    /// Makes readiness depend on this client being connected.
    pub fn watch_nats(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.components.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last state of one check, if it was ever set.
    pub fn check(&self, component: &str) -> Option<bool> {
        self.lock().get(component).copied()
    }

    /// (ready, per-check report).
    pub fn report(&self) -> (bool, BTreeMap<String, bool>) {
        let mut checks = self.lock().clone();
        if let Some(client) = self.nats.get() {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            checks.insert("nats".into(), connected);
        } else {
            checks.insert("nats".into(), false);
        }
        (checks.values().all(|ok| *ok), checks)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    consumer: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: String,
}

fn handler_histogram() -> Histogram {
    // 1 ms .. ~65 s: bus hops are sub-millisecond, Proxmox tasks take seconds to minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Prometheus metrics of the process. Cheap to clone; services register their own next to these.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registrar,
    handled: Family<ConsumerLabels, Counter>,
    retried: Family<ConsumerLabels, Counter>,
    dead_lettered: Family<DeadLetterLabels, Counter>,
    handler_seconds: Family<ConsumerLabels, Histogram, fn() -> Histogram>,
    published: Family<PublishLabels, Counter>,
    ready: Gauge,
    readiness: Family<CheckLabels, Gauge>,
    requests: RequestMetrics,
    workflows: WorkflowMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the runtime's bus metrics under the `proxflow` prefix.
    pub fn new() -> Self {
        let registry = Registrar::new();
        let handled = Family::<ConsumerLabels, Counter>::default();
        let retried = Family::<ConsumerLabels, Counter>::default();
        let dead_lettered = Family::<DeadLetterLabels, Counter>::default();
        let handler_seconds =
            Family::<ConsumerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                handler_histogram,
            );
        let published = Family::<PublishLabels, Counter>::default();
        registry.register(
            "messages_handled",
            "Messages a consumer handled and acknowledged",
            handled.clone(),
        );
        registry.register(
            "messages_retried",
            "Deliveries handed back for a later retry",
            retried.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages dead-lettered, by reason",
            dead_lettered.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Time a handler took per delivery",
            handler_seconds.clone(),
        );
        registry.register(
            "messages_published",
            "Publishes acknowledged by a stream (duplicate = dropped by dedupe) or failed",
            published.clone(),
        );
        registry.register(
            "kv_cas_conflicts",
            "Compare-and-set conflicts on a KV key, retried within the handler (contention, not failure)",
            crate::kv::COUNTERS.conflicts.clone(),
        );
        registry.register(
            "kv_cas_exhausted",
            "Compare-and-set changes given up for contention (each one spends a message delivery)",
            crate::kv::COUNTERS.exhausted.clone(),
        );
        let ready = Gauge::default();
        let readiness = Family::<CheckLabels, Gauge>::default();
        registry.register(
            "ready",
            "1 while the process is ready (what /readyz answers 200 to), else 0",
            ready.clone(),
        );
        registry.register(
            "readiness",
            "Each readiness check of /readyz: 1 passing, 0 failing",
            readiness.clone(),
        );
        let requests = RequestMetrics::register(&registry);
        let workflows = WorkflowMetrics::register(&registry);
        Self {
            registry,
            handled,
            retried,
            dead_lettered,
            handler_seconds,
            published,
            ready,
            readiness,
            requests,
            workflows,
        }
    }

    /// The HTTP request metrics, for [`count_requests`].
    pub fn requests(&self) -> RequestMetrics {
        self.requests.clone()
    }

    /// The workflow counts, for the engine.
    pub(crate) fn workflows(&self) -> WorkflowMetrics {
        self.workflows.clone()
    }

    /// Sets the readiness gauges from `health`, as `/readyz` would answer now.
    fn record_health(&self, health: &Health) {
        let (ready, checks) = health.report();
        self.ready.set(i64::from(ready));
        for (check, ok) in checks {
            self.readiness
                .get_or_create(&CheckLabels { check })
                .set(i64::from(ok));
        }
    }

    /// Registers a service's own metric.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
    }

    /// Registers a counter family with fixed label names for a service's own counts, exposed as
    /// `proxflow_<name>_total{<labels>}`.
    pub fn counter_family<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&'static str; N],
    ) -> CounterFamily<N> {
        let family = Family::default();
        self.register(name, help, family.clone());
        CounterFamily { labels, family }
    }

    /// Registers a gauge family (floating point) with fixed label names, exposed as
    /// `proxflow_<name>{<labels>}`.
    pub fn gauge_family<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&'static str; N],
    ) -> GaugeFamily<N> {
        let family = Family::default();
        self.register(name, help, family.clone());
        GaugeFamily { labels, family }
    }

    /// Prometheus text exposition, every registered family in it (one without series described
    /// only).
    pub fn encode(&self) -> String {
        self.registry.encode()
    }

    /// The metric handles of one consumer, resolved once so the hot path only touches atomics.
    pub(crate) fn consumer(&self, consumer: &str) -> ConsumerMetrics {
        let labels = ConsumerLabels {
            consumer: consumer.to_owned(),
        };
        ConsumerMetrics {
            handled: self.handled.get_or_create_owned(&labels),
            retried: self.retried.get_or_create_owned(&labels),
            handler_seconds: self.handler_seconds.get_or_create_owned(&labels),
        }
    }

    pub(crate) fn dead_lettered(&self, consumer: &str, reason: DeadLetterReason) {
        let reason = match reason {
            DeadLetterReason::Poison => "poison",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
        };
        self.dead_lettered
            .get_or_create(&DeadLetterLabels {
                consumer: consumer.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The publisher's counters, resolved once.
    pub(crate) fn publish_counters(&self) -> PublishCounters {
        let get = |outcome| {
            self.published
                .get_or_create_owned(&PublishLabels { outcome })
        };
        PublishCounters {
            stored: get("stored"),
            duplicate: get("duplicate"),
            failed: get("failed"),
        }
    }
}

/// A counter family registered by [`Metrics::counter_family`]: one counter per combination of label
/// values. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CounterFamily<const N: usize> {
    labels: [&'static str; N],
    family: Family<[(&'static str, String); N], Counter>,
}

impl<const N: usize> CounterFamily<N> {
    /// Adds one to the counter of these label values, given in the order of the label names.
    pub fn inc(&self, values: [&str; N]) {
        self.inc_by(values, 1);
    }

    /// Adds `n` to the counter of these label values.
    pub fn inc_by(&self, values: [&str; N], n: u64) {
        let key = std::array::from_fn(|i| (self.labels[i], values[i].to_owned()));
        self.family.get_or_create(&key).inc_by(n);
    }
}

/// A gauge family registered by [`Metrics::gauge_family`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GaugeFamily<const N: usize> {
    labels: [&'static str; N],
    family: Family<[(&'static str, String); N], Gauge<f64, AtomicU64>>,
}

impl<const N: usize> GaugeFamily<N> {
    /// Sets the gauge of these label values, given in the order of the label names.
    pub fn set(&self, values: [&str; N], value: f64) {
        let key = std::array::from_fn(|i| (self.labels[i], values[i].to_owned()));
        self.family.get_or_create(&key).set(value);
    }
}

/// Per-consumer metric handles.
#[derive(Clone, Debug)]
pub(crate) struct ConsumerMetrics {
    pub(crate) handled: Counter,
    pub(crate) retried: Counter,
    pub(crate) handler_seconds: Histogram,
}

/// Publish outcome counters.
#[derive(Clone, Debug)]
pub(crate) struct PublishCounters {
    stored: Counter,
    duplicate: Counter,
    pub(crate) failed: Counter,
}

impl PublishCounters {
    pub(crate) fn acknowledged(&self, duplicate: bool) {
        if duplicate {
            self.duplicate.inc();
        } else {
            self.stored.inc();
        }
    }
}

/// What the ops endpoints read.
#[derive(Clone, Debug, Default)]
pub struct OpsState {
    /// Readiness.
    pub health: Health,
    /// Metrics.
    pub metrics: Metrics,
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let (ready, checks) = state.health.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(checks))
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    // Read at the scrape, so the gauges are what /readyz would answer at that moment.
    state.metrics.record_health(&state.health);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_read_into_gauges_at_the_scrape() {
        let (metrics, health) = (Metrics::new(), Health::default());
        health.set("gateway http", true);
        metrics.record_health(&health);
        let text = metrics.encode();
        // No NATS client to watch: not ready, and the `nats` check says why.
        for line in [
            "proxflow_ready 0",
            "proxflow_readiness{check=\"gateway http\"} 1",
            "proxflow_readiness{check=\"nats\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn a_counter_family_counts_per_label_values() {
        let metrics = Metrics::new();
        let hits = metrics.counter_family("hits", "Test hits", ["endpoint", "outcome"]);
        hits.inc(["a", "ok"]);
        hits.inc(["a", "ok"]);
        hits.clone().inc(["b", "failed"]);
        let text = metrics.encode();
        assert!(
            text.contains("proxflow_hits_total{endpoint=\"a\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("proxflow_hits_total{endpoint=\"b\",outcome=\"failed\"} 1"),
            "{text}"
        );
    }
}
