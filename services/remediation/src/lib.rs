//! # proxflow-remediation
//!
//! What an alert may make proxflow do. A rules file maps Alertmanager alerts to actions: matchers on
//! `alertname`, label equality and regex, status and severity; action parameters templated from the
//! alert's labels and annotations (`{labels.vmid}`); and per rule the guardrails that keep automation
//! from running away (cooldown per target, a threshold of N alerts within T, max targets per window,
//! dry-run, on by default). The file is validated when the service starts, with errors that name the
//! rule and the field.
//!
//! ## Layout
//! - [`rules`] — the file format, loading and validation, matching.
//! - [`template`] — `{labels.x}` / `{annotations.x}` / `{alertname}` / `{fingerprint}` substitution.

pub mod rules;
pub mod template;
