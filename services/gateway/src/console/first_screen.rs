//! The first screen: the host's gauges against their limits, pools, replication, snapshots, the
//! lifecycle jobs, what waits for approval, running workflows, the latest remediations.

use chrono::{DateTime, Utc};
use maud::{Markup, html};
use proxflow_view::overview::{Capacity, Gauge, JobResult, Overview, Standing};
use proxflow_view::words::{ago, duration as span, name_of as word, until};

use super::pages::{layout, state_badge};
use super::session::Session;

fn standing_class(s: Standing) -> &'static str {
    match s {
        Standing::Ok => "ok",
        Standing::Late => "late",
        Standing::Failed => "failed",
        Standing::Never => "never",
    }
}

fn standing_word(s: Standing) -> &'static str {
    match s {
        Standing::Ok => "ok",
        Standing::Late => "late",
        Standing::Failed => "failed",
        Standing::Never => "never run",
    }
}

fn gauge(id: &str, title: &str, g: &Gauge, scale: f64, unit: &str, limit_text: &str) -> Markup {
    let pct = |v: f64| (v / scale * 100.0).clamp(0.0, 100.0);
    html! {
        div class={"gauge" @if g.over() { " over" }} id={"gauge-" (id)} data-value=(format!("{:.2}", g.value)) data-limit=(format!("{:.2}", g.limit)) {
            div.label {
                span { (title) }
                span.mono { (if unit == ":1" { format!("{:.2}{unit}", g.value) } else { format!("{:.1}{unit}", g.value) }) " / " (limit_text) }
            }
            div.bar {
                div.fill style=(format!("width:{:.1}%", pct(g.value))) {}
                div.limit style=(format!("left:{:.1}%", pct(g.limit))) {}
            }
            @if let Some(secs) = g.above_secs {
                div.bad data-sustained=(secs) { "above the limit, sustained for " (span(secs)) }
            }
        }
    }
}

fn capacity(c: &Capacity, now: DateTime<Utc>) -> Markup {
    let commitment_scale = (c.commitment.limit * 4.0 / 3.0).max(c.commitment.value * 1.1);
    html! {
        section id="capacity" {
            h2 { "Host " span.mono { (c.node) } }
            (gauge("cpu", "CPU", &c.cpu, 100.0, " %", &format!("{:.0} %", c.cpu.limit)))
            (gauge("memory", "Memory", &c.memory, 100.0, " %", &format!("{:.0} %", c.memory.limit)))
            (gauge("commitment", "Memory commitment", &c.commitment, commitment_scale, ":1", &format!("{:.2}:1", c.commitment.limit)))
            div.mute { (c.running_vms) " running VMs · sampled " (ago(now, c.sampled_at)) }
        }
    }
}

fn job(title: &str, id: &str, result: Option<&JobResult>, now: DateTime<Utc>) -> Markup {
    html! {
        div id=(id) {
            strong { (title) } " "
            @match result {
                Some(r) => {
                    span class=(standing_class(r.standing)) data-standing=(standing_word(r.standing)) {
                        @if r.passed { "passed" } @else { "FAILED" }
                    }
                    " " (ago(now, r.at)) " · " (r.summary) " · "
                    a href={"/ui/workflows/" (r.workflow_id)} { (r.workflow_id) }
                }
                None => span.never data-standing="never run" { "never run" }
            }
        }
    }
}

