//! On the shipped 3-node cluster (R3): 20 concurrent provisions while the leader of `PF_CMD` is
//! killed -9. Every workflow succeeds exactly once, with 20 VMs and no dead letters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proxflow_e2e::{JOIN_OK, provision_request};
use proxflow_schemas::names::stream;
use proxflow_schemas::workflow::WorkflowState;

mod support;

use support::{Platform, Servers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_provisions_survive_a_kill_9_of_the_command_streams_leader() {
    let mut p = Platform::start_on_cluster(JOIN_OK, |_| {}, |_| {}).await;
    let (ctx, sim) = (p.ctx.clone(), &p.sim);
    let before: BTreeSet<u32> = sim.handle().vm_ids().into_iter().collect();

    let ids: Vec<String> = (0..20).map(|i| format!("prov-cluster-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let request = provision_request(id, &format!("k3s-c{i}"));
        ctx.bus
            .publisher
            .publish(&request)
            .await
            .expect("published");
    }
    // Once the provisions are under way, the node leading the command stream dies without a word.
    let store = p.store.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running = 0;
        for id in &ids {
            if let Some((r, _)) = store.get(id).await.unwrap()
                && r.state != WorkflowState::Pending
            {
                running += 1;
            }
        }
        if running >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the provisions never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Servers::Three(cluster) = &mut p.servers else {
        unreachable!("started on the cluster")
    };
    let node = cluster
        .stream_leader(&ctx.bus.js, stream::CMD)
        .await
        .expect("PF_CMD has a leader on one of the nodes");
    cluster.kill(node).expect("kill -9");

    let deadline = Instant::now() + Duration::from_secs(150);
    let mut vmids = BTreeSet::new();
    for id in &ids {
        let record = loop {
            let current = store.get(id).await;
            match &current {
                Ok(Some((r, _))) if r.state.is_terminal() => break r.clone(),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not finish after the leader was killed: {current:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            record.state,
            WorkflowState::Succeeded,
            "{id}: {:?}",
            record.error
        );
        vmids.insert(record.data["vmid"].as_u64().unwrap() as u32);
    }
    assert_eq!(vmids.len(), 20, "distinct VMIDs");
    let after: BTreeSet<u32> = sim.handle().vm_ids().into_iter().collect();
    let created: BTreeSet<u32> = after.difference(&before).copied().collect();
    assert_eq!(created, vmids, "exactly one VM per workflow, no orphans");
    let events = ctx.bus.js.get_stream(stream::EVT).await.unwrap();
    let dead_letters = events
        .info_with_subjects(proxflow_schemas::names::subject::dead_letter("*"))
        .await
        .unwrap();
    use futures::TryStreamExt;
    let dead_letters: Vec<(String, usize)> = dead_letters.try_collect().await.unwrap();
    assert!(dead_letters.is_empty(), "dead letters: {dead_letters:?}");
    cluster.restart(node).ok();
}
