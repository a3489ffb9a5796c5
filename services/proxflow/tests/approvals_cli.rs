//! `proxflow approvals` against a patcher and the Proxmox simulator the test runs (a real
//! nats-server): a patch run whose plan brings a new kernel series waits for a decision, and the
//! listing names the run, the plan's approval hash, what the plan holds (the VM, its package count,
//! the major change flagged), when it was asked and until when, and the exact command to approve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cli.rs"]
mod cli;

use std::time::{Duration, Instant};

use cli::{assert_aligned, json_of, stdout_of};
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::patch::PatchRunInput;
use proxflow_schemas::workflow::{Origin, WorkflowState};
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_a_decision_is_listed_with_its_plan_and_the_command() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("approvals-cli").await.unwrap();
    let (sim, pve) = start_sim(|_| {}).await.expect("simulator");
    // Only k3s-1 has something pending, and it is a new kernel series: major, so the run patches
    // nothing and asks at once.
    let http = reqwest::Client::new();
    for (vmid, updates) in [
        (
            101,
            json!([{
                "package": "linux-image-6.5.0-41-generic",
                "version": "6.5.0-41.41~22.04.1",
                "archive": "jammy-security",
                "kernel": "6.5.0-41-generic"
            }]),
        ),
        (102, json!([])),
        (103, json!([])),
    ] {
        let r = http
            .put(format!("{}/_sim/guest/{vmid}/updates", sim.base_url()))
            .header(
                "Authorization",
                format!("PVEAPIToken={}={}", sim.token_id(), sim.token_secret()),
            )
            .json(&json!({ "updates": updates }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let mut config = proxflow_patcher::PatchConfig {
        enabled: false,
        ..proxflow_patcher::PatchConfig::default()
    };
    config.host.enabled = false;
    config.window = proxflow_patcher::window::WindowConfig::always_open();
    let stop = CancellationToken::new();
    tokio::spawn(proxflow_patcher::run(
        ctx.clone(),
        proxflow_patcher::PatcherSettings {
            config,
            pve,
            replication: false,
        },
        stop.clone(),
    ));
    let env = [("PROXFLOW_NATS__URL", nats.url())];
    let none = stdout_of(&env, &["approvals"]).await;
    assert!(none.contains("no patch run waits for a decision"), "{none}");

    let engine = Engine::new(&ctx).await.unwrap();
    let run = "patch-now-approvals-1";
    let origin = Origin {
        source: "operator".into(),
        reference: "token:ops".into(),
        reason: "patch run on request".into(),
    };
    let input = PatchRunInput {
        dry_run: false,
        requested_by: "token:ops".into(),
    };
    engine
        .start_kind(proxflow_patcher::KIND, run, origin, &input)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let record = engine.get(run).await.unwrap();
        if let Some(r) =
            record.filter(|r| r.state == WorkflowState::Waiting && !r.data["awaiting"].is_null())
        {
            break r;
        }
        assert!(Instant::now() < deadline, "the run never asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let hash = record.data["approval_hash"].as_str().unwrap().to_owned();

    let listed = json_of(&env, &["approvals"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let a = &listed[0];
    assert_eq!(a["run"], run);
    assert_eq!(a["plan_hash"], hash);
    assert_eq!(a["expires_at"], record.data["awaiting"]["expires_at"]);
    assert!(a["requested_at"].is_string(), "{a:#}");
    let targets = a["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{a:#}");
    assert_eq!(targets[0]["target"], "vm/101");
    assert_eq!(targets[0]["name"], "k3s-1");
    assert_eq!(targets[0]["packages"], 1);
    assert_eq!(targets[0]["major"], true);
    assert!(
        targets[0]["majors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("kernel"),
        "{a:#}"
    );
    let approve = format!("proxflow patch approve {run} --plan {}", &hash[..12]);
    assert_eq!(a["approve"], approve);

    let table = stdout_of(&env, &["approvals"]).await;
    let (head, rest) = table
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("a table, then the commands:\n{table}"));
    assert_aligned(head);
    assert!(head.contains(run) && head.contains(&hash[..12]), "{table}");
    assert!(rest.contains("vm/101") && rest.contains("MAJOR"), "{table}");
    assert!(rest.contains(&approve), "{table}");
    // The same run in the workflow list, at its decision.
    let waiting = json_of(
        &env,
        &[
            "workflows",
            "--kind",
            proxflow_patcher::KIND,
            "--state",
            "waiting",
        ],
    )
    .await;
    assert_eq!(waiting[0]["id"], run);
    assert_eq!(waiting[0]["step"], "decision.0");
    stop.cancel();
}
