//! `proxflow remediations`: the remediation audit trail — every decision on an alert, acted or
//! suppressed and by which guard — read back from the event stream (`pf.evt.remediation.decision`).

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use proxflow_runtime::bus;
use proxflow_runtime::config::NatsConfig;
use proxflow_runtime::ops::Metrics;
use proxflow_schemas::Message;
use proxflow_schemas::names::stream;
use proxflow_schemas::remediation::RemediationDecision;

/// Prints the decisions of the last `since` (at most `limit`, newest last).
pub async fn run(
    nats: &NatsConfig,
    since: Duration,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let bus = bus::connect(nats, "proxflow remediations", Metrics::new()).await?;
    let from = Utc::now() - chrono::Duration::from_std(since).unwrap_or_default();
    let decisions: Vec<RemediationDecision> = bus::history::since(
        &bus.js,
        stream::EVT,
        RemediationDecision::SUBJECT,
        from,
        limit,
    )
    .await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&decisions).context("encoding the decisions")?
        );
        return Ok(());
    }
    if decisions.is_empty() {
        println!(
            "no remediation decisions in the last {}",
            humantime_serde::re::humantime::format_duration(since)
        );
        return Ok(());
    }
    for d in &decisions {
        let verdict = serde_json::to_value(d.verdict).ok();
        let reason = serde_json::to_value(d.reason).ok();
        println!(
            "{}  {:<9} {:<11} {:<24} {:<22} {:<18} {}{}",
            d.at.format("%Y-%m-%d %H:%M:%S"),
            verdict.as_ref().and_then(|v| v.as_str()).unwrap_or("?"),
            reason.as_ref().and_then(|v| v.as_str()).unwrap_or("?"),
            format!("{} ({})", d.alertname, d.status.as_str()),
            d.rule.as_deref().unwrap_or("-"),
            d.target.as_deref().unwrap_or("-"),
            d.detail,
            d.workflow_id
                .as_deref()
                .map(|w| format!("  [{w}]"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
