//! Recording spans on the bus: every finished span becomes a [`SpanRecord`] on
//! `pf.trace.<trace_id>` (stream `PF_TRACE`), so a workflow's trace can be read back from NATS with
//! `proxflow trace` and no collector.
//!
//! Two halves, so that recording never waits on the network:
//! - [`BusSpanExporter`], an OpenTelemetry exporter behind the SDK's batch processor. It runs on the
//!   processor's own thread (no Tokio runtime there), converts and encodes each span and hands it to a
//!   bounded queue with `try_reserve`; when the queue is full the span is dropped and counted.
//! - [`SpanSink`], the application's handle: once the process is connected, [`SpanSink::attach`]
//!   starts the publisher task that drains the queue into JetStream, acknowledging in batches.
//!
//! Shutting the tracer provider down shuts the exporter, which closes the queue; the publisher then
//! publishes what is left and ends ([`SpanSink::finish`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use opentelemetry::trace::{SpanId, Status};
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use proxflow_schemas::Versioned;
use proxflow_schemas::names::subject;
use proxflow_schemas::trace::{SpanEvent, SpanKind, SpanRecord, SpanStatus, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ops::Metrics;

/// Encoded spans waiting for the publisher. Enough for several seconds of a busy process, so a short
/// NATS outage loses nothing, and small enough (a few MiB) to be harmless when nothing publishes.
pub const QUEUE_CAPACITY: usize = 4096;

/// Spans published before their acknowledgements are awaited together.
const PUBLISH_BATCH: usize = 256;

/// Longest attribute or event value kept, in bytes: a task log tail or a command's stderr stays
/// readable while a record stays far below NATS's 1 MiB payload limit.
const MAX_VALUE_BYTES: usize = 2048;

/// How often at most a failing publisher says so in the log.
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(60);

/// One span ready to publish.
#[derive(Debug)]
struct Encoded {
    subject: String,
    payload: Bytes,
}

/// `proxflow_trace_spans_total{outcome}`: created with the sink, registered when it is attached.
#[derive(Clone, Debug)]
struct Counters {
    family: Family<[(&'static str, &'static str); 1], Counter>,
    published: Counter,
    dropped: Counter,
    failed: Counter,
}

impl Counters {
    fn new() -> Self {
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let counter = |outcome| family.get_or_create(&[("outcome", outcome)]).clone();
        Self {
            published: counter("published"),
            dropped: counter("dropped"),
            failed: counter("failed"),
            family,
        }
    }
}

/// Why [`SpanSink::attach`] did not start a publisher.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A publisher already drains this sink.
    #[error("the span sink is already attached")]
    AlreadyAttached,
    /// Called outside a Tokio runtime, where the publisher task cannot run.
    #[error("the span sink needs a Tokio runtime to publish from")]
    NoRuntime,
}

/// The application's handle on span recording. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanSink {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Taken by the publisher when attached.
    queue: Mutex<Option<mpsc::Receiver<Encoded>>>,
    publisher: Mutex<Option<JoinHandle<()>>>,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks can leave the data half-changed, so a poisoned lock is still good.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SpanSink {
    /// A sink with a queue of `capacity` spans (at least 1) and the exporter that feeds it; add the
    /// exporter to the tracer provider and keep the sink.
    pub fn new(capacity: usize) -> (Self, BusSpanExporter) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Counters::new();
        let sink = Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Some(rx)),
                publisher: Mutex::new(None),
                counters: counters.clone(),
            }),
        };
        let exporter = BusSpanExporter {
            queue: Mutex::new(Some(tx)),
            service: String::new(),
            counters,
        };
        (sink, exporter)
    }

    /// Starts publishing queued and future spans through `js` (whose timeout bounds each
    /// acknowledgement) and registers `proxflow_trace_spans_total` in `metrics`. Call once the
    /// process is connected and the topology (the `PF_TRACE` stream) is declared; spans finished
    /// before wait in the queue.
    pub fn attach(&self, js: &jetstream::Context, metrics: &Metrics) -> Result<(), AttachError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| AttachError::NoRuntime)?;
        let queue = lock(&self.shared.queue)
            .take()
            .ok_or(AttachError::AlreadyAttached)?;
        metrics.register(
            "trace_spans",
            "Finished spans for pf.trace.<trace_id>: published, dropped (queue full or closed) or failed",
            self.shared.counters.family.clone(),
        );
        let task = runtime.spawn(publish(queue, js.clone(), self.shared.counters.clone()));
        *lock(&self.shared.publisher) = Some(task);
        Ok(())
    }

    /// Waits up to `within` for the publisher to publish what is left in the queue. The queue only
    /// ends once the exporter is shut down (the tracer provider's shutdown), so call this after it.
    /// Returns false when spans were left unpublished; without a publisher there is nothing to wait
    /// for.
    pub async fn finish(&self, within: Duration) -> bool {
        let Some(mut task) = lock(&self.shared.publisher).take() else {
            return true;
        };
        match tokio::time::timeout(within, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                task.abort();
                false
            }
        }
    }

    /// Spans the stream acknowledged.
    pub fn published(&self) -> u64 {
        self.shared.counters.published.get()
    }

    /// Spans dropped because the queue was full (or already closed).
    pub fn dropped(&self) -> u64 {
        self.shared.counters.dropped.get()
    }

    /// Spans whose publish failed or was not acknowledged.
    pub fn failed(&self) -> u64 {
        self.shared.counters.failed.get()
    }
}

