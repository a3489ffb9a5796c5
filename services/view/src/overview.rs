//! The status overview: what an SRE with one host looks at first (the console's first screen,
//! `proxflow status`). Every figure is read back from the bus — the newest capacity sample, the
//! newest health check, replication and snapshot events, the lifecycle jobs' events and workflow
//! records, the live workflows, the newest remediation decisions — and set against what the
//! configuration expects ([`Expectations`]: the 70 % thresholds, the 1.5:1 commitment, each
//! replication job's RPO, each snapshot policy's period).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use proxflow_runtime::bus::history;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::capacity::CapacitySample;
use proxflow_schemas::health::HealthReport;
use proxflow_schemas::lifecycle::{DrillCompleted, ExportCompleted, Verdict};
use proxflow_schemas::names::stream;
use proxflow_schemas::remediation::RemediationDecision;
use proxflow_schemas::replication::{ReplicationPhase, ReplicationRun};
use proxflow_schemas::snapshot::{SnapshotKind, SnapshotTaken};
use proxflow_schemas::workflow::{Wait, WorkflowRecord, WorkflowState};
use serde::Serialize;

use crate::ViewError;
use crate::approvals::{self, PendingApproval};
use crate::workflows::{self, Filter};

/// How far back the "sustained for" of a gauge is measured.
const SUSTAINED_LOOKBACK: chrono::Duration = chrono::Duration::hours(6);
/// How many remediation decisions the overview shows.
pub const REMEDIATIONS_SHOWN: usize = 10;
/// How many live workflows the overview lists at most.
const LIVE_SHOWN: usize = 50;

/// What the configuration expects; the overview sets each figure against it.
#[derive(Debug, Clone, Serialize)]
pub struct Expectations {
    /// Host CPU busy, percent, that counts as pressure (the capacity rule's threshold).
    pub cpu_threshold: f64,
    /// Host memory in use, percent, likewise.
    pub memory_threshold: f64,
    /// Memory commitment the platform holds near (1.5 = 1.5:1).
    pub commitment_target: f64,
    /// Capacity poll interval: no sample for three of them and the page says the data is stale.
    #[serde(with = "secs")]
    pub sample_interval: Duration,
    /// Replication jobs and the lag each may reach.
    pub replication: Vec<Expected>,
    /// Snapshot policies and the age their newest snapshot may reach.
    pub snapshots: Vec<Expected>,
    /// The age the last export may reach (a week and a day for a weekly job).
    #[serde(with = "secs")]
    pub export_max_age: Duration,
    /// The age the last drill may reach (a quarter and ten days).
    #[serde(with = "secs")]
    pub drill_max_age: Duration,
}

impl Default for Expectations {
    /// The seed platform's: 70 % CPU and memory, 1.5:1 commitment, a one-minute poll, a weekly
    /// export (a week and a day), a quarterly drill (100 days, as the RestoreDrillOverdue alert).
    fn default() -> Self {
        Self {
            cpu_threshold: 70.0,
            memory_threshold: 70.0,
            commitment_target: 1.5,
            sample_interval: Duration::from_secs(60),
            replication: Vec::new(),
            snapshots: Vec::new(),
            export_max_age: Duration::from_secs(8 * 86_400),
            drill_max_age: Duration::from_secs(100 * 86_400),
        }
    }
}

/// A named job and the age its newest result may reach.
#[derive(Debug, Clone, Serialize)]
pub struct Expected {
    /// The job or policy name.
    pub name: String,
    /// Its bound (a replication job's RPO, a snapshot policy's period with slack).
    #[serde(with = "secs")]
    pub max_age: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// The first screen.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When it was read.
    pub at: DateTime<Utc>,
    /// The host's gauges from the newest capacity sample (none yet: `None`).
    pub capacity: Option<Capacity>,
    /// ZFS pools: fill from the capacity sample, state and last scrub from the health check.
    pub pools: Vec<Pool>,
    /// When the newest health check looked.
    pub health_checked_at: Option<DateTime<Utc>>,
    /// Each configured replication job (and any other seen on the bus).
    pub replication: Vec<Replication>,
    /// Each configured snapshot policy (and any other seen on the bus).
    pub snapshots: Vec<SnapshotAge>,
    /// The newest config export.
    pub export: Option<JobResult>,
    /// The newest restore drill.
    pub drill: Option<JobResult>,
    /// Workflows not yet ended, newest first.
    pub live: Vec<LiveWorkflow>,
    /// Patch plans waiting for a decision.
    pub approvals: Vec<PendingApproval>,
    /// The newest remediation decisions, newest first.
    pub remediations: Vec<RemediationDecision>,
}

/// The host's gauges.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The node.
    pub node: String,
    /// When the newest sample was taken.
    pub sampled_at: DateTime<Utc>,
    /// No sample for three poll intervals: the figures are old.
    pub stale: bool,
    /// CPU busy, percent.
    pub cpu: Gauge,
    /// Memory in use, percent.
    pub memory: Gauge,
    /// Memory commitment ratio.
    pub commitment: Gauge,
    /// Running VMs.
    pub running_vms: u32,
}

