//! The gateway as its own process, for the edge benchmark that measures its memory (RSS) while
//! abusive clients hold connections. Configured by environment: `PF_NATS_URL`, `PF_TOKEN` (a bearer
//! token named `bench`), optionally `PF_MAX_CONNECTIONS` (`gateway.http.max_connections`, default
//! as shipped). Listens on a free port of 127.0.0.1 and prints `listening <address>`.

use std::time::Duration;

use proxflow_e2e::{child_context, child_env};
use proxflow_gateway::{GatewayConfig, GatewaySettings};
use proxflow_runtime::config::Secret;
use tokio_util::sync::CancellationToken;

/// The allocator of the `proxflow` binary, so the benchmark measures the RSS it would have.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (ctx, telemetry) = child_context("pf-test-gateway", Duration::from_secs(2)).await?;
    let mut config = GatewayConfig {
        bearer_tokens: [("bench".to_owned(), Secret::new(child_env("PF_TOKEN")?))].into(),
        ..GatewayConfig::default()
    };
    if let Ok(max) = std::env::var("PF_MAX_CONNECTIONS") {
        config.http.max_connections = max.parse()?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let stop = CancellationToken::new();
    proxflow_runtime::shutdown::cancel_on_signal(stop.clone())?;
    let settings = GatewaySettings {
        console: Default::default(),
        config,
        profiles: proxflow_platform::Profiles::default(),
        listener,
        approvers: Vec::new(),
    };
    let result = proxflow_gateway::run(ctx, settings, stop).await;
    telemetry.shutdown().await;
    Ok(result?)
}
