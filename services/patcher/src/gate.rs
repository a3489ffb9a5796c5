//! The gates before each node: no firing, unsilenced, uninhibited alert matching the gate's
//! matchers (Alertmanager API v2); nobody else holding the target's leases; the newest replication
//! within its RPO; no scale-out or remediation in flight. A closed gate names its reason; the run
//! waits and looks again, it never skips a node silently.

use chrono::{DateTime, Utc};
use proxflow_runtime::bus::history;
use proxflow_runtime::lease::Leases;
use proxflow_runtime::workflow::{Engine, StepError};
use proxflow_schemas::names::{key, stream};
use proxflow_schemas::replication::ReplicationRun;
use proxflow_schemas::workflow::WorkflowState;
use serde::{Deserialize, Serialize};

use crate::config::GateConfig;

/// Why a matcher is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a matcher: write name=\"value\", name=~\"regex\", name!=\"value\" or name!~\"regex\""
)]
pub struct BadMatcher(String);

/// Checks that `text` is one Alertmanager matcher (`name="value"`, `name=~"re"`, `name!="v"`,
/// `name!~"re"`), the syntax its API's `filter` takes; the configured text is sent as is.
pub fn check_matcher(text: &str) -> Result<(), BadMatcher> {
    let bad = || BadMatcher(text.to_string());
    let op_at = text.find(['=', '!']).ok_or_else(bad)?;
    let name = text[..op_at].trim();
    let rest = &text[op_at..];
    let value = ["=~", "!~", "!=", "="]
        .iter()
        .find_map(|op| rest.strip_prefix(op))
        .ok_or_else(bad)?
        .trim();
    let named = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    if !named || !quoted {
        return Err(bad());
    }
    Ok(())
}

/// What the gates said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Why it is closed; empty: open.
    pub closed: Vec<String>,
}

impl Verdict {
    /// Whether every gate is open.
    pub fn open(&self) -> bool {
        self.closed.is_empty()
    }
}

/// Everything the gates look at.
#[derive(Clone)]
pub struct Gates {
    pub(crate) config: GateConfig,
    pub(crate) http: reqwest::Client,
    pub(crate) leases: Leases,
    pub(crate) engine: Engine,
    pub(crate) js: async_nats::jetstream::Context,
    /// Whether replication jobs are configured (else the RPO gate has nothing to judge).
    pub(crate) replication: bool,
}

#[derive(Deserialize)]
struct Alert {
    labels: std::collections::BTreeMap<String, String>,
}

impl Gates {
    /// Every gate, for a VM (its VMID) or the host (`None`).
    pub async fn check(&self, vmid: Option<u32>, now: DateTime<Utc>) -> Result<Verdict, StepError> {
        let mut closed = self.global(now).await?;
        if let Some(vmid) = vmid {
            closed.extend(self.target(vmid).await?);
        }
        Ok(Verdict { closed })
    }

    /// The gates of a VM of its own: nobody else holds its lease or its remediation lock.
    pub async fn target(&self, vmid: u32) -> Result<Vec<String>, StepError> {
        let mut closed = Vec::new();
        for lease in [
            key::vm_lease(vmid),
            key::remediation_lock(&format!("vm/{vmid}")),
        ] {
            let holder = self.leases.holder(&lease).await.map_err(|e| {
                StepError::transient(format!("reading lease {lease}: {e}")).with_source(e)
            })?;
            if let Some(h) = holder {
                closed.push(format!(
                    "lease {lease} is held by {} ({}) since {}",
                    h.holder, h.purpose, h.since
                ));
            }
        }
        Ok(closed)
    }

    /// The gates of the whole platform: alerts, workflows in flight, replication.
    pub async fn global(&self, now: DateTime<Utc>) -> Result<Vec<String>, StepError> {
        let mut closed = self.alerts().await?;
        for kind in ["scale_out", "remediate"] {
            for state in WorkflowState::LIVE {
                let busy = self.engine.list(kind, state, None).await.map_err(|e| {
                    StepError::transient(format!("listing {kind} workflows: {e}")).with_source(e)
                })?;
                if let Some(w) = busy.first() {
                    closed.push(format!(
                        "{kind} workflow {} is in flight ({})",
                        w.id,
                        proxflow_runtime::workflow::state_name(state)
                    ));
                }
            }
        }
        if self.replication {
            let rpo = chrono::Duration::from_std(self.config.replication_rpo)
                .unwrap_or(chrono::Duration::MAX);
            let since = now
                .checked_sub_signed(rpo)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let done: Vec<ReplicationRun> = history::since(
                &self.js,
                stream::EVT,
                "pf.evt.replication.completed",
                since,
                1,
            )
            .await
            .map_err(|e| {
                StepError::transient(format!("reading replication runs: {e}")).with_source(e)
            })?;
            if done.is_empty() {
                closed.push(format!(
                    "no replication completed within its RPO ({})",
                    humantime_serde::re::humantime::format_duration(self.config.replication_rpo)
                ));
            }
        }
        Ok(closed)
    }

    /// Firing, unsilenced, uninhibited alerts matching the matchers, as reasons.
    async fn alerts(&self) -> Result<Vec<String>, StepError> {
        let Some(base) = &self.config.alertmanager_url else {
            return Ok(Vec::new());
        };
        let mut url = reqwest::Url::parse(&format!("{}/api/v2/alerts", base.trim_end_matches('/')))
            .map_err(|e| StepError::terminal(format!("patch.gate.alertmanager_url: {e}")))?;
        let mut query: Vec<(&str, &str)> = vec![
            ("active", "true"),
            ("silenced", "false"),
            ("inhibited", "false"),
            ("unprocessed", "false"),
        ];
        query.extend(self.config.matchers.iter().map(|m| ("filter", m.as_str())));
        url.query_pairs_mut().extend_pairs(query);
        let unavailable = |e: reqwest::Error| {
            StepError::transient(format!("Alertmanager at {base}: {e}")).with_source(e)
        };
        let alerts: Vec<Alert> = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        Ok(alerts
            .iter()
            .map(|a| {
                let name = a.labels.get("alertname").map_or("?", String::as_str);
                let labels: Vec<String> = a
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "alertname")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("alert {name} is firing ({})", labels.join(", "))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_take_alertmanager_syntax() {
        for ok in [
            "severity=\"critical\"",
            "severity=~\"critical|warning\"",
            "alertname!=\"Watchdog\"",
            "team!~\"db.*\"",
        ] {
            check_matcher(ok).expect(ok);
        }
        for bad in ["severity", "=\"x\"", "severity=critical", "sev-erity=\"x\""] {
            assert!(check_matcher(bad).is_err(), "{bad}");
        }
    }
}
