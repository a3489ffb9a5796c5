//! 50 concurrent provisions on one node: every admission, slot release and record update on the
//! shared KV keys (the profile's admission ledger, the workflow records) meets contention, and every
//! conflict is retried inside the handler: none spends a message delivery. Alone in its test binary
//! so the process-wide CAS counters count this test only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;

use proxflow_e2e::JOIN_OK;
use proxflow_runtime::kv;
use proxflow_schemas::names::{bucket, durable};
use proxflow_schemas::workflow::WorkflowState;
use support::Platform;

fn counter(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_provisions_spend_no_delivery_on_kv_conflicts() {
    let p = Platform::start_with(
        JOIN_OK,
        |_| {},
        |config| {
            for profile in config.profiles.0.values_mut() {
                profile.max_concurrent = 50;
                profile.max_per_hour = 100;
            }
        },
    )
    .await;
    let requests = (0..50).map(|i| p.request_owned(format!("crowd-{i}")));
    let ids = futures::future::join_all(requests).await;
    let mut vmids = BTreeSet::new();
    for id in &ids {
        let r = p.until_ended(id).await;
        assert_eq!(r.state, WorkflowState::Succeeded, "{id}: {:?}", r.error);
        vmids.insert(r.data["vmid"].as_u64().unwrap());
    }
    assert_eq!(vmids.len(), 50, "distinct VMIDs");
    p.until_idle().await;
    // Contention happened (the test is not vacuous) and was absorbed where it arose.
    let conflicts = kv::conflicts(bucket::ADMISSIONS) + kv::conflicts(bucket::WORKFLOWS);
    assert!(conflicts > 0, "50 concurrent admissions met no conflict");
    assert_eq!(kv::exhausted(bucket::ADMISSIONS), 0);
    assert_eq!(kv::exhausted(bucket::WORKFLOWS), 0);
    let page = p.ctx.metrics.encode();
    for consumer in [
        durable::ORCHESTRATOR_PROVISION,
        durable::ORCHESTRATOR_OUTCOMES,
        durable::PROVISIONER,
    ] {
        let retried = counter(
            &page,
            &format!("proxflow_messages_retried_total{{consumer=\"{consumer}\"}}"),
        );
        assert_eq!(retried, 0.0, "{consumer} handed deliveries back:\n{page}");
    }
}
