//! `just bench`: makespan of 50 concurrent provisions against the Proxmox simulator, and its ratio to
//! one provision's critical path (target ≤ 1.5).
//!
//! Task durations are fixed (the simulator's defaults × `time_scale` 0.5: clone 1 s, config 100 ms,
//! resize 150 ms, start 500 ms, guest agent 250 ms after start), the join command is a no-op honouring the
//! contract. The critical path is measured, not computed: one provision alone on the same platform,
//! from publishing its request to its workflow record reading `succeeded`. Then 50 requests are
//! published at once and the makespan runs until the last one succeeds. `BENCH_PROVISIONS` changes 50.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use proxflow_e2e::JOIN_OK;
use proxflow_schemas::workflow::WorkflowState;
use support::Platform;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    proxflow_runtime::install_crypto_provider();
    let n: usize = std::env::var("BENCH_PROVISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let p = Platform::start_with(
            JOIN_OK,
            |c| {
                c.time_scale = 0.5;
            },
            |prov| {
                prov.consumer.max_in_flight = n.max(1);
                // The burst is the point here, so the profile's caps must not queue it.
                for profile in prov.profiles.0.values_mut() {
                    profile.max_concurrent = u32::try_from(n).unwrap_or(u32::MAX).max(1);
                    profile.max_per_hour = u32::MAX;
                }
            },
        )
        .await;

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
        let makespan = start.elapsed();
        println!("provisioning, simulator at time_scale 0.5:");
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
    });
}
