//! Leases on targets in the `pf_locks` bucket: one holder at a time per key (a dataset, a VM, the
//! scale-out of a cluster).
//!
//! A lease is taken with KV `create`, so of two racing holders exactly one wins, and it is renewed by
//! compare-and-set in the background while held. The bucket's `max_age` (15 min) is the lease length:
//! a holder that dies without releasing frees the key once its last renewal ages out, and a holder
//! whose renewal finds someone else's revision knows it lost the lease ([`Lease::is_held`]).
//! The same holder asking again (a redelivered workflow step) adopts its own lease.
//!
//! [`Leases::with`] is the usual way in: it runs a piece of work under the lease and gives it up on
//! every path, including a caller that stops waiting (a shutdown, a timeout) mid-way.
//!
//! Dropping a [`Lease`] itself only stops its renewal: some holders mean that (the remediation
//! engine leaves its lock for the remediator to adopt). Work that may be abandoned (a scheduled pass
//! cut short at shutdown) runs in a [`LeaseScope`], which records the leases taken under it so
//! whoever abandoned the work releases them at once instead of leaving them for 15 minutes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use proxflow_schemas::names::bucket;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A lease whose holder has not renewed it for this long is taken over by the next holder that
/// asks: its holder died (kill -9, a lost host) without releasing. Renewal runs at a third of it, so
/// a live holder is never mistaken for a dead one by less than two missed renewals; the bucket's
/// 15-minute age limit stays as the backstop for a lease nobody asks for again.
const STALE_AFTER: Duration = Duration::from_secs(180);

/// Why a lease could not be taken or released.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// KV failed.
    #[error("lease {key}: {reason}")]
    Kv {
        /// Lease key.
        key: String,
        /// What failed.
        reason: String,
    },
    /// The key has characters KV keys cannot carry.
    #[error("lease key {0:?} is not a valid KV key (letters, digits, '-', '_', '/', '=', '.')")]
    InvalidKey(String),
}

/// Who holds a lease and why, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's id (a workflow id, a service instance).
    pub holder: String,
    /// What it is doing, for operators reading the bucket.
    pub purpose: String,
    /// When it was taken.
    pub since: DateTime<Utc>,
}

/// The answer to [`Leases::acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// Ours now (or already ours).
    Held(Lease),
    /// Someone else's.
    Busy(LeaseRecord),
}

/// The answer to [`Leases::with`].
#[derive(Debug)]
pub enum Held<T> {
    /// The lease was taken and the work ran; its result.
    Done(T),
    /// Someone else holds the lease; the work did not run.
    Busy(LeaseRecord),
}