/// The OpenTelemetry exporter half of a [`SpanSink`]: never blocks, never needs a runtime.
#[derive(Debug)]
pub struct BusSpanExporter {
    /// Taken at shutdown, which closes the queue and so ends the publisher once it has drained it.
    queue: Mutex<Option<mpsc::Sender<Encoded>>>,
    /// The resource's `service.name` (the process's), set by the provider: the service of spans that
    /// carry none of their own ([`super::service`]).
    service: String,
    counters: Counters,
}

impl BusSpanExporter {
    fn enqueue(&self, batch: Vec<SpanData>) {
        let queue = lock(&self.queue);
        let Some(tx) = queue.as_ref() else {
            self.counters.dropped.inc_by(batch.len() as u64);
            return;
        };
        for span in &batch {
            // Room is reserved before the span is encoded: a process that never attaches a
            // publisher would otherwise encode every span only to drop it.
            let Ok(permit) = tx.try_reserve() else {
                self.counters.dropped.inc();
                continue;
            };
            let service = super::service::of(span).unwrap_or(&self.service);
            let record = to_record(span, service);
            match serde_json::to_vec(&record) {
                Ok(payload) => permit.send(Encoded {
                    subject: subject::trace(&record.trace_id),
                    payload: payload.into(),
                }),
                Err(_) => {
                    self.counters.failed.inc();
                }
            }
        }
    }
}

impl SpanExporter for BusSpanExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // Dropped spans are counted, not reported: the SDK would only log the error.
        self.enqueue(batch);
        std::future::ready(Ok(()))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        lock(&self.queue).take();
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(name) = resource.get(&Key::from_static_str("service.name")) {
            self.service = name.to_string();
        }
    }
}

/// Drains the queue into JetStream until the exporter closes it.
async fn publish(mut queue: mpsc::Receiver<Encoded>, js: jetstream::Context, counters: Counters) {
    let mut headers = HeaderMap::new();
    headers.insert(crate::bus::SCHEMA, SpanRecord::SCHEMA.to_string().as_str());
    let mut complaints = Complaints::default();
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut acks = Vec::with_capacity(batch.len());
        for span in batch.drain(..) {
            // No Nats-Msg-Id: a span is published once and never retried, so there is nothing to
            // dedupe, and the stream keeps no id window for millions of spans.
            match js
                .publish_with_headers(span.subject, headers.clone(), span.payload)
                .await
            {
                Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
                Err(e) => {
                    counters.failed.inc();
                    complaints.note(&e);
                }
            }
        }
        for ack in futures::future::join_all(acks).await {
            match ack {
                Ok(_) => {
                    counters.published.inc();
                }
                Err(e) => {
                    counters.failed.inc();
                    complaints.note(&e);
                }
            }
        }
    }
}

/// Logs publish failures at most once per [`COMPLAINT_INTERVAL`]: when NATS is down every span fails,
/// and a line per span would bury the log.
#[derive(Default)]
struct Complaints {
    last: Option<Instant>,
    since: u64,
}

