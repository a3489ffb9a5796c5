//! Guards as atomic claims on canonical target keys.
//!
//! A guard that is read and written later (read the cooldown, act, stamp the cooldown) lets N
//! concurrent decisions for one target all pass: under an alert storm that was 22 restarts for 3
//! VMs. Here every guard is *claimed* in one compare-and-set or `create`, so of N concurrent claims
//! on one key exactly one wins, and a claim by the same holder again (a redelivery) is a resume.
//!
//! Keys are canonical: `vm/+103`, `vm/0103` and `VM/103 ` are one target, and a key built from a
//! 5,000-character label is shortened with a hash so that no KV subject can exceed the server's
//! control-line limit (which would disconnect the client).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use proxflow_schemas::names::key::{canonical_target, key_part, target_key};

use crate::kv::{self, CasError, Change};
use async_nats::jetstream::kv::Store;

/// A cooldown claim as stored: who claimed it and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CooldownClaim {
    /// The claiming workflow.
    pub workflow_id: String,
    /// When it was claimed.
    pub at: DateTime<Utc>,
    /// When it stops holding.
    pub until: DateTime<Utc>,
}

/// The answer to [`claim_cooldown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Claimed now by this holder.
    New,
    /// Already this holder's (a redelivery resumes).
    Resumed,
    /// Someone else's, still holding.
    Held(CooldownClaim),
}

/// Claims the cooldown `key` for `workflow_id` from `now` until `until`, in one compare-and-set: a
/// missing or lapsed claim is taken, a live one of another workflow is reported.
pub async fn claim_cooldown(
    store: &Store,
    key: &str,
    workflow_id: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Claimed, CasError> {
    let (claimed, _) = kv::change(store, key, |current: Option<CooldownClaim>| {
        let mine = CooldownClaim {
            workflow_id: workflow_id.to_string(),
            at: now,
            until,
        };
        match current {
            Some(c) if c.workflow_id == workflow_id => Change::Keep(Claimed::Resumed),
            Some(c) if c.until > now => Change::Keep(Claimed::Held(c)),
            _ => Change::Write(mine, Claimed::New),
        }
    })
    .await?;
    Ok(claimed)
}

/// Gives back a cooldown claim that led to nothing (a later guard refused): deleted only while it
/// is still `workflow_id`'s.
pub async fn release_cooldown(store: &Store, key: &str, workflow_id: &str) -> Result<(), CasError> {
    kv::change(store, key, |current: Option<CooldownClaim>| match current {
        Some(c) if c.workflow_id == workflow_id => Change::Delete(()),
        _ => Change::Keep(()),
    })
    .await
    .map(drop)
}
