//! The platform's figures on the first screen: the host's gauges and pools from the newest
//! capacity sample and health check, replication lag and snapshot ages from their events.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use proxflow_runtime::bus::history;
use proxflow_schemas::Message;
use proxflow_schemas::capacity::CapacitySample;
use proxflow_schemas::health::HealthReport;
use proxflow_schemas::names::stream;
use proxflow_schemas::replication::{ReplicationPhase, ReplicationRun};
use proxflow_schemas::snapshot::{SnapshotKind, SnapshotTaken};

use super::{
    Capacity, Expectations, Gauge, Pool, Replication, SUSTAINED_LOOKBACK, SnapshotAge, Standing,
};
use crate::ViewError;

/// One sample's figures, as the gauges read them.
struct Figures {
    at: DateTime<Utc>,
    cpu: f64,
    memory: f64,
    commitment: f64,
}

/// The gauges, and the pools' fill, from the newest sample; "above for" from the samples of the
/// last hours walked back from the newest.
pub(super) async fn capacity(
    js: &jetstream::Context,
    expect: &Expectations,
    now: DateTime<Utc>,
) -> Result<Option<(Capacity, Vec<(String, f64)>)>, ViewError> {
    let mut samples: Vec<Figures> = Vec::new();
    let mut newest: Option<CapacitySample> = None;
    history::each(
        js,
        stream::EVT,
        CapacitySample::SUBJECT,
        now - SUSTAINED_LOOKBACK,
        |s: CapacitySample| {
            samples.push(Figures {
                at: s.at,
                cpu: s.host.cpu_percent,
                memory: s.host.memory_percent,
                commitment: s.host.memory_commitment_ratio,
            });
            newest = Some(s);
        },
    )
    .await?;
    let Some(newest) = newest else {
        return Ok(None);
    };
    let gauge = |value: f64, limit: f64, pick: fn(&Figures) -> f64| {
        let above_secs = (value > limit).then(|| {
            let since = samples
                .iter()
                .rev()
                .take_while(|s| pick(s) > limit)
                .last()
                .map_or(newest.at, |s| s.at);
            u64::try_from((now - since).num_seconds()).unwrap_or(0)
        });
        Gauge {
            value,
            limit,
            above_secs,
        }
    };
    let stale_after = chrono::Duration::from_std(expect.sample_interval * 3)
        .unwrap_or(chrono::Duration::minutes(3));
    let fill = newest
        .host
        .zfs_pools
        .iter()
        .map(|p| (p.name.clone(), p.used_percent))
        .collect();
    Ok(Some((
        Capacity {
            node: newest.host.node.clone(),
            sampled_at: newest.at,
            stale: now - newest.at > stale_after,
            cpu: gauge(newest.host.cpu_percent, expect.cpu_threshold, |s| s.cpu),
            memory: gauge(newest.host.memory_percent, expect.memory_threshold, |s| {
                s.memory
            }),
            commitment: gauge(
                newest.host.memory_commitment_ratio,
                expect.commitment_target,
                |s| s.commitment,
            ),
            running_vms: newest.host.running_vms,
        },
        fill,
    )))
}

pub(super) fn pools(fill: Vec<(String, f64)>, health: Option<&HealthReport>) -> Vec<Pool> {
    let mut pools: BTreeMap<String, Pool> = fill
        .into_iter()
        .map(|(name, used)| {
            (
                name.clone(),
                Pool {
                    name,
                    used_percent: Some(used),
                    state: None,
                    scan: None,
                    scrubbed_at: None,
                },
            )
        })
        .collect();
    for status in health.map(|h| h.pools.as_slice()).unwrap_or_default() {
        let pool = pools.entry(status.pool.clone()).or_insert_with(|| Pool {
            name: status.pool.clone(),
            used_percent: None,
            state: None,
            scan: None,
            scrubbed_at: None,
        });
        pool.state = Some(status.state.clone());
        pool.scan = (!status.scan.text.is_empty()).then(|| status.scan.text.clone());
        pool.scrubbed_at = status.scan.ended_at;
    }
    pools.into_values().collect()
}

