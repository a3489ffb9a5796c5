//! The admission ledger under contention, on a real nats-server: many concurrent admissions of one
//! kind of work all write one KV key. Every conflict must be absorbed inside the call (jittered
//! compare-and-set retries until a deadline), never returned as an error: an error here is a NAK,
//! and on a 3-node cluster each NAK waited seconds to minutes of back-off (20 concurrent provisions
//! took 166 s instead of 9).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proxflow_runtime::admission::{Admissions, Caps, Decision};
use proxflow_testkit::TestNats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_admissions_on_one_ledger_all_get_an_answer() {
    let server = TestNats::start().unwrap();
    let ctx = server.context("admission-test").await.unwrap();
    let admissions = Admissions::open(&ctx.bus.js).await.unwrap();
    let caps = Caps {
        max_running: 150,
        max_per_window: 1_000,
        window: Duration::from_secs(3600),
    };
    let now = chrono::Utc::now();
    let calls = (0..200).map(|i| {
        let admissions = admissions.clone();
        tokio::spawn(async move {
            admissions
                .admit("provision.k8s-node", &format!("wf-{i}"), caps, now)
                .await
        })
    });
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let errors: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    let admitted = answers
        .iter()
        .filter(|a| matches!(a, Ok(Decision::Admitted)))
        .count();
    // The cap holds exactly under contention: 150 admitted, 50 refused with the numbers.
    assert_eq!(admitted, 150);
    for a in &answers {
        if let Ok(Decision::Refused(why)) = a {
            assert!(why.contains("150 already running"), "{why}");
        }
    }
}
