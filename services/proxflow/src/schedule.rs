//! `proxflow schedule`: every scheduled job of the configuration — snapshot policies, replication
//! jobs, the patch window, the lifecycle jobs (export, drill, health check, audit, scrub) — with
//! its schedule, its last run (from the workflow records or the event stream, where the job leaves
//! them) and its next.

use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use proxflow_lifecycle::health::config::{AUDIT_JOB, CHECK_JOB, SCRUB_JOB};
use proxflow_runtime::bus;
use proxflow_runtime::schedule::Schedule;
use proxflow_runtime::workflow::{Engine, state_name};
use proxflow_schemas::Message;
use proxflow_schemas::health::{DISK_HEALTH_KIND, POOL_SCRUB_KIND};
use proxflow_schemas::names::stream;
use proxflow_schemas::replication::{ReplicationPhase, ReplicationRun};
use proxflow_schemas::snapshot::{SnapshotKind, SnapshotTaken};
use proxflow_schemas::workflow::WorkflowState;
use serde::Serialize;

use crate::settings::Settings;

/// One line of the listing.
#[derive(Debug, Serialize)]
pub struct JobLine {
    /// `export`, `snapshot:daily-vms`, `replication:offsite`, `patch`.
    pub job: String,
    /// The schedule as configured.
    pub schedule: String,
    /// Its time zone.
    pub timezone: String,
    /// When the last run started, if one is known.
    pub last_at: Option<DateTime<Utc>>,
    /// How it went (`succeeded`, `failed`, `running`, `completed`), or the run's id.
    pub last: Option<String>,
    /// The next slot.
    pub next: Option<DateTime<Utc>>,
}

/// How far back the event stream is searched for snapshot and replication runs.
const LOOKBACK_DAYS: i64 = 100;

/// Prints every job.
pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let ctx = crate::lifecycle::cli_context(settings, "proxflow schedule").await?;
    let js = ctx.bus.js.clone();
    let engine = Engine::new(&ctx).await?;
    let now = Utc::now();
    let mut lines = Vec::new();

    let since = now - chrono::Duration::days(LOOKBACK_DAYS);
    let taken: Vec<SnapshotTaken> =
        bus::history::since(&js, stream::EVT, SnapshotTaken::SUBJECT, since, 10_000).await?;
    for policy in &settings.snapshot.policies {
        let last = taken
            .iter()
            .filter(|t| t.kind == SnapshotKind::Scheduled && t.reference == policy.name)
            .map(|t| t.at)
            .max();
        lines.push(line(
            format!("snapshot:{}", policy.name),
            &policy.schedule,
            &policy.timezone,
            last.map(|at| (at, "taken".to_owned())),
            now,
        ));
    }
    let runs: Vec<ReplicationRun> =
        bus::history::since(&js, stream::EVT, ReplicationRun::SUBJECT, since, 10_000).await?;
    for job in &settings.replication.jobs {
        let last = runs
            .iter()
            .filter(|r| r.job == job.name && r.phase != ReplicationPhase::Started)
            .max_by_key(|r| r.at)
            .map(|r| (r.at, format!("{:?}", r.phase).to_lowercase()));
        lines.push(line(
            format!("replication:{}", job.name),
            &job.schedule,
            &job.timezone,
            last,
            now,
        ));
    }
    if settings.patch.enabled {
        let window = settings.patch.window.checked()?;
        let last = newest_run(&engine, proxflow_patcher::KIND).await?;
        lines.push(JobLine {
            job: "patch".into(),
            schedule: format!(
                "window {} {} for {}",
                settings.patch.window.days.join(","),
                settings.patch.window.start,
                humantime_serde::re::humantime::format_duration(settings.patch.window.duration)
            ),
            timezone: settings.patch.window.timezone.clone(),
            last_at: last.as_ref().map(|l| l.0),
            last: last.map(|l| l.1),
            next: window.next_after(now).map(|s| s.start),
        });
    }
    if settings.export.enabled() {
        let export = &settings.export;
        let last = newest_run(&engine, proxflow_lifecycle::export::KIND).await?;
        lines.push(line(
            "export".into(),
            &export.schedule,
            &export.timezone,
            last,
            now,
        ));
    }
    if settings.drill.enabled && !settings.drill_targets().is_empty() {
        let drill = &settings.drill;
        let last = newest_run(&engine, proxflow_lifecycle::drill::KIND).await?;
        lines.push(line(
            "drill".into(),
            &drill.schedule,
            &drill.timezone,
            last,
            now,
        ));
    }
    if settings.health.enabled {
        let health = &settings.health;
        // One line per job; a check and an audit are both `disk_health` runs, told apart by the
        // prefix of their ids.
        for (job, schedule, kind) in [
            (CHECK_JOB, &health.check_schedule, DISK_HEALTH_KIND),
            (AUDIT_JOB, &health.audit_schedule, DISK_HEALTH_KIND),
            (SCRUB_JOB, &health.scrub_schedule, POOL_SCRUB_KIND),
        ] {
            let last = newest_run_of(&engine, kind, job).await?;
            lines.push(line(job.into(), schedule, &health.timezone, last, now));
        }
    }
    let review = &settings.capacity.review;
    let last = newest_run(&engine, proxflow_schemas::capacity_review::KIND).await?;
    lines.push(line(
        "capacity-review".into(),
        &review.schedule,
        &review.timezone,
        last,
        now,
    ));

    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&lines).context("encoding")?
        );
        return Ok(());
    }
    if lines.is_empty() {
        println!("no scheduled jobs are configured");
        return Ok(());
    }
    let at = |t: Option<DateTime<Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
        )
    };
    println!(
        "{:<28} {:<26} {:<22} {:<34} NEXT",
        "JOB", "SCHEDULE", "LAST", ""
    );
    for l in &lines {
        println!(
            "{:<28} {:<26} {:<22} {:<34} {}",
            l.job,
            format!("{} {}", l.schedule, l.timezone),
            at(l.last_at),
            l.last.as_deref().unwrap_or("never run"),
            at(l.next)
        );
    }
    Ok(())
}

