//! `proxflow dev`: the whole pipeline on one machine with nothing but this binary and nats-server:
//! the embedded nats-server, the Proxmox simulator (unless `dev.simulator = false`) and every service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proxflow_pve_sim::RunningSim;
use proxflow_runtime::config::{NATS_URL_ENV, NatsUrls, Secret};
use proxflow_runtime::nats_server::{self, NatsServerProcess, ServerOptions};
use proxflow_runtime::telemetry::SpanSink;

use crate::compose::{self, Listening};
use crate::settings::Settings;
use crate::sim;

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
        settings.provision.join.command = settings.dev.simulated_join.clone();
        // The simulated VMs run no k3s (kubectl has no cluster to cordon) and the simulated host no
        // sshd: patching runs on request only (`proxflow patch run --dry-run` shows a plan).
        settings.patch.enabled = false;
        Some(sim)
    } else {
        None
    };
    // The gateway refuses to run without a credential; dev makes up a webhook secret and a bearer
    // token (printed in the summary, for `proxflow provision --wait` and other callers) so that it
    // runs on the defaults.
    let mut credentials = Vec::new();
    if settings.gateway.require_auth && settings.gateway.webhook_secrets.is_empty() {
        let secret = proxflow_gateway::webhook::generate_secret();
        settings.gateway.webhook_secrets.push(secret.clone());
        credentials.push(format!(
            "PROXFLOW_GATEWAY__WEBHOOK_SECRETS={}",
            secret.expose()
        ));
    }
    if settings.gateway.require_auth && settings.gateway.bearer_tokens.is_empty() {
        let token = proxflow_gateway::webhook::generate_secret();
        settings
            .gateway
            .bearer_tokens
            .insert("dev".into(), token.clone());
        credentials.push(format!(
            "PROXFLOW_GATEWAY__BEARER_TOKENS__DEV={}",
            token.expose()
        ));
    }
    let report =
        |listening: &Listening| print_summary(&nats, simulator.as_ref(), &credentials, listening);
    // Each entry says whether dev runs it (the snapshotter and the replicator need something to
    // work on, and dev has no ZFS by default).
    let services: Vec<_> = compose::SERVICES
        .iter()
        .filter(|s| (s.in_dev)(settings))
        .collect();
    let result = compose::run(settings, &services, spans, Some(&report)).await;
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    result
}

fn print_summary(
    nats: &str,
    simulator: Option<&RunningSim>,
    credentials: &[String],
    listening: &Listening,
) {
    let mut text = format!("proxflow dev is up\n  nats     {nats}\n");
    if let Some(sim) = simulator {
        text.push_str(&sim::endpoint_line(sim, "  "));
    }
    if let Some(gateway) = listening.gateway {
        text.push_str(&format!(
            "  gateway  http://{gateway}  (/v1/provision, /v1/alerts/alertmanager, /v1/workflows/{{id}}, /v1/remediations, /v1/patch/runs, /metrics)\n"
        ));
    }
    if !credentials.is_empty() {
        text.push_str(&format!(
            "  auth     export {}  (for proxflow provision)\n",
            credentials.join(" ")
        ));
    }
    text.push_str(&format!(
        "  ops      http://{}/metrics\nCtrl-C stops everything.\n",
        listening.ops
    ));
    sim::say(&text);
}
