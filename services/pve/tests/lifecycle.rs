//! The lifecycle jobs' client calls against the simulator: creating a VM from a config (and a
//! taken VMID as `AlreadyExists`), the disks with a SMART failure set through the simulator, and
//! RRD history of the node and a VM — every request and answer checked against the official
//! schema when the fixture drops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Fixture;
use proxflow_pve::{Consolidation, ErrorKind, Timeframe};
use proxflow_pve_sim::DiskHealth;

#[tokio::test]
async fn create_vm_then_start_ping_and_destroy() {
    let fx = Fixture::start().await;
    let c = &fx.client;
    let params: BTreeMap<String, String> = [
        ("name", "drill-101"),
        ("memory", "2048"),
        ("cores", "2"),
        ("agent", "1"),
        ("scsi0", "local-zfs:8"),
        ("net0", "virtio,bridge=vmbr1,tag=20,link_down=1"),
        ("tags", "drill"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let upid = c.create_vm("pve1", 300, &params).await.unwrap();
    assert_eq!(upid.task_type, "qmcreate");
    c.wait_task(&upid, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let config = c.vm_config(300).await.unwrap();
    assert!(config.lock().is_none());
    assert!(config.get("net0").unwrap().contains("link_down=1"));

    let e = c.create_vm("pve1", 300, &params).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");

    let start = c.start_vm(300).await.unwrap();
    c.wait_task(&start, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = c.agent_ping(300).await {
        assert!(Instant::now() < deadline, "agent never answered: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = c.stop_vm(300, None).await.unwrap();
    c.wait_task(&stop, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let destroy = c.destroy_vm(300, true).await.unwrap();
    c.wait_task(&destroy, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(
        c.vm_config(300).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn disks_and_smart_report_a_failed_disk() {
    let fx = Fixture::start().await;
    let c = &fx.client;
    let disks = c.disks("pve1").await.unwrap();
    assert_eq!(disks.len(), 2);
    assert!(disks.iter().all(|d| !d.is_failed() && d.wearout.is_some()));
    fx.handle
        .set_disk_health(&DiskHealth {
            devpath: "/dev/nvme0n1".into(),
            health: Some("FAILED".into()),
            wearout: Some(3),
        })
        .unwrap();
    let disks = c.disks("pve1").await.unwrap();
    let failed: Vec<&str> = disks
        .iter()
        .filter(|d| d.is_failed())
        .map(|d| d.devpath.as_str())
        .collect();
    assert_eq!(failed, ["/dev/nvme0n1"]);
    let smart = c.disk_smart("pve1", "/dev/nvme0n1").await.unwrap();
    assert_eq!((smart.health.as_str(), smart.wearout), ("FAILED", Some(3)));
    assert!(
        smart
            .text
            .unwrap()
            .contains("Percentage Used:                    97%")
    );
    let e = c.disk_smart("pve1", "/dev/sdq").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn rrd_history_of_the_node_and_a_vm() {
    let fx = Fixture::start().await;
    let c = &fx.client;
    let node = c
        .node_rrd(Timeframe::Month, Consolidation::Average)
        .await
        .unwrap();
    assert_eq!(node.len(), 70);
    assert_eq!(node[1].time - node[0].time, 43_200);
    assert!(node.iter().all(|r| r.memused.is_some()));
    let vm = c
        .vm_rrd(101, Timeframe::Day, Consolidation::Max)
        .await
        .unwrap();
    assert_eq!(vm.len(), 70);
    assert!(vm.last().unwrap().cpu.unwrap() > 0.0);
}