impl Complaints {
    fn note(&mut self, error: &dyn std::fmt::Display) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= COMPLAINT_INTERVAL) {
            tracing::warn!(failed = self.since, %error, "spans not recorded on pf.trace");
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// A span as recorded on the bus. The status message falls back to the error of the span's last
/// event that carried one, since tracing marks a span failed on an ERROR event without a description.
fn to_record(span: &SpanData, service: &str) -> SpanRecord {
    let events: Vec<SpanEvent> = span
        .events
        .iter()
        .map(|event| SpanEvent {
            name: event.name.to_string(),
            time: timestamp(event.timestamp),
            attributes: text_map(&event.attributes),
        })
        .collect();
    let status = match &span.status {
        Status::Error { description } => SpanStatus {
            code: StatusCode::Error,
            message: Some(truncated(description.to_string()))
                .filter(|m| !m.is_empty())
                .or_else(|| error_of(&events)),
        },
        Status::Ok | Status::Unset => SpanStatus {
            code: StatusCode::Ok,
            message: None,
        },
    };
    let duration_us = span
        .end_time
        .duration_since(span.start_time)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    SpanRecord {
        trace_id: span.span_context.trace_id().to_string(),
        span_id: span.span_context.span_id().to_string(),
        parent_span_id: (span.parent_span_id != SpanId::INVALID)
            .then(|| span.parent_span_id.to_string()),
        name: span.name.to_string(),
        service: service.to_owned(),
        kind: match span.span_kind {
            opentelemetry::trace::SpanKind::Internal => SpanKind::Internal,
            opentelemetry::trace::SpanKind::Server => SpanKind::Server,
            opentelemetry::trace::SpanKind::Client => SpanKind::Client,
            opentelemetry::trace::SpanKind::Producer => SpanKind::Producer,
            opentelemetry::trace::SpanKind::Consumer => SpanKind::Consumer,
        },
        start: timestamp(span.start_time),
        end: timestamp(span.end_time),
        duration_us,
        status,
        attributes: text_map(&span.attributes),
        events,
    }
}

/// The error an event reports: its `error` field (a log line's `error = %e`) or the
/// `exception.message` tracing-opentelemetry makes of an error-only event, after the event's message;
/// or the message of an ERROR-level event.
fn error_of(events: &[SpanEvent]) -> Option<String> {
    events.iter().rev().find_map(|event| {
        let detail = event
            .attributes
            .get("error")
            .or_else(|| event.attributes.get("exception.message"));
        match detail {
            Some(detail) if event.name.is_empty() || event.name == "exception" => {
                Some(detail.clone())
            }
            Some(detail) => Some(format!("{}: {detail}", event.name)),
            None if event.attributes.get("level").is_some_and(|l| l == "ERROR") => {
                Some(event.name.clone())
            }
            None => None,
        }
    })
}

fn timestamp(time: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(time).trunc_subsecs(6)
}

fn text_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.to_string(), truncated(kv.value.to_string())))
        .collect()
}

