//! Which service a span belongs to when several services share one process.
//!
//! `proxflow dev`, and `proxflow serve a b`, run several services in one process under one tracer
//! provider. A collector files spans by the `service.name` of the resource they are exported under,
//! and `proxflow trace` shows the service of each bus record; with one resource per process both
//! would name the process (`proxflow-dev`) for every span. So every span a service produces carries
//! that service as its [`KEY`] attribute (`proxflow.service`), and both exporters file it under that
//! service: the bus sink writes it as the record's service, the OTLP exporter (`telemetry::otlp`)
//! exports it under a resource named after it. Spans of no service keep the process's name.
//!
//! ## How a span learns its service
//! The service travels in the OpenTelemetry [`Context`] a span is started in, and the [`Stamp`]
//! processor copies it onto each span as the span starts. tracing-opentelemetry starts every span in
//! its parent's context, so the spans under a service's span inherit its service without naming it:
//! - **Entry spans name it.** The consumer loop's `process` span (the consumer's service in the
//!   names table) and the gateway's `request` span get it with their caller's trace context
//!   ([`super::set_parent_from_nats`], [`super::set_parent_from_http`]): the caller's service never
//!   leaks in, even when the caller runs in the same process.
//! - **Resumed traces keep it.** A span parented on a stored `traceparent` (a workflow's advance)
//!   gets the service of the code creating it ([`super::set_parent_from_traceparent`]).
//! - **Everything else a service runs** starts in its ambient context: `proxflow` runs each service
//!   under [`scope`], and [`crate::Tasks`] hands that context to the tasks it spawns, so a root span
//!   such as `capacity.poll` belongs to its service too.
//! - **Spans of no service** (CLI commands, `proxflow dev`'s start-up, a task spawned outside
//!   `Tasks`) carry none and are filed under the process's name.
//!
//! The context and not a lookup: the value is where tracing-opentelemetry already looks for a span's
//! parent, so one processor call per span suffices, with no lock and no table of live spans.