/// A lease holder id for this process: `<service>-<pid>-<random>`, unique across replicas and
/// restarts (a restarted process must not adopt the leases its predecessor left to age out).
pub fn holder_id(service: &str) -> String {
    format!(
        "{service}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Handle on the locks bucket.
#[derive(Clone, Debug)]
pub struct Leases {
    kv: kv::Store,
    /// See [`STALE_AFTER`].
    stale_after: Duration,
}

impl Leases {
    /// Opens the bucket (declared by the topology).
    pub async fn open(js: &jetstream::Context) -> Result<Self, LeaseError> {
        js.get_key_value(bucket::LOCKS)
            .await
            .map(|kv| Self {
                kv,
                stale_after: STALE_AFTER,
            })
            .map_err(|e| kv_error(bucket::LOCKS, e))
    }

    /// The same leases with another staleness limit (and renewal at a third of it): for tests that
    /// cannot wait minutes for a dead holder's lease to be taken over.
    pub fn with_stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }

    /// Takes the lease on `key` for `holder`, or reports who has it.
    pub async fn acquire(
        &self,
        key: &str,
        holder: &str,
        purpose: &str,
    ) -> Result<Acquired, LeaseError> {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_/=.".contains(c))
            || key.starts_with('.')
            || key.ends_with('.')
        {
            return Err(LeaseError::InvalidKey(key.to_string()));
        }
        let record = LeaseRecord {
            holder: holder.to_string(),
            purpose: purpose.to_string(),
            since: Utc::now(),
        };
        // Two rounds: a lease found expired-but-present (tombstone races) gets one more try.
        for _ in 0..2 {
            match self.kv.create(key, encode(key, &record)?).await {
                Ok(revision) => return Ok(Acquired::Held(self.hold(key, record, revision))),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(kv_error(key, e)),
            }
            let entry = self.kv.entry(key).await.map_err(|e| kv_error(key, e))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                continue;
            };
            let current: LeaseRecord =
                serde_json::from_slice(&entry.value).map_err(|e| LeaseError::Kv {
                    key: key.to_string(),
                    reason: format!("stored lease is unreadable: {e}"),
                })?;
            if current.holder == holder {
                return Ok(Acquired::Held(self.hold(key, current, entry.revision)));
            }
            // Not renewed for longer than a live holder ever goes: its holder is dead. Taken over
            // by compare-and-set on the revision seen, so of two takers one wins; the dead
            // holder, should it wake, finds its next renewal refused and knows it lost the lease.
            let silent = time::OffsetDateTime::now_utc() - entry.created;
            if silent > self.stale_after {
                match self
                    .kv
                    .update(key, encode(key, &record)?, entry.revision)
                    .await
                {
                    Ok(revision) => {
                        tracing::warn!(lease = %key, dead = %current.holder, purpose = %current.purpose, silent_s = silent.whole_seconds(), "took over a lease its holder stopped renewing");
                        return Ok(Acquired::Held(self.hold(key, record, revision)));
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(kv_error(key, e)),
                }
            }
            return Ok(Acquired::Busy(current));
        }
        Err(LeaseError::Kv {
            key: key.to_string(),
            reason: "contended: neither created nor readable".into(),
        })
    }

    /// Runs `work` under the lease on `key`, or reports who holds it (then `work` does not run).
    ///
    /// The lease is released when `work` ends, and also when the returned future is dropped before
    /// that (a caller's timeout or shutdown): the release is then spawned, so the key is free again
    /// at once instead of after the bucket's 15-minute age limit. A failed release is logged, not
    /// returned: the work is done, and the lease ages out. `work` gets a [`LeaseWatch`] to notice a
    /// lease lost mid-way (see [`Lease::is_held`]).
    pub async fn with<T, F, Fut>(
        &self,
        key: &str,
        holder: &str,
        purpose: &str,
        work: F,
    ) -> Result<Held<T>, LeaseError>
    where
        F: FnOnce(LeaseWatch) -> Fut,
        Fut: Future<Output = T>,
    {
        let lease = match self.acquire(key, holder, purpose).await? {
            Acquired::Held(lease) => lease,
            Acquired::Busy(by) => return Ok(Held::Busy(by)),
        };
        let watch = LeaseWatch(lease.inner.clone());
        let mut guard = ReleaseOnDrop(Some(lease));
        let result = work(watch).await;
        if let Some(lease) = guard.0.take() {
            release_logged(lease).await;
        }
        Ok(Held::Done(result))
    }

    /// Who holds `key`, if anyone.
    pub async fn holder(&self, key: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        let entry = self.kv.entry(key).await.map_err(|e| kv_error(key, e))?;
        match entry.filter(|e| e.operation == kv::Operation::Put) {
            Some(e) => serde_json::from_slice(&e.value)
                .map(Some)
                .map_err(|err| LeaseError::Kv {
                    key: key.to_string(),
                    reason: format!("stored lease is unreadable: {err}"),
                }),
            None => Ok(None),
        }
    }

    fn hold(&self, key: &str, record: LeaseRecord, revision: u64) -> Lease {
        let inner = Arc::new(LeaseInner {
            kv: self.kv.clone(),
            key: key.to_string(),
            revision: AtomicU64::new(revision),
            held: AtomicBool::new(true),
            released: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        // Outside a scope (`try_with` fails) nothing is recorded: the holder alone decides.
        let _ = SCOPE.try_with(|scope| scope.record(inner.clone()));
        tokio::spawn(renew(inner.clone(), record, self.stale_after / 3));
        Lease { inner }
    }
}

/// A held lease; renewed in the background until [`Lease::release`] or drop.
#[derive(Debug)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

/// What the holder and its renewal task share.
#[derive(Debug)]
struct LeaseInner {
    kv: kv::Store,
    key: String,
    revision: AtomicU64,
    held: AtomicBool,
    /// Set by [`Lease::release`], so a [`LeaseScope`] does not release it a second time.
    released: AtomicBool,
    stop: CancellationToken,
}

impl Lease {
    /// `false` once a renewal found the key taken over (this holder stalled past the lease length).
    pub fn is_held(&self) -> bool {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// Gives the lease up. Deletes the key only if it is still this holder's revision, so a lease
    /// that was lost and re-taken by someone else is left alone.
    pub async fn release(self) -> Result<(), LeaseError> {
        self.inner.release().await
    }
}

impl LeaseInner {
    async fn release(&self) -> Result<(), LeaseError> {
        self.released.store(true, Ordering::SeqCst);
        self.stop.cancel();
        if !self.held.load(Ordering::SeqCst) {
            return Ok(());
        }
        let revision = self.revision.load(Ordering::SeqCst);
        // A release lost to a leader election would leave the lease to age out (minutes of every
        // later holder being told "busy"): it is retried while the bucket is unavailable.
        let mut retries = crate::backoff::Backoff::UNAVAILABLE.start();
        retries.next().await;
        loop {
            let failed = match self
                .kv
                .delete_expect_revision(&self.key, Some(revision))
                .await
            {
                Ok(()) => return Ok(()),
                // The client reports a revision mismatch as a generic publish error: look whether
                // the key moved on (someone else's now, or gone), which is not a failure of this
                // release.
                Err(e) => match self.kv.entry(&self.key).await {
                    Ok(Some(entry)) if entry.revision == revision => e,
                    Ok(_) => return Ok(()),
                    Err(_) => e,
                },
            };
            if retries.next().await.is_none() {
                return Err(kv_error(&self.key, failed));
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Stops renewing; the entry then ages out. `release` is the prompt way.
        self.inner.stop.cancel();
    }
}

/// Whether a lease taken by [`Leases::with`] is still held, for the work running under it.
#[derive(Debug, Clone)]
pub struct LeaseWatch(Arc<LeaseInner>);

impl LeaseWatch {
    /// `false` once a renewal found the key taken over (see [`Lease::is_held`]).
    pub fn is_held(&self) -> bool {
        self.0.held.load(Ordering::SeqCst)
    }
}

/// Releases a lease whose work was dropped before it ended.
struct ReleaseOnDrop(Option<Lease>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(lease) = self.0.take() else {
            return;
        };
        // Drop cannot wait: the release runs on its own. Without a runtime (the process is going
        // down) the lease's own drop stops its renewal and the entry ages out.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release_logged(lease));
            }
            Err(_) => drop(lease),
        }
    }
}

async fn release_logged(lease: Lease) {
    let key = lease.inner.key.clone();
    if let Err(e) = lease.release().await {
        tracing::warn!(lease = %key, error = %e, "lease not released; it ages out");
    }
}

tokio::task_local! {
    /// The scope the current task's work runs in, if any.
    static SCOPE: LeaseScope;
}

/// Records the leases taken by work run through [`LeaseScope::run`] (in that task), so that when the
/// work is dropped half-way its leases can still be released ([`LeaseScope::release_abandoned`]).
#[derive(Clone, Debug, Default)]
pub struct LeaseScope {
    taken: Arc<Mutex<Vec<Arc<LeaseInner>>>>,
}

impl LeaseScope {
    /// An empty scope.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work`, recording every lease it takes.
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        SCOPE.scope(self.clone(), work).await
    }

    fn record(&self, lease: Arc<LeaseInner>) {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lease);
    }

    /// Releases the leases the work took and did not release itself; call once the work was dropped.
    /// Returns how many it released. A lease another holder took over meanwhile is left alone.
    pub async fn release_abandoned(&self) -> usize {
        let taken = std::mem::take(&mut *self.taken.lock().unwrap_or_else(|p| p.into_inner()));
        let mut released = 0;
        for lease in taken {
            if lease.released.load(Ordering::SeqCst) {
                continue;
            }
            match lease.release().await {
                Ok(()) => {
                    tracing::info!(lease = %lease.key, "lease of abandoned work released");
                    released += 1;
                }
                Err(e) => {
                    tracing::warn!(lease = %lease.key, error = %e, "lease not released; it ages out")
                }
            }
        }
        released
    }
}

async fn renew(lease: Arc<LeaseInner>, record: LeaseRecord, every: Duration) {
    let Ok(value) = encode(&lease.key, &record) else {
        return;
    };
    loop {
        tokio::select! {
            _ = lease.stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let revision = lease.revision.load(Ordering::SeqCst);
        match lease.kv.update(&lease.key, value.clone(), revision).await {
            Ok(next) => lease.revision.store(next, Ordering::SeqCst),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::error!(key = %lease.key, "lease lost: another holder took it over");
                lease.held.store(false, Ordering::SeqCst);
                return;
            }
            // A transient KV failure: try again next round, well before the entry ages out.
            Err(e) => {
                tracing::warn!(key = %lease.key, cause = %crate::bus::Cause::of(&e), error = %e, "lease renewal failed")
            }
        }
    }
}

fn encode(key: &str, record: &LeaseRecord) -> Result<Bytes, LeaseError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| LeaseError::Kv {
            key: key.to_string(),
            reason: format!("encoding: {e}"),
        })
}

fn kv_error(key: &str, e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Kv {
        key: key.to_string(),
        reason: e.to_string(),
    }
}
