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
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        since.timestamp_nanos_opt().unwrap_or_default(),
    ))
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let stream = open(js, stream, subject).await?;
    let consumer = ordered(&stream, subject, DeliverPolicy::ByStartTime { start_time }).await?;
    drain(consumer, subject, |item: Sequenced<T>, _| {
        visit(item.message)
    })
    .await
}

/// Up to the `limit` newest messages on `subject` in `stream` published at or after `since`,
/// oldest first. A message that does not decode as `T` is skipped (and logged): one bad record must
/// not hide the rest of an audit trail. The older messages are not read: the first message worth reading is found by a
/// binary search over stream sequences (each probe asks the server how many messages of `subject`
/// follow a sequence), so the last ten of ten thousand decisions cost a few round trips, not ten
/// thousand deliveries. For the pages that show "the last N".
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
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut stream = open(js, stream, subject).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| api_error(subject, &e))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let wanted = limit as u64;
    // Invariant: at least `wanted` messages of `subject` start at `lo` (or `lo` is the first
    // sequence), fewer than `wanted` start at `hi`.
    let (mut lo, mut hi) = (
        state.first_sequence.max(1),
        state.last_sequence.saturating_add(1),
    );
    while hi.saturating_sub(lo) > 1 {
        let mid = lo + (hi - lo) / 2;
        if pending_from(&stream, subject, mid).await? >= wanted {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let consumer = ordered(
        &stream,
        subject,
        DeliverPolicy::ByStartSequence { start_sequence: lo },
    )
    .await?;
    let mut out = std::collections::VecDeque::new();
    drain(consumer, subject, |item: Sequenced<T>, published| {
        if published >= since {
            out.push_back(item);
            if out.len() > limit {
                out.pop_front();
            }
        }
    })
    .await?;
    Ok(out.into())
}

fn api_error(subject: &str, e: &dyn std::fmt::Display) -> HistoryError {
    HistoryError::Api {
        subject: subject.to_string(),
        reason: e.to_string(),
    }
}

async fn open(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> Result<jetstream::stream::Stream, HistoryError> {
    js.get_stream(stream)
        .await
        .map_err(|e| api_error(subject, &e))
}

/// How many messages of `subject` the stream holds from `sequence` on: the pending count of a
/// consumer created there, removed again at once.
async fn pending_from(
    stream: &jetstream::stream::Stream,
    subject: &str,
    sequence: u64,
) -> Result<u64, HistoryError> {
    let consumer = ordered(
        stream,
        subject,
        DeliverPolicy::ByStartSequence {
            start_sequence: sequence,
        },
    )
    .await?;
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    // Best effort: an ordered consumer left behind expires on its own after its inactivity
    // threshold.
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "history probe consumer not deleted");
    }
    Ok(pending)
}

async fn ordered(
    stream: &jetstream::stream::Stream,
    subject: &str,
    deliver_policy: DeliverPolicy,
) -> Result<jetstream::consumer::Consumer<OrderedConfig>, HistoryError> {
    // Named, so the create request's subject carries the filter
    // (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`) and a least-privilege user can be allowed
    // to read exactly this subject.
    let name = format!(
        "history-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    stream
        .create_consumer(OrderedConfig {
            name: Some(name),
            filter_subject: subject.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| api_error(subject, &e))
}

/// Reads every pending message of `consumer`, handing each decodable one to `visit` with its
/// publication time; returns how many were visited.
async fn drain<T: DeserializeOwned>(
    consumer: jetstream::consumer::Consumer<OrderedConfig>,
    subject: &str,
    mut visit: impl FnMut(Sequenced<T>, DateTime<Utc>),
) -> Result<u64, HistoryError> {
    let api = |e: &dyn std::fmt::Display| api_error(subject, e);
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
            Ok(item) => {
                let published = message.info().map_or_else(
                    |_| Utc::now(),
                    |i| {
                        DateTime::from_timestamp_nanos(
                            i64::try_from(i.published.unix_timestamp_nanos()).unwrap_or(i64::MAX),
                        )
                    },
                );
                visit(
                    Sequenced {
                        sequence,
                        message: item,
                    },
                    published,
                );
                visited += 1;
            }
            Err(e) => tracing::warn!(subject, error = %e, "skipping an undecodable event"),
        }
    }
    Ok(visited)
}
