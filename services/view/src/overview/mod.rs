//! The status overview: what an SRE with one host looks at first (the console's first screen,
//! `proxflow status`). Every figure is read back from the bus — the newest capacity sample, the
//! newest health check, replication and snapshot events, the lifecycle jobs' events and workflow
//! records, the live workflows, the newest remediation decisions — and set against what the
//! configuration expects ([`Expectations`]: the 70 % thresholds, the 1.5:1 commitment, each
//! replication job's RPO, each snapshot policy's period).

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use proxflow_runtime::bus::history;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::health::HealthReport;
use proxflow_schemas::names::stream;
use proxflow_schemas::remediation::RemediationDecision;
use proxflow_schemas::workflow::{Wait, WorkflowRecord, WorkflowState};
use serde::Serialize;

use crate::ViewError;
use crate::approvals::{self, PendingApproval};
use crate::workflows::{self, Filter};

mod lifecycle;
mod platform;

use lifecycle::{drill, export};
use platform::{capacity, pools, replication, snapshots};

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
