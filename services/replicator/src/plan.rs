//! What a replication run must send, decided from both sides' snapshot lists (pure).
//!
//! The common base is matched by **guid** — the identity a snapshot keeps on every copy — not by
//! name: a target snapshot called like a source snapshot but with another guid is not the same data.
//! The base is the newest target snapshot whose guid the source has. The target is diverged, and the
//! run refuses, when it has snapshots after that base (written or snapshotted there, or rolled back
//! on the source), when it shares no snapshot although it has some, or when the dataset exists
//! without snapshots: each would need `receive -F` (a rollback or overwrite on the target), which
//! proxflow never does.

use std::collections::BTreeMap;

use proxflow_schemas::replication::DivergenceReason;
use proxflow_zfs::SnapshotInfo;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The source has no snapshot to send.
    NothingToSend,
    /// The target already has the source's newest snapshot.
    UpToDate {
        /// That snapshot (source name).
        snapshot: String,
    },
    /// First run: a full stream of the newest snapshot into a target that does not exist yet.
    Full {
        /// The newest source snapshot.
        snapshot: String,
    },
    /// `zfs send -I base snapshot`.
    Incremental {
        /// The common base (source name).
        base: String,
        /// The newest source snapshot.
        snapshot: String,
    },
    /// Refuse: the target cannot take the stream without losing something.
    Diverged {
        /// What is wrong.
        reason: DivergenceReason,
        /// The newest common snapshot (source name), if any.
        common_base: Option<String>,
        /// Target snapshots the source does not have, oldest first.
        target_only: Vec<String>,
    },
}

/// Decides from the source's snapshots, whether the target dataset exists, and its snapshots (both
/// lists oldest first, as [`proxflow_zfs::Zfs::snapshots`] returns them).
pub fn decide(source: &[SnapshotInfo], target_exists: bool, target: &[SnapshotInfo]) -> Action {
    let Some(newest) = source.iter().max_by_key(|s| s.createtxg) else {
        return Action::NothingToSend;
    };
    if !target_exists {
        return Action::Full {
            snapshot: newest.name.clone(),
        };
    }
    if target.is_empty() {
        return Action::Diverged {
            reason: DivergenceReason::TargetNotEmpty,
            common_base: None,
            target_only: Vec::new(),
        };
    }
    let by_guid: BTreeMap<u64, &SnapshotInfo> = source.iter().map(|s| (s.guid, s)).collect();
    let base_on_target = target
        .iter()
        .filter(|t| by_guid.contains_key(&t.guid))
        .max_by_key(|t| t.createtxg);
    let Some(base_on_target) = base_on_target else {
        return Action::Diverged {
            reason: DivergenceReason::NoCommonSnapshot,
            common_base: None,
            target_only: target.iter().map(|t| t.name.clone()).collect(),
        };
    };
    let base = by_guid
        .get(&base_on_target.guid)
        .map(|s| s.name.clone())
        .unwrap_or_else(|| base_on_target.name.clone());
    let newer: Vec<String> = target
        .iter()
        .filter(|t| t.createtxg > base_on_target.createtxg)
        .map(|t| t.name.clone())
        .collect();
    if !newer.is_empty() {
        return Action::Diverged {
            reason: DivergenceReason::TargetHasNewerSnapshots,
            common_base: Some(base),
            target_only: newer,
        };
    }
    if base_on_target.guid == newest.guid {
        return Action::UpToDate {
            snapshot: newest.name.clone(),
        };
    }
    Action::Incremental {
        base,
        snapshot: newest.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn snap(name: &str, guid: u64, txg: u64) -> SnapshotInfo {
        SnapshotInfo {
            dataset: "d".into(),
            name: name.into(),
            guid,
            createtxg: txg,
            creation: DateTime::UNIX_EPOCH,
            used: 0,
            userrefs: 0,
            expires: None,
        }
    }

    fn source() -> Vec<SnapshotInfo> {
        vec![snap("s1", 11, 10), snap("s2", 12, 20), snap("s3", 13, 30)]
    }

    #[test]
    fn first_run_is_full_then_incremental_from_the_newest_common() {
        assert_eq!(
            decide(&source(), false, &[]),
            Action::Full {
                snapshot: "s3".into()
            }
        );
        // The target's txgs are its own; only guids tie the sides together.
        let target = vec![snap("s1", 11, 5), snap("s2", 12, 9)];
        assert_eq!(
            decide(&source(), true, &target),
            Action::Incremental {
                base: "s2".into(),
                snapshot: "s3".into()
            }
        );
        let target = vec![snap("s1", 11, 5), snap("s3", 13, 9)];
        assert_eq!(
            decide(&source(), true, &target),
            Action::UpToDate {
                snapshot: "s3".into()
            }
        );
        assert_eq!(decide(&[], true, &target), Action::NothingToSend);
    }

    #[test]
    fn the_base_is_found_by_guid_even_when_pruned_or_renamed() {
        // s1 pruned on the source; the target still has it, and calls s2 "old-name".
        let source = vec![snap("s2", 12, 20), snap("s3", 13, 30)];
        let target = vec![snap("s1", 11, 5), snap("old-name", 12, 9)];
        assert_eq!(
            decide(&source, true, &target),
            Action::Incremental {
                base: "s2".into(),
                snapshot: "s3".into()
            }
        );
    }

    #[test]
    fn divergence_is_refused_with_the_reason() {
        // A snapshot taken on the target after the common base.
        let target = vec![snap("s1", 11, 5), snap("local", 99, 6)];
        assert_eq!(
            decide(&source(), true, &target),
            Action::Diverged {
                reason: DivergenceReason::TargetHasNewerSnapshots,
                common_base: Some("s1".into()),
                target_only: vec!["local".into()],
            }
        );
        // Same name, different data: not common.
        let target = vec![snap("s1", 77, 5)];
        assert!(matches!(
            decide(&source(), true, &target),
            Action::Diverged {
                reason: DivergenceReason::NoCommonSnapshot,
                ..
            }
        ));
        // A dataset without snapshots would have to be overwritten.
        assert!(matches!(
            decide(&source(), true, &[]),
            Action::Diverged {
                reason: DivergenceReason::TargetNotEmpty,
                ..
            }
        ));
    }
}
