//! `proxflow sim-hook …` (hidden): the commands `proxflow dev` configures where the simulated
//! platform lacks a part, so the patcher runs against the simulator exactly as against a host —
//! through its configured commands: kubectl against the simulated k3s nodes
//! ([`proxflow_pve_sim::kubectl`], node state in a file) and the host's `ssh … full-upgrade`
//! (the simulator's control API, [`proxflow_pve_sim::control`]). This binary is the one program
//! dev can count on being there, so it plays both.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use proxflow_pve_sim::RunningSim;

/// `proxflow sim-hook ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SimHook {
    /// kubectl against the simulated k3s nodes: `--state FILE`, then kubectl's arguments.
    Kubectl {
        /// `--state FILE` and kubectl's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
        args: Vec<String>,
    },
    /// `apt-get -y full-upgrade` of the simulated host (its control API's host upgrade).
    HostUpgrade {
        /// The simulator's base URL, without `/api2/json`.
        #[arg(long)]
        url: String,
        /// Its certificate's SHA-256 fingerprint, over HTTPS.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Its API token id.
        #[arg(long)]
        token_id: String,
        /// Its API token secret (the simulator's development secret).
        #[arg(long)]
        token_secret: String,
    },
}

/// `patch.kubectl.command` for the simulated nodes whose state is in `state`.
pub fn kubectl_command(exe: &Path, state: &Path) -> Vec<String> {
    vec![
        exe.display().to_string(),
        "sim-hook".into(),
        "kubectl".into(),
        "--state".into(),
        state.display().to_string(),
    ]
}

/// `patch.host.upgrade_command` for the simulated host `sim` plays.
pub fn host_upgrade_command(exe: &Path, sim: &RunningSim) -> Vec<String> {
    let mut argv = vec![
        exe.display().to_string(),
        "sim-hook".into(),
        "host-upgrade".into(),
        "--url".into(),
        sim.base_url(),
        "--token-id".into(),
        sim.token_id().to_owned(),
        "--token-secret".into(),
        sim.token_secret().to_owned(),
    ];
    if let Some(fp) = sim.fingerprint() {
        argv.extend(["--fingerprint".into(), fp]);
    }
    argv
}

/// Runs a hook; what it prints is its answer, an error its failure (exit 1).
pub async fn run(hook: SimHook) -> anyhow::Result<()> {
    match hook {
        SimHook::Kubectl { args } => {
            print!("{}", proxflow_pve_sim::kubectl::run(&args)?);
            Ok(())
        }
        SimHook::HostUpgrade {
            url,
            fingerprint,
            token_id,
            token_secret,
        } => {
            let http = client(fingerprint.as_deref())?;
            let answer =
                proxflow_pve_sim::control::host_upgrade(&http, &url, &token_id, &token_secret)
                    .await?;
            println!("{answer}");
            Ok(())
        }
    }
}

/// An HTTP client trusting exactly the certificate with `fingerprint` (as `[pve]` pins it), or
/// plain when there is none.
fn client(fingerprint: Option<&str>) -> anyhow::Result<reqwest::Client> {
    use proxflow_pve::tls;
    let mut builder = reqwest::Client::builder();
    if let Some(fp) = fingerprint {
        let pin = tls::parse_fingerprint(fp)
            .with_context(|| format!("{fp:?} is not a SHA-256 fingerprint"))?;
        let config =
            tls::client_config(Arc::new(tls::CertVerifier::pinned(pin))).context("TLS setup")?;
        builder = builder.tls_backend_preconfigured(config);
    }
    builder.build().context("building the HTTP client")
}
