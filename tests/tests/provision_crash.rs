//! The provisioner process killed (`kill -9`) in the middle of a step: another instance picks the
//! command up after its ack wait and finishes the workflow from the record, with exactly one VM.
//! Task durations run in real time here (clone 2 s, start 1 s) so there is a "middle" to kill in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use proxflow_e2e::{provision_request, provisioner_config, test_consumer};
use proxflow_pve_sim::RunningSim;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::names::bucket;
use proxflow_schemas::workflow::WorkflowState;
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use tokio_util::sync::CancellationToken;

const ACK_WAIT: Duration = Duration::from_secs(2);
const NAME: &str = "crash-vm";

fn spawn_provisioner(nats: &TestNats, sim: &RunningSim, file_sd: &std::path::Path) -> Child {
    spawn_provisioner_joining(nats, sim, file_sd, None)
}

fn spawn_provisioner_joining(
    nats: &TestNats,
    sim: &RunningSim,
    file_sd: &std::path::Path,
    join: Option<&str>,
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pf-test-provisioner"));
    if let Some(script) = join {
        command.env("PF_JOIN_SCRIPT", script);
    }
    command
        .env("PF_NATS_URL", nats.url())
        .env("PF_PVE_URL", sim.base_url())
        .env("PF_PVE_TOKEN_ID", sim.token_id())
        .env("PF_PVE_SECRET", sim.token_secret())
        .env("PF_FILE_SD", file_sd)
        .env("PF_ACK_WAIT_MS", ACK_WAIT.as_millis().to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pf-test-provisioner starts")
}

/// Polls `probe` every 10 ms until it holds, or fails naming `what`.
async fn until(what: &str, limit: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn killed_during(phase: &str) {
    let mut nats = TestNats::start().expect("nats-server");
    let (sim, client) = start_sim(|c| {
        c.time_scale = 1.0;
        c.durations.agent_boot = Duration::from_millis(200);
    })
    .await
    .expect("simulator");
    let ctx = nats.context("crash-test").await.expect("context");
    let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
    let file_sd = tempfile::tempdir().unwrap();
    let sd_path = file_sd.path().join("k3s-nodes.json");
    let stop = CancellationToken::new();
    tokio::spawn(proxflow_orchestrator::run(
        ctx.clone(),
        proxflow_orchestrator::Orchestration::new(
            test_consumer(ACK_WAIT),
            proxflow_platform::Profiles::default(),
        ),
        stop.clone(),
    ));
    let mut first = spawn_provisioner(&nats, &sim, &sd_path);

    let workflow_id = format!("prov-crash-{phase}");
    let mut request = provision_request(&workflow_id, NAME);
    request.idempotency_key = format!("crash-{phase}");
    ctx.bus
        .publisher
        .publish(&request)
        .await
        .expect("published");

    let handle = sim.handle();
    let ours = |h: &proxflow_pve_sim::SimHandle| {
        h.vm_ids()
            .into_iter()
            .filter(|v| {
                h.vm_config(*v)
                    .and_then(|c| c.get("name").cloned())
                    .as_deref()
                    == Some(NAME)
            })
            .collect::<Vec<u32>>()
    };
    match phase {
        "clone" => {
            until("the clone", Duration::from_secs(30), || {
                ours(&handle).iter().any(|v| {
                    handle
                        .vm_config(*v)
                        .and_then(|c| c.get("lock").cloned())
                        .as_deref()
                        == Some("clone")
                })
            })
            .await
        }
        _ => {
            until("the start", Duration::from_secs(30), || {
                handle.journal().iter().any(|e| {
                    e.method == "POST" && e.path.ends_with("/status/start") && e.status == 200
                })
            })
            .await
        }
    }
    first.kill().expect("kill -9");
    first.wait().expect("reaped");

    // A second instance takes over once the first one's delivery times out and its workflow lease
    // goes stale (3 minutes in service; this instance judges staleness after 3 s).
    let mut taking_over = ctx.clone();
    taking_over.leases = ctx.leases.clone().with_stale_after(Duration::from_secs(3));
    let second = tokio::spawn(proxflow_provisioner::run(
        taking_over,
        proxflow_provisioner::ProvisionerSettings {
            config: provisioner_config(sd_path.clone(), ACK_WAIT),
            pve: client,
        },
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        if let Some((r, _)) = store.get(&workflow_id).await.unwrap()
            && r.state.is_terminal()
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "workflow did not finish after the crash"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    let vms = ours(&handle);
    assert_eq!(vms.len(), 1, "exactly one VM named {NAME}: {vms:?}");
    assert_eq!(Some(u64::from(vms[0])), record.data["vmid"].as_u64());
    let step = record.steps.iter().find(|s| s.name == phase).unwrap();
    assert!(
        step.attempts >= 2,
        "the {phase} step ran again after the crash: {step:?}"
    );
    let kv = ctx.bus.js.get_key_value(bucket::VMIDS).await.unwrap();
    let left: Vec<String> = kv
        .keys()
        .await
        .unwrap()
        .filter_map(|k| async { k.ok() })
        .collect()
        .await;
    assert!(left.is_empty(), "reservations left: {left:?}");
    stop.cancel();
    let _ = second.await;
    nats.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_clone_the_workflow_completes_with_one_vm() {
    killed_during("clone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_start_the_workflow_completes_with_one_vm() {
    killed_during("start").await;
}

/// Alive and not a zombie (a container's init may not reap orphans).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_join_its_commands_die_with_it() {
    let nats = TestNats::start().expect("nats-server");
    let (sim, _client) = start_sim(|c| c.durations.agent_boot = Duration::from_millis(200))
        .await
        .expect("simulator");
    let ctx = nats.context("orphans").await.expect("context");
    let file_sd = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxflow_orchestrator::run(
        ctx.clone(),
        proxflow_orchestrator::Orchestration::new(
            test_consumer(ACK_WAIT),
            proxflow_platform::Profiles::default(),
        ),
        stop.clone(),
    ));
    // The join shell starts a child of its own (as ansible-playbook starts ssh), and both wait.
    let child = pids.path().join("child");
    let grandchild = pids.path().join("grandchild");
    let script = format!(
        "cat > /dev/null; sh -c 'echo $$ > {g}; exec sleep 600' & echo $$ > {c}; wait",
        g = grandchild.display(),
        c = child.display()
    );
    let mut provisioner = spawn_provisioner_joining(
        &nats,
        &sim,
        &file_sd.path().join("k3s-nodes.json"),
        Some(&script),
    );
    let request = provision_request("prov-orphans", "orphans");
    ctx.bus
        .publisher
        .publish(&request)
        .await
        .expect("published");
    until("the join's commands", Duration::from_secs(60), || {
        let written = |p: &std::path::Path| {
            std::fs::read_to_string(p).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
        };
        written(&child) && written(&grandchild)
    })
    .await;
    let started: Vec<String> = [&child, &grandchild]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().trim().to_owned())
        .collect();
    assert!(started.iter().all(|pid| alive(pid)));
    provisioner.kill().expect("kill -9");
    provisioner.wait().expect("reaped");
    until("the join's commands to die", Duration::from_secs(5), || {
        started.iter().all(|pid| !alive(pid))
    })
    .await;
    stop.cancel();
}
