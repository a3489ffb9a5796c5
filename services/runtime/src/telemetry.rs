//! Telemetry: the tracing subscriber (human or JSON logs), OpenTelemetry spans recorded on the bus
//! (always) and exported over OTLP/HTTP (when an endpoint is configured), and W3C trace context carried
//! in NATS and HTTP headers so that a chain of services forms one trace.
//!
//! ## Layout
//! - this module: [`init`] and its [`TelemetryGuard`], the trace filter and layer, header propagation.
//! - [`service`]: which service each span belongs to when several share a process, the same for
//!   both views (the bus record's service, the OTLP resource's `service.name`).
//! - [`sink`]: every finished span as a `SpanRecord` on `pf.trace.<trace_id>` ([`SpanSink`]).
//! - `otlp`: OTLP/HTTP export, each span under its own service's resource.
//! - [`recorded`]: reading a trace's records back and building its tree (`proxflow trace`).

use std::time::Duration;

use opentelemetry::StringValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, TelemetryConfig};

mod otlp;
pub mod recorded;
pub mod service;
pub mod sink;

pub use sink::{AttachError, BusSpanExporter, SpanSink};

/// How often the batch processor hands finished spans to the bus sink: spans are on the bus about a
/// second after they end, so `proxflow trace` right after a workflow sees all of it.
const BUS_EXPORT_DELAY: Duration = Duration::from_secs(1);

/// How long shutdown waits for the last spans to be acknowledged by the stream.
const SPAN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already set.
    #[error("tracing subscriber: {0}")]
    Subscriber(String),
}

/// Flushes and stops span export when the process ends.
#[must_use = "call shutdown() at exit or the last spans are lost"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    spans: SpanSink,
}

impl TelemetryGuard {
    /// The bus sink of this process's spans: [`SpanSink::attach`] it once connected.
    pub fn spans(&self) -> &SpanSink {
        &self.spans
    }

    /// Flushes pending spans and stops the exporters, then waits for the bus sink to publish what they
    /// handed it (so call this while NATS is still reachable). The SDK blocks, so it runs off the
    /// async threads.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = result {
            eprintln!("telemetry shutdown: {e}");
        }
        if !self.spans.finish(SPAN_FLUSH_TIMEOUT).await {
            eprintln!("telemetry shutdown: the last spans were not recorded on the bus in time");
        }
    }
}

/// The tracer provider of process `process`: records every span through `bus` (a [`SpanSink`]'s
/// exporter) and also exports over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `telemetry.otlp_endpoint` is set; each span under its service ([`service`]), spans of no service
/// under `process`.
pub fn provider(
    cfg: &TelemetryConfig,
    process: &str,
    bus: BusSpanExporter,
) -> Result<SdkTracerProvider, TelemetryError> {
    // Batched on the processor's own thread: encoding a record stays off the application's threads.
    let bus = BatchSpanProcessor::builder(bus)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(BUS_EXPORT_DELAY)
                .build(),
        )
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(service::resource(process.to_owned()))
        // First, so that the exporting processors see the service it stamps.
        .with_span_processor(service::Stamp)
        .with_span_processor(bus);
    let from_env = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if from_env || cfg.otlp_endpoint.is_some() {
        // An explicit endpoint is used as is, so it needs the signal path the env form gets added.
        let endpoint = match (from_env, &cfg.otlp_endpoint) {
            (false, Some(base)) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
            _ => None,
        };
        let exporter = otlp::ServiceExporter::new(endpoint)
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber: log lines on stderr (stdout stays for command output) filtered by
/// `RUST_LOG` or `telemetry.log_level`, and the OpenTelemetry layer with its own filter, so per-message
/// spans (DEBUG) reach traces whatever the log level and never cost a formatted log line. `process`
/// names the spans of no service ([`service`]).
pub fn init(cfg: &TelemetryConfig, process: &str) -> Result<TelemetryGuard, TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;

    let (spans, bus) = SpanSink::new(sink::QUEUE_CAPACITY);
    let provider = provider(cfg, process, bus)?;
    let log_filter = || log_filter(&cfg.log_level);
    let (human, json) = match cfg.log_format {
        LogFormat::Human => (
            Some(
                fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter()),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter()),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(human)
        .with(json)
        .with(otel_layer(provider.tracer("proxflow")).with_filter(trace_filter()))
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(TelemetryGuard { provider, spans })
}

/// The log filter: `RUST_LOG` if set, else `telemetry.log_level` (an invalid one falls back to
/// `info`). async-nats logs every connection event at INFO ("event: disconnected") beside the one
/// line proxflow writes for it with its meaning; its own lines start at WARN unless `RUST_LOG` or
/// the level names `async_nats` explicitly.
pub fn log_filter(level: &str) -> EnvFilter {
    let with_client_quiet = |level: &str| {
        if level.contains("async_nats") {
            level.to_owned()
        } else {
            format!("{level},async_nats=warn")
        }
    };
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(with_client_quiet(level)))
        .unwrap_or_else(|_| EnvFilter::new(with_client_quiet("info")))
}