pub(super) fn age_secs(now: DateTime<Utc>, at: DateTime<Utc>) -> u64 {
    u64::try_from((now - at).num_seconds()).unwrap_or(0)
}

pub(super) async fn replication(
    js: &jetstream::Context,
    expect: &Expectations,
    now: DateTime<Utc>,
) -> Result<Vec<Replication>, ViewError> {
    // Per job: the newest success and the newest failure.
    let mut seen: BTreeMap<String, (Option<ReplicationRun>, Option<ReplicationRun>)> = expect
        .replication
        .iter()
        .map(|j| (j.name.clone(), (None, None)))
        .collect();
    let lookback = expect
        .replication
        .iter()
        .map(|j| j.max_age)
        .max()
        .unwrap_or(Duration::from_secs(86_400))
        * 2;
    history::each(
        js,
        stream::EVT,
        ReplicationRun::SUBJECT,
        now - chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::days(60)),
        |run: ReplicationRun| {
            let entry = seen.entry(run.job.clone()).or_default();
            match run.phase {
                ReplicationPhase::Completed => entry.0 = Some(run),
                ReplicationPhase::Failed => entry.1 = Some(run),
                ReplicationPhase::Started => {}
            }
        },
    )
    .await?;
    Ok(seen
        .into_iter()
        .map(|(job, (ok, failed))| {
            let rpo = expect
                .replication
                .iter()
                .find(|j| j.name == job)
                .map(|j| j.max_age.as_secs());
            let lag_secs = ok
                .as_ref()
                .map(|r| r.lag_secs.unwrap_or(0) + age_secs(now, r.at));
            let failed_last = failed
                .as_ref()
                .filter(|f| ok.as_ref().is_none_or(|o| f.at > o.at));
            let standing = match (lag_secs, failed_last) {
                (_, Some(_)) => Standing::Failed,
                (None, None) => Standing::Never,
                (Some(lag), None) if rpo.is_some_and(|rpo| lag > rpo) => Standing::Late,
                (Some(_), None) => Standing::Ok,
            };
            Replication {
                job,
                last_success_at: ok.as_ref().map(|r| r.at),
                lag_secs,
                rpo_secs: rpo,
                standing,
                error: failed_last.and_then(|f| f.error.clone()),
            }
        })
        .collect())
}

pub(super) async fn snapshots(
    js: &jetstream::Context,
    expect: &Expectations,
    now: DateTime<Utc>,
) -> Result<Vec<SnapshotAge>, ViewError> {
    let mut newest: BTreeMap<String, Option<DateTime<Utc>>> = expect
        .snapshots
        .iter()
        .map(|p| (p.name.clone(), None))
        .collect();
    let lookback = expect
        .snapshots
        .iter()
        .map(|p| p.max_age)
        .max()
        .unwrap_or(Duration::from_secs(86_400))
        * 2;
    history::each(
        js,
        stream::EVT,
        SnapshotTaken::SUBJECT,
        now - chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::days(60)),
        |taken: SnapshotTaken| {
            if taken.kind == SnapshotKind::Scheduled {
                let at = newest.entry(taken.reference).or_default();
                *at = Some(at.map_or(taken.at, |a| a.max(taken.at)));
            }
        },
    )
    .await?;
    Ok(newest
        .into_iter()
        .map(|(policy, at)| {
            let max_age_secs = expect
                .snapshots
                .iter()
                .find(|p| p.name == policy)
                .map(|p| p.max_age.as_secs());
            let age = at.map(|a| age_secs(now, a));
            let standing = match age {
                None => Standing::Never,
                Some(age) if max_age_secs.is_some_and(|m| age > m) => Standing::Late,
                Some(_) => Standing::Ok,
            };
            SnapshotAge {
                policy,
                newest_at: at,
                age_secs: age,
                max_age_secs,
                standing,
            }
        })
        .collect())
}
