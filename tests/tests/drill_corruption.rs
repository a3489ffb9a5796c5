//! A corrupted block on the offsite pool makes the drill fail, naming the file — not hang, not
//! pass. The test writes a marked file, replicates it, exports the `offsite` pool (so nothing is
//! served from memory), overwrites the marked block in the pool's backing file, and imports it
//! again: reading that block is a ZFS checksum error. Its own test binary, because exporting the
//! shared `offsite` pool must not happen under another test's feet (cargo runs test binaries one
//! after another).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/drill.rs"]
mod rig;
#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proxflow_schemas::lifecycle::Verdict;
use proxflow_schemas::workflow::WorkflowState;
use rig::{Rig, check, report_of};
use zfs_fixture::run;

/// The `offsite` pool's backing file, from `zpool status`.
fn backing_file() -> PathBuf {
    let status = run("zpool", &["status", "offsite"]);
    let path = status
        .lines()
        .map(str::trim)
        .find_map(|l| l.split_whitespace().next().filter(|w| w.ends_with(".img")))
        .expect("offsite's vdev file in zpool status");
    PathBuf::from(path)
}

/// `zpool export offsite`, retried while busy (zfs-fuse keeps a just-used dataset busy a moment).
fn export_offsite() {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("zpool")
            .args(["export", "offsite"])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "zpool export offsite: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Overwrites every block of `image` that starts with `marker`; how many. ZFS places blocks on
/// 512-byte boundaries and the marked file's blocks start with the marker, so only those offsets
/// are compared (a byte-by-byte search of the 4 GiB image would take minutes unoptimised).
fn corrupt(image: &std::path::Path, marker: &[u8]) -> usize {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut hits = Vec::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for at in (0..n.saturating_sub(marker.len())).step_by(512) {
            if &buf[at..at + marker.len()] == marker {
                hits.push(offset + at as u64);
            }
        }
        offset += n as u64;
    }
    for hit in &hits {
        file.seek(SeekFrom::Start(*hit)).unwrap();
        file.write_all(b"CORRUPTED").unwrap();
    }
    file.sync_all().unwrap();
    hits.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_error_on_the_copy_fails_the_drill_naming_the_file() {
    let rig = Rig::start("drill-corrupt", Duration::ZERO).await;
    let marker = format!("pf-corruption-marker-{}-", std::process::id()).into_bytes();
    let content: Vec<u8> = marker.iter().copied().cycle().take(256 << 10).collect();
    std::fs::write(
        rig.fx.mountpoint(&rig.fx.source).join("marked.bin"),
        &content,
    )
    .unwrap();
    rig.replicate().await;

    // Exported, the pool is out of memory's reach: the corrupted block is read from the file.
    let image = backing_file();
    let dir = image.parent().unwrap().to_str().unwrap().to_owned();
    export_offsite();
    let hits = corrupt(&image, &marker);
    run("zpool", &["import", "-d", &dir, "offsite"]);
    assert!(
        hits > 0,
        "the marked file's blocks were not found in {image:?}"
    );

    let started = Instant::now();
    let record = rig.run("drill", "drill-corrupt-1", false).await;
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the drill took {:?}",
        started.elapsed()
    );
    let report = report_of(&record);
    assert_eq!(record.state, WorkflowState::Failed, "{:#?}", report.checks);
    assert_eq!(report.verdict, Verdict::Fail);
    let files = check(&report, "files");
    assert!(
        files
            .iter()
            .any(|c| !c.passed && c.detail.contains("marked.bin: unreadable on the copy")),
        "{files:#?}"
    );
    // The corrupted copy goes with the fixture; the pool's error counters and error log (which
    // forgets a destroyed file's entry only after two scrubs) are cleared for later tests.
    drop(rig);
    run("zpool", &["clear", "offsite"]);
    for _ in 0..2 {
        run("zpool", &["scrub", "offsite"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        while run("zpool", &["status", "offsite"]).contains("in progress") {
            assert!(
                Instant::now() < deadline,
                "the cleanup scrub of offsite did not end"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let status = run("zpool", &["status", "offsite"]);
    assert!(status.contains("No known data errors"), "{status}");
}