/// What the trace layer records (and so what reaches the bus and OTLP): INFO everywhere, DEBUG from
/// proxflow's crates (message spans). A target matches by prefix, so `proxflow` covers every
/// `proxflow_*` crate: the runtime's `command` and message spans, `pve.request` and `pve.task.wait`
/// (proxflow_pve), and each service's own spans.
pub fn trace_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("proxflow", tracing::Level::DEBUG)
}

/// The OpenTelemetry layer every process uses (and tests, with an in-memory exporter). Busy/idle
/// tracking, thread and source-location attributes are off: they cost a clock read per poll and four
/// attributes per span, and halved bus throughput in `just bench`, for nothing a trace reader needs.
/// Context activation is off too: it attaches an OpenTelemetry `Context` to the thread on every poll
/// of an instrumented future, and proxflow reads trace context from tracing spans, never from
/// `Context::current()`.
pub fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_context_activation(false)
}

/// Writes trace context into NATS headers. Header names are checked, never asserted, so a propagator
/// field that is not a valid NATS header name is dropped instead of panicking.
struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let Ok(name) = async_nats::header::HeaderName::try_from(key) {
            self.0.insert(name, value);
        }
    }
}

/// Reads trace context from NATS headers. Names are case-sensitive on NATS; foreign producers may send
/// `Traceparent`, so a case-insensitive match is the fallback.
struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str()).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case(key))
                .and_then(|(_, v)| v.first())
                .map(|v| v.as_str())
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(k, _)| AsRef::<str>::as_ref(k))
            .collect()
    }
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(key),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Injects `span`'s context into NATS headers.
pub fn inject_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut NatsInjector(headers));
}

/// Injects `span`'s context into HTTP headers (outgoing requests, responses).
pub fn inject_http(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HttpInjector(headers));
}

/// Makes a not-yet-entered `span` the start of `service`'s handling of a message: parented on the
/// trace context in its NATS headers if they carry a valid one, and with `span` and the spans under
/// it belonging to `service` ([`service`]).
pub fn set_parent_from_nats(
    span: &tracing::Span,
    headers: &async_nats::HeaderMap,
    service: impl Into<StringValue>,
) {
    let caller = TraceContextPropagator::new().extract(&NatsExtractor(headers));
    enter(span, caller, service);
}

/// Makes a not-yet-entered `span` the start of `service`'s handling of an HTTP request, parented on
/// the trace context of its headers if valid (as [`set_parent_from_nats`]).
pub fn set_parent_from_http(
    span: &tracing::Span,
    headers: &http::HeaderMap,
    service: impl Into<StringValue>,
) {
    let caller = TraceContextPropagator::new().extract(&HttpExtractor(headers));
    enter(span, caller, service);
}

fn enter(span: &tracing::Span, caller: opentelemetry::Context, service: impl Into<StringValue>) {
    let parent = if caller.span().span_context().is_valid() {
        caller
    } else {
        // No caller's trace: where the span would start anyway.
        service::surrounding()
    };
    set_parent(span, service::serving(parent, service));
}

fn set_parent(span: &tracing::Span, cx: opentelemetry::Context) {
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "span already started; trace context not applied");
    }
}

/// `span`'s W3C `traceparent`, when telemetry is recording it: kept in a workflow record so that
/// every later resume, whoever triggers it, joins the workflow's one trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Parents a not-yet-entered `span` on a stored `traceparent` (see [`traceparent`]), if valid; the
/// span stays with the service of the code creating it.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let stored = TraceContextPropagator::new().extract(&carrier);
    if stored.span().span_context().is_valid() {
        set_parent(span, service::carried(stored));
    }
}

/// The trace id of `span` as 32 hex digits, when telemetry is recording it.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn each_nats_event_is_logged_once() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;

        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().map_or(Ok(0), |mut b| {
                    b.extend_from_slice(buf);
                    Ok(buf.len())
                })
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        if std::env::var_os("RUST_LOG").is_some() {
            // The filter is the operator's then; this test checks the default.
            return;
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_writer(move || writer.clone())
                .with_filter(log_filter("info")),
        );
        tracing::subscriber::with_default(subscriber, || {
            // What async-nats writes for an event, and what proxflow writes for it.
            tracing::info!(target: "async_nats", "event: disconnected");
            tracing::warn!(target: "proxflow_runtime::bus", "NATS disconnected");
            tracing::warn!(target: "async_nats", "a warning of the client's own");
        });
        let text = captured
            .0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .expect("the capture lock");
        assert!(!text.contains("event: disconnected"), "{text}");
        assert_eq!(text.matches("disconnected").count(), 1, "{text}");
        assert!(text.contains("a warning of the client's own"), "{text}");
    }

    #[test]
    fn the_trace_filter_keeps_debug_spans_of_every_proxflow_crate_and_info_of_others() {
        let filter = trace_filter();
        for target in [
            "proxflow_runtime::bus::consume",
            "proxflow_runtime::command",
            "proxflow_pve::client",
            "proxflow_pve::task",
            "proxflow_gateway::http",
            "proxflow_orchestrator::workflow",
            "proxflow_provisioner::service",
        ] {
            assert!(filter.would_enable(target, &Level::DEBUG), "{target}");
        }
        assert!(filter.would_enable("hyper::client", &Level::INFO));
        assert!(!filter.would_enable("hyper::client", &Level::DEBUG));
        assert!(!filter.would_enable("proxflow_pve::client", &Level::TRACE));
    }
}
