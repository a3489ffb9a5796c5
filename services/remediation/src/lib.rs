//! # proxflow-remediation
//!
//! What an alert may make proxflow do: the rules file. A rules file maps Alertmanager alerts to
//! actions: matchers on `alertname`, label equality and regex, status and severity; action
//! parameters templated from the alert's labels and annotations (`{labels.vmid}`); and per rule the
//! guardrails that keep automation from running away (cooldown per target, a threshold of N alerts
//! within T, max targets per window, dry-run, on by default). The file is validated when the
//! service starts, with errors that name the rule and the field.
//!
//! A library, not a service: the orchestrator decides on alerts with these rules
//! (`proxflow_orchestrator::remediation`), the remediator service (`proxflow-remediator`) runs the
//! actions, and the binary validates the file at start.
//!
//! ## Layout
//! - [`config`] — `[remediation]`: the rules file, the global rate limit, the circuit breaker.
//! - [`rules`] — the file format, loading and validation, matching.
//! - [`template`] — `{labels.x}` / `{annotations.x}` / `{alertname}` / `{fingerprint}` substitution.

pub mod config;
pub mod rules;
pub mod template;

pub use config::RemediationConfig;
pub use rules::{Rules, RulesError};
