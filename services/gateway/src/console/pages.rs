//! The console's HTML, written with maud (escaped by default). Stable `id`s and `data-*`
//! attributes name what a reader — or a browser test — looks for; the look is one inline style
//! sheet, no external asset, so the console works offline and on a phone.

use chrono::Utc;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use proxflow_runtime::telemetry::recorded::SpanTree;
use proxflow_runtime::workflow::state_name;
use proxflow_schemas::workflow::{IndexEntry, StepState, WorkflowRecord, WorkflowState};
use proxflow_view::approvals;
use proxflow_view::words::{ago, name_of as word, until};
use proxflow_view::workflows::{Filter, WorkflowDetail};

use super::session::Session;
use super::waterfall;

const STYLE: &str = r#"
:root{--ok:#1a7f37;--warn:#b35900;--bad:#c62828;--mute:#667;--line:#dde;--bg:#f7f8fa}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:#1b1f24}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.25rem;align-items:center;padding:.6rem 1rem;background:#1b1f24;color:#fff}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700}header form{margin-left:auto}
header button{background:none;border:1px solid #fff6;color:#fff;border-radius:4px;padding:.15rem .6rem;cursor:pointer}
main{max-width:1200px;margin:0 auto;padding:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1rem}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.75rem 1rem;overflow-x:auto}
h1{font-size:1.25rem;margin:.2rem 0 1rem}h2{font-size:1rem;margin:0 0 .5rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25rem .4rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--mute);font-size:.85em}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:var(--ok)}.late,.warn{color:var(--warn)}.failed,.bad{color:var(--bad)}.never,.mute{color:var(--mute)}
.banner{background:#fff3cd;border:1px solid #e0b100;border-radius:6px;padding:.6rem 1rem;margin-bottom:1rem}
.error{background:#fdecea;border:1px solid var(--bad);border-radius:6px;padding:.6rem 1rem;margin-bottom:1rem;white-space:pre-wrap}
.gauge{margin:.4rem 0 .8rem}.gauge .bar{position:relative;height:14px;background:#e8eaef;border-radius:3px;overflow:hidden}
.gauge .fill{position:absolute;left:0;top:0;bottom:0;background:#3b82f6}.gauge.over .fill{background:var(--bad)}
.gauge .limit{position:absolute;top:-2px;bottom:-2px;width:2px;background:#1b1f24}
.gauge .label{display:flex;justify-content:space-between;font-size:.9em}
.state{display:inline-block;padding:0 .4rem;border-radius:3px;font-size:.85em;background:#e8eaef}
.state.succeeded{background:#dff3e4}.state.failed{background:#fbe1df}.state.running,.state.pending{background:#e0ecff}
.state.waiting{background:#fff3cd}.state.compensating,.state.cancelled{background:#eee}
form.filter{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:.75rem}
label{display:flex;flex-direction:column;font-size:.85em;color:var(--mute)}
input,select,textarea,button{font:inherit}input,select{padding:.2rem .3rem}
.counts{display:flex;flex-wrap:wrap;gap:.4rem;margin-bottom:.75rem}
.wf{display:grid;grid-template-columns:minmax(140px,32%) 1fr;gap:0 .5rem;align-items:center;font-size:.85em}
.wf .name{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.wf .track{position:relative;height:16px;border-left:1px solid var(--line)}
.wf .span{position:absolute;top:3px;height:10px;min-width:2px;background:#3b82f6;border-radius:2px}
.wf .span.err{background:var(--bad)}.wf .dur{position:absolute;top:0;font-size:.8em;color:var(--mute);white-space:nowrap}
.login{max-width:380px;margin:12vh auto;background:#fff;border:1px solid var(--line);border-radius:6px;padding:1.25rem}
.login input{width:100%;margin:.3rem 0 .8rem}
.decide{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-top:.5rem}
.decide textarea{min-width:240px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
@media (max-width:600px){main{padding:.5rem}.wf{grid-template-columns:40% 1fr}}
"#;

pub(super) fn layout(session: Option<&Session>, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · proxflow" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a.brand href="/ui" { "proxflow" }
                    @if let Some(session) = session {
                        a href="/ui" { "Overview" }
                        a href="/ui/workflows" { "Workflows" }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            span.mono { (session.name) " " }
                            button type="submit" id="logout" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// A workflow state as a badge.
pub(super) fn state_badge(state: WorkflowState) -> Markup {
    let name = state_name(state);
    html! { span class={"state " (name)} data-state=(name) { (name) } }
}

/// The list filter from the query, or what is wrong with it.
pub(crate) fn filter(kind: &str, state: &str, since: &str, limit: usize) -> Result<Filter, String> {
    let kind = kind.trim();
    if kind.len() > 64 || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("kind: letters, digits and _ only".to_owned());
    }
    let state = match state.trim() {
        "" => None,
        s => Some(
            WorkflowState::ALL
                .into_iter()
                .find(|st| state_name(*st) == s)
                .ok_or_else(|| format!("state: {s:?} is not a workflow state"))?,
        ),
    };
    let since = match since.trim() {
        "" => None,
        s => {
            let d = humantime_serde::re::humantime::parse_duration(s)
                .map_err(|e| format!("since: {s:?} is not a duration like 24h or 30m ({e})"))?;
            let d = chrono::Duration::from_std(d).map_err(|e| format!("since: {e}"))?;
            Some(Utc::now() - d)
        }
    };
    Ok(Filter {
        kind: (!kind.is_empty()).then(|| kind.to_owned()),
        state,
        since,
        limit,
    })
}

/// The workflow list.
pub(crate) fn workflows(
    session: &Session,
    kind: &str,
    state: &str,
    since: &str,
    rows: &[IndexEntry],
) -> String {
    let now = Utc::now();
    let counts: Vec<(WorkflowState, usize)> = WorkflowState::ALL
        .into_iter()
        .map(|s| (s, rows.iter().filter(|r| r.state == s).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let body = html! {
        h1 { "Workflows" }
        form.filter method="get" action="/ui/workflows" {
            label { "kind" input name="kind" value=(kind) placeholder="provision"; }
            label { "state"
                select name="state" {
                    option value="" { "any" }
                    @for s in WorkflowState::ALL {
                        option value=(state_name(s)) selected[state == state_name(s)] { (state_name(s)) }
                    }
                }
            }
            label { "created within" input name="since" value=(since) placeholder="24h"; }
            button type="submit" { "Filter" }
        }
        div.counts id="counts" {
            @for (s, n) in &counts { span data-count=(state_name(*s)) { (state_badge(*s)) " " (n) } }
        }
        section {
            @if rows.is_empty() { p.mute id="no-workflows" { "no workflow matches" } }
            @else {
                table id="workflows" {
                    tr { th { "workflow" } th { "kind" } th { "state" } th { "created" } th { "updated" } }
                    @for r in rows {
                        tr data-id=(r.id) data-kind=(r.kind) {
                            td { a href={"/ui/workflows/" (r.id)} { (r.id) } }
                            td { (r.kind) }
                            td { (state_badge(r.state)) }
                            td { (ago(now, r.created_at)) }
                            td { (ago(now, r.updated_at)) }
                        }
                    }
                }
            }
        }
    };
    layout(Some(session), "Workflows", body)
}

fn approval_form(session: &Session, record: &WorkflowRecord, can_decide: bool) -> Markup {
    // What waits for a decision is the view's call, the same as `proxflow approvals` makes.
    let Some(pending) = approvals::of_record(record) else {
        return html! {};
    };
    let hash = &pending.plan_hash;
    html! {
        section id="approval" style="margin-bottom:1rem" {
            h2 { "Waiting for a decision on plan " span.mono { (hash.get(..12).unwrap_or(hash)) } }
            p.mute { "closes " (until(Utc::now(), pending.expires_at)) }
            table {
                tr { th { "target" } th { "name" } th { "packages" } th { "security" } th { "reboot" } th { "" } }
                @for t in &pending.targets {
                    tr data-target=(t.target) {
                        td.mono { (t.target) }
                        td { (t.name) }
                        td.num { (t.packages) }
                        td.num { (t.security) }
                        td { @if t.reboot { "yes" } @else { "no" } }
                        td { @if t.major { span.bad { "MAJOR" } } }
                    }
                }
            }
            @if can_decide {
                form.decide method="post" action={"/ui/workflows/" (record.id) "/decision"} {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="plan" value=(hash);
                    label { "comment" textarea name="comment" rows="1" maxlength="1000" {} }
                    button type="submit" name="verdict" value="approve" id="approve" { "Approve" }
                    button type="submit" name="verdict" value="reject" id="reject" { "Reject" }
                }
            } @else {
                p.mute { "Token " (session.name) " is not in patch.approvers: it cannot decide." }
            }
        }
    }
}

/// A workflow's detail and its trace.
pub(crate) fn workflow(
    session: &Session,
    detail: &WorkflowDetail,
    trace: &Result<SpanTree, String>,
    can_decide: bool,
) -> String {
    let now = Utc::now();
    let record = &detail.record;
    let body = html! {
        h1 { "Workflow " span.mono id="workflow-id" { (record.id) } " " (state_badge(record.state)) }
        @if let Some(e) = &record.error { div.error id="workflow-error" { (e) } }
        (approval_form(session, record, can_decide))
        div.grid {
            section id="summary" {
                h2 { "Summary" }
                table {
                    tr { th { "kind" } td { (record.kind) } }
                    tr { th { "origin" } td { (record.origin.source) " · " (record.origin.reference) div.mute { (record.origin.reason) } } }
                    tr { th { "created" } td { (record.created_at.format("%Y-%m-%d %H:%M:%S UTC")) " (" (ago(now, record.created_at)) ")" } }
                    tr { th { "updated" } td { (ago(now, record.updated_at)) } }
                    @if let Some(p) = &record.parent { tr { th { "parent" } td { a href={"/ui/workflows/" (p)} { (p) } } } }
                    @if let Some(t) = &record.trace_id { tr { th { "trace" } td.mono { (t) } } }
                    @if let Some(w) = &record.wait { tr { th { "waits" } td.mono { (serde_json::to_string(w).unwrap_or_default()) } } }
                }
            }
            @if !detail.signals.is_empty() {
                section id="signals" {
                    h2 { "Signals" }
                    table {
                        tr { th { "signal" } th { "from" } th { "when" } th { "" } }
                        @for sig in &detail.signals {
                            tr data-signal=(sig.name) {
                                td.mono { (sig.name) }
                                td { (sig.sender) }
                                td { (ago(now, sig.at)) }
                                td.mono { (sig.payload.to_string()) }
                            }
                        }
                    }
                }
            }
            @if !detail.children.is_empty() {
                section id="children" {
                    h2 { "Children" }
                    table {
                        @for c in &detail.children {
                            tr data-id=(c.id) {
                                td { a href={"/ui/workflows/" (c.id)} { (c.id) } }
                                td { (c.kind) }
                                td { (state_badge(c.state)) }
                            }
                        }
                    }
                }
            }
            section id="data" {
                h2 { "Data" }
                details { summary { "what the steps recorded" } pre.mono { (serde_json::to_string_pretty(&record.data).unwrap_or_default()) } }
            }
        }
        section id="steps" style="margin-top:1rem" {
            h2 { "Steps" }
            table {
                tr { th { "step" } th { "state" } th { "attempts" } th { "took" } th { "error" } }
                @for s in &record.steps {
                    tr data-step=(s.name) {
                        td.mono { (s.name) }
                        td class=(match s.state { StepState::Failed => "bad", StepState::Succeeded => "ok", _ => "" }) { (word(&s.state)) }
                        td.num { (s.attempts) }
                        td.num { @if let (Some(a), Some(b)) = (s.started_at, s.finished_at) { (format!("{:.2} s", (b - a).num_milliseconds() as f64 / 1000.0)) } @else { "–" } }
                        td.mono { (s.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        section id="trace" style="margin-top:1rem" {
            h2 { "Trace" }
            @match trace {
                Ok(tree) if !tree.is_empty() => (waterfall::render(tree)),
                Ok(_) => p.mute { "no spans recorded yet (they reach the bus about a second after they end; kept 7 days)" },
                Err(e) => p.mute { (e) },
            }
        }
    };
    layout(Some(session), &record.id, body)
}

/// An error page inside the layout.
pub(crate) fn error(session: &Session, message: &str) -> String {
    layout(
        Some(session),
        "Error",
        html! { div.error id="error" { (message) } p { a href="/ui" { "back to the overview" } } },
    )
}

/// A refusal for a caller without a session.
pub(crate) fn refused(message: &str) -> String {
    layout(
        None,
        "Refused",
        html! { div.error id="error" { (message) } p { a href="/ui/login" { "log in" } } },
    )
}

/// The login form.
pub(crate) fn login(form_token: &str, message: Option<&str>) -> String {
    layout(
        None,
        "Log in",
        html! {
            div.login {
                h1 { "proxflow console" }
                @if let Some(m) = message { div.error id="error" { (m) } }
                form method="post" action="/ui/login" {
                    input type="hidden" name="form" value=(form_token);
                    label for="token" { "Bearer token (one of gateway.bearer_tokens)" }
                    input type="password" id="token" name="token" autocomplete="current-password" required;
                    button type="submit" id="login" { "Log in" }
                }
            }
        },
    )
}
