//! Trace context crosses the bus: a chain of services forms one trace. Spans are collected in memory
//! (no collector can run here) through the same tracing-opentelemetry layer the services install.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use proxflow_e2e::Probe;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome, Publisher};
use proxflow_runtime::config::ConsumerConfig;
use proxflow_schemas::names::{stream, subject};
use proxflow_testkit::TestNats;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

/// Service B: handles `trace-b` and publishes a follow-up on `trace-c` from inside its handler.
struct Forward {
    publisher: Publisher,
}

impl Handler<Probe> for Forward {
    async fn handle(&self, d: Delivery<Probe>) -> Outcome {
        match self
            .publisher
            .publish(&Probe::new("trace-c", &format!("{}-next", d.message.id)))
            .await
        {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

/// Service C: reports that it handled the message.
struct Sink(mpsc::UnboundedSender<String>);

impl Handler<Probe> for Sink {
    async fn handle(&self, d: Delivery<Probe>) -> Outcome {
        let _ = self.0.send(d.message.id);
        Outcome::Ack
    }
}

fn spec(durable: &str, topic: &str) -> ConsumerSpec {
    ConsumerSpec {
        stream: stream::EVT,
        durable: durable.into(),
        filter_subject: subject::evt("test", topic),
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name:?} in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

// Current-thread runtime: the in-memory subscriber is set per thread, and every task of this test
// (both consumer loops included) then runs on the thread that has it.
#[tokio::test(flavor = "current_thread")]
async fn a_chain_of_services_forms_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(proxflow_runtime::telemetry::otel_layer(
        provider.tracer("test"),
    ));
    let _guard = tracing::subscriber::set_default(subscriber);

    let nats = TestNats::start().expect("nats-server");
    let a = nats.context("service-a").await.expect("a");
    let b = nats.context("service-b").await.expect("b");
    let c = nats.context("service-c").await.expect("c");
    let stop = CancellationToken::new();
    let tuning = ConsumerConfig::default();
    let forward = Forward {
        publisher: b.bus.publisher.clone(),
    };
    let (tx, mut done) = mpsc::unbounded_channel();
    let b_loop = tokio::spawn(
        ConsumerLoop::new(
            b.clone(),
            spec("trace-b", "trace-b"),
            tuning.clone(),
            forward,
        )
        .run(stop.clone()),
    );
    let c_loop = tokio::spawn(
        ConsumerLoop::new(c.clone(), spec("trace-c", "trace-c"), tuning, Sink(tx))
            .run(stop.clone()),
    );

    let root = tracing::info_span!("workflow start");
    let expected_trace =
        proxflow_runtime::telemetry::trace_id(&root).expect("root span has a trace");
    {
        let _entered = root.enter();
        a.bus
            .publisher
            .publish(&Probe::new("trace-b", "t-1"))
            .await
            .expect("published");
    }
    drop(root);
    let id = tokio::time::timeout(Duration::from_secs(10), done.recv())
        .await
        .expect("C handled the follow-up in time")
        .expect("channel open");
    assert_eq!(id, "t-1-next");
    stop.cancel();
    b_loop.await.expect("b joins").expect("b ran");
    c_loop.await.expect("c joins").expect("c ran");
    provider.force_flush().expect("flush");

    let spans = exporter.get_finished_spans().expect("spans");
    let a_publish = find(&spans, "pf.evt.test.trace-b publish");
    let b_process = find(&spans, "pf.evt.test.trace-b process");
    let b_publish = find(&spans, "pf.evt.test.trace-c publish");
    let c_process = find(&spans, "pf.evt.test.trace-c process");
    for span in [a_publish, b_process, b_publish, c_process] {
        assert_eq!(
            span.span_context.trace_id().to_string(),
            expected_trace,
            "{} left the trace",
            span.name
        );
    }
    // Parentage follows the hops: publish -> process -> publish -> process.
    assert_eq!(b_process.parent_span_id, a_publish.span_context.span_id());
    assert_eq!(b_publish.parent_span_id, b_process.span_context.span_id());
    assert_eq!(c_process.parent_span_id, b_publish.span_context.span_id());
    assert_eq!(
        attr(b_process, "messaging.consumer.group.name").as_deref(),
        Some("trace-b")
    );
    assert_eq!(
        attr(c_process, "messaging.consumer.group.name").as_deref(),
        Some("trace-c")
    );
}
