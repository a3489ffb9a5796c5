//! A KV compare-and-set started while the server is away (a restart, or a cluster electing a new
//! leader) waits it out within its deadline instead of failing its handler and spending a delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proxflow_runtime::kv::{self, Change};
use proxflow_schemas::names::bucket;
use proxflow_testkit::TestNats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_server_restart_completes_once_it_is_back() {
    let mut nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("kv-outage").await.expect("context");
    let store = ctx.bus.js.get_key_value(bucket::ADMISSIONS).await.unwrap();
    kv::change(&store, "outage", |_: Option<u32>| Change::Write(1u32, ()))
        .await
        .unwrap();

    nats.stop();
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            kv::change(&store, "outage", |n: Option<u32>| {
                Change::Write(n.unwrap_or(0) + 1, ())
            })
            .await
        }
    });
    // The outage outlasts one request's timeout (5 s; the fault being injected, not a wait for a
    // result): a single attempt times out, only retrying gets through.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !writer.is_finished(),
        "the change gave up while the server was away"
    );
    nats.restart().expect("restarted");
    tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the change finished")
        .unwrap()
        .expect("the change succeeded once the server was back");
    let stored = kv::read::<u32>(&store, "outage").await.unwrap().value;
    assert_eq!(stored, Some(2));
}
