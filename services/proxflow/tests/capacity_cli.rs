//! `proxflow capacity review` as an operator runs it, against a real nats-server and the Proxmox
//! simulator: with no samples in the window it exits non-zero saying so; after the monitor has
//! published some, it prints the Markdown report, the JSON with `--json`, and writes both with
//! `--out`.

#[path = "support/cli.rs"]
mod cli;
use chrono::{SecondsFormat, Utc};
use cli::{proxflow, text};
use proxflow_capacity::{CapacityConfig, Monitor};
use proxflow_schemas::capacity_review::CapacityReview;
use proxflow_testkit::TestNats;
use proxflow_testkit::pve::start_sim;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_fails_without_samples_and_prints_the_report_with_them() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("capacity-cli").await.expect("ctx");
    let (sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let env = vec![
        ("PROXFLOW_NATS__URL", nats.url()),
        ("PROXFLOW_PVE__URL", sim.base_url()),
        ("PROXFLOW_PVE__TOKEN_ID", sim.token_id().to_string()),
        ("PROXFLOW_PVE__TOKEN_SECRET", sim.token_secret().to_string()),
    ];
    let from = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let to = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let window = ["capacity", "review", "--from", &from, "--to", &to];
    let run = |extra: &[&str]| {
        let env = env.clone();
        let args: Vec<String> = window.iter().chain(extra).map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            proxflow(&env, &args)
        })
    };

    let empty = run(&[]).await.expect("join");
    assert!(!empty.status.success(), "{}", text(&empty.stdout));
    let stderr = text(&empty.stderr);
    assert!(stderr.contains("no capacity samples of node"), "{stderr}");
    assert!(empty.stdout.is_empty(), "{}", text(&empty.stdout));

    // Three polls of the simulator on the wall clock.
    let mut monitor = Monitor::new(&ctx, CapacityConfig::default(), pve.clone())
        .await
        .expect("monitor");
    for _ in 0..3 {
        assert!(monitor.poll().await.expect("poll").sample.is_some());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let markdown = run(&[]).await.expect("join");
    let stdout = text(&markdown.stdout);
    assert!(markdown.status.success(), "{}", text(&markdown.stderr));
    assert!(
        stdout.starts_with(&format!("# Capacity review: {}", pve.node())),
        "{stdout}"
    );
    assert!(stdout.contains("3 capacity samples"), "{stdout}");
    assert!(stdout.contains("## Memory commitment"), "{stdout}");

    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().display().to_string();
    let json = run(&["--json", "--out", &dir]).await.expect("join");
    assert!(json.status.success(), "{}", text(&json.stderr));
    let review: CapacityReview = serde_json::from_slice(&json.stdout).expect("the JSON report");
    assert_eq!(review.samples, 3);
    let physical = pve.node_status().await.expect("status").memory.total;
    assert_eq!(review.commitment.physical_bytes, physical);
    let written: Vec<String> = std::fs::read_dir(out.path())
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(
        written.iter().all(|n| n.starts_with("capacity-review-")),
        "{written:?}"
    );
}
