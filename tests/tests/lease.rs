//! Leases in the `pf_locks` bucket on a real nats-server: exactly one of many racing holders wins,
//! the holder re-adopts its own lease, release frees it, and a stale release never frees someone
//! else's. [`Leases::with`] runs work under a lease and frees it after, also when the work is
//! dropped mid-way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proxflow_runtime::lease::{Acquired, Held, Leases};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_runs_the_work_under_the_lease_and_frees_it_after() {
    let server = TestNats::start().unwrap();
    let leases = leases(&server).await;
    let key = "dataset/tank/vm-105-disk-0";
    let held = leases
        .with(key, "job-1", "replicate", |lease| {
            let leases = leases.clone();
            async move {
                assert!(lease.is_held());
                // While the work runs, another holder finds the key busy and learns who has it.
                match leases
                    .with(key, "job-2", "prune", |_| async {})
                    .await
                    .unwrap()
                {
                    Held::Busy(by) => (by.holder, by.purpose),
                    Held::Done(()) => panic!("a held lease was taken twice"),
                }
            }
        })
        .await
        .unwrap();
    let Held::Done(busy) = held else {
        panic!("a free key was busy");
    };
    assert_eq!(busy, ("job-1".to_string(), "replicate".to_string()));
    assert_eq!(
        leases.holder(key).await.unwrap(),
        None,
        "released after the work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_frees_the_lease_when_the_work_is_dropped_mid_way() {
    let server = TestNats::start().unwrap();
    let leases = leases(&server).await;
    let key = "dataset/tank/vm-106-disk-0";
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let work = {
        let leases = leases.clone();
        tokio::spawn(async move {
            leases
                .with(key, "job-1", "replicate", |_| async move {
                    let _ = started_tx.send(());
                    // Never ends on its own: only a drop stops it.
                    std::future::pending::<()>().await
                })
                .await
        })
    };
    started_rx.await.expect("the work started under the lease");
    assert_eq!(
        leases
            .holder(key)
            .await
            .unwrap()
            .map(|r| r.holder)
            .as_deref(),
        Some("job-1")
    );
    // A caller giving up (a shutdown, a timeout) drops the future mid-way.
    work.abort();
    assert!(work.await.unwrap_err().is_cancelled());
    // Freed at once by the spawned release, not after the bucket's 15-minute age limit.
    let freed = tokio::time::timeout(Duration::from_secs(5), async {
        while leases.holder(key).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the lease outlived its dropped work");
    let Acquired::Held(next) = leases.acquire(key, "job-2", "prune").await.unwrap() else {
        panic!("the next holder found the key busy");
    };
    next.release().await.unwrap();
}

/// A holder that dies without releasing (its renewals stop, as after kill -9) loses its lease to the
/// next holder once it has gone unrenewed for the staleness limit; a live holder, renewing, never
/// does. Staleness is 1.5 s here (renewal every 0.5 s) instead of 3 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_over_once_stale_and_a_live_one_is_not() {
    let server = TestNats::start().unwrap();
    let leases = leases(&server)
        .await
        .with_stale_after(Duration::from_millis(1_500));
    let alive = match leases.acquire("vm/104", "alive", "patching").await.unwrap() {
        Acquired::Held(lease) => lease,
        Acquired::Busy(other) => panic!("held by {other:?}"),
    };
    // Twice the staleness limit later, the renewing holder still has it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match leases.acquire("vm/104", "other", "patching").await.unwrap() {
        Acquired::Busy(by) => assert_eq!(by.holder, "alive"),
        Acquired::Held(_) => panic!("a live, renewing holder lost its lease"),
    }
    assert!(alive.is_held());
    // The holder dies: no release, no more renewals.
    drop(alive);
    let taken = proxflow_e2e::eventually("the stale lease taken over", || async {
        match leases.acquire("vm/104", "other", "patching").await.unwrap() {
            Acquired::Held(lease) => Some(lease),
            Acquired::Busy(_) => None,
        }
    })
    .await;
    assert_eq!(
        leases.holder("vm/104").await.unwrap().unwrap().holder,
        "other"
    );
    taken.release().await.unwrap();
}
