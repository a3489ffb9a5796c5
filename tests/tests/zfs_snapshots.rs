//! Snapshot policies on a real ZFS dataset (zfs-fuse) with a real nats-server and a fixed clock: a
//! simulated month of daily snapshots leaves exactly the retention grid, foreign and held snapshots
//! and young pre-change snapshots are never pruned, the validity check reports a missing snapshot
//! and a stale newest one (events and gauges), and dry-run changes nothing but shows the plan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::{Clock, ManualClock};
use proxflow_schemas::snapshot::{
    PreChangeRequest, SnapshotCheck, SnapshotKind, SnapshotTaken, SnapshotTarget, SnapshotsPruned,
};
use proxflow_snapshotter::retention::Grid;
use proxflow_snapshotter::service::{plan_all, render_plans};
use proxflow_snapshotter::{SnapshotConfig, Snapshotter, request_prechange};
use proxflow_testkit::TestNats;
use tokio_util::sync::CancellationToken;
use zfs_fixture::ZfsFixture;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

use zfs_fixture::snapshot_config as config;

async fn last_event<T: serde::de::DeserializeOwned>(
    ctx: &ServiceContext,
    subject: &str,
) -> Option<T> {
    let stream = ctx.bus.js.get_stream("PF_EVT").await.unwrap();
    let msg = stream.get_last_raw_message_by_subject(subject).await.ok()?;
    Some(serde_json::from_slice(&msg.payload).unwrap())
}

fn daily(day: u32) -> String {
    format!("pf-daily-202611{day:02}T030000Z")
}

