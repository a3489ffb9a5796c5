//! The monthly capacity review end to end: a month of capacity samples is published by the real
//! monitor polling the Proxmox simulator on a manual clock (every 6 hours for 30 days, the k3s
//! nodes' memory rising by 1 % of their size a day), then the capacity service's engine runs a
//! `capacity_review` workflow over that month on a real nats-server. Its trend and days to 70 %
//! must match a least-squares fit computed here from the same series, its memory commitment the
//! simulator's VMs, and its event the report file it wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{Timelike, Utc};
use proxflow_capacity::{CapacityConfig, CapacitySettings, Monitor};
use proxflow_pve_sim::load::Load;
use proxflow_runtime::bus::history;
use proxflow_runtime::clock::{Clock, ManualClock};
use proxflow_runtime::workflow::{Engine, WorkflowStore};
use proxflow_schemas::Message;
use proxflow_schemas::capacity_review::{
    CapacityReview, CapacityReviewInput, CapacityReviewed, DaysLeft, TrendSource,
};
use proxflow_schemas::names::stream;
use proxflow_schemas::workflow::{Origin, WorkflowState};
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const GIB: f64 = 1_073_741_824.0;
/// Polls 6 hours apart over 30 days: 121 samples.
const STEP_HOURS: u64 = 6;
const POLLS: u64 = 30 * 24 / STEP_HOURS + 1;

