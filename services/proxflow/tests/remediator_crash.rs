//! kill -9 of the remediator service (`proxflow serve remediator`, the owner of `remediate`
//! workflows) while a remediation waits for a hand-off's outcome: the owner answers while the
//! remediator is down, a new remediator resumes the workflow from KV, and it ends once, with the
//! owner's request sent once and one outcome reported. The test plays the owner (it answers the
//! replication request as the replicator would); everything else is the real binary.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use proxflow_runtime::workflow::{Engine, WorkflowStore};
use proxflow_schemas::alert::{AlertReceived, AlertStatus};
use proxflow_schemas::names::{bucket, key, stream, subject};
use proxflow_schemas::remediation::{
    HandOffOutcome, HandOffResult, RemediationAction, RemediationCommand,
};
use proxflow_schemas::workflow::{Origin, Wait, WorkflowState};
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;

fn remediator(nats: &TestNats, sim: &proxflow_pve_sim::RunningSim) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxflow"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROXFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["serve", "remediator"])
        .env("PROXFLOW_NATS__URL", nats.url())
        .env("PROXFLOW_OPS__LISTEN", "127.0.0.1:0")
        .env("PROXFLOW_PVE__URL", sim.base_url())
        .env("PROXFLOW_PVE__TOKEN_ID", sim.token_id())
        .env("PROXFLOW_PVE__TOKEN_SECRET", sim.token_secret())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(fp) = sim.fingerprint() {
        cmd.env("PROXFLOW_PVE__FINGERPRINT", fp);
    }
    cmd.spawn().expect("proxflow serve remediator starts")
}

async fn count(js: &async_nats::jetstream::Context, stream_name: &str, subject: &str) -> usize {
    use futures::StreamExt;
    let s = js.get_stream(stream_name).await.expect("stream");
    let mut subjects = s.info_with_subjects(subject).await.expect("subjects");
    let mut n = 0;
    while let Some(entry) = subjects.next().await {
        n += entry.expect("subject count").1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_remediator_while_a_hand_off_waits_resumes_and_ends_once() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("remediator-crash").await.expect("context");
    let (sim, _) = start_sim(|_| {}).await.expect("simulator");
    let store = WorkflowStore::open(&ctx.bus.js).await.expect("store");
    let locks = ctx
        .bus
        .js
        .get_key_value(bucket::LOCKS)
        .await
        .expect("locks");
    let engine = Engine::new(&ctx).await.expect("engine");

    let id = "remed-crash-1";
    let now = chrono::Utc::now();
    let alert = AlertReceived {
        fingerprint: "f00d".into(),
        status: AlertStatus::Firing,
        labels: BTreeMap::from([("alertname".to_string(), "ReplicationLagging".to_string())]),
        annotations: BTreeMap::new(),
        starts_at: now,
        ends_at: None,
        generator_url: String::new(),
        receiver: "proxflow".into(),
        group: String::new(),
        external_url: String::new(),
        received_by: "token:test".into(),
        received_at: now,
    };
    let command = RemediationCommand {
        workflow_id: id.into(),
        rule: "replication-lag".into(),
        target: "job/offsite".into(),
        action: RemediationAction::Replicate {
            job: "offsite".into(),
        },
        alert,
    };
    let mut process = remediator(&nats, &sim);
    let origin = Origin {
        source: "alert".into(),
        reference: "f00d".into(),
        reason: "kill -9 of the remediator".into(),
    };
    assert!(
        engine
            .start_kind("remediate", id, origin, &command)
            .await
            .expect("started")
    );

    // Waiting for the replicator's answer, its advance done (the workflow's lease free).
    let lease = format!("workflow/{}", key::key_part(id));
    let mut waited = false;
    for _ in 0..600 {
        let (r, _) = store.get(id).await.expect("get").expect("record");
        let free = locks.get(&lease).await.expect("lock").is_none();
        if r.state == WorkflowState::Waiting
            && matches!(&r.wait, Some(Wait::Signal { name, .. }) if name == "outcome")
            && free
        {
            waited = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(waited, "the remediation never waited for the hand-off");
    process.kill().expect("kill -9");
    process.wait().expect("reaped");

    // The replicator answers while no remediator runs.
    let answer = HandOffOutcome::new(
        id,
        "replication",
        HandOffResult::Succeeded,
        "job offsite replicated",
        chrono::Utc::now(),
    );
    ctx.bus.publisher.publish(&answer).await.expect("answered");
    let mut process = remediator(&nats, &sim);

    let mut ended = None;
    for _ in 0..600 {
        let (r, _) = store.get(id).await.expect("get").expect("record");
        if r.state.is_terminal() {
            ended = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    process.kill().expect("kill");
    process.wait().expect("reaped");
    let done = ended.expect("the remediation ended");
    assert_eq!(done.state, WorkflowState::Succeeded, "{done:#?}");
    let names: Vec<&str> = done.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["request", "outcome", "report"]);
    assert_eq!(
        count(&ctx.bus.js, stream::CMD, "pf.cmd.replicator.run").await,
        1,
        "the request was sent once"
    );
    assert_eq!(
        count(
            &ctx.bus.js,
            stream::EVT,
            &subject::evt("remediation", "outcome")
        )
        .await,
        1,
        "one outcome reported"
    );
}
