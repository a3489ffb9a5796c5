//! The parser against captured outputs: zfs-fuse's from the test pools (`testdata/zpool-status/
//! zfs-fuse-*`, captured on this project's zfs-fuse: an offlined mirror half, corrupted file vdevs
//! then scrubbed), OpenZFS's in the 0.8 and 2.x formats.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use proxflow_schemas::health::{ScanKind, ScanState};

use super::*;

fn fixture(name: &str) -> PoolStatus {
    let path = format!(
        "{}/testdata/zpool-status/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    parse(&text, &Utc).unwrap()
}

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn zfs_fuse_degraded_mirror_names_the_offline_device_and_its_checksum_errors() {
    let s = fixture("zfs-fuse-degraded-offline");
    assert_eq!((s.pool.as_str(), s.state.as_str()), ("pfhcap", "DEGRADED"));
    assert!(s.status.starts_with("One or more devices has experienced"));
    assert!(s.status.ends_with("Applications are unaffected."));
    let names: Vec<(&str, u32, &str)> = s
        .vdevs
        .iter()
        .map(|v| (v.name.as_str(), v.depth, v.state.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("pfhcap", 0, "DEGRADED"),
            ("mirror-0", 1, "DEGRADED"),
            ("/tmp/pfh/a.img", 2, "ONLINE"),
            ("/tmp/pfh/b.img", 2, "OFFLINE"),
        ]
    );
    let b = &s.vdevs[3];
    assert_eq!((b.read, b.write, b.cksum), (0, 0, 514));
    assert_eq!(b.note, "24.7M repaired");
    assert_eq!(s.scan.kind, Some(ScanKind::Scrub));
    assert_eq!(s.scan.state, ScanState::Finished);
    assert_eq!(s.scan.errors, Some(0));
    assert_eq!(s.scan.duration_secs, Some(0));
    assert_eq!(s.scan.ended_at, Some(utc("2026-12-06T18:12:34Z")));
    // zfs-fuse prints the repaired bytes per device: summed.
    assert_eq!(s.scan.repaired_bytes, Some((24.7 * 1024.0 * 1024.0) as u64));
    assert!(s.errors.clean);
    assert!(s.errors.files.is_empty());
}

#[test]
fn zfs_fuse_permanent_errors_list_every_file() {
    let s = fixture("zfs-fuse-permanent-errors");
    assert_eq!(s.state, "ONLINE");
    assert_eq!(s.vdevs[0].cksum, 323);
    assert_eq!(s.vdevs[1].cksum, 1010);
    assert_eq!(s.scan.errors, Some(323));
    assert_eq!(s.scan.repaired_bytes, Some(114 * 1024));
    assert!(!s.errors.clean);
    assert_eq!(s.errors.files.len(), 49);
    assert_eq!(s.errors.files[0], "<metadata>:<0x17>");
    assert_eq!(s.errors.files.last().unwrap(), "/pfhcap2/f");
}

#[test]
fn zfs_fuse_clean_and_running() {
    let s = fixture("zfs-fuse-single-clean");
    assert_eq!(s.vdevs.len(), 2);
    assert!(
        s.vdevs
            .iter()
            .all(|v| v.errors() == 0 && v.state == "ONLINE")
    );
    assert!(s.errors.clean);
    let r = fixture("zfs-fuse-scrub-running");
    assert_eq!(r.scan.state, ScanState::Running);
    assert_eq!(r.scan.percent_done, Some(12.5));
    assert_eq!(r.scan.ended_at, None);
}

#[test]
fn openzfs_degraded_mirror_with_an_offline_device() {
    let s = fixture("openzfs-degraded-offline");
    assert_eq!(s.state, "DEGRADED");
    let offline: Vec<&str> = s
        .vdevs
        .iter()
        .filter(|v| v.state == "OFFLINE")
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(offline, ["nvme-eui.0025385b71b2a1c2-part3"]);
    assert_eq!(s.scan.state, ScanState::Finished);
    assert_eq!(s.scan.repaired_bytes, Some(0));
    assert_eq!(s.scan.duration_secs, Some(252));
    assert_eq!(s.scan.ended_at, Some(utc("2026-11-08T00:28:13Z")));
}

#[test]
fn openzfs_faulted_raidz_with_sections_abbreviated_counters_and_an_error_count() {
    let s = fixture("openzfs-faulted-raidz-sections");
    let faulted = s.vdevs.iter().find(|v| v.state == "FAULTED").unwrap();
    assert_eq!(faulted.name, "ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0000002");
    assert_eq!((faulted.read, faulted.cksum), (3, 1925));
    assert_eq!(faulted.note, "too many errors");
    assert_eq!(faulted.depth, 2);
    let by_section: Vec<(&str, &str, u32)> = s
        .vdevs
        .iter()
        .filter(|v| !v.section.is_empty())
        .map(|v| (v.section.as_str(), v.state.as_str(), v.depth))
        .collect();
    assert_eq!(
        by_section,
        [
            ("logs", "ONLINE", 1),
            ("cache", "ONLINE", 1),
            ("spares", "AVAIL", 1)
        ]
    );
    assert_eq!(s.scan.kind, Some(ScanKind::Resilver));
    assert_eq!(s.scan.duration_secs, Some(17 * 3600 + 49 * 60 + 44));
    assert_eq!(s.scan.repaired_bytes, Some((2.10 * 1024f64.powi(4)) as u64));
    assert!(!s.errors.clean);
    assert_eq!(s.errors.count, Some(2));
}

#[test]
fn openzfs_running_scrub_reads_its_continuation_lines() {
    let s = fixture("openzfs-scrub-running");
    assert_eq!(s.scan.state, ScanState::Running);
    assert_eq!(s.scan.percent_done, Some(23.81));
    assert_eq!(s.scan.repaired_bytes, Some(0));
    assert!(s.scan.text.contains("; 0B repaired"));
    assert_eq!(s.vdevs.len(), 4);
}

#[test]
fn scan_lines_of_each_version() {
    let scan = |line: &str| parse_scan(&[line.to_owned()], &Utc);
    let s = scan("scrub repaired 34K in 3h40m with 0 errors on Sat Apr  6 00:51:24 2013");
    assert_eq!(
        (s.repaired_bytes, s.duration_secs, s.errors),
        (Some(34 * 1024), Some(3 * 3600 + 40 * 60), Some(0))
    );
    assert_eq!(scan("none requested").state, ScanState::None);
    assert_eq!(
        scan("scrub canceled on Sun Dec  6 00:30:00 2026").state,
        ScanState::Canceled
    );
    assert_eq!(
        scan("scrub paused since Sun Dec  6 00:30:00 2026").state,
        ScanState::Paused
    );
    let r = scan("resilver in progress since Sun Dec  6 00:24:01 2026");
    assert_eq!(
        (r.kind, r.state),
        (Some(ScanKind::Resilver), ScanState::Running)
    );
    // The host's local time, read in the configured zone.
    let berlin = parse_scan(
        &["scrub repaired 0B in 00:00:01 with 0 errors on Sun Dec  6 03:00:00 2026".to_owned()],
        &chrono::FixedOffset::east_opt(3600).unwrap(),
    );
    assert_eq!(berlin.ended_at, Some(utc("2026-12-06T02:00:00Z")));
}

#[test]
fn not_a_status_is_an_error() {
    assert!(parse("cannot open 'nope': no such pool\n", &Utc).is_err());
    assert!(parse("  pool: x\n", &Utc).is_err());
}

#[test]
fn sizes() {
    assert_eq!(size_bytes("0"), Some(0));
    assert_eq!(size_bytes("0B"), Some(0));
    assert_eq!(size_bytes("114K"), Some(116_736));
    assert_eq!(size_bytes("x"), None);
    assert_eq!(size_bytes(""), None);
}
