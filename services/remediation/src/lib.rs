//! # proxflow-remediation
//!
//! What an alert may make proxflow do. A rules file maps Alertmanager alerts to actions: matchers on
//! `alertname`, label equality and regex, status and severity; action parameters templated from the
//! alert's labels and annotations (`{labels.vmid}`); and per rule the guardrails that keep automation
//! from running away (cooldown per target, a threshold of N alerts within T, max targets per window,
//! dry-run, on by default). The file is validated when the service starts, with errors that name the
//! rule and the field.
//!
//! The orchestrator runs the [`engine`] (a decision per alert and rule, each one audited as a
//! `remediation.decision` event) and the breakers; the remediator service runs the actions
//! ([`executor`]) against Proxmox, webhooks and commands.
//!
//! ## Layout
//! - [`config`] — `[remediation]`: the rules file, the global rate limit, the circuit breaker.
//! - [`rules`] — the file format, loading and validation, matching.
//! - [`template`] — `{labels.x}` / `{annotations.x}` / `{alertname}` / `{fingerprint}` substitution.
//! - [`engine`] — guards and decisions; circuit breakers fed by outcomes.
//! - [`executor`] — the remediator: restart / snapshot a VM, notify, run a command.

pub mod config;
pub mod engine;
pub mod executor;
pub mod rules;
pub mod template;

use proxflow_pve::PveClient;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::admission::Admissions;
use proxflow_runtime::bus::ConsumerLoop;
use proxflow_runtime::bus::consume::ConsumeError;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::lease::Leases;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::names::{bucket, durable, stream, subject};
use tokio_util::sync::CancellationToken;

pub use config::RemediationConfig;
pub use rules::{Rules, RulesError};

/// Why remediation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    /// A bucket is missing or KV failed at start.
    #[error("remediation start-up: {0}")]
    Open(String),
    /// A consumer failed.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

fn open_err(e: impl std::fmt::Display) -> RemediationError {
    RemediationError::Open(e.to_string())
}

/// The orchestrator's part: decide on every alert and keep the breakers, until `shutdown`.
pub async fn run_engine(
    ctx: ServiceContext,
    config: RemediationConfig,
    rules: Rules,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), RemediationError> {
    let kv = ctx
        .bus
        .js
        .get_key_value(bucket::COOLDOWNS)
        .await
        .map_err(open_err)?;
    let decide = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec {
            stream: stream::INGEST,
            durable: durable::ORCHESTRATOR_ALERTS.into(),
            filter_subject: subject::ingest("alertmanager", "alert"),
        },
        config.consumer.clone(),
        engine::Engine {
            rules,
            config: config.clone(),
            admissions: Admissions::open(&ctx.bus.js).await.map_err(open_err)?,
            leases: Leases::open(&ctx.bus.js).await.map_err(open_err)?,
            kv: kv.clone(),
            store: WorkflowStore::open(&ctx.bus.js).await.map_err(open_err)?,
            publisher: ctx.bus.publisher.clone(),
            clock: clock.clone(),
            counts: ctx.metrics.counter_family(
                "remediation_decisions",
                "Remediation decisions by rule, verdict (acted, suppressed, ignored) and reason",
                ["rule", "verdict", "reason"],
            ),
        },
    );
    let breakers = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec {
            stream: stream::EVT,
            durable: durable::ORCHESTRATOR_REMEDIATION_OUTCOMES.into(),
            filter_subject: subject::evt("remediation", "outcome"),
        },
        config.consumer.clone(),
        engine::Breakers {
            config,
            kv,
            publisher: ctx.bus.publisher.clone(),
            clock,
        },
    );
    tokio::try_join!(decide.run(shutdown.clone()), breakers.run(shutdown))?;
    Ok(())
}

/// The remediator service: run work orders until `shutdown`.
pub async fn run_remediator(
    ctx: ServiceContext,
    config: RemediationConfig,
    pve: PveClient,
    shutdown: CancellationToken,
) -> Result<(), RemediationError> {
    let act = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec {
            stream: stream::CMD,
            durable: durable::REMEDIATOR.into(),
            filter_subject: subject::cmd("remediator", "act"),
        },
        config.consumer,
        executor::Remediator {
            pve,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(open_err)?,
            leases: Leases::open(&ctx.bus.js).await.map_err(open_err)?,
            store: WorkflowStore::open(&ctx.bus.js).await.map_err(open_err)?,
            publisher: ctx.bus.publisher.clone(),
        },
    );
    act.run(shutdown).await?;
    Ok(())
}
