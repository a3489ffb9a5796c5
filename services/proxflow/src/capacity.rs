//! `proxflow capacity review`: the capacity review of a window, computed here from the event
//! stream's samples and Proxmox (as `proxflow remediations` reads the bus), printed as Markdown or
//! JSON and, with `--out`, written as the workflow writes it. Fails with the reason when the window
//! has no samples.

use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use proxflow_capacity::review::{self, Sources, Window, render, write};
use proxflow_pve::PveClient;
use proxflow_runtime::bus;
use proxflow_runtime::config::Validate;
use proxflow_runtime::ops::Metrics;
use proxflow_schemas::capacity_review::CapacityReviewInput;

use crate::settings::Settings;

/// `proxflow capacity ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CapacityCommand {
    /// The capacity review of a window (default: the last `capacity.review.window`): per metric the
    /// trend and days to its threshold, memory commitment against the target, top growing VMs and
    /// datasets, snapshot space by policy.
    Review(ReviewArgs),
}

/// `proxflow capacity review`.
#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// Window start: `2026-10-01` (midnight UTC) or RFC 3339 [default: --to minus capacity.review.window].
    #[arg(long, value_parser = parse_time)]
    from: Option<DateTime<Utc>>,
    /// Window end: `2026-11-01` or RFC 3339 [default: now].
    #[arg(long, value_parser = parse_time)]
    to: Option<DateTime<Utc>>,
    /// Print the JSON report instead of the Markdown.
    #[arg(long)]
    json: bool,
    /// Also write `<id>.md` and `<id>.json` into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A date (midnight UTC) or an RFC 3339 time.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{s:?} is neither a date (2026-10-01) nor an RFC 3339 time"))
}

/// Runs a `capacity` subcommand.
pub async fn run(settings: &Settings, command: CapacityCommand) -> anyhow::Result<()> {
    match command {
        CapacityCommand::Review(args) => review_cmd(settings, args).await,
    }
}

async fn review_cmd(settings: &Settings, args: ReviewArgs) -> anyhow::Result<()> {
    let config = &settings.capacity;
    config.validate()?;
    let to = args.to.unwrap_or_else(Utc::now);
    let from = match args.from {
        Some(from) => from,
        None => {
            to - chrono::Duration::from_std(config.review.window)
                .context("capacity.review.window")?
        }
    };
    if to <= from {
        bail!("--to ({to}) must be after --from ({from})");
    }
    settings.pve.validate()?;
    let pve = PveClient::new(&settings.pve)?;
    let bus = bus::connect(&settings.nats, "proxflow capacity review", Metrics::new()).await?;
    let sources = Sources {
        js: bus.js.clone(),
        pve,
        zfs: crate::compose::review_zfs(settings),
        snapshot_prefix: settings.snapshot.prefix.clone(),
    };
    let parts = review::collect(&sources, config, Window { from, to }).await?;
    let report = review::assemble(parts, config);
    if let Some(dir) = &args.out {
        let name = CapacityReviewInput { from, to }.workflow_id();
        let written = write::write(dir, &name, &report)?;
        eprintln!(
            "wrote {} and {} (sha256 {})",
            written.markdown_path, written.json_path, written.sha256
        );
    }
    if args.json {
        print!("{}", write::json(&report).context("encoding the review")?);
    } else {
        print!("{}", render::markdown(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_parse() {
        assert_eq!(
            parse_time("2026-10-01").map(|t| t.to_rfc3339()),
            Ok("2026-10-01T00:00:00+00:00".into())
        );
        assert_eq!(
            parse_time("2026-10-01T12:00:00+02:00").map(|t| t.to_rfc3339()),
            Ok("2026-10-01T10:00:00+00:00".into())
        );
        assert!(parse_time("October").is_err());
    }
}