/// One figure against its limit.
#[derive(Debug, Clone, Serialize)]
pub struct Gauge {
    /// Now.
    pub value: f64,
    /// The threshold or target.
    pub limit: f64,
    /// How long every sample has been above the limit (`None` when the newest is not).
    pub above_secs: Option<u64>,
}

impl Gauge {
    /// Above the limit now.
    pub fn over(&self) -> bool {
        self.value > self.limit
    }
}

/// A ZFS pool.
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Percent used (from the capacity sample).
    pub used_percent: Option<f64>,
    /// `ONLINE`, `DEGRADED`, … (from the health check).
    pub state: Option<String>,
    /// The last scrub or resilver, as zpool words it.
    pub scan: Option<String>,
    /// When the last scrub ended.
    pub scrubbed_at: Option<DateTime<Utc>>,
}

/// Where a state stands against its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Within its bound.
    Ok,
    /// Past its bound.
    Late,
    /// The newest attempt failed.
    Failed,
    /// Never seen.
    Never,
}

/// A replication job.
#[derive(Debug, Clone, Serialize)]
pub struct Replication {
    /// The job.
    pub job: String,
    /// When it last succeeded.
    pub last_success_at: Option<DateTime<Utc>>,
    /// The target's lag at that success plus the time since.
    pub lag_secs: Option<u64>,
    /// Its RPO (`None` for a job seen on the bus but not configured here).
    pub rpo_secs: Option<u64>,
    /// Against the RPO.
    pub standing: Standing,
    /// The newest failure's error, when it is newer than the last success.
    pub error: Option<String>,
}

/// A snapshot policy's newest snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotAge {
    /// The policy.
    pub policy: String,
    /// When its newest snapshot was taken.
    pub newest_at: Option<DateTime<Utc>>,
    /// Its age.
    pub age_secs: Option<u64>,
    /// The age it may reach.
    pub max_age_secs: Option<u64>,
    /// Against that.
    pub standing: Standing,
}

/// The newest run of a lifecycle job.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    /// Its workflow.
    pub workflow_id: String,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// Passed (export: completed; drill: verdict pass).
    pub passed: bool,
    /// In words: files and changes, or the failed checks, or the error.
    pub summary: String,
    /// Against the job's period.
    pub standing: Standing,
}

/// A workflow not yet ended, with where it is.
#[derive(Debug, Clone, Serialize)]
pub struct LiveWorkflow {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Pending, running, waiting or compensating.
    pub state: WorkflowState,
    /// The step it is at (the waiting step, or the newest started one).
    pub step: Option<String>,
    /// What it waits for, in words.
    pub waiting_for: Option<String>,
    /// When it started.
    pub created_at: DateTime<Utc>,
}

impl LiveWorkflow {
    fn of(record: &WorkflowRecord) -> Self {
        let (step, waiting_for) = match &record.wait {
            Some(Wait::Signal {
                step,
                name,
                expires_at,
            }) => (
                Some(step.clone()),
                Some(match expires_at {
                    Some(at) => format!("signal {name} until {}", at.format("%Y-%m-%d %H:%M UTC")),
                    None => format!("signal {name}"),
                }),
            ),
            Some(Wait::Timer { step, until }) => (
                Some(step.clone()),
                Some(format!(
                    "timer until {}",
                    until.format("%Y-%m-%d %H:%M:%S UTC")
                )),
            ),
            Some(Wait::Child { step, child }) => {
                (Some(step.clone()), Some(format!("workflow {child}")))
            }
            None => (record.steps.last().map(|s| s.name.clone()), None),
        };
        Self {
            id: record.id.clone(),
            kind: record.kind.clone(),
            state: record.state,
            step,
            waiting_for,
            created_at: record.created_at,
        }
    }
}

/// The live workflows (not ended), newest first, each read for its current step.
async fn live(engine: &Engine) -> Result<Vec<LiveWorkflow>, ViewError> {
    let mut entries = Vec::new();
    for state in WorkflowState::ALL.into_iter().filter(|s| !s.is_terminal()) {
        entries.extend(
            workflows::list(
                engine,
                &Filter {
                    state: Some(state),
                    limit: LIVE_SHOWN,
                    ..Filter::default()
                },
            )
            .await?,
        );
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.created_at));
    entries.truncate(LIVE_SHOWN);
    let records = futures::future::try_join_all(entries.iter().map(|e| engine.get(&e.id))).await?;
    Ok(records.iter().flatten().map(LiveWorkflow::of).collect())
}

