//! `proxflow patch ...`: the operator's side of patching, through the gateway — start a run (or a
//! dry run), see the runs and a run's plan, approve or reject a plan by its hash.

use std::time::Duration;

use anyhow::{Context, bail};
use proxflow_gateway::api::WORKFLOWS_PATH;
use proxflow_gateway::patch::PATCH_RUNS_PATH;
use proxflow_runtime::config::{ConfigError, Secret};
use proxflow_schemas::patch::{PatchPlan, TargetPlan};
use proxflow_schemas::workflow::WorkflowRecord;
use serde_json::{Value, json};

use crate::provision::{default_base, explain, wire_name};
use crate::settings::Settings;

/// Bound on each HTTP call to the gateway.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to reach the gateway.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Gateway base URL [default: gateway.public_url, else http://<gateway.listen>].
    #[arg(long, global = true)]
    url: Option<String>,
    /// Bearer token [default: the token of --as, else the first of gateway.bearer_tokens].
    #[arg(long, global = true)]
    token: Option<String>,
    /// The bearer token's name in gateway.bearer_tokens to act as [default: the first of
    /// patch.approvers that has a token, for decisions].
    #[arg(long = "as", global = true)]
    as_name: Option<String>,
}

/// `proxflow patch ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PatchCommand {
    /// Start a patch run now (outside the window's schedule), or a dry run (plan and gates only).
    Run {
        /// Scan, plan, classify and check the gates; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The patch runs of the last 90 days, newest first, and where the newest stands.
    Status,
    /// A run's plan: per target the packages (old -> new), security or not, reboot, what waits for
    /// an approval and why, and the hash an approval names.
    Plan {
        /// The run (`patch-...`).
        run: String,
    },
    /// Approve exactly the plan with this hash (it must be the one the run asks about).
    Approve {
        /// The run.
        run: String,
        /// The plan's approval hash (`proxflow patch plan` prints it; 12+ hex digits).
        #[arg(long)]
        plan: String,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject the plan: its major packages are held until a newer version replaces them.
    Reject {
        /// The run.
        run: String,
        /// The plan's approval hash.
        #[arg(long)]
        plan: String,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        comment: String,
    },
}

struct Gateway {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
}

impl Gateway {
    fn new(settings: &Settings, args: &GatewayArgs, deciding: bool) -> anyhow::Result<Self> {
        let base = args
            .url
            .clone()
            .unwrap_or_else(|| default_base(&settings.gateway))
            .trim_end_matches('/')
            .to_string();
        let tokens = &settings.gateway.bearer_tokens;
        let named = |name: &str| tokens.get(name).cloned();
        let token = match (&args.token, &args.as_name) {
            (Some(t), _) => Some(Secret::new(t)),
            (None, Some(name)) => Some(named(name).ok_or_else(|| {
                ConfigError::value(
                    format!("gateway.bearer_tokens.{name}"),
                    "--as names a token that is not configured",
                )
            })?),
            (None, None) if deciding => settings
                .patch
                .approvers
                .iter()
                .find_map(|a| named(a))
                .or_else(|| tokens.values().next().cloned()),
            (None, None) => tokens.values().next().cloned(),
        };
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base, token })
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t.expose()),
            None => request,
        };
        let response = request.send().await.with_context(|| what.to_string())?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("the gateway refused {what} ({status}){}", explain(&text));
        }
        serde_json::from_str(&text).with_context(|| format!("reading the answer to {what}"))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &format!("GET {url}")).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = self.http.post(&url).json(&body);
        self.send(request, &format!("POST {url}")).await
    }
}

