//! Every client operation against the simulator over real HTTP(S), with the contract check of
//! `common` on every request. Task durations run at 1/100 of real time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Fixture;
use proxflow_pve::types::ResourceType;
use proxflow_pve::{
    CloneSpec, ConfigChange, ErrorKind, PveClient, ShutdownOptions, encode_sshkeys,
};
use proxflow_pve_sim::{EndpointFault, Faults};

const TEMPLATE: u32 = 9000;

async fn clone_and_wait(client: &PveClient, newid: u32, name: &str) {
    let upid = client
        .clone_vm(
            TEMPLATE,
            &CloneSpec {
                newid,
                name: Some(name.into()),
                ..CloneSpec::default()
            },
        )
        .await
        .expect("clone dispatched");
    assert_eq!(upid.task_type, "qmclone");
    assert_eq!(upid.id, TEMPLATE.to_string(), "qmclone's id is the source");
    client.wait_task(&upid, None).await.expect("clone finishes");
}

/// Polls `probe` until it returns Some, or fails after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn vm_lifecycle_through_every_vm_operation() {
    let fx = Fixture::start().await;
    let c = &fx.client;

    let before = c.list_vms().await.unwrap();
    assert!(before.iter().any(|v| v.vmid == TEMPLATE && v.template));
    let newid = c.next_id().await.unwrap();
    assert!(before.iter().all(|v| v.vmid != newid));

    clone_and_wait(c, newid, "k3s-4").await;
    let cfg = c.vm_config(newid).await.unwrap();
    assert_eq!(cfg.get("name"), Some("k3s-4"));
    assert_eq!(cfg.lock(), None, "lock: clone is gone once the task ended");
    assert!(!cfg.is_template());

    // Synchronous change with the digest, then a stale digest is refused.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm9 ops@bastion";
    let mut change = ConfigChange {
        digest: Some(cfg.digest.clone()),
        ..ConfigChange::default()
    };
    for (k, v) in [
        ("cores", "4".to_string()),
        ("memory", "8192".to_string()),
        ("balloon", "4096".to_string()),
        ("cpu", "host".to_string()),
        ("scsihw", "virtio-scsi-pci".to_string()),
        ("ciuser", "ubuntu".to_string()),
        ("ipconfig0", "ip=10.20.0.44/24,gw=10.20.0.1".to_string()),
        ("nameserver", "10.20.0.1".to_string()),
        ("searchdomain", "k3s.lan".to_string()),
        ("sshkeys", encode_sshkeys(key)),
        ("tags", "k3s;k8s-node".to_string()),
    ] {
        change.set.insert(k.into(), v);
    }
    c.update_config(newid, &change).await.unwrap();
    let stale = c
        .update_config(newid, &change)
        .await
        .expect_err("digest is stale");
    assert!(stale.message.contains("checksum mismatch"), "{stale}");
    let cfg = c.vm_config(newid).await.unwrap();
    assert_eq!(cfg.get("memory"), Some("8192"));
    assert_eq!(cfg.get("sshkeys"), Some(encode_sshkeys(key).as_str()));
    assert_eq!(cfg.tags(), vec!["k3s", "k8s-node"]);

    // Asynchronous change (POST) → a qmconfig task, or nothing to wait for.
    let mut post = ConfigChange {
        digest: Some(cfg.digest.clone()),
        ..ConfigChange::default()
    };
    post.set
        .insert("description".into(), "provisioned by a test".into());
    if let Some(upid) = c.update_config_async(newid, &post).await.unwrap() {
        c.wait_task(&upid, None).await.unwrap();
    }

    let upid = c.resize_disk(newid, "scsi0", "+10G", None).await.unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let cfg = c.vm_config(newid).await.unwrap();
    assert!(cfg.get("scsi0").unwrap().contains("size="), "{cfg:?}");

    let upid = c.start_vm(newid).await.unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let status = c.vm_status(newid).await.unwrap();
    assert!(status.is_running());
    assert!(status.agent);
    assert_eq!(status.maxmem, 8192 * 1024 * 1024);

    // Starting it again: the API accepts, the task fails with Proxmox's text and its log.
    let again = c.start_vm(newid).await.unwrap();
    let err = c
        .wait_task(&again, None)
        .await
        .expect_err("already running");
    assert_eq!(err.kind, ErrorKind::TaskFailed);
    assert!(err.message.contains("already running"), "{err}");

    // The guest agent answers once the VM has booted, with the static address from ipconfig0.
    eventually(Duration::from_secs(10), || async {
        c.agent_ping(newid).await.ok()
    })
    .await;
    let ifaces = c.agent_network_interfaces(newid).await.unwrap();
    let addrs: Vec<&str> = ifaces
        .iter()
        .filter(|i| i.name != "lo")
        .flat_map(|i| i.ip_addresses.iter().map(|a| a.address.as_str()))
        .collect();
    assert!(addrs.contains(&"10.20.0.44"), "{ifaces:?}");

    let pid = c
        .agent_exec(newid, &["cloud-init", "status", "--wait"])
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(5), || async {
        c.agent_exec_status(newid, pid)
            .await
            .ok()
            .filter(|s| s.exited)
    })
    .await;
    assert_eq!(done.exitcode, Some(0));

    // Snapshots: create two, list with the `current` entry, delete one, roll back to the latest.
    for name in ["pre-patch", "post-patch"] {
        let upid = c
            .create_snapshot(newid, name, Some("test"), false)
            .await
            .unwrap();
        c.wait_task(&upid, None).await.unwrap();
    }
    let snaps = c.snapshots(newid).await.unwrap();
    let current = snaps
        .iter()
        .find(|s| s.is_current())
        .expect("current entry");
    assert_eq!(current.parent.as_deref(), Some("post-patch"));
    let post_patch = snaps.iter().find(|s| s.name == "post-patch").unwrap();
    assert_eq!(post_patch.parent.as_deref(), Some("pre-patch"));
    let upid = c
        .rollback_snapshot(newid, "post-patch", false)
        .await
        .unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let upid = c.delete_snapshot(newid, "pre-patch", false).await.unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let names: Vec<String> = c
        .snapshots(newid)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(!names.contains(&"pre-patch".to_string()), "{names:?}");

    // Rollback stopped the VM; start, reboot, shut down, stop.
    let upid = c.start_vm(newid).await.unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let upid = c.reboot_vm(newid, Some(30)).await.unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let upid = c
        .shutdown_vm(
            newid,
            ShutdownOptions {
                timeout: Some(30),
                force_stop: true,
            },
        )
        .await
        .unwrap();
    c.wait_task(&upid, None).await.unwrap();
    assert!(!c.vm_status(newid).await.unwrap().is_running());
    let upid = c.stop_vm(newid, None).await.unwrap();
    let _ = c.wait_task(&upid, None).await; // stopping a stopped VM is fine either way

    // Destroy, then it is gone.
    let upid = c.destroy_vm(newid, true).await.unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let gone = c.vm_config(newid).await.expect_err("destroyed");
    assert_eq!(gone.kind, ErrorKind::NotFound);
    assert!(c.list_vms().await.unwrap().iter().all(|v| v.vmid != newid));
}

