//! Round 2 of the simulator's fidelity: behaviours where the simulator used to answer unlike PVE 8
//! (each checked against `../shared/reference/pve-api.md`, the official schema and the Proxmox
//! sources), over real HTTP with the contract check of every successful answer at the end.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proxflow_pve_sim::SimConfig;
use serde_json::json;

mod support;

use support::*;

#[tokio::test]
async fn an_unsimulated_endpoint_says_so_and_an_unknown_path_answers_as_pve_does() {
    let s = sim().await;
    // In the schema, not simulated: a distinct 501 naming the simulator and the method.
    let a = s.get("/nodes/pve1/lxc").await;
    assert_eq!(a.status, 501);
    assert_eq!(
        a.body["message"],
        "not simulated by pve-sim: GET /nodes/{node}/lxc\n"
    );
    let (head, _) = raw(
        &s,
        &format!(
            "GET /api2/json/nodes/pve1/lxc HTTP/1.1\r\nHost: x\r\n\
             Authorization: {}\r\nConnection: close\r\n\r\n",
            s.auth
        ),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 501 not simulated by pve-sim: GET /nodes/{node}/lxc\r\n"),
        "{head}"
    );
    // Not in the schema: PVE's own answer, now with its `message` as PVE 8.4 sends it.
    let a = s.get("/foo").await;
    assert_eq!(a.status, 501);
    assert_eq!(
        a.body,
        json!({"data": null, "message": "Method 'GET /foo' not implemented\n"})
    );
    s.finish().await;
}

#[tokio::test]
async fn every_json_error_carries_a_message() {
    let s = sim().await;
    let a = s.get("/nodes/pve1/qemu/abc/config").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["message"], "Parameter verification failed.\n");
    assert!(a.body["errors"]["vmid"].is_string(), "{}", a.body);
    let a = s.get("/nodes/pve1/qemu/999/config").await;
    assert_eq!(a.status, 500);
    assert!(a.body["message"].as_str().unwrap().ends_with('\n'));
    s.finish().await;
}

#[tokio::test]
async fn deleting_an_unknown_option_is_a_parameter_error() {
    let s = sim().await;
    let a = s
        .put("/nodes/pve1/qemu/101/config", &[("delete", "nosuchoption")])
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["errors"]["delete"], "unknown option 'nosuchoption'");
    // A known option that is not set is no error (qemu-server skips it).
    let a = s
        .put("/nodes/pve1/qemu/101/config", &[("delete", "description")])
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    s.finish().await;
}

#[tokio::test]
async fn stopping_a_stopped_vm_ends_its_task_ok_and_a_template_fails_to_start_inside_its_task() {
    let s = sim().await;
    assert_eq!(
        s.run(s.post("/nodes/pve1/qemu/101/status/stop", &[]).await)
            .await,
        "OK"
    );
    for action in ["stop", "shutdown"] {
        let a = s
            .post(&format!("/nodes/pve1/qemu/101/status/{action}"), &[])
            .await;
        assert_eq!(s.run(a).await, "OK", "{action} of a stopped VM");
    }
    // 9000 is the template: the call answers a UPID, the task fails.
    let a = s.post("/nodes/pve1/qemu/9000/status/start", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(s.run(a).await, "you can't start a vm if it's a template");
    s.finish().await;
}

#[tokio::test]
async fn a_tokens_tasks_name_the_user_and_the_token_apart() {
    let s = sim().await;
    let a = s.post("/nodes/pve1/qemu/101/status/reboot", &[]).await;
    let status = s.wait(&a.body["data"]).await;
    assert_eq!(
        (&status["user"], &status["tokenid"]),
        (&json!("root@pam"), &json!("proxflow"))
    );
    let list = s.get("/nodes/pve1/tasks?source=all").await;
    let entry = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["upid"] == a.body["data"])
        .unwrap()
        .clone();
    assert_eq!(
        (&entry["user"], &entry["tokenid"]),
        (&json!("root@pam"), &json!("proxflow"))
    );
    s.finish().await;
}

#[tokio::test]
async fn a_snapshots_config_has_the_digest_and_current_with_snapshot_is_refused() {
    let s = sim().await;
    let a = s
        .post("/nodes/pve1/qemu/101/snapshot", &[("snapname", "s1")])
        .await;
    assert_eq!(s.run(a).await, "OK");
    let digest = s.config(101).await["digest"].clone();
    let a = s.get("/nodes/pve1/qemu/101/config?snapshot=s1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"]["digest"], digest);
    let a = s
        .get("/nodes/pve1/qemu/101/config?snapshot=s1&current=1")
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let errors = &a.body["errors"];
    assert!(
        errors["snapshot"].is_string() && errors["current"].is_string(),
        "{errors}"
    );
    s.finish().await;
}

