//! `proxflow health check [--audit]` and `proxflow health scrub`: a disk and pool health run now
//! (a `disk_health` or `pool_scrub` workflow run by the lifecycle service), its findings printed,
//! the exit code 1 when anything is wrong.

use std::time::Duration;

use anyhow::{Context, bail};
use proxflow_lifecycle::health::config::{AUDIT_JOB, CHECK_JOB, SCRUB_JOB};
use proxflow_schemas::health::{
    CheckMode, DISK_HEALTH_KIND, Finding, HealthInput, HealthReport, POOL_SCRUB_KIND, ScanStatus,
    ScrubInput, ScrubReport,
};

use crate::lifecycle::{JobError, run_job};
use crate::settings::Settings;

/// `proxflow health ...`.
#[derive(Debug, clap::Subcommand)]
pub enum HealthCommand {
    /// Check every disk and pool now and print the findings; exit 1 when anything is wrong.
    Check {
        /// The quarterly audit: also every disk's full SMART report and the pools' properties
        /// (in the report; `--json` prints them).
        #[arg(long)]
        audit: bool,
        /// How long to wait for the run to end.
        #[arg(long, default_value = "5m", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scrub now and wait for the result; exit 1 when the scrub found errors.
    Scrub {
        /// The pools (default: `health.pools`).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// How long to wait for the run to end (`health.scrub_timeout` bounds the scrub itself).
        #[arg(long, default_value = "13h", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `proxflow health ...`.
pub async fn run(settings: &Settings, command: HealthCommand) -> anyhow::Result<()> {
    match command {
        HealthCommand::Check {
            audit,
            timeout,
            json,
        } => {
            let (mode, job, flags) = if audit {
                (CheckMode::Audit, AUDIT_JOB, " --audit")
            } else {
                (CheckMode::Daily, CHECK_JOB, "")
            };
            let input = HealthInput {
                mode,
                requested_by: "cli".into(),
            };
            let record = run_job(settings, DISK_HEALTH_KIND, job, &input, flags, timeout)
                .await
                .map_err(JobError::into_anyhow)?;
            let report: HealthReport =
                serde_json::from_value(record.data.get("output").cloned().unwrap_or_default())
                    .context("the run's report")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_check(&report));
            }
            verdict(&report.findings)
        }
        HealthCommand::Scrub {
            pools,
            timeout,
            json,
        } => {
            let input = ScrubInput {
                pools,
                requested_by: "cli".into(),
            };
            let record = run_job(settings, POOL_SCRUB_KIND, SCRUB_JOB, &input, "", timeout)
                .await
                .map_err(JobError::into_anyhow)?;
            let report: ScrubReport =
                serde_json::from_value(record.data.get("output").cloned().unwrap_or_default())
                    .context("the run's report")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_scrub(&report));
            }
            verdict(&report.findings)
        }
    }
}

fn verdict(findings: &[Finding]) -> anyhow::Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    bail!("{} finding(s): unhealthy", findings.len())
}

fn scan_line(scan: &ScanStatus) -> String {
    if scan.text.is_empty() {
        "no scan reported".to_owned()
    } else {
        scan.text.clone()
    }
}

fn render_findings(out: &mut String, findings: &[Finding]) {
    if findings.is_empty() {
        out.push_str("healthy: no findings\n");
    }
    for f in findings {
        out.push_str(&format!("FINDING {}\n", f.detail));
    }
}

fn render_check(r: &HealthReport) -> String {
    let mut out = String::new();
    for p in &r.pools {
        let errors: u64 = p.vdevs.iter().map(|v| v.errors()).sum();
        out.push_str(&format!(
            "pool {:<16} {:<9} device errors {:<6} {}\n",
            p.pool,
            p.state,
            errors,
            scan_line(&p.scan)
        ));
    }
    for d in &r.disks {
        out.push_str(&format!(
            "disk {:<16} {:<9} {}{}\n",
            d.devpath,
            d.smart_health.as_deref().unwrap_or(&d.health),
            d.wearout
                .map_or_else(|| "wear n/a".to_owned(), |w| format!("{w} % life left")),
            d.model
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        ));
    }
    render_findings(&mut out, &r.findings);
    out
}

fn render_scrub(r: &ScrubReport) -> String {
    let mut out = String::new();
    for p in &r.pools {
        let how = match (&p.error, p.finished) {
            (Some(e), _) => format!("not scrubbed: {e}"),
            (None, false) => "still running when the run stopped waiting".to_owned(),
            (None, true) => format!(
                "repaired {} bytes, {} errors, took {} s",
                p.scan.repaired_bytes.unwrap_or(0),
                p.scan.errors.unwrap_or(0),
                p.scan.duration_secs.unwrap_or(0)
            ),
        };
        out.push_str(&format!(
            "pool {:<16} {:<9} {how}{}\n",
            p.pool,
            p.state,
            if p.already_running {
                " (was already running)"
            } else {
                ""
            }
        ));
    }
    render_findings(&mut out, &r.findings);
    out
}
