//! `proxflow provision`: asks the gateway for a new k3s node VM the way a webhook sender does (a
//! Standard Webhooks signed request, with the first of `gateway.webhook_secrets`), prints the workflow
//! it started, and with `--wait` follows the workflow until it ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use proxflow_gateway::api::{PROVISION_PATH, WORKFLOWS_PATH};
use proxflow_gateway::webhook::SignedHeaders;
use proxflow_gateway::{GatewayConfig, ProvisionRequest, WorkflowAccepted};
use proxflow_runtime::config::{ConfigError, Secret};
use proxflow_schemas::provision::{IpConfig, VmOverrides};
use proxflow_schemas::workflow::{WorkflowRecord, WorkflowState};

use crate::settings::Settings;

/// How often `--wait` reads the workflow.
const POLL: Duration = Duration::from_secs(1);
/// Bound on each HTTP call to the gateway.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// `proxflow provision ...`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// VM name (a DNS label).
    #[arg(long)]
    name: String,
    /// Profile (`[provision.profiles.<name>]`); the gateway's default (k8s-node) when absent.
    #[arg(long)]
    profile: Option<String>,
    /// vCPUs instead of the profile's.
    #[arg(long)]
    cores: Option<u32>,
    /// Memory in MiB instead of the profile's.
    #[arg(long)]
    memory_mib: Option<u32>,
    /// Root disk in GiB instead of the profile's.
    #[arg(long)]
    disk_gib: Option<u32>,
    /// OpenSSH public key file for the cloud-init user (every key line in it); repeatable.
    #[arg(long = "ssh-key", value_name = "FILE")]
    ssh_keys: Vec<PathBuf>,
    /// `dhcp`, or a static address with its prefix (`10.20.0.44/24`, with --gateway).
    #[arg(long, default_value = "dhcp")]
    ip: String,
    /// Default gateway of a static address.
    #[arg(long, value_name = "IP")]
    gateway: Option<String>,
    /// Proxmox tag added to the profile's; repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Repeating a request with the same key returns the same workflow instead of a second VM.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Gateway base URL [default: gateway.public_url, else http://<gateway.listen>].
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for reading the workflow [default: the first of gateway.bearer_tokens]; also
    /// sent with the request when no webhook secret is configured.
    #[arg(long)]
    token: Option<String>,
    /// Follow the workflow until it ends and print its steps (needs a bearer token).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30m", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: Duration,
}

impl ProvisionArgs {
    /// The request body; reads the key files.
    fn request(&self) -> anyhow::Result<ProvisionRequest> {
        let ip = match (self.ip.as_str(), &self.gateway) {
            ("dhcp", None) => IpConfig::Dhcp,
            ("dhcp", Some(_)) => bail!("--gateway goes with a static --ip CIDR, not dhcp"),
            (_, None) => bail!("--ip {} needs --gateway", self.ip),
            (cidr, Some(gateway)) => IpConfig::Static {
                cidr: cidr.to_owned(),
                gateway: gateway.clone(),
            },
        };
        let mut ssh_keys = Vec::new();
        for path in &self.ssh_keys {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading SSH key file {}", path.display()))?;
            let before = ssh_keys.len();
            ssh_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
            if ssh_keys.len() == before {
                bail!("{} holds no public key", path.display());
            }
        }
        Ok(ProvisionRequest {
            name: self.name.clone(),
            profile: self.profile.clone(),
            overrides: VmOverrides {
                cores: self.cores,
                memory_mib: self.memory_mib,
                balloon_mib: None,
                disk_gib: self.disk_gib,
            },
            ssh_keys,
            ip,
            tags: self.tags.clone(),
            idempotency_key: self.idempotency_key.clone(),
        })
    }
}

/// Where the gateway is reached when `--url` is not given.
pub(crate) fn default_base(gateway: &GatewayConfig) -> String {
    if let Some(base) = gateway.public_base() {
        return base.to_owned();
    }
    // A wildcard listener is reached on loopback from this host.
    let mut addr = gateway.listen;
    if addr.ip().is_unspecified() {
        let loopback: SocketAddr = if addr.is_ipv4() {
            ([127, 0, 0, 1], addr.port()).into()
        } else {
            (std::net::Ipv6Addr::LOCALHOST, addr.port()).into()
        };
        addr = loopback;
    }
    format!("http://{addr}")
}

