//! The quarterly restore drill on real parts: zfs-fuse pools `tank` (the source) and `offsite`
//! (the copy), the real replicator sending between them, the lifecycle service's export writing its
//! bundle into the replicated dataset, the simulator taking the restored VM, a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::time::{Duration, Instant};

use futures::StreamExt;
use proxflow_lifecycle::{DrillConfig, DrillTarget, ExportConfig, LifecycleSettings};
use proxflow_pve::PveClient;
use proxflow_replicator::{JobConfig, ReplicationConfig, Replicator, RunControl};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::lifecycle::{DrillCompleted, DrillReport, JobInput, Verdict};
use proxflow_schemas::workflow::{Origin, WorkflowRecord, WorkflowState};
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use proxflow_zfs::Zfs;
use tokio_util::sync::CancellationToken;
use zfs_fixture::{ZfsFixture, zfs};

const JOB: &str = "drill";

pub struct Rig {
    _nats: TestNats,
    pub ctx: ServiceContext,
    pub engine: Engine,
    pub pve: PveClient,
    pub sim: proxflow_pve_sim::RunningSim,
    pub fx: ZfsFixture,
    pub reports: tempfile::TempDir,
    stop: CancellationToken,
}

impl Rig {
    /// The rig; the lifecycle service's clock is the wall clock moved by `ahead` (snapshots are
    /// stamped by ZFS with the real time).
    pub async fn start(tag: &str, ahead: Duration) -> Self {
        let fx = ZfsFixture::new(tag).with_job(JOB);
        let nats = TestNats::start().expect("nats-server");
        let ctx = nats.context("drill-e2e").await.unwrap();
        let (sim, pve) = start_sim(|c| c.durations.agent_boot = Duration::from_millis(300))
            .await
            .expect("simulator");
        let reports = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(chrono::Utc::now() + ahead);
        let lifecycle_ctx = nats
            .context("lifecycle")
            .await
            .unwrap()
            .with_clock(clock.shared());
        let stop = CancellationToken::new();
        let local = Zfs::local(Duration::from_secs(60));
        tokio::spawn(proxflow_lifecycle::run(
            lifecycle_ctx,
            LifecycleSettings {
                export: ExportConfig {
                    dataset: fx.source.clone(),
                    pools: vec!["tank".into()],
                    ..ExportConfig::default()
                },
                drill: DrillConfig {
                    report_dir: reports.path().to_owned(),
                    agent_timeout: Duration::from_secs(30),
                    ..DrillConfig::default()
                },
                // Not what these tests look at: no scheduled health runs.
                health: proxflow_lifecycle::HealthConfig {
                    enabled: false,
                    ..proxflow_lifecycle::HealthConfig::default()
                },
                drill_targets: vec![DrillTarget {
                    job: JOB.into(),
                    source: fx.source.clone(),
                    target: fx.target.clone(),
                    source_zfs: local.clone(),
                    target_zfs: local,
                }],
                pve: pve.clone(),
            },
            stop.clone(),
        ));
        let engine = Engine::new(&ctx).await.unwrap();
        Self {
            _nats: nats,
            ctx,
            engine,
            pve,
            sim,
            fx,
            reports,
            stop,
        }
    }

    /// Data, an export bundle in the dataset, a snapshot, and one replication to the copy.
    pub async fn replicate(&self) {
        self.fx.write_random("one.bin", 256 << 10);
        self.fx.write_random("two.bin", 64 << 10);
        self.run("export", "export-drill", false).await;
        self.fx.snapshot(&self.fx.source, "s1");
        let replicator = Replicator::new(
            &self.ctx,
            ReplicationConfig {
                jobs: vec![JobConfig {
                    name: JOB.into(),
                    source: self.fx.source.clone(),
                    target: self.fx.target.clone(),
                    command_timeout: Duration::from_secs(60),
                    transfer_timeout: Duration::from_secs(300),
                    ..JobConfig::default()
                }],
                ..ReplicationConfig::default()
            },
        )
        .unwrap();
        replicator
            .run_job(JOB, &RunControl::default())
            .await
            .expect("replication");
    }

    /// Starts workflow `id` of `kind` and waits for its end.
    pub async fn run(&self, kind: &str, id: &str, dry_run: bool) -> WorkflowRecord {
        let kind = if kind == "export" {
            proxflow_lifecycle::export::KIND
        } else {
            proxflow_lifecycle::drill::KIND
        };
        let origin = Origin {
            source: "test".into(),
            reference: id.into(),
            reason: "test".into(),
        };
        let input = JobInput {
            dry_run,
            requested_by: "test".into(),
        };
        self.engine
            .start_kind(kind, id, origin, &input)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(r) = self.engine.get(id).await.unwrap()
                && r.state.is_terminal()
            {
                return r;
            }
            assert!(Instant::now() < deadline, "{id} did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Datasets and snapshots of this test, and the clones of its drill `run`, on both pools
    /// (other tests drill at the same time).
    pub fn zfs_state(&self, run: &str) -> Vec<String> {
        let name = self.fx.source.rsplit('/').next().unwrap().to_owned();
        let clones = format!("pf-drill-{run}-");
        zfs(&[
            "list", "-H", "-t", "all", "-o", "name", "-r", "tank", "offsite",
        ])
        .lines()
        .filter(|l| l.contains(&name) || l.contains(&clones))
        .map(str::to_owned)
        .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn report_of(record: &WorkflowRecord) -> DrillReport {
    let value = record
        .data
        .get("report")
        .cloned()
        .expect("the drill's report in its record");
    serde_json::from_value(value).unwrap()
}

fn check<'a>(
    report: &'a DrillReport,
    name: &str,
) -> Vec<&'a proxflow_schemas::lifecycle::DrillCheck> {
    report.checks.iter().filter(|c| c.check == name).collect()
}

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
