//! The shipped 3-node cluster (`deploy/nats/cluster-node{1,2,3}.conf`) on real nats-servers: it
//! forms, elects a JetStream meta leader and stores R3 streams; and a process's `/readyz` follows
//! JetStream's availability through a quorum loss, not just its connection.

use std::time::Duration;

use async_nats::jetstream::stream;
use proxflow_runtime::bus::{self, JetStreamProbe, topology};
use proxflow_runtime::ops::{self, Health, Metrics, OpsState};
use proxflow_runtime::serve::{self, HttpLimits};
use proxflow_schemas::names::stream as stream_name;
use proxflow_testkit::{TestCluster, TestNats};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `/jsz` of node `node`.
async fn jsz(cluster: &TestCluster, node: usize) -> serde_json::Value {
    let url = format!("{}/jsz", cluster.monitor_url(node).expect("node"));
    reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_cluster_elects_a_meta_leader_and_stores_r3_streams() {
    let cluster = TestCluster::start().expect("three nodes from the shipped files");
    cluster
        .wait_for_jetstream(Duration::from_secs(30))
        .await
        .expect("JetStream answers");

    // Every node sees the same meta leader of a 3-node group, and fsyncs every write.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let mut leaders = Vec::new();
        for node in 1..=3 {
            let jsz = jsz(&cluster, node).await;
            assert_eq!(
                jsz["config"]["sync_always"], true,
                "node {node} does not fsync every write: {jsz:#}"
            );
            leaders.push((
                jsz["meta_cluster"]["leader"].as_str().map(str::to_owned),
                jsz["meta_cluster"]["cluster_size"].as_u64(),
            ));
        }
        if let Some((Some(leader), Some(3))) = leaders.first().cloned()
            && leaders.iter().all(|l| l.0.as_deref() == Some(&leader[..]))
        {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed meta leader: {leaders:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(cluster.node_named(&leader).is_some(), "leader {leader}");

    // A client given all three URLs writes an R3 stream, acknowledged by a majority.
    let bus = bus::connect(
        &cluster.nats_config("admin"),
        "cluster-test",
        Metrics::new(),
    )
    .await
    .expect("admin connects to the cluster");
    let created = bus
        .js
        .create_stream(stream::Config {
            name: "PF_CLUSTER_TEST".into(),
            subjects: vec!["cluster.test.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("R3 stream: {e}\n{}", cluster.logs()));
    assert_eq!(created.cached_info().config.num_replicas, 3);
    for i in 0..10 {
        bus.js
            .publish(format!("cluster.test.{i}"), "written".into())
            .await
            .expect("sent")
            .await
            .expect("acknowledged by a majority");
    }
    let mut test_stream = bus.js.get_stream("PF_CLUSTER_TEST").await.expect("stream");
    let info = test_stream.info().await.expect("info");
    assert_eq!(info.state.messages, 10);
    let replicas = &info.cluster.as_ref().expect("clustered").replicas;
    assert_eq!(replicas.len(), 2, "{replicas:?}");

    // The proxflow topology itself, as `PROXFLOW_NATS__REPLICAS=3` declares it.
    topology::declare(&bus.client, &bus.js, 3)
        .await
        .expect("R3 topology");
    let events = bus.js.get_stream(stream_name::EVT).await.expect("PF_EVT");
    assert_eq!(events.cached_info().config.num_replicas, 3);
}

/// Serves the ops router of `health` on a free port; returns its `/readyz` URL.
async fn serve_ops(health: &Health, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/readyz", listener.local_addr().expect("addr"));
    let router = ops::router(OpsState {
        health: health.clone(),
        metrics: Metrics::new(),
    });
    let stop = stop.clone();
    tokio::spawn(async move {
        serve::serve(
            listener,
            router,
            stop,
            &HttpLimits::default(),
            Duration::from_secs(1),
        )
        .await
    });
    url
}

/// Stops every node but the one leading `stream` (whose raft leader keeps answering for a while
/// after losing its followers, the case readiness must not mistake for ready); returns them.
async fn stop_all_but_the_leader_of(
    cluster: &mut TestCluster,
    ctx: &proxflow_runtime::ServiceContext,
    stream: &str,
) -> Vec<usize> {
    let leader = cluster
        .stream_leader(&ctx.bus.js, stream)
        .await
        .unwrap_or_else(|| panic!("{stream} has a leader on one of the nodes"));
    let others: Vec<usize> = (1..=3).filter(|n| *n != leader).collect();
    tokio::task::block_in_place(|| {
        for node in &others {
            cluster.stop(*node).expect("stops");
        }
    });
    others
}

/// `/readyz` answering ready with JetStream available.
fn jetstream_ready(status: u16, body: &serde_json::Value) -> bool {
    status == 200 && body["jetstream"] == true
}

/// `/readyz` answering 503 because JetStream is not.
fn jetstream_down(status: u16, body: &serde_json::Value) -> bool {
    status == 503 && body["jetstream"] == false
}

/// Restarts `nodes` and waits until `/readyz` at `readyz` is ready again (the quorum is back).
async fn restart_until_ready(cluster: &mut TestCluster, nodes: &[usize], readyz: &str) {
    tokio::task::block_in_place(|| {
        for node in nodes {
            cluster.restart(*node).expect("restarts");
        }
    });
    readyz_until(
        readyz,
        Duration::from_secs(60),
        "ready again",
        jetstream_ready,
    )
    .await;
}

/// Polls `/readyz` until `done` holds for (status, body); panics after `within`.
async fn readyz_until(
    url: &str,
    within: Duration,
    what: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    let mut last = (0, serde_json::Value::Null);
    while Instant::now() < deadline {
        if let Ok(response) = http.get(url).timeout(Duration::from_secs(1)).send().await {
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(serde_json::Value::Null);
            if done(status, &body) {
                return (status, body);
            }
            last = (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz not {what} within {within:?}; last {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_jetstream_through_a_quorum_loss() {
    let mut cluster = TestCluster::start().expect("three nodes from the shipped files");
    cluster
        .wait_for_jetstream(Duration::from_secs(30))
        .await
        .expect("JetStream answers");
    // What `proxflow serve` runs: the connection check, the JetStream probe, the ops endpoint.
    let ctx = cluster.context("readyz-test").await.expect("context");
    let health = ctx.health.clone();
    let stop = CancellationToken::new();
    tokio::spawn(JetStreamProbe::default().run(health.clone(), ctx.bus.js.clone(), stop.clone()));
    let readyz = serve_ops(&health, &stop).await;
    readyz_until(&readyz, Duration::from_secs(30), "ready", jetstream_ready).await;

    // Two of three nodes go. The one kept leads the probed stream: a raft leader keeps answering
    // for about ten seconds after losing its followers, which must not read as ready.
    let others = stop_all_but_the_leader_of(&mut cluster, &ctx, stream_name::EVT).await;
    let (_, body) = readyz_until(
        &readyz,
        Duration::from_secs(5),
        "503 naming jetstream",
        jetstream_down,
    )
    .await;
    assert_eq!(body["jetstream"], false, "{body}");

    // They come back: ready again once JetStream has its quorum.
    restart_until_ready(&mut cluster, &others, &readyz).await;
    stop.cancel();
}

#[tokio::test]
async fn a_single_server_counts_as_jetstream_ready() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("probe").await.expect("context");
    let stop = CancellationToken::new();
    tokio::spawn(JetStreamProbe::default().run(
        ctx.health.clone(),
        ctx.bus.js.clone(),
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ready, checks) = ctx.health.report();
        if checks.get("jetstream") == Some(&true) {
            assert!(ready, "{checks:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no jetstream check: {checks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
}

/// Two of three nodes down: the gateway refuses a provisioning request at once with 503 naming
/// JetStream (not after every publish retry, not with "no stream found"); once the quorum is back,
/// the same request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_quorum_loss_are_refused_naming_jetstream_and_succeed_after() {
    const TOKEN: &str = "cluster-test-token-0123456789";
    let mut cluster = TestCluster::start().expect("three nodes from the shipped files");
    cluster
        .wait_for_jetstream(Duration::from_secs(30))
        .await
        .expect("JetStream answers");
    let ctx = cluster.context("quorum-test").await.expect("context");
    let stop = CancellationToken::new();
    tokio::spawn(JetStreamProbe::default().run(
        ctx.health.clone(),
        ctx.bus.js.clone(),
        stop.clone(),
    ));
    let base = proxflow_e2e::start_gateway(&ctx, "ci", TOKEN, &stop).await;
    let readyz = format!("{base}/readyz");
    readyz_until(&readyz, Duration::from_secs(30), "ready", jetstream_ready).await;

    let others = stop_all_but_the_leader_of(&mut cluster, &ctx, stream_name::EVT).await;
    readyz_until(&readyz, Duration::from_secs(5), "503", jetstream_down).await;

    let http = reqwest::Client::new();
    let request = || {
        http.post(format!("{base}/v1/provision"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "quorum-1")
            .json(&serde_json::json!({"name": "k3s-quorum"}))
            .timeout(Duration::from_secs(30))
            .send()
    };
    let started = Instant::now();
    let refused = request().await.expect("an answer");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("JetStream is unavailable"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused only after retries"
    );

    restart_until_ready(&mut cluster, &others, &readyz).await;
    // Each stream elects its own leader: the ingest stream may follow a moment after the probed
    // one, answered 503 meanwhile. A sender's retry (as Alertmanager's or a CI job's) gets through.
    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        let answer = request().await.expect("an answer");
        if answer.status() != 503 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "still refused 30 s after the quorum came back: {:?}",
            answer.text().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // 202, or 200 when an earlier retry already recorded the workflow (its request is published
    // again): either way the one workflow of this idempotency key is accepted.
    let status = accepted.status().as_u16();
    let body: serde_json::Value = accepted.json().await.expect("json");
    assert!(matches!(status, 200 | 202), "{status} {body}");
    assert!(
        body["workflow_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("prov-")),
        "{body}"
    );
    stop.cancel();
}
