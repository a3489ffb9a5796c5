//! A Proxmox simulator on a free port and a client for it, as every Proxmox-facing test needs them:
//! plain HTTP (TLS has its own tests), tasks at 1/100 of real time, fast client retries.

use std::net::SocketAddr;
use std::time::Duration;

use proxflow_pve::{PveClient, PveConfig, PveError};
use proxflow_pve_sim::{RunningSim, SimConfig, SimError};
use proxflow_runtime::config::Secret;

/// Why the simulator fixture could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimFixtureError {
    /// The simulator did not start (e.g. the API schema was not found; the message says where it looked).
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The client could not be built.
    #[error(transparent)]
    Client(#[from] PveError),
}

/// The simulator config tests start from.
pub fn sim_config() -> SimConfig {
    SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: false,
        time_scale: 0.01,
        ..SimConfig::default()
    }
}

/// A client config for `sim`, with retries and task polling tuned for tests.
pub fn client_config(sim: &RunningSim) -> PveConfig {
    PveConfig {
        url: sim.base_url(),
        token_id: sim.token_id().to_string(),
        token_secret: Secret::new(sim.token_secret()),
        fingerprint: sim.fingerprint(),
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        retry_attempts: 8,
        task_poll_max: Duration::from_millis(50),
        task_timeout: Duration::from_secs(20),
        ..PveConfig::default()
    }
}

/// Starts a simulator (`tweak` adjusts [`sim_config`]) and a client for it.
pub async fn start_sim(
    tweak: impl FnOnce(&mut SimConfig),
) -> Result<(RunningSim, PveClient), SimFixtureError> {
    let mut config = sim_config();
    tweak(&mut config);
    let sim = proxflow_pve_sim::start(config).await?;
    let client = PveClient::new(&client_config(&sim))?;
    Ok((sim, client))
}
