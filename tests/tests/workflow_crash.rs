//! kill -9 of a process running the workflow engine (`pf-test-engine`, the engine the orchestrator
//! runs, with the test workflows) in each kind of wait: on a timer, for a signal, for a child. A new
//! process resumes the workflow from KV and it completes once, every step having run once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

use proxflow_e2e::workflows::{Demo, DemoInput, Journal};
use proxflow_runtime::workflow::{Engine, WorkflowStore};
use proxflow_schemas::names::bucket;
use proxflow_schemas::workflow::{Origin, Wait, WorkflowRecord, WorkflowState};
use proxflow_testkit::TestNats;

fn spawn_engine(nats: &TestNats, journal: &Journal) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pf-test-engine"))
        .env("PF_NATS_URL", nats.url())
        .env("PF_JOURNAL", &journal.0)
        .env("PF_LEASE_STALE_MS", "1500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pf-test-engine starts")
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn waits_on(r: &WorkflowRecord, step: &str) -> bool {
    r.state == WorkflowState::Waiting
        && match r.wait.as_ref() {
            Some(
                Wait::Timer { step: s, .. }
                | Wait::Signal { step: s, .. }
                | Wait::Child { step: s, .. },
            ) => s == step,
            None => false,
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_each_wait_resumes_and_completes_once() {
    let nats = TestNats::start().unwrap();
    let ctx = nats.context("workflow-crash").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal(dir.path().join("journal"));
    let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
    let locks = ctx.bus.js.get_key_value(bucket::LOCKS).await.unwrap();
    // This process only starts the workflow and gives signals; it runs no advance.
    let engine = Engine::new(&ctx).await.unwrap();

    let id = "wf-crash";
    // Waits until the workflow waits on `step` and its advance has let go of it (so the kill
    // lands in the wait, not in the middle of an advance).
    let settled_on = |step: &'static str| {
        let store = store.clone();
        let locks = locks.clone();
        async move {
            proxflow_e2e::eventually(&format!("waiting on {step}"), || async {
                let (r, _) = store.get(id).await.unwrap()?;
                let free = locks.get(format!("workflow/{id}")).await.unwrap().is_none();
                (waits_on(&r, step) && free).then_some(r)
            })
            .await
        }
    };

    let mut process = spawn_engine(&nats, &journal);
    let input = DemoInput {
        wait_secs: 2,
        hold_child: true,
        ..DemoInput::default()
    };
    let origin = Origin {
        source: "test".into(),
        reference: id.into(),
        reason: "kill -9 in each wait".into(),
    };
    assert!(engine.start::<Demo>(id, origin, &input).await.unwrap());

    // 1. On the timer: killed, down past the timer's due time, restarted.
    let timer = settled_on("cool").await;
    kill_9(&mut process);
    let due = match timer.wait {
        Some(Wait::Timer { until, .. }) => until,
        other => panic!("not a timer: {other:?}"),
    };
    let left = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(200)).await;
    process = spawn_engine(&nats, &journal);

    // 2. For the signal: killed, the signal given while no engine runs, restarted.
    settled_on("go").await;
    kill_9(&mut process);
    engine.signal(id, "go", "tester", &"go").await.unwrap();
    process = spawn_engine(&nats, &journal);

    // 3. For the child (which waits for its own signal): killed, the child released, restarted.
    settled_on("leaf").await;
    kill_9(&mut process);
    engine
        .signal(&format!("{id}-leaf"), "release", "tester", &())
        .await
        .unwrap();
    process = spawn_engine(&nats, &journal);

    let done = proxflow_e2e::until_ended(&store, id).await;
    kill_9(&mut process);
    assert_eq!(done.state, WorkflowState::Succeeded, "{done:#?}");
    assert_eq!(done.data["output"], "go/GO");
    assert_eq!(journal.count("wf-crash begin"), 1, "{:?}", journal.lines());
    assert_eq!(
        journal.count("wf-crash-leaf shout"),
        1,
        "{:?}",
        journal.lines()
    );
    assert_eq!(journal.count("wf-crash finish"), 1, "{:?}", journal.lines());
    let names: Vec<_> = done.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["begin", "cool", "go", "leaf", "finish"]);
}

/// kill -9 in the middle of a step: the step's effect may have happened but its output was never
/// recorded, so the next process runs it again (at least once, as any step), takes over the dead
/// process's workflow lease once stale instead of waiting out the bucket's 15 minutes, and the
/// workflow completes once, with no advance dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_a_step_reruns_that_step_and_completes_once() {
    let nats = TestNats::start().unwrap();
    let ctx = nats.context("workflow-crash-step").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal(dir.path().join("journal"));
    let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
    let engine = Engine::new(&ctx).await.unwrap();
    let id = "wf-mid-step";
    let mut process = spawn_engine(&nats, &journal);
    let input = DemoInput {
        slow_begin_ms: 3_000,
        ..DemoInput::default()
    };
    let origin = Origin {
        source: "test".into(),
        reference: id.into(),
        reason: "kill -9 inside a step".into(),
    };
    assert!(engine.start::<Demo>(id, origin, &input).await.unwrap());
    proxflow_e2e::eventually("the first step under way", || async {
        (journal.count("wf-mid-step begin") == 1).then_some(())
    })
    .await;
    kill_9(&mut process);
    assert_eq!(
        journal.count("wf-mid-step begun"),
        0,
        "killed inside the step"
    );
    process = spawn_engine(&nats, &journal);
    let waiting = proxflow_e2e::eventually("waiting for go", || async {
        let (r, _) = store.get(id).await.unwrap()?;
        waits_on(&r, "go").then_some(r)
    })
    .await;
    assert_eq!(waiting.steps[0].name, "begin");
    engine.signal(id, "go", "tester", &"go").await.unwrap();
    let done = proxflow_e2e::until_ended(&store, id).await;
    kill_9(&mut process);
    assert_eq!(done.state, WorkflowState::Succeeded, "{done:#?}");
    // The interrupted step ran again (its effect is at-least-once); everything after it once.
    assert_eq!(
        journal.count("wf-mid-step begin"),
        2,
        "{:?}",
        journal.lines()
    );
    assert_eq!(
        journal.count("wf-mid-step begun"),
        1,
        "{:?}",
        journal.lines()
    );
    assert_eq!(journal.count("wf-mid-step-leaf shout"), 1);
    assert_eq!(journal.count("wf-mid-step finish"), 1);
    let letters = proxflow_e2e::stored::<serde_json::Value>(
        &ctx.bus.js,
        proxflow_schemas::names::stream::EVT,
        &proxflow_schemas::names::subject::dead_letter(&proxflow_schemas::names::workflow_durable(
            "demo",
        )),
    )
    .await;
    assert!(letters.is_empty(), "{letters:#?}");
}
