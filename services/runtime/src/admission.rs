//! Caps on expensive work: at most N running at once and at most M started per window.
//!
//! One ledger per guarded kind of work (`provision.k8s-node`) in the `pf_admissions` bucket: the ids
//! running now and the start times within the window. Admitting and finishing are compare-and-set
//! updates of that one key, so two orchestrator replicas can never both take the last slot, and a
//! re-delivered request that was already admitted is admitted again without counting twice.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv::Store};
use chrono::{DateTime, Utc};
use proxflow_schemas::names::bucket;
use serde::{Deserialize, Serialize};

use crate::kv::{self, CasError, Change};

/// The caps of one kind of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most running at once.
    pub max_running: u32,
    /// Most started within `window`.
    pub max_per_window: u32,
    /// The window of `max_per_window`.
    pub window: Duration,
}

/// What admission decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead (also for an id admitted before and still running).
    Admitted,
    /// Refused; the reason names the cap and the numbers.
    Refused(String),
}

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The bucket is missing (topology not declared) or KV is unreachable.
    #[error("admission ledgers: {0}")]
    Open(String),
    /// Reading or writing a ledger failed (KV down, unreadable, contended past the deadline).
    #[error("admission ledger: {0}")]
    Ledger(#[from] CasError),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    /// Running ids and when they were admitted.
    running: BTreeMap<String, DateTime<Utc>>,
    /// Start times within the window (pruned on every write).
    started: Vec<DateTime<Utc>>,
    /// Occurrences by id within a window, for [`Admissions::occur`] (pruned on every write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seen: BTreeMap<String, DateTime<Utc>>,
}

/// The answer to [`Admissions::occur`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrences {
    /// Distinct ids within the window, this one included when it was counted.
    pub count: u32,
    /// Whether this id is counted: it was new and under the cap, or it was counted before.
    pub counted: bool,
}

/// Handle on the admissions bucket.
#[derive(Clone)]
pub struct Admissions {
    kv: Store,
}

impl Admissions {
    /// Opens the bucket (declared by the topology).
    pub async fn open(js: &jetstream::Context) -> Result<Self, AdmissionError> {
        js.get_key_value(bucket::ADMISSIONS)
            .await
            .map(|kv| Self { kv })
            .map_err(|e| AdmissionError::Open(e.to_string()))
    }

    /// Admits `id` under `key` if both caps allow it at `now`.
    pub async fn admit(
        &self,
        key: &str,
        id: &str,
        caps: Caps,
        now: DateTime<Utc>,
    ) -> Result<Decision, AdmissionError> {
        let window = chrono::Duration::from_std(caps.window).unwrap_or(chrono::Duration::hours(1));
        self.change(key, |ledger| {
            ledger.started.retain(|t| now - *t < window);
            if ledger.running.contains_key(id) {
                return (Decision::Admitted, false);
            }
            if ledger.running.len() >= caps.max_running as usize {
                return (
                    Decision::Refused(format!(
                        "{} already running (max_concurrent {})",
                        ledger.running.len(),
                        caps.max_running
                    )),
                    false,
                );
            }
            if ledger.started.len() >= caps.max_per_window as usize {
                return (
                    Decision::Refused(format!(
                        "{} started in the last {} (max_per_hour {})",
                        ledger.started.len(),
                        humantime_serde::re::humantime::format_duration(caps.window),
                        caps.max_per_window
                    )),
                    false,
                );
            }
            ledger.running.insert(id.to_string(), now);
            ledger.started.push(now);
            (Decision::Admitted, true)
        })
        .await
    }

    /// Records occurrence `id` under `key` at `now` unless `cap` distinct ids are already within
    /// `window`. Idempotent per id: a re-delivered occurrence is neither counted twice nor refused.
    /// This is the rate limit (a cap), the "N alerts within T" threshold (no cap) and "at most N
    /// targets per window" (ids are targets).
    pub async fn occur(
        &self,
        key: &str,
        id: &str,
        window: Duration,
        cap: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<Occurrences, AdmissionError> {
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::hours(1));
        self.change(key, |ledger| tally(ledger, id, window, cap, now))
            .await
    }

    /// What [`Admissions::occur`] would answer at `now`, read without writing: one KV read, no
    /// compare-and-set. A refusal (`counted: false`) is what `occur` would have answered at the
    /// instant of the read (the ledger as one consistent value, `id` not in it, `cap` ids within
    /// the window), so a caller may refuse on it as if it had run `occur` then, and skip claims it
    /// would only give back. `counted: true` promises nothing (another writer may take the last
    /// slot first): only `occur` counts.
    pub async fn peek(
        &self,
        key: &str,
        id: &str,
        window: Duration,
        cap: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<Occurrences, AdmissionError> {
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::hours(1));
        let mut ledger = kv::read::<Ledger>(&self.kv, key)
            .await?
            .value
            .unwrap_or_default();
        Ok(tally(&mut ledger, id, window, cap, now).0)
    }

    /// Marks `id` finished under `key`; finishing an id that is not running is fine.
    pub async fn finish(&self, key: &str, id: &str) -> Result<(), AdmissionError> {
        self.change(key, |ledger| {
            let changed = ledger.running.remove(id).is_some();
            ((), changed)
        })
        .await
    }

    /// Reads the ledger, applies `f` (which says whether it changed it) and writes it back by
    /// compare-and-set; conflicts are retried within [`crate::kv::change`]'s deadline.
    async fn change<T>(
        &self,
        key: &str,
        mut f: impl FnMut(&mut Ledger) -> (T, bool),
    ) -> Result<T, AdmissionError> {
        let (result, _) = kv::change(&self.kv, key, |current: Option<Ledger>| {
            let mut ledger = current.unwrap_or_default();
            match f(&mut ledger) {
                (result, true) => Change::Write(ledger, result),
                (result, false) => Change::Keep(result),
            }
        })
        .await?;
        Ok(result)
    }
}

/// Occurrence `id` at `now` against `ledger`: prunes what left the window and counts `id` unless
/// `cap` distinct ids are already in it. Returns the answer and whether the ledger changed.
fn tally(
    ledger: &mut Ledger,
    id: &str,
    window: chrono::Duration,
    cap: Option<u32>,
    now: DateTime<Utc>,
) -> (Occurrences, bool) {
    let before = ledger.seen.len();
    ledger.seen.retain(|_, t| now - *t < window);
    let pruned = ledger.seen.len() != before;
    let count = |l: &Ledger| u32::try_from(l.seen.len()).unwrap_or(u32::MAX);
    if ledger.seen.contains_key(id) {
        return (
            Occurrences {
                count: count(ledger),
                counted: true,
            },
            pruned,
        );
    }
    if cap.is_some_and(|cap| count(ledger) >= cap) {
        return (
            Occurrences {
                count: count(ledger),
                counted: false,
            },
            pruned,
        );
    }
    ledger.seen.insert(id.to_string(), now);
    (
        Occurrences {
            count: count(ledger),
            counted: true,
        },
        true,
    )
}
