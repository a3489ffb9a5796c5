//! # proxflow-gateway
//!
//! The HTTP edge of proxflow: signed provisioning webhooks become `ProvisionRequested` messages on
//! `pf.ingest.webhook.provision` with a pending workflow record, Alertmanager deliveries become one
//! `AlertReceived` per alert on `pf.ingest.alertmanager.alert`, and workflow records are readable
//! over `GET /v1/workflows/{id}`. Every request's span continues the caller's W3C trace.
//!
//! ## Layout
//! - [`config`] — [`GatewayConfig`] (`[gateway]`).
//! - [`webhook`] — Standard Webhooks signing and verification, shared with `proxflow provision`.
//! - [`auth`] — who is calling: webhook signature, bearer token, or anonymous in demo mode.
//! - [`request`] — the provisioning request body and its field-by-field validation.
//! - [`store`] — the workflow and webhook-id KV buckets.
//! - [`alertmanager`] — Alertmanager's webhook payload (v4), validated field by field.
//! - [`api`] — the handlers: status codes, idempotency, publishing, metrics.
//! - [`console`] — the operator's web console under `/ui` (sessions, pages, the trace waterfall).
//! - [`http`] — the router and the per-request trace span.

pub mod alertmanager;
pub mod api;
pub mod auth;
pub mod config;
pub mod console;
mod http;
pub mod patch;
pub mod request;
pub mod store;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use proxflow_platform::Profiles;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::config::{ConfigError, Validate};
use proxflow_schemas::names::WEBHOOK_ID_TTL_SECS;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::WorkflowAccepted;
pub use config::GatewayConfig;
pub use request::ProvisionRequest;

/// Why the gateway stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// `[gateway]` cannot be served as configured.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A KV bucket could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The HTTP server failed.
    #[error("gateway HTTP server: {0}")]
    Serve(#[from] std::io::Error),
    /// The workflow engine (patch-run signals) could not be opened.
    #[error("gateway workflow engine: {0}")]
    Engine(String),
}

/// Everything the gateway needs beyond the [`ServiceContext`].
#[derive(Debug)]
pub struct GatewaySettings {
    /// `[gateway]`.
    pub config: GatewayConfig,
    /// The VM profiles requests may name (`[provision.profiles]`, owned by the provisioning side).
    pub profiles: Profiles,
    /// Bound by the caller from [`GatewayConfig::listen`], so it can print the real address when
    /// port 0 was asked for.
    pub listener: TcpListener,
    /// Bearer-token names that may approve or reject patch plans (`patch.approvers`).
    pub approvers: Vec<String>,
    /// What the console's overview sets its figures against (thresholds, RPOs, periods).
    pub console: proxflow_view::overview::Expectations,
}

/// Serves the gateway on `settings.listener` until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    settings: GatewaySettings,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let GatewaySettings {
        config,
        profiles,
        listener,
        approvers,
        console,
    } = settings;
    config.validate()?;
    config.check_credentials()?;
    if !config.require_auth {
        tracing::warn!(
            "gateway.require_auth is off: unauthenticated requests can provision VMs and read \
             workflows (local demos only)"
        );
    }
    let auth = auth::Authenticator::new(
        &config.webhook_secrets,
        &config.bearer_tokens,
        config.signature_tolerance,
        Duration::from_secs(WEBHOOK_ID_TTL_SECS),
        config.require_auth,
    )
    .map_err(|e| ConfigError::value("gateway.webhook_secrets", e.to_string()))?
    .with_basic(&config.alerts.basic_auth);
    let store = store::Store::open(&ctx.bus.js).await?;
    let max_payload = ctx.bus.client.server_info().max_payload;
    if config.max_body > max_payload {
        tracing::warn!(
            max_body = config.max_body,
            max_payload,
            "gateway.max_body is above the NATS server's max_payload: provisioning requests that \
             cannot fit one message get 413"
        );
    }
    let base = match config.public_base() {
        Some(base) => base.to_owned(),
        None => {
            let local = listener.local_addr()?;
            if local.ip().is_unspecified() {
                tracing::warn!(
                    listen = %local,
                    "gateway.public_url is unset and the listener is a wildcard address: links \
                     (Location, status_url) will name {local}; set gateway.public_url"
                );
            }
            format!("http://{local}")
        }
    };
    let engine = proxflow_runtime::workflow::Engine::new(&ctx)
        .await
        .map_err(|e| GatewayError::Engine(e.to_string()))?;
    let patch = patch::PatchEdge { engine, approvers };
    let api = api::Api::new(&ctx, auth, profiles, store, &config, base, patch);
    ctx.health.set("gateway http", true);
    let router = http::router(&ctx, Arc::new(api), console);
    let result = proxflow_runtime::serve::serve(
        listener,
        router,
        shutdown,
        &config.http,
        ctx.shutdown_grace,
    )
    .await;
    ctx.health.set("gateway http", false);
    Ok(result?)
}
