//! Readiness of JetStream, not just of the connection: a background probe that asks JetStream a
//! cheap question on a timer and records the answer as the `jetstream` check of [`Health`].
//!
//! A connected client says nothing about JetStream: with two of three cluster nodes gone the
//! survivor still accepts the connection while every publish and consumer request fails. So the
//! probe asks for the account (answered by the meta leader; a leaderless cluster answers with an
//! error) and for the info of a known stream, whose cluster section shows how many of its
//! replicas the stream leader still hears. A raft leader keeps its role (and keeps answering) for
//! about ten seconds after it lost its followers, so an answer alone is not enough: the stream must
//! also have a reachable quorum. The probe runs on its own timer and `/readyz` only reads its last
//! result, so readiness checks cannot be turned into load on the servers.

use std::time::Duration;

use async_nats::jetstream::{self, context};
use proxflow_schemas::names::stream;
use tokio_util::sync::CancellationToken;

use crate::ops::Health;

/// Name of the readiness check the probe sets.
pub const JETSTREAM_CHECK: &str = "jetstream";

/// A replica the stream leader has not heard from for this long counts as lost: five raft
/// heartbeats (one a second), well inside the ten seconds after which the leader itself gives up.
const REPLICA_SILENCE: Duration = Duration::from_secs(5);

/// Why JetStream counts as unavailable.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamUnavailable {
    /// No answer within the probe's timeout (no responders, no meta leader, a stalled server).
    #[error("no answer from JetStream within {0:?}")]
    Timeout(Duration),
    /// The account request failed (e.g. `JetStream system temporarily unavailable`).
    #[error("account info: {0}")]
    Account(#[source] context::AccountError),
    /// The stream info request failed.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The stream asked about.
        stream: String,
        /// What the request returned.
        #[source]
        source: context::GetStreamError,
    },
    /// The stream has no leader: nothing can be written to it.
    #[error("stream {stream} has no leader")]
    NoLeader {
        /// The stream.
        stream: String,
    },
    /// The stream leader hears too few replicas to commit a write.
    #[error(
        "stream {stream} lost its quorum: {reachable} of {replicas} replicas reachable \
         (unreachable: {unreachable})"
    )]
    QuorumLost {
        /// The stream.
        stream: String,
        /// Replicas the leader hears, itself included.
        reachable: usize,
        /// Replicas of the stream.
        replicas: usize,
        /// Names of the others, comma-separated.
        unreachable: String,
    },
}

/// How often and how patiently JetStream is asked.
#[derive(Debug, Clone)]
pub struct JetStreamProbe {
    /// Time between the end of one probe and the start of the next.
    pub interval: Duration,
    /// Bound on one probe (both requests).
    pub timeout: Duration,
    /// The stream whose quorum is checked: one every service's NATS user may ask about.
    pub stream: String,
}

impl Default for JetStreamProbe {
    fn default() -> Self {
        Self {
            // Two small requests a second per process, answered from the servers' memory: cheap,
            // and a quorum loss shows in `/readyz` within about two seconds.
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            stream: stream::EVT.to_owned(),
        }
    }
}

impl JetStreamProbe {
    /// Asks JetStream once.
    pub async fn check(&self, js: &jetstream::Context) -> Result<(), JetStreamUnavailable> {
        tokio::time::timeout(self.timeout, self.ask(js))
            .await
            .map_err(|_| JetStreamUnavailable::Timeout(self.timeout))?
    }

    async fn ask(&self, js: &jetstream::Context) -> Result<(), JetStreamUnavailable> {
        js.query_account()
            .await
            .map_err(JetStreamUnavailable::Account)?;
        let info =
            js.get_stream(&self.stream)
                .await
                .map_err(|source| JetStreamUnavailable::Stream {
                    stream: self.stream.clone(),
                    source,
                })?;
        // A single server reports no cluster, or itself as leader without replicas.
        let Some(cluster) = &info.cached_info().cluster else {
            return Ok(());
        };
        if cluster.leader.is_none() {
            return Err(JetStreamUnavailable::NoLeader {
                stream: self.stream.clone(),
            });
        }
        let (heard, unheard): (Vec<_>, Vec<_>) = cluster
            .replicas
            .iter()
            .partition(|peer| !peer.offline && peer.active <= REPLICA_SILENCE);
        let replicas = cluster.replicas.len() + 1;
        let reachable = heard.len() + 1;
        if reachable < replicas / 2 + 1 {
            return Err(JetStreamUnavailable::QuorumLost {
                stream: self.stream.clone(),
                reachable,
                replicas,
                unreachable: unheard
                    .iter()
                    .map(|peer| peer.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(())
    }

    /// Probes every `interval` until `stop`, recording each result as the `jetstream` check of
    /// `health`. Changes are logged once (a warning with the reason when JetStream becomes
    /// unavailable, an info line when it answers again), not on every probe.
    pub async fn run(self, health: Health, js: jetstream::Context, stop: CancellationToken) {
        let mut available = None;
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.check(&js) => result,
            };
            health.set(JETSTREAM_CHECK, result.is_ok());
            match (&result, available) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(error = %e, "JetStream unavailable: not ready until it answers");
                }
                (Err(e), Some(false)) => tracing::debug!(error = %e, "JetStream still unavailable"),
                (Ok(()), Some(false)) => tracing::info!("JetStream available again: ready"),
                (Ok(()), Some(true) | None) => {}
            }
            available = Some(result.is_ok());
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