/// Reads the overview.
pub async fn collect(
    js: &jetstream::Context,
    engine: &Engine,
    expect: &Expectations,
) -> Result<Overview, ViewError> {
    let now = Utc::now();
    let day = chrono::Duration::days(1);
    let (capacity, health, replication, snapshots, export, drill, live, approvals, remediations) =
        tokio::try_join!(
            capacity(js, expect, now),
            async {
                let newest: Vec<HealthReport> =
                    history::since(js, stream::EVT, HealthReport::SUBJECT, now - day * 40, 1)
                        .await?;
                Ok::<_, ViewError>(newest.into_iter().next())
            },
            replication(js, expect, now),
            snapshots(js, expect, now),
            export(js, engine, expect, now),
            drill(js, engine, expect, now),
            live(engine),
            approvals::pending(engine),
            async {
                let mut d: Vec<RemediationDecision> = history::since(
                    js,
                    stream::EVT,
                    RemediationDecision::SUBJECT,
                    now - day * 30,
                    REMEDIATIONS_SHOWN,
                )
                .await?;
                d.reverse();
                Ok::<_, ViewError>(d)
            },
        )?;
    let (capacity, pool_fill) = capacity.unzip();
    Ok(Overview {
        at: now,
        pools: pools(pool_fill.unwrap_or_default(), health.as_ref()),
        health_checked_at: health.as_ref().map(|h| h.at),
        capacity,
        replication,
        snapshots,
        export,
        drill,
        live,
        approvals,
        remediations,
    })
}

/// One sample's figures, as the gauges read them.
struct Figures {
    at: DateTime<Utc>,
    cpu: f64,
    memory: f64,
    commitment: f64,
}

/// The gauges, and the pools' fill, from the newest sample; "above for" from the samples of the
/// last hours walked back from the newest.
async fn capacity(
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

fn pools(fill: Vec<(String, f64)>, health: Option<&HealthReport>) -> Vec<Pool> {
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

fn age_secs(now: DateTime<Utc>, at: DateTime<Utc>) -> u64 {
    u64::try_from((now - at).num_seconds()).unwrap_or(0)
}

async fn replication(
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

async fn snapshots(
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

/// The newest ended workflow of `kind`.
async fn newest_ended(engine: &Engine, kind: &str) -> Result<Option<WorkflowRecord>, ViewError> {
    let mut newest = None;
    for state in [WorkflowState::Succeeded, WorkflowState::Failed] {
        let ended = workflows::list(
            engine,
            &Filter {
                kind: Some(kind.to_owned()),
                state: Some(state),
                limit: 1,
                ..Filter::default()
            },
        )
        .await?;
        newest = newest
            .into_iter()
            .chain(ended)
            .max_by_key(|e: &proxflow_schemas::workflow::IndexEntry| e.created_at);
    }
    match newest {
        Some(entry) => Ok(engine.get(&entry.id).await?),
        None => Ok(None),
    }
}

fn standing(passed: bool, at: DateTime<Utc>, now: DateTime<Utc>, max_age: Duration) -> Standing {
    if !passed {
        Standing::Failed
    } else if age_secs(now, at) > max_age.as_secs() {
        Standing::Late
    } else {
        Standing::Ok
    }
}

async fn export(
    js: &jetstream::Context,
    engine: &Engine,
    expect: &Expectations,
    now: DateTime<Utc>,
) -> Result<Option<JobResult>, ViewError> {
    let Some(run) = newest_ended(engine, "config_export").await? else {
        return Ok(None);
    };
    let passed = run.state == WorkflowState::Succeeded;
    let summary = if passed {
        let events: Vec<ExportCompleted> =
            history::since(js, stream::EVT, ExportCompleted::SUBJECT, run.created_at, 1).await?;
        events.into_iter().next().map_or_else(
            || "completed".to_owned(),
            |e| {
                format!(
                    "{} files, {} changed since the last bundle",
                    e.report.files,
                    e.report.changes.len()
                )
            },
        )
    } else {
        run.error.clone().unwrap_or_else(|| "failed".to_owned())
    };
    Ok(Some(JobResult {
        standing: standing(passed, run.updated_at, now, expect.export_max_age),
        workflow_id: run.id,
        at: run.updated_at,
        passed,
        summary,
    }))
}

async fn drill(
    js: &jetstream::Context,
    engine: &Engine,
    expect: &Expectations,
    now: DateTime<Utc>,
) -> Result<Option<JobResult>, ViewError> {
    let Some(run) = newest_ended(engine, "restore_drill").await? else {
        return Ok(None);
    };
    let events: Vec<DrillCompleted> =
        history::since(js, stream::EVT, DrillCompleted::SUBJECT, run.created_at, 1).await?;
    let report = events.into_iter().next().filter(|e| e.run == run.id);
    let (passed, summary) = match (&report, run.state) {
        (Some(e), _) => {
            let failed: Vec<&str> = e
                .report
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.check.as_str())
                .collect();
            let passed = e.report.verdict == Verdict::Pass;
            let summary = if passed {
                format!("{} checks passed", e.report.checks.len())
            } else {
                format!("failed: {}", failed.join(", "))
            };
            (passed, summary)
        }
        (None, WorkflowState::Succeeded) => (true, "completed".to_owned()),
        (None, _) => (
            false,
            run.error.clone().unwrap_or_else(|| "failed".to_owned()),
        ),
    };
    Ok(Some(JobResult {
        standing: standing(passed, run.updated_at, now, expect.drill_max_age),
        workflow_id: run.id,
        at: run.updated_at,
        passed,
        summary,
    }))
}
