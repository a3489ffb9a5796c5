//! A workflow is one trace however often it waits: the steps of the first advance, the advance a
//! signal from outside any trace triggers, and its child's steps are all recorded under the trace
//! the workflow was started in. Alone in its binary: it installs the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proxflow_e2e::workflows::{Demo, DemoInput, Journal, Leaf};
use proxflow_runtime::config::{ConsumerConfig, TelemetryConfig};
use proxflow_runtime::telemetry::recorded::{SpanTree, fetch_trace};
use proxflow_runtime::workflow::{Engine, WorkflowStore};
use proxflow_schemas::workflow::{Origin, WorkflowState};
use proxflow_testkit::TestNats;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_that_waits_is_still_one_trace() {
    let telemetry = proxflow_runtime::telemetry::init(&TelemetryConfig::default(), "proxflow-e2e")
        .expect("telemetry");
    let nats = TestNats::start().unwrap();
    let ctx = nats.context("workflow-trace").await.unwrap();
    telemetry
        .spans()
        .attach(&ctx.bus.js, &ctx.metrics)
        .expect("sink attached");
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal(dir.path().join("journal"));
    let mut engine = Engine::new(&ctx).await.unwrap();
    engine
        .register(Demo(journal.clone()))
        .register(Leaf(journal.clone()));
    let stop = CancellationToken::new();
    let runner = engine.clone();
    let (c, s) = (ctx.clone(), stop.clone());
    tokio::spawn(async move { runner.run(&c, &ConsumerConfig::default(), &s).await });
    let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();

    let id = "wf-traced";
    let input = DemoInput::default();
    let origin = Origin {
        source: "test".into(),
        reference: id.into(),
        reason: "one trace".into(),
    };
    let root = tracing::info_span!("test start");
    engine
        .start::<Demo>(id, origin, &input)
        .instrument(root)
        .await
        .unwrap();
    proxflow_e2e::eventually("waiting for go", || async {
        let (r, _) = store.get(id).await.unwrap()?;
        (r.state == WorkflowState::Waiting).then_some(())
    })
    .await;
    // Given outside any span: the advance it triggers starts no trace of its own.
    engine.signal(id, "go", "tester", &"go").await.unwrap();
    let done = proxflow_e2e::until_ended(&store, id).await;
    assert_eq!(done.state, WorkflowState::Succeeded, "{done:#?}");
    let trace_id = done.trace_id.clone().expect("a trace id");

    let deadline = Instant::now() + Duration::from_secs(30);
    let tree = loop {
        let fetched = fetch_trace(&ctx.bus.js, &trace_id, Duration::from_millis(200))
            .await
            .expect("fetch");
        let tree = SpanTree::build(fetched.spans);
        if tree.spans().iter().any(|s| s.name == "step finish") {
            break tree;
        }
        assert!(Instant::now() < deadline, "the trace never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<&str> = tree.spans().iter().map(|s| s.name.as_str()).collect();
    for step in ["step begin", "step shout", "step finish"] {
        assert!(names.contains(&step), "{step} missing from {names:#?}");
    }
    let advances = names
        .iter()
        .filter(|n| n.starts_with("demo wf-traced advance"))
        .count();
    assert!(
        advances >= 2,
        "the start and the signal's resume: {names:#?}"
    );
    assert!(tree.spans().iter().all(|s| s.trace_id == trace_id));
    stop.cancel();
}
