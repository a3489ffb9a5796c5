//! Provision workflows end to end on a real nats-server and the Proxmox simulator: orchestrator and
//! provisioner consume from JetStream, the provisioner drives the simulator over HTTP, the workflow
//! record in KV is the progress. The join command is a shell script standing in for ansible (no SSH
//! target exists here), honouring the same JSON contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use proxflow_e2e::JOIN_OK;
use proxflow_schemas::names::durable;
use proxflow_schemas::workflow::{StepState, WorkflowState};

mod support;

use support::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_becomes_a_running_onboarded_vm() {
    let p = Platform::start(JOIN_OK, |_| {}).await;
    let id = p.request("k3s-4", "happy").await;
    let record = p.until_ended(&id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    let steps: Vec<(&str, StepState)> = record
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state))
        .collect();
    assert_eq!(
        steps,
        proxflow_provisioner::workflow::STEPS
            .map(|s| (s, StepState::Succeeded))
            .to_vec()
    );
    let vmid = record.data["vmid"].as_u64().unwrap() as u32;
    let ip = record.data["ip"].as_str().unwrap().to_string();
    let join = record.steps.iter().find(|s| s.name == "join").unwrap();
    assert_eq!(join.output["stdout"], format!("joined k3s-4 at {ip}\n"));

    let cfg = p.sim.handle().vm_config(vmid).expect("VM exists");
    for (key, want) in [
        ("name", "k3s-4"),
        ("cores", "4"),
        ("memory", "8192"),
        ("balloon", "4096"),
        ("cpu", "host"),
        ("scsihw", "virtio-scsi-pci"),
        ("ipconfig0", "ip=dhcp"),
        ("ciuser", "ubuntu"),
    ] {
        assert_eq!(cfg.get(key).map(String::as_str), Some(want), "{key}");
    }
    assert!(cfg.get("net0").unwrap().contains("bridge=vmbr1,tag=20"));
    assert_eq!(
        proxflow_provisioner::steps::disk_size_gib(cfg.get("scsi0").unwrap()),
        Some(40)
    );
    assert_eq!(
        p.targets().target_of(vmid).unwrap(),
        Some(format!("{ip}:9100"))
    );
    assert!(
        p.reservations().await.is_empty(),
        "the reservation is released once the VM exists"
    );

    // The outcome event is on the bus.
    let evt = p.ctx.bus.js.get_stream("PF_EVT").await.unwrap();
    let msg = evt
        .get_last_raw_message_by_subject("pf.evt.vm.provisioned")
        .await
        .expect("vm.provisioned");
    let outcome: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(outcome["vmid"], vmid);

    // The same request again (same idempotency key) changes nothing.
    let before = p.sim.handle().vm_ids().len();
    p.request("k3s-4", "happy").await;
    p.until_idle().await;
    assert_eq!(p.sim.handle().vm_ids().len(), before);
    assert_eq!(
        p.store.get(&id).await.unwrap().unwrap().0.state,
        WorkflowState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_make_twenty_vms() {
    let p = Platform::start(JOIN_OK, |_| {}).await;
    let before: BTreeSet<u32> = p.sim.handle().vm_ids().into_iter().collect();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            p.request(&format!("burst-{i}"), &format!("burst-{i}"))
                .await,
        );
    }
    let mut vmids = BTreeSet::new();
    for id in &ids {
        let r = p.until_ended(id).await;
        assert_eq!(r.state, WorkflowState::Succeeded, "{id}: {:?}", r.error);
        vmids.insert(r.data["vmid"].as_u64().unwrap() as u32);
    }
    assert_eq!(vmids.len(), 20, "distinct VMIDs");
    let after: BTreeSet<u32> = p.sim.handle().vm_ids().into_iter().collect();
    let created: BTreeSet<u32> = after.difference(&before).copied().collect();
    assert_eq!(created, vmids, "no orphans");
}

