//! `[remediation]`: where the rules are, and the guardrails that hold across all rules.

use std::path::PathBuf;
use std::time::Duration;

use proxflow_runtime::config::{ConfigError, ConsumerConfig, Validate};
use serde::{Deserialize, Serialize};

/// `[remediation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemediationConfig {
    /// The rules file (TOML). Unset: no rule, so every alert is audited as ignored.
    pub rules_file: Option<PathBuf>,
    /// Across all rules, at most `count` remediations per `per`.
    pub rate_limit: RateLimit,
    /// Per rule: open after a failure ratio, page, suppress for a while.
    pub breaker: Breaker,
    /// Delivery settings of the alert and outcome consumers.
    pub consumer: ConsumerConfig,
}

/// Alerts decided at once. A decision is a few KV round trips of about a millisecond each, so it
/// mostly waits: at the runtime's default of 16 an alert storm queues behind the decisions (about
/// 10,000 alerts/s and a p99 of 350 ms from POST to decision on 2 cores); 128 keeps a storm of
/// deliveries of 10 from 16 senders under 250 ms. The guards are claims, so concurrency never lets
/// two decisions act on one target.
const DECISIONS_IN_FLIGHT: usize = 128;

impl Default for RemediationConfig {
    fn default() -> Self {
        Self {
            rules_file: None,
            rate_limit: RateLimit::default(),
            breaker: Breaker::default(),
            consumer: ConsumerConfig {
                max_in_flight: DECISIONS_IN_FLIGHT,
                ..ConsumerConfig::default()
            },
        }
    }
}

/// The global rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Remediations...
    pub count: u32,
    /// ...per this long.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            count: 20,
            per: Duration::from_secs(3600),
        }
    }
}

/// A rule's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    /// Outcomes counted within this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fewer outcomes than this never open it.
    pub min_outcomes: u32,
    /// Opens when failures ÷ outcomes reaches this.
    pub failure_ratio: f64,
    /// How long it stays open (the rule suppressed) after opening.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            min_outcomes: 3,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(3600),
        }
    }
}

impl Validate for RemediationConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.rate_limit.count == 0 || self.rate_limit.per.is_zero() {
            return Err(ConfigError::value(
                "remediation.rate_limit",
                "count and per must be above zero",
            ));
        }
        let b = &self.breaker;
        if b.window.is_zero() || b.open_for.is_zero() || b.min_outcomes == 0 {
            return Err(ConfigError::value(
                "remediation.breaker",
                "window, open_for and min_outcomes must be above zero",
            ));
        }
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            return Err(ConfigError::value(
                "remediation.breaker.failure_ratio",
                "must be above 0 and at most 1",
            ));
        }
        self.consumer.validate_at("remediation.consumer")
    }
}
