//! VM names and static addresses in use are refused at the gateway with 409 naming the field: a VM
//! that exists on Proxmox (found by the provisioner's sweep), a provision in flight, and the VM a
//! provision made. A name comes free again when its provision fails, or when its VM is destroyed
//! (the next sweep). Real nats-server, real HTTP, the Proxmox simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proxflow_e2e::{JOIN_OK, eventually, start_gateway};
use proxflow_schemas::names::{bucket, key};
use proxflow_schemas::workflow::WorkflowState;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod support;

use support::Platform;

const TOKEN: &str = "claims-token-0123456789abcdef";

/// Posts a provisioning request; returns the status and the body.
async fn post(gateway: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{gateway}/v1/provision"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("gateway answers");
    (r.status().as_u16(), r.json().await.expect("json body"))
}

fn request(name: &str, key: &str) -> Value {
    json!({"name": name, "idempotency_key": key})
}

fn with_address(name: &str, key: &str, address: &str) -> Value {
    json!({
        "name": name,
        "idempotency_key": key,
        "ip": {"mode": "static", "cidr": format!("{address}/24"), "gateway": "10.20.0.1"},
    })
}

/// The field error of a 409, asserting the status.
fn conflict(answer: &(u16, Value), field: &str) -> String {
    assert_eq!(answer.0, 409, "{answer:?}");
    answer.1["errors"][field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {answer:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_addresses_in_use_are_refused_with_409_naming_the_field() {
    let p = Platform::start(JOIN_OK, |_| {}).await;
    let stop = CancellationToken::new();
    let gw = start_gateway(&p.ctx, "ci", TOKEN, &stop).await;

    // The seed's k3s-1 is VM 101 at 10.20.0.11, made outside proxflow: the provisioner's first
    // sweep claims both.
    let claims = p.ctx.bus.js.get_key_value(bucket::CLAIMS).await.unwrap();
    eventually("the sweep's first pass", || async {
        claims
            .get(key::claim_ip("10.20.0.11".parse().unwrap()))
            .await
            .ok()
            .flatten()
    })
    .await;
    let again = post(&gw, request("k3s-1", "second-k3s-1")).await;
    let why = conflict(&again, "name");
    assert_eq!(why, "the name k3s-1 is already in use: VM 101");
    let why = conflict(
        &post(&gw, with_address("k3s-9", "k3s-9-on-11", "10.20.0.11")).await,
        "ip.cidr",
    );
    assert_eq!(why, "the address 10.20.0.11 is already in use: VM 101");
    // The refused request's name was not kept: k3s-9 is free for another request.
    let (status, accepted) = post(&gw, with_address("k3s-9", "k3s-9-on-44", "10.20.0.44")).await;
    assert_eq!(status, 202, "{accepted}");

    // Eight requests for one new name at once: one workflow, seven 409s naming it.
    let answers = futures::future::join_all(
        (0..8).map(|i| post(&gw, request("k3s-7", &format!("race-{i}")))),
    )
    .await;
    let won: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    let winner = won[0]["workflow_id"].as_str().unwrap().to_owned();
    // Each loser is told who holds the name: the winner's workflow, still running or, on a slow
    // machine, already done (then with its VM).
    for answer in answers.iter().filter(|(s, _)| *s != 202) {
        let why = conflict(answer, "name");
        assert!(why.contains(&winner), "{why} names {winner}");
    }
    // A retry of the winner is its own workflow again, not a conflict.
    let winning_key = (0..8)
        .map(|i| format!("race-{i}"))
        .find(|k| proxflow_gateway::api::workflow_id(k) == winner)
        .unwrap();
    assert_eq!(post(&gw, request("k3s-7", &winning_key)).await.0, 200);

    // Once built, the name and the address belong to the VM.
    let record = p.until_ended(&winner).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    let vmid = record.data["vmid"].as_u64().unwrap();
    let why = conflict(&post(&gw, request("k3s-7", "after-k3s-7")).await, "name");
    assert_eq!(
        why,
        format!("the name k3s-7 is already in use: VM {vmid}, provisioned by workflow {winner}")
    );
    let k3s_9 = accepted["workflow_id"].as_str().unwrap();
    let record = p.until_ended(k3s_9).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    let why = conflict(
        &post(&gw, with_address("k3s-10", "k3s-10-on-44", "10.20.0.44")).await,
        "ip.cidr",
    );
    assert!(why.contains("10.20.0.44 is already in use: VM"), "{why}");

    // A VM made by hand after the sweep has no claim yet: the request is accepted, and its admit
    // step, which lists the VMs on Proxmox, cancels it naming the VM (no second VM of the name).
    let client = proxflow_pve::PveClient::new(&proxflow_testkit::pve::client_config(&p.sim))
        .expect("client");
    let spec = proxflow_pve::api::CloneSpec {
        newid: 777,
        name: Some("by-hand".into()),
        ..Default::default()
    };
    let upid = client.clone_vm(9000, &spec).await.expect("clone");
    client.wait_task(&upid, None).await.expect("cloned");
    let (status, late) = post(&gw, request("by-hand", "by-hand")).await;
    assert_eq!(status, 202, "{late}");
    let record = p.until_ended(late["workflow_id"].as_str().unwrap()).await;
    assert_eq!(record.state, WorkflowState::Cancelled, "{record:#?}");
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("the name by-hand is already in use: VM 777 on Proxmox")),
        "{:?}",
        record.error
    );
    let named: Vec<u32> = p
        .sim
        .handle()
        .vm_ids()
        .into_iter()
        .filter(|id| {
            p.sim
                .handle()
                .vm_config(*id)
                .and_then(|c| c.get("name").cloned())
                == Some("by-hand".into())
        })
        .collect();
    assert_eq!(named, [777]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_free_again_after_a_failed_provision_or_once_its_vm_is_destroyed() {
    let p = Platform::start_with(
        // The join fails for k3s-5 only: its provision fails and is compensated.
        "input=$(cat); case \"$input\" in *k3s-5*) echo 'join refused' >&2; exit 2;; esac; \
         echo joined",
        |_| {},
        |c| c.claims_sweep = Duration::from_millis(200),
    )
    .await;
    let stop = CancellationToken::new();
    let gw = start_gateway(&p.ctx, "ci", TOKEN, &stop).await;

    let (status, first) = post(&gw, request("k3s-5", "first-k3s-5")).await;
    assert_eq!(status, 202, "{first}");
    let record = p.until_ended(first["workflow_id"].as_str().unwrap()).await;
    assert_eq!(record.state, WorkflowState::Failed, "{record:#?}");
    // Failed and compensated: the name is free for the next request.
    let (status, second) = post(&gw, request("k3s-5", "second-k3s-5")).await;
    assert_eq!(status, 202, "{second}");

    // k3s-2 (VM 102) is destroyed on Proxmox behind proxflow's back: the sweep frees its name.
    let busy = eventually("the seed's k3s-2 claimed by the sweep", || async {
        let answer = post(&gw, request("k3s-2", "early-k3s-2")).await;
        (answer.0 == 409).then_some(answer)
    })
    .await;
    assert!(conflict(&busy, "name").ends_with("VM 102"), "{busy:?}");
    let client = proxflow_pve::PveClient::new(&proxflow_testkit::pve::client_config(&p.sim))
        .expect("client");
    client.stop_vm(102, None).await.expect("stop");
    eventually("VM 102 stopped", || async {
        (client.vm_status(102).await.ok()?.status == "stopped").then_some(())
    })
    .await;
    client.destroy_vm(102, true).await.expect("destroy");
    let (status, _) = eventually("k3s-2 accepted once its VM is gone", || async {
        let answer = post(&gw, request("k3s-2", "new-k3s-2")).await;
        (answer.0 != 409).then_some(answer)
    })
    .await;
    assert_eq!(status, 202);
    stop.cancel();
}
