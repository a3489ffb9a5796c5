//! What a policy wants done to one target right now, decided from the target's snapshots alone
//! (pure: the same inputs give the same plan, so dry-run shows exactly what a real run does).
//!
//! - **Create** the snapshot of the schedule's most recent slot, unless a scheduled snapshot at or
//!   after that slot exists.
//! - **Prune** proxflow's scheduled snapshots that the retention grid does not keep, and pre-change
//!   snapshots whose TTL has passed — except held ones (a replication job's base, an operator's hold).
//!   Snapshots without proxflow's prefix are never candidates.
//! - **Check** which snapshots the schedule and grid say should exist and whether the newest is
//!   within the policy's SLO.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::naming::{self, NameKind};
use crate::retention::{self, Grid};
use proxflow_runtime::schedule::Schedule;

/// One snapshot as a target reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// Snapshot name.
    pub name: String,
    /// Held (ZFS `userrefs` > 0): never destroyed.
    pub held: bool,
    /// Recorded expiry of a pre-change snapshot.
    pub expires: Option<DateTime<Utc>>,
}

/// The rules of one policy, resolved from its configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Name prefix marking proxflow's snapshots.
    pub prefix: String,
    /// When to snapshot.
    pub schedule: Schedule,
    /// Time zone of the schedule and of the grid's periods.
    pub timezone: Tz,
    /// What to keep.
    pub grid: Grid,
    /// Pre-change TTL when a snapshot did not record its own expiry.
    pub prechange_ttl: Duration,
    /// Bound on the newest scheduled snapshot's age.
    pub slo_max_age: Duration,
    /// Slots younger than this are not yet expected by the check.
    pub check_grace: Duration,
}

/// A snapshot that would be pruned but is not, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// The snapshot.
    pub name: String,
    /// Why it stays.
    pub reason: String,
}

/// What to do to one target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The scheduled snapshot to take now.
    pub create: Option<String>,
    /// Snapshots to destroy.
    pub prune: Vec<String>,
    /// Snapshots kept although no rule keeps them, or kept by their TTL.
    pub protected: Vec<Protected>,
    /// Snapshots the grid keeps.
    pub kept: Vec<String>,
    /// Snapshots without proxflow's prefix (never touched).
    pub foreign: usize,
}

fn expiry(rules: &Rules, at: DateTime<Utc>, recorded: Option<DateTime<Utc>>) -> DateTime<Utc> {
    recorded.unwrap_or_else(|| {
        at + chrono::Duration::from_std(rules.prechange_ttl).unwrap_or(chrono::Duration::MAX)
    })
}

/// The plan for a target with these snapshots at `now`.
pub fn plan(rules: &Rules, existing: &[Existing], now: DateTime<Utc>) -> Plan {
    let mut out = Plan::default();
    let mut scheduled: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut prechange = Vec::new();
    for snap in existing {
        match naming::parse(&rules.prefix, &snap.name) {
            None => out.foreign += 1,
            Some(p) if p.kind == NameKind::PreChange => prechange.push((snap, p.at)),
            Some(p) => scheduled.push((snap.name.clone(), p.at)),
        }
    }
    if let Some(slot) = rules.schedule.last_slot(rules.timezone, now)
        && !scheduled.iter().any(|(_, at)| *at >= slot)
    {
        let name = naming::scheduled(&rules.prefix, rules.schedule.cadence(), slot);
        scheduled.push((name.clone(), slot));
        out.create = Some(name);
    }
    let kept = retention::keep(&scheduled, &rules.grid, rules.timezone);
    let held = |name: &str| existing.iter().any(|e| e.name == name && e.held);
    for (name, _) in &scheduled {
        if kept.contains_key(name.as_str()) {
            out.kept.push(name.clone());
        } else if held(name) {
            out.protected.push(Protected {
                name: name.clone(),
                reason: "held".into(),
            });
        } else {
            out.prune.push(name.clone());
        }
    }
    for (snap, at) in prechange {
        let until = expiry(rules, at, snap.expires);
        if now < until {
            out.protected.push(Protected {
                name: snap.name.clone(),
                reason: format!("pre-change, kept until {}", until.to_rfc3339()),
            });
        } else if snap.held {
            out.protected.push(Protected {
                name: snap.name.clone(),
                reason: "held (pre-change TTL passed)".into(),
            });
        } else {
            out.prune.push(snap.name.clone());
        }
    }
    out
}