use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::{Span as _, TraceContextExt as _};
use opentelemetry::{Context, Key, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The span attribute naming the service that produced the span.
pub const KEY: &str = "proxflow.service";

/// `service.namespace` of every proxflow resource.
const NAMESPACE: &str = "proxflow";

/// The service in a [`Context`].
#[derive(Clone, Debug)]
struct Service(StringValue);

/// Runs `future` as `service`'s work: the spans it starts without a parent (and so the spans under
/// them) belong to `service`. Wrap a service's whole run in it.
pub fn scope<F: Future>(service: impl Into<StringValue>, future: F) -> WithContext<F> {
    future.with_context(Context::current().with_value(Service(service.into())))
}

/// `cx` as the context of `service`'s work.
pub(super) fn serving(cx: Context, service: impl Into<StringValue>) -> Context {
    cx.with_value(Service(service.into()))
}

/// `cx` with the service of the code running now, if any: a span started in it stays with that
/// service although its parent is elsewhere.
pub(super) fn carried(cx: Context) -> Context {
    match surrounding().get::<Service>() {
        Some(service) => cx.with_value(service.clone()),
        None => cx,
    }
}

/// The context a span created here would be started in: the current span's, else the ambient one.
pub(super) fn surrounding() -> Context {
    let cx = tracing::Span::current().context();
    if cx.has_active_span() {
        cx
    } else {
        Context::current()
    }
}

/// The service `span` was produced by, if it carries one.
pub(crate) fn of(span: &SpanData) -> Option<&str> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == KEY)
        .and_then(|kv| match &kv.value {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The resource of `service` (or of the process): its `service.name` in the `proxflow` namespace,
/// with this process's instance id, over what the SDK detects (`OTEL_RESOURCE_ATTRIBUTES`).
pub(super) fn resource(service: impl Into<Value>) -> Resource {
    Resource::builder()
        .with_attributes([
            KeyValue::new("service.namespace", NAMESPACE),
            KeyValue::new("service.instance.id", instance_id()),
        ])
        .with_service_name(service)
        .build()
}

/// `base` (a process's resource) renamed to `service`.
pub(super) fn renamed(base: &Resource, service: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            base.iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_service_name(service.to_owned())
        .build()
}

/// This process's `service.instance.id`: a random UUID (v4), as the semantic conventions suggest,
/// the same for every service in the process, so a collector shows which spans ran together.
fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        const VERSION: u128 = 0xf << 76;
        const VARIANT: u128 = 0x3 << 62;
        let random = rand::random::<u128>() & !VERSION & !VARIANT;
        let bits = random | (0x4 << 76) | (0x2 << 62);
        let hex = format!("{bits:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    })
}

/// The processor that writes the service of a span's context onto the span as it starts. Add it to
/// the provider before the exporting processors.
#[derive(Debug, Default)]
pub struct Stamp;

impl SpanProcessor for Stamp {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(Service(service)) = cx.get::<Service>() {
            span.set_attribute(KeyValue::new(Key::from_static_str(KEY), service.clone()));
        }
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry;

    /// Runs `work` on a current-thread runtime under a subscriber whose spans end in memory, and
    /// returns (name, service) of every finished span.
    fn spans_of<F: Future<Output = ()>>(work: impl FnOnce() -> F) -> Vec<(String, Option<String>)> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Stamp)
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(telemetry::otel_layer(provider.tracer("test")));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tracing::subscriber::with_default(subscriber, || runtime.block_on(work()));
        exporter
            .get_finished_spans()
            .expect("spans")
            .iter()
            .map(|s| (s.name.to_string(), of(s).map(str::to_owned)))
            .collect()
    }

    fn service_of<'a>(spans: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
        spans
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not recorded: {spans:?}"))
            .1
            .as_deref()
    }

    #[test]
    fn a_service_scope_reaches_root_spans_their_children_and_spawned_tasks() {
        let spans = spans_of(|| async {
            scope("capacity", async {
                async { tracing::info_span!("child").in_scope(|| {}) }
                    .instrument(tracing::info_span!("capacity.poll"))
                    .await;
                // As `Tasks::spawn` hands it on.
                let spawned = async { tracing::info_span!("spawned").in_scope(|| {}) };
                tokio::spawn(spawned.with_current_context())
                    .await
                    .expect("joined");
            })
            .await;
            tracing::info_span!("outside").in_scope(|| {});
        });
        assert_eq!(service_of(&spans, "capacity.poll"), Some("capacity"));
        assert_eq!(service_of(&spans, "child"), Some("capacity"));
        assert_eq!(service_of(&spans, "spawned"), Some("capacity"));
        assert_eq!(service_of(&spans, "outside"), None);
    }

    #[test]
    fn an_entry_span_belongs_to_its_service_not_its_callers_in_the_same_process() {
        let spans = spans_of(|| async {
            let mut headers = async_nats::HeaderMap::new();
            scope("gateway", async {
                let publish = tracing::info_span!("publish");
                telemetry::inject_nats(&publish, &mut headers);
                publish.in_scope(|| {});
            })
            .await;
            scope("orchestrator", async {
                let process = tracing::info_span!("process");
                telemetry::set_parent_from_nats(&process, &headers, "provisioner");
                async { tracing::info_span!("handle").in_scope(|| {}) }
                    .instrument(process)
                    .await;
            })
            .await;
        });
        assert_eq!(service_of(&spans, "publish"), Some("gateway"));
        // Named by the entry, over both the caller's service and the ambient one.
        assert_eq!(service_of(&spans, "process"), Some("provisioner"));
        assert_eq!(service_of(&spans, "handle"), Some("provisioner"));
    }

    #[test]
    fn a_span_resuming_a_stored_trace_keeps_the_service_creating_it() {
        let spans = spans_of(|| async {
            let request = tracing::info_span!("request");
            telemetry::set_parent_from_http(&request, &http::HeaderMap::new(), "gateway");
            let traceparent = telemetry::traceparent(&request).expect("a recorded span");
            drop(request);
            let process = tracing::info_span!("process");
            telemetry::set_parent_from_nats(
                &process,
                &async_nats::HeaderMap::new(),
                "orchestrator",
            );
            async {
                let advance = tracing::info_span!("advance");
                telemetry::set_parent_from_traceparent(&advance, &traceparent);
                advance.in_scope(|| {});
            }
            .instrument(process)
            .await;
        });
        assert_eq!(service_of(&spans, "request"), Some("gateway"));
        assert_eq!(service_of(&spans, "advance"), Some("orchestrator"));
    }

    #[test]
    fn instance_ids_are_version_4_uuids() {
        let id = instance_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(id, instance_id());
    }
}
