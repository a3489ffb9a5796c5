//! The HTTP edge under hostile clients, over raw TCP against the real gateway and a real
//! nats-server: credentials before bodies, header / body / idle timeouts, the connection cap, a
//! shutdown that no client can hold up, and query parameters that cannot overflow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proxflow_gateway::{GatewayConfig, GatewaySettings};
use proxflow_runtime::config::Secret;
use proxflow_runtime::serve::HttpLimits;
use proxflow_testkit::TestNats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "edge-test-token-0123456789";

struct Edge {
    _nats: TestNats,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), proxflow_gateway::GatewayError>>,
}

async fn gateway(http: HttpLimits) -> Edge {
    gateway_with(|c| c.http = http).await
}

async fn gateway_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Edge {
    gateway_on(TestNats::start().expect("nats-server"), tweak).await
}

async fn gateway_on(nats: TestNats, tweak: impl FnOnce(&mut GatewayConfig)) -> Edge {
    let mut ctx = nats.context("edge").await.expect("context");
    ctx.shutdown_grace = Duration::from_secs(2);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let server = tokio::spawn(proxflow_gateway::run(
        ctx,
        GatewaySettings {
            console: Default::default(),
            config: {
                let mut config = GatewayConfig {
                    bearer_tokens: [("edge".to_string(), Secret::new(TOKEN))].into(),
                    webhook_secrets: vec![proxflow_gateway::webhook::generate_secret()],
                    ..GatewayConfig::default()
                };
                tweak(&mut config);
                config
            },
            profiles: proxflow_platform::Profiles::default(),
            listener,
            approvers: Vec::new(),
        },
        stop.clone(),
    ));
    // Ready once it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the gateway never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Edge {
        _nats: nats,
        addr,
        stop,
        server,
    }
}

/// Reads what the server sends until it closes the connection or `within` passes: `Some(text)`
/// once closed, `None` if still open.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads the status line of the first response, waiting at most `within`.
async fn status_line(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !seen.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    text.lines().next().map(str::to_owned)
}

fn limits(f: impl FnOnce(&mut HttpLimits)) -> HttpLimits {
    let mut limits = HttpLimits::default();
    f(&mut limits);
    limits
}

/// Header, body and idle timeouts all `timeout`.
fn timeouts(timeout: Duration) -> HttpLimits {
    limits(|l| {
        l.header_read_timeout = timeout;
        l.body_read_timeout = timeout;
        l.idle_timeout = timeout;
    })
}

/// An authenticated alert delivery's head announcing a 100-byte body, and its first bytes.
fn slow_body_start() -> String {
    format!(
        "POST /v1/alerts/alertmanager HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         authorization: Bearer {TOKEN}\r\ncontent-length: 100\r\n\r\n{{\"alerts\":"
    )
}

