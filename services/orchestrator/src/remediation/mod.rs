//! Alert remediation decisions: a decision per alert and matching rule, every one audited as a
//! `remediation.decision` event ([`engine::Decider`]), and the rules' circuit breakers fed by the
//! remediator's outcomes ([`engine::Breakers`]). The actions themselves run in the remediator
//! service.
//!
//! - [`rules`] — the rules file: format, loading and validation (errors name the rule and the
//!   field), matching.
//! - [`template`] — `{labels.x}` / `{annotations.x}` / `{alertname}` / `{fingerprint}` substitution.
//! - [`engine`] — the guards and decisions, and the breakers.

pub mod engine;
pub mod rules;
pub mod template;

pub use rules::{Rules, RulesError};

use proxflow_platform::RemediationConfig;
use proxflow_runtime::admission::Admissions;
use proxflow_runtime::bus::ConsumerLoop;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::workflow::Engine;
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::names::{bucket, consumer};
use tokio_util::sync::CancellationToken;

/// Why remediation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    /// A bucket is missing or KV failed at start.
    #[error("remediation start-up: {0}")]
    Open(String),
    /// A consumer failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

fn open_err(e: impl std::fmt::Display) -> RemediationError {
    RemediationError::Open(e.to_string())
}

/// Decides on every alert and keeps the breakers, until `shutdown`.
pub async fn run_engine(
    ctx: ServiceContext,
    config: RemediationConfig,
    rules: Rules,
    shutdown: CancellationToken,
) -> Result<(), RemediationError> {
    let clock = ctx.clock.clone();
    let kv = ctx
        .bus
        .js
        .get_key_value(bucket::COOLDOWNS)
        .await
        .map_err(open_err)?;
    let decide = ConsumerLoop::new(
        ctx.clone(),
        ConsumerSpec::from(consumer::ORCHESTRATOR_ALERTS),
        config.consumer.clone(),
        engine::Decider {
            rules,
            config: config.clone(),
            admissions: Admissions::open(&ctx.bus.js).await.map_err(open_err)?,
            leases: ctx.leases.clone(),
            kv: kv.clone(),
            workflows: Engine::new(&ctx).await.map_err(open_err)?,
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
        ConsumerSpec::from(consumer::ORCHESTRATOR_REMEDIATION_OUTCOMES),
        config.consumer.clone(),
        engine::Breakers {
            config,
            kv,
            publisher: ctx.bus.publisher.clone(),
            clock,
        },
    );
    let mut tasks = Tasks::new(&ctx, &shutdown);
    tasks.spawn("alert decisions", decide.run(tasks.shutdown()));
    tasks.spawn("breakers", breakers.run(tasks.shutdown()));
    Ok(tasks.join().await?)
}
