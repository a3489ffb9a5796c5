//! `proxflow deadletters` and `proxflow deadletters replay` on a poisoned provision, against a
//! gateway, an orchestrator, a provisioner and the Proxmox simulator the test runs (a real
//! nats-server). The gateway knows the `gpu-node` profile, the provisioner does not (a profile
//! rolled out to one service's configuration and not yet to the other's): the provisioner refuses
//! to start the provision and dead-letters its advance, leaving the workflow pending. With the
//! provisioner restarted on the fixed configuration, one replay completes the workflow — one VM, one
//! record — and a second replay of the same letter is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cli.rs"]
mod cli;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cli::{assert_aligned, json_of, run, stdout_of, text};
use proxflow_platform::{Profile, Profiles};
use proxflow_provisioner::ProvisionConfig;
use proxflow_provisioner::join::JoinConfig;
use proxflow_pve::PveClient;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::config::{ConsumerConfig, Secret};
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::workflow::WorkflowState;
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ops-token-0123456789abcdef";

/// The seed's profiles and `gpu-node`.
fn with_gpu_node() -> Profiles {
    let mut profiles = Profiles::default();
    profiles.0.insert("gpu-node".into(), Profile::default());
    profiles
}

fn consumer() -> ConsumerConfig {
    ConsumerConfig {
        max_deliver: 3,
        retry_backoff: vec![Duration::from_millis(50)],
        ack_wait: Duration::from_secs(30),
        max_in_flight: 25,
    }
}

/// Runs a provisioner with `profiles` until its token is cancelled.
fn provisioner(
    ctx: &ServiceContext,
    pve: &PveClient,
    profiles: Profiles,
    file_sd: &std::path::Path,
) -> (CancellationToken, JoinHandle<()>) {
    let config = ProvisionConfig {
        profiles,
        join: JoinConfig {
            command: ["sh", "-c", "cat > /dev/null; echo joined {name} at {ip}"]
                .map(String::from)
                .to_vec(),
            timeout: Duration::from_secs(10),
        },
        file_sd: file_sd.join("k3s-nodes.json"),
        ip_timeout: Duration::from_secs(30),
        consumer: consumer(),
        ..ProvisionConfig::default()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (ctx, pve, stop) = (ctx.clone(), pve.clone(), stop.clone());
        async move {
            let settings = proxflow_provisioner::ProvisionerSettings { config, pve };
            proxflow_provisioner::run(ctx, settings, stop)
                .await
                .expect("the provisioner runs");
        }
    });
    (stop, task)
}

