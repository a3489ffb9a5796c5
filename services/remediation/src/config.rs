//! `[remediation]`: where the rules are, and the guardrails that hold across all rules.

use std::path::PathBuf;
use std::time::Duration;

use proxflow_runtime::config::{ConfigError, ConsumerConfig, Validate};
use serde::{Deserialize, Serialize};

/// `[remediation]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
