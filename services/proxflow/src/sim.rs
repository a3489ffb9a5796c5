//! `proxflow sim`: the Proxmox VE simulator on its own, for developing against it or pointing other
//! tools at it. Prints how to reach it and the settings that make proxflow use it.

use anyhow::Context;
use proxflow_pve_sim::{RunningSim, SimConfig};
use tokio_util::sync::CancellationToken;

/// Starts the simulator, prints where it is, serves until SIGINT/SIGTERM.
pub async fn run(config: &SimConfig) -> anyhow::Result<()> {
    let sim = start(config).await?;
    print_endpoint(&sim, "");
    println!("Use it from proxflow:");
    println!("  export PROXFLOW_PVE__URL={}", sim.base_url());
    if let Some(fp) = sim.fingerprint() {
        println!("  export PROXFLOW_PVE__FINGERPRINT={fp}");
    }
    println!("  export PROXFLOW_PVE__TOKEN_ID='{}'", sim.token_id());
    println!("  export PROXFLOW_PVE__TOKEN_SECRET=<sim.token_secret>");
    println!("Ctrl-C stops it.");
    let stop = CancellationToken::new();
    proxflow_runtime::shutdown::cancel_on_signal(stop.clone())
        .context("installing signal handlers")?;
    stop.cancelled().await;
    sim.shutdown().await;
    Ok(())
}

/// Starts the simulator with a message that says what to fix when it cannot.
pub async fn start(config: &SimConfig) -> anyhow::Result<RunningSim> {
    proxflow_pve_sim::start(config.clone())
        .await
        .with_context(|| format!("starting the Proxmox simulator on {}", config.listen))
}

/// One line: URL and, over HTTPS, the certificate fingerprint to pin.
pub fn print_endpoint(sim: &RunningSim, indent: &str) {
    match sim.fingerprint() {
        Some(fp) => println!(
            "{indent}pve-sim  {}/api2/json  (fingerprint {fp})",
            sim.base_url()
        ),
        None => println!("{indent}pve-sim  {}/api2/json", sim.base_url()),
    }
}
