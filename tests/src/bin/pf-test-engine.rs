//! A process that runs the workflow engine with the test workflows (`demo`, `leaf`) on the wall
//! clock, for tests that kill it with SIGKILL in the middle of a wait.
//!
//! Environment: `PF_NATS_URL`, `PF_JOURNAL` (the file the workflows note each execution in),
//! optionally `PF_LEASE_STALE_MS` (when a dead holder's lease is taken over). It prints `ready` once
//! its consumers run.

use proxflow_e2e::workflows::{Demo, Journal, Leaf};
use proxflow_e2e::{child_context, child_env};
use proxflow_runtime::config::ConsumerConfig;
use proxflow_runtime::workflow::Engine;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let journal = Journal(child_env("PF_JOURNAL")?.into());
    let (mut ctx, telemetry) =
        child_context("pf-test-engine", std::time::Duration::from_secs(2)).await?;
    // Tests that kill this process mid-step shorten the staleness of its leases (3 min in service).
    if let Ok(ms) = std::env::var("PF_LEASE_STALE_MS") {
        let stale = std::time::Duration::from_millis(ms.parse()?);
        ctx.leases = ctx.leases.clone().with_stale_after(stale);
    }
    let mut engine = Engine::new(&ctx).await?;
    engine
        .register(Demo(journal.clone()))
        .register(Leaf(journal));
    let stop = CancellationToken::new();
    proxflow_runtime::shutdown::cancel_on_signal(stop.clone())?;
    println!("ready");
    engine.run(&ctx, &ConsumerConfig::default(), &stop).await?;
    ctx.bus.client.flush().await?;
    telemetry.shutdown().await;
    Ok(())
}
