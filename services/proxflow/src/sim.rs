//! `proxflow sim`: the Proxmox VE simulator on its own, for developing against it or pointing other
//! tools at it. Prints how to reach it and the settings that make proxflow use it.

use anyhow::Context;
use proxflow_pve_sim::{RunningSim, SimConfig};
use tokio_util::sync::CancellationToken;

/// Starts the simulator, prints where it is, serves until SIGINT/SIGTERM.
pub async fn run(config: &SimConfig) -> anyhow::Result<()> {
    let sim = start(config).await?;
    let mut text = endpoint_line(&sim, "");
    text.push_str("Use it from proxflow:\n");
    text.push_str(&format!("  export PROXFLOW_PVE__URL={}\n", sim.base_url()));
    if let Some(fp) = sim.fingerprint() {
        text.push_str(&format!("  export PROXFLOW_PVE__FINGERPRINT={fp}\n"));
    }
    text.push_str(&format!(
        "  export PROXFLOW_PVE__TOKEN_ID='{}'\n",
        sim.token_id()
    ));
    text.push_str("  export PROXFLOW_PVE__TOKEN_SECRET=<sim.token_secret>\nCtrl-C stops it.\n");
    say(&text);
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
pub fn endpoint_line(sim: &RunningSim, indent: &str) -> String {
    match sim.fingerprint() {
        Some(fp) => format!(
            "{indent}pve-sim  {}/api2/json  (fingerprint {fp})\n",
            sim.base_url()
        ),
        None => format!("{indent}pve-sim  {}/api2/json\n", sim.base_url()),
    }
}

/// Writes a summary to stdout, ignoring a closed stdout: whoever started the process may stop
/// reading it (a supervisor, a test that found its line), and that must not stop what runs
/// (`println!` would panic on the broken pipe).
pub fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
