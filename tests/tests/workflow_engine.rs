//! The workflow engine on a real nats-server: memoized steps, durable timer / signal / child waits,
//! expiry, compensation in reverse order, the index, and an engine restart in the middle of each
//! wait (the process-crash version is `workflow_crash.rs`). Time runs on a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proxflow_e2e::workflows::{Demo, DemoInput, Journal, Leaf};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::config::ConsumerConfig;
use proxflow_runtime::workflow::{Engine, SignalError, WorkflowStore};
use proxflow_schemas::workflow::{Origin, StepState, WorkflowRecord, WorkflowState};
use proxflow_testkit::TestNats;
use tokio_util::sync::CancellationToken;

struct Rig {
    _nats: TestNats,
    ctx: ServiceContext,
    clock: ManualClock,
    journal: Journal,
    _dir: tempfile::TempDir,
    store: WorkflowStore,
    engine: Option<(Engine, CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Rig {
    async fn new() -> Self {
        let nats = TestNats::start().unwrap();
        let ctx = nats.context("workflow-engine").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal(dir.path().join("journal"));
        let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
        let mut rig = Self {
            _nats: nats,
            ctx,
            clock: ManualClock::new(chrono::Utc::now()),
            journal,
            _dir: dir,
            store,
            engine: None,
        };
        rig.start_engine().await;
        rig
    }

    /// A fresh engine, as a restarted orchestrator would build it.
    async fn start_engine(&mut self) {
        let ctx = self.ctx.clone().with_clock(self.clock.shared());
        let mut engine = Engine::new(&ctx).await.unwrap();
        engine
            .register(Demo(self.journal.clone()))
            .register(Leaf(self.journal.clone()));
        let stop = CancellationToken::new();
        let runner = engine.clone();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            runner
                .run(&ctx, &ConsumerConfig::default(), &s)
                .await
                .unwrap();
        });
        self.engine = Some((engine, stop, task));
    }

    async fn stop_engine(&mut self) {
        let (_, stop, task) = self.engine.take().unwrap();
        stop.cancel();
        task.await.unwrap();
    }

    fn engine(&self) -> &Engine {
        &self.engine.as_ref().unwrap().0
    }

    async fn start(&self, id: &str, input: DemoInput) {
        let origin = Origin {
            source: "test".into(),
            reference: id.into(),
            reason: "engine test".into(),
        };
        assert!(
            self.engine()
                .start::<Demo>(id, origin, &input)
                .await
                .unwrap()
        );
    }

    async fn until(
        &self,
        id: &str,
        what: &str,
        f: impl Fn(&WorkflowRecord) -> bool,
    ) -> WorkflowRecord {
        proxflow_e2e::eventually(what, || async {
            self.store
                .get(id)
                .await
                .unwrap()
                .map(|(r, _)| r)
                .filter(|r| f(r))
        })
        .await
    }

    async fn until_waiting_on(&self, id: &str, step: &str) -> WorkflowRecord {
        self.until(id, &format!("{id} waiting on {step}"), |r| {
            r.state == WorkflowState::Waiting
                && r.wait.as_ref().is_some_and(|w| match w {
                    proxflow_schemas::workflow::Wait::Timer { step: s, .. }
                    | proxflow_schemas::workflow::Wait::Signal { step: s, .. }
                    | proxflow_schemas::workflow::Wait::Child { step: s, .. } => s == step,
                })
        })
        .await
    }

    /// Waits until the process's `/metrics` text holds `line`.
    async fn until_metrics(&self, line: &str) {
        proxflow_e2e::eventually(line, || async {
            self.ctx.metrics.encode().contains(line).then_some(())
        })
        .await
    }

    async fn until_ended(&self, id: &str) -> WorkflowRecord {
        proxflow_e2e::until_ended(&self.store, id).await
    }
}

