//! kill -9 of the patcher during a VM's reboot and during the host's reboot: the run resumes in a
//! second instance, nothing is upgraded or rebooted twice, and every node it cordoned ends
//! uncordoned. (Real nats-server, the Proxmox simulator, zfs-fuse; MOCK kubectl and MOCK ssh.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/patching.rs"]
mod rig;
#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proxflow_patcher::PatchConfig;
use proxflow_runtime::clock;
use proxflow_schemas::workflow::WorkflowState;
use rig::Rig;
use serde_json::json;

fn spawn_patcher(rig: &Rig, config: &PatchConfig) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pf-test-patcher"))
        .env("PF_NATS_URL", rig.nats.url())
        .env("PF_PVE_URL", rig.sim.base_url())
        .env("PF_PVE_TOKEN_ID", rig.sim.token_id())
        .env("PF_PVE_SECRET", rig.sim.token_secret())
        .env("PF_PATCH_CONFIG", serde_json::to_string(config).unwrap())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pf-test-patcher starts")
}

async fn killed_during(what: &str) {
    let rig = Rig::start_with(&format!("crash-{what}"), |c| c.time_scale = 0.2, false).await;
    // The child runs on the wall clock: a window that is always open.
    let mut config = rig.config();
    rig::always_open(&mut config);
    // A delivery the killed instance held comes back to the next one after 2 s.
    config.consumer = proxflow_e2e::test_consumer(Duration::from_secs(2));
    let mut first = spawn_patcher(&rig, &config);
    let id = rig.start_run(false).await;
    let sim = rig.sim.handle();
    let marker = match what {
        "vm" => "/qemu/102/status/reboot",
        _ => "/nodes/pve1/status",
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sim
        .journal()
        .iter()
        .any(|e| e.method == "POST" && e.path.ends_with(marker) && e.status == 200)
    {
        assert!(
            Instant::now() < deadline,
            "no reboot request ({marker}) seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    // A second instance takes over once the first one's workflow lease goes stale (3 minutes in
    // service; this instance judges staleness after 3 s).
    let mut taking_over = rig.ctx.clone().with_clock(clock::system());
    taking_over.leases = taking_over
        .leases
        .clone()
        .with_stale_after(Duration::from_secs(3));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(proxflow_patcher::run(
        taking_over,
        proxflow_patcher::PatcherSettings {
            config,
            pve: rig.pve.clone(),
            replication: false,
        },
        stop.clone(),
    ));
    let record = rig.until_ended(&id).await;
    stop.cancel();
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    let state = rig.sim_state().await;
    for vmid in [101, 102, 103] {
        let vm = state["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vmid"] == json!(vmid))
            .cloned()
            .unwrap();
        assert_eq!(
            vm["packages"]["upgrades"],
            json!(1),
            "VM {vmid} upgraded once"
        );
        let reboots = vm["packages"]["reboots"].as_u64().unwrap();
        // One for its own reboot (if its updates asked for one), one for the host's.
        assert!(reboots <= 2, "VM {vmid} rebooted {reboots} times");
    }
    assert_eq!(state["host"]["reboots"], json!(1), "the host rebooted once");
    assert_eq!(state["host"]["upgrades"], json!(1));
    let reboot_requests = sim
        .journal()
        .iter()
        .filter(|e| e.method == "POST" && e.path.ends_with(marker))
        .count();
    assert_eq!(reboot_requests, 1, "{marker} asked once");
    let kube = rig.kube_state();
    for node in ["k3s-1", "k3s-2", "k3s-3"] {
        assert_eq!(
            kube["nodes"][node]["unschedulable"],
            json!(false),
            "{node} uncordoned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_vm_reboot_the_run_resumes_without_repeating_anything() {
    killed_during("vm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_host_reboot_the_run_resumes_without_repeating_anything() {
    killed_during("host").await;
}
