//! Reading events back: the newest messages of one subject since a point in time, for the audit
//! views (`GET /v1/remediations`, `proxflow remediations`). Read with an ordered consumer, so nothing
//! is acknowledged away and no durable state is left behind.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// Why the history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The stream or a consumer on it could not be had.
    #[error("reading {subject}: {reason}")]
    Api {
        /// The subject.
        subject: String,
        /// What failed.
        reason: String,
    },
    /// The server stopped delivering before the end.
    #[error("reading {0}: no message within {1:?} although more were pending")]
    Stalled(String, Duration),
}

/// A message read back with its place in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced<T> {
    /// Its sequence in the stream: where to find it again.
    pub sequence: u64,
    /// The decoded message.
    pub message: T,
}

/// Up to the `limit` newest messages on `subject` in `stream` published at or after `since`,
/// oldest first. A message that does not decode as `T` is skipped (and logged): one bad record must
/// not hide the rest of an audit trail.
pub async fn since<T: DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    since: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<T>, HistoryError> {
    let found = since_sequenced(js, stream, subject, since, limit).await?;
    Ok(found.into_iter().map(|s| s.message).collect())
}

/// [`since`], each message with its stream sequence.
pub async fn since_sequenced<T: DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    since: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Sequenced<T>>, HistoryError> {
    let mut out = std::collections::VecDeque::new();
    visit_sequenced(js, stream, subject, since, |item: Sequenced<T>| {
        out.push_back(item);
        if out.len() > limit {
            out.pop_front();
        }
    })
    .await?;
    Ok(out.into())
}

/// Hands every message on `subject` in `stream` published at or after `since` to `visit`, oldest
/// first, without keeping them: a month of capacity samples is folded, never held. Returns how many
/// were visited; undecodable ones are skipped (and logged) as in [`since`].
pub async fn each<T: DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    since: DateTime<Utc>,
    mut visit: impl FnMut(T),
) -> Result<u64, HistoryError> {
    visit_sequenced(js, stream, subject, since, |item: Sequenced<T>| {
        visit(item.message)
    })
    .await
}

async fn visit_sequenced<T: DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    since: DateTime<Utc>,
    mut visit: impl FnMut(Sequenced<T>),
) -> Result<u64, HistoryError> {
    let api = |e: &dyn std::fmt::Display| HistoryError::Api {
        subject: subject.to_string(),
        reason: e.to_string(),
    };
    let stream = js.get_stream(stream).await.map_err(|e| api(&e))?;
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        since.timestamp_nanos_opt().unwrap_or_default(),
    ))
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Named, so the create request's subject carries the filter
    // (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`) and a least-privilege user can be allowed
    // to read exactly this subject.
    let name = format!(
        "history-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let consumer = stream
        .create_consumer(OrderedConfig {
            name: Some(name),
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| api(&e))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut visited = 0;
    if pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer.messages().await.map_err(|e| api(&e))?;
    let wait = Duration::from_secs(5);
    while pending > 0 {
        let message = match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| api(&e))?,
            Ok(None) | Err(_) => return Err(HistoryError::Stalled(subject.to_string(), wait)),
        };
        let (left, sequence) = message
            .info()
            .map_or((0, 0), |i| (i.pending, i.stream_sequence));
        pending = left;
        match serde_json::from_slice::<T>(&message.payload) {
            Ok(message) => {
                visit(Sequenced { sequence, message });
                visited += 1;
            }
            Err(e) => tracing::warn!(subject, error = %e, "skipping an undecodable event"),
        }
    }
    Ok(visited)
}
