//! A schema-validated, stateful Proxmox VE 8 API simulator for development and tests.
//!
//! [`start`] serves `/api2/json` over HTTPS (or plain HTTP) on the configured address, answering
//! like a PVE 8 host: requests are routed and validated against the official API schema
//! ([`schema`]), errors carry Proxmox's status codes, reason phrases and messages, long operations
//! return real UPIDs whose tasks run asynchronously, and state (VM configs, locks, snapshots,
//! storage usage, guest agent) changes as on a real host. The starting platform is a scenario
//! ([`scenario`]; the seed by default). Tests steer it in-process through [`SimHandle`] or over
//! HTTP through the `/_sim/*` control API (same token): faults, load, guest-agent `exec`
//! results, the guests' pending updates, the host's upgrade, and a journal of every API request
//! received. Guests with package state answer a patching service's commands through the agent's
//! `exec` (`packages`); the host upgrades and reboots (`host`).
//!
//! Control API (JSON in and out; invalid input answers 400 `{"errors": {field: message}}`):
//! `GET|PUT /_sim/faults` ([`Faults`]), `PUT /_sim/load/vm/{vmid}` and `PUT /_sim/load/host`
//! ([`Load`]), `PUT /_sim/agent/exec` ([`AgentExecScript`]), `PUT /_sim/guest/{vmid}/updates`
//! (`{"updates": [`[`GuestUpdate`]`]}`), `POST /_sim/host/upgrade` (what `apt-get -y full-upgrade`
//! over SSH does), `PUT /_sim/host/disk` ([`DiskHealth`]: a disk's SMART health and wearout), `GET /_sim/journal` ([`JournalEntry`] list) and `GET /_sim/state` (a summary of
//! VMs with their packages, the host, storages and tasks).
//!
//! What the simulated platform lacks besides Proxmox, for the patcher to run against it: a
//! [`kubectl`] stand-in (node state in a file) and the [`control`] API's host upgrade in place of
//! `ssh … apt-get full-upgrade`; the patching tests and `proxflow dev` run both as commands.

mod agent;
mod api;
pub mod config;
pub mod control;
mod host;
mod http;
pub mod kubectl;
pub mod load;
mod packages;
mod platform;
pub mod scenario;
pub mod schema;
mod state;
mod tasks;
mod tls;
mod volumes;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use proxflow_runtime::config::{ConfigError, Validate};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use agent::{AgentExecScript, ExecRule};
pub use config::{DEV_TOKEN_SECRET, EndpointFault, Faults, SimConfig, TaskDurations};
pub use load::{Level, LevelError, Load};
pub use packages::{GuestUpdate, UpdateError};
pub use platform::{DiskHealth, DiskHealthError};
pub use scenario::ScenarioError;
pub use tls::TlsError;

use schema::{ApiSchema, SchemaError};
use state::State;

/// The newest requests, bounded in count and in bytes (oldest dropped first).
#[derive(Debug, Default)]
struct Journal {
    entries: VecDeque<(JournalEntry, usize)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Journal {
    fn push(&mut self, entry: JournalEntry) {
        let size = entry.approximate_size();
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some((_, dropped)) = self.entries.pop_front() {
                self.bytes -= dropped;
            }
        }
    }
}

/// Counts the bytes written through it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One `/api2/json` request and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// HTTP method.
    pub method: String,
    /// Path as requested, after `/api2/json`.
    pub path: String,
    /// Schema template, e.g. `/nodes/{node}/qemu/{vmid}/clone`; `None` when unauthenticated or
    /// unrouted.
    pub template: Option<String>,
    /// Query, body and path parameters merged, as received (strings for form data).
    pub params: Map<String, Value>,
    /// HTTP status answered.
    pub status: u16,
    /// Body answered, parsed; `Null` when empty.
    pub response: Value,
}

impl JournalEntry {
    /// About what it holds: its strings and its parameters and answer as JSON text.
    fn approximate_size(&self) -> usize {
        let mut count = ByteCount(
            self.method.len() + self.path.len() + self.template.as_ref().map_or(0, String::len),
        );
        // Writing into a counter cannot fail.
        let _ = serde_json::to_writer(&mut count, &self.params);
        let _ = serde_json::to_writer(&mut count, &self.response);
        count.0
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API schema could not be found or read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The listen address is unavailable.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or TLS configuration could not be built.
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] tls::TlsError),
    /// A built-in pattern failed to compile (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

/// State shared by the server, the task workers and the handles.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) schema: ApiSchema,
    journal: Mutex<Journal>,
    pub(crate) tracker: TaskTracker,
    pub(crate) cancel: CancellationToken,
    pub(crate) token_id: String,
    pub(crate) token_secret: String,
    /// Proxmox's `PVEAPIToken` header regex.
    pub(crate) auth_re: Regex,
}

impl Shared {
    /// The state; a panic elsewhere while holding the lock does not make it unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, entry: JournalEntry) {
        self.journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }
}

/// Checks faults, including that every endpoint key names a method of the schema.
pub(crate) fn check_faults(faults: &Faults, schema: &ApiSchema) -> Result<(), ConfigError> {
    faults.validate_at("faults")?;
    for key in faults.endpoints.keys() {
        if let Some((method, template)) = key.split_once(' ')
            && !schema.has_method(method, template)
        {
            return Err(ConfigError::value(
                format!("faults.endpoints.\"{key}\""),
                "no such method in the Proxmox API schema (use the template, e.g. /nodes/{node}/qemu/{vmid}/clone)",
            ));
        }
    }
    Ok(())
}

