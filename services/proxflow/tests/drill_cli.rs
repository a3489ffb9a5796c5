//! `proxflow drill run` as an operator runs it: the exit code follows the verdict. A real
//! nats-server, the lifecycle service drilling a zfs-fuse pair (`tank` → `offsite`, sent with a
//! bare `zfs send | zfs receive`), the binary started as a process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cli.rs"]
mod cli;
#[path = "../../../tests/tests/support/zfs.rs"]
mod zfs_fixture;

use std::time::Duration;

use cli::{proxflow, text};
use proxflow_lifecycle::{DrillConfig, DrillTarget, ExportConfig, LifecycleSettings};
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;
use proxflow_zfs::Zfs;
use tokio_util::sync::CancellationToken;
use zfs_fixture::{ZfsFixture, zfs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_code_follows_the_drills_verdict() {
    let fx = ZfsFixture::new("drill-cli");
    fx.write_random("data.bin", 128 << 10);
    fx.snapshot(&fx.source, "s1");
    fx.send_bare("s1");
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("lifecycle").await.unwrap();
    let (_sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let reports = tempfile::tempdir().unwrap();
    let local = Zfs::local(Duration::from_secs(60));
    let stop = CancellationToken::new();
    tokio::spawn(proxflow_lifecycle::run(
        ctx,
        LifecycleSettings {
            export: ExportConfig::default(),
            // Not what these tests look at: no scheduled health runs.
            health: proxflow_lifecycle::HealthConfig {
                enabled: false,
                ..proxflow_lifecycle::HealthConfig::default()
            },
            drill: DrillConfig {
                report_dir: reports.path().to_owned(),
                ..DrillConfig::default()
            },
            drill_targets: vec![DrillTarget {
                job: "offsite".into(),
                source: fx.source.clone(),
                target: fx.target.clone(),
                source_zfs: local.clone(),
                target_zfs: local,
            }],
            pve,
        },
        stop.clone(),
    ));
    let env = vec![("PROXFLOW_NATS__URL", nats.url())];
    let drill = |env: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || proxflow(&env, &["drill", "run", "--timeout", "2m"]))
    };

    let passed = drill(env.clone()).await.unwrap();
    let stdout = text(&passed.stdout);
    assert!(
        passed.status.success(),
        "{stdout}\n{}",
        text(&passed.stderr)
    );
    assert!(stdout.contains("verdict PASS"), "{stdout}");
    assert!(stdout.contains("files"), "{stdout}");

    // Written on the offsite side: the drill fails, and so does the command.
    zfs(&["set", "readonly=off", &fx.target]);
    std::fs::write(
        fx.mountpoint(&fx.target).join("data.bin"),
        b"changed offsite",
    )
    .unwrap();
    fx.snapshot(&fx.target, "evil");
    let failed = drill(env).await.unwrap();
    let (stdout, stderr) = (text(&failed.stdout), text(&failed.stderr));
    assert_eq!(failed.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("verdict FAIL"), "{stdout}");
    assert!(stdout.contains("FAIL lineage"), "{stdout}");
    assert!(
        stderr.contains("drill failed") && stderr.contains("data.bin"),
        "{stderr}"
    );
    stop.cancel();
}
