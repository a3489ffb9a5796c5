//! The drill rig: zfs-fuse pools `tank` (the source) and `offsite` (the copy), the real replicator
//! sending between them, the lifecycle service (export + drill) on a clock the test may move ahead,
//! the simulator taking the restored VM, a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use proxflow_lifecycle::{DrillConfig, DrillTarget, ExportConfig, LifecycleSettings};
use proxflow_pve::PveClient;
use proxflow_replicator::{JobConfig, ReplicationConfig, Replicator, RunControl};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::lifecycle::{DrillCheck, DrillReport, JobInput};
use proxflow_schemas::workflow::WorkflowRecord;
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use proxflow_zfs::Zfs;
use tokio_util::sync::CancellationToken;

use crate::zfs_fixture::{ZfsFixture, zfs};

/// The replication job drilled.
pub const JOB: &str = "drill";

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
        Self::start_with(tag, ahead, |_| {}).await
    }

    /// As [`Rig::start`], with the simulator's configuration adjusted by `tweak_sim`.
    pub async fn start_with(
        tag: &str,
        ahead: Duration,
        tweak_sim: impl FnOnce(&mut proxflow_pve_sim::SimConfig),
    ) -> Self {
        let fx = ZfsFixture::new(tag).with_job(JOB);
        let nats = TestNats::start().expect("nats-server");
        let ctx = nats.context("drill-e2e").await.unwrap();
        let (sim, pve) = start_sim(|c| {
            c.durations.agent_boot = Duration::from_millis(300);
            tweak_sim(c);
        })
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
                // Not what these tests look at: no scheduled health runs.
                health: proxflow_lifecycle::HealthConfig {
                    enabled: false,
                    ..proxflow_lifecycle::HealthConfig::default()
                },
                drill: DrillConfig {
                    report_dir: reports.path().to_owned(),
                    agent_timeout: Duration::from_secs(30),
                    ..DrillConfig::default()
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

    /// Starts workflow `id` (`"export"` or a drill) and waits for its end.
    pub async fn run(&self, kind: &str, id: &str, dry_run: bool) -> WorkflowRecord {
        let kind = if kind == "export" {
            proxflow_lifecycle::export::KIND
        } else {
            proxflow_lifecycle::drill::KIND
        };
        let input = JobInput {
            dry_run,
            requested_by: "test".into(),
        };
        proxflow_e2e::run_workflow(&self.engine, kind, id, &input).await
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

pub fn check<'a>(report: &'a DrillReport, name: &str) -> Vec<&'a DrillCheck> {
    report.checks.iter().filter(|c| c.check == name).collect()
}
