//! Snapshot names: `<prefix><cadence>-<UTC %Y%m%dT%H%M%SZ>` for scheduled snapshots
//! (`pf-daily-20261124T030000Z`, the timestamp being the schedule slot) and
//! `<prefix>pre-<request slug>-<UTC timestamp>` for pre-change snapshots. Every name is a valid
//! Proxmox snapshot name (`pve-configid`: a letter, then letters, digits, `_` or `-`, at most 40
//! characters) and a valid ZFS snapshot name, so one naming serves VMs and datasets. The prefix is
//! what marks a snapshot as proxflow's: nothing without it is ever pruned.
//!
//! Shared here because the snapshotter makes and prunes these names and the capacity review reads
//! them back to group snapshot space by policy (service crates never depend on each other).

use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

use crate::schedule::Cadence;

/// The timestamp format in names.
pub const TIMESTAMP_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Length of a formatted timestamp.
const TIMESTAMP_LEN: usize = 16;
/// Proxmox's limit on snapshot names.
pub const MAX_NAME_LEN: usize = 40;
/// The longest prefix allowed, leaving room for a readable pre-change slug.
pub const MAX_PREFIX_LEN: usize = 10;
/// Marker of pre-change snapshots after the prefix.
const PRE: &str = "pre-";

/// What a name says about its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Taken by a schedule of this cadence.
    Scheduled(Cadence),
    /// Taken on a pre-change request.
    PreChange,
}

/// A parsed proxflow snapshot name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Scheduled or pre-change.
    pub kind: NameKind,
    /// The timestamp in the name (the slot, or when a pre-change snapshot was taken).
    pub at: DateTime<Utc>,
}

/// `pve-configid` as Proxmox checks it (`^[a-z][a-z0-9_-]+$`, case-insensitive), within its 40
/// characters.
pub fn is_valid_pve_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() >= 2
        && name.len() <= MAX_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        // Reserved by Proxmox.
        && !name.eq_ignore_ascii_case("current")
        && !name.eq_ignore_ascii_case("pending")
}

/// A configured prefix that would make invalid snapshot names.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?}: must start with a letter, then letters, digits, '_' or '-', at most \
     {MAX_PREFIX_LEN} characters (snapshot names must stay valid Proxmox names)"
)]
pub struct InvalidPrefix(pub String);

/// Checks a configured prefix: starts with a letter (as a Proxmox name must), then letters,
/// digits, `_` or `-`, at most [`MAX_PREFIX_LEN`] characters.
pub fn validate_prefix(prefix: &str) -> Result<(), InvalidPrefix> {
    let mut chars = prefix.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && prefix.len() <= MAX_PREFIX_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(InvalidPrefix(prefix.to_owned()))
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.format(TIMESTAMP_FORMAT).to_string()
}

/// The name of the scheduled snapshot of `slot`.
pub fn scheduled(prefix: &str, cadence: Cadence, slot: DateTime<Utc>) -> String {
    format!("{prefix}{}-{}", cadence.label(), timestamp(slot))
}

/// Everything of a pre-change name before its timestamp: the same for every request with this
/// id, so a repeated request finds the snapshot the first one took.
pub fn prechange_stem(prefix: &str, request_id: &str) -> String {
    let room = MAX_NAME_LEN
        .saturating_sub(prefix.len() + PRE.len() + 1 + TIMESTAMP_LEN)
        .max(1);
    let sanitized: String = request_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Readable as is when it fits unchanged; otherwise a short hash of the exact id keeps two ids
    // that sanitise or truncate alike apart.
    let slug = if sanitized == request_id && !sanitized.is_empty() && sanitized.len() <= room {
        sanitized
    } else {
        let hash = hex::encode(Sha256::digest(request_id.as_bytes()));
        let keep = room.saturating_sub(7);
        let head = sanitized
            .get(..keep)
            .unwrap_or(&sanitized)
            .trim_matches('-');
        if head.is_empty() {
            hash[..room.min(6)].to_owned()
        } else {
            format!("{head}-{}", &hash[..6])
        }
    };
    format!("{prefix}{PRE}{slug}-")
}

