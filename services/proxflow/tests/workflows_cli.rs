//! `proxflow workflows` and `proxflow workflow <id>` against a real nats-server and a workflow engine
//! the test runs: every kind and state listed newest first from the index, narrowed by kind, state,
//! age and count; one workflow's steps, attempts, errors, origin, signals and children; tables whose
//! columns line up, and the same models as JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cli.rs"]
mod cli;

use std::time::{Duration, Instant};

use chrono::Utc;
use cli::{assert_aligned, json_of, run, stdout_of, text};
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::config::ConsumerConfig;
use proxflow_runtime::workflow::{Engine, Halt, Run, StepError, Workflow};
use proxflow_schemas::workflow::{Origin, WorkflowState};
use proxflow_testkit::TestNats;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What a `demo` workflow does after its first step.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Plan {
    Succeed,
    Fail,
    Wait,
    Parent,
}

/// A workflow that fetches, then succeeds, fails, waits for `go` or runs a child.
struct Demo;

impl Workflow for Demo {
    const KIND: &'static str = "demo";
    type Input = Plan;
    type Output = String;
    type Undo = ();

    async fn run(&self, wf: &mut Run<Self>, plan: Plan) -> Result<String, Halt> {
        wf.step("fetch", async { Ok("fetched".to_owned()) }).await?;
        match plan {
            Plan::Succeed => {}
            Plan::Fail => {
                wf.step("apply", async {
                    Err::<(), _>(StepError::terminal("disk full on tank"))
                })
                .await?;
            }
            Plan::Wait => {
                let _: Option<String> = wf.signal("go", None).await?;
            }
            Plan::Parent => {
                wf.child::<Demo>("child", &Plan::Succeed).await?;
            }
        }
        Ok("done".to_owned())
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }
}

fn origin(reason: &str) -> Origin {
    Origin {
        source: "test".into(),
        reference: "workflows-cli".into(),
        reason: reason.into(),
    }
}