async fn assert_compensated(p: &Platform, id: &str, reason: &str) {
    let record = p.until_ended(id).await;
    assert_eq!(record.state, WorkflowState::Failed, "{record:#?}");
    let error = record.error.clone().unwrap_or_default();
    assert!(
        error.contains(reason),
        "error {error:?} should mention {reason:?}"
    );
    let names: Vec<String> = p
        .sim
        .handle()
        .vm_ids()
        .into_iter()
        .filter_map(|v| p.sim.handle().vm_config(v)?.get("name").cloned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "doomed"),
        "the VM is gone: {names:?}"
    );
    assert!(
        p.reservations().await.is_empty(),
        "no VMID reservation left"
    );
    if let Some(vmid) = record.data.get("vmid").and_then(|v| v.as_u64()) {
        assert_eq!(
            p.targets().target_of(vmid as u32).unwrap(),
            None,
            "no scrape target left"
        );
    }
    let evt = p.ctx.bus.js.get_stream("PF_EVT").await.unwrap();
    evt.get_last_raw_message_by_subject("pf.evt.vm.provision_failed")
        .await
        .expect("vm.provision_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_clone_task_is_compensated() {
    let p = Platform::start(JOIN_OK, |c| {
        c.faults.task_failures.insert(
            "qmclone".into(),
            "clone failed: zfs error: out of space".into(),
        );
    })
    .await;
    let id = p.request("doomed", "clone-fails").await;
    assert_compensated(&p, &id, "out of space").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_comes_up_is_compensated() {
    let p = Platform::start(JOIN_OK, |_| {}).await;
    // The VMID the provision will get (Proxmox's nextid: the lowest free one from 100); its agent
    // never answers.
    let ids = p.sim.handle().vm_ids();
    let next = (100..).find(|v| !ids.contains(v)).unwrap();
    let mut faults = p.sim.handle().faults();
    faults.agent_never_up.push(next);
    p.sim.handle().set_faults(faults);
    let id = p.request("doomed", "agent-down").await;
    assert_compensated(&p, &id, "guest agent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_join_command_is_compensated_with_its_output() {
    let p = Platform::start(
        "echo 'fatal: [10.20.0.1]: UNREACHABLE!' >&2; exit 4",
        |_| {},
    )
    .await;
    let id = p.request("doomed", "join-fails").await;
    assert_compensated(&p, &id, "UNREACHABLE").await;
    let record = p.store.get(&id).await.unwrap().unwrap().0;
    let join = record.steps.iter().find(|s| s.name == "join").unwrap();
    assert_eq!(join.attempts, 3, "retried up to max_deliver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_caps_refuse_with_the_numbers() {
    // One at a time, two per hour; the join step holds the first one running for a moment.
    let p = Platform::start_with(
        "cat > /dev/null; sleep 1",
        |_| {},
        |config| {
            for profile in config.profiles.0.values_mut() {
                profile.max_concurrent = 1;
                profile.max_per_hour = 2;
            }
        },
    )
    .await;
    let first = p.request("capped-1", "capped-1").await;
    p.until_running(&first).await;
    let second = p.request("capped-2", "capped-2").await;
    let refused = p.until_ended(&second).await;
    assert_eq!(refused.state, WorkflowState::Cancelled);
    let why = refused.error.unwrap_or_default();
    assert!(
        why.contains("1 already running (max_concurrent 1)"),
        "{why}"
    );
    assert_eq!(p.until_ended(&first).await.state, WorkflowState::Succeeded);

    // The slot is free again once the outcome is in; the hourly budget then has one left.
    p.until_idle().await;
    let third = p.request("capped-3", "capped-3").await;
    assert_eq!(p.until_ended(&third).await.state, WorkflowState::Succeeded);
    let fourth = p.request("capped-4", "capped-4").await;
    let refused = p.until_ended(&fourth).await;
    assert_eq!(refused.state, WorkflowState::Cancelled);
    let why = refused.error.unwrap_or_default();
    assert!(
        why.contains("2 started in the last 1h (max_per_hour 2)"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_command_fails_its_workflow_and_frees_its_slot() {
    use proxflow_runtime::admission::{Admissions, Caps, Decision};
    use proxflow_schemas::events::{DeadLetter, DeadLetterReason, PayloadEncoding};
    use proxflow_schemas::provision::{IpConfig, ProvisionRequested, VmOverrides};
    use proxflow_schemas::workflow::WorkflowAdvance;

    let p = Platform::start(JOIN_OK, |_| {}).await;
    let request = ProvisionRequested {
        workflow_id: "prov-given-up".into(),
        idempotency_key: "given-up".into(),
        name: "given-up".into(),
        profile: "k8s-node".into(),
        overrides: VmOverrides::default(),
        ssh_keys: vec![],
        ip: IpConfig::Dhcp,
        tags: vec![],
        requested_by: "test".into(),
        requested_at: chrono::Utc::now(),
    };
    // A workflow admitted to its profile's slot whose advances the provisioner's engine then gave
    // up on, as the runtime's consumer loop reports it.
    let mut record = request.pending_workflow("test", None);
    record.state = WorkflowState::Running;
    assert!(p.store.create(&record).await.unwrap());
    let admissions = Admissions::open(&p.ctx.bus.js).await.unwrap();
    let one = Caps {
        max_running: 1,
        max_per_window: 100,
        window: std::time::Duration::from_secs(3600),
    };
    let key = "provision.k8s-node";
    assert_eq!(
        admissions
            .admit(key, "prov-given-up", one, chrono::Utc::now())
            .await
            .unwrap(),
        Decision::Admitted
    );
    let advance = WorkflowAdvance {
        kind: "provision".into(),
        id: "prov-given-up".into(),
        reason: "start".into(),
    };
    let letter = DeadLetter {
        consumer: durable::PROVISIONER.into(),
        stream: "PF_CMD".into(),
        stream_sequence: 1,
        deliveries: 5,
        subject: "pf.cmd.workflow.provision".into(),
        reason: DeadLetterReason::RetriesExhausted,
        detail: "workflow store: timed out".into(),
        headers: Default::default(),
        payload: serde_json::to_string(&advance).unwrap(),
        payload_encoding: PayloadEncoding::Utf8,
        dead_lettered_at: chrono::Utc::now(),
    };
    p.ctx.bus.publisher.publish(&letter).await.unwrap();

    let ended = p.until_ended("prov-given-up").await;
    assert_eq!(ended.state, WorkflowState::Failed);
    assert!(
        ended
            .error
            .unwrap_or_default()
            .contains("gave up after 5 deliveries: workflow store: timed out")
    );
    // The slot is free: with max_running 1, another id is admitted.
    p.until_idle().await;
    assert_eq!(
        admissions
            .admit(key, "prov-next", one, chrono::Utc::now())
            .await
            .unwrap(),
        Decision::Admitted
    );
}