fn input(fail_last: bool) -> DemoInput {
    DemoInput {
        wait_secs: 60,
        go_expires_secs: Some(3600),
        fail_last,
        ..DemoInput::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_waits_on_timer_signal_and_child_and_every_step_runs_once() {
    let r = Rig::new().await;
    r.start("wf-happy", input(false)).await;
    r.until_waiting_on("wf-happy", "cool").await;
    // The timer holds until the clock passes it.
    r.clock.advance(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        r.store.get("wf-happy").await.unwrap().unwrap().0.state,
        WorkflowState::Waiting
    );
    r.clock.advance(Duration::from_secs(31));
    r.until_waiting_on("wf-happy", "go").await;
    // The live-workflow gauge counts it as waiting (the waker sets it from the index it watches).
    r.until_metrics("proxflow_workflows{kind=\"demo\",state=\"waiting\"} 1")
        .await;
    r.engine()
        .signal("wf-happy", "go", "tester", &"ship")
        .await
        .unwrap();
    let done = r.until_ended("wf-happy").await;
    assert_eq!(done.state, WorkflowState::Succeeded, "{done:#?}");
    r.until_metrics("proxflow_workflows{kind=\"demo\",state=\"waiting\"} 0")
        .await;
    let metrics = r.ctx.metrics.encode();
    for kind in ["demo", "leaf"] {
        let ended =
            format!("proxflow_workflows_ended_total{{kind=\"{kind}\",state=\"succeeded\"}} 1");
        assert!(metrics.contains(&ended), "{ended} in\n{metrics}");
    }
    assert_eq!(done.data["output"], "ship/SHIP");
    assert_eq!(r.journal.count("wf-happy begin"), 1);
    assert_eq!(r.journal.count("wf-happy-leaf shout"), 1);
    assert_eq!(r.journal.count("wf-happy finish"), 1);
    let names: Vec<_> = done.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["begin", "cool", "go", "leaf", "finish"]);
    assert!(done.steps.iter().all(|s| s.state == StepState::Succeeded));
    let child = r.store.get("wf-happy-leaf").await.unwrap().unwrap().0;
    assert_eq!(child.parent.as_deref(), Some("wf-happy"));
    assert_eq!(child.state, WorkflowState::Succeeded);
    // A second signal is refused: the wait is over.
    let again = r
        .engine()
        .signal("wf-happy", "go", "tester", &"again")
        .await;
    assert!(matches!(again, Err(SignalError::Ended { .. })), "{again:?}");
    // The index lists it by kind and state.
    let listed = r
        .engine()
        .list("demo", WorkflowState::Succeeded, None)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["wf-happy"]
    );
    assert!(
        r.engine()
            .list("demo", WorkflowState::Waiting, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_resumes_each_wait_and_runs_nothing_twice() {
    let mut r = Rig::new().await;
    r.start("wf-restart", input(false)).await;
    // Restart while on the timer.
    r.until_waiting_on("wf-restart", "cool").await;
    r.stop_engine().await;
    r.clock.advance(Duration::from_secs(61));
    r.start_engine().await;
    // Restart while waiting for the signal; the signal is given while no engine runs.
    r.until_waiting_on("wf-restart", "go").await;
    r.stop_engine().await;
    r.start_engine().await;
    r.engine()
        .signal("wf-restart", "go", "tester", &"go")
        .await
        .unwrap();
    let done = r.until_ended("wf-restart").await;
    assert_eq!(done.state, WorkflowState::Succeeded, "{done:#?}");
    assert_eq!(
        r.journal.count("wf-restart begin"),
        1,
        "{:?}",
        r.journal.lines()
    );
    assert_eq!(r.journal.count("wf-restart-leaf shout"), 1);
    assert_eq!(r.journal.count("wf-restart finish"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_after_its_expiry_is_refused_and_the_workflow_ends_as_defined() {
    let r = Rig::new().await;
    let mut i = input(false);
    i.go_expires_secs = Some(120);
    r.start("wf-late", i).await;
    r.until_waiting_on("wf-late", "cool").await;
    r.clock.advance(Duration::from_secs(61));
    r.until_waiting_on("wf-late", "go").await;
    r.clock.advance(Duration::from_secs(60));
    // The waker sees the expiry; the definition treats "no go" as a refusal: compensate, cancel.
    let done = r.until_ended("wf-late").await;
    assert_eq!(done.state, WorkflowState::Cancelled, "{done:#?}");
    assert!(
        done.error.as_deref().unwrap().contains("no go"),
        "{done:#?}"
    );
    assert_eq!(r.journal.count("undo begin"), 1);
    let late = r.engine().signal("wf-late", "go", "tester", &"go").await;
    assert!(matches!(late, Err(SignalError::Ended { .. })), "{late:?}");
    assert_eq!(r.journal.count("wf-late-leaf shout"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_racing_the_expiry_while_still_waiting_is_refused_once_expired() {
    let mut r = Rig::new().await;
    let mut i = input(false);
    i.go_expires_secs = Some(120);
    r.start("wf-race", i).await;
    r.until_waiting_on("wf-race", "cool").await;
    r.clock.advance(Duration::from_secs(61));
    r.until_waiting_on("wf-race", "go").await;
    // Nobody advances the workflow now; its wait has expired by the clock but is not recorded yet.
    r.stop_engine().await;
    r.clock.advance(Duration::from_secs(120));
    r.start_engine().await;
    let late = r.engine().signal("wf-race", "go", "tester", &"go").await;
    // Whether or not the engine has recorded the expiry yet, the sender hears "expired".
    assert!(
        matches!(
            late,
            Err(SignalError::WaitOver { expired: true, .. } | SignalError::Ended { .. })
        ),
        "{late:?}"
    );
    let done = r.until_ended("wf-race").await;
    assert_eq!(done.state, WorkflowState::Cancelled, "{done:#?}");
    assert_eq!(r.journal.count("wf-race-leaf shout"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_failure_undoes_completed_steps_in_reverse_order() {
    let r = Rig::new().await;
    r.start("wf-fail", input(true)).await;
    r.until_waiting_on("wf-fail", "cool").await;
    r.clock.advance(Duration::from_secs(61));
    r.until_waiting_on("wf-fail", "go").await;
    r.engine()
        .signal("wf-fail", "go", "tester", &"x")
        .await
        .unwrap();
    let done = r.until_ended("wf-fail").await;
    assert_eq!(done.state, WorkflowState::Failed, "{done:#?}");
    assert_eq!(done.error.as_deref(), Some("finish failed as asked"));
    // "finish" failed, so only "begin" had completed with an undo.
    let undos: Vec<_> = r
        .journal
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("undo "))
        .collect();
    assert_eq!(undos, ["undo begin"]);
    let begin = done.steps.iter().find(|s| s.name == "begin").unwrap();
    assert_eq!(begin.state, StepState::Compensated);
    let finish = done.steps.iter().find(|s| s.name == "finish").unwrap();
    assert_eq!(finish.state, StepState::Failed);
    assert_eq!(finish.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_child_fails_its_parent_through_the_parents_definition() {
    let r = Rig::new().await;
    let mut i = input(false);
    i.fail_child = true;
    r.start("wf-child", i).await;
    r.until_waiting_on("wf-child", "cool").await;
    r.clock.advance(Duration::from_secs(61));
    r.until_waiting_on("wf-child", "go").await;
    r.engine()
        .signal("wf-child", "go", "tester", &"x")
        .await
        .unwrap();
    let done = r.until_ended("wf-child").await;
    assert_eq!(done.state, WorkflowState::Failed, "{done:#?}");
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("the leaf failed as asked"),
        "{done:#?}"
    );
    assert_eq!(r.journal.count("wf-child finish"), 0);
    assert_eq!(r.journal.count("undo begin"), 1);
}

/// A crash between a record's write and its index write leaves the workflow listed under its old
/// state. Simulated here by ending the record behind the engine's back: the next wake-up finds it
/// ended and repairs the index, so it is listed where it is and the waker stops waking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_index_line_is_repaired_when_its_workflow_is_found_ended() {
    let r = Rig::new().await;
    r.start("wf-stale-index", input(false)).await;
    r.until_waiting_on("wf-stale-index", "cool").await;
    r.store
        .update("wf-stale-index", |rec| {
            rec.state = WorkflowState::Succeeded;
            rec.wait = None;
        })
        .await
        .unwrap();
    let waiting = r
        .engine()
        .list("demo", WorkflowState::Waiting, None)
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1, "the stale line: {waiting:?}");
    // The timer falls due: the waker wakes the workflow, which is found ended.
    r.clock.advance(Duration::from_secs(61));
    proxflow_e2e::eventually("the index repaired", || async {
        let waiting = r
            .engine()
            .list("demo", WorkflowState::Waiting, None)
            .await
            .unwrap();
        let done = r
            .engine()
            .list("demo", WorkflowState::Succeeded, None)
            .await
            .unwrap();
        (waiting.is_empty() && done.iter().any(|e| e.id == "wf-stale-index")).then_some(())
    })
    .await;
    assert_eq!(r.journal.count("wf-stale-index finish"), 0, "nothing ran");
}
