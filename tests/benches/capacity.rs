//! `just bench`: one capacity poll of a simulated platform with 10,000 VMs.
//!
//! The simulator is started on a generated scenario: the seed's node with 4 TiB of memory and 256
//! cores, 10,000 running VMs (every 100th a k3s node of cluster `k3s`). Printed:
//! - **evaluate** — computing the sample and feeding every detector from what Proxmox returned
//!   (the part the target applies to: < 50 ms), median and worst of 50 rounds;
//! - **fetch** — the five Proxmox requests over HTTPS and decoding them (two lists of 10,000 VMs);
//! - **poll** — one whole poll: fetch, evaluate, the sample event, detector state in KV;
//! - the memory the detectors hold once every window is full (all clusters over the threshold).
//!
//! `BENCH_VMS` changes 10,000.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::Utc;
use proxflow_capacity::detector::DetectorState;
use proxflow_capacity::{CapacityConfig, Monitor, compute};
use proxflow_pve_sim::load::Load;
use proxflow_runtime::clock::ManualClock;
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;

fn scenario(vms: u32) -> String {
    let seed = proxflow_pve_sim::scenario::SEED;
    // The seed's node, storages and bridges; its VMs replaced by generated ones.
    let head = &seed[..seed.find("[[vm]]").unwrap()];
    let mut out = head
        .replace("memory = \"128G\"", "memory = \"4T\"")
        .replace("cores = 16", "cores = 256");
    for i in 0..vms {
        let vmid = 1000 + i;
        let tags = if i % 100 == 0 { "k3s;k8s-node" } else { "app" };
        write!(
            out,
            "\n[[vm]]\nvmid = {vmid}\nrunning = true\nuptime = 3600\n[vm.config]\nname = \"vm-{vmid}\"\ncores = 2\nmemory = \"4096\"\nballoon = 2048\ntags = \"{tags}\"\n"
        )
        .unwrap();
    }
    out
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    proxflow_runtime::install_crypto_provider();
    let vms: u32 = std::env::var("BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("platform.toml");
    std::fs::write(&path, scenario(vms)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (sim, pve) = start_sim(|c| c.scenario = Some(path.clone())).await.unwrap();
        let handle = sim.handle();
        for vmid in handle.vm_ids() {
            let cpu = if (vmid - 1000) % 100 == 0 { 0.85 } else { 0.3 };
            handle.set_vm_load(vmid, Load::fixed(cpu, 0.5));
        }
        let nats = TestNats::start().unwrap();
        let ctx = nats.context("capacity-bench").await.unwrap();
        let config = CapacityConfig::default();
        let clock = ManualClock::new(Utc::now());
        let mut monitor = Monitor::new(&ctx.clone().with_clock(clock.shared()), config.clone(), pve)
            .await
            .unwrap();

        let mut fetch = Vec::new();
        let mut inventory = None;
        for _ in 0..5 {
            let t = Instant::now();
            inventory = Some(monitor.fetch().await.unwrap());
            fetch.push(t.elapsed());
        }
        let inventory = inventory.unwrap();
        assert_eq!(inventory.guests.len(), vms as usize);

        // Evaluation alone, on the fetched inventory, with detectors fed minute by minute.
        let mut detectors: HashMap<_, DetectorState> = HashMap::new();
        let mut at = Utc::now();
        let mut evaluate = Vec::new();
        for _ in 0..50 {
            at += chrono::Duration::minutes(1);
            let t = Instant::now();
            let sample = compute::evaluate(&inventory, &config, at);
            for (id, kind, value) in compute::observations(&sample) {
                detectors.entry(id).or_default().observe(
                    &config.rule(kind),
                    config.max_gap,
                    at,
                    value,
                );
            }
            evaluate.push(t.elapsed());
        }

        // Whole polls, 20 minutes of them so every over-threshold window is full.
        let mut poll = Vec::new();
        for _ in 0..20 {
            clock.advance(Duration::from_secs(60));
            let t = Instant::now();
            let report = monitor.poll().await.unwrap();
            poll.push(t.elapsed());
            assert!(report.failed.is_none());
        }
        let held: usize = detectors.values().map(DetectorState::memory_bytes).sum();

        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let stats = |v: &mut Vec<Duration>| {
            v.sort();
            (ms(&v[v.len() / 2]), ms(&v[v.len() - 1]))
        };
        let (e50, emax) = stats(&mut evaluate);
        let (f50, fmax) = stats(&mut fetch);
        let (p50, pmax) = stats(&mut poll);
        println!("capacity, one poll of {vms} VMs (simulator over HTTPS, 2 cores):");
        println!(
            "  evaluate (sample + {} detectors): median {e50:.2} ms, worst {emax:.2} ms of 50 (target < 50 ms)",
            detectors.len()
        );
        println!("  fetch (5 Proxmox requests):       median {f50:.1} ms, worst {fmax:.1} ms of 5");
        println!("  whole poll (fetch, evaluate, events, KV): median {p50:.1} ms, worst {pmax:.1} ms of 20");
        println!(
            "  detector memory with full 15-minute windows: {} bytes in the monitor, {held} bytes in the bench's own set ({} detectors)",
            monitor.detector_memory(),
            detectors.len()
        );
    });
}
