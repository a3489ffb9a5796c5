//! The `pool_scrub` workflow: start `zpool scrub` on each pool (a scrub already running is waited
//! on, never restarted), look at `zpool status` every `health.scrub_poll` with a durable timer in
//! between — a restart of the lifecycle service resumes the wait, it does not start again — until
//! every scrub finished or `health.scrub_timeout` passed, then read back each result (repaired
//! bytes, errors, duration), announce it on `pf.evt.health.scrubbed`, and on
//! `pf.evt.health.degraded` when the scrub found errors or left the pool unwell.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::{Halt, Run, StepError, Workflow};
use proxflow_schemas::health::{
    Finding, PoolStatus, ScanState, ScrubInput, ScrubOutcome, ScrubReport,
};
use serde::{Deserialize, Serialize};

use super::{HealthChecker, judge};

/// How a pool's scrub began.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScrubStart {
    /// The pool.
    pub pool: String,
    /// One was running already: waited on, not restarted.
    pub already_running: bool,
    /// Why it could not be started (the pool unreadable, zpool refusing).
    pub error: Option<String>,
}

impl HealthChecker {
    /// Starts `pool`'s scrub unless one runs.
    async fn start_scrub(&self, pool: &str) -> ScrubStart {
        let tz = self.config.tz();
        let start = |already_running, error| ScrubStart {
            pool: pool.to_owned(),
            already_running,
            error,
        };
        match self.zfs.pool_health(pool, &tz).await {
            Err(e) => start(false, Some(e.to_string())),
            Ok(s) if s.scan.state == ScanState::Running => start(true, None),
            Ok(_) => match self.zfs.scrub(pool).await {
                Ok(()) => start(false, None),
                Err(e) => start(false, Some(e.to_string())),
            },
        }
    }

    /// The pools among `pools` whose scan still runs (one unreadable now is not waited for).
    async fn still_running(&self, pools: &[String]) -> Vec<String> {
        let tz = self.config.tz();
        let mut running = Vec::new();
        for pool in pools {
            if let Ok(s) = self.zfs.pool_health(pool, &tz).await
                && s.scan.state == ScanState::Running
            {
                running.push(pool.clone());
            }
        }
        running
    }
}

/// The `pool_scrub` workflow.
pub struct PoolScrub {
    /// What it acts on.
    pub checker: Arc<HealthChecker>,
}

/// What the result step reads: each pool's final status, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Read {
    outcomes: Vec<ScrubOutcome>,
    statuses: Vec<PoolStatus>,
    findings: Vec<Finding>,
}

impl Workflow for PoolScrub {
    const KIND: &'static str = super::POOL_SCRUB_KIND;
    type Input = ScrubInput;
    type Output = ScrubReport;
    type Undo = ();

    fn max_attempts(&self) -> u32 {
        5
    }

    async fn run(&self, wf: &mut Run<Self>, input: ScrubInput) -> Result<ScrubReport, Halt> {
        let c = Arc::clone(&self.checker);
        let pools = if input.pools.is_empty() {
            c.config.pools.clone()
        } else {
            input.pools.clone()
        };
        let now = wf.now();
        let began: DateTime<Utc> = wf.step("began", async { Ok(now) }).await?;
        let starts: Vec<ScrubStart> = wf
            .step("start", async {
                let mut starts = Vec::new();
                for pool in &pools {
                    starts.push(c.start_scrub(pool).await);
                }
                Ok(starts)
            })
            .await?;
        let mut running: Vec<String> = starts
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.pool.clone())
            .collect();
        let poll = chrono::Duration::from_std(c.config.scrub_poll)
            .map_err(|e| StepError::terminal(format!("health.scrub_poll: {e}")))?;
        let timeout = chrono::Duration::from_std(c.config.scrub_timeout)
            .map_err(|e| StepError::terminal(format!("health.scrub_timeout: {e}")))?;
        let mut n: i32 = 0;
        // Times come from the recorded start, so a replay takes the same waits.
        while !running.is_empty() {
            let until = began + poll * (n + 1);
            if until > began + timeout {
                break;
            }
            wf.sleep_until(&format!("wait.{n}"), until).await?;
            let looking = running.clone();
            running = wf
                .step(&format!("poll.{n}"), async {
                    Ok(c.still_running(&looking).await)
                })
                .await?;
            n += 1;
        }
        let read: Read = wf
            .step("result", async {
                let ok: Vec<String> = starts
                    .iter()
                    .filter(|s| s.error.is_none())
                    .map(|s| s.pool.clone())
                    .collect();
                let (statuses, mut findings) = c.pools(&ok).await;
                let mut outcomes = Vec::new();
                for s in &starts {
                    let status = statuses.iter().find(|p| p.pool == s.pool);
                    let error = s.error.clone().or_else(|| {
                        status
                            .is_none()
                            .then(|| "status unreadable after the scrub".to_owned())
                    });
                    outcomes.push(ScrubOutcome {
                        pool: s.pool.clone(),
                        already_running: s.already_running,
                        finished: status.is_some_and(|p| p.scan.state == ScanState::Finished),
                        scan: status.map(|p| p.scan.clone()).unwrap_or_default(),
                        state: status.map(|p| p.state.clone()).unwrap_or_default(),
                        error,
                    });
                    if let (Some(e), None) = (&s.error, status) {
                        findings.push(judge::unreadable_pool(&s.pool, e));
                    }
                }
                for p in &statuses {
                    findings.extend(judge::scrub(p));
                    findings.extend(judge::pool(p));
                }
                Ok(Read {
                    outcomes,
                    statuses,
                    findings,
                })
            })
            .await?;
        let report = ScrubReport {
            run: wf.id().to_owned(),
            at: wf.now(),
            pools: read.outcomes,
            findings: read.findings,
        };
        let report: ScrubReport = wf.step("report", async { Ok(report) }).await?;
        wf.note("scrubs", &report.pools);
        wf.step("announce", async {
            c.publisher
                .publish(&report)
                .await
                .map_err(|e| StepError::transient(format!("publishing the scrub: {e}")))?;
            c.announce_degraded(&report.run, report.at, &report.findings)
                .await
        })
        .await?;
        c.metrics
            .record_pools(&pools, &read.statuses, &report.findings);
        Ok(report)
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }
}
