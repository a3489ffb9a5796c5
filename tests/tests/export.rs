//! The weekly host-config export on real parts: the simulator's host (its API, as the official
//! schema has it), a real nats-server, a zfs-fuse dataset the bundles land in, the lifecycle
//! service running `config_export` workflows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use proxflow_lifecycle::bundle;
use proxflow_lifecycle::export::KIND;
use proxflow_pve::{ConfigChange, PveClient};
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::lifecycle::{ChangeKind, ExportCompleted, ExportReport, JobInput};
use proxflow_schemas::workflow::WorkflowState;
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use tokio_util::sync::CancellationToken;
use zfs_fixture::ZfsFixture;

struct Rig {
    _nats: TestNats,
    engine: Engine,
    clock: ManualClock,
    pve: PveClient,
    client: async_nats::Client,
    zfs: ZfsFixture,
    stop: CancellationToken,
    _sim: proxflow_pve_sim::RunningSim,
}

impl Rig {
    async fn start(tag: &str) -> Self {
        // A Wednesday: the weekly schedule's Sunday slot is past its catch-up, so only the
        // test's own runs export.
        Self::start_at(tag, "2026-12-09T12:00:00Z", 1).await
    }

    /// The rig at `now` with `replicas` lifecycle services.
    async fn start_at(tag: &str, now: &str, replicas: usize) -> Self {
        let zfs = ZfsFixture::new(tag);
        let nats = TestNats::start().expect("nats-server");
        let clock = ManualClock::new(now.parse().unwrap());
        let ctx = nats
            .context("export-e2e")
            .await
            .unwrap()
            .with_clock(clock.shared());
        let (sim, pve) = start_sim(|_| {}).await.expect("simulator");
        let export = proxflow_lifecycle::ExportConfig {
            dataset: zfs.source.clone(),
            pools: vec!["tank".into()],
            keep: 3,
            ..proxflow_lifecycle::ExportConfig::default()
        };
        let stop = CancellationToken::new();
        for i in 0..replicas {
            let ctx = nats
                .context(&format!("lifecycle-{i}"))
                .await
                .unwrap()
                .with_clock(clock.shared());
            tokio::spawn(proxflow_lifecycle::run(
                ctx,
                proxflow_lifecycle::LifecycleSettings {
                    export: export.clone(),
                    drill: proxflow_lifecycle::DrillConfig::default(),
                    // Not what these tests look at: no scheduled health runs.
                    health: proxflow_lifecycle::HealthConfig {
                        enabled: false,
                        ..proxflow_lifecycle::HealthConfig::default()
                    },
                    drill_targets: Vec::new(),
                    pve: pve.clone(),
                },
                stop.clone(),
            ));
        }
        let engine = Engine::new(&ctx).await.unwrap();
        Self {
            _nats: nats,
            engine,
            clock,
            pve,
            client: ctx.bus.client.clone(),
            zfs,
            stop,
            _sim: sim,
        }
    }

    fn root(&self) -> PathBuf {
        self.zfs.mountpoint(&self.zfs.source)
    }

