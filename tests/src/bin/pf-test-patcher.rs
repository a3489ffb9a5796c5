//! The patcher service as its own process, for tests that kill it (`kill -9`) during a VM's or the
//! host's reboot and check that the run resumes without upgrading or rebooting anything twice.
//! Configured by environment: `PF_NATS_URL`, `PF_PVE_URL`, `PF_PVE_TOKEN_ID`, `PF_PVE_SECRET`,
//! `PF_PATCH_CONFIG` (the `[patch]` section as JSON). Prints `ready` once it runs.

use std::time::Duration;

use proxflow_e2e::{child_context, child_env as env, child_pve};
use proxflow_patcher::{PatchConfig, PatcherSettings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (ctx, telemetry) = child_context("pf-test-patcher", Duration::from_secs(1)).await?;
    let pve = child_pve()?;
    let config: PatchConfig = serde_json::from_str(&env("PF_PATCH_CONFIG")?)?;
    println!("ready");
    let stop = CancellationToken::new();
    proxflow_runtime::shutdown::cancel_on_signal(stop.clone())?;
    let settings = PatcherSettings {
        config,
        pve,
        replication: false,
    };
    let result = proxflow_patcher::run(ctx, settings, stop).await;
    telemetry.shutdown().await;
    Ok(result?)
}