/// The VMs of the simulator named `name`.
fn vms_named(sim: &proxflow_pve_sim::RunningSim, name: &str) -> usize {
    let handle = sim.handle();
    handle
        .vm_ids()
        .into_iter()
        .filter(|v| handle.vm_config(*v).and_then(|c| c.get("name").cloned()) == Some(name.into()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_poisoned_provision_after_the_fix_completes_it_once() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("deadletters-cli").await.unwrap();
    let (sim, pve) = start_sim(|c| c.durations.agent_boot = Duration::from_millis(300))
        .await
        .expect("simulator");
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let secret = proxflow_gateway::webhook::generate_secret();
    tokio::spawn(proxflow_gateway::run(
        ctx.clone(),
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config: proxflow_gateway::GatewayConfig {
                webhook_secrets: vec![secret.clone()],
                bearer_tokens: BTreeMap::from([("ops".to_owned(), Secret::new(TOKEN))]),
                ..proxflow_gateway::GatewayConfig::default()
            },
            profiles: with_gpu_node(),
            listener,
            approvers: Vec::new(),
        },
        stop.clone(),
    ));
    tokio::spawn(proxflow_orchestrator::run(
        ctx.clone(),
        proxflow_orchestrator::Orchestration::new(consumer(), with_gpu_node()),
        stop.clone(),
    ));
    let file_sd = tempfile::tempdir().unwrap();
    // The provisioner's configuration lacks the profile.
    let (first, task) = provisioner(&ctx, &pve, Profiles::default(), file_sd.path());

    let env = [
        ("PROXFLOW_NATS__URL", nats.url()),
        (
            "PROXFLOW_GATEWAY__WEBHOOK_SECRETS",
            secret.expose().to_owned(),
        ),
    ];
    let none = stdout_of(&env, &["deadletters"]).await;
    assert!(none.contains("no dead letters"), "{none}");
    let asked = stdout_of(
        &env,
        &[
            "provision",
            "--name",
            "k3s-gpu",
            "--profile",
            "gpu-node",
            "--idempotency-key",
            "gpu-1",
            "--url",
            &base,
        ],
    )
    .await;
    let id = proxflow_gateway::api::workflow_id("gpu-1");
    assert!(asked.contains(&id), "{asked}");

    // The dead letter, as the operator sees it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let letter: Value = loop {
        let listed = json_of(&env, &["deadletters"]).await;
        if let Some(l) = listed.as_array().unwrap().first() {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        letter["letter"]["consumer"], "workflow-provision",
        "{letter:#}"
    );
    assert_eq!(letter["letter"]["reason"], "poison");
    assert_eq!(letter["letter"]["subject"], "pf.cmd.workflow.provision");
    let detail = letter["letter"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("unknown profile") && detail.contains("gpu-node"),
        "{detail}"
    );
    assert!(letter["replayed"].is_null(), "{letter:#}");
    let seq = letter["seq"].as_u64().expect("the letter's sequence");
    let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
    // Parked, not failed: the request waits for the fix.
    let (record, _) = store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.state, WorkflowState::Pending, "{record:#?}");
    assert_eq!(vms_named(&sim, "k3s-gpu"), 0);
    let filtered = json_of(
        &env,
        &["deadletters", "--consumer", "orchestrator-provision"],
    )
    .await;
    assert_eq!(filtered, serde_json::json!([]));
    let filtered = json_of(&env, &["deadletters", "--consumer", "workflow-provision"]).await;
    assert_eq!(filtered[0]["seq"], seq);
    let table = stdout_of(&env, &["deadletters"]).await;
    assert_aligned(&table);
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&seq.to_string())
            && row.contains("workflow-provision")
            && row.contains("poison"),
        "{table}"
    );

    // The configuration fixed, the provisioner restarted: one replay completes the workflow.
    first.cancel();
    task.await.unwrap();
    let (fixed, _task) = provisioner(&ctx, &pve, with_gpu_node(), file_sd.path());
    let replayed = stdout_of(&env, &["deadletters", "replay", &seq.to_string()]).await;
    assert!(
        replayed.contains(&format!("replayed dead letter {seq}"))
            && replayed.contains("pf.cmd.workflow.provision"),
        "{replayed}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let (record, _) = store.get(&id).await.unwrap().unwrap();
        if record.state.is_terminal() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the replayed provision never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    assert!(record.steps.iter().all(|s| s.attempts == 1), "{record:#?}");

    // A second replay of the same letter is refused, naming the first.
    let again = run(&env, &["deadletters", "replay", &seq.to_string()]).await;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stdout));
    let refusal = text(&again.stderr);
    assert!(
        refusal.contains(&format!("dead letter {seq} was already replayed"))
            && refusal.contains(" at "),
        "{refusal}"
    );
    let listed = json_of(&env, &["deadletters"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    assert!(listed[0]["replayed"]["at"].is_string(), "{listed:#}");
    assert!(
        listed[0]["replayed"]["by"]
            .as_str()
            .unwrap()
            .starts_with("cli"),
        "{listed:#}"
    );
    let table = stdout_of(&env, &["deadletters"]).await;
    assert!(
        table.lines().nth(1).unwrap().contains("replayed"),
        "{table}"
    );

    // Exactly once: one VM, one provision workflow.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(vms_named(&sim, "k3s-gpu"), 1);
    let provisions = json_of(&env, &["workflows", "--kind", "provision"]).await;
    assert_eq!(provisions.as_array().unwrap().len(), 1, "{provisions:#}");
    assert_eq!(provisions[0]["id"], id.as_str());
    assert_eq!(provisions[0]["state"], "succeeded");
    fixed.cancel();
    stop.cancel();
}
