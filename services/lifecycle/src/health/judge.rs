//! What is wrong, from what was read: pure, so every rule is a unit test. Each finding names
//! where (pool, vdev, disk) and says it in words an operator can act on.

use proxflow_schemas::health::{DiskStatus, Finding, FindingKind, PoolStatus, ScanState};

/// States of a vdev line that are not a problem: spares waiting or in use.
const FINE_STATES: [&str; 3] = ["ONLINE", "AVAIL", "INUSE"];

fn pool_finding(kind: FindingKind, pool: &str, vdev: Option<&str>, detail: String) -> Finding {
    Finding {
        kind,
        pool: Some(pool.to_owned()),
        vdev: vdev.map(str::to_owned),
        disk: None,
        detail,
    }
}

/// A pool whose status could not be read.
pub fn unreadable_pool(pool: &str, error: &str) -> Finding {
    pool_finding(
        FindingKind::Unreadable,
        pool,
        None,
        format!("pool {pool}: status unreadable: {error}"),
    )
}

/// The disks could not be listed.
pub fn unreadable_disks(error: &str) -> Finding {
    Finding {
        kind: FindingKind::Unreadable,
        pool: None,
        vdev: None,
        disk: None,
        detail: format!("the node's disks could not be listed: {error}"),
    }
}

