//! Publishing: every message leaves with `Nats-Msg-Id` (from its domain key), `Proxflow-Schema` and
//! the W3C trace context of the publishing span, and waits for the stream's acknowledgement.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use proxflow_schemas::Message;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::bus::Cause;
use crate::ops::{Metrics, PublishCounters};
use crate::telemetry;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message did not serialise.
    #[error("cannot encode {schema}: {source}")]
    Encode {
        /// Its schema id.
        schema: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// Its dedupe id cannot travel in a header.
    #[error("dedupe id {0:?} is empty or contains a line break")]
    InvalidDedupeId(String),
    /// The stream did not acknowledge it after every attempt.
    #[error("publish to {subject} failed after {attempts} attempt(s): {source}")]
    Failed {
        /// Target subject.
        subject: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
}

/// What the stream said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Stream sequence of the message (of the original, for a duplicate).
    pub sequence: u64,
    /// The stream had already seen this `Nats-Msg-Id` within its dedupe window and dropped it.
    pub duplicate: bool,
}

/// Publishes wire messages. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    js: jetstream::Context,
    attempts: u32,
    counters: PublishCounters,
}

/// Spacing of publish attempts: from 100 ms, doubling, at most 2 s apart; the count is
/// `nats.publish_attempts`, and each attempt is bounded by the JetStream timeout, not a deadline.
const RETRY: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(2),
    attempts: 1,
    deadline: Duration::MAX,
};

impl Publisher {
    /// A publisher over a JetStream context (whose timeout bounds each attempt).
    pub fn new(js: jetstream::Context, attempts: u32, metrics: Metrics) -> Self {
        Self {
            js,
            attempts: attempts.max(1),
            counters: metrics.publish_counters(),
        }
    }

    /// Publishes `event`, an outcome of work already done: a failed publish is logged and does not
    /// fail that work (the event is its report, not its effect).
    pub async fn announce<M: Message>(&self, event: &M) {
        if let Err(e) = self.publish(event).await {
            tracing::error!(error = %e, subject = %event.subject(), "event not published");
        }
    }

    /// Publishes `message` on its subject and waits for the stream's acknowledgement. Timeouts and
    /// "no responders" (a server restarting) are retried with backoff: the `Nats-Msg-Id` makes a retry
    /// of a publish that did land a no-op.
    pub async fn publish<M: Message>(&self, message: &M) -> Result<Receipt, PublishError> {
        let subject = message.subject();
        let id = message.dedupe_id();
        if id.is_empty() || id.contains(['\r', '\n']) {
            return Err(PublishError::InvalidDedupeId(id));
        }
        let payload = serde_json::to_vec(message).map_err(|source| PublishError::Encode {
            schema: M::SCHEMA.to_string(),
            source,
        })?;
        let span = tracing::debug_span!(
            "publish",
            otel.name = %format_args!("{subject} publish"),
            otel.kind = "producer",
            messaging.message.id = %id,
        );
        let schema = M::SCHEMA.to_string();
        // Built per attempt rather than cloned for each: a retry is rare, a clone of the map is not free.
        let headers = || {
            let mut headers = HeaderMap::new();
            headers.insert(super::MSG_ID, id.as_str());
            headers.insert(super::SCHEMA, schema.as_str());
            telemetry::inject_nats(&span, &mut headers);
            headers
        };
        self.send(subject, headers, payload.into())
            .instrument(span.clone())
            .await
    }

    /// Publishes a message as it was published once (a dead letter's original, replayed by an
    /// operator): `headers` and `payload` as given, and waits for the stream's acknowledgement,
    /// retrying as [`Publisher::publish`] does. `headers` must carry the `Nats-Msg-Id` to
    /// deduplicate by; the caller derives it, because the stream drops a repeat of the original's
    /// id within its duplicate window (the receipt then says `duplicate`).
    pub async fn republish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<Receipt, PublishError> {
        let id = headers
            .get(super::MSG_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        if id.is_empty() || id.contains(['\r', '\n']) {
            return Err(PublishError::InvalidDedupeId(id));
        }
        let span = tracing::debug_span!(
            "republish",
            otel.name = %format_args!("{subject} republish"),
            otel.kind = "producer",
            messaging.message.id = %id,
        );
        self.send(subject, || headers.clone(), payload)
            .instrument(span)
            .await
    }

    async fn send(
        &self,
        subject: String,
        headers: impl Fn() -> HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<Receipt, PublishError> {
        let mut retries = Backoff {
            attempts: self.attempts,
            ..RETRY
        }
        .start();
        // The first attempt starts at once; `attempts` is at least 1.
        let mut attempt = retries.next().await.unwrap_or(1);
        loop {
            let result = match self
                .js
                .publish_with_headers(subject.clone(), headers(), payload.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            let source = match result {
                Ok(ack) => {
                    self.counters.acknowledged(ack.duplicate);
                    return Ok(Receipt {
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) => e,
            };
            if is_transient(source.kind()) && attempt < self.attempts {
                tracing::warn!(%subject, attempt, cause = %Cause::of(&source), error = %source, "publish not acknowledged, retrying");
                if let Some(next) = retries.next().await {
                    attempt = next;
                    continue;
                }
            }
            self.counters.failed.inc();
            return Err(PublishError::Failed {
                subject,
                attempts: attempt,
                source,
            });
        }
    }
}

impl PublishError {
    /// The message is larger than the server's `max_payload`: no retry can ever deliver it.
    pub fn is_too_large(&self) -> bool {
        matches!(self, PublishError::Failed { source, .. }
            if source.kind() == PublishErrorKind::MaxPayloadExceeded)
    }
}

/// Failures where the message may simply not have reached a (restarting) server.
fn is_transient(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::BrokenPipe
    )
}
