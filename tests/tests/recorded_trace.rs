//! Spans recorded on the bus: each process's finished spans become `SpanRecord`s on
//! `pf.trace.<trace_id>` through its `SpanSink`, and reading them back gives the whole trace as one
//! tree, across services, with parents, status and attributes intact.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use proxflow_e2e::Probe;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome};
use proxflow_runtime::config::{ConsumerConfig, NatsConfig};
use proxflow_runtime::ops::Metrics;
use proxflow_runtime::telemetry::recorded::{SpanTree, fetch_trace};
use proxflow_runtime::telemetry::{self, SpanSink};
use proxflow_schemas::names::{stream, subject};
use proxflow_schemas::trace::{SpanKind, SpanRecord, StatusCode};
use proxflow_testkit::TestNats;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// What one "process" of a test has: its sink (attached to its context) and its tracer provider,
/// named `service`, whose spans the sink records. The subscriber goes on the calling thread only, so
/// two processes can live in one test on two threads.
struct Recording {
    sink: SpanSink,
    provider: SdkTracerProvider,
    _subscriber: tracing::subscriber::DefaultGuard,
}

impl Recording {
    fn start(ctx: &ServiceContext, service: &str) -> Self {
        let (sink, exporter) = SpanSink::new(256);
        // The simple processor hands each span over as it ends; the services' batch processor only
        // adds a delay, which a test would have to wait out.
        let provider = SdkTracerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .with_simple_exporter(exporter)
            .build();
        sink.attach(&ctx.bus.js, &ctx.metrics).expect("attach");
        let subscriber = tracing_subscriber::registry().with(
            telemetry::otel_layer(provider.tracer(service.to_owned()))
                .with_filter(telemetry::trace_filter()),
        );
        Self {
            sink,
            provider,
            _subscriber: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Shuts the provider (closing the queue) and waits for the last spans to be acknowledged.
    async fn finish(self) -> SpanSink {
        self.provider.shutdown().expect("provider shutdown");
        assert!(
            self.sink.finish(Duration::from_secs(10)).await,
            "publisher drained"
        );
        self.sink
    }
}

/// Reads the trace back. Every recording has finished by then (its spans acknowledged by the
/// stream), so one read sees all of them.
async fn read_back(ctx: &ServiceContext, trace_id: &str) -> Vec<SpanRecord> {
    let fetched = fetch_trace(&ctx.bus.js, trace_id, Duration::from_secs(5))
        .await
        .expect("trace readable");
    assert_eq!(fetched.unreadable, 0);
    fetched.spans
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> &'a SpanRecord {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name:?} in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

// Current-thread runtime: the subscriber is set per thread, and the publisher task then runs on it.
#[tokio::test(flavor = "current_thread")]
async fn finished_spans_are_recorded_with_parents_status_and_attributes() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("recorder").await.expect("context");
    let recording = Recording::start(&ctx, "provisioner");

    let root = tracing::info_span!("provision", otel.name = "provision k3s-4");
    let trace_id = telemetry::trace_id(&root).expect("root span has a trace");
    root.in_scope(|| {
        tracing::info_span!(
            "pve.request",
            otel.name = "pve POST /nodes/{node}/qemu/{vmid}/clone",
            otel.kind = "client",
            pve.vmid = 104,
            pve.upid = "UPID:pve1:0000A1B2:00C3D4E5:65000000:qmclone:104:root@pam:",
        )
        .in_scope(|| {});
        tracing::info_span!(
            "command",
            otel.name = "run ansible-playbook",
            command.program = "ansible-playbook"
        )
        .in_scope(|| tracing::error!(error = "exit 2", "join failed"));
        // DEBUG spans count from proxflow's crates (message spans, task waits) and from no others.
        tracing::debug_span!(target: "proxflow_pve::task", "pve.task.wait", outcome = "ok")
            .in_scope(|| {});
        tracing::debug_span!(target: "hyper::client", "noise").in_scope(|| {});
    });
    drop(root);

    let sink = recording.finish().await;
    let spans = read_back(&ctx, &trace_id).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let root = named(&spans, "provision k3s-4");
    let clone = named(&spans, "pve POST /nodes/{node}/qemu/{vmid}/clone");
    let join = named(&spans, "run ansible-playbook");
    let wait = named(&spans, "pve.task.wait");
    assert_eq!(root.parent_span_id, None);
    for child in [clone, join, wait] {
        assert_eq!(child.trace_id, trace_id);
        assert_eq!(
            child.parent_span_id.as_ref(),
            Some(&root.span_id),
            "{}",
            child.name
        );
        assert_eq!(child.service, "provisioner");
    }
    assert_eq!(clone.kind, SpanKind::Client);
    assert_eq!(clone.attributes["pve.vmid"], "104");
    assert!(clone.attributes["pve.upid"].starts_with("UPID:pve1:"));
    assert_eq!(clone.status.code, StatusCode::Ok);
    assert_eq!(join.attributes["command.program"], "ansible-playbook");
    assert_eq!(join.status.code, StatusCode::Error);
    assert_eq!(join.status.message.as_deref(), Some("join failed: exit 2"));
    assert_eq!(join.events.len(), 1);
    assert_eq!(join.events[0].attributes["level"], "ERROR");
    assert_eq!(wait.attributes["outcome"], "ok");
    assert!(root.start <= clone.start && clone.end <= root.end);
    assert_eq!(sink.published(), 4);
    assert_eq!((sink.dropped(), sink.failed()), (0, 0));
    assert!(
        ctx.metrics
            .encode()
            .contains(r#"proxflow_trace_spans_total{outcome="published"} 4"#),
        "{}",
        ctx.metrics.encode()
    );
}

/// The "orchestrator": handles the probe inside a span of its own and reports it.
struct Decide(mpsc::UnboundedSender<String>);

impl Handler<Probe> for Decide {
    async fn handle(&self, d: Delivery<Probe>) -> Outcome {
        tracing::info_span!("decide").in_scope(|| {
            let _ = self.0.send(d.message.id);
        });
        Outcome::Ack
    }
}

/// Runs the orchestrator on a thread of its own (its own subscriber and provider, as another process
/// has) until `stop`, then flushes its spans.
fn orchestrator(
    nats: NatsConfig,
    done: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let ctx = context(&nats, "orchestrator").await;
            let recording = Recording::start(&ctx, "orchestrator");
            let spec = ConsumerSpec {
                stream: stream::EVT,
                durable: "recorded-trace".into(),
                filter_subject: subject::evt("test", "recorded-trace"),
            };
            ConsumerLoop::new(ctx, spec, ConsumerConfig::default(), Decide(done))
                .run(stop)
                .await
                .expect("consumer ran");
            recording.finish().await;
        });
    })
}

