//! The provisioner service as its own process, for tests that kill it mid-step (`kill -9`) and check
//! that another instance finishes the workflow. Configured by environment: `PF_NATS_URL`,
//! `PF_PVE_URL`, `PF_PVE_TOKEN_ID`, `PF_PVE_SECRET`, `PF_FILE_SD`, `PF_ACK_WAIT_MS`, and optionally
//! `PF_JOIN_SCRIPT` (a `sh -c` script as the join command). Prints `ready` once it consumes.

use std::time::Duration;

use anyhow::Context;
use proxflow_e2e::provisioner_config;
use proxflow_provisioner::ProvisionerSettings;
use proxflow_pve::{PveClient, PveConfig};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus;
use proxflow_runtime::config::{NatsConfig, Secret, TelemetryConfig};
use proxflow_runtime::ops::{Health, Metrics};
use tokio_util::sync::CancellationToken;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} not set"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    proxflow_runtime::install_crypto_provider();
    let telemetry =
        proxflow_runtime::telemetry::init(&TelemetryConfig::default(), "pf-test-provisioner")?;
    let metrics = Metrics::new();
    let nats = NatsConfig {
        url: env("PF_NATS_URL")?.parse()?,
        ..NatsConfig::default()
    };
    let bus = bus::connect(&nats, "pf-test-provisioner", metrics.clone()).await?;
    let ctx = ServiceContext::new(bus, Health::default(), metrics, Duration::from_secs(1)).await?;
    let pve = PveClient::new(&PveConfig {
        url: env("PF_PVE_URL")?,
        token_id: env("PF_PVE_TOKEN_ID")?,
        token_secret: Secret::new(env("PF_PVE_SECRET")?),
        task_poll_max: Duration::from_millis(50),
        ..PveConfig::default()
    })?;
    let mut config = provisioner_config(
        env("PF_FILE_SD")?.into(),
        Duration::from_millis(env("PF_ACK_WAIT_MS")?.parse()?),
    );
    if let Ok(script) = std::env::var("PF_JOIN_SCRIPT") {
        config.join.command = vec!["sh".into(), "-c".into(), script];
    }
    println!("ready");
    let stop = CancellationToken::new();
    proxflow_runtime::shutdown::cancel_on_signal(stop.clone())?;
    let result = proxflow_provisioner::run(ctx, ProvisionerSettings { config, pve }, stop).await;
    telemetry.shutdown().await;
    Ok(result?)
}
