//! 50 concurrent clones of the template with injected lock contention: every one finishes, with its own
//! VMID, and nothing is left half-made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::Fixture;
use proxflow_pve::{CloneSpec, ErrorKind, PveClient, PveError, Upid};
use proxflow_pve_sim::{EndpointFault, Faults};

const CLONES: usize = 50;

/// The caller's side of "clone to the next free VMID": `nextid` is only a hint under concurrency, so a
/// taken id (`config file already exists`) means ask again. Lock contention is retried inside the client.
async fn clone_next_free(client: &PveClient, name: &str) -> Result<(u32, Upid), PveError> {
    loop {
        let newid = client.next_id().await?;
        let spec = CloneSpec {
            newid,
            name: Some(name.to_string()),
            ..CloneSpec::default()
        };
        match client.clone_vm(9000, &spec).await {
            Ok(upid) => return Ok((newid, upid)),
            Err(e) if e.kind == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clones_under_lock_contention() {
    let mut fx = Fixture::start().await;
    // Each clone request is contended with probability 0.3, so a clone fails only if every attempt is:
    // 0.3^8 with the fixture's 8 attempts is about 1 in 15,000 per request, and this test makes over a
    // hundred requests (AlreadyExists races add more), which failed one CI run in several. With 20
    // attempts it is 0.3^20, about 3e-11: the test checks contention handling, not luck.
    let sim = fx.sim.as_ref().expect("simulator");
    fx.client = proxflow_pve::PveClient::new(&proxflow_pve::PveConfig {
        retry_attempts: 20,
        ..proxflow_testkit::pve::client_config(sim)
    })
    .expect("client");
    let mut faults = Faults::default();
    faults.endpoints.insert(
        "POST /nodes/{node}/qemu/{vmid}/clone".into(),
        EndpointFault {
            lock_contention_rate: 0.3,
            ..EndpointFault::default()
        },
    );
    fx.handle.set_faults(faults);
    let before: BTreeSet<u32> = fx.handle.vm_ids().into_iter().collect();

    let mut set = tokio::task::JoinSet::new();
    for i in 0..CLONES {
        let client = fx.client.clone();
        set.spawn(async move {
            let name = format!("k3s-burst-{i}");
            let (vmid, upid) = clone_next_free(&client, &name).await?;
            client.wait_task(&upid, None).await?;
            Ok::<_, PveError>((vmid, name))
        });
    }
    let mut made = Vec::new();
    while let Some(joined) = set.join_next().await {
        made.push(
            joined
                .unwrap()
                .unwrap_or_else(|e| panic!("a clone failed: {e}")),
        );
    }

    let vmids: BTreeSet<u32> = made.iter().map(|(v, _)| *v).collect();
    assert_eq!(vmids.len(), CLONES, "distinct VMIDs");
    let after: BTreeSet<u32> = fx.handle.vm_ids().into_iter().collect();
    let created: BTreeSet<u32> = after.difference(&before).copied().collect();
    assert_eq!(
        created, vmids,
        "exactly the VMs we were told about exist: no orphans"
    );
    for (vmid, name) in &made {
        let cfg = fx.handle.vm_config(*vmid).expect("exists");
        assert_eq!(cfg.get("name"), Some(name), "VM {vmid}");
        assert_eq!(cfg.get("lock"), None, "VM {vmid} still locked");
    }
    let contended = fx
        .journal()
        .iter()
        .filter(|e| e.path.ends_with("/clone") && e.status == 500)
        .count();
    assert!(
        contended > 0,
        "the fault was active, so some clones were retried"
    );
}
