//! `just bench`: the lifecycle jobs. (1) The weekly export of a 200-VM host (the seed's template
//! cloned 200 times in the simulator, at no simulated delay): seconds and bundle size. (2) The
//! restore drill of a 256 MiB replicated dataset on zfs-fuse: seconds, and the share spent on
//! checksums versus cloning. The replicator's ratio to a bare `zfs send | zfs receive` is in the
//! `replication` bench.

#[path = "../tests/support/drill.rs"]
mod rig;
#[path = "../tests/support/zfs.rs"]
mod zfs_fixture;

use std::time::{Duration, Instant};

use proxflow_pve::CloneSpec;
use proxflow_schemas::lifecycle::ExportReport;
use rig::{Rig, report_of};

async fn export_200() {
    let rig = Rig::start_with("bench-export", Duration::ZERO, |c| {
        c.time_scale = 0.0;
        c.durations.agent_boot = Duration::ZERO;
    })
    .await;
    for i in 0..200u32 {
        let spec = CloneSpec {
            newid: 1000 + i,
            name: Some(format!("k3s-b{i}")),
            ..CloneSpec::default()
        };
        let upid = rig.pve.clone_vm(9000, &spec).await.expect("clone");
        rig.pve.wait_task(&upid, None).await.expect("clone task");
    }
    let vms = rig.pve.list_vms().await.expect("list").len();
    let mut times = Vec::new();
    let mut last = None;
    for round in 0..3 {
        let started = Instant::now();
        let record = rig
            .run("export", &format!("export-bench-{round}"), false)
            .await;
        times.push(started.elapsed().as_secs_f64());
        last = Some(record);
    }
    times.sort_by(f64::total_cmp);
    let report: ExportReport =
        serde_json::from_value(last.expect("a run").data["output"].clone()).expect("report");
    println!(
        "export of {vms} VMs (API, zfs, normalise, manifest, write; start to end as the CLI \
         sees it), median of 3: {:.2} s; bundle {} files, {:.0} KiB",
        times[1],
        report.files,
        report.bytes as f64 / 1024.0
    );
}

async fn drill_256() {
    let rig = Rig::start("bench-drill", Duration::ZERO).await;
    rig.fx.write_random("big.bin", 256 << 20);
    rig.replicate().await;
    let started = Instant::now();
    let record = rig.run("drill", "drill-bench-1", false).await;
    let whole = started.elapsed().as_secs_f64();
    let report = report_of(&record);
    println!(
        "drill of a 256 MiB replicated dataset (clone, guid, every file checksummed both sides, \
         bundle, restore, cleanup): {whole:.2} s, verdict {:?}; checksums {:.2} s ({:.0} %), \
         clones {:.2} s ({:.0} %), restore to agent {:.2} s",
        report.verdict,
        report.checksum_secs,
        100.0 * report.checksum_secs / whole,
        report.clone_secs,
        100.0 * report.clone_secs / whole,
        rig::check(&report, "restore")
            .first()
            .and_then(|c| c.figures.get("boot_secs"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN),
    );
}

fn main() {
    proxflow_e2e::bench_main(|| async {
        export_200().await;
        drill_256().await;
    });
}