fn truncated(mut text: String) -> String {
    if text.len() > MAX_VALUE_BYTES {
        let mut cut = MAX_VALUE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{Event, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn span(id: u64, parent: u64, status: Status, events: Vec<Event>) -> SpanData {
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001);
        // Non-exhaustive: only its public fields can be set on a default.
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_hex(TRACE).expect("trace id"),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Client,
            name: Cow::Borrowed("pve POST /nodes/{node}/qemu/{vmid}/clone"),
            start_time: start,
            end_time: start + Duration::from_micros(45_000),
            attributes: vec![
                KeyValue::new("pve.vmid", 104_i64),
                KeyValue::new(
                    "pve.upid",
                    "UPID:pve1:0000A1B2:00C3D4E5:65000000:qmclone:104:root@pam:",
                ),
                KeyValue::new("big", "x".repeat(MAX_VALUE_BYTES + 10)),
            ],
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: InstrumentationScope::default(),
        }
    }

    fn event(name: &'static str, attributes: Vec<KeyValue>) -> Event {
        Event::new(name, SystemTime::UNIX_EPOCH, attributes, 0)
    }

    #[test]
    fn a_span_becomes_a_record_with_ids_times_and_text_attributes() {
        let record = to_record(&span(0xb7, 0xa1, Status::Unset, vec![]), "provisioner");
        assert_eq!(record.trace_id, TRACE);
        assert_eq!(record.span_id, "00000000000000b7");
        assert_eq!(record.parent_span_id.as_deref(), Some("00000000000000a1"));
        assert_eq!(record.service, "provisioner");
        assert_eq!(record.kind, SpanKind::Client);
        assert_eq!(record.duration_us, 45_000);
        assert_eq!(
            serde_json::to_value(record.start).expect("json"),
            "2023-11-14T22:13:20.000001Z"
        );
        assert_eq!(record.status.code, StatusCode::Ok);
        assert_eq!(record.attributes["pve.vmid"], "104");
        assert!(record.attributes["pve.upid"].starts_with("UPID:pve1:"));
        assert!(record.attributes["big"].len() <= MAX_VALUE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn a_root_has_no_parent() {
        let record = to_record(&span(1, 0, Status::Ok, vec![]), "gateway");
        assert_eq!(record.parent_span_id, None);
        assert_eq!(record.status.code, StatusCode::Ok);
    }

    #[test]
    fn an_error_without_description_takes_its_last_error_events_message() {
        let events = vec![
            event("retrying", vec![KeyValue::new("level", "INFO")]),
            event(
                "Proxmox call failed",
                vec![
                    KeyValue::new("level", "DEBUG"),
                    KeyValue::new("error", "VM is locked (clone)"),
                ],
            ),
        ];
        let record = to_record(&span(2, 1, Status::error(""), events), "provisioner");
        assert_eq!(record.status.code, StatusCode::Error);
        assert_eq!(
            record.status.message.as_deref(),
            Some("Proxmox call failed: VM is locked (clone)")
        );
        assert_eq!(record.events.len(), 2);
        assert_eq!(record.events[1].attributes["error"], "VM is locked (clone)");

        let exception = vec![event(
            "exception",
            vec![KeyValue::new("exception.message", "exit 2")],
        )];
        let record = to_record(&span(3, 1, Status::error(""), exception), "provisioner");
        assert_eq!(record.status.message.as_deref(), Some("exit 2"));

        let logged = vec![event("join failed", vec![KeyValue::new("level", "ERROR")])];
        let record = to_record(&span(4, 1, Status::error(""), logged), "provisioner");
        assert_eq!(record.status.message.as_deref(), Some("join failed"));

        let described = to_record(&span(5, 1, Status::error("exit 2: boom"), vec![]), "p");
        assert_eq!(described.status.message.as_deref(), Some("exit 2: boom"));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (sink, exporter) = SpanSink::new(2);
        let batch: Vec<SpanData> = (1..=5)
            .map(|id| span(id, 0, Status::Unset, vec![]))
            .collect();
        let started = Instant::now();
        // Nothing drains the queue: the exporter must return at once with 3 of 5 dropped.
        futures::executor::block_on(exporter.export(batch)).expect("export");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(sink.dropped(), 3);
        let mut queue = lock(&sink.shared.queue).take().expect("queue");
        let first = queue.try_recv().expect("queued span");
        assert_eq!(first.subject, format!("pf.trace.{TRACE}"));
        let record: SpanRecord = serde_json::from_slice(&first.payload).expect("record");
        assert_eq!(record.span_id, "0000000000000001");
        assert!(queue.try_recv().is_ok());
        assert!(queue.try_recv().is_err());
    }

    #[test]
    fn after_shutdown_spans_are_dropped_and_the_queue_ends() {
        let (sink, exporter) = SpanSink::new(8);
        exporter.shutdown().expect("shutdown");
        futures::executor::block_on(exporter.export(vec![span(1, 0, Status::Unset, vec![])]))
            .expect("export");
        assert_eq!(sink.dropped(), 1);
        let mut queue = lock(&sink.shared.queue).take().expect("queue");
        assert!(matches!(
            queue.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn only_the_first_attach_starts_a_publisher() {
        let (sink, _exporter) = SpanSink::new(8);
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("a client that connects lazily");
        let js = jetstream::new(client);
        let metrics = Metrics::new();
        sink.attach(&js, &metrics).expect("first attach");
        assert!(matches!(
            sink.attach(&js, &metrics),
            Err(AttachError::AlreadyAttached)
        ));
        assert!(metrics.encode().contains("proxflow_trace_spans_total"));
    }
}
