//! `proxflow dev`: the whole pipeline on one machine with nothing but this binary and nats-server:
//! the embedded nats-server, the Proxmox simulator (unless `dev.simulator = false`) and every service,
//! each with something to do on the defaults ([`platform`]), the gateway's credentials kept across
//! restarts ([`secrets`]), and a summary of what runs where ([`summary`]).

mod platform;
mod secrets;
mod summary;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proxflow_pve_sim::RunningSim;
use proxflow_runtime::config::{ConfigError, NATS_URL_ENV, NatsUrls, Secret};
use proxflow_runtime::nats_server::{self, NatsServerProcess, ServerOptions};
use proxflow_runtime::telemetry::SpanSink;

use crate::compose::{self, Listening};
use crate::settings::Settings;
use crate::sim;
use summary::Summary;

/// Starts the embedded nats-server (unless `PROXFLOW_NATS_URL` points elsewhere), then every service.
pub async fn run(mut settings: Settings) -> anyhow::Result<()> {
    let telemetry = proxflow_runtime::telemetry::init(&settings.telemetry, "proxflow-dev")?;
    // Kept alive for the whole run and stopped cleanly after the services are down and the last
    // spans, which go out through it, are recorded.
    let mut server = None;
    let result = run_inner(&mut settings, &mut server, telemetry.spans()).await;
    telemetry.shutdown().await;
    if let Some(server) = server.as_mut() {
        tokio::task::block_in_place(|| server.stop());
    }
    result
}

async fn run_inner(
    settings: &mut Settings,
    server: &mut Option<NatsServerProcess>,
    spans: &SpanSink,
) -> anyhow::Result<()> {
    let external = std::env::var_os(NATS_URL_ENV).is_some();
    if !external {
        let store_dir = settings.dev.state_dir.join("nats");
        let project = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let bin = nats_server::locate_supported(&project)?;
        let process = NatsServerProcess::start(ServerOptions {
            bin,
            store_dir: store_dir.clone(),
            port: settings.dev.nats_port,
            ready_timeout: Duration::from_secs(20),
            config_file: None,
            config_is_complete: false,
            env: Vec::new(),
        })
        .with_context(|| {
            format!(
                "starting the embedded nats-server (data in {})",
                store_dir.display()
            )
        })?;
        settings.nats.url = NatsUrls::local(process.port());
        *server = Some(process);
    }
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
    let result = run_services(settings, &nats, simulator.as_ref(), spans).await;
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    result
}

/// Sets up what dev adds to the configuration, then runs every service it runs until a signal,
/// printing the summary once they are up.
async fn run_services(
    settings: &mut Settings,
    nats: &str,
    sim: Option<&RunningSim>,
    spans: &SpanSink,
) -> anyhow::Result<()> {
    let zfs = platform::detect_zfs(settings).await;
    platform::apply(settings, &zfs, sim)?;
    // The gateway refuses to run without a credential: dev gives it its kept ones.
    let credentials =
        secrets::apply(&mut settings.gateway, &settings.dev.state_dir).map_err(|e| match e {
            // A file that is not the secrets file is the operator's to fix: exit 78.
            secrets::SecretsError::Parse { .. } => {
                anyhow::Error::from(ConfigError::value("dev.state_dir", e.to_string()))
            }
            other => other.into(),
        })?;
    let settings = &*settings;
    let summary = Summary {
        settings,
        nats: nats.to_owned(),
        simulator: sim.map(|s| sim::endpoint_line(s, "  ")),
        credentials: &credentials,
        zfs: &zfs,
    };
    let report = |listening: &Listening| sim::say(&summary.render(listening));
    // Each entry says whether dev runs it (the snapshotter and the replicator only with something
    // to work on).
    let services: Vec<_> = compose::SERVICES
        .iter()
        .filter(|s| (s.in_dev)(settings))
        .collect();
    compose::run(settings, &services, spans, Some(&report)).await
}
