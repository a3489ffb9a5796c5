//! Compare-and-set on one KV key, the one way every shared record here changes (workflow records,
//! admission ledgers, breakers, guards); and listing the keys under a pattern ([`latest`]).
//!
//! A change reads the value with its revision, applies a pure function and writes back only if
//! nobody wrote in between. A conflict is *contention*, not failure: it is retried here, inside the
//! handler, with jittered backoff ([`Backoff::CONTENTION`]) until a deadline, so a burst of writers
//! on one key never spends a message delivery (on a 3-node R3 cluster a conflict used to be a NAK
//! with a back-off of seconds to minutes). Conflicts and the rare give-ups are counted in
//! `proxflow_kv_cas_conflicts_total{bucket}` and `proxflow_kv_cas_exhausted_total{bucket}`.

use std::sync::LazyLock;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backoff::{Backoff, Retries};

/// What a change function decided.
#[derive(Debug)]
pub enum Change<T, R> {
    /// Write this value, then return `R`.
    Write(T, R),
    /// Delete the key (if present), then return `R`.
    Delete(R),
    /// Leave the key as it is and return `R`.
    Keep(R),
}

/// Why a compare-and-set change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// KV failed (bucket missing, server unavailable, timeout); the message names the likely
    /// cause before the client's text.
    #[error("kv {key}: {}: {source}", crate::bus::Cause::of(source))]
    Kv {
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stored value does not decode.
    #[error("kv {key}: stored value is unreadable: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// The value does not encode.
    #[error("kv {key}: value does not encode: {source}")]
    Encode {
        /// The key.
        key: String,
        /// The encode error.
        #[source]
        source: serde_json::Error,
    },
    /// Conflicting writers kept winning until the deadline.
    #[error("kv {key}: still contended after {attempts} attempts")]
    Contended {
        /// The key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl CasError {
    /// The KV error of `key`.
    pub fn kv(key: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Kv {
            key: key.to_string(),
            source: Box::new(source),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BucketLabel {
    bucket: String,
}

/// Process-wide CAS counters; every [`crate::ops::Metrics`] registry exposes them.
#[derive(Debug, Default)]
pub(crate) struct CasCounters {
    pub(crate) conflicts: Family<BucketLabel, Counter>,
    pub(crate) exhausted: Family<BucketLabel, Counter>,
}

pub(crate) static COUNTERS: LazyLock<CasCounters> = LazyLock::new(CasCounters::default);

/// Conflicts retried so far in this process on `bucket` (for tests and benchmarks).
pub fn conflicts(bucket: &str) -> u64 {
    COUNTERS
        .conflicts
        .get_or_create(&BucketLabel {
            bucket: bucket.to_string(),
        })
        .get()
}

/// Changes this process gave up on for contention on `bucket` (each one a redelivery).
pub fn exhausted(bucket: &str) -> u64 {
    COUNTERS
        .exhausted
        .get_or_create(&BucketLabel {
            bucket: bucket.to_string(),
        })
        .get()
}

/// A value and the revision it was read at (`None`: the key is absent or deleted).
#[derive(Debug, Clone)]
pub struct Read<T> {
    /// The decoded value.
    pub value: Option<T>,
    /// Its revision.
    pub revision: Option<u64>,
}

/// Reads `key` and decodes it.
pub async fn read<T: DeserializeOwned>(store: &kv::Store, key: &str) -> Result<Read<T>, CasError> {
    let entry = patiently(
        || store.entry(key),
        |e: &kv::EntryError| e.kind() != kv::EntryErrorKind::InvalidKey,
    )
    .await
    .map_err(|e| CasError::kv(key, e))?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let value = serde_json::from_slice(&e.value).map_err(|source| CasError::Corrupt {
                key: key.to_string(),
                source,
            })?;
            Ok(Read {
                value: Some(value),
                revision: Some(e.revision),
            })
        }
        // A tombstone's revision is what a re-create must follow; `create` handles that itself.
        _ => Ok(Read {
            value: None,
            revision: None,
        }),
    }
}

/// Why the keys under a pattern could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The consumer could not be created or read from.
    #[error("listing {filter} in {bucket}: {source}")]
    Api {
        /// The bucket.
        bucket: String,
        /// The key pattern.
        filter: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server stopped delivering before the last key.
    #[error(
        "listing {filter} in {bucket}: nothing within {wait:?} although {left} more were pending"
    )]
    Stalled {
        /// The bucket.
        bucket: String,
        /// The key pattern.
        filter: String,
        /// How long it waited.
        wait: Duration,
        /// Keys still to come.
        left: u64,
    },
}

/// How long [`latest`] waits for the next key before giving up.
const LIST_STALL: Duration = Duration::from_secs(5);

/// Every key matching `filter` (a key pattern: `idx.provision.>`, `sig.w-1.*`) with its value as it
/// stands, deleted keys left out, in no particular order. One ordered consumer delivers the last
/// revision of each key: a listing costs one pass over the keys, never a read per key.
pub async fn latest(store: &kv::Store, filter: &str) -> Result<Vec<(String, Bytes)>, ListError> {
    let api = |e: Box<dyn std::error::Error + Send + Sync>| ListError::Api {
        bucket: store.name.clone(),
        filter: filter.to_owned(),
        source: e,
    };
    let consumer = store
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}{filter}", store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| api(e.into()))?;
    let mut left = consumer.cached_info().num_pending;
    let mut entries = Vec::new();
    if left == 0 {
        return Ok(entries);
    }
    let mut messages = consumer.messages().await.map_err(|e| api(e.into()))?;
    while left > 0 {
        let message = match tokio::time::timeout(LIST_STALL, messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| api(e.into()))?,
            Ok(None) | Err(_) => {
                return Err(ListError::Stalled {
                    bucket: store.name.clone(),
                    filter: filter.to_owned(),
                    wait: LIST_STALL,
                    left,
                });
            }
        };
        left = message.info().map(|i| i.pending).unwrap_or(0);
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if deleted || message.payload.is_empty() {
            continue;
        }
        if let Some(key) = message.subject.as_str().strip_prefix(&store.prefix) {
            entries.push((key.to_owned(), message.payload.clone()));
        }
    }
    Ok(entries)
}