/// The validity check of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Scheduled snapshots that should exist now.
    pub expected: Vec<String>,
    /// Of those, the ones that do not.
    pub missing: Vec<String>,
    /// The newest scheduled snapshot and when its slot was.
    pub newest: Option<(String, DateTime<Utc>)>,
    /// Its age at the check.
    pub newest_age: Option<Duration>,
    /// Nothing missing, and the newest within the SLO.
    pub ok: bool,
}

/// Checks a target: the expected set is what the grid would keep had every slot since the oldest
/// scheduled snapshot (at most [`proxflow_runtime::schedule::MAX_SLOTS`] slots back) produced its snapshot,
/// counting only slots older than `check_grace`; the newest scheduled snapshot must be younger than
/// the SLO. Expected names come out oldest first.
pub fn check(rules: &Rules, existing: &[Existing], now: DateTime<Utc>) -> Check {
    let present: BTreeSet<&str> = existing.iter().map(|e| e.name.as_str()).collect();
    let scheduled: Vec<(String, DateTime<Utc>)> = existing
        .iter()
        .filter_map(|e| {
            naming::parse(&rules.prefix, &e.name)
                .filter(|p| p.kind != NameKind::PreChange)
                .map(|p| (e.name.clone(), p.at))
        })
        .collect();
    let grace = chrono::Duration::from_std(rules.check_grace).unwrap_or(chrono::Duration::MAX);
    let until = now.checked_sub_signed(grace).unwrap_or(now);
    // From the oldest scheduled snapshot; a target without any expects its last slot.
    let from = scheduled
        .iter()
        .map(|(_, at)| *at)
        .min()
        .or_else(|| rules.schedule.last_slot(rules.timezone, until))
        .unwrap_or(until);
    // The grid runs over every slot up to now, as pruning does once the newest snapshot exists;
    // only slots past the grace are then expected (one just due may not be taken yet, but what it
    // pushes out of the grid is already gone).
    let ideal: Vec<(String, DateTime<Utc>)> = rules
        .schedule
        .slots_between(rules.timezone, from, now)
        .into_iter()
        .map(|slot| {
            (
                naming::scheduled(&rules.prefix, rules.schedule.cadence(), slot),
                slot,
            )
        })
        .collect();
    let kept = retention::keep(&ideal, &rules.grid, rules.timezone);
    let expected: Vec<String> = ideal
        .iter()
        .filter(|(name, slot)| *slot <= until && kept.contains_key(name.as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|name| !present.contains(name.as_str()))
        .cloned()
        .collect();
    let newest = scheduled.iter().max_by_key(|(_, at)| *at).cloned();
    let newest_age = newest
        .as_ref()
        .map(|(_, at)| (now - *at).to_std().unwrap_or_default());
    let ok = missing.is_empty() && newest_age.is_some_and(|age| age <= rules.slo_max_age);
    Check {
        expected,
        missing,
        newest,
        newest_age,
        ok,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rules() -> Rules {
        Rules {
            prefix: "pf-".into(),
            schedule: "daily@03:00".parse().unwrap(),
            timezone: chrono_tz::UTC,
            grid: Grid {
                hourly: 0,
                daily: 3,
                weekly: 0,
                monthly: 0,
            },
            prechange_ttl: Duration::from_secs(7 * 86400),
            slo_max_age: Duration::from_secs(26 * 3600),
            check_grace: Duration::from_secs(3600),
        }
    }

    fn snap(name: &str) -> Existing {
        Existing {
            name: name.into(),
            held: false,
            expires: None,
        }
    }

    #[test]
    fn creates_the_due_slot_once_and_prunes_beyond_the_grid() {
        let existing: Vec<Existing> = (20..=23)
            .map(|d| snap(&format!("pf-daily-202611{d}T030000Z")))
            .chain([snap("manual-keep-me"), snap("pf-something-else")])
            .collect();
        let p = plan(&rules(), &existing, utc("2026-11-24T03:00:10Z"));
        assert_eq!(p.create.as_deref(), Some("pf-daily-20261124T030000Z"));
        // With the new one, daily 3 keeps 22, 23, 24.
        assert_eq!(
            p.prune,
            ["pf-daily-20261120T030000Z", "pf-daily-20261121T030000Z"]
        );
        assert_eq!(p.foreign, 2);
        assert!(p.protected.is_empty());
        // Before the slot nothing is due.
        let p = plan(&rules(), &existing, utc("2026-11-24T02:59:59Z"));
        assert_eq!(p.create, None);
        assert_eq!(p.prune, ["pf-daily-20261120T030000Z"]);
    }

    #[test]
    fn held_and_young_prechange_snapshots_are_never_pruned() {
        let now = utc("2026-11-24T12:00:00Z");
        let mut existing: Vec<Existing> = (18..=24)
            .map(|d| snap(&format!("pf-daily-202611{d}T030000Z")))
            .collect();
        existing[0].held = true; // the replication base
        existing.push(snap("pf-pre-patch-1-20261123T100000Z")); // within the default TTL
        existing.push(Existing {
            expires: Some(utc("2026-11-24T11:00:00Z")), // its own, shorter TTL has passed
            ..snap("pf-pre-patch-2-20261124T100000Z")
        });
        existing.push(Existing {
            held: true,
            ..snap("pf-pre-patch-0-20261001T100000Z")
        });
        let p = plan(&rules(), &existing, now);
        assert_eq!(p.create, None);
        assert_eq!(
            p.prune,
            [
                "pf-daily-20261119T030000Z",
                "pf-daily-20261120T030000Z",
                "pf-daily-20261121T030000Z",
                "pf-pre-patch-2-20261124T100000Z"
            ]
        );
        let protected: Vec<(&str, &str)> = p
            .protected
            .iter()
            .map(|x| (x.name.as_str(), x.reason.as_str()))
            .collect();
        assert_eq!(protected[0], ("pf-daily-20261118T030000Z", "held"));
        assert_eq!(protected[1].0, "pf-pre-patch-1-20261123T100000Z");
        assert!(
            protected[1]
                .1
                .starts_with("pre-change, kept until 2026-11-30T10:00:00")
        );
        assert_eq!(protected[2].1, "held (pre-change TTL passed)");
    }

    #[test]
    fn check_finds_missing_slots_and_stale_newest() {
        let now = utc("2026-11-24T12:00:00Z");
        // 20..24 expected by daily 3 over slots since the 20th: 22, 23, 24. 23 is missing.
        let existing: Vec<Existing> = [20, 21, 22, 24]
            .iter()
            .map(|d| snap(&format!("pf-daily-202611{d}T030000Z")))
            .collect();
        let c = check(&rules(), &existing, now);
        assert_eq!(
            c.expected,
            [
                "pf-daily-20261122T030000Z",
                "pf-daily-20261123T030000Z",
                "pf-daily-20261124T030000Z"
            ]
        );
        assert_eq!(c.missing, ["pf-daily-20261123T030000Z"]);
        assert_eq!(c.newest_age, Some(Duration::from_secs(9 * 3600)));
        assert!(!c.ok);

        // All there, but the newest is older than the SLO.
        let existing: Vec<Existing> = [21, 22, 23]
            .iter()
            .map(|d| snap(&format!("pf-daily-202611{d}T030000Z")))
            .collect();
        let c = check(&rules(), &existing, utc("2026-11-24T02:00:00Z"));
        assert!(c.missing.is_empty() && c.ok, "{c:?}");
        let c = check(&rules(), &existing, utc("2026-11-24T06:00:00Z"));
        assert_eq!(c.missing, ["pf-daily-20261124T030000Z"]);
        assert!(!c.ok);

        // Nothing at all: the last slot is missing.
        let c = check(&rules(), &[], now);
        assert_eq!(c.missing, ["pf-daily-20261124T030000Z"]);
        assert_eq!(c.newest, None);
        assert!(!c.ok);
    }
}
