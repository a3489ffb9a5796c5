//! The quarterly restore drill on real parts: zfs-fuse pools `tank` (the source) and `offsite`
//! (the copy), the real replicator sending between them, the lifecycle service's export writing its
//! bundle into the replicated dataset, the simulator taking the restored VM, a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/drill.rs"]
mod rig;
#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::time::Duration;

use futures::StreamExt;
use proxflow_schemas::Message;
use proxflow_schemas::lifecycle::{DrillCompleted, Verdict};
use proxflow_schemas::workflow::WorkflowState;
use rig::{Rig, check, report_of};
use zfs_fixture::zfs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_after_replication_passes_every_check_and_leaves_nothing_behind() {
    let rig = Rig::start("drill-pass", Duration::ZERO).await;
    rig.replicate().await;
    let events = rig
        .ctx
        .bus
        .client
        .subscribe(DrillCompleted::SUBJECT)
        .await
        .unwrap();
    let before = rig.zfs_state("drill-pass-1");
    let vms_before: Vec<u32> = rig
        .pve
        .list_vms()
        .await
        .unwrap()
        .iter()
        .map(|v| v.vmid)
        .collect();

    let record = rig.run("drill", "drill-pass-1", false).await;
    let report = report_of(&record);
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    assert_eq!(report.verdict, Verdict::Pass, "{:#?}", report.checks);
    for name in [
        "lineage", "guid", "rpo", "files", "bundle", "restore", "cleanup",
    ] {
        let found = check(&report, name);
        assert!(!found.is_empty(), "no {name} check: {:#?}", report.checks);
        assert!(found.iter().all(|c| c.passed), "{name}: {found:#?}");
    }
    let files = check(&report, "files")[0];
    // The two data files and the export bundle's, all compared.
    assert!(files.figures["files"].as_u64().unwrap() > 2, "{files:?}");
    assert!(report.rpo_secs.is_some() && report.rto_secs.is_some());
    assert!(report.checksum_secs > 0.0);

    // Nothing left behind: no clone, no snapshot, no VM.
    assert_eq!(rig.zfs_state("drill-pass-1"), before);
    let vms_after: Vec<u32> = rig
        .pve
        .list_vms()
        .await
        .unwrap()
        .iter()
        .map(|v| v.vmid)
        .collect();
    assert_eq!(vms_after, vms_before);

    // The restored VM was created with every NIC down, started, and destroyed (the simulator's
    // journal of what it was asked).
    let journal = rig.sim.handle().journal();
    let created = journal
        .iter()
        .find(|e| e.method == "POST" && e.path.ends_with("/qemu") && e.status == 200)
        .expect("a VM was created");
    let vmid = created.params["vmid"].as_str().map_or_else(
        || created.params["vmid"].as_u64().unwrap(),
        |s| s.parse().unwrap(),
    );
    assert!((9900..=9999).contains(&vmid), "{vmid}");
    let nics: Vec<&str> = created
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("net"))
        .map(|(_, v)| v.as_str().unwrap())
        .collect();
    assert!(!nics.is_empty());
    assert!(nics.iter().all(|n| n.contains("link_down=1")), "{nics:?}");
    assert!(
        journal
            .iter()
            .any(|e| e.path.ends_with(&format!("/qemu/{vmid}/status/start")))
    );
    assert!(
        journal
            .iter()
            .any(|e| e.method == "DELETE" && e.path.ends_with(&format!("/qemu/{vmid}")))
    );

    // A dry run reads the listings and judges lineage, guid and RPO; it clones and creates nothing.
    let creates = |j: &[proxflow_pve_sim::JournalEntry]| {
        j.iter()
            .filter(|e| e.method == "POST" && e.path.ends_with("/qemu"))
            .count()
    };
    let created_before = creates(&rig.sim.handle().journal());
    let dry = rig.run("drill", "drill-pass-dry", true).await;
    assert_eq!(dry.state, WorkflowState::Succeeded, "{:?}", dry.error);
    let dry = report_of(&dry);
    assert!(dry.dry_run && dry.report_path.is_empty());
    let judged: Vec<&str> = dry.checks.iter().map(|c| c.check.as_str()).collect();
    assert!(
        judged.contains(&"lineage") && judged.contains(&"rpo"),
        "{judged:?}"
    );
    assert!(
        !judged.contains(&"files") && !judged.contains(&"restore"),
        "{judged:?}"
    );
    assert_eq!(creates(&rig.sim.handle().journal()), created_before);
    assert_eq!(rig.zfs_state("drill-pass-dry"), before);

    // The report on disk and the event agree with the record.
    let md = std::fs::read_to_string(&report.report_path).unwrap();
    assert!(md.contains(": PASS"), "{md}");
    let mut events = events;
    let msg = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let event: DrillCompleted = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event.report, report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_copy_fails_the_drill_naming_the_check_and_the_file() {
    let rig = Rig::start("drill-tamper", Duration::ZERO).await;
    rig.replicate().await;
    // Someone on the offsite side: readonly off, one file changed, a snapshot taken there.
    let target = rig.fx.target.clone();
    zfs(&["set", "readonly=off", &target]);
    let file = rig.fx.mountpoint(&target).join("two.bin");
    std::fs::write(&file, b"tampered").unwrap();
    rig.fx.snapshot(&target, "evil");
    let before = rig.zfs_state("drill-tamper-1");

    let record = rig.run("drill", "drill-tamper-1", false).await;
    assert_eq!(record.state, WorkflowState::Failed);
    let report = report_of(&record);
    assert_eq!(report.verdict, Verdict::Fail);
    let lineage = check(&report, "lineage");
    assert!(
        lineage
            .iter()
            .any(|c| !c.passed && c.detail.contains("evil")),
        "{lineage:#?}"
    );
    let files = check(&report, "files");
    assert!(
        files
            .iter()
            .any(|c| !c.passed && c.detail.contains("two.bin: content differs")),
        "{files:#?}"
    );
    // The failure is the workflow's error, so the CLI's exit code follows it.
    let error = record.error.unwrap_or_default();
    assert!(
        error.contains("drill failed") && error.contains("two.bin"),
        "{error}"
    );
    assert_eq!(
        rig.zfs_state("drill-tamper-1"),
        before,
        "the drill left something behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_older_than_the_rpo_fails_the_rpo_check() {
    // The drill's clock 30 hours ahead of the snapshot: past the 26 h RPO.
    let rig = Rig::start("drill-rpo", Duration::from_secs(30 * 3600)).await;
    rig.replicate().await;
    let record = rig.run("drill", "drill-rpo-1", false).await;
    let report = report_of(&record);
    assert_eq!(record.state, WorkflowState::Failed);
    let rpo = check(&report, "rpo");
    assert_eq!(rpo.len(), 1);
    assert!(!rpo[0].passed, "{rpo:#?}");
    // Thirty hours less the seconds between the clock being set and the snapshot.
    assert!(rpo[0].figures["age_secs"].as_u64().unwrap() > 29 * 3600);
    // Everything else about the copy is fine.
    assert!(check(&report, "files").iter().all(|c| c.passed));
}
