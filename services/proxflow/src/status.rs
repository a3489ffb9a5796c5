//! `proxflow status`: the console's first screen in text — host gauges against their limits,
//! pools, replication lag against RPO, snapshot ages, the last export and drill, live workflows,
//! plans waiting for approval, the newest remediation decisions. Read from the bus with the same
//! model as the console (`proxflow_view::overview`), so both show the same numbers.

use anyhow::Context;
use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::{Engine, state_name};
use proxflow_view::overview::{self, Gauge, JobResult, Overview, Standing};
use proxflow_view::words::{ago, duration as span, name_of};

use crate::settings::Settings;

/// Prints the overview (or its JSON).
pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let ctx = crate::lifecycle::cli_context(settings, "proxflow status").await?;
    let engine = Engine::new(&ctx)
        .await
        .context("opening the workflow records")?;
    let expect = crate::expectations::of(settings);
    let view = overview::collect(&ctx.bus.js, &engine, &expect)
        .await
        .context("reading the overview from the bus")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).context("encoding the overview")?
        );
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

fn standing(s: Standing) -> &'static str {
    match s {
        Standing::Ok => "ok",
        Standing::Late => "LATE",
        Standing::Failed => "FAILED",
        Standing::Never => "never",
    }
}

fn gauge(name: &str, g: &Gauge, value: String, limit: String) -> String {
    let mark = match g.above_secs {
        Some(secs) => format!("  ABOVE for {}", span(secs)),
        None => String::new(),
    };
    format!("  {name:<12} {value:>8}  (limit {limit}){mark}\n")
}

fn job(name: &str, result: Option<&JobResult>, now: DateTime<Utc>) -> String {
    match result {
        Some(r) => format!(
            "  {name:<12} {:<6} {}  {}  [{}]\n",
            standing(r.standing),
            ago(now, r.at),
            r.summary,
            r.workflow_id
        ),
        None => format!("  {name:<12} never run\n"),
    }
}

/// The overview as text.
fn render(v: &Overview) -> String {
    let now = v.at;
    let mut out = String::new();
    match &v.capacity {
        Some(c) => {
            out.push_str(&format!(
                "HOST {}  ({} running VMs, sampled {}){}\n",
                c.node,
                c.running_vms,
                ago(now, c.sampled_at),
                if c.stale {
                    "  STALE: no recent capacity sample"
                } else {
                    ""
                }
            ));
            out.push_str(&gauge(
                "cpu",
                &c.cpu,
                format!("{:.1} %", c.cpu.value),
                format!("{:.0} %", c.cpu.limit),
            ));
            out.push_str(&gauge(
                "memory",
                &c.memory,
                format!("{:.1} %", c.memory.value),
                format!("{:.0} %", c.memory.limit),
            ));
            out.push_str(&gauge(
                "commitment",
                &c.commitment,
                format!("{:.2}:1", c.commitment.value),
                format!("{:.1}:1", c.commitment.limit),
            ));
        }
        None => out.push_str("HOST  no capacity sample yet (is the capacity service running?)\n"),
    }
    out.push_str("\nPOOLS\n");
    if v.pools.is_empty() {
        out.push_str("  none measured yet\n");
    }
    for p in &v.pools {
        out.push_str(&format!(
            "  {:<12} {:>7}  {:<9} scrub {}\n",
            p.name,
            p.used_percent
                .map_or_else(|| "-".to_owned(), |u| format!("{u:.1} %")),
            p.state.as_deref().unwrap_or("unchecked"),
            p.scrubbed_at
                .map_or_else(|| "-".to_owned(), |at| ago(now, at))
        ));
    }
    out.push_str("\nREPLICATION\n");
    if v.replication.is_empty() {
        out.push_str("  no job configured\n");
    }
    for r in &v.replication {
        out.push_str(&format!(
            "  {:<12} {:<6} lag {:>7}  rpo {:>7}{}\n",
            r.job,
            standing(r.standing),
            r.lag_secs.map_or_else(|| "-".to_owned(), span),
            r.rpo_secs.map_or_else(|| "-".to_owned(), span),
            r.error
                .as_deref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        ));
    }
    out.push_str("\nSNAPSHOTS\n");
    if v.snapshots.is_empty() {
        out.push_str("  no policy configured\n");
    }
    for s in &v.snapshots {
        out.push_str(&format!(
            "  {:<12} {:<6} newest {}\n",
            s.policy,
            standing(s.standing),
            s.newest_at
                .map_or_else(|| "-".to_owned(), |at| ago(now, at))
        ));
    }
    out.push_str("\nLIFECYCLE\n");
    out.push_str(&job("export", v.export.as_ref(), now));
    out.push_str(&job("drill", v.drill.as_ref(), now));
    out.push_str("\nWAITING FOR APPROVAL\n");
    if v.approvals.is_empty() {
        out.push_str("  nothing\n");
    }
    for a in &v.approvals {
        out.push_str(&format!(
            "  {}  plan {}  {} targets ({} major)  closes {}\n    {}\n",
            a.run,
            a.plan_hash.get(..12).unwrap_or(&a.plan_hash),
            a.targets.len(),
            a.targets.iter().filter(|t| t.major).count(),
            a.expires_at.format("%Y-%m-%d %H:%M UTC"),
            a.approve
        ));
    }
    out.push_str("\nRUNNING WORKFLOWS\n");
    if v.live.is_empty() {
        out.push_str("  none\n");
    }
    for w in &v.live {
        out.push_str(&format!(
            "  {:<40} {:<16} {:<12} {}{}\n",
            w.id,
            w.kind,
            state_name(w.state),
            w.step.as_deref().unwrap_or("-"),
            w.waiting_for
                .as_deref()
                .map(|f| format!(" (waits for {f})"))
                .unwrap_or_default()
        ));
    }
    out.push_str("\nLATEST REMEDIATIONS\n");
    if v.remediations.is_empty() {
        out.push_str("  none\n");
    }
    for d in &v.remediations {
        out.push_str(&format!(
            "  {:>9}  {:<24} {:<10} {:<11} {}\n",
            ago(now, d.at),
            d.alertname,
            name_of(&d.verdict),
            name_of(&d.reason),
            d.workflow_id.as_deref().unwrap_or(&d.detail)
        ));
    }
    out
}
