//! What the console and `proxflow status` set the bus's figures against, from the configuration:
//! the capacity rules' thresholds, each replication job's RPO (its schedule's period and two hours),
//! each snapshot policy's `slo_max_age`, the lifecycle jobs' periods.

use std::time::Duration;

use chrono::Utc;
use proxflow_runtime::schedule::Schedule;
use proxflow_view::overview::{Expectations, Expected};

use crate::settings::Settings;

/// Slack past a period before a job counts as late: the ReplicationLagging alert's two hours.
const SLACK: Duration = Duration::from_secs(2 * 3600);

/// The time between two slots of `schedule` around now, plus [`SLACK`]; `fallback` when the
/// schedule does not parse (config validation names that elsewhere).
fn period(schedule: &str, timezone: &str, fallback: Duration) -> Duration {
    let now = Utc::now();
    let tz = timezone.parse().unwrap_or(chrono_tz::UTC);
    schedule
        .parse::<Schedule>()
        .ok()
        .and_then(|s| Some((s.last_slot(tz, now)?, s.next_slot(tz, now)?)))
        .and_then(|(last, next)| (next - last).to_std().ok())
        .map_or(fallback, |p| p + SLACK)
}

/// The expectations of `settings`.
pub fn of(settings: &Settings) -> Expectations {
    let capacity = &settings.capacity;
    let day = Duration::from_secs(86_400);
    Expectations {
        cpu_threshold: capacity.rule("host_cpu").threshold,
        memory_threshold: capacity.rule("host_memory").threshold,
        commitment_target: capacity.rule("memory_commitment").threshold,
        sample_interval: capacity.interval,
        replication: settings
            .replication
            .jobs
            .iter()
            .map(|j| Expected {
                name: j.name.clone(),
                max_age: period(&j.schedule, &j.timezone, day + SLACK),
            })
            .collect(),
        snapshots: settings
            .snapshot
            .policies
            .iter()
            .map(|p| Expected {
                name: p.name.clone(),
                max_age: p.slo_max_age,
            })
            .collect(),
        export_max_age: period(
            &settings.export.schedule,
            &settings.export.timezone,
            day * 8,
        ),
        drill_max_age: period(
            &settings.drill.schedule,
            &settings.drill.timezone,
            day * 100,
        ),
    }
}