/// Thirty passes, one a day at 03:00:30 from 2026-11-01, with the default grid (daily 7, weekly 4,
/// monthly 3). 2026-11-30 is a Monday, so the ISO weeks at the end are 11-30 (alone), 11-23..29,
/// 11-16..22 and 11-09..15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_daily_snapshots_keeps_exactly_the_grid() {
    let fx = ZfsFixture::new("month");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("month-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-01T03:00:30Z"));
    // Not proxflow's: never pruned whatever its age.
    fx.snapshot(&fx.source, "manual-before-upgrade");
    let s = Snapshotter::new(
        &ctx.clone().with_clock(clock.shared()),
        config(&fx.source, Grid::default()),
        None,
    )
    .unwrap();

    for day in 1..=30 {
        let pass = s.pass().await;
        let t = &pass.targets[0];
        assert!(t.errors.is_empty(), "day {day}: {:?}", t.errors);
        assert_eq!(t.created.as_deref(), Some(daily(day).as_str()), "day {day}");
        // A second pass the same day takes nothing more.
        clock.advance(Duration::from_secs(60));
        assert_eq!(s.pass().await.targets[0].created, None, "day {day}");
        clock.advance(DAY - Duration::from_secs(60));
    }

    let mut expected = vec!["manual-before-upgrade".to_owned()];
    // weekly: 11-15 (week 46), 11-22 (47); daily 7: 11-24..30 (which also hold weeks 48/49 and the
    // month).
    expected.extend([15, 22, 24, 25, 26, 27, 28, 29, 30].map(daily));
    assert_eq!(fx.names(&fx.source), expected);

    // Every day's snapshot was announced; the pruned ones too.
    let taken: SnapshotTaken = last_event(&ctx, "pf.evt.snapshot.taken").await.unwrap();
    assert_eq!(taken.snapshot, daily(30));
    assert_eq!(taken.kind, SnapshotKind::Scheduled);
    let pruned: SnapshotsPruned = last_event(&ctx, "pf.evt.snapshot.pruned").await.unwrap();
    assert_eq!(pruned.pruned, [daily(8), daily(23)]);
    // The weekly check ran on Mondays and found everything in place.
    let check: SnapshotCheck = last_event(&ctx, "pf.evt.snapshot.check_passed")
        .await
        .unwrap();
    assert!(check.ok && check.missing.is_empty(), "{check:?}");
    assert!(
        last_event::<SnapshotCheck>(&ctx, "pf.evt.snapshot.check_failed")
            .await
            .is_none()
    );
    let metrics = ctx.metrics.encode();
    let target = format!("zfs/{}", fx.source);
    assert!(
        metrics.contains(&format!(
            "proxflow_snapshot_missing{{policy=\"data\",target=\"{target}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxflow_snapshots_pruned_total{policy=\"data\"} 21"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_and_young_prechange_snapshots_survive_pruning() {
    let fx = ZfsFixture::new("protect");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("protect-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-01T03:00:30Z"));
    let grid = Grid {
        hourly: 0,
        daily: 2,
        weekly: 0,
        monthly: 0,
    };
    let s = Arc::new(
        Snapshotter::new(
            &ctx.clone().with_clock(clock.shared()),
            config(&fx.source, grid),
            None,
        )
        .unwrap(),
    );
    let stop = CancellationToken::new();
    let responder = tokio::spawn(s.clone().serve_prechange(
        ctx.bus.client.clone(),
        ctx.health.clone(),
        stop.clone(),
    ));

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ctx.health.report().1.get("snapshotter.prechange") != Some(&true) {
        assert!(
            std::time::Instant::now() < deadline,
            "the responder never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.pass().await; // 11-01
    // An operator holds the first daily.
    zfs_fixture::zfs(&["hold", "keep", &format!("{}@{}", fx.source, daily(1))]);
    // A patch run asks for a pre-change snapshot over NATS, with a 3-day TTL.
    let request = PreChangeRequest {
        request_id: "patch-run-48".into(),
        target: SnapshotTarget::Dataset {
            dataset: fx.source.clone(),
        },
        reason: "kernel update".into(),
        ttl_secs: Some(3 * 24 * 3600),
    };
    let reply = request_prechange(&ctx.bus.client, &request, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reply.error, None);
    let name = reply.snapshot.clone().unwrap();
    assert_eq!(name, "pf-pre-patch-run-48-20261101T030030Z");
    assert!(!reply.existing);
    assert_eq!(reply.expires_at, Some(utc("2026-11-04T03:00:30Z")));
    assert!(fx.names(&fx.source).contains(&name));
    // The expiry travels with the snapshot (a user property), not in the snapshotter's memory.
    assert_eq!(
        zfs_fixture::zfs(&[
            "get",
            "-H",
            "-o",
            "value",
            "proxflow:expires",
            &format!("{}@{name}", fx.source)
        ])
        .trim(),
        utc("2026-11-04T03:00:30Z").timestamp().to_string()
    );
    // Asking again with the same id returns the same snapshot.
    clock.advance(Duration::from_secs(600));
    let again = request_prechange(&ctx.bus.client, &request, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.snapshot.as_deref(), Some(name.as_str()));
    assert!(again.existing);
    let taken: SnapshotTaken = last_event(&ctx, "pf.evt.snapshot.taken").await.unwrap();
    assert_eq!(taken.kind, SnapshotKind::PreChange);
    assert_eq!(taken.reference, "patch-run-48");

    // Two days on (11-03): the grid (daily 2) keeps 11-02 and 11-03 and lets 11-01 go, but it is
    // held; the pre-change snapshot is within its TTL.
    let mut last = None;
    for _ in 0..2 {
        clock.advance(DAY);
        last = Some(s.pass().await);
    }
    let t = &last.unwrap().targets[0];
    assert!(t.pruned.is_empty(), "{t:?}");
    let protected: Vec<(&str, &str)> = t
        .plan
        .protected
        .iter()
        .map(|p| (p.name.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(protected[0], (daily(1).as_str(), "held"));
    assert_eq!(protected[1].0, name);
    assert!(
        protected[1]
            .1
            .starts_with("pre-change, kept until 2026-11-04T03:00:30")
    );
    let names = fx.names(&fx.source);
    for kept in [daily(1), daily(2), daily(3), name.clone()] {
        assert!(names.contains(&kept), "{kept} missing from {names:?}");
    }

    // 11-04, past its TTL: the pre-change snapshot goes with 11-02; the held daily stays.
    clock.advance(DAY);
    let pass = s.pass().await;
    let mut pruned = pass.targets[0].pruned.clone();
    pruned.sort();
    assert_eq!(pruned, [daily(2), name.clone()]);
    assert_eq!(fx.names(&fx.source), [daily(1), daily(3), daily(4)]);
    let event: SnapshotsPruned = last_event(&ctx, "pf.evt.snapshot.pruned").await.unwrap();
    assert!(
        event
            .protected
            .iter()
            .any(|p| p.starts_with(&daily(1)) && p.contains("held")),
        "{event:?}"
    );

    // A request for something that does not exist gets an error reply, not silence.
    let bad = request_prechange(
        &ctx.bus.client,
        &PreChangeRequest {
            target: SnapshotTarget::Dataset {
                dataset: "tank/does-not-exist".into(),
            },
            ..request.clone()
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(bad.snapshot.is_none());
    assert!(bad.error.unwrap().contains("does not exist"));
    stop.cancel();
    responder.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validity_check_reports_missing_and_stale_snapshots_and_dry_run_changes_nothing() {
    let fx = ZfsFixture::new("check");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("check-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-02T03:00:30Z"));
    let grid = Grid {
        hourly: 0,
        daily: 7,
        weekly: 0,
        monthly: 0,
    };
    let s = Snapshotter::new(
        &ctx.clone().with_clock(clock.shared()),
        config(&fx.source, grid),
        None,
    )
    .unwrap();
    for _ in 0..7 {
        s.pass().await;
        clock.advance(DAY);
    }
    let check: SnapshotCheck = last_event(&ctx, "pf.evt.snapshot.check_passed")
        .await
        .unwrap();
    assert!(check.ok);
    // 11-02 .. 11-08 exist. Someone destroys 11-05.
    zfs_fixture::zfs(&["destroy", &format!("{}@{}", fx.source, daily(5))]);
    // Monday 11-09 07:00, past the weekly check slot (06:00): the pass takes 11-09 and checks.
    clock.set(utc("2026-11-09T07:00:00Z"));
    let pass = s.pass().await;
    assert_eq!(pass.targets[0].created.as_deref(), Some(daily(9).as_str()));
    assert_eq!(pass.checks.len(), 1);
    let check = &pass.checks[0];
    assert!(!check.ok);
    assert_eq!(check.missing, [daily(5)]);
    assert_eq!(check.expected, 7);
    let published: SnapshotCheck = last_event(&ctx, "pf.evt.snapshot.check_failed")
        .await
        .unwrap();
    assert_eq!(published.missing, [daily(5)]);
    let target = format!("zfs/{}", fx.source);
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "proxflow_snapshot_missing{{policy=\"data\",target=\"{target}\"}} 1"
        )),
        "{metrics}"
    );

    // A week later, with nothing taken since (a dry-run instance: it plans but changes nothing),
    // the newest snapshot is past the 26 h SLO and the whole last week is missing.
    clock.set(utc("2026-11-16T07:00:00Z"));
    let before = fx.names(&fx.source);
    let dry = Snapshotter::new(
        &ctx.clone().with_clock(clock.shared()),
        SnapshotConfig {
            dry_run: true,
            ..config(&fx.source, grid)
        },
        None,
    )
    .unwrap();
    let pass = dry.pass().await;
    let t = &pass.targets[0];
    assert!(t.created.is_none() && t.pruned.is_empty(), "{t:?}");
    assert_eq!(t.plan.create.as_deref(), Some(daily(16).as_str()));
    assert_eq!(fx.names(&fx.source), before, "dry run changed nothing");
    let check = &pass.checks[0];
    assert!(!check.ok);
    assert!(check.newest_age_secs.unwrap() > check.slo_max_age_secs);
    assert_eq!(check.newest.as_deref(), Some(daily(9).as_str()));
    assert!(check.missing.contains(&daily(10)));

    // `proxflow snapshot plan` prints the same plan.
    let plans = plan_all(&config(&fx.source, grid), dry.backends(), clock.now())
        .await
        .unwrap();
    let text = render_plans(&plans);
    assert!(text.contains(&format!("create  {}", daily(16))), "{text}");
    assert!(text.contains(&format!("prune   {}", daily(2))), "{text}");
    assert_eq!(fx.names(&fx.source), before);
}

/// Copies of one pre-change request arriving together — a caller's retry racing its original, at
/// two snapshotter replicas — take one snapshot and all get its name. Without the pre-change lease
/// each copy finds no snapshot and takes its own (or fails on the name the other just took).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_prechange_request_take_one_snapshot() {
    let fx = ZfsFixture::new("prechange-race");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("prechange-race-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-01T03:00:30Z"));
    let replica = || async {
        Snapshotter::new(
            &ctx.clone().with_clock(clock.shared()),
            config(&fx.source, Grid::default()),
            None,
        )
        .unwrap()
    };
    let (one, two) = (replica().await, replica().await);
    let request = PreChangeRequest {
        request_id: "patch-run-49".into(),
        target: SnapshotTarget::Dataset {
            dataset: fx.source.clone(),
        },
        reason: "kernel update".into(),
        ttl_secs: None,
    };
    let replies = futures::future::join_all(
        (0..6).map(|i| if i % 2 == 0 { &one } else { &two }.prechange(&request)),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.error, None, "{replies:#?}");
    }
    let names: std::collections::BTreeSet<_> = replies
        .iter()
        .map(|r| r.snapshot.clone().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{replies:#?}");
    assert_eq!(replies.iter().filter(|r| !r.existing).count(), 1);
    let on_disk: Vec<String> = fx
        .names(&fx.source)
        .into_iter()
        .filter(|n| n.starts_with("pf-pre-"))
        .collect();
    assert_eq!(on_disk, names.into_iter().collect::<Vec<_>>());
}

/// A pass cut short by shutdown gives its dataset lease back at once: the snapshotter's scheduled
/// pass is pruning under the dataset's lease when shutdown comes, the prune (a `zfs destroy` made to
/// hang) outlives the grace period, and once `run` returns the lease is gone from `pf_locks` instead
/// of blocking the replicator for 15 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_abandoned_at_shutdown_releases_its_dataset_lease() {
    let fx = ZfsFixture::new("abandon");
    let nats = TestNats::start().expect("nats-server");
    let clock = ManualClock::new(utc("2026-11-20T03:10:00Z"));
    let mut ctx = nats
        .context("abandon-test")
        .await
        .unwrap()
        .with_clock(clock.shared());
    ctx.shutdown_grace = Duration::from_millis(500);
    // Two old dailies beyond a one-daily grid: the pass prunes, and the first destroy hangs.
    fx.snapshot(&fx.source, &daily(1));
    fx.snapshot(&fx.source, &daily(2));
    let mut config = config(
        &fx.source,
        Grid {
            hourly: 0,
            daily: 1,
            weekly: 0,
            monthly: 0,
        },
    );
    config.zfs_command = [
        "sh",
        "-c",
        r#"if [ "$2" = destroy ]; then sleep 30; fi; exec "$@""#,
        "zfs-hanging-destroy",
    ]
    .map(String::from)
    .to_vec();
    config.zfs_timeout = Duration::from_secs(60);
    let stop = CancellationToken::new();
    let service = tokio::spawn(proxflow_snapshotter::run(
        ctx.clone(),
        proxflow_snapshotter::SnapshotterSettings { config, pve: None },
        stop.clone(),
    ));
    let key = proxflow_schemas::names::key::dataset_lease(&fx.source);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ctx.leases.holder(&key).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pass never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), service)
        .await
        .expect("run returns after the grace period")
        .unwrap()
        .unwrap();
    assert_eq!(ctx.leases.holder(&key).await.unwrap(), None);
}