/// Runs a `patch` subcommand.
pub async fn run(
    settings: &Settings,
    args: GatewayArgs,
    command: PatchCommand,
) -> anyhow::Result<()> {
    let deciding = matches!(
        command,
        PatchCommand::Approve { .. } | PatchCommand::Reject { .. }
    );
    let gw = Gateway::new(settings, &args, deciding)?;
    match command {
        PatchCommand::Run { dry_run } => {
            let started = gw
                .post(PATCH_RUNS_PATH, json!({"dry_run": dry_run}))
                .await?;
            println!("run     {}", started["workflow_id"].as_str().unwrap_or("?"));
            println!("status  {}", started["status_url"].as_str().unwrap_or("?"));
        }
        PatchCommand::Status => {
            let listed = gw.get(PATCH_RUNS_PATH).await?;
            let runs = listed["runs"].as_array().cloned().unwrap_or_default();
            if runs.is_empty() {
                println!("no patch runs in the last 90 days");
            }
            for r in &runs {
                println!(
                    "{:<32} {}",
                    r["id"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?")
                );
            }
            if let Some(newest) = runs.first().and_then(|r| r["id"].as_str()) {
                let record = record(&gw, newest).await?;
                println!();
                print!("{}", describe(&record));
            }
        }
        PatchCommand::Plan { run } => {
            let record = record(&gw, &run).await?;
            print!("{}", describe(&record));
            match record
                .data
                .get("plan")
                .cloned()
                .map(serde_json::from_value::<PatchPlan>)
            {
                Some(Ok(plan)) => print!("{}", render_plan(&plan)),
                _ => println!("no plan yet (the run has not scanned)"),
            }
        }
        PatchCommand::Approve { run, plan, comment } => {
            decide(&gw, &run, "approve", &plan, comment).await?
        }
        PatchCommand::Reject { run, plan, comment } => {
            decide(&gw, &run, "reject", &plan, comment).await?
        }
    }
    Ok(())
}

async fn decide(
    gw: &Gateway,
    run: &str,
    verb: &str,
    plan: &str,
    comment: String,
) -> anyhow::Result<()> {
    let path = format!("{PATCH_RUNS_PATH}/{run}/{verb}");
    let answer = gw
        .post(&path, json!({"plan": plan, "comment": comment}))
        .await?;
    println!(
        "{verb}d plan {} of {run} as {} (valid until {})",
        answer["plan_hash"].as_str().unwrap_or("?"),
        answer["by"].as_str().unwrap_or("?"),
        answer["expires_at"].as_str().unwrap_or("?")
    );
    Ok(())
}

async fn record(gw: &Gateway, run: &str) -> anyhow::Result<WorkflowRecord> {
    let value = gw.get(&format!("{WORKFLOWS_PATH}/{run}")).await?;
    serde_json::from_value(value).context("reading the run's record")
}

/// Where a run stands: its state, what it waits for, its report.
fn describe(record: &WorkflowRecord) -> String {
    let mut out = format!("run       {} ({})\n", record.id, wire_name(record.state));
    if let Some(error) = &record.error {
        out.push_str(&format!("error     {error}\n"));
    }
    let data = &record.data;
    if let Some(paused) = data.get("paused").and_then(Value::as_str) {
        out.push_str(&format!("paused    {paused}\n"));
    }
    if let Some(awaiting) = data.get("awaiting").filter(|v| !v.is_null()) {
        out.push_str(&format!(
            "awaiting  a decision on plan {} until {}\n",
            awaiting["approval_hash"].as_str().unwrap_or("?"),
            awaiting["expires_at"].as_str().unwrap_or("?")
        ));
    }
    if let Some(nodes) = data.get("report").and_then(|r| r["nodes"].as_array()) {
        for n in nodes {
            out.push_str(&format!(
                "done      {} rebooted={} kernel={} snapshot={} {:.0}s\n",
                n["target"].as_str().unwrap_or("?"),
                n["rebooted"],
                n["kernel"].as_str().unwrap_or("-"),
                n["snapshot"].as_str().unwrap_or("-"),
                n["seconds"].as_f64().unwrap_or_default()
            ));
        }
    }
    out
}

/// A plan as a table.
fn render_plan(plan: &PatchPlan) -> String {
    let mut out = format!("plan      {}\n", plan.hash);
    if let Some(h) = &plan.approval_hash {
        out.push_str(&format!(
            "approval  {h}   (proxflow patch approve <run> --plan {})\n",
            &h[..h.len().min(12)]
        ));
    }
    out.push_str(&format!("scanned   {}\n", plan.scanned_at));
    for t in &plan.targets {
        out.push_str(&render_target(t));
    }
    out
}

fn render_target(t: &TargetPlan) -> String {
    let mut out = format!(
        "\n{} {} ({}) kernel {}{}{}\n",
        t.target,
        t.name,
        wire_name(t.kind),
        t.kernel.as_deref().unwrap_or("?"),
        if t.reboot { ", reboot" } else { "" },
        if t.is_major() { ", NEEDS APPROVAL" } else { "" }
    );
    for c in &t.changes {
        out.push_str(&format!(
            "  {:<40} {} -> {}{}\n",
            c.package,
            c.from.as_deref().unwrap_or("(new)"),
            c.to.as_deref().unwrap_or("(removed)"),
            if c.security { "  [security]" } else { "" }
        ));
    }
    for c in &t.skipped {
        out.push_str(&format!(
            "  {:<40} skipped (held or not security)\n",
            c.package
        ));
    }
    for m in &t.majors {
        out.push_str(&format!(
            "  major: {}{}\n",
            m.package
                .as_deref()
                .map(|p| format!("{p}: "))
                .unwrap_or_default(),
            m.reason
        ));
    }
    for (package, log) in &t.changelogs {
        out.push_str(&format!("  changelog of {package}:\n"));
        for line in log.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}
