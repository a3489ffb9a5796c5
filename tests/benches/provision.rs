//! `just bench`: makespan of concurrent provisions against the Proxmox simulator, and its ratio to
//! one provision's critical path (target ≤ 1.5): 50 provisions on one nats-server, then 20 on the
//! shipped 3-node cluster (every stream and bucket R3).
//!
//! Task durations are fixed (the simulator's defaults × `time_scale` 0.5: clone 1 s, config 100 ms,
//! resize 150 ms, start 500 ms, guest agent 250 ms after start), the join command is a no-op honouring the
//! contract. The critical path is measured, not computed: one provision alone on the same platform,
//! from publishing its request to its workflow record reading `succeeded`. Then the requests are
//! published at once and the makespan runs until the last one succeeds. `BENCH_PROVISIONS` and
//! `BENCH_CLUSTER_PROVISIONS` change 50 and 20 (0 skips that platform).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use proxflow_e2e::JOIN_OK;
use proxflow_provisioner::ProvisionConfig;
use proxflow_pve_sim::SimConfig;
use proxflow_schemas::workflow::WorkflowState;
use support::Platform;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    proxflow_e2e::bench_main(|| async {
        let n = count("BENCH_PROVISIONS", 50);
        if n > 0 {
            let p = Platform::start_with(JOIN_OK, sim, |c| burst(c, n)).await;
            report("one nats-server", n, measure(&p, n).await);
        }
        let n = count("BENCH_CLUSTER_PROVISIONS", 20);
        if n > 0 {
            let p = Platform::start_on_cluster(JOIN_OK, sim, |c| burst(c, n)).await;
            report("3-node cluster, R3", n, measure(&p, n).await);
        }
    });
}

fn sim(c: &mut SimConfig) {
    c.time_scale = 0.5;
}

/// The burst is the point here, so neither the consumer nor the profile's caps may queue it.
fn burst(prov: &mut ProvisionConfig, n: usize) {
    prov.consumer.max_in_flight = n.max(1);
    for profile in prov.profiles.0.values_mut() {
        profile.max_concurrent = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        profile.max_per_hour = u32::MAX;
    }
}

/// One provision alone (the critical path), then `n` at once (the makespan).
async fn measure(p: &Platform, n: usize) -> (Duration, Duration) {
    let start = Instant::now();
    let id = p.request("bench-single", "bench-single").await;
    let one = p.until_ended(&id).await;
    assert_eq!(one.state, WorkflowState::Succeeded, "{:?}", one.error);
    let critical = start.elapsed();

    let start = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            p.request(&format!("bench-{i}"), &format!("bench-{i}"))
                .await,
        );
    }
    for id in &ids {
        let r = p.until_ended(id).await;
        assert_eq!(r.state, WorkflowState::Succeeded, "{id}: {:?}", r.error);
    }
    (critical, start.elapsed())
}

fn report(platform: &str, n: usize, (critical, makespan): (Duration, Duration)) {
    println!("provisioning on {platform}, simulator at time_scale 0.5:");
    println!(
        "  one provision (critical path):  {:>8.0} ms",
        critical.as_secs_f64() * 1e3
    );
    println!(
        "  {n} concurrent provisions:       {:>8.0} ms makespan",
        makespan.as_secs_f64() * 1e3
    );
    println!(
        "  ratio makespan / critical path: {:>8.2}  (target <= 1.5)",
        makespan.as_secs_f64() / critical.as_secs_f64()
    );
}