/// Waits until `id` is in `state`.
async fn until(engine: &Engine, id: &str, state: WorkflowState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = engine.get(id).await.unwrap()
            && r.state == state
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never reached {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(listed: &Value) -> Vec<&str> {
    listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["id"].as_str().expect("an id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_listed_filtered_and_shown_in_detail() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("workflows-cli").await.unwrap();
    let stop = CancellationToken::new();
    let mut engine = Engine::new(&ctx).await.unwrap();
    engine.register(Demo);
    tokio::spawn({
        let (engine, ctx, stop) = (engine.clone(), ctx.clone(), stop.clone());
        async move { engine.run(&ctx, &ConsumerConfig::default(), &stop).await }
    });
    // Three hours ago, of a kind nobody runs here: it stays pending.
    let clock = ManualClock::new(Utc::now() - chrono::Duration::hours(3));
    let then = Engine::new(&ctx.clone().with_clock(clock.shared()))
        .await
        .unwrap();
    then.start_kind("export_like", "old-1", origin("long ago"), &"x")
        .await
        .unwrap();
    for (id, plan) in [
        ("ok-1", Plan::Succeed),
        ("bad-1", Plan::Fail),
        ("wait-1", Plan::Wait),
        ("wait-2", Plan::Wait),
        ("parent-1", Plan::Parent),
    ] {
        engine
            .start::<Demo>(id, origin(&format!("{plan:?}")), &plan)
            .await
            .unwrap();
        // One after another, so "newest first" has one answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until(&engine, "ok-1", WorkflowState::Succeeded).await;
    until(&engine, "bad-1", WorkflowState::Failed).await;
    until(&engine, "wait-2", WorkflowState::Waiting).await;
    until(&engine, "wait-1", WorkflowState::Waiting).await;
    engine
        .signal("wait-1", "go", "alice", &"ship it")
        .await
        .unwrap();
    until(&engine, "wait-1", WorkflowState::Succeeded).await;
    until(&engine, "parent-1", WorkflowState::Succeeded).await;

    let env = [("PROXFLOW_NATS__URL", nats.url())];
    // Everything, newest first.
    let all = json_of(&env, &["workflows"]).await;
    assert_eq!(
        ids(&all),
        [
            "parent-1-child",
            "parent-1",
            "wait-2",
            "wait-1",
            "bad-1",
            "ok-1",
            "old-1"
        ],
        "{all:#}"
    );
    let entry = |id: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(entry("bad-1")["state"], "failed");
    assert_eq!(entry("bad-1")["step"], "apply");
    assert_eq!(entry("wait-2")["state"], "waiting");
    assert_eq!(entry("wait-2")["step"], "go");
    assert_eq!(entry("old-1")["kind"], "export_like");
    assert_eq!(entry("old-1")["state"], "pending");

    // Narrowed by kind, state, both, age and count.
    let listed = json_of(&env, &["workflows", "--kind", "export_like"]).await;
    assert_eq!(ids(&listed), ["old-1"]);
    let listed = json_of(&env, &["workflows", "--state", "failed"]).await;
    assert_eq!(ids(&listed), ["bad-1"]);
    let listed = json_of(&env, &["workflows", "--state", "waiting"]).await;
    assert_eq!(ids(&listed), ["wait-2"]);
    let listed = json_of(
        &env,
        &["workflows", "--kind", "demo", "--state", "succeeded"],
    )
    .await;
    assert_eq!(
        ids(&listed),
        ["parent-1-child", "parent-1", "wait-1", "ok-1"]
    );
    let listed = json_of(&env, &["workflows", "--since", "1h"]).await;
    assert!(!ids(&listed).contains(&"old-1"), "{listed:#}");
    assert_eq!(ids(&listed).len(), 6, "{listed:#}");
    let since = (Utc::now() - chrono::Duration::hours(4)).to_rfc3339();
    let listed = json_of(&env, &["workflows", "--since", &since]).await;
    assert_eq!(ids(&listed).len(), 7, "an RFC 3339 time works too");
    let listed = json_of(&env, &["workflows", "--limit", "2"]).await;
    assert_eq!(ids(&listed), ["parent-1-child", "parent-1"]);
    let bad = run(&env, &["workflows", "--state", "sleeping"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));

    // The table: one line per workflow under aligned columns.
    let table = stdout_of(&env, &["workflows"]).await;
    let header = table.lines().next().unwrap();
    for column in ["ID", "KIND", "STATE", "STEP", "AGE", "UPDATED"] {
        assert!(header.contains(column), "{column} in {header:?}");
    }
    assert_aligned(&table);
    assert_eq!(table.lines().count(), 8, "{table}");
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} in\n{table}"))
            .to_owned()
    };
    let failed = line("bad-1");
    let words: Vec<&str> = failed.split_whitespace().collect();
    assert_eq!(
        &words[..4],
        ["bad-1", "demo", "failed", "apply"],
        "{failed}"
    );
    assert!(line("old-1").contains(" 3h "), "the age: {}", line("old-1"));
    let empty = stdout_of(&env, &["workflows", "--kind", "nothing_here"]).await;
    assert!(empty.contains("no workflows"), "{empty}");

    // One workflow: steps with attempts and errors, the origin, the error.
    let failed = stdout_of(&env, &["workflow", "bad-1"]).await;
    for part in [
        "bad-1",
        "demo",
        "failed",
        "disk full on tank",
        "test workflows-cli: Fail",
    ] {
        assert!(failed.contains(part), "{part} in\n{failed}");
    }
    let step = |out: &str, name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no step {name} in\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(step(&failed, "fetch")[1..3], ["succeeded", "1"]);
    assert_eq!(step(&failed, "apply")[1..3], ["failed", "1"]);
    // What a waiting one waits for; who signalled one that waited; a parent's children.
    let waiting = stdout_of(&env, &["workflow", "wait-2"]).await;
    assert!(waiting.contains("waiting for signal go"), "{waiting}");
    let signalled = stdout_of(&env, &["workflow", "wait-1"]).await;
    assert!(signalled.contains("go from alice"), "{signalled}");
    let parent = stdout_of(&env, &["workflow", "parent-1"]).await;
    assert!(
        parent
            .lines()
            .any(|l| l.contains("parent-1-child") && l.contains("succeeded")),
        "{parent}"
    );
    let child = stdout_of(&env, &["workflow", "parent-1-child"]).await;
    assert!(child.contains("parent-1"), "the parent is named: {child}");
    // As JSON: the record, its signals and its children.
    let detail = json_of(&env, &["workflow", "parent-1"]).await;
    assert_eq!(detail["record"]["id"], "parent-1");
    assert_eq!(detail["record"]["origin"]["reason"], "Parent");
    assert_eq!(detail["children"][0]["id"], "parent-1-child");
    let detail = json_of(&env, &["workflow", "wait-1"]).await;
    assert_eq!(detail["signals"][0]["name"], "go");
    assert_eq!(detail["signals"][0]["sender"], "alice");
    assert_eq!(detail["signals"][0]["payload"], "ship it");
    let missing = run(&env, &["workflow", "no-such-1"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("no workflow no-such-1"),
        "{}",
        text(&missing.stderr)
    );
    stop.cancel();
}
