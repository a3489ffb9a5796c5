//! Replication on a real ZFS (Debian's zfs-fuse, file-backed pools `tank` and `offsite`) with a real
//! nats-server for the leases and events: full then incremental sends verified by reading the data
//! back on the target, pruning that keeps the common base, a transfer killed mid-stream and
//! recovered, a diverged target refused with nothing destroyed, ten runs without a leaked hold, and
//! zfs-fuse's missing features detected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proxflow_orchestrator::remediation::Rules;
use proxflow_platform::RemediationConfig;
use proxflow_replicator::{JobConfig, JobError, ReplicationConfig, Replicator, RunControl};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::lease::{Acquired, Leases};
use proxflow_schemas::names::{durable, stream, subject};
use proxflow_schemas::remediation::{RemediationDecision, Verdict};
use proxflow_schemas::replication::{
    DivergenceReason, ReplicationDiverged, ReplicationPhase, ReplicationRequested, ReplicationRun,
    TransferMode,
};
use proxflow_schemas::workflow::WorkflowState;
use proxflow_snapshotter::Snapshotter;
use proxflow_snapshotter::retention::Grid;
use proxflow_testkit::TestNats;
use proxflow_zfs::Zfs;
use tokio_util::sync::CancellationToken;
use zfs_fixture::ZfsFixture;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn job(fx: &ZfsFixture, name: &str) -> JobConfig {
    JobConfig {
        name: name.into(),
        source: fx.source.clone(),
        target: fx.target.clone(),
        command_timeout: Duration::from_secs(60),
        transfer_timeout: Duration::from_secs(300),
        ..JobConfig::default()
    }
}

async fn replicator(ctx: &ServiceContext, jobs: Vec<JobConfig>, clock: &ManualClock) -> Replicator {
    Replicator::new(
        &ctx.clone().with_clock(clock.shared()),
        ReplicationConfig {
            jobs,
            ..ReplicationConfig::default()
        },
    )
    .expect("replicator")
}

