//! One provisioning request is one trace: the gateway request, the orchestrator, the provisioner's steps,
//! every Proxmox call (with its UPID) and the join command, recorded by the services on `PF_TRACE` and
//! read back as `proxflow trace` reads it. Alone in its binary: it installs the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use proxflow_e2e::JOIN_OK;
use proxflow_gateway::GatewayConfig;
use proxflow_runtime::config::TelemetryConfig;
use proxflow_runtime::telemetry::recorded::{SpanTree, fetch_trace};
use proxflow_schemas::workflow::WorkflowState;
use support::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_from_the_gateway_to_proxmox() {
    let telemetry = proxflow_runtime::telemetry::init(&TelemetryConfig::default(), "proxflow-e2e")
        .expect("telemetry");
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
    tokio::spawn(proxflow_gateway::run(
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
    ));
    let accepted = support::provision_via_gateway(&url, &secret, br#"{"name": "traced-1"}"#).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = accepted["workflow_id"].as_str().expect("id").to_owned();
    let trace_id = accepted["trace_id"].as_str().expect("trace id").to_owned();
    let record = p.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    assert_eq!(record.trace_id.as_deref(), Some(trace_id.as_str()));

    // Spans reach the bus in batches; read until the last expected ones are there.
    let has = |tree: &SpanTree, pred: &dyn Fn(&proxflow_schemas::trace::SpanRecord) -> bool| {
        tree.spans().iter().any(pred)
    };
    let tree = loop {
        let fetched = fetch_trace(&p.ctx.bus.js, &trace_id, Duration::from_millis(200))
            .await
            .expect("fetch");
        let tree = SpanTree::build(fetched.spans);
        let complete = has(&tree, &|s| s.name == "run sh")
            && has(&tree, &|s| s.name.starts_with("pf.evt.vm.provisioned"));
        if complete {
            break tree;
        }
        assert!(Instant::now() < deadline, "the trace never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let spans = tree.spans();
    assert!(spans.iter().all(|s| s.trace_id == trace_id), "one trace id");
    let roots: Vec<&str> = tree
        .walk()
        .iter()
        .filter(|v| v.depth == 0)
        .map(|v| v.span.name.as_str())
        .collect();
    assert_eq!(
        roots,
        ["POST /v1/provision"],
        "the gateway request is the one root"
    );
    let services: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter_map(|s| s.attributes.get("proxflow.service").map(String::as_str))
        .collect();
    assert_eq!(
        services,
        ["gateway", "orchestrator", "provisioner"]
            .into_iter()
            .collect()
    );
    for name in [
        "provision traced-1",
        "step clone",
        "step wait_ip",
        "step join",
        "pve.task.wait",
    ] {
        assert!(has(&tree, &|s| s.name == name), "{name} missing");
    }
    let clone = spans
        .iter()
        .find(|s| s.name == "pve POST /nodes/{node}/qemu/{vmid}/clone")
        .expect("the clone call");
    assert!(
        clone
            .attributes
            .get("pve.upid")
            .is_some_and(|u| u.contains(":qmclone:9000:")),
        "{clone:?}"
    );
    p.stop.cancel();
    telemetry.shutdown().await;
}
