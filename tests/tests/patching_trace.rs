//! One trace per patch run, with a span per node, and the span order proves each VM was
//! snapshotted before its upgrade and finished before the next VM began. Alone in its binary: it
//! installs the global subscriber. (Real nats-server, the simulator, zfs-fuse; MOCK kubectl.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/patching.rs"]
mod rig;
#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::time::{Duration, Instant};

use proxflow_runtime::config::TelemetryConfig;
use proxflow_runtime::telemetry::recorded::{SpanTree, fetch_trace};
use proxflow_schemas::trace::SpanRecord;
use proxflow_schemas::workflow::WorkflowState;
use rig::Rig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_run_is_one_trace_with_a_span_per_node_in_patch_order() {
    let telemetry = proxflow_runtime::telemetry::init(&TelemetryConfig::default(), "proxflow-e2e")
        .expect("telemetry");
    let mut rig = Rig::start("trace").await;
    telemetry
        .spans()
        .attach(&rig.ctx.bus.js, &rig.ctx.metrics)
        .expect("sink attached");
    let mut config = rig.config();
    config.host.enabled = false;
    rig.start_patcher(config);
    let id = rig.start_run(false).await;
    let record = rig.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    let trace_id = record.trace_id.clone().expect("a trace id");
    let step = |tree: &SpanTree, name: &str| -> Option<SpanRecord> {
        tree.spans()
            .iter()
            .find(|s| s.name == format!("step {name}"))
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let tree = loop {
        let fetched = fetch_trace(&rig.ctx.bus.js, &trace_id, Duration::from_millis(200))
            .await
            .expect("fetch");
        let tree = SpanTree::build(fetched.spans);
        if step(&tree, "0.vm/103.verify").is_some() {
            break tree;
        }
        assert!(Instant::now() < deadline, "the trace never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(tree.spans().iter().all(|s| s.trace_id == trace_id));
    let mut previous_end = None;
    for vm in ["vm/101", "vm/102", "vm/103"] {
        assert!(
            tree.spans().iter().any(|s| s.name == format!("patch {vm}")),
            "a node span for {vm}"
        );
        let get =
            |s: &str| step(&tree, &format!("0.{vm}.{s}")).unwrap_or_else(|| panic!("{vm} {s}"));
        let (snapshot, upgrade, verify) = (get("snapshot"), get("upgrade"), get("verify"));
        assert!(
            snapshot.end <= upgrade.start,
            "{vm}: snapshotted before its upgrade"
        );
        if let Some(end) = previous_end {
            assert!(
                end <= snapshot.start,
                "{vm} began after the previous VM ended"
            );
        }
        previous_end = Some(verify.end);
    }
}
