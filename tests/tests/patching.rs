//! Patching end to end (real nats-server, the Proxmox simulator, a real Alertmanager, zfs-fuse for
//! the host's root dataset; MOCK kubectl and MOCK ssh, see `support/patching.rs`): the weekly run,
//! one node at a time with the host last; gates; a hand-cordoned node; approvals; failures; the
//! window's end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/patching.rs"]
mod rig;
#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::time::Duration;

use proxflow_patcher::config::{HostReboot, OnFailure};
use proxflow_schemas::patch::{PatchEventKind, PatchPlan};
use proxflow_schemas::workflow::WorkflowState;
use rig::{APPROVER, Rig, VIEWER, at, steps};
use serde_json::{Value, json};

fn plan(record: &proxflow_schemas::workflow::WorkflowRecord) -> PatchPlan {
    serde_json::from_value(record.data["plan"].clone()).expect("a plan in the record")
}

fn vm_state(state: &Value, vmid: u32) -> Value {
    let vms = state["vms"].as_array().cloned().unwrap_or_default();
    vms.into_iter()
        .find(|v| v["vmid"] == json!(vmid))
        .unwrap_or_else(|| panic!("VM {vmid} in the simulator's state: {state}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weekly_run_patches_each_vm_one_at_a_time_and_the_host_last() {
    let mut rig = Rig::start("weekly").await;
    let mut config = rig.config();
    // The schedule starts the run: the clock is inside Sunday's window.
    config.enabled = true;
    rig.start_patcher(config);
    let id = "patch-20261206T0200Z";
    let record = rig.until_ended(id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    let plan = plan(&record);
    let vms: Vec<_> = plan.targets.iter().filter(|t| t.vmid.is_some()).collect();
    assert_eq!(
        vms.len(),
        3,
        "the seed's three k3s VMs have security updates"
    );
    assert_eq!(
        plan.targets.last().map(|t| t.target.as_str()),
        Some("host/pve1"),
        "the host is last in the plan"
    );
    // Per VM, in this order, and each VM finished before the next began.
    let mut previous_end = 0;
    for t in &vms {
        let k = format!("0.{}", t.target);
        let order = [
            "snapshot", "cordon", "drain", "upgrade", "ready", "uncordon", "verify",
        ]
        .map(|s| at(&record, &format!("{k}.{s}")));
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{k}: {order:?}");
        assert!(
            order[0] > previous_end,
            "{k} began before the previous VM ended"
        );
        previous_end = order[6];
        if t.reboot {
            let reboot = at(&record, &format!("{k}.reboot"));
            assert!(
                order[3] < reboot && reboot < order[4],
                "{k}: reboot between upgrade and ready"
            );
        }
    }
    let host = at(&record, "0.host/pve1.upgrade");
    assert!(
        host > previous_end,
        "the host's upgrade came after every VM"
    );
    // The simulator saw each VM upgraded exactly once, the host rebooted once into its new kernel.
    let state = rig.sim_state().await;
    for t in &vms {
        let vm = vm_state(&state, t.vmid.unwrap());
        assert_eq!(vm["packages"]["upgrades"], json!(1), "{}", t.target);
        assert_eq!(
            vm["packages"]["reboot_required"],
            json!(false),
            "{}",
            t.target
        );
        for c in &t.changes {
            assert_eq!(
                vm["packages"]["installed"][&c.package].as_str(),
                c.to.as_deref(),
                "{} {}",
                t.target,
                c.package
            );
        }
        assert_eq!(vm["status"], json!("running"), "{}", t.target);
    }
    assert_eq!(state["host"]["reboots"], json!(1));
    assert_eq!(state["host"]["upgrades"], json!(1));
    assert_eq!(state["host"]["reboot_required"], json!(false));
    assert_eq!(
        state["host"]["kernel_running"],
        state["host"]["kernel_installed"]
    );
    // Every node ends schedulable and without proxflow's marker; the host's dataset was snapshotted.
    let kube = rig.kube_state();
    for node in ["k3s-1", "k3s-2", "k3s-3"] {
        assert_eq!(kube["nodes"][node]["unschedulable"], json!(false), "{node}");
        assert!(
            kube["nodes"][node]["annotations"]
                .as_object()
                .is_none_or(|a| a.is_empty()),
            "{node}: {kube}"
        );
    }
    let log: Vec<String> = serde_json::from_value(kube["log"].clone()).unwrap();
    let cordons: Vec<&String> = log.iter().filter(|l| l.starts_with("cordon ")).collect();
    assert_eq!(cordons, ["cordon k3s-1", "cordon k3s-2", "cordon k3s-3"]);
    assert!(
        rig.zfs
            .names(&rig.zfs.source)
            .iter()
            .any(|n| n.starts_with("pf-pre-")),
        "the host's root dataset got its pre-change snapshot"
    );
    let report = &record.data["report"]["nodes"];
    assert_eq!(report.as_array().map(Vec::len), Some(4), "{report}");
    let metrics = rig.ctx.metrics.encode();
    for line in [
        "pending_updates{target=\"vm/101\",kind=\"security\"}",
        "reboot_required{target=\"host/pve1\"}",
        "proxflow_last_successful_run_timestamp ",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let events = rig.events(id).await;
    assert!(events.iter().any(|e| e.kind == PatchEventKind::Finished));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == PatchEventKind::NodeDone)
            .count(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_blocks_a_silenced_one_does_not_and_one_firing_mid_run_pauses_it() {
    let mut rig = Rig::start("gates").await;
    // Drains take 2 s: the mid-run alert below fires while the first VM drains, well before the
    // second VM's gates are looked at, however loaded the machine.
    rig.set_drain_ms(2000);
    let mut config = rig.config();
    config.host.enabled = false;
    rig.start_patcher(config);
    rig.fire("NodeDown", "critical").await;
    let id = rig.start_run(false).await;
    let record = rig
        .until(&id, Duration::from_secs(60), "paused on the alert", |r| {
            r.data["paused"]
                .as_str()
                .is_some_and(|p| p.contains("alert NodeDown is firing"))
        })
        .await;
    assert!(
        steps(&record, "0.vm/")
            .iter()
            .all(|s| s.contains(".window.") || s.contains(".gate."))
    );
    let cordons = rig.kube_state()["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c.as_str().is_some_and(|c| c.starts_with("cordon")))
        .count();
    assert_eq!(cordons, 0, "nothing cordoned while the gate is closed");
    // Silenced, the same alert no longer closes the gate: the next look (a recheck later) passes.
    rig.silence("NodeDown").await;
    rig.clock.advance(Duration::from_secs(61));
    // Another alert fires while the first VM is being drained: the run stops before the next node
    // and says why.
    rig.until(&id, Duration::from_secs(60), "draining the first VM", |r| {
        r.steps.iter().any(|s| s.name == "0.vm/101.drain")
    })
    .await;
    rig.fire("DiskFailing", "critical").await;
    let paused = rig
        .until(&id, Duration::from_secs(60), "paused mid-run", |r| {
            r.data["paused"]
                .as_str()
                .is_some_and(|p| p.contains("DiskFailing"))
                || r.state.is_terminal()
        })
        .await;
    assert!(
        !paused.state.is_terminal(),
        "it should have waited: {:?}",
        paused.error
    );
    assert!(
        paused.steps.iter().any(|s| s.name == "0.vm/101.verify"),
        "the first VM was finished"
    );
    assert!(
        !paused.steps.iter().any(|s| s.name == "0.vm/102.snapshot"),
        "the second not begun"
    );
    let touched = |r: &proxflow_schemas::workflow::WorkflowRecord| {
        r.steps
            .iter()
            .filter(|s| s.name.ends_with(".cordon"))
            .count()
    };
    let before = touched(&paused);
    rig.resolve("DiskFailing", "critical").await;
    rig.clock.advance(Duration::from_secs(61));
    let record = rig.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    assert!(
        touched(&record) > before,
        "it resumed after the alert resolved"
    );
    let events = rig.events(&id).await;
    assert!(
        events
            .iter()
            .filter(|e| e.kind == PatchEventKind::GateClosed)
            .count()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cordoned_by_hand_stays_cordoned_and_is_skipped_with_the_reason() {
    let mut rig = Rig::start("byhand").await;
    rig.write_kube(json!({"nodes": {
        "k3s-1": {}, "k3s-2": {"unschedulable": true}, "k3s-3": {}
    }}));
    let mut config = rig.config();
    config.host.enabled = false;
    rig.start_patcher(config);
    let id = rig.start_run(false).await;
    let record = rig.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    let skipped = &record.data["report"]["skipped"];
    assert!(
        skipped.to_string().contains("vm/102") && skipped.to_string().contains("cordoned by hand"),
        "{skipped}"
    );
    let kube = rig.kube_state();
    assert_eq!(
        kube["nodes"]["k3s-2"]["unschedulable"],
        json!(true),
        "left cordoned"
    );
    let log: Vec<String> = serde_json::from_value(kube["log"].clone()).unwrap();
    assert!(
        !log.iter()
            .any(|l| l.contains("k3s-2") && !l.starts_with("get ")),
        "{log:?}"
    );
    let state = rig.sim_state().await;
    assert_eq!(vm_state(&state, 102)["packages"]["upgrades"], json!(0));
    assert_eq!(vm_state(&state, 101)["packages"]["upgrades"], json!(1));
    assert_eq!(vm_state(&state, 103)["packages"]["upgrades"], json!(1));
    assert!(
        rig.events(&id)
            .await
            .iter()
            .any(|e| e.kind == PatchEventKind::Skipped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_series_change_waits_for_an_approval_of_exactly_its_plan() {
    let mut rig = Rig::start("approve").await;
    let hwe = rig::kernel_series_update();
    rig.set_updates(103, hwe).await;
    let mut config = rig.config();
    config.host.enabled = false;
    config.host_reboot = HostReboot::Approve;
    rig.start_patcher(config);
    let id = rig.start_run(false).await;
    let waiting = rig.until_awaiting(&id).await;
    let first = plan(&waiting);
    let hash = first.approval_hash.clone().expect("an approval hash");
    // The minor VMs were patched in the window meanwhile; the major one waits untouched.
    let state = rig.sim_state().await;
    assert_eq!(vm_state(&state, 101)["packages"]["upgrades"], json!(1));
    assert_eq!(vm_state(&state, 103)["packages"]["upgrades"], json!(0));
    // Refused: a token that is not an approver, a wrong hash.
    let (status, _) = rig.decide(VIEWER, &id, "approve", &hash).await;
    assert_eq!(status, 403);
    let (status, body) = rig
        .decide(APPROVER, &id, "approve", "0123456789abcdef")
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["errors"]["plan"]
            .as_str()
            .unwrap()
            .contains(&hash[..12]),
        "{body}"
    );
    // The plan changes after it was approved: the run resumes at the next window, scans again,
    // finds a new package and voids the approval.
    rig.clock.set("2026-12-06T06:00:00Z".parse().unwrap());
    let (status, body) = rig.decide(APPROVER, &id, "approve", &hash).await;
    assert_eq!(status, 202, "{body}");
    rig.set_updates(
        103,
        {
            let mut updates = rig::kernel_series_update();
            updates.as_array_mut().unwrap().push(
                json!({"package": "openssl", "version": "3.0.2-0ubuntu1.99", "archive": "jammy-security"}),
            );
            updates
        },
    )
    .await;
    rig.clock.set("2026-12-13T02:00:00Z".parse().unwrap());
    let again = rig
        .until(&id, Duration::from_secs(60), "asking again", |r| {
            r.data["awaiting"]["signal"] == json!("decision.1")
        })
        .await;
    let second = plan(&again).approval_hash.expect("a new approval hash");
    assert_ne!(second, hash);
    let events = rig.events(&id).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == PatchEventKind::ApprovalVoid && e.detail.contains("plan changed"))
    );
    // The old hash is refused now, the new one proceeds.
    let (status, _) = rig.decide(APPROVER, &id, "approve", &hash).await;
    assert_eq!(status, 409);
    let (status, body) = rig.decide(APPROVER, &id, "approve", &second).await;
    assert_eq!(status, 202, "{body}");
    let record = rig.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    let state = rig.sim_state().await;
    let vm = vm_state(&state, 103);
    assert_eq!(vm["packages"]["kernel_running"], json!("6.5.0-41-generic"));
    let approver = record.data["report"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["target"] == json!("vm/103"))
        .map(|n| n["approver"].clone());
    assert_eq!(approver, Some(json!("ops")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_that_expired_is_refused() {
    let mut rig = Rig::start("expire").await;
    rig.set_updates(
        101,
        json!([{"package": "base-files", "version": "13ubuntu10", "archive": "jammy-security"}]),
    )
    .await;
    let mut config = rig.config();
    config.host.enabled = false;
    rig.start_patcher(config);
    let id = rig.start_run(false).await;
    let waiting = rig.until_awaiting(&id).await;
    let hash = plan(&waiting).approval_hash.unwrap();
    // Past the end of the next window (next Sunday's, 05:00): the decision closed.
    rig.clock.set("2026-12-13T05:00:01Z".parse().unwrap());
    let (status, body) = rig.decide(APPROVER, &id, "approve", &hash).await;
    assert_eq!(status, 409, "{body}");
    let record = rig.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded);
    assert!(
        record.data["report"]["deferred"]
            .to_string()
            .contains("vm/101")
    );
    assert_eq!(
        vm_state(&rig.sim_state().await, 101)["packages"]["upgrades"],
        json!(0)
    );
}

async fn failing_second_vm(
    on_failure: OnFailure,
) -> (Rig, proxflow_schemas::workflow::WorkflowRecord) {
    let mut rig = Rig::start(match on_failure {
        OnFailure::Stop => "failstop",
        OnFailure::Rollback => "failroll",
    })
    .await;
    rig.set_updates(
        102,
        json!([
            {"package": "libssl3", "version": "3.0.2-0ubuntu1.16", "archive": "jammy-security"},
            {"package": "openssl", "version": "3.0.2-0ubuntu1.16", "archive": "jammy-security", "fail": true}
        ]),
    )
    .await;
    let mut config = rig.config();
    config.on_failure = on_failure;
    rig.start_patcher(config);
    let id = rig.start_run(false).await;
    let record = rig.until_ended(&id).await;
    (rig, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_failing_on_the_second_vm_stops_the_run_pages_and_leaves_the_third_untouched() {
    let (rig, record) = failing_second_vm(OnFailure::Stop).await;
    assert_eq!(record.state, WorkflowState::Failed);
    assert!(
        record
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("vm/102"),
        "{:?}",
        record.error
    );
    let state = rig.sim_state().await;
    assert_eq!(vm_state(&state, 101)["packages"]["upgrades"], json!(1));
    assert_eq!(vm_state(&state, 103)["packages"]["upgrades"], json!(0));
    assert_eq!(state["host"]["upgrades"], json!(0));
    // Left as the failure left it: libssl3 went through before openssl failed.
    assert_eq!(
        vm_state(&state, 102)["packages"]["installed"]["libssl3"],
        json!("3.0.2-0ubuntu1.16")
    );
    let kube = rig.kube_state();
    assert_eq!(kube["nodes"]["k3s-2"]["unschedulable"], json!(true));
    assert!(
        kube["nodes"]["k3s-2"]["annotations"]["proxflow.io/patch-failed"]
            .as_str()
            .is_some()
    );
    assert_eq!(kube["nodes"]["k3s-3"]["unschedulable"], json!(false));
    let events = rig.events(&record.id).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == PatchEventKind::Page && e.target.as_deref() == Some("vm/102"))
    );
    let metrics = rig.ctx.metrics.encode();
    assert!(
        metrics.contains("proxflow_patch_node_failures_total{target=\"vm/102\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rollback_the_failed_vm_is_back_on_its_snapshot_and_uncordoned() {
    let (rig, record) = failing_second_vm(OnFailure::Rollback).await;
    assert_eq!(record.state, WorkflowState::Failed);
    let state = rig.sim_state().await;
    let vm = vm_state(&state, 102);
    assert_eq!(vm["status"], json!("running"));
    assert_eq!(
        vm["packages"]["installed"]["openssl"],
        json!("3.0.2-0ubuntu1.15"),
        "back on the snapshot's packages"
    );
    let kube = rig.kube_state();
    assert_eq!(kube["nodes"]["k3s-2"]["unschedulable"], json!(false));
    assert_eq!(vm_state(&state, 103)["packages"]["upgrades"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reaching_the_windows_end_pauses_between_nodes_and_resumes_in_the_next_window() {
    let mut rig = Rig::start("window").await;
    // Drains take 2 s: the clock moves past the window's end while the first VM drains.
    rig.set_drain_ms(2000);
    let mut config = rig.config();
    config.host.enabled = false;
    rig.start_patcher(config);
    let id = rig.start_run(false).await;
    rig.until(&id, Duration::from_secs(60), "draining the first VM", |r| {
        r.steps.iter().any(|s| s.name == "0.vm/101.drain")
    })
    .await;
    // The window closes while the first VM is being patched: it is finished, then the run waits.
    rig.clock.set("2026-12-06T05:00:00Z".parse().unwrap());
    let paused = rig
        .until(
            &id,
            Duration::from_secs(60),
            "paused at the window's end",
            |r| {
                r.state == WorkflowState::Waiting
                    && r.data["paused"]
                        .as_str()
                        .is_some_and(|p| p.contains("window is closed"))
            },
        )
        .await;
    assert!(
        paused.steps.iter().any(|s| s.name == "0.vm/101.verify"),
        "the first VM was finished"
    );
    assert!(!paused.steps.iter().any(|s| s.name == "0.vm/102.snapshot"));
    // Next Sunday's window opens: it goes on.
    rig.clock.set("2026-12-13T02:00:00Z".parse().unwrap());
    let record = rig.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    assert!(
        rig.events(&id)
            .await
            .iter()
            .any(|e| e.kind == PatchEventKind::Paused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_holds_the_packages_until_a_newer_version_replaces_them() {
    let mut rig = Rig::start("reject").await;
    let release =
        |v: &str| json!([{"package": "base-files", "version": v, "archive": "jammy-security"}]);
    rig.set_updates(101, release("13ubuntu10")).await;
    let mut config = rig.config();
    config.host.enabled = false;
    rig.start_patcher(config);
    let first = rig.start_run(false).await;
    let waiting = rig.until_awaiting(&first).await;
    let hash = plan(&waiting).approval_hash.unwrap();
    let (status, body) = rig.decide(APPROVER, &first, "reject", &hash).await;
    assert_eq!(status, 202, "{body}");
    let record = rig.until_ended(&first).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    assert!(
        record.data["report"]["deferred"]
            .to_string()
            .contains("rejected by ops")
    );
    let vm = vm_state(&rig.sim_state().await, 101);
    assert!(
        vm["packages"]["held"].to_string().contains("base-files"),
        "{vm}"
    );
    assert!(
        rig.events(&first)
            .await
            .iter()
            .any(|e| e.kind == PatchEventKind::Rejected)
    );
    // The rejected version is not offered again...
    let second = rig.start_run(false).await;
    let record = rig.until_ended(&second).await;
    assert_eq!(record.state, WorkflowState::Succeeded);
    let planned = plan(&record);
    assert!(planned.approval_hash.is_none(), "{planned:?}");
    assert!(
        !planned
            .targets
            .iter()
            .any(|t| t.changes.iter().any(|c| c.package == "base-files"))
    );
    // ...a newer one is, and asks for a decision again.
    rig.set_updates(101, release("13ubuntu11")).await;
    let third = rig.start_run(false).await;
    let waiting = rig.until_awaiting(&third).await;
    let newer = plan(&waiting);
    assert!(newer.targets.iter().any(|t| {
        t.changes
            .iter()
            .any(|c| c.to.as_deref() == Some("13ubuntu11"))
    }));
    assert_ne!(newer.approval_hash, Some(hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_a_decision_patches_the_next_windows_minor_updates_and_asks_again() {
    let mut rig = Rig::start("nextwindow").await;
    rig.set_updates(103, rig::kernel_series_update()).await;
    let mut config = rig.config();
    config.host.enabled = false;
    rig.start_patcher(config);
    let id = rig.start_run(false).await;
    let first = rig.until_awaiting(&id).await;
    let deadline = first.data["awaiting"]["expires_at"].clone();
    assert_eq!(deadline, json!("2026-12-13T05:00:00Z"));
    // During the week a new security fix arrives for a VM that was patched.
    rig.set_updates(
        101,
        json!([{"package": "openssl", "version": "3.0.2-0ubuntu1.17", "archive": "jammy-security"}]),
    )
    .await;
    rig.clock.set("2026-12-13T02:00:00Z".parse().unwrap());
    let again = rig
        .until(&id, Duration::from_secs(60), "asking again", |r| {
            r.data["awaiting"]["signal"] == json!("decision.1")
        })
        .await;
    assert_eq!(
        again.data["awaiting"]["expires_at"], deadline,
        "the same deadline"
    );
    let state = rig.sim_state().await;
    let vm = vm_state(&state, 101);
    assert_eq!(
        vm["packages"]["upgrades"],
        json!(2),
        "the new minor fix went in"
    );
    assert_eq!(
        vm["packages"]["installed"]["openssl"],
        json!("3.0.2-0ubuntu1.17")
    );
    assert_eq!(vm_state(&state, 103)["packages"]["upgrades"], json!(0));
    // No decision by the deadline: the run ends with the major change deferred.
    rig.clock.set("2026-12-13T05:00:01Z".parse().unwrap());
    let record = rig.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded);
    assert!(
        record.data["report"]["deferred"]
            .to_string()
            .contains("vm/103")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_decisions_get_field_level_errors_and_change_nothing() {
    let rig = Rig::start("baddecide").await;
    let http = reqwest::Client::new();
    let url = |run: &str| format!("{}/v1/patch/runs/{run}/approve", rig.gateway);
    let post = |run: String, token: Option<&'static str>, body: String| {
        let mut r = http
            .post(url(&run))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let cases: Vec<(String, Option<&'static str>, String, u16, &str)> = vec![
        (
            "patch-x".into(),
            None,
            r#"{"plan":"0123456789ab"}"#.into(),
            401,
            "",
        ),
        (
            "patch-x".into(),
            Some(VIEWER),
            r#"{"plan":"0123456789ab"}"#.into(),
            403,
            "patch.approvers",
        ),
        (
            "patch-x".into(),
            Some(APPROVER),
            "not json".into(),
            422,
            "body",
        ),
        (
            "patch-x".into(),
            Some(APPROVER),
            r#"{"plan":"0123456789ab","extra":1}"#.into(),
            422,
            "body",
        ),
        (
            "patch-x".into(),
            Some(APPROVER),
            r#"{"plan":"xyz"}"#.into(),
            422,
            "plan",
        ),
        (
            "patch-x".into(),
            Some(APPROVER),
            format!(
                r#"{{"plan":"0123456789ab","comment":"{}"}}"#,
                "c".repeat(1001)
            ),
            422,
            "comment",
        ),
        (
            "patch-x".into(),
            Some(APPROVER),
            r#"{"plan":"0123456789ab"}"#.into(),
            404,
            "patch-x",
        ),
        (
            "a".repeat(300),
            Some(APPROVER),
            r#"{"plan":"0123456789ab"}"#.into(),
            404,
            "",
        ),
    ];
    for (run, token, body, status, mentions) in cases {
        let r = post(run.clone(), token, body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{run} {body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(mentions), "{status} for {body}: {text}");
    }
    // Nothing was started or signalled.
    let listed: Value = http
        .get(format!("{}/v1/patch/runs", rig.gateway))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["runs"], json!([]));
}
