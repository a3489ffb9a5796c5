//! `proxflow patch …` as an operator runs it, against a gateway, a patcher and the Proxmox simulator
//! the test runs (a real nats-server): a dry run is started and its plan read back, the runs are
//! listed, and decisions the gateway refuses exit non-zero with its reasons.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use proxflow_runtime::config::Secret;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::workflow::WorkflowState;
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use tokio_util::sync::CancellationToken;

const APPROVER: &str = "ops-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

/// The binary with only the `PROXFLOW_*` settings a test gives it.
fn proxflow(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxflow"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROXFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn")
        .env("PROXFLOW_GATEWAY__BEARER_TOKENS__OPS", APPROVER)
        .env("PROXFLOW_PATCH__APPROVERS", "[ops]")
        .args(args)
        .output()
        .expect("proxflow runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_is_started_listed_and_its_plan_printed_and_bad_decisions_are_refused() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("patch-cli").await.expect("ctx");
    let (sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(proxflow_gateway::run(
        ctx.clone(),
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config: proxflow_gateway::GatewayConfig {
                bearer_tokens: BTreeMap::from([
                    ("ops".to_owned(), Secret::new(APPROVER)),
                    ("viewer".to_owned(), Secret::new(VIEWER)),
                ]),
                ..proxflow_gateway::GatewayConfig::default()
            },
            profiles: proxflow_platform::Profiles::default(),
            listener,
            approvers: vec!["ops".into()],
        },
        stop.clone(),
    ));
    let mut config = proxflow_patcher::PatchConfig {
        enabled: false,
        ..proxflow_patcher::PatchConfig::default()
    };
    config.host.enabled = false;
    config.window = proxflow_patcher::window::WindowConfig::always_open();
    tokio::spawn(proxflow_patcher::run(
        ctx.clone(),
        proxflow_patcher::PatcherSettings {
            config,
            pve,
            replication: false,
        },
        stop.clone(),
    ));

    let started = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            proxflow(&[
                "patch",
                "run",
                "--dry-run",
                "--url",
                &base,
                "--token",
                VIEWER,
            ])
        }
    })
    .await
    .expect("join");
    assert!(started.status.success(), "{}", text(&started.stderr));
    let stdout = text(&started.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run     "))
        .unwrap_or_else(|| panic!("no run in {stdout}"))
        .to_string();
    assert!(id.starts_with("patch-dry-"), "{id}");
    let store = WorkflowStore::open(&ctx.bus.js).await.expect("store");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((r, _)) = store.get(&id).await.expect("read")
            && r.state.is_terminal()
        {
            assert_eq!(r.state, WorkflowState::Succeeded, "{:?}", r.error);
            break;
        }
        assert!(Instant::now() < deadline, "the dry run never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            proxflow(&args)
        })
    };
    let args = |words: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = words.iter().map(|w| (*w).to_string()).collect();
        v.extend(["--url".to_string(), base.clone()]);
        v
    };
    // The plan, as the operator reviews it: every seed VM with its security updates.
    let plan = run(args(&["patch", "plan", &id, "--token", VIEWER]))
        .await
        .expect("join");
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let plan = text(&plan.stdout);
    assert!(
        plan.contains(&format!("run       {id} (succeeded)")),
        "{plan}"
    );
    assert!(plan.contains("plan      "), "{plan}");
    for vm in [
        "vm/101 k3s-1 (agent) kernel 5.15.0-118-generic, reboot",
        "vm/102 k3s-2",
        "vm/103 k3s-3",
    ] {
        assert!(plan.contains(vm), "{vm} in\n{plan}");
    }
    assert!(
        plan.lines().any(|l| l.contains("openssl")
            && l.contains("3.0.2-0ubuntu1.15 -> 3.0.2-0ubuntu1.16")
            && l.contains("[security]")),
        "{plan}"
    );
    // Nothing was changed: a dry run.
    assert!(!plan.contains("done      "), "{plan}");
    let state: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/_sim/state", sim.base_url()))
        .header(
            "Authorization",
            format!("PVEAPIToken={}={}", sim.token_id(), sim.token_secret()),
        )
        .send()
        .await
        .expect("sim state")
        .json()
        .await
        .expect("json");
    let with_packages: Vec<&serde_json::Value> = state["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter(|vm| vm["packages"].is_object())
        .collect();
    assert!(
        with_packages.len() >= 3,
        "the seed's VMs have package state: {state}"
    );
    for vm in with_packages {
        assert_eq!(vm["packages"]["upgrades"], 0, "{vm}");
    }
    let status = run(args(&["patch", "status", "--token", VIEWER]))
        .await
        .expect("join");
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(
        text(&status.stdout).contains(&format!("{id:<32} succeeded")),
        "{}",
        text(&status.stdout)
    );
    // Decisions: the run does not wait for one (409 on `run`); a viewer may not decide (403); an
    // unknown --as is a configuration error (exit 78).
    let approve = run(args(&[
        "patch",
        "approve",
        &id,
        "--plan",
        "0123456789abcdef",
    ]))
    .await
    .expect("join");
    assert!(!approve.status.success());
    assert!(
        text(&approve.stderr).contains("409")
            && text(&approve.stderr).contains("not waiting for a decision"),
        "{}",
        text(&approve.stderr)
    );
    let viewer = run(args(&[
        "patch",
        "reject",
        &id,
        "--plan",
        "0123456789abcdef",
        "--token",
        VIEWER,
    ]))
    .await
    .expect("join");
    assert!(
        text(&viewer.stderr).contains("403"),
        "{}",
        text(&viewer.stderr)
    );
    let nobody = run(args(&[
        "patch",
        "approve",
        &id,
        "--plan",
        "0123456789abcdef",
        "--as",
        "nobody",
    ]))
    .await
    .expect("join");
    assert_eq!(nobody.status.code(), Some(78), "{}", text(&nobody.stderr));
    assert!(text(&nobody.stderr).contains("gateway.bearer_tokens.nobody"));
    stop.cancel();
}