#[tokio::test]
async fn node_storage_cluster_and_apt() {
    let fx = Fixture::start().await;
    let c = &fx.client;

    let node = c.node_status().await.unwrap();
    assert!(node.memory.total > 0 && node.memory.used <= node.memory.total);
    assert_eq!(node.loadavg.len(), 3);
    assert!(node.cpuinfo.cpus > 0 && node.cpuinfo.mhz > 0.0);

    let storages = c.storages().await.unwrap();
    let zfs = storages
        .iter()
        .find(|s| s.storage.as_deref() == Some("local-zfs"))
        .expect("local-zfs");
    assert_eq!(zfs.storage_type, "zfspool");
    assert_eq!(zfs.total, zfs.used + zfs.avail);
    let status = c.storage_status("local-zfs").await.unwrap();
    assert_eq!(status.used, zfs.used);
    let missing = c.storage_status("nope").await.expect_err("no such storage");
    assert_eq!(missing.kind, ErrorKind::NotFound);

    // A full clone allocates on local-zfs: its used space grows by the disk size.
    let newid = c.next_id().await.unwrap();
    let upid = c
        .clone_vm(
            TEMPLATE,
            &CloneSpec {
                newid,
                name: Some("full-copy".into()),
                full: Some(true),
                storage: Some("local-zfs".into()),
                ..CloneSpec::default()
            },
        )
        .await
        .unwrap();
    c.wait_task(&upid, None).await.unwrap();
    let after = c.storage_status("local-zfs").await.unwrap();
    assert!(
        after.used > status.used,
        "{} -> {}",
        status.used,
        after.used
    );

    let vms = c.cluster_resources(Some(ResourceType::Vm)).await.unwrap();
    assert!(vms.iter().all(|r| r.resource_type == "qemu"));
    assert!(vms.iter().any(|r| r.vmid == Some(u64::from(newid))));
    let nodes = c.cluster_resources(Some(ResourceType::Node)).await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].maxmem > 0);
    let stor = c
        .cluster_resources(Some(ResourceType::Storage))
        .await
        .unwrap();
    assert!(
        stor.iter()
            .any(|r| r.storage.as_deref() == Some("local-zfs"))
    );
    let all = c.cluster_resources(None).await.unwrap();
    assert!(all.len() >= vms.len() + nodes.len() + stor.len());

    let pools = c.zfs_pools().await.unwrap();
    assert!(
        pools
            .iter()
            .any(|p| p.health == "ONLINE" && p.size == p.alloc + p.free)
    );

    let updates = c.apt_updates().await.unwrap();
    assert!(
        updates
            .iter()
            .any(|u| u.package.starts_with("proxmox-kernel"))
    );
    let upid = c.apt_refresh().await.unwrap();
    assert_eq!(upid.task_type, "aptupdate");
    c.wait_task(&upid, None).await.unwrap();
    let status = c.task_status(&upid).await.unwrap();
    assert_eq!(status.exitstatus.as_deref(), Some("OK"));
    let (lines, total) = c.task_log(&upid, 0, 50).await.unwrap();
    assert_eq!(lines.len() as u64, total);
    assert_eq!(lines.last().map(|l| l.t.as_str()), Some("TASK OK"));
}

