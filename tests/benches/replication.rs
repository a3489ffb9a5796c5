//! `just bench`: replication throughput through proxflow against a bare `zfs send | zfs receive` of
//! the same snapshot, in the same run, on the real zfs-fuse pools (`tank` → `offsite`), and their
//! ratio (target ≥ 0.9).
//!
//! 256 MiB of incompressible data (`BENCH_REPLICATION_MIB` changes it) in one snapshot; each round
//! sends it in full into a fresh target once with `sh -c 'zfs send … | zfs receive …'` and once with
//! the replicator's first run (`Replicator::run_job`: capability probe, listings, lease, the send |
//! receive copied through proxflow, readonly, holds, events), alternating which goes first. Printed:
//! the stream's throughput through proxflow's pipe (the run's transfer time) and over the whole run
//! (its fixed bookkeeping of a dozen zfs commands weighs on a one-second transfer), each against
//! the bare pipe; medians over the rounds (`BENCH_ROUNDS`, default 5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use proxflow_replicator::{JobConfig, ReplicationConfig, Replicator, RunControl};
use proxflow_testkit::TestNats;

fn zfs(args: &[&str]) -> (bool, String) {
    let out = Command::new("zfs").args(args).output().expect(
        "zfs runs (deploy/dev/install-tools.sh zfs installs zfs-fuse and creates the pools)",
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn destroy(dataset: &str) {
    for _ in 0..50 {
        if zfs(&["destroy", "-r", dataset]).0 || !zfs(&["get", "-H", "type", dataset]).0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    proxflow_runtime::install_crypto_provider();
    let mib: usize = std::env::var("BENCH_REPLICATION_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let pid = std::process::id();
    let source = format!("tank/pfbench-{pid}");
    let (ok, err) = zfs(&["create", &source]);
    assert!(
        ok,
        "{err}: needs the pools from `deploy/dev/install-tools.sh zfs`"
    );
    let mountpoint = {
        let out = Command::new("zfs")
            .args(["get", "-H", "-o", "value", "mountpoint", &source])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut data = vec![0u8; 1 << 20];
    let mut file = std::fs::File::create(format!("{mountpoint}/data.bin")).unwrap();
    for _ in 0..mib {
        rand::fill(&mut data[..]);
        std::io::Write::write_all(&mut file, &data).unwrap();
    }
    drop(file);
    assert!(zfs(&["snapshot", &format!("{source}@bench")]).0);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (bare, piped, whole, bytes) = runtime.block_on(async {
        let nats = TestNats::start().expect("nats-server");
        let ctx = nats.context("replication-bench").await.unwrap();
        let jobs: Vec<JobConfig> = (0..rounds)
            .map(|i| JobConfig {
                name: format!("bench-{i}"),
                source: source.clone(),
                target: format!("offsite/pfbench-pf-{pid}-{i}"),
                transfer_timeout: Duration::from_secs(1800),
                ..JobConfig::default()
            })
            .collect();
        let replicator = Replicator::new(
            &ctx,
            ReplicationConfig {
                jobs: jobs.clone(),
                ..ReplicationConfig::default()
            },
        )
        .unwrap();
        let (mut bare, mut piped, mut whole, mut bytes) =
            (Vec::new(), Vec::new(), Vec::new(), 0u64);
        for (i, job) in jobs.iter().enumerate() {
            let bare_target = format!("offsite/pfbench-bare-{pid}-{i}");
            let run_bare = || {
                let started = Instant::now();
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "zfs send {source}@bench | zfs receive {bare_target}"
                    ))
                    .status()
                    .unwrap();
                assert!(status.success(), "bare send | receive failed");
                started.elapsed()
            };
            let mut bare_time = Duration::ZERO;
            if i % 2 == 0 {
                bare_time = run_bare();
            }
            let report = replicator
                .run_job(&job.name, &RunControl::default())
                .await
                .expect("replication");
            if i % 2 == 1 {
                bare_time = run_bare();
            }
            bytes = report.bytes;
            let mbps = |d: Duration| report.bytes as f64 / d.as_secs_f64() / 1e6;
            bare.push(mbps(bare_time));
            piped.push(mbps(report.transfer_duration));
            whole.push(mbps(report.duration));
            // Fresh targets each round: the job's holds go first (zfs refuses to destroy held
            // snapshots).
            let tag = proxflow_zfs::names::hold_tag(&job.name);
            zfs(&["release", &tag, &format!("{source}@bench")]);
            zfs(&["release", &tag, &format!("{}@bench", job.target)]);
            destroy(&job.target);
            destroy(&bare_target);
        }
        (bare, piped, whole, bytes)
    });
    destroy(&source);
    let (bare, piped, whole) = (median(bare), median(piped), median(whole));
    println!(
        "replication, zfs-fuse tank -> offsite, full send of {mib} MiB ({} stream bytes), median of {rounds} rounds:",
        bytes
    );
    println!("  bare zfs send | zfs receive (sh)         {bare:>8.1} MB/s");
    println!("  through proxflow (send | copy | receive) {piped:>8.1} MB/s");
    println!(
        "  whole replicator run                     {whole:>8.1} MB/s  (+ probe, listings, lease, events, readonly, holds)"
    );
    println!(
        "  ratio through proxflow / bare            {:>8.2}  (target >= 0.9)",
        piped / bare
    );
    println!(
        "  ratio whole run / bare                   {:>8.2}",
        whole / bare
    );
}
