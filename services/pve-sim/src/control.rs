//! The client side of the control API for what stands in for the simulated host's SSH: `ssh
//! root@host apt-get -y full-upgrade` becomes `POST /_sim/host/upgrade`. The patching tests run it
//! as `pf-test-ssh`, `proxflow dev` as `proxflow sim-hook host-upgrade` (the patcher's
//! `patch.host.upgrade_command`).

/// Why the upgrade was not done.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The simulator could not be reached.
    #[error("simulated host upgrade: {0}")]
    Request(#[from] reqwest::Error),
    /// The simulator answered with a failure (the upgrade failed, or the token was refused).
    #[error("simulated host upgrade: {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// What it said.
        body: String,
    },
}

/// Asks the simulator at `base` (its base URL, without `/api2/json`) through `http` to upgrade
/// its host, with its API token; returns what it answered.
pub async fn host_upgrade(
    http: &reqwest::Client,
    base: &str,
    token_id: &str,
    secret: &str,
) -> Result<String, ControlError> {
    let response = http
        .post(format!("{}/_sim/host/upgrade", base.trim_end_matches('/')))
        .header("Authorization", format!("PVEAPIToken={token_id}={secret}"))
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(ControlError::Refused { status, body })
    }
}
