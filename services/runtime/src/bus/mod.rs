//! NATS and JetStream: connection, topology, publishing, the consumer loop, reading events back,
//! request/reply, and the JetStream readiness probe.

pub mod cause;
pub mod consume;
pub mod history;
pub mod probe;
pub mod publish;
pub mod rpc;
pub mod topology;

use std::time::Duration;

use async_nats::header::HeaderName;
use async_nats::jetstream;
use proxflow_schemas::names::header;

use crate::backoff::Backoff;
use crate::config::NatsConfig;
use crate::ops::Metrics;
pub use cause::Cause;
pub use consume::{ConsumerLoop, Delivery, Handler, Outcome};
pub use probe::{JETSTREAM_CHECK, JetStreamProbe};
pub use publish::{PublishError, Publisher, Receipt};

/// `Nats-Msg-Id`, parsed once: a `&str` header key is validated and parsed on every insert and lookup.
pub(crate) const MSG_ID: HeaderName = HeaderName::from_static(header::MSG_ID);
/// `Proxflow-Schema`, parsed once.
pub(crate) const SCHEMA: HeaderName = HeaderName::from_static(header::SCHEMA);

/// Why the bus could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("nats.credentials_file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// `nats.url` holds something that is not a server address (only reachable when a
    /// [`NatsConfig`] was built in code: loading the configuration already refuses it).
    #[error("nats.url: {0}")]
    InvalidUrl(#[from] crate::config::InvalidNatsUrl),
    /// No connection within `nats.connect_timeout`.
    #[error("cannot reach NATS at {url} within {timeout:?}: {last}")]
    Unreachable {
        /// The configured URLs, comma-separated, credentials redacted.
        url: String,
        /// The configured timeout.
        timeout: Duration,
        /// The last error.
        last: String,
    },
}

/// A connected bus: the core client, its JetStream context and a publisher.
#[derive(Clone, Debug)]
pub struct Bus {
    /// Core NATS client.
    pub client: async_nats::Client,
    /// JetStream context whose timeout is `nats.request_timeout`.
    pub js: jetstream::Context,
    /// Publisher with ids, schema and trace headers.
    pub publisher: Publisher,
    /// Replicas for what this process declares.
    pub replicas: usize,
}

/// Connects, retrying with backoff until `nats.connect_timeout`; afterwards the client reconnects on
/// its own for as long as the process lives.
pub async fn connect(cfg: &NatsConfig, name: &str, metrics: Metrics) -> Result<Bus, ConnectError> {
    // Every configured server: the client connects to one and fails over to the others (and to
    // those the cluster announces) for as long as the process lives.
    let servers = cfg.url.server_addrs()?;
    let mut retries = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
        attempts: u32::MAX,
        deadline: cfg.connect_timeout,
    }
    .start();
    // The first attempt: at once.
    retries.next().await;
    let client = loop {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .custom_inbox_prefix(cfg.inbox_prefix.as_str())
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    // The client closing is the normal end of a shutdown, not a problem.
                    async_nats::Event::Closed => tracing::info!("NATS connection closed"),
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            });
        if let Some(user) = &cfg.user {
            options = options.user_and_password(user.clone(), cfg.password.expose().to_owned());
        }
        if let Some(path) = &cfg.credentials_file {
            options = options.credentials_file(path).await.map_err(|source| {
                ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        match options.connect(servers.clone()).await {
            Ok(client) => break client,
            Err(e) => {
                if retries.next().await.is_none() {
                    return Err(ConnectError::Unreachable {
                        url: cfg.url.to_string(),
                        timeout: cfg.connect_timeout,
                        last: e.to_string(),
                    });
                }
                tracing::warn!(url = %cfg.url, error = %e, "NATS not reachable yet");
            }
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(cfg.request_timeout)
        .build(client.clone());
    let publisher = Publisher::new(js.clone(), cfg.publish_attempts, metrics);
    Ok(Bus {
        client,
        js,
        publisher,
        replicas: cfg.replicas,
    })
}
