//! # proxflow
//!
//! The one binary. `proxflow dev` runs the whole pipeline on embedded defaults (a nats-server child,
//! every service); `proxflow serve <service>...` runs chosen services as one process, the production
//! shape; the other subcommands are operator tools.
//!
//! ## Layout
//! - `cli`: arguments.
//! - `settings`: the composed configuration file (`[nats]`, `[gateway]`, ...).
//! - `compose`: connecting, declaring the topology and running services until shutdown.
//! - `dev`: the embedded nats-server and simulator, what dev runs on the defaults, its kept
//!   credentials, and the summary of what runs where.
//! - `sim`: `proxflow sim`, the Proxmox VE simulator on its own.
//! - `sim_hooks`: `proxflow sim-hook` (hidden), the kubectl and host upgrade dev's patcher runs
//!   against the simulated platform.
//! - `pve`: `proxflow pve check`.
//! - `provision`: `proxflow provision`, a signed provisioning request to the gateway.
//! - `trace`: `proxflow trace`, a workflow's trace read back from the bus.
//! - `remediations`: `proxflow remediations`, the remediation audit trail.
//! - `workflows`, `approvals`, `deadletters`: `proxflow workflows|workflow <id>`, `proxflow
//!   approvals`, `proxflow deadletters [replay <seq>]`, the operator's read models
//!   (`proxflow-view`) as tables or JSON; `listing`: the tables, times and `--since` they share.
//! - `lifecycle`: `proxflow export`, `proxflow drill`, the lifecycle jobs' operator side.
//! - `health`: `proxflow health check|scrub`, a disk and pool health check or scrub run now.
//! - `schedule`: `proxflow schedule`, every scheduled job with its last and next run.
//! - `capacity`: `proxflow capacity review`, the capacity review of a window.
//! - `nats_accounts`: `proxflow nats-accounts`, the NATS users' permissions generated from the names.

mod approvals;
mod capacity;
mod cli;
mod compose;
mod deadletters;
mod dev;
mod expectations;
mod health;
mod lifecycle;
mod listing;
mod nats_accounts;
mod patch;
mod provision;
mod pve;
mod remediations;
mod schedule;
mod settings;
mod sim;
mod sim_hooks;
mod status;
mod trace;
mod workflows;

use std::process::ExitCode;

/// jemalloc returns freed pages to the system after its decay (10 s): with glibc's malloc the
/// gateway's RSS kept growing across rounds of 2,500 abusive connections (26 → 40 MiB over five
/// rounds), with jemalloc it stays around 20–26 MiB (`just bench`, edge).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;

/// sysexits' EX_CONFIG: configuration error.
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    proxflow_runtime::install_crypto_provider();
    let cli = cli::Cli::parse();
    let config = match settings::Settings::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("proxflow: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli::execute(cli.command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxflow: {e:#}");
            // A section validated only when a command needs it is still a configuration error.
            if e.downcast_ref::<proxflow_runtime::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
