//! The provisioning steps against the Proxmox simulator: they build the profile's exact VM, and re-running
//! any of them changes nothing (the crash-and-resume guarantee rests on that).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use proxflow_platform::Profile;
use proxflow_provisioner::steps::{self, StepError};
use proxflow_schemas::provision::{IpConfig, ProvisionRequested, VmOverrides};
use proxflow_testkit::pve::start_sim;

fn request(name: &str, ip: IpConfig) -> ProvisionRequested {
    ProvisionRequested {
        workflow_id: "prov-test".into(),
        idempotency_key: "k".into(),
        name: name.into(),
        profile: "k8s-node".into(),
        overrides: VmOverrides::default(),
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm9 ops@bastion".into()],
        ip,
        tags: vec!["burst".into()],
        requested_by: "test".into(),
        requested_at: Utc::now(),
    }
}

#[tokio::test]
async fn steps_build_the_profile_and_rerunning_them_changes_nothing() {
    let (sim, client) = start_sim(|_| {}).await.unwrap();
    let handle = sim.handle();
    let profile = Profile::default();
    let shape = profile.shape(&VmOverrides::default()).unwrap();
    let req = request(
        "k3s-9",
        IpConfig::Static {
            cidr: "10.20.0.49/24".into(),
            gateway: "10.20.0.1".into(),
        },
    );
    let vmid = client.next_id().await.unwrap();

    steps::ensure_cloned(&client, &profile, vmid, "k3s-9")
        .await
        .unwrap();
    let net0 = handle.vm_config(vmid).unwrap().get("net0").cloned();
    let desired = steps::desired_config(&profile, &shape, &req, net0.as_deref());
    assert!(steps::ensure_config(&client, vmid, &desired).await.unwrap());
    assert!(
        steps::ensure_disk(&client, vmid, &profile.disk, shape.disk_gib)
            .await
            .unwrap()
    );
    assert!(steps::ensure_running(&client, vmid).await.unwrap());
    let ip = steps::wait_for_ipv4(&client, vmid, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ip.to_string(), "10.20.0.49");

    // The VM in the simulator is the profile, key by key.
    let cfg = handle.vm_config(vmid).unwrap();
    for (key, want) in [
        ("cores", "4"),
        ("sockets", "1"),
        ("cpu", "host"),
        ("memory", "8192"),
        ("balloon", "4096"),
        ("scsihw", "virtio-scsi-pci"),
        ("agent", "1"),
        ("ciuser", "ubuntu"),
        ("ipconfig0", "ip=10.20.0.49/24,gw=10.20.0.1"),
        ("nameserver", "10.20.0.1"),
        ("searchdomain", "k3s.lan"),
        ("tags", "burst;k3s;k8s-node"),
    ] {
        assert_eq!(cfg.get(key).map(String::as_str), Some(want), "{key}");
    }
    let net0 = cfg.get("net0").unwrap();
    assert!(
        net0.contains("bridge=vmbr1") && net0.contains("tag=20"),
        "{net0}"
    );
    assert!(
        net0.starts_with("virtio=BC:24:11:"),
        "the clone's MAC is kept: {net0}"
    );
    assert_eq!(steps::disk_size_gib(cfg.get("scsi0").unwrap()), Some(40));
    assert!(
        cfg.get("sshkeys")
            .unwrap()
            .starts_with("ssh-ed25519%20AAAA")
    );

    // Every step again: nothing to do, still exactly one VM.
    let before = handle.vm_ids().len();
    steps::ensure_cloned(&client, &profile, vmid, "k3s-9")
        .await
        .unwrap();
    assert!(!steps::ensure_config(&client, vmid, &desired).await.unwrap());
    assert!(
        !steps::ensure_disk(&client, vmid, &profile.disk, shape.disk_gib)
            .await
            .unwrap()
    );
    assert!(!steps::ensure_running(&client, vmid).await.unwrap());
    assert_eq!(handle.vm_ids().len(), before);

    // Compensation removes it, and is itself repeatable.
    assert!(
        steps::ensure_destroyed(&client, vmid, "k3s-9")
            .await
            .unwrap()
    );
    assert!(
        !steps::ensure_destroyed(&client, vmid, "k3s-9")
            .await
            .unwrap()
    );
    assert!(!handle.vm_ids().contains(&vmid));
}

#[tokio::test]
async fn a_vmid_holding_another_vm_is_never_touched() {
    let (sim, client) = start_sim(|_| {}).await.unwrap();
    let profile = Profile::default();
    let err = steps::ensure_cloned(&client, &profile, 101, "k3s-new")
        .await
        .expect_err("101 is k3s-1");
    assert!(matches!(err, StepError::Foreign { vmid: 101, .. }), "{err}");
    assert!(!err.is_retryable());
    let err = steps::ensure_destroyed(&client, 101, "k3s-new")
        .await
        .expect_err("not ours");
    assert!(matches!(err, StepError::Foreign { .. }));
    assert!(sim.handle().vm_ids().contains(&101), "k3s-1 still exists");
}

#[tokio::test]
async fn a_clone_in_progress_is_waited_for_not_repeated() {
    // Real-time clone (2 s): the second call finds `lock: clone` and waits for it.
    let (sim, client) = start_sim(|c| c.time_scale = 0.25).await.unwrap();
    let profile = Profile::default();
    let vmid = client.next_id().await.unwrap();
    let first = {
        let (client, profile) = (client.clone(), profile.clone());
        tokio::spawn(async move { steps::ensure_cloned(&client, &profile, vmid, "k3s-race").await })
    };
    // Wait until the first call's clone holds the lock, then run the step again.
    let handle = sim.handle();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while handle
        .vm_config(vmid)
        .and_then(|c| c.get("lock").cloned())
        .as_deref()
        != Some("clone")
    {
        assert!(std::time::Instant::now() < deadline, "clone never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    steps::ensure_cloned(&client, &profile, vmid, "k3s-race")
        .await
        .unwrap();
    assert_eq!(handle.vm_config(vmid).unwrap().get("lock"), None);
    first.await.unwrap().unwrap();
    let clones = handle
        .journal()
        .iter()
        .filter(|e| e.method == "POST" && e.path.ends_with("/clone"))
        .count();
    assert_eq!(clones, 1, "one clone request");
}

#[tokio::test]
async fn an_agent_that_never_comes_up_times_out_with_the_reason() {
    let (sim, client) = start_sim(|_| {}).await.unwrap();
    let vmid = 102; // running k3s-2
    let mut faults = sim.handle().faults();
    faults.agent_never_up.push(vmid);
    sim.handle().set_faults(faults);
    let err = steps::wait_for_ipv4(&client, vmid, Duration::from_millis(300))
        .await
        .expect_err("never up");
    assert!(
        matches!(err, StepError::NoAddress { vmid: 102, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("guest agent is not running"),
        "{err}"
    );
}