#[tokio::test]
async fn lock_contention_is_retried_until_it_succeeds() {
    let fx = Fixture::start().await;
    let mut faults = Faults::default();
    faults.endpoints.insert(
        "POST /nodes/{node}/qemu/{vmid}/clone".into(),
        EndpointFault {
            fail_next: 3,
            ..EndpointFault::default()
        },
    );
    fx.handle.set_faults(faults);
    let newid = fx.client.next_id().await.unwrap();
    clone_and_wait(&fx.client, newid, "contended").await;
    let clone_posts: Vec<u16> = fx
        .journal()
        .iter()
        .filter(|e| e.method == "POST" && e.path.ends_with("/clone"))
        .map(|e| e.status)
        .collect();
    assert_eq!(clone_posts, vec![500, 500, 500, 200]);
}

#[tokio::test]
async fn a_failed_task_reports_its_log_tail() {
    let fx = Fixture::start().await;
    // 101 runs in the seed; stop it first so the start itself is what fails.
    let stop = fx.client.stop_vm(101, None).await.unwrap();
    fx.client.wait_task(&stop, None).await.unwrap();
    let mut faults = Faults::default();
    faults.task_failures.insert(
        "qmstart".into(),
        "start failed: QEMU exited with code 1".into(),
    );
    fx.handle.set_faults(faults);
    let upid = fx.client.start_vm(101).await.unwrap();
    let err = fx
        .client
        .wait_task(&upid, None)
        .await
        .expect_err("injected failure");
    assert_eq!(err.kind, ErrorKind::TaskFailed);
    assert_eq!(err.message, "start failed: QEMU exited with code 1");
    assert_eq!(
        err.log_tail.last().map(String::as_str),
        Some("TASK ERROR: start failed: QEMU exited with code 1")
    );
    assert!(err.to_string().contains("task log tail"), "{err}");
}

