//! Leases in the `pf_locks` bucket on a real nats-server: exactly one of many racing holders wins,
//! the holder re-adopts its own lease, release frees it, and a stale release never frees someone
//! else's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proxflow_runtime::lease::{Acquired, Leases};
use proxflow_testkit::TestNats;

async fn leases(server: &TestNats) -> Leases {
    let ctx = server.context("lease-test").await.unwrap();
    Leases::open(&ctx.bus.js).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_racing_holders_exactly_one_wins() {
    let server = TestNats::start().unwrap();
    let leases = leases(&server).await;
    let attempts = (0..20).map(|i| {
        let leases = leases.clone();
        tokio::spawn(async move {
            leases
                .acquire("dataset/tank/vm-104-disk-0", &format!("holder-{i}"), "test")
                .await
                .unwrap()
        })
    });
    let mut held = Vec::new();
    let mut busy = Vec::new();
    for a in attempts {
        match a.await.unwrap() {
            Acquired::Held(lease) => held.push(lease),
            Acquired::Busy(record) => busy.push(record.holder),
        }
    }
    assert_eq!(held.len(), 1, "winners: {held:?}");
    assert_eq!(busy.len(), 19);
    let winner = leases
        .holder("dataset/tank/vm-104-disk-0")
        .await
        .unwrap()
        .expect("held");
    assert!(
        busy.iter().all(|h| *h == winner.holder),
        "{busy:?} vs {winner:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_readopts_release_frees_and_a_stale_release_spares_the_next_holder() {
    let server = TestNats::start().unwrap();
    let leases = leases(&server).await;
    let Acquired::Held(first) = leases
        .acquire("scaleout.k3s", "wf-1", "scale")
        .await
        .unwrap()
    else {
        panic!("free key not taken");
    };
    // The same holder again (a redelivered step) adopts its lease instead of deadlocking on it.
    let Acquired::Held(again) = leases
        .acquire("scaleout.k3s", "wf-1", "scale")
        .await
        .unwrap()
    else {
        panic!("own lease not adopted");
    };
    assert!(matches!(
        leases.acquire("scaleout.k3s", "wf-2", "scale").await.unwrap(),
        Acquired::Busy(r) if r.holder == "wf-1"
    ));
    again.release().await.unwrap();
    assert_eq!(leases.holder("scaleout.k3s").await.unwrap(), None);
    let Acquired::Held(second) = leases
        .acquire("scaleout.k3s", "wf-2", "scale")
        .await
        .unwrap()
    else {
        panic!("released key not taken");
    };
    // `first` still believes it holds the key at its old revision: releasing it must not free wf-2's.
    first.release().await.unwrap();
    assert_eq!(
        leases
            .holder("scaleout.k3s")
            .await
            .unwrap()
            .map(|r| r.holder),
        Some("wf-2".to_string())
    );
    assert!(second.is_held());
    assert!(matches!(
        leases.acquire("bad key!", "x", "y").await,
        Err(proxflow_runtime::lease::LeaseError::InvalidKey(_))
    ));
}