/// Least squares by the textbook closed form (not the code under test's running update):
/// slope = (nΣxy − ΣxΣy) / (nΣx² − (Σx)²), the line's value at the last x, and the days from there
/// to `threshold`.
fn hand_forecast(points: &[(f64, f64)], threshold: f64) -> (f64, f64) {
    let n = points.len() as f64;
    let sx: f64 = points.iter().map(|p| p.0).sum();
    let sy: f64 = points.iter().map(|p| p.1).sum();
    let sxx: f64 = points.iter().map(|p| p.0 * p.0).sum();
    let sxy: f64 = points.iter().map(|p| p.0 * p.1).sum();
    let slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
    let intercept = (sy - slope * sx) / n;
    let last_x = points.last().unwrap().0;
    let now = intercept + slope * last_x;
    (slope, (threshold - now) / slope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_samples_is_reviewed_with_the_hand_computed_forecast() {
    // A month back from the wall clock: the samples are published now, and the review reads the
    // stream from the window's start by publish time.
    let start = (Utc::now() - chrono::Duration::days(31))
        .with_nanosecond(0)
        .unwrap()
        .with_second(0)
        .unwrap();
    let clock = ManualClock::new(start);
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats
        .context("capacity-review")
        .await
        .expect("ctx")
        .with_clock(clock.shared());
    // Each poll must see the load just set: the simulator's pvestatd lag is taken out.
    let (sim, pve) = start_sim(|c| c.durations.status_interval = Duration::ZERO)
        .await
        .expect("simulator");
    let handle = sim.handle();
    let k3s: Vec<u32> = pve
        .list_vms()
        .await
        .unwrap()
        .into_iter()
        .filter(|v| {
            v.status == "running"
                && v.tags
                    .as_deref()
                    .is_some_and(|t| t.split(';').any(|x| x == "k8s-node"))
        })
        .map(|v| v.vmid)
        .collect();
    assert!(!k3s.is_empty(), "the seed has running k3s nodes");

    let config = CapacityConfig::default();
    let mut monitor = Monitor::new(&ctx, config.clone(), pve.clone())
        .await
        .unwrap();
    // Memory of every k3s node: 30 % on day 0, +1 % a day, 60 % on day 30.
    let mut series = Vec::new();
    for i in 0..POLLS {
        let day = (i * STEP_HOURS) as f64 / 24.0;
        for vmid in &k3s {
            handle.set_vm_load(*vmid, Load::fixed(0.2, 0.30 + 0.01 * day));
        }
        let report = monitor.poll().await.unwrap();
        let sample = report.sample.expect("the simulator answered");
        assert_eq!(sample.at, clock.now());
        let avg = sample.cluster("k3s").unwrap().memory_avg;
        series.push((day, avg));
        if i + 1 < POLLS {
            clock.advance(Duration::from_secs(STEP_HOURS * 3600));
        }
    }
    let to = clock.now();
    let (slope, days) = hand_forecast(&series, 70.0);
    // The series is the designed line (1 % a day, 60 % at the end: 10 days to 70 %), up to the
    // simulator's whole bytes.
    assert!((slope - 1.0).abs() < 1e-3, "{slope}");
    assert!((days - 10.0).abs() < 1e-2, "{days}");

    // The capacity service, started a day after the window (its first poll falls outside it).
    clock.advance(Duration::from_secs(24 * 3600));
    let dir = tempfile::tempdir().unwrap();
    let mut service_config = config.clone();
    service_config.review.dir = dir.path().to_path_buf();
    // The monthly schedule's last slot (1 December) is not made up for: this test starts its own
    // review and counts the events.
    service_config.review.catch_up = std::time::Duration::from_secs(1);
    let stop = CancellationToken::new();
    tokio::spawn(proxflow_capacity::run(
        ctx.clone(),
        CapacitySettings {
            config: service_config,
            pve: pve.clone(),
            zfs: proxflow_zfs::Zfs::local(Duration::from_secs(10)),
            snapshot_prefix: "pf-".into(),
        },
        stop.clone(),
    ));

    let input = CapacityReviewInput { from: start, to };
    let id = input.workflow_id();
    let origin = Origin {
        source: "operator".into(),
        reference: "test".into(),
        reason: "monthly review".into(),
    };
    let engine = Engine::new(&ctx).await.unwrap();
    assert!(
        engine
            .start_kind(proxflow_capacity::REVIEW_KIND, &id, origin.clone(), &input)
            .await
            .unwrap()
    );
    // The same window again: the same run, not a second one.
    assert!(
        !engine
            .start_kind(proxflow_capacity::REVIEW_KIND, &id, origin, &input)
            .await
            .unwrap()
    );
    let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
    let record = proxflow_e2e::until_ended(&store, &id).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:?}", record.error);
    let steps: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["compute", "write", "announce"]);

    // The event, once, naming the report and its hash.
    let events: Vec<CapacityReviewed> = history::since(
        &ctx.bus.js,
        stream::EVT,
        CapacityReviewed::SUBJECT,
        start,
        10,
    )
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.workflow_id, id);
    let json = std::fs::read(&event.json_path).unwrap();
    assert_eq!(event.sha256, hex::encode(Sha256::digest(&json)));
    let markdown = std::fs::read_to_string(&event.markdown_path).unwrap();
    assert!(markdown.contains("`cluster/k3s/memory_avg`"), "{markdown}");
    let review: CapacityReview = serde_json::from_slice(&json).unwrap();
    assert_eq!(review.samples, POLLS);

    // The forecast is the hand computation's.
    let trend = review
        .trends
        .iter()
        .find(|t| t.metric == "cluster/k3s/memory_avg" && t.source == TrendSource::Samples)
        .expect("the cluster's memory trend");
    assert_eq!(trend.points, POLLS);
    assert_eq!(trend.threshold, 70.0);
    assert!(
        (trend.slope_per_day - slope).abs() < 1e-6,
        "{trend:?} vs {slope}"
    );
    match trend.days_left {
        DaysLeft::Days { days: d } => assert!((d - days).abs() < 1e-6, "{d} vs {days}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        event.soonest_metric.as_deref(),
        Some("cluster/k3s/memory_avg"),
        "{}",
        event.summary
    );

    // Memory commitment is the simulator's VMs against its memory and the 1.5:1 target.
    let vms = pve.list_vms().await.unwrap();
    let physical = pve.node_status().await.unwrap().memory.total;
    let committed: u64 = vms
        .iter()
        .filter(|v| !v.template && v.status == "running")
        .map(|v| v.maxmem)
        .sum();
    let c = &review.commitment;
    assert_eq!((c.committed_bytes, c.physical_bytes), (committed, physical));
    assert!((c.ratio - committed as f64 / physical as f64).abs() < 1e-12);
    assert_eq!(c.target, 1.5);
    let headroom = (1.5 * physical as f64 - committed as f64) / GIB;
    assert!((c.headroom_gib - headroom).abs() < 1e-6, "{c:?}");
    assert!((event.headroom_gib - headroom).abs() < 1e-6);
    stop.cancel();
}
