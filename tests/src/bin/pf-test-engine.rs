//! A process that runs the workflow engine with the test workflows (`demo`, `leaf`) on the wall
//! clock, for tests that kill it with SIGKILL in the middle of a wait.
//!
//! Environment: `PF_NATS_URL`, `PF_JOURNAL` (the file the workflows note each execution in),
//! optionally `PF_LEASE_STALE_MS` (when a dead holder's lease is taken over). It prints `ready` once
//! its consumers run.

use anyhow::Context;
use proxflow_e2e::workflows::{Demo, Journal, Leaf};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus;
use proxflow_runtime::config::{ConsumerConfig, NatsConfig, TelemetryConfig};
use proxflow_runtime::ops::{Health, Metrics};
use proxflow_runtime::workflow::Engine;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry =
        proxflow_runtime::telemetry::init(&TelemetryConfig::default(), "pf-test-engine")?;
    let metrics = Metrics::new();
    let nats = NatsConfig {
        url: std::env::var("PF_NATS_URL")
            .context("PF_NATS_URL not set")?
            .parse()?,
        ..NatsConfig::default()
    };
    let journal = Journal(
        std::env::var("PF_JOURNAL")
            .context("PF_JOURNAL not set")?
            .into(),
    );
    let bus = bus::connect(&nats, "pf-test-engine", metrics.clone()).await?;
    let ctx = ServiceContext::new(
        bus,
        Health::default(),
        metrics,
        std::time::Duration::from_secs(2),
    )
    .await?;
    let mut ctx = ctx;
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
