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
use sha2::{Digest, Sha256};

use crate::kv::{self, CasError, Change};
use async_nats::jetstream::kv::Store;

/// Longest key part kept as is; longer ones keep a readable prefix and a hash of the whole.
const MAX_PART: usize = 96;

/// The canonical form of a target (`vm/103`, `cluster/k3s`, `dataset/tank/vms`): each `/`-separated
/// segment trimmed; a decimal number (with sign or leading zeros) as the plain integer; anything
/// else lower-cased (Proxmox names and DNS names are case-insensitive).
pub fn canonical_target(target: &str) -> String {
    target
        .trim()
        .split('/')
        .map(|segment| {
            let s = segment.trim();
            let digits = s.strip_prefix('+').unwrap_or(s);
            if !digits.is_empty() && digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit())
            {
                digits
                    .parse::<u64>()
                    .map_or_else(|_| s.to_ascii_lowercase(), |n| n.to_string())
            } else {
                s.to_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A KV-key-safe, bounded form of a key part: letters, digits, `-`, `_`, `=` and `/` stay; a part
/// that needed any other character replaced, or is longer than [`MAX_PART`], keeps a readable
/// prefix and gets `_h` and a hash of the original, so two different parts never share a key.
pub fn key_part(part: &str) -> String {
    let safe: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == part && part.len() <= MAX_PART && !part.is_empty() {
        return safe;
    }
    let hash = hex::encode(&Sha256::digest(part.as_bytes())[..12]);
    let prefix: String = safe.chars().take(MAX_PART / 2).collect();
    format!("{prefix}_h{hash}")
}

/// The key of a target: canonical, then made KV-safe.
pub fn target_key(target: &str) -> String {
    key_part(&canonical_target(target))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_canonical_and_names_fold_case() {
        for t in ["vm/103", "vm/+103", "vm/0103", "vm/00103", " VM/103 ", "vm/ 103"] {
            assert_eq!(canonical_target(t), "vm/103", "{t}");
        }
        assert_eq!(canonical_target("cluster/K3S"), "cluster/k3s");
        assert_ne!(canonical_target("vm/103"), canonical_target("vm/1030"));
        // Not a number: kept (lower-cased), never parsed into one.
        assert_eq!(canonical_target("vm/1e3"), "vm/1e3");
        assert_eq!(canonical_target("vm/-3"), "vm/-3");
    }

    #[test]
    fn long_or_unsafe_parts_are_bounded_and_distinct() {
        let long = "x".repeat(5_000);
        let k = key_part(&long);
        assert!(k.len() <= MAX_PART / 2 + 2 + 24, "{}", k.len());
        assert_ne!(key_part(&long), key_part(&"x".repeat(5_001)));
        assert_eq!(key_part("vm/103"), "vm/103");
        // "a b" and "a_b" must not share a key.
        assert_ne!(key_part("a b"), key_part("a_b"));
        assert_eq!(key_part("a_b"), "a_b");
        assert!(
            key_part("a.b*>")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=/".contains(c))
        );
    }
}
