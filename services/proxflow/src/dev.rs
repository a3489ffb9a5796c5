//! `proxflow dev`: the whole pipeline on one machine with nothing but this binary and nats-server:
//! the embedded nats-server, the Proxmox simulator (unless `dev.simulator = false`) and every service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proxflow_pve_sim::RunningSim;
use proxflow_runtime::config::{NATS_URL_ENV, Secret};
use proxflow_runtime::nats_server::{self, NatsServerProcess, ServerOptions};

use crate::cli::Service;
use crate::compose::{self, Listening};
use crate::settings::Settings;
use crate::sim;

/// Starts the embedded nats-server (unless `PROXFLOW_NATS_URL` points elsewhere), then every service.
pub async fn run(mut settings: Settings) -> anyhow::Result<()> {
    let telemetry = proxflow_runtime::telemetry::init(&settings.telemetry, "proxflow-dev")?;
    let result = run_inner(&mut settings).await;
    telemetry.shutdown().await;
    result
}

async fn run_inner(settings: &mut Settings) -> anyhow::Result<()> {
    let external = std::env::var_os(NATS_URL_ENV).is_some();
    // Kept alive for the whole run and stopped cleanly after the services are down.
    let mut server = if external {
        None
    } else {
        let store_dir = settings.dev.state_dir.join("nats");
        let project = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let bin = nats_server::locate_supported(&project)?;
        let server = NatsServerProcess::start(ServerOptions {
            bin,
            store_dir: store_dir.clone(),
            port: settings.dev.nats_port,
            ready_timeout: Duration::from_secs(20),
            config_file: None,
            env: Vec::new(),
        })
        .with_context(|| {
            format!(
                "starting the embedded nats-server (data in {})",
                store_dir.display()
            )
        })?;
        settings.nats.url = server.url();
        Some(server)
    };
    let nats = if external {
        format!("{} (external, from {NATS_URL_ENV})", settings.nats.url)
    } else {
        format!(
            "{} (embedded, data in {})",
            settings.nats.url,
            settings.dev.state_dir.join("nats").display()
        )
    };
    let simulator = if settings.dev.simulator {
        let sim = sim::start(&settings.sim).await?;
        settings.pve.url = sim.base_url();
        settings.pve.fingerprint = sim.fingerprint();
        settings.pve.token_id = sim.token_id().to_string();
        settings.pve.token_secret = Secret::new(sim.token_secret());
        Some(sim)
    } else {
        None
    };
    let report = |listening: &Listening| print_summary(&nats, simulator.as_ref(), listening);
    let result = compose::run(settings, Service::ALL, Some(&report)).await;
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    if let Some(server) = server.as_mut() {
        tokio::task::block_in_place(|| server.stop());
    }
    result
}

fn print_summary(nats: &str, simulator: Option<&RunningSim>, listening: &Listening) {
    println!("proxflow dev is up");
    println!("  nats     {nats}");
    if let Some(sim) = simulator {
        sim::print_endpoint(sim, "  ");
    }
    if let Some(gateway) = listening.gateway {
        println!("  gateway  http://{gateway}  (/healthz, /readyz, /metrics)");
    }
    println!("  ops      http://{}/metrics", listening.ops);
    println!("Ctrl-C stops everything.");
}
