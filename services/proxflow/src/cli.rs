//! Command-line interface.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Parser, Subcommand};

use crate::provision::ProvisionArgs;
use crate::settings::Settings;
use crate::{compose, dev, provision, pve, sim, trace};

/// proxflow: event-driven automation for a Proxmox VE + k3s platform.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML config file (else PROXFLOW_CONFIG; PROXFLOW_* variables override it).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline locally: a nats-server child (unless PROXFLOW_NATS_URL is set) and every service.
    Dev,
    /// Run the named services in this process, against the configured NATS.
    Serve {
        /// Services to run.
        #[arg(required = true, value_parser = service_names())]
        services: Vec<String>,
    },
    /// Print the effective configuration (defaults < file < environment), secrets redacted.
    Config,
    /// Run the Proxmox VE API simulator (`[sim]`) until Ctrl-C.
    Sim,
    /// Proxmox operator tools.
    Pve {
        #[command(subcommand)]
        command: PveCommand,
    },
    /// Print a workflow's trace as a tree (durations, errors, Proxmox task ids), as the services
    /// recorded it on the bus (`PF_TRACE`, kept 7 days).
    Trace {
        /// Workflow id (looked up in pf_workflows), or a trace id (32 hex digits).
        id: String,
        /// Print the span records as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// The remediation audit trail: every decision on an alert (acted, or suppressed and by which
    /// guard), from the event stream.
    Remediations {
        /// How far back (`24h`, `30m`).
        #[arg(long, default_value = "24h", value_parser = humantime_serde::re::humantime::parse_duration)]
        since: std::time::Duration,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the decision events as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The platform at a glance (the console's first screen in text): host gauges against their
    /// limits, pools, replication lag, snapshot ages, the last export and drill, running
    /// workflows, plans waiting for approval, the latest remediations.
    Status {
        /// Print the overview as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The workflows, newest first, from the index: id, kind, state, current step, age, last
    /// change. Narrow with --kind, --state, --since.
    Workflows(crate::workflows::ListArgs),
    /// One workflow: where it stands, its origin, steps (attempts, errors), the signals it was
    /// given and the children it started.
    Workflow {
        /// The workflow id.
        id: String,
        /// Print the record, its signals and children as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The patch runs waiting for a decision: what each plan holds and the command that approves
    /// it.
    Approvals {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What consumers gave up on, newest first (`replay <seq>` publishes one's original again,
    /// once).
    Deadletters(crate::deadletters::DeadLettersArgs),
    /// Capacity tools: the monthly capacity review.
    Capacity {
        #[command(subcommand)]
        command: crate::capacity::CapacityCommand,
    },
    /// Ask the gateway for a new k3s node VM (a signed webhook request) and print its workflow.
    Provision(Box<ProvisionArgs>),
    /// Patching: start a run, see runs and plans, approve or reject a plan.
    Patch {
        #[command(flatten)]
        gateway: crate::patch::GatewayArgs,
        #[command(subcommand)]
        command: crate::patch::PatchCommand,
    },
    /// The weekly host-config export: run one now, verify or compare bundles.
    Export {
        #[command(subcommand)]
        command: crate::lifecycle::ExportCommand,
    },
    /// The quarterly restore drill: run one now; the exit code follows the verdict.
    Drill {
        #[command(subcommand)]
        command: crate::lifecycle::DrillCommand,
    },
    /// Disk and pool health: check now (or audit), scrub now; the exit code follows the findings.
    Health {
        #[command(subcommand)]
        command: crate::health::HealthCommand,
    },
    /// Every scheduled job (snapshots, replication, patching, lifecycle) with its last and next run.
    Schedule {
        /// Print the jobs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Snapshot tools.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Write the JSON Schema of every wire type into a directory.
    Schemas {
        /// Output directory.
        #[arg(long, default_value = "schemas/json")]
        out: PathBuf,
    },
    /// Write the NATS users and their least-privilege permissions (nats-server config), generated
    /// from the consumer table and the subjects of the message types.
    NatsAccounts {
        /// Output file.
        #[arg(long, default_value = "deploy/nats/accounts.conf")]
        out: PathBuf,
    },
    /// The commands `proxflow dev` runs in place of what the simulated platform lacks (kubectl,
    /// the host's upgrade over SSH).
    #[command(hide = true)]
    SimHook {
        #[command(subcommand)]
        hook: crate::sim_hooks::SimHook,
    },
}

/// `proxflow pve ...`.
#[derive(Debug, Subcommand)]
pub enum PveCommand {
    /// Check `[pve]`: reach the API, verify TLS and the token, list the node's VMs and storages.
    Check,
}

/// `proxflow snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Print what the `[snapshot]` policies would create and prune now (a dry run: reads the
    /// targets' snapshots, changes nothing).
    Plan,
}

/// The names `serve` accepts: the services in [`compose::SERVICES`], each with its description;
/// any other name is refused with the list.
fn service_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        compose::SERVICES
            .iter()
            .map(|s| PossibleValue::new(s.name).help(s.about)),
    )
}

/// Runs a subcommand.
pub async fn execute(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Dev => dev::run(settings).await,
        Command::Serve { services } => {
            // The process's name, for its own spans; each service's spans carry the service's
            // (`telemetry::service`).
            let name = services.join("+");
            let services = services
                .iter()
                .map(|name| {
                    compose::service(name).with_context(|| format!("unknown service {name:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let telemetry = proxflow_runtime::telemetry::init(&settings.telemetry, &name)?;
            let result = compose::run(&settings, &services, telemetry.spans(), None).await;
            telemetry.shutdown().await;
            result
        }
        Command::Config => {
            print!(
                "{}",
                toml::to_string_pretty(&settings).context("rendering config")?
            );
            Ok(())
        }
        Command::Schemas { out } => write_schemas(&out),
        Command::NatsAccounts { out } => crate::nats_accounts::write(&out),
        Command::Snapshot {
            command: SnapshotCommand::Plan,
        } => snapshot_plan(&settings).await,
        Command::Provision(args) => provision::run(&settings, *args).await,
        Command::Patch { gateway, command } => crate::patch::run(&settings, gateway, command).await,
        Command::Export { command } => crate::lifecycle::export(&settings, command).await,
        Command::Drill { command } => crate::lifecycle::drill(&settings, command).await,
        Command::Health { command } => crate::health::run(&settings, command).await,
        Command::Status { json } => crate::status::run(&settings, json).await,
        Command::Schedule { json } => crate::schedule::run(&settings, json).await,
        Command::Capacity { command } => crate::capacity::run(&settings, command).await,
        Command::Workflows(args) => crate::workflows::list(&settings, args).await,
        Command::Workflow { id, json } => crate::workflows::show(&settings, &id, json).await,
        Command::Approvals { json } => crate::approvals::run(&settings, json).await,
        Command::Deadletters(args) => crate::deadletters::run(&settings, args).await,
        Command::Trace { id, json } => trace::run(&settings.nats, &id, json).await,
        Command::Remediations { since, limit, json } => {
            crate::remediations::run(&settings.nats, since, limit, json).await
        }
        Command::Sim => {
            let telemetry = proxflow_runtime::telemetry::init(&settings.telemetry, "pve-sim")?;
            let result = sim::run(&settings.sim).await;
            telemetry.shutdown().await;
            result
        }
        Command::Pve {
            command: PveCommand::Check,
        } => pve::check(&settings.pve).await,
        Command::SimHook { hook } => crate::sim_hooks::run(hook).await,
    }
}

/// `proxflow snapshot plan`: the policies' plans against the real targets, nothing changed.
async fn snapshot_plan(settings: &Settings) -> anyhow::Result<()> {
    use proxflow_runtime::clock::Clock;
    let backends = proxflow_snapshotter::target::Backends::from_config(
        &settings.snapshot,
        compose::snapshot_pve(settings)?,
    );
    let now = proxflow_runtime::clock::SystemClock.now();
    let plans = proxflow_snapshotter::service::plan_all(&settings.snapshot, &backends, now).await?;
    if plans.is_empty() {
        println!("no [[snapshot.policies]] configured");
    }
    print!("{}", proxflow_snapshotter::service::render_plans(&plans));
    Ok(())
}

fn write_schemas(out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for doc in proxflow_schemas::registry::all() {
        let path = out.join(doc.id.file_name());
        std::fs::write(&path, doc.to_file_contents())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
