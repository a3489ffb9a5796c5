//! The lifecycle jobs on the first screen: the newest config export and restore drill, from their
//! workflow records and completion events.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use proxflow_runtime::bus::history;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::lifecycle::{DrillCompleted, ExportCompleted, Verdict};
use proxflow_schemas::names::stream;
use proxflow_schemas::workflow::{WorkflowRecord, WorkflowState};

use super::platform::age_secs;
use super::{Expectations, JobResult, Standing};
use crate::ViewError;
use crate::workflows::{self, Filter};

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

pub(super) async fn export(
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

pub(super) async fn drill(
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