/// The name of a pre-change snapshot for `request_id` taken at `at`.
pub fn prechange(prefix: &str, request_id: &str, at: DateTime<Utc>) -> String {
    format!("{}{}", prechange_stem(prefix, request_id), timestamp(at))
}

/// Parses a proxflow name; `None` for anything else (foreign snapshots, other prefixes).
pub fn parse(prefix: &str, name: &str) -> Option<Parsed> {
    let rest = name.strip_prefix(prefix)?;
    let split = rest.len().checked_sub(TIMESTAMP_LEN)?;
    let (head, ts) = (rest.get(..split)?, rest.get(split..)?);
    let head = head.strip_suffix('-')?;
    let at = NaiveDateTime::parse_from_str(ts, TIMESTAMP_FORMAT)
        .ok()?
        .and_utc();
    let kind = if head.starts_with("pre-") {
        NameKind::PreChange
    } else {
        NameKind::Scheduled(Cadence::from_label(head)?)
    };
    Some(Parsed { kind, at })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn scheduled_names_round_trip_and_are_proxmox_names() {
        let slot = utc("2026-11-24T03:00:00Z");
        let name = scheduled("pf-", Cadence::Daily, slot);
        assert_eq!(name, "pf-daily-20261124T030000Z");
        assert!(is_valid_pve_name(&name));
        assert_eq!(
            parse("pf-", &name),
            Some(Parsed {
                kind: NameKind::Scheduled(Cadence::Daily),
                at: slot
            })
        );
        // The longest prefix still fits.
        let long = scheduled("abcdefghij", Cadence::Monthly, slot);
        assert!(is_valid_pve_name(&long), "{long}");
    }

    #[test]
    fn prechange_names_carry_the_request_and_fit_every_prefix() {
        let at = utc("2026-11-24T10:15:00Z");
        let name = prechange("pf-", "patch-run-7", at);
        assert_eq!(name, "pf-pre-patch-run-7-20261124T101500Z");
        assert_eq!(parse("pf-", &name).unwrap().kind, NameKind::PreChange);
        assert!(name.starts_with(&prechange_stem("pf-", "patch-run-7")));
        for id in [
            "patch-run-2026w48/vm-104/with-a-very-long-suffix",
            "a/b",
            "///",
            "x",
            "ünïcode id",
        ] {
            for prefix in ["pf-", "abcdefghij"] {
                let name = prechange(prefix, id, at);
                assert!(is_valid_pve_name(&name), "{name}");
                assert_eq!(parse(prefix, &name).unwrap().at, at, "{name}");
            }
        }
        // Ids that sanitise alike stay apart.
        assert_ne!(prechange_stem("pf-", "a/b"), prechange_stem("pf-", "a-b"));
        assert_ne!(
            prechange_stem("pf-", "patch-run-2026w48/vm-104"),
            prechange_stem("pf-", "patch-run-2026w48/vm-105")
        );
    }

    #[test]
    fn foreign_names_do_not_parse() {
        for name in [
            "manual-before-upgrade",
            "pf-daily-2026",
            "pf-hourly-20261124T030000Z",
            "xx-daily-20261124T030000Z",
            "pf-daily20261124T030000Z",
            "pf-daily-20261324T030000Z",
        ] {
            assert_eq!(parse("pf-", name), None, "{name}");
        }
    }

    #[test]
    fn proxmox_name_rule() {
        assert!(is_valid_pve_name("ab"));
        for bad in [
            "a",
            "1abc",
            "-ab",
            "a b",
            "a.b",
            "current",
            "Pending",
            &"a".repeat(41),
        ] {
            assert!(!is_valid_pve_name(bad), "{bad}");
        }
        assert!(validate_prefix("pf-").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("1pf").is_err());
        assert!(validate_prefix("abcdefghijk").is_err());
    }
}
