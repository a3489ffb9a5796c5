//! The Proxmox simulator as its own process, for the benchmark that measures its memory (RSS) after
//! a thousand provisions. HTTPS on a free port of 127.0.0.1 with the built-in seed, `time_scale` 0
//! (tasks finish at once, still asynchronously). Prints `listening <base url> <fingerprint>`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    proxflow_runtime::install_crypto_provider();
    let sim = proxflow_pve_sim::start(proxflow_pve_sim::SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        tls: true,
        time_scale: 0.0,
        ..proxflow_pve_sim::SimConfig::default()
    })
    .await?;
    println!(
        "listening {} {}",
        sim.base_url(),
        sim.fingerprint().unwrap_or_default()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    proxflow_runtime::shutdown::cancel_on_signal(stop.clone())?;
    stop.cancelled().await;
    sim.shutdown().await;
    Ok(())
}
