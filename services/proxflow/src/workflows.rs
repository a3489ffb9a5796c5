//! `proxflow workflows` (the list, from the index: newest first, narrowed by kind, state, age and
//! count) and `proxflow workflow <id>` (one workflow: steps, origin, wait, signals, children),
//! rendered from [`proxflow_view::workflows`].

use anyhow::bail;
use chrono::Utc;
use proxflow_runtime::workflow::{Engine, state_name};
use proxflow_schemas::workflow::{Wait, WorkflowRecord, WorkflowState};
use proxflow_view::workflows::{self, DEFAULT_LIMIT, Filter, WorkflowDetail};

use crate::lifecycle::cli_context;
use crate::listing::{Table, age, at, print_json};
use crate::settings::Settings;

/// `proxflow workflows ...`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this kind (provision, patch_run, remediate, scale_out, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Only this state.
    #[arg(long, value_parser = parse_state)]
    state: Option<WorkflowState>,
    /// Only those created since: a duration back (90m, 2d) or an RFC 3339 time.
    #[arg(long, value_parser = crate::listing::since)]
    since: Option<chrono::DateTime<Utc>>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    /// Print the index lines as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_state(arg: &str) -> Result<WorkflowState, String> {
    WorkflowState::ALL
        .into_iter()
        .find(|s| state_name(*s) == arg)
        .ok_or_else(|| {
            let names: Vec<&str> = WorkflowState::ALL.into_iter().map(state_name).collect();
            format!("one of: {}", names.join(", "))
        })
}

async fn engine(settings: &Settings, name: &str) -> anyhow::Result<Engine> {
    Ok(Engine::new(&cli_context(settings, name).await?).await?)
}

/// Prints the workflows `args` select.
pub async fn list(settings: &Settings, args: ListArgs) -> anyhow::Result<()> {
    let engine = engine(settings, "proxflow workflows").await?;
    let filter = Filter {
        kind: args.kind,
        state: args.state,
        since: args.since,
        limit: args.limit,
    };
    let entries = workflows::list(&engine, &filter).await?;
    if args.json {
        return print_json(&entries);
    }
    if entries.is_empty() {
        println!("no workflows");
        return Ok(());
    }
    let now = Utc::now();
    let mut table = Table::new(&["ID", "KIND", "STATE", "STEP", "AGE", "UPDATED"]);
    for e in &entries {
        table.row([
            e.id.clone(),
            e.kind.clone(),
            state_name(e.state).to_owned(),
            e.step.clone().unwrap_or_default(),
            age(e.created_at, now),
            at(e.updated_at),
        ]);
    }
    print!("{}", table.render(""));
    Ok(())
}

/// Prints workflow `id`.
pub async fn show(settings: &Settings, id: &str, json: bool) -> anyhow::Result<()> {
    let engine = engine(settings, "proxflow workflow").await?;
    let Some(detail) = workflows::detail(&engine, id).await? else {
        bail!("no workflow {id}");
    };
    if json {
        return print_json(&detail);
    }
    print!("{}", render(&detail));
    Ok(())
}

/// One workflow as text: what it is, where it stands, its steps, signals and children.
fn render(detail: &WorkflowDetail) -> String {
    let r = &detail.record;
    let now = Utc::now();
    let mut out = format!("workflow  {}\nkind      {}\n", r.id, r.kind);
    out.push_str(&format!("state     {}\n", where_it_stands(r)));
    if let Some(error) = &r.error {
        out.push_str(&format!("error     {error}\n"));
    }
    let o = &r.origin;
    out.push_str(&format!(
        "origin    {} {}: {}\n",
        o.source, o.reference, o.reason
    ));
    out.push_str(&format!(
        "created   {} ({} ago)\nupdated   {}\n",
        at(r.created_at),
        age(r.created_at, now),
        at(r.updated_at)
    ));
    if let Some(parent) = &r.parent {
        out.push_str(&format!("parent    {parent}\n"));
    }
    if let Some(trace) = &r.trace_id {
        out.push_str(&format!("trace     {trace}   (proxflow trace {})\n", r.id));
    }
    for s in &detail.signals {
        out.push_str(&format!(
            "signal    {} from {} at {}: {}\n",
            s.name,
            s.sender,
            at(s.at),
            s.payload
        ));
    }
    for c in &detail.children {
        out.push_str(&format!(
            "child     {} ({}, {})\n",
            c.id,
            c.kind,
            state_name(c.state)
        ));
    }
    if !r.steps.is_empty() {
        let mut steps = Table::new(&["STEP", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "ERROR"]);
        for s in &r.steps {
            steps.row([
                s.name.clone(),
                crate::provision::wire_name(s.state),
                s.attempts.to_string(),
                s.started_at.map(at).unwrap_or_default(),
                s.finished_at.map(at).unwrap_or_default(),
                s.error.clone().unwrap_or_default(),
            ]);
        }
        out.push('\n');
        out.push_str(&steps.render(""));
    }
    out
}

/// The state, and for a waiting workflow what it waits for.
fn where_it_stands(r: &WorkflowRecord) -> String {
    let state = state_name(r.state);
    match r
        .wait
        .as_ref()
        .filter(|_| r.state == WorkflowState::Waiting)
    {
        Some(Wait::Signal {
            name, expires_at, ..
        }) => format!(
            "{state} for signal {name} ({})",
            expires_at.map_or_else(|| "no expiry".to_owned(), |t| format!("until {}", at(t)))
        ),
        Some(Wait::Timer { until, .. }) => format!("{state} until {}", at(*until)),
        Some(Wait::Child { child, .. }) => format!("{state} for child {child}"),
        None => state.to_owned(),
    }
}
