//! Pre-change snapshots over NATS request/reply: the responder ([`Snapshotter::serve_prechange`],
//! queue group [`QUEUE_GROUP`] on [`subject::RPC_SNAPSHOTTER_PRECHANGE`]) and the caller's side
//! ([`request_prechange`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use proxflow_runtime::backoff::Backoff;
use proxflow_runtime::bus::rpc;
pub use proxflow_runtime::bus::rpc::RequestError;
use proxflow_runtime::lease::Held;
use proxflow_runtime::ops::Health;
use proxflow_schemas::Versioned;
use proxflow_schemas::names::{header, subject};
use proxflow_schemas::snapshot::{
    PreChangeReply, PreChangeRequest, SnapshotKind, SnapshotTaken, SnapshotTarget,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::naming::{self, NameKind};
use crate::service::{ServiceError, Snapshotter};
use crate::target;

/// Queue group of the pre-change responders: one instance answers each request.
pub const QUEUE_GROUP: &str = "snapshotter";

/// How a pre-change request waits for another one on the same target: up to 10 s (a snapshot
/// takes seconds; callers time out after tens of seconds), looking again at most 50 ms apart.
const PRECHANGE_LOCK_WAIT: Backoff = Backoff {
    base: Duration::from_millis(50),
    max: Duration::from_millis(50),
    attempts: u32::MAX,
    deadline: Duration::from_secs(10),
};

impl Snapshotter {
    /// Takes (or finds, for a repeated request) the pre-change snapshot `request` asks for.
    pub async fn prechange(&self, request: &PreChangeRequest) -> PreChangeReply {
        let span = tracing::info_span!(
            "snapshot.prechange",
            otel.name = %format!("pre-change snapshot {}", request.target),
            request = %request.request_id,
            target = %request.target,
        );
        self.prechange_inner(request).instrument(span).await
    }

    async fn prechange_inner(&self, request: &PreChangeRequest) -> PreChangeReply {
        let refuse = |error: String| refused(request, error);
        if request.request_id.trim().is_empty()
            || request.request_id.len() > 200
            || request.request_id.chars().any(char::is_control)
        {
            return refuse("request_id must be 1-200 printable characters".into());
        }
        if let SnapshotTarget::Dataset { dataset } = &request.target
            && !proxflow_zfs::names::is_dataset_name(dataset)
        {
            return refuse(format!("{dataset:?} is not a dataset name"));
        }
        let ttl = request
            .ttl_secs
            .map(Duration::from_secs)
            .unwrap_or(self.config.prechange_ttl)
            .min(self.config.prechange_max_ttl);
        if ttl.is_zero() {
            return refuse("ttl_secs must be above zero".into());
        }
        // One pre-change snapshot of a target at a time, across replicas: otherwise two copies of
        // one request (a retry racing the original) both find no snapshot and both take one. A
        // lease of its own, not the target's: a replication holding the dataset for an hour must
        // not delay a patch. The holder is unique per call, so requests within this process
        // exclude each other too.
        let key =
            proxflow_schemas::names::key::prechange_lease(&target::lease_key(&request.target));
        let holder = format!("{}/{:08x}", self.holder, rand::random::<u32>());
        let purpose = format!("pre-change {}", request.request_id);
        let mut retries = PRECHANGE_LOCK_WAIT.start();
        let mut busy = String::new();
        while retries.next().await.is_some() {
            let held = self
                .leases
                .with(&key, &holder, &purpose, |_| {
                    self.prechange_locked(request, ttl)
                })
                .await;
            match held {
                Ok(Held::Done(reply)) => return reply,
                Ok(Held::Busy(by)) => busy = format!("{}, {}", by.holder, by.purpose),
                Err(e) => {
                    self.metrics.failed("prechange", "lease");
                    return refuse(e.to_string());
                }
            }
        }
        // The loop ends only after a look found the lease busy, so `busy` names its holder.
        refuse(format!(
            "another pre-change snapshot of {} is being taken ({busy}); ask again",
            request.target
        ))
    }

    /// The pre-change snapshot under the target's pre-change lease: the existing one for this
    /// request, or a new one.
    async fn prechange_locked(&self, request: &PreChangeRequest, ttl: Duration) -> PreChangeReply {
        let refuse = |error: String| refused(request, error);
        let prefix = &self.config.prefix;
        let existing = match self.backends.list(&request.target).await {
            Ok(e) => e,
            Err(e) => {
                self.metrics.failed("prechange", "list");
                return refuse(e.to_string());
            }
        };
        let stem = naming::prechange_stem(prefix, &request.request_id);
        if let Some((found, parsed)) = existing.iter().find_map(|e| {
            naming::parse(prefix, &e.name)
                .filter(|p| p.kind == NameKind::PreChange && e.name.starts_with(&stem))
                .map(|p| (e, p))
        }) {
            tracing::info!(snapshot = %found.name, "pre-change snapshot already taken for this request");
            let fallback = chrono::Duration::from_std(self.config.prechange_ttl)
                .unwrap_or(chrono::Duration::MAX);
            return PreChangeReply {
                request_id: request.request_id.clone(),
                snapshot: Some(found.name.clone()),
                expires_at: Some(found.expires.unwrap_or(parsed.at + fallback)),
                existing: true,
                error: None,
            };
        }
        let now = self.clock.now();
        let name = naming::prechange(prefix, &request.request_id, now);
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let reason: String = request
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        let description = format!("proxflow pre-change {}: {reason}", request.request_id);
        if let Err(e) = self
            .backends
            .create(&request.target, &name, &description, Some(expires))
            .await
        {
            self.metrics.failed("prechange", "create");
            return refuse(format!("snapshot {name}: {e}"));
        }
        tracing::info!(snapshot = %name, expires = %expires, "pre-change snapshot taken");
        self.metrics.taken.inc(["prechange", "prechange"]);
        self.publisher
            .announce(&SnapshotTaken {
                target: request.target.clone(),
                snapshot: name.clone(),
                kind: SnapshotKind::PreChange,
                reference: request.request_id.clone(),
                expires_at: Some(expires),
                at: now,
            })
            .await;
        PreChangeReply {
            request_id: request.request_id.clone(),
            snapshot: Some(name),
            expires_at: Some(expires),
            existing: false,
            error: None,
        }
    }

    /// Answers pre-change requests until `shutdown` (queue group [`QUEUE_GROUP`]).
    pub async fn serve_prechange(
        self: Arc<Self>,
        client: async_nats::Client,
        health: Health,
        shutdown: CancellationToken,
    ) -> Result<(), ServiceError> {
        let mut requests = client
            .queue_subscribe(subject::RPC_SNAPSHOTTER_PRECHANGE, QUEUE_GROUP.into())
            .await
            .map_err(|e| ServiceError::Subscribe {
                subject: subject::RPC_SNAPSHOTTER_PRECHANGE,
                reason: e.to_string(),
            })?;
        // The subscription exists on the server once the client flushed it.
        let _ = client.flush().await;
        health.set("snapshotter.prechange", true);
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = requests.next() => {
                    let Some(message) = next else { break };
                    let (this, client) = (self.clone(), client.clone());
                    tracker.spawn(async move { this.answer(&client, message).await });
                }
            }
        }
        health.set("snapshotter.prechange", false);
        let _ = requests.unsubscribe().await;
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    async fn answer(&self, client: &async_nats::Client, message: async_nats::Message) {
        let Some(reply_to) = message.reply.clone() else {
            tracing::warn!("pre-change request without a reply subject ignored");
            return;
        };
        let reply = match serde_json::from_slice::<PreChangeRequest>(&message.payload) {
            Ok(request) => self.prechange(&request).await,
            Err(e) => PreChangeReply {
                request_id: String::new(),
                snapshot: None,
                expires_at: None,
                existing: false,
                error: Some(format!("undecodable request: {e}")),
            },
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::SCHEMA, PreChangeReply::SCHEMA.to_string().as_str());
        match serde_json::to_vec(&reply) {
            Ok(body) => {
                if let Err(e) = client
                    .publish_with_headers(reply_to, headers, body.into())
                    .await
                {
                    tracing::error!(error = %e, "pre-change reply not sent");
                }
            }
            Err(e) => tracing::error!(error = %e, "pre-change reply not encodable"),
        }
    }
}

/// Asks the snapshotter for a pre-change snapshot and waits up to `timeout` for its answer (the
/// caller's side of [`Snapshotter::serve_prechange`]).
pub async fn request_prechange(
    client: &async_nats::Client,
    request: &PreChangeRequest,
    timeout: Duration,
) -> Result<PreChangeReply, RequestError> {
    rpc::request(client, subject::RPC_SNAPSHOTTER_PRECHANGE, request, timeout).await
}

/// A refused pre-change request's answer.
fn refused(request: &PreChangeRequest, error: String) -> PreChangeReply {
    tracing::warn!(%error, "pre-change request refused");
    PreChangeReply {
        request_id: request.request_id.clone(),
        snapshot: None,
        expires_at: None,
        existing: false,
        error: Some(error),
    }
}
