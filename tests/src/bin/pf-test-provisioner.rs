//! The provisioner service as its own process, for tests that kill it mid-step (`kill -9`) and check
//! that another instance finishes the workflow. Configured by environment: `PF_NATS_URL`,
//! `PF_PVE_URL`, `PF_PVE_TOKEN_ID`, `PF_PVE_SECRET`, `PF_FILE_SD`, `PF_ACK_WAIT_MS`, and optionally
//! `PF_JOIN_SCRIPT` (a `sh -c` script as the join command). Prints `ready` once it consumes.

use std::time::Duration;

use proxflow_e2e::{child_context, child_env as env, child_pve, provisioner_config};
use proxflow_provisioner::ProvisionerSettings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (ctx, telemetry) = child_context("pf-test-provisioner", Duration::from_secs(1)).await?;
    let pve = child_pve()?;
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