/// A firing `VmDown` alert for each VMID of `vmids`, as Alertmanager sends them.
fn vm_down(vmids: std::ops::Range<u32>) -> Vec<serde_json::Value> {
    vmids
        .map(|vmid| {
            let vmid = vmid.to_string();
            proxflow_e2e::alertmanager_alert(
                "VmDown",
                &[("vmid", vmid.as_str())],
                "firing",
                "2026-12-06T08:00:00Z",
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_before_a_body_is_read() {
    let edge = gateway(HttpLimits::default()).await;
    for path in ["/v1/alerts/alertmanager", "/v1/provision"] {
        // A megabyte announced, none sent, no credentials: refused from the headers alone.
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 1000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let status = status_line(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 401 Unauthorized"),
            "{path} waited for the body of an unauthenticated caller"
        );
    }
    // A webhook signature too old to be valid is refused from its headers as well.
    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    let head = "POST /v1/provision HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                webhook-id: msg_1\r\nwebhook-timestamp: 1000\r\nwebhook-signature: v1,AAAA\r\n\
                content-length: 1000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(
        status_line(&mut stream, Duration::from_secs(3))
            .await
            .as_deref(),
        Some("HTTP/1.1 401 Unauthorized")
    );
    edge.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed() {
    let edge = gateway(timeouts(Duration::from_secs(1))).await;
    // Slowloris: a header line every 300 ms, never finished.
    let mut slowloris = TcpStream::connect(edge.addr).await.unwrap();
    slowloris
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0..40 {
            if slowloris
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return (true, slowloris);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (false, slowloris)
    });
    // Idle: connected, nothing sent.
    let mut idle = TcpStream::connect(edge.addr).await.unwrap();
    // Slow body: authenticated, announces 100 bytes, sends 10.
    let mut slow_body = TcpStream::connect(edge.addr).await.unwrap();
    slow_body
        .write_all(slow_body_start().as_bytes())
        .await
        .unwrap();

    let started = Instant::now();
    assert!(
        until_closed(&mut idle, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle connection stayed open"
    );
    let answer = until_closed(&mut slow_body, Duration::from_secs(5))
        .await
        .expect("a slow body's connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (closed, mut slowloris) = trickle.await.unwrap();
    let closed = closed
        || until_closed(&mut slowloris, Duration::from_secs(1))
            .await
            .is_some();
    assert!(closed, "a slowloris connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(12));
    edge.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_with_the_limit() {
    let edge = gateway(limits(|l| l.max_connections = 3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        // An authenticated request in flight on each, so each really holds its slot (a
        // connection without one would be closed to make room). `Expect: 100-continue` makes the
        // server say when the handler starts reading the body: from then on it is in flight.
        stream
            .write_all(
                format!(
                    "POST /v1/alerts/alertmanager HTTP/1.1\r\nhost: x\r\n\
                     content-type: application/json\r\nauthorization: Bearer {TOKEN}\r\n\
                     content-length: 100\r\nexpect: 100-continue\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let line = status_line(&mut stream, Duration::from_secs(10))
            .await
            .expect("the server asks for the body");
        assert!(line.starts_with("HTTP/1.1 100"), "{line}");
        stream.write_all(b"{\"alerts\":").await.unwrap();
        held.push(stream);
    }
    // A connection the readiness probe left may still be closing and hold a slot for a moment: a
    // probe admitted in its place simply holds a slot too, and the next one is refused.
    let mut refused = None;
    for _ in 0..4 {
        let mut probe = TcpStream::connect(edge.addr).await.unwrap();
        match until_closed(&mut probe, Duration::from_secs(1)).await {
            Some(answer) => {
                refused = Some(answer);
                break;
            }
            None => held.push(probe),
        }
    }
    let answer = refused.expect("no connection over the cap was refused");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("the limit is 3"), "{answer}");
    assert!(
        held.len() <= 4,
        "{} connections were served at once",
        held.len()
    );
    // Freed slots are usable again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = reqwest::get(format!("http://{}/healthz", edge.addr))
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    edge.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_connections_without_a_request_make_room_for_one_that_asks() {
    let edge = gateway(limits(|l| l.max_connections = 4)).await;
    // The cap filled by clients that ask nothing: two idle, two slowloris (headers never finished).
    let mut abusers = Vec::new();
    for slow in [false, false, true, true] {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        if slow {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        abusers.push(stream);
    }
    // Every legitimate request is served, each by closing the longest-waiting abuser (each client
    // keeps its connection alive, so each newcomer finds the cap full).
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(reqwest::Client::new());
        let answer = clients[clients.len() - 1]
            .get(format!("http://{}/healthz", edge.addr))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .expect("served, not refused");
        assert_eq!(answer.status(), 200);
    }
    for (i, abuser) in abusers.iter_mut().enumerate() {
        assert_eq!(
            until_closed(abuser, Duration::from_secs(2))
                .await
                .as_deref(),
            Some(""),
            "abuser {i} was closed without an answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_within_the_grace_period_whatever_clients_do() {
    // Timeouts far longer than the grace period (2 s): only the shutdown can end these.
    let edge = gateway(timeouts(Duration::from_secs(600))).await;
    let mut mid_headers = TcpStream::connect(edge.addr).await.unwrap();
    mid_headers
        .write_all(b"POST /v1/alerts/alertmanager HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut mid_body = TcpStream::connect(edge.addr).await.unwrap();
    mid_body
        .write_all(slow_body_start().as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    edge.stop.cancel();
    tokio::time::timeout(Duration::from_secs(4), edge.server)
        .await
        .expect("the gateway outlived its grace period")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    drop((mid_headers, mid_body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_since_is_a_field_error_not_a_panic() {
    let edge = gateway(HttpLimits::default()).await;
    let http = reqwest::Client::new();
    for since in ["999999999999h", "400days"] {
        let response = http
            .get(format!(
                "http://{}/v1/remediations?since={since}",
                edge.addr
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 422, "since={since}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["errors"]["since"].is_string(), "{body}");
    }
    edge.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_delivery_leaves_room_for_small_ones() {
    let edge = gateway_with(|c| {
        c.alerts.max_in_flight = 64;
        c.alerts.max_per_delivery = 16;
        c.alerts.max_body = 16 << 20;
    })
    .await;
    let delivery = |alerts: Vec<serde_json::Value>| {
        serde_json::json!({"version": "4", "receiver": "proxflow", "status": "firing",
                           "alerts": alerts})
    };
    let huge = vm_down(0..20_000);
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/alerts/alertmanager", edge.addr);
    let big = tokio::spawn({
        let (http, url, body) = (http.clone(), url.clone(), delivery(huge));
        async move {
            http.post(url)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    // Once the big delivery is publishing, a one-alert delivery must still get in.
    let metrics = format!("http://{}/metrics", edge.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let publishing = page
            .lines()
            .find(|l| l.starts_with("proxflow_gateway_alerts_in_flight "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0);
        if publishing {
            break;
        }
        assert!(
            !big.is_finished(),
            "the big delivery ended before it was seen publishing"
        );
        assert!(
            Instant::now() < deadline,
            "the big delivery never started publishing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let small = delivery(vm_down(999_999..1_000_000));
    let answer = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    assert!(
        !big.is_finished(),
        "the big delivery had ended: the test proved nothing"
    );
    assert_eq!(big.await.unwrap().unwrap(), 200);
    edge.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_can_never_fit_the_bus_is_413_not_503() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.conf");
    // A store limit of its own: the default, 75 % of the free disk, may not hold the streams' caps.
    std::fs::write(
        &config,
        "max_payload: 16384\njetstream { max_file_store: 10G }\n",
    )
    .unwrap();
    let nats = TestNats::start_with_config(&config, &[]).expect("nats-server");
    let edge = gateway_on(nats, |_| {}).await;
    let http = reqwest::Client::new();

    // One alert of 20 KB: under gateway.alerts.max_body, over the server's max_payload.
    let mut alert = vm_down(101..102).remove(0);
    // Two annotations within their bound (16 KiB each), together over max_payload.
    alert["annotations"]["description"] = serde_json::json!("x".repeat(10_000));
    alert["annotations"]["runbook"] = serde_json::json!("y".repeat(10_000));
    let delivery = serde_json::json!({"version": "4", "receiver": "proxflow",
                                      "status": "firing", "alerts": [alert]});
    let answer = http
        .post(format!("http://{}/v1/alerts/alertmanager", edge.addr))
        .bearer_auth(TOKEN)
        .json(&delivery)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_payload is 16384"),
        "{body}"
    );

    // A 30 KB provisioning request: under gateway.max_body (64 KiB), over max_payload.
    let request = serde_json::json!({"name": "k3s-big", "tags": ["x".repeat(30_000)]});
    let answer = http
        .post(format!("http://{}/v1/provision", edge.addr))
        .bearer_auth(TOKEN)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_payload is 16384"),
        "{body}"
    );
    edge.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_not_amplified_on_the_bus() {
    let edge = gateway_with(|c| c.alerts.max_body = 4 << 20).await;
    let js =
        async_nats::jetstream::new(async_nats::connect(edge._nats.url()).await.expect("client"));
    let bytes = || async {
        js.get_stream("PF_INGEST")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .bytes
    };
    let before = bytes().await;
    // 200 small alerts with a 100 KB group key (the group's label matchers), as one delivery.
    let alerts = vm_down(0..200);
    let delivery = serde_json::json!({"version": "4", "receiver": "proxflow", "status": "firing",
                                      "groupKey": "g".repeat(100_000),
                                      "externalURL": "http://alertmanager:9093",
                                      "alerts": alerts});
    let body = serde_json::to_vec(&delivery).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/alerts/alertmanager", edge.addr))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let written = bytes().await - before;
    assert!(
        written < 3 * body.len() as u64,
        "a {}-byte delivery wrote {written} bytes to PF_INGEST",
        body.len()
    );
    edge.stop.cancel();
}