/// What is wrong with one pool: its state, each vdev not online or with errors, data errors.
pub fn pool(status: &PoolStatus) -> Vec<Finding> {
    let name = status.pool.as_str();
    let mut out = Vec::new();
    if status.state != "ONLINE" {
        let bad: Vec<String> = status
            .vdevs
            .iter()
            .skip(1)
            .filter(|v| !FINE_STATES.contains(&v.state.as_str()))
            .map(|v| format!("{} {}", v.name, v.state))
            .collect();
        let detail = if bad.is_empty() {
            format!("pool {name} is {}", status.state)
        } else {
            format!("pool {name} is {}: {}", status.state, bad.join(", "))
        };
        out.push(pool_finding(FindingKind::PoolState, name, None, detail));
    }
    for (i, v) in status.vdevs.iter().enumerate().skip(1) {
        // A group (mirror-0, raidz1-0) is degraded because of its device, named on its own.
        let is_group = status
            .vdevs
            .get(i + 1)
            .is_some_and(|next| next.depth > v.depth && next.section == v.section);
        if !FINE_STATES.contains(&v.state.as_str()) && !is_group {
            out.push(pool_finding(
                FindingKind::VdevState,
                name,
                Some(&v.name),
                format!(
                    "pool {name}: vdev {} is {}{}",
                    v.name,
                    v.state,
                    note(&v.note)
                ),
            ));
        }
        if v.errors() > 0 {
            out.push(pool_finding(
                FindingKind::VdevErrors,
                name,
                Some(&v.name),
                format!(
                    "pool {name}: vdev {} has {} read, {} write, {} checksum errors{}",
                    v.name,
                    v.read,
                    v.write,
                    v.cksum,
                    note(&v.note)
                ),
            ));
        }
    }
    if !status.errors.clean {
        let what = if status.errors.files.is_empty() {
            status.errors.text.clone()
        } else {
            let shown: Vec<&str> = status
                .errors
                .files
                .iter()
                .take(10)
                .map(String::as_str)
                .collect();
            let more = status.errors.files.len().saturating_sub(shown.len());
            format!(
                "permanent errors in {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        };
        out.push(pool_finding(
            FindingKind::DataErrors,
            name,
            None,
            format!("pool {name}: {what}"),
        ));
    }
    out
}

fn note(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!(" ({note})")
    }
}

/// A finished scrub that found errors.
pub fn scrub(status: &PoolStatus) -> Option<Finding> {
    let errors = status.scan.errors.filter(|e| *e > 0)?;
    (status.scan.state == ScanState::Finished).then(|| {
        pool_finding(
            FindingKind::ScrubErrors,
            &status.pool,
            None,
            format!(
                "pool {}: the last {} found {errors} errors",
                status.pool,
                if status.scan.kind == Some(proxflow_schemas::health::ScanKind::Resilver) {
                    "resilver"
                } else {
                    "scrub"
                }
            ),
        )
    })
}

/// Whether the pool counts as healthy for `proxflow_pool_healthy`: nothing but device error
/// counters wrong (those have their own gauge and alert).
pub fn pool_healthy(findings: &[Finding], pool: &str) -> bool {
    !findings.iter().any(|f| {
        f.pool.as_deref() == Some(pool)
            && matches!(
                f.kind,
                FindingKind::PoolState
                    | FindingKind::VdevState
                    | FindingKind::DataErrors
                    | FindingKind::Unreadable
            )
    })
}

/// What is wrong with one disk: SMART failing (the list's or the disk's own verdict), or worn to
/// `threshold` percent of life left.
pub fn disk(d: &DiskStatus, threshold: u8) -> Vec<Finding> {
    let mut out = Vec::new();
    let finding = |kind, detail| Finding {
        kind,
        pool: None,
        vdev: None,
        disk: Some(d.devpath.clone()),
        detail,
    };
    let failed = d.health == "FAILED" || d.smart_health.as_deref() == Some("FAILED");
    if failed {
        out.push(finding(
            FindingKind::DiskFailed,
            format!(
                "disk {}{}: SMART health FAILED",
                d.devpath,
                d.serial
                    .as_deref()
                    .map(|s| format!(" (serial {s})"))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(left) = d.wearout.filter(|w| *w <= u64::from(threshold)) {
        out.push(finding(
            FindingKind::DiskWearout,
            format!(
                "disk {}: {left} % life left (at or below {threshold} %)",
                d.devpath
            ),
        ));
    }
    out
}

/// Whether a disk counts as healthy for `proxflow_disk_healthy` (wear has its own gauge).
pub fn disk_healthy(d: &DiskStatus) -> bool {
    d.health != "FAILED" && d.smart_health.as_deref() != Some("FAILED")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proxflow_schemas::health::{DataErrors, ScanStatus, VdevStatus};

    use super::*;

    fn vdev(name: &str, depth: u32, state: &str, cksum: u64) -> VdevStatus {
        VdevStatus {
            name: name.into(),
            depth,
            section: String::new(),
            state: state.into(),
            read: 0,
            write: 0,
            cksum,
            note: String::new(),
        }
    }

    fn degraded_mirror() -> PoolStatus {
        PoolStatus {
            pool: "tank".into(),
            state: "DEGRADED".into(),
            status: String::new(),
            action: String::new(),
            scan: ScanStatus::default(),
            vdevs: vec![
                vdev("tank", 0, "DEGRADED", 0),
                vdev("mirror-0", 1, "DEGRADED", 0),
                vdev("/dev/sda", 2, "ONLINE", 0),
                vdev("/dev/sdb", 2, "OFFLINE", 7),
            ],
            errors: DataErrors {
                clean: true,
                count: None,
                files: Vec::new(),
                text: "No known data errors".into(),
            },
        }
    }

    #[test]
    fn a_degraded_mirror_names_the_pool_and_the_offline_device_not_the_group() {
        let f = pool(&degraded_mirror());
        let kinds: Vec<(FindingKind, Option<&str>)> =
            f.iter().map(|f| (f.kind, f.vdev.as_deref())).collect();
        assert_eq!(
            kinds,
            [
                (FindingKind::PoolState, None),
                (FindingKind::VdevState, Some("/dev/sdb")),
                (FindingKind::VdevErrors, Some("/dev/sdb")),
            ]
        );
        assert_eq!(
            f[0].detail,
            "pool tank is DEGRADED: mirror-0 DEGRADED, /dev/sdb OFFLINE"
        );
        assert!(!pool_healthy(&f, "tank"));
        assert!(pool_healthy(&f, "rpool"));
    }

    #[test]
    fn an_online_pool_with_checksum_errors_is_healthy_but_its_device_is_named() {
        let mut s = degraded_mirror();
        s.state = "ONLINE".into();
        for v in &mut s.vdevs {
            v.state = "ONLINE".into();
        }
        let f = pool(&s);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::VdevErrors);
        assert!(pool_healthy(&f, "tank"));
        s.errors.clean = false;
        s.errors.files = vec!["/tank/f".into()];
        let f = pool(&s);
        assert_eq!(f[1].detail, "pool tank: permanent errors in /tank/f");
        assert!(!pool_healthy(&f, "tank"));
    }

    #[test]
    fn disks_fail_on_either_verdict_and_wear_at_the_threshold() {
        let d = DiskStatus {
            devpath: "/dev/nvme1n1".into(),
            model: None,
            serial: Some("S1".into()),
            health: "PASSED".into(),
            smart_health: Some("PASSED".into()),
            wearout: Some(11),
            smart: None,
        };
        assert!(disk(&d, 10).is_empty());
        let worn = DiskStatus {
            wearout: Some(10),
            ..d.clone()
        };
        assert_eq!(disk(&worn, 10)[0].kind, FindingKind::DiskWearout);
        let failed = DiskStatus {
            smart_health: Some("FAILED".into()),
            ..d
        };
        let f = disk(&failed, 10);
        assert_eq!(
            f[0].detail,
            "disk /dev/nvme1n1 (serial S1): SMART health FAILED"
        );
        assert!(!disk_healthy(&failed));
    }
}
