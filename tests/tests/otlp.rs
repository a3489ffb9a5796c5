//! Traces as an OTLP collector (Jaeger, Tempo) sees them: one provisioning request runs through the
//! gateway, the orchestrator and the provisioner in this one process, as `proxflow dev` runs them,
//! with telemetry exporting to a real OTLP/HTTP receiver started here (protobuf on `/v1/traces`). The
//! request must arrive as one trace with one root, each span under the `service.name` of the service
//! that produced it (not the process's), and each span's service must be the one `proxflow trace`
//! reads from the bus. Alone in its binary: it installs the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use proxflow_e2e::JOIN_OK;
use proxflow_gateway::GatewayConfig;
use proxflow_runtime::config::TelemetryConfig;
use proxflow_runtime::telemetry::recorded::fetch_trace;
use proxflow_runtime::telemetry::service;
use proxflow_schemas::workflow::WorkflowState;
use support::Platform;

/// The process's name: what spans of no service are exported under.
const PROCESS: &str = "proxflow-e2e";

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    /// `service.name` of the resource the span was exported under.
    service: String,
    /// `service.namespace` and `service.instance.id` of that resource.
    namespace: String,
    instance: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root.
    parent_span_id: String,
    name: String,
}

/// An OTLP/HTTP trace receiver: what an OpenTelemetry collector does with `POST /v1/traces`, minus
/// the storage.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves on a free port; returns the receiver and its base URL.
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("receiver lock").clone()
    }
}

async fn export(State(receiver): State<Receiver>, body: Bytes) -> impl IntoResponse {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut spans = receiver.spans.lock().expect("receiver lock");
    for resource_spans in request.resource_spans {
        let attribute = |key: &str| {
            resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map_or_else(String::new, |v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
        };
        let (service, namespace, instance) = (
            attribute("service.name"),
            attribute("service.namespace"),
            attribute("service.instance.id"),
        );
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Received {
                service: service.clone(),
                namespace: namespace.clone(),
                instance: instance.clone(),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                name: span.name,
            });
        }
    }
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_in_one_process_exports_its_spans_under_its_own_name() {
    // The endpoint comes from the configuration (`telemetry.otlp_endpoint`): the test cannot set
    // `OTEL_EXPORTER_OTLP_ENDPOINT` in its own process (`set_var` is unsafe, and unsafe code is
    // forbidden); both reach the same exporter, the variable only decides the endpoint. If it is set
    // it wins, as in every OpenTelemetry SDK, and the spans would go elsewhere.
    assert!(
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none(),
        "unset OTEL_EXPORTER_OTLP_ENDPOINT: it would send this test's spans elsewhere"
    );
    let (receiver, endpoint) = Receiver::start().await;
    let telemetry = proxflow_runtime::telemetry::init(
        &TelemetryConfig {
            otlp_endpoint: Some(endpoint),
            ..TelemetryConfig::default()
        },
        PROCESS,
    )
    .expect("telemetry");
    // The orchestrator and the provisioner, and the gateway below, each under its service's scope,
    // as `proxflow dev` runs them.
    let p = Platform::start(JOIN_OK, |_| {}).await;
    telemetry
        .spans()
        .attach(&p.ctx.bus.js, &p.ctx.metrics)
        .expect("sink attached");
    let secret = proxflow_gateway::webhook::generate_secret();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(service::scope(
        "gateway",
        proxflow_gateway::run(
            p.ctx.clone(),
            proxflow_gateway::GatewaySettings {
                console: Default::default(),
                config: GatewayConfig {
                    webhook_secrets: vec![secret.clone()],
                    ..GatewayConfig::default()
                },
                profiles: proxflow_platform::Profiles::default(),
                listener,
                approvers: Vec::new(),
            },
            p.stop.clone(),
        ),
    ));

    let accepted = support::provision_via_gateway(&url, &secret, br#"{"name": "otlp-1"}"#).await;
    let id = accepted["workflow_id"].as_str().expect("id").to_owned();
    let trace_id = accepted["trace_id"].as_str().expect("trace id").to_owned();
    let record = p.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);

    // The exporter sends a batch every few seconds: wait until the spans of every part of the
    // provision are in, and every parent among them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let milestones = [
        "POST /v1/provision",
        "pf.ingest.webhook.provision process",
        "provision otlp-1",
        "run sh",
        "pf.evt.vm.provisioned publish",
    ];
    let received = loop {
        let received = receiver.spans();
        let ids: BTreeSet<&str> = received.iter().map(|s| s.span_id.as_str()).collect();
        let complete = milestones
            .iter()
            .all(|m| received.iter().any(|s| s.name == *m))
            && received
                .iter()
                .all(|s| s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()));
        if complete {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "the provision's spans never all arrived; received: {:#?}",
            received
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // One trace: every part of the provision, whichever service ran it, carries the request's id.
    for milestone in milestones {
        let span = received.iter().find(|s| s.name == milestone).expect("seen");
        assert_eq!(span.trace_id, trace_id, "{milestone} is in another trace");
    }
    let trace: Vec<&Received> = received.iter().filter(|s| s.trace_id == trace_id).collect();
    let roots: Vec<&str> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(roots, ["POST /v1/provision"], "one root: the request");

    // Each span under the service that produced it.
    let service_of = |name: &str| {
        trace
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.service.as_str())
            .expect("seen")
    };
    assert_eq!(service_of("POST /v1/provision"), "gateway");
    assert_eq!(
        service_of("pf.ingest.webhook.provision process"),
        "orchestrator"
    );
    for name in ["provision otlp-1", "step clone", "pve.task.wait", "run sh"] {
        assert_eq!(service_of(name), "provisioner", "{name}");
    }
    let by_service: BTreeMap<&str, usize> = trace.iter().fold(BTreeMap::new(), |mut n, s| {
        *n.entry(s.service.as_str()).or_default() += 1;
        n
    });
    assert_eq!(
        by_service.keys().copied().collect::<Vec<_>>(),
        ["gateway", "orchestrator", "provisioner"],
        "no span under the process name {PROCESS}: {by_service:?}"
    );
    // The services of one process: one namespace, one instance.
    let instances: BTreeSet<(&str, &str)> = trace
        .iter()
        .map(|s| (s.namespace.as_str(), s.instance.as_str()))
        .collect();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert!(
        instances
            .iter()
            .all(|(ns, id)| *ns == "proxflow" && !id.is_empty()),
        "{instances:?}"
    );

    // And `proxflow trace` (the bus records) names the same service for every span.
    let bus = loop {
        let fetched = fetch_trace(&p.ctx.bus.js, &trace_id, Duration::from_millis(500))
            .await
            .expect("fetch");
        let recorded: BTreeMap<String, String> = fetched
            .spans
            .into_iter()
            .map(|r| (r.span_id, r.service))
            .collect();
        if trace.iter().all(|s| recorded.contains_key(&s.span_id)) {
            break recorded;
        }
        assert!(Instant::now() < deadline, "the bus never had every span");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for span in &trace {
        assert_eq!(bus[&span.span_id], span.service, "{}", span.name);
    }
    p.stop.cancel();
    telemetry.shutdown().await;
}
