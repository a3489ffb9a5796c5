//! VM snapshots through the Proxmox simulator (which validates every request against the official
//! API schema, snapshot names included) with a real nats-server: scheduled by tag, pruned by the
//! grid, foreign snapshots left alone, and pre-change requests over NATS answered by the running
//! service, kept for their TTL and pruned after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proxflow_pve::PveClient;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::ManualClock;
use proxflow_schemas::snapshot::{PreChangeRequest, SnapshotKind, SnapshotTaken, SnapshotTarget};
use proxflow_snapshotter::retention::Grid;
use proxflow_snapshotter::{PolicyConfig, SnapshotConfig, Snapshotter, Targets, request_prechange};
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use tokio_util::sync::CancellationToken;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn daily(day: u32) -> String {
    format!("pf-daily-202611{day:02}T030000Z")
}

fn policy(targets: Targets) -> SnapshotConfig {
    SnapshotConfig {
        policies: vec![PolicyConfig {
            name: "k3s".into(),
            targets,
            schedule: "daily@03:00".into(),
            retention: Grid {
                hourly: 0,
                daily: 2,
                weekly: 0,
                monthly: 0,
            },
            ..PolicyConfig::default()
        }],
        ..SnapshotConfig::default()
    }
}

async fn names(pve: &PveClient, vmid: u32) -> Vec<String> {
    let mut names: Vec<String> = pve
        .snapshots(vmid)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| !s.is_current())
        .map(|s| s.name)
        .collect();
    names.sort();
    names
}

async fn last_event<T: serde::de::DeserializeOwned>(ctx: &ServiceContext, subject: &str) -> T {
    let stream = ctx.bus.js.get_stream("PF_EVT").await.unwrap();
    let msg = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_snapshots_are_scheduled_by_tag_and_pruned_by_the_grid() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("vm-snapshots").await.unwrap();
    let (_sim, pve) = start_sim(|_| {}).await.expect("simulator");
    // An operator's snapshot on one of the VMs.
    let upid = pve
        .create_snapshot(101, "before-upgrade", Some("by hand"), false)
        .await
        .unwrap();
    pve.wait_task(&upid, None).await.unwrap();

    let clock = ManualClock::new(utc("2026-11-01T03:00:30Z"));
    let s = Snapshotter::new(
        &ctx.clone().with_clock(clock.shared()),
        policy(Targets {
            tags: vec!["k8s-node".into()],
            ..Targets::default()
        }),
        Some(pve.clone()),
    )
    .unwrap();
    for day in 1..=4 {
        let pass = s.pass().await;
        // The seed's three k3s VMs carry the tag; the template (9000) has none.
        let vms: Vec<String> = pass.targets.iter().map(|t| t.target.to_string()).collect();
        assert_eq!(vms, ["vm/101", "vm/102", "vm/103"], "day {day}");
        for t in &pass.targets {
            assert!(t.errors.is_empty(), "{t:?}");
            assert_eq!(t.created.as_deref(), Some(daily(day).as_str()));
        }
        clock.advance(DAY);
    }
    assert_eq!(
        names(&pve, 101).await,
        ["before-upgrade".to_owned(), daily(3), daily(4)]
    );
    for vmid in [102, 103] {
        assert_eq!(names(&pve, vmid).await, [daily(3), daily(4)], "vm {vmid}");
    }
    assert!(
        names(&pve, 9000).await.is_empty(),
        "untagged VMs are not snapshotted"
    );
    let taken: SnapshotTaken = last_event(&ctx, "pf.evt.snapshot.taken").await;
    assert_eq!(taken.snapshot, daily(4));
    assert_eq!(taken.target, SnapshotTarget::Vm { vmid: 103 });
    assert!(
        ctx.metrics
            .encode()
            .contains("proxflow_snapshots_pruned_total{policy=\"k3s\"} 6")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prechange_request_over_nats_is_honoured_and_kept_for_its_ttl() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("vm-prechange").await.unwrap();
    let (_sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let clock = ManualClock::new(utc("2026-11-01T03:00:30Z"));
    // The service as `proxflow serve snapshotter` runs it, answering pre-change requests on the
    // bus (without policies of its own, so that the passes below are the only ones).
    let stop = CancellationToken::new();
    let service = tokio::spawn(proxflow_snapshotter::run(
        ctx.clone().with_clock(clock.shared()),
        proxflow_snapshotter::SnapshotterSettings {
            config: SnapshotConfig::default(),
            pve: Some(pve.clone()),
        },
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctx.health.report().1.get("snapshotter.prechange") != Some(&true) {
        assert!(Instant::now() < deadline, "the responder never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let request = PreChangeRequest {
        request_id: "patch-run-48/vm-101".into(),
        target: SnapshotTarget::Vm { vmid: 101 },
        reason: "weekly security patching".into(),
        ttl_secs: None,
    };
    let reply = request_prechange(&ctx.bus.client, &request, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reply.error, None, "{reply:?}");
    let name = reply.snapshot.clone().unwrap();
    // The id does not fit a Proxmox name as is ('/'): a readable part plus a hash of the exact id.
    assert!(name.starts_with("pf-pre-patch-r"), "{name}");
    assert!(name.ends_with("-20261101T030030Z"), "{name}");
    // Default TTL: 7 days.
    assert_eq!(reply.expires_at, Some(utc("2026-11-08T03:00:30Z")));
    let snap = pve
        .snapshots(101)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .expect("the snapshot exists in Proxmox");
    assert!(snap.description.contains("weekly security patching"));
    assert!(snap.description.contains("expires=2026-11-08T03:00:30Z"));
    let taken: SnapshotTaken = last_event(&ctx, "pf.evt.snapshot.taken").await;
    assert_eq!(taken.kind, SnapshotKind::PreChange);
    assert_eq!(taken.reference, "patch-run-48/vm-101");

    // The same request again (a retried workflow step) gets the same snapshot.
    let again = request_prechange(&ctx.bus.client, &request, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.snapshot.as_deref(), Some(name.as_str()));
    assert!(again.existing);
    // A VM that does not exist: an error in the reply.
    let missing = request_prechange(
        &ctx.bus.client,
        &PreChangeRequest {
            target: SnapshotTarget::Vm { vmid: 4242 },
            ..request.clone()
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(missing.snapshot.is_none());
    assert!(missing.error.is_some());

    // Pruning (a second instance on the same clock, so the passes are driven here): within its
    // TTL the pre-change snapshot stays while the grid prunes dailies around it; after, it goes.
    let s = Snapshotter::new(
        &ctx.clone().with_clock(clock.shared()),
        policy(Targets {
            vms: vec![101],
            ..Targets::default()
        }),
        Some(pve.clone()),
    )
    .unwrap();
    for _ in 0..4 {
        s.pass().await;
        clock.advance(DAY);
    }
    // Now 11-05 03:00:30: dailies 11-03 and 11-04 kept, the pre-change snapshot too.
    let now = names(&pve, 101).await;
    assert_eq!(now, [daily(3), daily(4), name.clone()]);
    clock.advance(3 * DAY);
    // 11-08 03:00:30, the moment it expires: it goes (and 11-03 with it).
    s.pass().await;
    let now = names(&pve, 101).await;
    assert_eq!(
        now,
        [daily(4), daily(8)],
        "the expired pre-change snapshot was pruned"
    );
    stop.cancel();
    service.await.unwrap().unwrap();
}