fn line(
    job: String,
    schedule: &str,
    timezone: &str,
    last: Option<(DateTime<Utc>, String)>,
    now: DateTime<Utc>,
) -> JobLine {
    let next = Schedule::from_str(schedule)
        .ok()
        .zip(Tz::from_str(timezone).ok())
        .and_then(|(s, tz)| s.next_slot(tz, now));
    JobLine {
        job,
        schedule: schedule.to_owned(),
        timezone: timezone.to_owned(),
        last_at: last.as_ref().map(|l| l.0),
        last: last.map(|l| l.1),
        next,
    }
}

/// The newest workflow of `kind` in any state: when it was created, and `<state> <id>`.
async fn newest_run(
    engine: &Engine,
    kind: &str,
) -> anyhow::Result<Option<(DateTime<Utc>, String)>> {
    newest_run_of(engine, kind, "").await
}

/// Whether `id` is a run of job `job`: `<job>-<slot>` (scheduled) or `<job>-cli-<time>` (by
/// hand). `health-audit-…` is not a run of `health`, though it starts with it.
fn is_run_of(job: &str, id: &str) -> bool {
    id.strip_prefix(job)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_digit()) || rest.starts_with("cli-")
        })
}

/// Like [`newest_run`], among the runs of job `job` (any job when empty).
async fn newest_run_of(
    engine: &Engine,
    kind: &str,
    job: &str,
) -> anyhow::Result<Option<(DateTime<Utc>, String)>> {
    let mut newest: Option<(DateTime<Utc>, String)> = None;
    for state in WorkflowState::ALL {
        for entry in engine.list(kind, state, None).await? {
            if !job.is_empty() && !is_run_of(job, &entry.id) {
                continue;
            }
            if newest.as_ref().is_none_or(|n| entry.created_at > n.0) {
                newest = Some((
                    entry.created_at,
                    format!("{} {}", state_name(state), entry.id),
                ));
            }
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::is_run_of;

    #[test]
    fn a_check_is_not_an_audit() {
        assert!(is_run_of("health", "health-20261209T0500Z"));
        assert!(is_run_of("health", "health-cli-20261209T050000.000Z"));
        assert!(!is_run_of("health", "health-audit-20261001T0530Z"));
        assert!(is_run_of("health-audit", "health-audit-20261001T0530Z"));
        assert!(!is_run_of("scrub", "scrubber-1"));
    }
}
