//! # proxflow-gateway
//!
//! The HTTP edge of proxflow. Today it serves the ops endpoints and parents every request's span on the
//! caller's W3C trace context; the provisioning webhook, the Alertmanager receiver and the workflow
//! status API mount on the same router.
//!
//! ## Layout
//! - [`config`] — [`GatewayConfig`].
//! - [`http`] — the router and the per-request trace span.

pub mod config;
pub mod http;

use proxflow_runtime::ServiceContext;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;

/// Why the gateway stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The HTTP server failed.
    #[error("gateway HTTP server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the gateway on `listener` (bound by the caller from [`GatewayConfig::listen`], so it can
/// print the real address when port 0 was asked for) until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    ctx.health.set("gateway http", true);
    let router = http::router(&ctx);
    let result = proxflow_runtime::ops::serve(listener, router, shutdown).await;
    ctx.health.set("gateway http", false);
    Ok(result?)
}
