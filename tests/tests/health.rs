//! Disk and pool health on real parts: a real nats-server, the simulator's host (its disks and
//! their SMART health), a zfs-fuse mirror pool of this test's own (two file vdevs, destroyed at
//! the end even on a panic), the lifecycle service running `disk_health` and `pool_scrub`.
//!
//! Healthy first; then a mirror half taken offline (`zpool offline`) is named — pool and vdev — in
//! `pf.evt.health.degraded` and `proxflow_pool_healthy{pool}` reads 0; a disk the simulator fails
//! is named; a scrub is started, waited for with durable timers and read back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::health::{
    CheckMode, DISK_HEALTH_KIND, FindingKind, HealthDegraded, HealthInput, HealthReport,
    POOL_SCRUB_KIND, ScanState, ScrubInput, ScrubReport,
};
use proxflow_schemas::workflow::{Origin, WorkflowRecord, WorkflowState};
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use tokio_util::sync::CancellationToken;

const HINT: &str = "a real ZFS is needed: run `deploy/dev/install-tools.sh zfs` as root (installs \
                    zfs-fuse and starts its daemon)";

fn zpool(args: &[&str]) -> (bool, String) {
    let out = Command::new("zpool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("zpool cannot run ({e}); {HINT}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// This test's own mirror pool on two sparse files; destroyed when dropped, panic or not. The
/// shared pools (`tank`, `offsite`) are never touched.
struct MirrorPool {
    name: String,
    vdevs: [PathBuf; 2],
    _dir: tempfile::TempDir,
}

impl MirrorPool {
    fn create() -> Self {
        let name = format!("pfhealth{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let vdevs = ["a.img", "b.img"].map(|f| dir.path().join(f));
        for v in &vdevs {
            // zfs-fuse wants at least 64 MiB per vdev.
            std::fs::File::create(v)
                .unwrap()
                .set_len(100 << 20)
                .unwrap();
        }
        // A leftover of a crashed run with the same pid.
        let _ = zpool(&["destroy", "-f", &name]);
        let (ok, out) = zpool(&[
            "create",
            &name,
            "mirror",
            vdevs[0].to_str().unwrap(),
            vdevs[1].to_str().unwrap(),
        ]);
        assert!(ok, "zpool create {name}: {out}; {HINT}");
        Self {
            name,
            vdevs,
            _dir: dir,
        }
    }

    fn vdev(&self, i: usize) -> &str {
        self.vdevs[i].to_str().unwrap()
    }
}

impl Drop for MirrorPool {
    fn drop(&mut self) {
        for _ in 0..5 {
            let (ok, _) = zpool(&["destroy", "-f", &self.name]);
            if ok || !zpool(&["list", &self.name]).0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!("could not destroy test pool {}", self.name);
    }
}

struct Rig {
    _nats: TestNats,
    engine: Engine,
    metrics: proxflow_runtime::ops::Metrics,
    client: async_nats::Client,
    sim: proxflow_pve_sim::RunningSim,
    stop: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Rig {
    async fn start(pool: &str) -> Self {
        let nats = TestNats::start().expect("nats-server");
        let (sim, pve) = start_sim(|_| {}).await.expect("simulator");
        let ctx = nats.context("lifecycle").await.unwrap();
        let metrics = ctx.metrics.clone();
        let health = proxflow_lifecycle::HealthConfig {
            // Runs by hand only: the schedules would add their own runs.
            enabled: false,
            pools: vec![pool.to_owned()],
            scrub_poll: Duration::from_secs(1),
            scrub_timeout: Duration::from_secs(120),
            ..proxflow_lifecycle::HealthConfig::default()
        };
        let stop = CancellationToken::new();
        tokio::spawn(proxflow_lifecycle::run(
            ctx,
            proxflow_lifecycle::LifecycleSettings {
                export: proxflow_lifecycle::ExportConfig::default(),
                drill: proxflow_lifecycle::DrillConfig::default(),
                health,
                drill_targets: Vec::new(),
                pve,
            },
            stop.clone(),
        ));
        let observer = nats.context("health-e2e").await.unwrap();
        Self {
            engine: Engine::new(&observer).await.unwrap(),
            client: observer.bus.client.clone(),
            _nats: nats,
            metrics,
            sim,
            stop,
        }
    }

    async fn run(&self, kind: &str, id: &str, input: &impl serde::Serialize) -> WorkflowRecord {
        let origin = Origin {
            source: "test".into(),
            reference: id.into(),
            reason: "test".into(),
        };
        self.engine
            .start_kind(kind, id, origin, input)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(r) = self.engine.get(id).await.unwrap() {
                match r.state {
                    WorkflowState::Succeeded => return r,
                    WorkflowState::Failed | WorkflowState::Cancelled => {
                        panic!("{id} {:?}: {:?}", r.state, r.error)
                    }
                    _ => {}
                }
            }
            assert!(Instant::now() < deadline, "{id} did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check(&self, id: &str) -> HealthReport {
        let input = HealthInput {
            mode: CheckMode::Daily,
            requested_by: "test".into(),
        };
        let r = self.run(DISK_HEALTH_KIND, id, &input).await;
        serde_json::from_value(r.data["output"].clone()).unwrap()
    }

    /// The value of the exposed series `series` (`name{labels}`), if exposed.
    fn gauge(&self, series: &str) -> Option<f64> {
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

async fn next_degraded(sub: &mut async_nats::Subscriber, run: &str) -> HealthDegraded {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no degraded event for {run}"))
            .unwrap();
        let e: HealthDegraded = serde_json::from_slice(&msg.payload).unwrap();
        if e.run == run {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_mirror_a_failed_disk_and_a_scrub_are_named_measured_and_read_back() {
    let pool = MirrorPool::create();
    let rig = Rig::start(&pool.name).await;
    let mut degraded = rig.client.subscribe(HealthDegraded::SUBJECT).await.unwrap();
    let healthy_series = format!("proxflow_pool_healthy{{pool=\"{}\"}}", pool.name);

    // Healthy: the fresh mirror and the simulator's two passing disks.
    let first = rig.check("health-t1").await;
    assert!(first.healthy, "{:?}", first.findings);
    assert_eq!(first.pools.len(), 1);
    assert_eq!(first.pools[0].state, "ONLINE");
    assert_eq!(first.pools[0].vdevs.len(), 4, "{:?}", first.pools[0].vdevs);
    assert_eq!(first.disks.len(), 2);
    assert!(first.disks.iter().all(|d| d.health == "PASSED"));
    assert_eq!(rig.gauge(&healthy_series), Some(1.0));
    assert!(rig.gauge("proxflow_health_last_check_timestamp").unwrap() > 0.0);

    // One half offline: DEGRADED, the pool and the vdev named, the gauge at 0.
    let (ok, out) = zpool(&["offline", &pool.name, pool.vdev(1)]);
    assert!(ok, "{out}");
    let second = rig.check("health-t2").await;
    assert!(!second.healthy);
    assert_eq!(second.pools[0].state, "DEGRADED");
    let event = next_degraded(&mut degraded, "health-t2").await;
    assert!(
        event
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::PoolState && f.pool.as_deref() == Some(&pool.name)),
        "{:?}",
        event.findings
    );
    let offline = event
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::VdevState)
        .expect("the offline vdev is named");
    assert_eq!(offline.vdev.as_deref(), Some(pool.vdev(1)));
    assert!(offline.detail.contains("OFFLINE"), "{}", offline.detail);
    assert_eq!(rig.gauge(&healthy_series), Some(0.0));
    let (ok, out) = zpool(&["online", &pool.name, pool.vdev(1)]);
    assert!(ok, "{out}");

    // A disk failing SMART, set through the simulator's hook.
    rig.sim
        .handle()
        .set_disk_health(&proxflow_pve_sim::DiskHealth {
            devpath: "/dev/nvme1n1".into(),
            health: Some("FAILED".into()),
            wearout: Some(5),
        })
        .unwrap();
    let third = rig.check("health-t3").await;
    let event = next_degraded(&mut degraded, "health-t3").await;
    let kinds: Vec<(FindingKind, Option<&str>)> = event
        .findings
        .iter()
        .map(|f| (f.kind, f.disk.as_deref()))
        .collect();
    assert!(
        kinds.contains(&(FindingKind::DiskFailed, Some("/dev/nvme1n1"))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(FindingKind::DiskWearout, Some("/dev/nvme1n1"))),
        "{kinds:?}"
    );
    assert!(
        !third
            .findings
            .iter()
            .any(|f| f.disk.as_deref() == Some("/dev/nvme0n1"))
    );
    assert_eq!(
        rig.gauge("proxflow_disk_healthy{disk=\"/dev/nvme1n1\"}"),
        Some(0.0)
    );
    assert_eq!(
        rig.gauge("proxflow_disk_wearout_percent{disk=\"/dev/nvme1n1\"}"),
        Some(5.0)
    );

    // A scrub: started, waited for with a durable timer, its result read back.
    let input = ScrubInput {
        pools: vec![pool.name.clone()],
        requested_by: "test".into(),
    };
    let record = rig.run(POOL_SCRUB_KIND, "scrub-t1", &input).await;
    assert!(
        record.steps.iter().any(|s| s.name == "wait.0"),
        "no durable wait: {:?}",
        record.steps.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let report: ScrubReport = serde_json::from_value(record.data["output"].clone()).unwrap();
    let scrub = &report.pools[0];
    assert_eq!(scrub.pool, pool.name);
    assert!(scrub.error.is_none(), "{:?}", scrub.error);
    assert!(scrub.finished, "{scrub:?}");
    assert!(!scrub.already_running);
    assert_eq!(scrub.scan.state, ScanState::Finished);
    assert_eq!(scrub.scan.errors, Some(0));
    assert!(scrub.scan.duration_secs.is_some(), "{:?}", scrub.scan);
    let ended = scrub.scan.ended_at.expect("the scrub's end is read back");
    let scrub_series = format!(
        "proxflow_pool_last_scrub_timestamp{{pool=\"{}\"}}",
        pool.name
    );
    assert_eq!(rig.gauge(&scrub_series), Some(ended.timestamp() as f64));
    assert_eq!(
        rig.gauge(&format!(
            "proxflow_pool_scrub_errors{{pool=\"{}\"}}",
            pool.name
        )),
        Some(0.0)
    );
    drop(rig);
}