/// The last event published on `subject` (PF_EVT keeps them all).
async fn last_event<T: serde::de::DeserializeOwned>(ctx: &ServiceContext, subject: &str) -> T {
    let stream = ctx.bus.js.get_stream("PF_EVT").await.unwrap();
    let msg = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap_or_else(|e| panic!("no event on {subject}: {e}"));
    serde_json::from_slice(&msg.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zfs_fuse_lacks_what_the_code_degrades_around() {
    let fx = ZfsFixture::new("caps");
    let zfs = Zfs::local(Duration::from_secs(30));
    let caps = zfs.capabilities(&fx.source).await.unwrap();
    // What zfs-fuse 0.7 (pool version 23) has and has not; each false is a fallback path the
    // other tests in this file run through.
    assert!(!caps.parsable_list, "zfs-fuse has no `zfs list -p`");
    assert!(
        caps.parsable_get,
        "`zfs get -p` is what the listing falls back to"
    );
    assert!(
        !caps.resumable_receive,
        "no receive_resume_token on zfs-fuse"
    );
    assert!(!caps.bookmarks, "no zfs bookmark on zfs-fuse");
    assert!(caps.holds, "hold/release exist (pool version 18+)");
    assert!(
        !caps.hold_listing,
        "`zfs holds` needs a Python helper zfs-fuse lacks"
    );

    // The fallback listing gives exact guids (without -p zfs-fuse prints them rounded, e.g. 7.26E).
    fx.snapshot(&fx.source, "a");
    let snaps = zfs.snapshots(&fx.source).await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].guid.to_string(), fx.guid(&fx.source, "a"));
    assert_eq!(zfs.holds(&fx.source, "a").await.unwrap(), None);
    assert_eq!(zfs.receive_resume_token(&fx.source).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_replication_lands_the_same_data_on_the_target() {
    let fx = ZfsFixture::new("incr").with_job("offsite");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("replication-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-24T03:31:00Z"));
    let r = replicator(&ctx, vec![job(&fx, "offsite")], &clock).await;

    fx.write_random("first.bin", 1 << 20);
    fx.snapshot(&fx.source, "s1");
    // The schedule (daily@03:30) makes the job due; the pass runs it.
    let stop = CancellationToken::new();
    let runs = r.pass(&stop).await;
    assert_eq!(runs.len(), 1);
    let first = runs[0].1.as_ref().expect("first run");
    assert_eq!(first.mode, TransferMode::Full);
    assert_eq!(first.snapshot.as_deref(), Some("s1"));
    assert!(
        first.bytes > 1 << 20,
        "a full stream carries the file: {}",
        first.bytes
    );
    assert_eq!(
        fx.checksum(&fx.target, "first.bin"),
        fx.checksum(&fx.source, "first.bin")
    );
    assert_eq!(fx.guid(&fx.target, "s1"), fx.guid(&fx.source, "s1"));
    // Done for this slot: a second pass in the same slot runs nothing.
    assert!(r.pass(&stop).await.is_empty());

    fx.write_random("second.bin", 512 << 10);
    fx.snapshot(&fx.source, "s2");
    std::fs::remove_file(fx.mountpoint(&fx.source).join("first.bin")).unwrap();
    fx.write_random("third.bin", 256 << 10);
    fx.snapshot(&fx.source, "s3");
    clock.advance(Duration::from_secs(24 * 3600));
    let runs = r.pass(&stop).await;
    let second = runs[0].1.as_ref().expect("second run");
    assert_eq!(second.mode, TransferMode::Incremental);
    assert_eq!(second.base.as_deref(), Some("s1"));
    assert_eq!(second.snapshot.as_deref(), Some("s3"));
    assert!(
        second.bytes < first.bytes,
        "only the changes travel: {} vs {}",
        second.bytes,
        first.bytes
    );
    // -I brought the intermediate snapshot too, and the target's head is s3's data.
    assert_eq!(fx.names(&fx.target), ["s1", "s2", "s3"]);
    for s in ["s1", "s2", "s3"] {
        assert_eq!(fx.guid(&fx.target, s), fx.guid(&fx.source, s));
    }
    for file in ["second.bin", "third.bin"] {
        let want = fx.checksum(&fx.source, file);
        assert!(want.is_some());
        assert_eq!(fx.checksum(&fx.target, file), want, "{file}");
    }
    assert_eq!(
        fx.checksum(&fx.target, "first.bin"),
        None,
        "the deletion replicated"
    );

    // Events and metrics.
    let done: ReplicationRun = last_event(&ctx, "pf.evt.replication.completed").await;
    assert_eq!(done.phase, ReplicationPhase::Completed);
    assert_eq!(done.mode, Some(TransferMode::Incremental));
    assert_eq!(done.bytes, second.bytes);
    assert_eq!(done.run_id, second.run_id);
    assert!(done.lag_secs.is_some());
    let started: ReplicationRun = last_event(&ctx, "pf.evt.replication.started").await;
    assert_eq!(started.run_id, second.run_id);
    let metrics = ctx.metrics.encode();
    let total = first.bytes + second.bytes;
    assert!(
        metrics.contains(&format!(
            "proxflow_replication_bytes_total{{replication_job=\"offsite\"}} {total}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "proxflow_replication_last_success_timestamp_seconds{replication_job=\"offsite\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("proxflow_replication_lag_seconds{replication_job=\"offsite\"}"));
    // Nothing new: up to date, no bytes.
    let again = r.run_job("offsite", &RunControl::default()).await.unwrap();
    assert_eq!(again.mode, TransferMode::UpToDate);
    assert_eq!(again.bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_on_the_source_keeps_the_common_base_and_waits_for_a_send() {
    let fx = ZfsFixture::new("prune").with_job("offsite");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("prune-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-20T03:10:00Z"));
    let snapshots = Snapshotter::new(
        &ctx.clone().with_clock(clock.shared()),
        // Keep only the newest daily: everything older is a pruning candidate.
        zfs_fixture::snapshot_config(
            &fx.source,
            Grid {
                hourly: 0,
                daily: 1,
                weekly: 0,
                monthly: 0,
            },
        ),
        None,
    )
    .unwrap();
    let r = replicator(&ctx, vec![job(&fx, "offsite")], &clock).await;
    let day = Duration::from_secs(24 * 3600);
    let (d20, d21, d22) = (
        "pf-daily-20261120T030000Z",
        "pf-daily-20261121T030000Z",
        "pf-daily-20261122T030000Z",
    );

    fx.write_random("a.bin", 64 << 10);
    let pass = snapshots.pass().await;
    assert_eq!(pass.targets[0].created.as_deref(), Some(d20));
    let run = r.run_job("offsite", &RunControl::default()).await.unwrap();
    assert_eq!(run.snapshot.as_deref(), Some(d20));

    // Next day: the grid keeps only d21, but d20 is the common base, held by the replicator.
    clock.advance(day);
    let pass = snapshots.pass().await;
    let t = &pass.targets[0];
    assert_eq!(t.created.as_deref(), Some(d21));
    assert!(t.pruned.is_empty(), "{t:?}");
    assert_eq!(t.plan.protected[0].name, d20);
    assert_eq!(t.plan.protected[0].reason, "held");
    assert_eq!(fx.names(&fx.source), [d20, d21]);

    // While a send holds the dataset's lease, pruning waits (same key as the replicator's).
    let leases = Leases::open(&ctx.bus.js).await.unwrap();
    let Acquired::Held(send_lease) = leases
        .acquire(
            &proxflow_schemas::names::key::dataset_lease(&fx.source),
            "a-replicator-sending",
            "replicate",
        )
        .await
        .unwrap()
    else {
        panic!("lease busy")
    };
    // The replicator itself is refused too: one holder at a time.
    let busy = r
        .run_job("offsite", &RunControl::default())
        .await
        .unwrap_err();
    assert!(matches!(busy, JobError::Busy { .. }), "{busy}");
    send_lease.release().await.unwrap();

    // The replication moves the base to d21 and releases d20's hold...
    let run = r.run_job("offsite", &RunControl::default()).await.unwrap();
    assert_eq!(run.base.as_deref(), Some(d20));
    assert_eq!(run.snapshot.as_deref(), Some(d21));
    assert_eq!(
        fx.snapshots(&fx.source),
        [(d20.to_owned(), 0), (d21.to_owned(), 1)]
    );

    // ...so the next day d20 goes, while d21 (the base now) stays although the grid drops it.
    clock.advance(day);
    let pass = snapshots.pass().await;
    let t = &pass.targets[0];
    assert_eq!(t.created.as_deref(), Some(d22));
    assert_eq!(t.pruned, [d20]);
    assert_eq!(fx.names(&fx.source), [d21, d22]);
    // The target still has everything it received, and the next incremental works from d21.
    let run = r.run_job("offsite", &RunControl::default()).await.unwrap();
    assert_eq!(run.mode, TransferMode::Incremental);
    assert_eq!(run.base.as_deref(), Some(d21));
    assert_eq!(fx.names(&fx.target), [d20, d21, d22]);
    assert_eq!(
        fx.checksum(&fx.target, "a.bin"),
        fx.checksum(&fx.source, "a.bin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_killed_mid_stream_is_recovered_by_the_next_run() {
    let fx = ZfsFixture::new("kill").with_job("offsite");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("kill-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-24T04:00:00Z"));
    let r = replicator(&ctx, vec![job(&fx, "offsite")], &clock).await;

    fx.write_random("small.bin", 64 << 10);
    fx.snapshot(&fx.source, "s1");
    r.run_job("offsite", &RunControl::default()).await.unwrap();
    let small = fx.checksum(&fx.source, "small.bin");

    fx.write_random("big.bin", 96 << 20);
    fx.snapshot(&fx.source, "s2");
    let control = RunControl::default();
    let run = {
        let control = control.clone();
        let r = &r;
        async move { r.run_job("offsite", &control).await }
    };
    // Kill the transfer once it is well under way: both process groups are killed and the
    // receiver's stream ends mid-way.
    let killer = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while control.progress.load(Ordering::Relaxed) < 8 << 20 {
            assert!(Instant::now() < deadline, "the transfer never got going");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        control.cancel.cancel();
    };
    let (result, ()) = tokio::join!(run, killer);
    let error = result.expect_err("the killed run must fail");
    assert_eq!(error.reason(), "cancelled", "{error}");
    let failed: ReplicationRun = last_event(&ctx, "pf.evt.replication.failed").await;
    assert!(failed.bytes >= 8 << 20, "{failed:?}");
    assert!(failed.bytes < 96 << 20);

    // The killed sender's temporary holds (zfs-fuse keeps them until the pool is re-imported)
    // were released: only the job's own hold on the base remains.
    assert_eq!(
        fx.snapshots(&fx.source),
        [("s1".to_owned(), 1), ("s2".to_owned(), 0)]
    );
    // The target is consistent: s1 as it was, nothing of s2. zfs-fuse receives in its daemon,
    // which notices the end of the stream and unwinds the receive on its own time after the
    // client was killed: wait for the target to be readable again, bounded. (Files that s2 would
    // add are not looked up here: FUSE caches a "no such file" answer for zfs-fuse's entry
    // timeout, an hour, which would hide them after the recovery.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while fx.checksum(&fx.target, "small.bin").is_none() {
        assert!(
            Instant::now() < deadline,
            "the target never came back after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fx.names(&fx.target), ["s1"]);
    assert_eq!(fx.checksum(&fx.target, "small.bin"), small);

    // A normal run recovers from the common base (zfs-fuse cannot resume; the daemon may still be
    // finishing the aborted receive, which the run waits out).
    let run = r.run_job("offsite", &RunControl::default()).await.unwrap();
    assert_eq!(run.mode, TransferMode::Incremental);
    assert_eq!(run.base.as_deref(), Some("s1"));
    assert_eq!(fx.names(&fx.target), ["s1", "s2"]);
    let big = fx.checksum(&fx.source, "big.bin");
    assert!(big.is_some());
    assert_eq!(fx.checksum(&fx.target, "big.bin"), big);
    assert_eq!(fx.checksum(&fx.target, "small.bin"), small);
    // No leaked hold on either side: the job's hold moved to s2.
    for dataset in [&fx.source, &fx.target] {
        assert_eq!(
            fx.snapshots(dataset),
            [("s1".to_owned(), 0), ("s2".to_owned(), 1)],
            "{dataset}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_target_is_refused_with_an_alert_and_nothing_destroyed() {
    let fx = ZfsFixture::new("diverge").with_job("offsite");
    let other = ZfsFixture::new("unrelated").with_job("stranger");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("diverge-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-24T04:00:00Z"));
    // "stranger" sends fx's source into other's target, which has its own unrelated history.
    let stranger = JobConfig {
        name: "stranger".into(),
        target: other.target.clone(),
        ..job(&fx, "stranger")
    };
    let r = replicator(&ctx, vec![job(&fx, "offsite")], &clock).await;
    let r2 = replicator(&ctx, vec![stranger], &clock).await;

    fx.write_random("a.bin", 64 << 10);
    fx.snapshot(&fx.source, "s1");
    r.run_job("offsite", &RunControl::default()).await.unwrap();
    // Someone snapshots the target after the common base; the source moves on.
    fx.snapshot(&fx.target, "local");
    fx.write_random("b.bin", 64 << 10);
    fx.snapshot(&fx.source, "s2");
    let before_target = fx.snapshots(&fx.target);
    let before_source = fx.snapshots(&fx.source);

    let error = r
        .run_job("offsite", &RunControl::default())
        .await
        .unwrap_err();
    match &error {
        JobError::Diverged { reason, .. } => {
            assert_eq!(*reason, DivergenceReason::TargetHasNewerSnapshots)
        }
        other => panic!("not a divergence: {other}"),
    }
    let alert: ReplicationDiverged = last_event(&ctx, "pf.evt.replication.diverged").await;
    assert_eq!(alert.reason, DivergenceReason::TargetHasNewerSnapshots);
    assert_eq!(alert.common_base.as_deref(), Some("s1"));
    assert_eq!(alert.target_only, ["local"]);
    assert_eq!(
        fx.snapshots(&fx.target),
        before_target,
        "nothing destroyed or rolled back"
    );
    assert_eq!(fx.snapshots(&fx.source), before_source);
    assert_eq!(
        fx.checksum(&fx.target, "a.bin"),
        fx.checksum(&fx.source, "a.bin")
    );
    let failed: ReplicationRun = last_event(&ctx, "pf.evt.replication.failed").await;
    assert!(failed.error.unwrap().contains("diverged"));
    assert!(ctx.metrics.encode().contains(
        "proxflow_replication_failures_total{replication_job=\"offsite\",reason=\"diverged\"} 1"
    ));

    // A target with snapshots none of which the source has: no common base.
    zfs_fixture::zfs(&["create", &other.target]);
    other.snapshot(&other.target, "theirs");
    let error = r2
        .run_job("stranger", &RunControl::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            JobError::Diverged {
                reason: DivergenceReason::NoCommonSnapshot,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(other.names(&other.target), ["theirs"]);
    let alert: ReplicationDiverged = last_event(&ctx, "pf.evt.replication.diverged").await;
    assert_eq!(alert.reason, DivergenceReason::NoCommonSnapshot);
    assert_eq!(alert.job, "stranger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_runs_leave_exactly_one_hold_per_side() {
    let fx = ZfsFixture::new("holds").with_job("offsite");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("holds-test").await.unwrap();
    let clock = ManualClock::new(utc("2026-11-24T04:00:00Z"));
    let r = replicator(&ctx, vec![job(&fx, "offsite")], &clock).await;
    // An operator's own hold on the first snapshot must survive every release of ours.
    fx.write_random("f0.bin", 16 << 10);
    fx.snapshot(&fx.source, "s01");
    zfs_fixture::zfs(&["hold", "keep", &format!("{}@s01", fx.source)]);

    for i in 1..=10 {
        if i > 1 {
            fx.write_random(&format!("f{i}.bin"), 16 << 10);
            fx.snapshot(&fx.source, &format!("s{i:02}"));
        }
        let run = r.run_job("offsite", &RunControl::default()).await.unwrap();
        let newest = format!("s{i:02}");
        assert_eq!(run.snapshot.as_deref(), Some(newest.as_str()));
        // After every run: our hold only on the newest, on both sides.
        for (side, dataset) in [("source", &fx.source), ("target", &fx.target)] {
            for (name, refs) in fx.snapshots(dataset) {
                let operator = side == "source" && name == "s01";
                let ours = u64::from(name == newest);
                assert_eq!(
                    refs,
                    ours + u64::from(operator),
                    "run {i}: {side} {name} has {refs} holds"
                );
            }
        }
    }
    assert_eq!(fx.snapshots(&fx.target).len(), 10);
    // The remaining hold is ours (zfs refuses to place the same tag twice) and the operator's
    // hold is untouched (releasing it works exactly once).
    let zfs = Zfs::local(Duration::from_secs(30));
    let tag = proxflow_zfs::names::hold_tag("offsite");
    assert!(!zfs.hold(&tag, &fx.source, "s10").await.unwrap());
    assert!(!zfs.hold(&tag, &fx.target, "s10").await.unwrap());
    assert!(zfs.release("keep", &fx.source, "s01").await.unwrap());
    assert!(!zfs.release("keep", &fx.source, "s01").await.unwrap());
}

/// `ReplicationLagging` re-runs the job its `replication_job` label names.
const REPLICATE_RULE: &str = r#"
[[rule]]
name = "replication-lag-rerun"
alertname = "ReplicationLagging"
target = "replication/{labels.replication_job}"
action = { kind = "replicate", job = "{labels.replication_job}" }
cooldown = "2h"
dry_run = false
"#;

/// Every event stored on `subject`, oldest first.
async fn stored<T: serde::de::DeserializeOwned>(ctx: &ServiceContext, subject: &str) -> Vec<T> {
    proxflow_e2e::stored(&ctx.bus.js, stream::EVT, subject).await
}

/// A lag alert goes gateway → remediation engine → remediator → `pf.cmd.replicator.run` → the
/// replicator service, which runs the job: the snapshot taken after the service's catch-up pass
/// (which failed, nothing to send then) lands on the target with its data and guid. The schedule
/// cannot have sent it: its retry waits 15 minutes of a manual clock that never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_lag_alert_reruns_the_job_and_the_data_lands() {
    let fx = ZfsFixture::new("lagalert").with_job("offsite");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("lag-alert-test").await.unwrap();
    let (_sim, pve) = proxflow_testkit::pve::start_sim(|_| {}).await.unwrap();
    let clock = ManualClock::new(utc("2026-11-24T04:00:00Z"));
    let stop = CancellationToken::new();
    // Should an assertion fail, the services stop before the fixture destroys the datasets.
    let _stop_on_exit = stop.clone().drop_guard();
    let gateway =
        proxflow_e2e::start_gateway(&ctx, "alertmanager", proxflow_e2e::ALERT_TOKEN, &stop).await;
    let engine = tokio::spawn(proxflow_orchestrator::remediation::run_engine(
        ctx.clone().with_clock(clock.shared()),
        RemediationConfig::default(),
        Rules::parse(REPLICATE_RULE).unwrap(),
        stop.clone(),
    ));
    let remediator = tokio::spawn(proxflow_remediator::run(
        ctx.clone(),
        proxflow_remediator::RemediatorSettings {
            config: RemediationConfig::default(),
            pve,
        },
        stop.clone(),
    ));
    // The schedule is looked at every 100 ms, so a scheduled run would have every chance to race
    // the alert's.
    let replicator = tokio::spawn(proxflow_replicator::run(
        ctx.clone().with_clock(clock.shared()),
        ReplicationConfig {
            jobs: vec![job(&fx, "offsite")],
            interval: Duration::from_millis(100),
            ..ReplicationConfig::default()
        },
        stop.clone(),
    ));

    // The catch-up pass at start (daily@03:30 is due at 04:00) finds no snapshot and fails.
    let failed: ReplicationRun = proxflow_e2e::eventually("the start pass's failure", || async {
        stored::<ReplicationRun>(&ctx, "pf.evt.replication.failed")
            .await
            .into_iter()
            .find(|r| r.job == "offsite")
    })
    .await;
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .ends_with("has no snapshot to send"),
        "{failed:?}"
    );
    assert!(!fx.exists(&fx.target));

    // Watches the replicator's requests (PF_CMD is a work queue: read it on the wire, not stored).
    let mut requests = ctx
        .bus
        .client
        .subscribe(subject::cmd("replicator", "run"))
        .await
        .unwrap();
    fx.write_random("lagging.bin", 1 << 20);
    fx.snapshot(&fx.source, "s1");
    let alert = proxflow_e2e::alertmanager_alert(
        "ReplicationLagging",
        &[("replication_job", "offsite")],
        "firing",
        "2026-11-24T04:00:00Z",
    );
    proxflow_e2e::post_alerts(&gateway, vec![alert]).await;

    let acted: RemediationDecision =
        proxflow_e2e::eventually("an acted remediation decision", || async {
            stored::<RemediationDecision>(&ctx, &subject::evt("remediation", "decision"))
                .await
                .into_iter()
                .find(|d| d.verdict == Verdict::Acted)
        })
        .await;
    assert_eq!(acted.rule.as_deref(), Some("replication-lag-rerun"));
    assert_eq!(acted.target.as_deref(), Some("replication/offsite"));
    let remediation = acted.workflow_id.clone().unwrap();
    let store = proxflow_runtime::workflow::WorkflowStore::open(&ctx.bus.js)
        .await
        .unwrap();
    let record = proxflow_e2e::until_ended(&store, &remediation).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    // The remediator handed the run to the replicator, naming the job and the remediation.
    let requested: ReplicationRequested =
        proxflow_e2e::next_event(&mut requests, Duration::from_secs(30)).await;
    assert_eq!(requested.job, "offsite");
    assert_eq!(requested.workflow_id, remediation);

    let done: ReplicationRun = proxflow_e2e::eventually("the job's completed run", || async {
        stored::<ReplicationRun>(&ctx, "pf.evt.replication.completed")
            .await
            .into_iter()
            .find(|r| r.job == "offsite")
    })
    .await;
    assert_eq!(done.snapshot.as_deref(), Some("s1"), "{done:?}");
    assert_eq!(done.mode, Some(TransferMode::Full));
    assert!(
        done.bytes > 1 << 20,
        "the stream carries the file: {done:?}"
    );
    // The request was consumed once and acknowledged; one run completed, after the one that failed.
    proxflow_e2e::until_idle(&ctx, &[("PF_CMD", durable::REPLICATOR_RUN)]).await;
    let completed: Vec<ReplicationRun> = stored(&ctx, "pf.evt.replication.completed").await;
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert_ne!(completed[0].run_id, failed.run_id);

    // The data landed: the file reads back the same, the snapshot is the source's (same guid).
    let want = fx.checksum(&fx.source, "lagging.bin");
    assert!(want.is_some());
    assert_eq!(fx.checksum(&fx.target, "lagging.bin"), want);
    assert_eq!(fx.names(&fx.target), ["s1"]);
    assert_eq!(fx.guid(&fx.target, "s1"), fx.guid(&fx.source, "s1"));

    // A clean shutdown: every service ends, without error, when the token is cancelled.
    stop.cancel();
    let (engine, remediator, replicator) = tokio::time::timeout(Duration::from_secs(30), async {
        (engine.await, remediator.await, replicator.await)
    })
    .await
    .expect("the services stop on cancellation");
    engine.unwrap().unwrap();
    remediator.unwrap().unwrap();
    replicator.unwrap().unwrap();
}
