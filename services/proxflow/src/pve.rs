//! `proxflow pve check`: is the configured Proxmox reachable, trusted, and does the token work?
//!
//! The first thing to run after creating the API token: it exercises exactly the settings the services
//! will use (URL, TLS trust, token) and prints what the token can see.

use anyhow::Context;
use proxflow_pve::{PveClient, PveConfig};
use proxflow_runtime::config::Validate;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Connects with `[pve]` and prints the node, its VMs and its storages.
pub async fn check(config: &PveConfig) -> anyhow::Result<()> {
    config.validate()?;
    let client = PveClient::new(config)?;
    let node = client
        .node_status()
        .await
        .with_context(|| format!("reading node '{}' at {}", config.node, config.url))?;
    println!(
        "Proxmox {} node {}: {}, {} CPUs, memory {:.1}/{:.1} GiB, load {}",
        config.url,
        client.node(),
        node.pveversion,
        node.cpuinfo.cpus,
        node.memory.used as f64 / GIB,
        node.memory.total as f64 / GIB,
        node.loadavg
            .iter()
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut vms = client.list_vms().await.context("listing VMs")?;
    vms.sort_by_key(|v| v.vmid);
    println!("VMs ({}):", vms.len());
    for vm in &vms {
        let state = if vm.template {
            "template"
        } else {
            vm.status.as_str()
        };
        println!(
            "  {:>6}  {:<28} {:<9} {:>3} vCPU {:>6.1} GiB{}",
            vm.vmid,
            vm.name.as_deref().unwrap_or("-"),
            state,
            vm.cpus,
            vm.maxmem as f64 / GIB,
            vm.lock
                .as_deref()
                .map(|l| format!("  lock: {l}"))
                .unwrap_or_default()
        );
    }
    println!("Storages:");
    for s in client.storages().await.context("listing storages")? {
        let pct = if s.total > 0 {
            100.0 * s.used as f64 / s.total as f64
        } else {
            0.0
        };
        println!(
            "  {:<14} {:<8} {:>5.1}% of {:.1} GiB used{}",
            s.storage.as_deref().unwrap_or("-"),
            s.storage_type,
            pct,
            s.total as f64 / GIB,
            if s.active { "" } else { "  (inactive)" }
        );
    }
    Ok(())
}