#[tokio::test]
async fn a_bad_parameter_surfaces_proxmox_field_errors() {
    let mut fx = Fixture::start().await;
    fx.expect_rejected(2);
    let err = fx
        .client
        .clone_vm(
            TEMPLATE,
            &CloneSpec {
                newid: 42,
                name: Some("not a dns name!".into()),
                ..CloneSpec::default()
            },
        )
        .await
        .expect_err("rejected");
    assert_eq!((err.kind, err.status), (ErrorKind::Validation, Some(400)));
    assert_eq!(err.message, "Parameter verification failed.");
    assert!(err.field_errors.contains_key("newid"), "{err}");
    assert!(err.field_errors.contains_key("name"), "{err}");
    let text = err.to_string();
    assert!(text.contains("newid:") && text.contains("name:"), "{text}");

    // Booleans must be 0/1 on the wire: `true` is what Proxmox's form decoding rejects.
    let bad = fx
        .client
        .call_value(
            reqwest::Method::GET,
            "/nodes/pve1/qemu",
            &proxflow_pve::Params::new().set("full", "true"),
        )
        .await
        .expect_err("type check");
    assert!(
        bad.field_errors["full"].contains("type check ('boolean') failed"),
        "{bad}"
    );
}

#[tokio::test]
async fn a_clone_in_progress_locks_the_new_vm() {
    let fx = Fixture::with(|c| c.time_scale = 1.0).await; // a 2 s clone, to look at it mid-way
    let newid = fx.client.next_id().await.unwrap();
    let upid = fx
        .client
        .clone_vm(
            TEMPLATE,
            &CloneSpec {
                newid,
                ..CloneSpec::default()
            },
        )
        .await
        .unwrap();
    let err = fx
        .client
        .update_config(
            newid,
            &ConfigChange {
                set: BTreeMap::from([("cores".to_string(), "2".to_string())]),
                ..ConfigChange::default()
            },
        )
        .await
        .expect_err("locked while cloning");
    assert_eq!(err.kind, ErrorKind::Locked);
    assert_eq!(err.message, "VM is locked (clone)");
    fx.client.wait_task(&upid, None).await.unwrap();
    assert_eq!(fx.client.vm_config(newid).await.unwrap().lock(), None);
}

#[tokio::test]
async fn a_fresh_upid_briefly_unknown_is_waited_for() {
    let fx = Fixture::with(|c| c.faults.fresh_upid_unknown = true).await;
    let upid = fx
        .client
        .create_snapshot(101, "fresh", None, false)
        .await
        .unwrap();
    fx.client
        .wait_task(&upid, None)
        .await
        .expect("unknown at first, then found");
    let unknown_first = fx
        .journal()
        .iter()
        .filter(|e| e.path.ends_with("/status") && e.path.contains("/tasks/"))
        .map(|e| e.status)
        .next();
    assert_eq!(
        unknown_first,
        Some(400),
        "the first status poll was refused"
    );
}

#[tokio::test]
async fn a_task_outliving_its_deadline_is_a_timeout_not_a_failure() {
    let fx = Fixture::with(|c| c.time_scale = 1.0).await;
    let upid = fx
        .client
        .create_snapshot(101, "slow", None, false)
        .await
        .unwrap();
    let err = fx
        .client
        .wait_task(&upid, Some(Duration::from_millis(200)))
        .await
        .expect_err("1 s task, 200 ms deadline");
    assert_eq!(err.kind, ErrorKind::TaskTimeout);
    fx.client
        .wait_task(&upid, None)
        .await
        .expect("it still finishes");
}
