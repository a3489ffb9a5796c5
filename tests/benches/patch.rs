//! `just bench`: patching. (1) A run over the seed (3 k3s VMs + the host) with the simulator's real
//! task durations (`time_scale` 1: upgrade 20 s, VM reboot 2 s, agent boot 5 s, host reboot 60 s) and
//! a 5 s drain: makespan ÷ the sum of the unavoidable waits (drains, upgrades, reboots, boots, the
//! host's shutdown/reboot/start) — the target is ≤ 1.2. (2) Scan + plan + classify of a 200-VM
//! scenario (the seed's template cloned 200 times and tagged, tasks at once), in ms: the `scan.0`
//! step of a dry run.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/support/patching.rs"]
mod rig;
#[path = "../tests/support/zfs.rs"]
mod zfs_fixture;

use std::time::{Duration, Instant};

use proxflow_pve::{CloneSpec, ConfigChange};
use proxflow_schemas::workflow::{WorkflowRecord, WorkflowState};
use rig::Rig;

/// Seconds a step of `record` took.
fn seconds(record: &WorkflowRecord, name: &str) -> f64 {
    record
        .steps
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| Some((s.finished_at? - s.started_at?).num_milliseconds()))
        .map_or(0.0, |ms| ms as f64 / 1000.0)
}

async fn makespan() {
    let mut rig = Rig::start_with("bench-makespan", |c| c.time_scale = 1.0, false).await;
    rig.set_drain_ms(5000);
    let mut config = rig.config();
    rig::always_open(&mut config);
    // Real durations: the host is down a minute, a VM's agent takes 5 s after its start.
    config.host.reboot_timeout = Duration::from_secs(300);
    config.ready_timeout = Duration::from_secs(120);
    rig.start_patcher(config);
    let started = Instant::now();
    let id = rig.start_run(false).await;
    let record = rig
        .until(&id, Duration::from_secs(900), "ended", |r| {
            r.state.is_terminal()
        })
        .await;
    let makespan = started.elapsed().as_secs_f64();
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    let mut waits = 0.0;
    for step in &record.steps {
        let unavoidable = [
            ".drain",
            ".upgrade",
            ".reboot",
            ".ready",
            ".guests_down",
            ".up",
            ".guests_up",
        ]
        .iter()
        .any(|suffix| step.name.ends_with(suffix));
        if unavoidable {
            waits += seconds(&record, &step.name);
        }
    }
    println!(
        "patch run over the seed (3 VMs + host, real durations): makespan {makespan:.1} s, \
         unavoidable waits {waits:.1} s, ratio {:.3} (target <= 1.2)",
        makespan / waits
    );
}

async fn scan_200() {
    let mut rig = Rig::start_with(
        "bench-scan",
        |c| {
            c.time_scale = 0.0;
            c.durations.agent_boot = Duration::ZERO;
        },
        false,
    )
    .await;
    // Linked clones of the template (full clones of a 40 GiB VM would fill the simulated pool),
    // tagged as k3s nodes and started.
    for i in 0..200u32 {
        let vmid = 1000 + i;
        let spec = CloneSpec {
            newid: vmid,
            name: Some(format!("k3s-b{i}")),
            ..CloneSpec::default()
        };
        let upid = rig.pve.clone_vm(9000, &spec).await.unwrap();
        rig.pve.wait_task(&upid, None).await.unwrap();
        let mut change = ConfigChange::default();
        change.set.insert("tags".into(), "k3s;k8s-node".into());
        rig.pve.update_config(vmid, &change).await.unwrap();
        let upid = rig.pve.start_vm(vmid).await.unwrap();
        rig.pve.wait_task(&upid, None).await.unwrap();
    }
    let mut config = rig.config();
    config.host.enabled = false;
    rig::always_open(&mut config);
    rig.start_patcher(config);
    let started = Instant::now();
    let id = rig.start_run(true).await;
    let record = rig.until_ended(&id).await;
    let whole = started.elapsed();
    let plan = &record.data["plan"]["targets"];
    println!(
        "scan + plan + classify, 203 VMs (200 clones + the seed's 3), 16 at a time: {:.0} ms \
         ({} targets planned; the dry run start to end {:.0} ms)",
        seconds(&record, "scan.0") * 1000.0,
        plan.as_array().map_or(0, Vec::len),
        whole.as_secs_f64() * 1000.0
    );
}

fn main() {
    proxflow_e2e::bench_main(|| async {
        scan_200().await;
        makespan().await;
    });
}