/// A context on another thread's runtime (the test's server declared the topology already).
async fn context(nats: &NatsConfig, name: &str) -> ServiceContext {
    let metrics = Metrics::new();
    let bus = proxflow_runtime::bus::connect(nats, name, metrics.clone())
        .await
        .expect("connect");
    ServiceContext::new(bus, Default::default(), metrics, Duration::from_secs(5))
        .await
        .expect("locks bucket")
}

#[tokio::test(flavor = "current_thread")]
async fn two_services_record_one_trace_that_reads_back_as_one_tree() {
    let nats = TestNats::start().expect("nats-server");
    let gateway = nats.context("gateway").await.expect("context");
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let orchestrator = orchestrator(nats.nats_config(), done_tx, stop.clone());
    let recording = Recording::start(&gateway, "gateway");

    let request = tracing::info_span!(
        "request",
        otel.name = "POST /v1/provision",
        otel.kind = "server"
    );
    let trace_id = telemetry::trace_id(&request).expect("trace");
    {
        let _entered = request.enter();
        gateway
            .bus
            .publisher
            .publish(&Probe::new("recorded-trace", "wf-1"))
            .await
            .expect("published");
    }
    drop(request);
    let handled = tokio::time::timeout(Duration::from_secs(10), done.recv())
        .await
        .expect("the orchestrator handled the probe in time");
    assert_eq!(handled.as_deref(), Some("wf-1"));
    stop.cancel();
    tokio::task::spawn_blocking(move || orchestrator.join())
        .await
        .expect("joined")
        .expect("orchestrator thread ran");
    recording.finish().await;

    let spans = read_back(&gateway, &trace_id).await;
    let tree = SpanTree::build(spans);
    let outline: Vec<(usize, &str, &str)> = tree
        .walk()
        .into_iter()
        .map(|v| (v.depth, v.span.name.as_str(), v.span.service.as_str()))
        .collect();
    assert_eq!(
        outline,
        vec![
            (0, "POST /v1/provision", "gateway"),
            (1, "pf.evt.test.recorded-trace publish", "gateway"),
            (2, "pf.evt.test.recorded-trace process", "orchestrator"),
            (3, "decide", "orchestrator"),
        ]
    );
    let kinds: Vec<SpanKind> = tree.walk().iter().map(|v| v.span.kind).collect();
    assert_eq!(
        kinds,
        [
            SpanKind::Server,
            SpanKind::Producer,
            SpanKind::Consumer,
            SpanKind::Internal
        ]
    );
}
