//! The gateway's ops endpoints over real HTTP, with readiness tied to the real NATS connection.

use std::time::Duration;

use proxflow_runtime::config::TelemetryConfig;
use proxflow_testkit::TestNats;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn health_readiness_metrics_and_trace_echo() {
    // The real process-wide telemetry, as `proxflow serve` installs it (the only test in this binary).
    let telemetry = proxflow_runtime::telemetry::init(&TelemetryConfig::default(), "gateway-test")
        .expect("telemetry");
    let mut nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("gateway").await.expect("ctx");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let config = proxflow_gateway::GatewayConfig {
        webhook_secrets: vec![proxflow_gateway::webhook::generate_secret()],
        ..Default::default()
    };
    let server = tokio::spawn(proxflow_gateway::run(
        ctx.clone(),
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config,
            profiles: proxflow_platform::Profiles::default(),
            listener,
            approvers: Vec::new(),
        },
        stop.clone(),
    ));
    let http = reqwest::Client::new();

    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let checks: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(checks["nats"], true);
    assert_eq!(checks["gateway http"], true);

    // A caller's trace continues: the response carries the same trace id with the gateway's span.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let metrics = http
        .get(format!("{base}/metrics"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    let echoed = metrics.headers()["traceparent"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(echoed.starts_with(&format!("00-{trace}-")), "{echoed}");
    assert!(
        !echoed.contains("00f067aa0ba902b7"),
        "the gateway's own span id should replace the caller's"
    );
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );

    // Bus down: not ready, with the reason; still alive.
    nats.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        if r.status() == 503 {
            break r.json::<serde_json::Value>().await.expect("json");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with NATS stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["nats"], false);
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    stop.cancel();
    server.await.expect("joins").expect("clean stop");
    telemetry.shutdown().await;
}
