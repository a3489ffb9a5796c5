//! The contract check itself: it must catch requests the official schema forbids, or the green runs of
//! every other client test (each checked on drop of its fixture) would mean nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, contract_violations};
use proxflow_pve::Params;
use reqwest::Method;

#[tokio::test]
async fn the_contract_check_flags_requests_outside_the_schema() {
    let mut fx = Fixture::start().await;
    fx.expect_rejected(3);
    let c = &fx.client;
    c.list_vms().await.unwrap();
    assert!(
        contract_violations(&fx.journal()).is_empty(),
        "a valid call passes"
    );

    // An unknown parameter, a wrong type, an unknown path: each one flagged, naming what is wrong.
    let _ = c
        .call_value(
            Method::GET,
            "/nodes/pve1/qemu",
            &Params::new().set("colour", "red"),
        )
        .await;
    let _ = c
        .call_value(
            Method::GET,
            "/cluster/nextid",
            &Params::new().set("vmid", "abc"),
        )
        .await;
    let _ = c
        .call_value(Method::GET, "/nodes/pve1/frobnicate", &Params::new())
        .await;
    let problems = contract_violations(&fx.journal());
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("colour"), "{}", problems[0]);
    assert!(problems[1].contains("vmid"), "{}", problems[1]);
    assert!(problems[2].contains("frobnicate"), "{}", problems[2]);
}

#[test]
fn the_schema_is_the_official_dump() {
    let schema = common::schema();
    // Spot checks that this is the PVE 8 dump and that routing resolves templates.
    let route = schema
        .route("POST", "/nodes/pve1/qemu/9000/clone")
        .expect("clone exists");
    assert_eq!(route.template, "/nodes/{node}/qemu/{vmid}/clone");
    assert!(
        schema.route("GET", "/nodes/pve1/qemu/9000/clone").is_err(),
        "no GET on clone"
    );
}
