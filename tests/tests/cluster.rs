//! The shipped 3-node cluster (`deploy/nats/cluster-node{1,2,3}.conf`) on real nats-servers: it
//! forms, elects a JetStream meta leader and stores R3 streams.

use std::time::Duration;

use async_nats::jetstream::stream;
use proxflow_runtime::bus::{self, topology};
use proxflow_runtime::ops::Metrics;
use proxflow_schemas::names::stream as stream_name;
use proxflow_testkit::TestCluster;
use tokio::time::Instant;

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