/// The outcome of one write attempt.
enum Written {
    Done(Option<u64>),
    Conflict,
}

/// Applies `change` to the value under `key` by compare-and-set, retrying conflicts with
/// [`Backoff::CONTENTION`]. `change` must be a pure function of what it is given: it runs again on
/// every conflict. Returns `R` and the new revision (`None` when nothing was written or it was
/// deleted).
pub async fn change<T, R>(
    store: &kv::Store,
    key: &str,
    mut change: impl FnMut(Option<T>) -> Change<T, R>,
) -> Result<(R, Option<u64>), CasError>
where
    T: Serialize + DeserializeOwned,
{
    let bucket = store.name.clone();
    let mut retries: Retries = Backoff::CONTENTION.start();
    while retries.next().await.is_some() {
        let current = read::<T>(store, key).await?;
        let (written, result) = match change(current.value) {
            Change::Keep(r) => return Ok((r, current.revision)),
            Change::Write(value, r) => {
                let bytes = serde_json::to_vec(&value)
                    .map(Bytes::from)
                    .map_err(|source| CasError::Encode {
                        key: key.to_string(),
                        source,
                    })?;
                (write(store, key, bytes, current.revision).await?, r)
            }
            Change::Delete(r) => match current.revision {
                None => return Ok((r, None)),
                Some(rev) => (delete(store, key, rev).await?, r),
            },
        };
        match written {
            Written::Done(revision) => return Ok((result, revision)),
            Written::Conflict => {
                COUNTERS
                    .conflicts
                    .get_or_create(&BucketLabel {
                        bucket: bucket.clone(),
                    })
                    .inc();
            }
        }
    }
    COUNTERS
        .exhausted
        .get_or_create(&BucketLabel { bucket })
        .inc();
    Err(CasError::Contended {
        key: key.to_string(),
        attempts: retries.attempts(),
    })
}

/// Writes `bytes` after `revision` (`None`: the key must not exist).
async fn write(
    store: &kv::Store,
    key: &str,
    bytes: Bytes,
    revision: Option<u64>,
) -> Result<Written, CasError> {
    // A write that timed out may have landed: the retry then meets the new revision as a conflict,
    // reads it, and `change` decides again on what is stored.
    match revision {
        Some(rev) => match patiently(
            || store.update(key, bytes.clone(), rev),
            |e: &kv::UpdateError| {
                !matches!(
                    e.kind(),
                    kv::UpdateErrorKind::InvalidKey | kv::UpdateErrorKind::WrongLastRevision
                )
            },
        )
        .await
        {
            Ok(next) => Ok(Written::Done(Some(next))),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Written::Conflict),
            Err(e) => Err(CasError::kv(key, e)),
        },
        None => create(store, key, bytes).await,
    }
}

/// Runs one KV call, retrying the failures `transient` accepts (no responders during a leader
/// election, a restarting server, a timeout) with [`Backoff::UNAVAILABLE`]: a cluster electing a
/// new leader costs a pause, not a failed handler and a spent delivery.
pub(crate) async fn patiently<T, E, Fut>(
    mut call: impl FnMut() -> Fut,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut retries = Backoff::UNAVAILABLE.start();
    // The first attempt: at once.
    retries.next().await;
    loop {
        match call().await {
            Err(e) if transient(&e) => {
                let Some(attempt) = retries.next().await else {
                    return Err(e);
                };
                tracing::debug!(attempt, cause = %crate::bus::Cause::of(&e), error = %e, "KV unavailable; retrying");
            }
            other => return other,
        }
    }
}

/// Creates `key`: a conflict when it exists. During a leader election the client can report an
/// existing key (or a create of ours that landed before its answer was lost) as a generic "wrong
/// last sequence": whenever the key exists after a failed create, it is a conflict, decided again
/// on what is stored; while the bucket does not answer, the create is retried.
async fn create(store: &kv::Store, key: &str, bytes: Bytes) -> Result<Written, CasError> {
    let mut retries = Backoff::UNAVAILABLE.start();
    retries.next().await;
    loop {
        let failed = match store.create(key, bytes.clone()).await {
            Ok(next) => return Ok(Written::Done(Some(next))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Ok(Written::Conflict);
            }
            Err(e) if e.kind() == kv::CreateErrorKind::InvalidKey => {
                return Err(CasError::kv(key, e));
            }
            Err(e) => match store.entry(key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    return Ok(Written::Conflict);
                }
                _ => e,
            },
        };
        if retries.next().await.is_none() {
            return Err(CasError::kv(key, failed));
        }
        tracing::debug!(key, cause = %crate::bus::Cause::of(&failed), error = %failed, "KV create unavailable; retrying");
    }
}

/// Deletes `key` if it is still at `revision`.
async fn delete(store: &kv::Store, key: &str, revision: u64) -> Result<Written, CasError> {
    match store.delete_expect_revision(key, Some(revision)).await {
        Ok(()) => Ok(Written::Done(None)),
        // The client reports a revision mismatch as a generic error: look whether the key moved on.
        Err(e) => match store.entry(key).await {
            Ok(Some(entry)) if entry.revision == revision => Err(CasError::kv(key, e)),
            Ok(_) => Ok(Written::Conflict),
            Err(_) => Err(CasError::kv(key, e)),
        },
    }
}