    /// Runs an export to its end (a minute later on the manual clock than the one before).
    async fn export(&self, id: &str, dry_run: bool) -> ExportReport {
        self.clock.advance(Duration::from_secs(60));
        let input = JobInput {
            dry_run,
            requested_by: "test".into(),
        };
        let r = proxflow_e2e::run_workflow(&self.engine, KIND, id, &input).await;
        assert_eq!(r.state, WorkflowState::Succeeded, "{id}: {:?}", r.error);
        serde_json::from_value(r.data["output"].clone()).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn read_all(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_repeats_byte_for_byte_and_names_a_changed_vm_key() {
    let rig = Rig::start("export").await;
    let events = rig
        .client
        .subscribe(ExportCompleted::SUBJECT)
        .await
        .unwrap();

    let first = rig.export("export-t1", false).await;
    assert_eq!(first.previous, None);
    let dir1 = PathBuf::from(&first.dir);
    assert!(dir1.starts_with(rig.root()), "{dir1:?} outside the dataset");
    let v = bundle::verify(&dir1).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.manifest_sha256, first.manifest_sha256);
    let files = read_all(&dir1);
    // The seed host's parts, each from its source.
    let vms = rig.pve.list_vms().await.unwrap();
    assert!(!vms.is_empty());
    for vm in &vms {
        assert!(
            files.contains_key(&format!("vms/{}/config.json", vm.vmid)),
            "VM {}",
            vm.vmid
        );
    }
    for expected in [
        "storage.json",
        "access/acl.json",
        "access/users.json",
        "cluster/firewall/rules.json",
        "pools.json",
        "zfs/pools.json",
        "zfs/datasets.json",
        "REBUILD.md",
    ] {
        assert!(
            files.contains_key(expected),
            "{expected} missing: {:?}",
            files.keys()
        );
    }
    let rebuild = String::from_utf8(files["REBUILD.md"].clone()).unwrap();
    assert!(
        rebuild.contains(&format!("VM {}", vms[0].vmid)),
        "{rebuild}"
    );

    // Nothing changed: the same bytes, file for file, manifest included.
    let second = rig.export("export-t2", false).await;
    assert_eq!(second.previous.as_deref(), Some(first.bundle.as_str()));
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert_ne!(second.dir, first.dir);
    assert_eq!(read_all(Path::new(&second.dir)), files);

    // One VM's memory changes: the diff names that VM and that key, nothing else.
    let vmid = vms[0].vmid;
    let change = ConfigChange {
        set: BTreeMap::from([("memory".to_owned(), "12288".to_owned())]),
        ..ConfigChange::default()
    };
    rig.pve.update_config(vmid, &change).await.unwrap();
    let third = rig.export("export-t3", false).await;
    assert_eq!(third.changes.len(), 1, "{:?}", third.changes);
    let c = &third.changes[0];
    assert_eq!(c.path, format!("vms/{vmid}/config.json"));
    assert_eq!(c.subject, format!("VM {vmid}"));
    assert_eq!(c.change, ChangeKind::Changed);
    assert_eq!(c.keys, ["memory"]);
    // The same, as the event the bus carried.
    let mut events = events;
    let mut last = None;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("export events")
    {
        let e: ExportCompleted = serde_json::from_slice(&msg.payload).unwrap();
        last = Some(e);
        if last.as_ref().is_some_and(|e| e.run == "export-t3") {
            break;
        }
    }
    let event = last.expect("an event");
    assert_eq!(event.run, "export-t3");
    assert_eq!(event.report.changes, third.changes);

    // An edited file fails verification, named.
    let dir3 = PathBuf::from(&third.dir);
    let edited = format!("vms/{vmid}/config.json");
    std::fs::write(dir3.join(&edited), "{\"memory\": 1}\n").unwrap();
    let v = bundle::verify(&dir3).unwrap();
    assert!(!v.ok());
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(
        v.problems[0].to_string().starts_with(&edited),
        "{}",
        v.problems[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_retention_keeps_the_newest() {
    let rig = Rig::start("export-keep").await;
    let dry = rig.export("export-dry", true).await;
    assert!(dry.dry_run && dry.dir.is_empty());
    assert!(dry.files > 0);
    assert!(
        bundle::list(&rig.root()).unwrap().is_empty(),
        "a dry run wrote a bundle"
    );
    let mut names = Vec::new();
    for i in 0..4 {
        names.push(rig.export(&format!("export-k{i}"), false).await.bundle);
    }
    // keep = 3: the oldest went, by name.
    assert_eq!(bundle::list(&rig.root()).unwrap(), names[1..]);
}

/// The schedule: two replicas, down through Sunday's 02:30 slot and back on Monday (within the
/// two-day catch-up), start that slot's export exactly once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_catch_up_a_missed_slot_with_one_export() {
    let rig = Rig::start_at("export-sched", "2026-12-07T09:00:00Z", 2).await;
    let id = "export-20261206T0230Z";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = rig.engine.get(id).await.unwrap();
        if record
            .as_ref()
            .is_some_and(|r| r.state == WorkflowState::Succeeded)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the missed slot's export did not run: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both schedules have looked at the clock several times since (they tick every 2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut runs = Vec::new();
    for state in WorkflowState::ALL {
        runs.extend(rig.engine.list(KIND, state, None).await.unwrap());
    }
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(bundle::list(&rig.root()).unwrap().len(), 1);
}
