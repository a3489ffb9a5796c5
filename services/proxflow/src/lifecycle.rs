//! `proxflow export ...` and `proxflow drill run`: the operator's side of the lifecycle jobs — start
//! a run and wait for its verdict ([`run_job`], also `proxflow health`'s), verify and compare
//! bundles.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use proxflow_lifecycle::bundle;
use proxflow_lifecycle::{drill, export};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus;
use proxflow_runtime::ops::{Health, Metrics};
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::lifecycle::{DrillReport, ExportReport, JobInput, Verdict};
use proxflow_schemas::workflow::{Origin, WorkflowRecord, WorkflowState};
use proxflow_zfs::Zfs;

use crate::settings::Settings;

/// `proxflow export ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ExportCommand {
    /// Export now (a `config_export` workflow run by the lifecycle service) and print the report.
    Run {
        /// Collect, compare and report; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for the run to end.
        #[arg(long, default_value = "10m", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
    },
    /// Check a bundle against its manifest (default: the newest where the export writes); exits 1
    /// naming every file that does not match.
    Verify {
        /// A bundle directory, or a bundle's name where the export writes.
        bundle: Option<String>,
    },
    /// What changed between two bundles (default: the two newest).
    Diff {
        /// The older bundle (directory or name).
        old: Option<String>,
        /// The newer bundle (directory or name).
        new: Option<String>,
    },
    /// The bundles where the export writes (`export.dataset` or `export.dir`), oldest first.
    List,
}

/// `proxflow drill ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DrillCommand {
    /// Drill now (a `restore_drill` workflow run by the lifecycle service): print every check and
    /// exit 1 when any failed.
    Run {
        /// Read the snapshot listings and judge lineage, guid and RPO; clone, restore and write
        /// nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for the run to end.
        #[arg(long, default_value = "2h", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `proxflow drill ...`.
pub async fn drill(settings: &Settings, command: DrillCommand) -> anyhow::Result<()> {
    let DrillCommand::Run {
        dry_run,
        timeout,
        json,
    } = command;
    let (input, flags) = cli_input(dry_run);
    let outcome = run_job(settings, drill::KIND, drill::JOB, &input, flags, timeout).await;
    // A failed drill ends the workflow failed; its report is in the record all the same.
    let (record, failure) = match outcome {
        Ok(record) => (Some(record), None),
        Err(JobError::Ended { record, message }) => (Some(*record), Some(message)),
        Err(JobError::Other(e)) => return Err(e),
    };
    let report = record
        .as_ref()
        .and_then(|r| r.data.get("report").or_else(|| r.data.get("output")))
        .and_then(|v| serde_json::from_value::<DrillReport>(v.clone()).ok());
    match (&report, json) {
        (Some(r), true) => println!("{}", serde_json::to_string_pretty(r)?),
        (Some(r), false) => print!("{}", render_drill(r)),
        (None, _) => {}
    }
    match failure {
        Some(message) => bail!("{message}"),
        None => Ok(()),
    }
}

fn render_drill(r: &DrillReport) -> String {
    let mut out = String::new();
    for c in &r.checks {
        out.push_str(&format!(
            "{:<4} {:<8} {:<48} {}\n",
            if c.passed { "ok" } else { "FAIL" },
            c.check,
            c.target,
            c.detail
        ));
    }
    let verdict = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
    };
    out.push_str(&format!(
        "verdict {verdict}{}; RPO {}, RTO {}; checksums {:.1} s, clones {:.1} s{}\n",
        if r.dry_run { " (dry run)" } else { "" },
        r.rpo_secs.map_or("-".to_owned(), |s| format!("{s} s")),
        r.rto_secs.map_or("-".to_owned(), |s| format!("{s:.1} s")),
        r.checksum_secs,
        r.clone_secs,
        if r.report_path.is_empty() {
            String::new()
        } else {
            format!("; report {}", r.report_path)
        }
    ));
    out
}

/// Runs `proxflow export ...`.
pub async fn export(settings: &Settings, command: ExportCommand) -> anyhow::Result<()> {
    match command {
        ExportCommand::Run { dry_run, timeout } => {
            let (input, flags) = cli_input(dry_run);
            let record = run_job(settings, export::KIND, export::JOB, &input, flags, timeout)
                .await
                .map_err(JobError::into_anyhow)?;
            let report: ExportReport =
                serde_json::from_value(record.data.get("output").cloned().unwrap_or_default())
                    .context("the run's report")?;
            print!("{}", render_report(&report));
            Ok(())
        }
        ExportCommand::Verify { bundle } => {
            let dir = match bundle {
                Some(b) => resolve(settings, &b).await?,
                None => newest(settings, 0).await?,
            };
            let v = bundle::verify(&dir)?;
            if v.ok() {
                println!(
                    "{}: ok, {} files match the manifest (sha256 {})",
                    dir.display(),
                    v.files,
                    v.manifest_sha256
                );
                return Ok(());
            }
            for p in &v.problems {
                eprintln!("{p}");
            }
            bail!(
                "{} failed verification: {} of {} files do not match",
                dir.display(),
                v.problems.len(),
                v.files
            )
        }
        ExportCommand::Diff { old, new } => {
            let (old, new) = match (old, new) {
                (Some(o), Some(n)) => (resolve(settings, &o).await?, resolve(settings, &n).await?),
                (Some(o), None) => (resolve(settings, &o).await?, newest(settings, 0).await?),
                _ => (newest(settings, 1).await?, newest(settings, 0).await?),
            };
            let changes = bundle::diff(&bundle::Bundle::read(&old)?, &bundle::Bundle::read(&new)?);
            println!("{} → {}", old.display(), new.display());
            if changes.is_empty() {
                println!("no changes");
            }
            for c in &changes {
                println!("{}", render_change(c));
            }
            Ok(())
        }
        ExportCommand::List => {
            let root = export_root(settings).await?;
            for name in bundle::list(&root)? {
                println!("{}", root.join(name).display());
            }
            Ok(())
        }
    }
}

