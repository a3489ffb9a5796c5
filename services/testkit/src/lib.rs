//! # proxflow-testkit
//!
//! Test harness for real parts: a real `nats-server` (≥ 2.10) child process per test, on a free port
//! with its own temporary JetStream store, killed and cleaned up when dropped. A test that cannot find
//! a supported server fails with the install hint instead of skipping.
//!
//! ## Layout
//! - [`TestNats`]: the server.
//! - [`TestCluster`]: the shipped 3-node cluster (`deploy/nats/cluster-node{1,2,3}.conf`).
//! - [`TestNats::context`]: a connected [`ServiceContext`] with the topology declared, as a service has.
//! - [`pve`]: a Proxmox simulator on a free port and a client for it.
//! - [`alertmanager`]: a real Alertmanager whose receiver posts to a gateway.
//! - [`webdriver`]: headless Chromium over WebDriver, for the console.

pub mod alertmanager;
pub mod cluster;
pub mod pve;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::{self, topology};
use proxflow_runtime::config::{NatsConfig, NatsUrls};
use proxflow_runtime::nats_server::{self, NatsServerError, NatsServerProcess, ServerOptions};
use proxflow_runtime::ops::{Health, Metrics};

pub use cluster::TestCluster;

/// Why the harness could not provide a server or a context.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// No supported server, or it did not start.
    #[error(transparent)]
    Server(#[from] NatsServerError),
    /// The temporary store could not be made.
    #[error("temporary directory: {0}")]
    TempDir(#[from] std::io::Error),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] bus::ConnectError),
    /// Declaring the topology failed.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// The locks bucket could not be opened.
    #[error(transparent)]
    Lease(#[from] proxflow_runtime::lease::LeaseError),
    /// A shipped config file could not be read, or its rewritten copy written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No free ports for the cluster.
    #[error("picking free ports: {0}")]
    Ports(#[source] std::io::Error),
    /// A shipped cluster file no longer has the shape the harness rewrites.
    #[error("cluster config: {0}")]
    ClusterConfig(String),
    /// The cluster's JetStream did not answer in time (no meta leader).
    #[error("JetStream did not answer within {timeout:?} (last: {last}); node logs:\n{logs}")]
    NoJetStream {
        /// How long it waited.
        timeout: Duration,
        /// The last answer.
        last: String,
        /// Every node's last log lines.
        logs: String,
    },
    /// A node number outside 1 to 3.
    #[error("no cluster node {0} (nodes are 1 to 3)")]
    NoSuchNode(usize),
}

/// The workspace root (where `.tools/` lives).
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A nats-server for one test.
#[derive(Debug)]
pub struct TestNats {
    process: NatsServerProcess,
    _store: tempfile::TempDir,
}

impl TestNats {
    /// Starts a supported server (`NATS_SERVER_BIN`, `.tools/bin`, or `PATH`).
    pub fn start() -> Result<Self, TestkitError> {
        let bin = nats_server::locate_supported(&project_dir())?;
        Self::start_binary(&bin)
    }

    /// Starts this binary without the version check (for testing what happens on old servers).
    pub fn start_binary(bin: &Path) -> Result<Self, TestkitError> {
        Self::start_with(bin, None, &[])
    }

    /// Starts a supported server with a config file (accounts, permissions) on a free port; `env`
    /// supplies the `$VARIABLE`s the file references.
    pub fn start_with_config(config: &Path, env: &[(&str, &str)]) -> Result<Self, TestkitError> {
        let bin = nats_server::locate_supported(&project_dir())?;
        Self::start_with(&bin, Some(config), env)
    }

    fn start_with(
        bin: &Path,
        config: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Self, TestkitError> {
        let store = tempfile::tempdir()?;
        let process = NatsServerProcess::start(ServerOptions {
            bin: bin.to_owned(),
            store_dir: store.path().join("jetstream"),
            port: 0,
            ready_timeout: Duration::from_secs(15),
            config_file: config.map(Path::to_path_buf),
            config_is_complete: false,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })?;
        Ok(Self {
            process,
            _store: store,
        })
    }

    /// Client URL.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// Stops the server (the store is kept for [`TestNats::restart`]).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Restarts on the same port and store.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        Ok(self.process.restart()?)
    }

    /// The server's recent log lines, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The server's process id, for a test that freezes it (`kill -STOP`) to hold publishes
    /// unacknowledged while the connection stays up.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Client settings for this server, tuned for tests (short timeouts).
    pub fn nats_config(&self) -> NatsConfig {
        NatsConfig {
            url: NatsUrls::local(self.process.port()),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            ..NatsConfig::default()
        }
    }

    /// A service context connected to this server with the proxflow topology declared, on the wall
    /// clock ([`ServiceContext::with_clock`] sets another).
    pub async fn context(&self, name: &str) -> Result<ServiceContext, TestkitError> {
        context(&self.nats_config(), name).await
    }
}

/// A service context on `config`, the proxflow topology declared (with its replicas) and readiness
/// tied to the connection.
pub(crate) async fn context(
    config: &NatsConfig,
    name: &str,
) -> Result<ServiceContext, TestkitError> {
    let metrics = Metrics::new();
    let bus = bus::connect(config, name, metrics.clone()).await?;
    topology::declare(&bus.client, &bus.js, bus.replicas).await?;
    let health = Health::default();
    health.watch_nats(bus.client.clone());
    Ok(ServiceContext::new(bus, health, metrics, Duration::from_secs(5)).await?)
}