/// Submits the request, prints the workflow, and with `--wait` follows it.
pub async fn run(settings: &Settings, args: ProvisionArgs) -> anyhow::Result<()> {
    let request = args.request()?;
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| default_base(&settings.gateway));
    let base = base.trim_end_matches('/');
    let token = args
        .token
        .clone()
        .map(Secret::new)
        .or_else(|| settings.gateway.bearer_tokens.values().next().cloned());
    if args.wait && token.is_none() {
        return Err(ConfigError::value(
            "gateway.bearer_tokens",
            "--wait reads the workflow with a bearer token: pass --token or configure one \
             (PROXFLOW_GATEWAY__BEARER_TOKENS__<NAME>)",
        )
        .into());
    }
    let body = serde_json::to_vec(&request).context("encoding the request")?;
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let url = format!("{base}{PROVISION_PATH}");
    let mut post = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.clone());
    if let Some(secret) = settings.gateway.webhook_secrets.first() {
        let signed = SignedHeaders::new(secret, &body)
            .map_err(|e| ConfigError::value("gateway.webhook_secrets[0]", e.to_string()))?;
        for (name, value) in signed.pairs() {
            post = post.header(name, value);
        }
    } else if let Some(token) = &token {
        post = post.bearer_auth(token.expose());
    } else {
        return Err(ConfigError::value(
            "gateway.webhook_secrets",
            "nothing to authenticate with: set PROXFLOW_GATEWAY__WEBHOOK_SECRETS=whsec_... (the \
             gateway's secret) or pass --token",
        )
        .into());
    }
    let response = post.send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!(
            "the gateway refused the request ({status}){}",
            explain(&text)
        );
    }
    let accepted: WorkflowAccepted = response
        .json()
        .await
        .context("reading the gateway's answer")?;
    println!(
        "workflow  {} ({})",
        accepted.workflow_id,
        wire_name(accepted.state)
    );
    println!("trace     {}", accepted.trace_id.as_deref().unwrap_or("-"));
    println!("status    {}", accepted.status_url);
    if status == reqwest::StatusCode::OK {
        println!("          (started earlier by a request with the same idempotency key)");
    }
    match (args.wait, token) {
        (true, Some(token)) => {
            let status_url = format!("{base}{WORKFLOWS_PATH}/{}", accepted.workflow_id);
            follow(&http, &status_url, &token, args.timeout).await
        }
        _ => Ok(()),
    }
}

/// Polls the workflow until it is terminal; prints state changes, then the steps. A workflow that
/// failed or was cancelled is an error (exit status 1).
async fn follow(
    http: &reqwest::Client,
    url: &str,
    token: &Secret,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let response = http
            .get(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("reading the workflow failed ({status}){}", explain(&text));
        }
        let record: WorkflowRecord = response.json().await.context("reading the workflow")?;
        if last != Some(record.state) {
            println!("state     {}", wire_name(record.state));
            last = Some(record.state);
        }
        if record.state.is_terminal() {
            print_steps(&record);
            return match record.state {
                WorkflowState::Succeeded => Ok(()),
                state => bail!(
                    "workflow {} {}: {}",
                    record.id,
                    wire_name(state),
                    record.error.as_deref().unwrap_or("no reason recorded")
                ),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "workflow {} is still {} after {}",
                record.id,
                wire_name(record.state),
                humantime_serde::re::humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn print_steps(record: &WorkflowRecord) {
    println!("steps");
    for step in &record.steps {
        let started = step
            .started_at
            .map_or_else(|| "-".to_owned(), |t| t.format("%H:%M:%S").to_string());
        let finished = step
            .finished_at
            .map_or_else(|| "-".to_owned(), |t| t.format("%H:%M:%S").to_string());
        println!(
            "  {:<16} {:<11} {started} → {finished}  attempts {}{}",
            step.name,
            wire_name(step.state),
            step.attempts,
            step.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    if !record.data.is_null() {
        println!("data      {}", record.data);
    }
}

/// A state as the API spells it (`pending`, `running`, ...).
pub(crate) fn wire_name(state: impl serde::Serialize) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The gateway's error body as lines: each field of a 422, or the `error` text.
pub(crate) fn explain(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return if body.is_empty() {
            String::new()
        } else {
            format!(": {body}")
        };
    };
    if let Some(errors) = json["errors"].as_object() {
        return errors
            .iter()
            .map(|(field, message)| format!("\n  {field}: {}", message.as_str().unwrap_or("?")))
            .collect();
    }
    json["error"]
        .as_str()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}