fn render_change(c: &proxflow_schemas::lifecycle::BundleChange) -> String {
    let what = serde_json::to_value(c.change)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let keys = if c.keys.is_empty() {
        String::new()
    } else {
        format!(": {}", c.keys.join(", "))
    };
    format!("{what:<8} {:<28} {}{keys}", c.subject, c.path)
}

fn render_report(r: &ExportReport) -> String {
    let mut out = format!(
        "bundle {}{}: {} files, {} bytes, manifest sha256 {}\n",
        r.bundle,
        if r.dry_run {
            " (dry run, not written)"
        } else {
            ""
        },
        r.files,
        r.bytes,
        r.manifest_sha256
    );
    if !r.dir.is_empty() {
        out.push_str(&format!("written to {}\n", r.dir));
    }
    match &r.previous {
        Some(p) if r.changes.is_empty() => out.push_str(&format!("no changes since {p}\n")),
        Some(p) => {
            out.push_str(&format!("{} change(s) since {p}:\n", r.changes.len()));
            for c in &r.changes {
                out.push_str(&format!("  {}\n", render_change(c)));
            }
        }
        None => out.push_str("first bundle: nothing to compare with\n"),
    }
    for p in &r.pruned {
        out.push_str(&format!("removed by retention: {p}\n"));
    }
    out
}

/// Where the bundles are: `export.dir`, or the export dataset's mountpoint.
async fn export_root(settings: &Settings) -> anyhow::Result<PathBuf> {
    let config = &settings.export;
    let zfs = Zfs::new(config.zfs_command.clone(), config.zfs_timeout);
    Ok(export::bundles_dir(config, &zfs).await?)
}

/// A bundle given as a directory, or by name where the export writes.
async fn resolve(settings: &Settings, bundle: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(bundle);
    if path.is_dir() {
        return Ok(path.to_owned());
    }
    let dir = export_root(settings).await?.join(bundle);
    if !dir.is_dir() {
        bail!("no bundle {bundle:?}: neither a directory nor a bundle where the export writes");
    }
    Ok(dir)
}

/// The `back`-th newest bundle (0: the newest).
async fn newest(settings: &Settings, back: usize) -> anyhow::Result<PathBuf> {
    let root = export_root(settings).await?;
    let all = bundle::list(&root)?;
    let name = all.iter().rev().nth(back).with_context(|| {
        format!(
            "{} holds {} bundle(s), fewer than needed",
            root.display(),
            all.len()
        )
    })?;
    Ok(root.join(name))
}

/// The CLI's handles on the bus (as `[nats]` says, normally the admin user), for an engine or the
/// event stream.
pub async fn cli_context(settings: &Settings, name: &str) -> anyhow::Result<ServiceContext> {
    let bus = bus::connect(&settings.nats, name, Metrics::new()).await?;
    Ok(ServiceContext::new(
        bus,
        Health::default(),
        Metrics::new(),
        Duration::from_secs(5),
    )
    .await?)
}

/// How often a waiting CLI reads the run's record.
const POLL: Duration = Duration::from_millis(250);

/// Why a run did not succeed.
#[derive(Debug)]
pub enum JobError {
    /// It ended failed or cancelled: its record, and the reason.
    Ended {
        /// The record as it ended.
        record: Box<WorkflowRecord>,
        /// `<id> failed: <reason>`.
        message: String,
    },
    /// It could not be started or watched.
    Other(anyhow::Error),
}

impl JobError {
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            Self::Ended { message, .. } => anyhow::anyhow!(message),
            Self::Other(e) => e,
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for JobError {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

/// The input of a lifecycle job started by hand, and its flags for the record's reason.
fn cli_input(dry_run: bool) -> (JobInput, &'static str) {
    let input = JobInput {
        dry_run,
        requested_by: "cli".into(),
    };
    (input, if dry_run { " --dry-run" } else { "" })
}

/// Starts a run of workflow `kind` (id `<job>-cli-<time>`) with `input` (`flags`: what the
/// operator added, for the record's reason) and waits until it ends; a run that did
/// not succeed is an error with its reason, so the exit code follows the verdict.
pub async fn run_job<I: serde::Serialize>(
    settings: &Settings,
    kind: &str,
    job: &str,
    input: &I,
    flags: &str,
    timeout: Duration,
) -> Result<WorkflowRecord, JobError> {
    let name = format!("proxflow {job} run");
    let engine = Engine::new(&cli_context(settings, &name).await?).await?;
    let now = chrono::Utc::now();
    let id = format!("{job}-cli-{}", now.format("%Y%m%dT%H%M%S%.3fZ"));
    let origin = Origin {
        source: "cli".into(),
        reference: id.clone(),
        reason: format!("{name}{flags}"),
    };
    engine.start_kind(kind, &id, origin, input).await?;
    eprintln!("started {id}");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(record) = engine.get(&id).await? {
            match record.state {
                WorkflowState::Succeeded => return Ok(record),
                WorkflowState::Failed | WorkflowState::Cancelled => {
                    let message = format!(
                        "{id} {}: {}",
                        proxflow_runtime::workflow::state_name(record.state),
                        record.error.as_deref().unwrap_or("no reason recorded")
                    );
                    return Err(JobError::Ended {
                        record: Box::new(record),
                        message,
                    });
                }
                _ => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JobError::Other(anyhow::anyhow!(
                "{id} has not ended after {}: is `proxflow serve lifecycle` running? (`proxflow \
                 trace {id}` shows where it is)",
                humantime_serde::re::humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