#[tokio::test]
async fn a_failed_authentication_is_answered_after_the_delay() {
    let mut config = config(false);
    config.durations.auth_failure = Duration::from_millis(300);
    let s = sim_with(config).await;
    let started = Instant::now();
    let res = s
        .http
        .get(s.url("/version"))
        .header("Authorization", "PVEAPIToken=root@pam!proxflow=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        started.elapsed()
    );
    // The right token is not delayed.
    let started = Instant::now();
    assert_eq!(s.get("/version").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(300));
    s.finish().await;
}

#[tokio::test]
async fn the_journal_stays_within_its_byte_budget() {
    let s = sim_with(SimConfig {
        journal_max_bytes: 64 << 10,
        ..config(false)
    })
    .await;
    for _ in 0..400 {
        assert_eq!(s.get("/cluster/resources").await.status, 200);
    }
    let journal = s.sim.handle().journal();
    let bytes: usize = journal
        .iter()
        .map(|e| e.response.to_string().len() + e.params.len())
        .sum();
    assert!(bytes <= 64 << 10, "{bytes} bytes kept");
    assert!(
        journal.len() > 2 && journal.len() < 400,
        "{} entries",
        journal.len()
    );
    // The newest requests are the ones kept.
    assert_eq!(journal.last().unwrap().path, "/cluster/resources");
    s.finish().await;
}

#[tokio::test]
async fn cluster_resources_list_the_nodes_local_network_zone() {
    let s = sim().await;
    for path in ["/cluster/resources", "/cluster/resources?type=sdn"] {
        let a = s.get(path).await;
        let sdn: Vec<&serde_json::Value> = a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "sdn")
            .collect();
        assert_eq!(
            sdn,
            [
                &json!({"id": "sdn/pve1/localnetwork", "type": "sdn", "sdn": "localnetwork",
                     "node": "pve1", "status": "ok"})
            ],
            "{path}"
        );
    }
    let a = s.get("/cluster/resources?type=vm").await;
    assert!(
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["type"] == "qemu")
    );
    s.finish().await;
}

#[tokio::test]
async fn the_full_vm_list_adds_the_qmp_status_of_running_vms() {
    let s = sim().await;
    let plain = s.get("/nodes/pve1/qemu").await;
    let full = s.get("/nodes/pve1/qemu?full=1").await;
    let entry = |a: &Answer, vmid: u64| {
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vmid"] == vmid)
            .unwrap()
            .clone()
    };
    for key in [
        "qmpstatus",
        "ballooninfo",
        "blockstat",
        "nics",
        "running-machine",
        "running-qemu",
        "proxmox-support",
    ] {
        assert!(entry(&plain, 101).get(key).is_none(), "{key} without full");
        assert!(entry(&full, 101).get(key).is_some(), "{key} with full");
        // The template (9000) is stopped: nothing from QMP.
        assert!(
            entry(&full, 9000).get(key).is_none(),
            "{key} of a stopped VM"
        );
    }
    let running = entry(&full, 101);
    assert!(running["blockstat"]["scsi0"]["rd_bytes"].is_u64());
    assert!(running["nics"]["tap101i0"]["netin"].is_u64());
    s.finish().await;
}

#[tokio::test]
async fn cluster_resources_figures_are_as_old_as_the_last_status_broadcast() {
    let mut config = config(false);
    config.durations.status_interval = Duration::from_millis(400);
    let s = sim_with(config).await;
    let cpu_of = |a: &Answer, id: &str| {
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["cpu"].clone())
    };
    let before = s.get("/cluster/resources?type=vm").await;
    let broadcast = Instant::now();
    s.sim.handle().set_vm_load(
        101,
        serde_json::from_value(json!({"cpu": 0.9, "mem": 0.5})).unwrap(),
    );
    // status/current is live; cluster/resources still shows the last broadcast …
    let live = s.get("/nodes/pve1/qemu/101/status/current").await;
    assert!((live.body["data"]["cpu"].as_f64().unwrap() - 0.9).abs() < 0.05);
    let stale = s.get("/cluster/resources?type=vm").await;
    if broadcast.elapsed() < Duration::from_millis(400) {
        assert_eq!(cpu_of(&stale, "qemu/101"), cpu_of(&before, "qemu/101"));
    }
    // … and a VM cloned since is listed at once, without figures yet.
    let a = s
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "150"), ("name", "fresh")],
        )
        .await;
    assert_eq!(s.run(a).await, "OK");
    let listed = s.get("/cluster/resources?type=vm").await;
    if broadcast.elapsed() < Duration::from_millis(400) {
        let fresh = listed.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "qemu/150")
            .unwrap()
            .clone();
        assert_eq!(fresh["status"], "unknown", "{fresh}");
    }
    // After the next broadcast the figures are current.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let after = s.get("/cluster/resources?type=vm").await;
    let cpu = cpu_of(&after, "qemu/101").unwrap().as_f64().unwrap();
    assert!((cpu - 0.9).abs() < 0.05, "{cpu}");
    s.finish().await;
}