/// The first screen.
pub(crate) fn page(session: &Session, view: &Overview) -> String {
    let now = view.at;
    let body = html! {
        @match &view.capacity {
            Some(c) if c.stale => div.banner id="stale" {
                "Capacity data is stale: the newest sample is " (ago(now, c.sampled_at))
                ". Is the capacity service running?"
            },
            None => div.banner id="stale" { "No capacity sample yet: is the capacity service running?" },
            _ => {}
        }
        h1 { "Overview" }
        div.grid {
            @if let Some(c) = &view.capacity { (capacity(c, now)) }
            section id="pools" {
                h2 { "ZFS pools" }
                @if view.pools.is_empty() { p.mute { "no pool measured yet" } }
                @else {
                    table {
                        tr { th { "pool" } th { "used" } th { "health" } th { "last scrub" } }
                        @for p in &view.pools {
                            tr data-pool=(p.name) {
                                td.mono { (p.name) }
                                td.num { @if let Some(u) = p.used_percent { (format!("{u:.1} %")) } @else { "–" } }
                                td class=(match p.state.as_deref() { Some("ONLINE") => "ok", None => "mute", _ => "bad" }) {
                                    (p.state.as_deref().unwrap_or("not checked"))
                                }
                                td { @if let Some(at) = p.scrubbed_at { (ago(now, at)) } @else { span.mute { (p.scan.as_deref().unwrap_or("–")) } } }
                            }
                        }
                    }
                }
                @if let Some(at) = view.health_checked_at { div.mute { "health checked " (ago(now, at)) } }
            }
            section id="replication" {
                h2 { "Replication" }
                @if view.replication.is_empty() { p.mute { "no replication job configured" } }
                @else {
                    table {
                        tr { th { "job" } th { "lag" } th { "RPO" } th { "" } }
                        @for r in &view.replication {
                            tr data-job=(r.job) {
                                td.mono { (r.job) }
                                td.num { @if let Some(l) = r.lag_secs { (span(l)) } @else { "–" } }
                                td.num { @if let Some(rpo) = r.rpo_secs { (span(rpo)) } @else { "–" } }
                                td class=(standing_class(r.standing)) data-standing=(standing_word(r.standing)) {
                                    (standing_word(r.standing))
                                    @if let Some(e) = &r.error { div.mono { (e) } }
                                }
                            }
                        }
                    }
                }
            }
            section id="snapshots" {
                h2 { "Snapshots" }
                @if view.snapshots.is_empty() { p.mute { "no snapshot policy configured" } }
                @else {
                    table {
                        tr { th { "policy" } th { "newest" } th { "" } }
                        @for s in &view.snapshots {
                            tr data-policy=(s.policy) {
                                td.mono { (s.policy) }
                                td { @if let Some(at) = s.newest_at { (ago(now, at)) } @else { "–" } }
                                td class=(standing_class(s.standing)) data-standing=(standing_word(s.standing)) { (standing_word(s.standing)) }
                            }
                        }
                    }
                }
            }
            section id="lifecycle" {
                h2 { "Lifecycle" }
                (job("Config export", "export", view.export.as_ref(), now))
                (job("Restore drill", "drill", view.drill.as_ref(), now))
            }
            section id="approvals" {
                h2 { "Waiting for approval" }
                @if view.approvals.is_empty() { p.mute { "nothing waits for a decision" } }
                @else {
                    table {
                        tr { th { "run" } th { "plan" } th { "closes" } }
                        @for a in &view.approvals {
                            tr data-run=(a.run) {
                                td { a href={"/ui/workflows/" (a.run)} { (a.run) } }
                                td {
                                    span.mono { (a.plan_hash.get(..12).unwrap_or(&a.plan_hash)) }
                                    div.mute {
                                        (a.targets.len()) " targets"
                                        @let majors = a.targets.iter().filter(|t| t.major).count();
                                        @if majors > 0 { ", " span.bad { (majors) " major" } }
                                    }
                                }
                                td { (until(now, a.expires_at)) }
                            }
                        }
                    }
                }
            }
        }
        section id="live" style="margin-top:1rem" {
            h2 { "Running workflows" }
            @if view.live.is_empty() { p.mute { "none running" } }
            @else {
                table {
                    tr { th { "workflow" } th { "kind" } th { "state" } th { "step" } th { "started" } }
                    @for w in &view.live {
                        tr data-id=(w.id) {
                            td { a href={"/ui/workflows/" (w.id)} { (w.id) } }
                            td { (w.kind) }
                            td { (state_badge(w.state)) }
                            td { (w.step.as_deref().unwrap_or("–")) @if let Some(f) = &w.waiting_for { div.mute { "waits for " (f) } } }
                            td { (ago(now, w.created_at)) }
                        }
                    }
                }
            }
        }
        section id="remediations" style="margin-top:1rem" {
            h2 { "Latest remediations" }
            @if view.remediations.is_empty() { p.mute { "no decision yet" } }
            @else {
                table {
                    tr { th { "when" } th { "alert" } th { "verdict" } th { "guard" } th { "target" } th { "" } }
                    @for d in &view.remediations {
                        tr data-alert=(d.alertname) {
                            td { (ago(now, d.at)) }
                            td { (d.alertname) }
                            td data-verdict=(word(&d.verdict)) { (word(&d.verdict)) }
                            td { (word(&d.reason)) }
                            td.mono { (d.target.as_deref().unwrap_or("–")) }
                            td { @if let Some(w) = &d.workflow_id { a href={"/ui/workflows/" (w)} { (w) } } @else { span.mute { (d.detail) } } }
                        }
                    }
                }
            }
        }
    };
    layout(Some(session), "Overview", body)
}
