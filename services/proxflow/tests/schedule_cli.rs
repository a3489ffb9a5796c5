//! `proxflow schedule` against a real nats-server: every configured job with its schedule, its
//! last run (from the workflow records) and its next slot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cli.rs"]
mod cli;
use cli::proxflow;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::lifecycle::JobInput;
use proxflow_schemas::workflow::Origin;
use proxflow_testkit::TestNats;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_lists_every_job_with_its_last_and_next_run() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("schedule-cli").await.unwrap();
    let engine = Engine::new(&ctx).await.unwrap();
    // An export someone started (nothing runs it here: it stays pending).
    let origin = Origin {
        source: "test".into(),
        reference: "t".into(),
        reason: "test".into(),
    };
    let input = JobInput {
        dry_run: false,
        requested_by: "test".into(),
    };
    engine
        .start_kind(
            proxflow_lifecycle::export::KIND,
            "export-cli-1",
            origin,
            &input,
        )
        .await
        .unwrap();
    let env = vec![
        ("PROXFLOW_NATS__URL", nats.url()),
        ("PROXFLOW_EXPORT__DATASET", "tank/pf-export".to_owned()),
        ("PROXFLOW_EXPORT__SCHEDULE", "weekly@sat 01:15".to_owned()),
        ("PROXFLOW_EXPORT__TIMEZONE", "Europe/Berlin".to_owned()),
    ];
    let out = tokio::task::spawn_blocking(move || proxflow(&env, &["schedule", "--json"]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job"] == name)
            .unwrap_or_else(|| panic!("no {name} in {jobs:#?}"))
    };
    let export = job("export");
    assert_eq!(export["schedule"], "weekly@sat 01:15");
    assert_eq!(export["last"], "pending export-cli-1");
    // The next slot is a Saturday at 01:15 Berlin time, in the future.
    let next: chrono::DateTime<chrono::Utc> = export["next"].as_str().unwrap().parse().unwrap();
    let local = next.with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(local.format("%a %H:%M").to_string(), "Sat 01:15");
    assert!(next > chrono::Utc::now());
    // The capacity review is always there; the patch window when patching is on (the default).
    assert_eq!(job("capacity-review")["schedule"], "monthly@1 06:00");
    assert!(job("capacity-review")["last"].is_null());
    assert!(job("patch")["next"].is_string());
}