/// Starts the simulator: loads the schema and scenario, binds `config.listen` and serves in a
/// spawned task until [`RunningSim::shutdown`].
pub async fn start(config: SimConfig) -> Result<RunningSim, SimError> {
    config.validate()?;
    let schema = match &config.schema {
        Some(path) => ApiSchema::load(path)?,
        None => ApiSchema::locate()?.0,
    };
    check_faults(&config.faults, &schema)?;
    let scenario = scenario::load(config.scenario.as_deref(), &schema)?;
    let identity = if config.tls {
        Some(tls::generate(&scenario.raw.node.name).map_err(SimError::Tls)?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| SimError::Bind {
        addr: config.listen,
        source,
    })?;
    let auth_re = Regex::new(r"(?:^|\s)PVEAPIToken(?:=| )([^;]*)")
        .map_err(|e| SimError::Internal(e.to_string()))?;
    let fingerprint = identity.as_ref().map(|i| i.fingerprint.clone());
    let state = State::new(&config, scenario, fingerprint.clone());
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        schema,
        journal: Mutex::new(Journal {
            max_entries: config.journal_max_entries,
            max_bytes: config.journal_max_bytes,
            ..Journal::default()
        }),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
        token_id: config.token_id.clone(),
        token_secret: config.token_secret.expose().to_owned(),
        auth_re,
    });
    let scheme = if identity.is_some() { "https" } else { "http" };
    let host = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let base_url = format!("{scheme}://{}", SocketAddr::new(host, local.port()));
    let acceptor = identity.as_ref().map(|i| i.acceptor.clone());
    shared
        .tracker
        .spawn(http::serve(listener, acceptor, Arc::clone(&shared)));
    Ok(RunningSim {
        base_url,
        fingerprint,
        ca_pem: identity.map(|i| i.pem),
        token_id: config.token_id,
        token_secret: config.token_secret.expose().to_owned(),
        schema_path: config.schema,
        handle: SimHandle { shared },
    })
}

/// A running simulator.
pub struct RunningSim {
    base_url: String,
    fingerprint: Option<String>,
    ca_pem: Option<String>,
    token_id: String,
    token_secret: String,
    schema_path: Option<PathBuf>,
    handle: SimHandle,
}

impl std::fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSim")
            .field("base_url", &self.base_url)
            .field("fingerprint", &self.fingerprint)
            .field("token_id", &self.token_id)
            .field("schema", &self.schema_path)
            .finish_non_exhaustive()
    }
}

impl RunningSim {
    /// `https://127.0.0.1:PORT` (or `http://`), without `/api2/json`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// SHA-256 of the certificate (DER), uppercase hex, colon separated; `None` on plain HTTP.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint.clone()
    }

    /// The self-signed certificate as PEM, to trust as a CA file; `None` on plain HTTP.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// The accepted token id (`user@realm!tokenid`).
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// The accepted token secret.
    pub fn token_secret(&self) -> &str {
        &self.token_secret
    }

    /// In-process control.
    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Stops accepting, closes connections and cancels running tasks, then waits for all of it.
    pub async fn shutdown(self) {
        let shared = &self.handle.shared;
        shared.cancel.cancel();
        shared.tracker.close();
        shared.tracker.wait().await;
    }
}

impl Drop for RunningSim {
    /// Dropping without [`RunningSim::shutdown`] (a failed test, say) still stops serving and the
    /// tasks, without waiting for them.
    fn drop(&mut self) {
        self.handle.shared.cancel.cancel();
    }
}

/// In-process control of a running simulator, with the powers of the `/_sim` API.
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle").finish_non_exhaustive()
    }
}

impl SimHandle {
    /// The `/api2/json` requests received, oldest first: the newest `journal_max_entries`, within
    /// about `journal_max_bytes`.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.shared
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .iter()
            .map(|(entry, _)| entry.clone())
            .collect()
    }

    /// Replaces the injected faults (the deterministic `fail_next` counters restart).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// The injected faults, with `fail_next` counters as they stand.
    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    /// Sets a VM's load; kept by vmid, so it may be set before a clone creates the VM.
    pub fn set_vm_load(&self, vmid: u32, load: Load) {
        self.shared
            .lock()
            .vm_loads
            .insert(vmid, load::LoadState::new(load));
    }

    /// Sets the host's own base load.
    pub fn set_host_load(&self, load: Load) {
        self.shared.lock().host_load = load::LoadState::new(load);
    }

    /// All VM ids, templates included.
    pub fn vm_ids(&self) -> Vec<u32> {
        self.shared.lock().vms.keys().copied().collect()
    }

    /// A VM's raw config (as in its `.conf`: strings, `lock`, `parent`, unmasked `cipassword`).
    pub fn vm_config(&self, vmid: u32) -> Option<BTreeMap<String, String>> {
        self.shared
            .lock()
            .vms
            .get(&vmid)
            .map(|vm| vm.config.clone())
    }

    /// Sets a disk's SMART health and wearout (`PUT /_sim/host/disk`); answers what
    /// `disks/list` now reports for it.
    pub fn set_disk_health(
        &self,
        change: &DiskHealth,
    ) -> Result<serde_json::Value, DiskHealthError> {
        let mut state = self.shared.lock();
        state.platform.set_disk_health(change)?;
        Ok(state
            .disk_entry(&change.devpath)
            .unwrap_or(serde_json::Value::Null))
    }

    /// Scripts the guest agent's `exec` results.
    pub fn set_agent_exec_script(&self, script: AgentExecScript) {
        self.shared.lock().exec_script = script;
    }
}
