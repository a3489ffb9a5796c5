//! The simulator over real HTTP(S), as a Proxmox client sees it: clones, snapshots, validation,
//! errors, auth, bodies, digests, the guest agent, TLS, faults and the control API.
//!
//! Each test starts its own simulator on 127.0.0.1:0 with short task durations and polls task
//! status against a deadline. A missing API schema makes `start` fail, and with it every test,
//! with the list of paths searched.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proxflow_pve_sim::{EndpointFault, Faults, Load, SimConfig, TaskDurations, start};
use serde_json::{Value, json};

mod support;

use support::*;

#[tokio::test]
async fn linked_clone_of_the_template() {
    let s = sim().await;
    let template = s.config(9000).await;
    let answer = s
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "120"), ("name", "k3s-4")],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let upid = answer.body["data"].clone();
    assert!(
        upid.as_str().unwrap().starts_with("UPID:pve1:")
            && upid
                .as_str()
                .unwrap()
                .contains(":qmclone:9000:root@pam!proxflow:"),
        "{upid}"
    );

    // While the task runs, the new VM exists with `lock: clone` and refuses config changes.
    let during = s.config(120).await;
    assert_eq!(during["lock"], "clone");
    let refused = s
        .put("/nodes/pve1/qemu/120/config", &[("cores", "4")])
        .await;
    assert_eq!(refused.status, 500);
    assert_eq!(refused.body["message"], "VM is locked (clone)\n");

    assert_eq!(s.wait(&upid).await["exitstatus"], "OK");
    let log = s
        .get(&format!(
            "/nodes/pve1/tasks/{}/log",
            encode(upid.as_str().unwrap())
        ))
        .await;
    let lines = log.body["data"].as_array().unwrap();
    assert_eq!(lines.last().unwrap()["t"], "TASK OK");
    assert_eq!(log.body["total"], json!(lines.len()));

    let cloned = s.config(120).await;
    assert!(cloned.get("lock").is_none(), "{cloned}");
    assert!(
        cloned.get("template").is_none(),
        "template flag copied: {cloned}"
    );
    assert_eq!(template["template"], json!(1));
    assert_eq!(cloned["name"], "k3s-4");
    assert_eq!(
        cloned["scsi0"],
        "local-zfs:base-9000-disk-0/vm-120-disk-0,size=2252M"
    );
    assert_eq!(cloned["ide2"], "local-zfs:vm-120-cloudinit,media=cdrom");
    let mac = mac_of(&cloned["net0"]);
    assert!(
        mac.starts_with("BC:24:11:") && mac != mac_of(&template["net0"]),
        "{mac}"
    );
    assert!(
        cloned["net0"]
            .as_str()
            .unwrap()
            .ends_with(",bridge=vmbr1,tag=20")
    );
    assert_ne!(cloned["smbios1"], template["smbios1"]);
    assert_ne!(cloned["vmgenid"], template["vmgenid"]);
    assert_eq!(cloned["memory"], "2048", "memory stays a string");
    assert_eq!(cloned["cores"], json!(2), "integers are numbers");

    // A second clone gets its own MAC; linked clones refuse a target storage.
    let second = s
        .run(
            s.post("/nodes/pve1/qemu/9000/clone", &[("newid", "121")])
                .await,
        )
        .await;
    assert_eq!(second, "OK");
    let other = s.config(121).await;
    assert_eq!(other["name"], "Copy-of-VM-ubuntu-2204-cloudinit");
    assert_ne!(mac_of(&other["net0"]), mac);
    let refused = s
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "122"), ("storage", "local-zfs")],
        )
        .await;
    assert_eq!(refused.status, 500);
    assert_eq!(
        refused.body["message"],
        "parameter 'storage' not allowed for linked clones\n"
    );
    let exists = s
        .post("/nodes/pve1/qemu/9000/clone", &[("newid", "101")])
        .await;
    assert_eq!(
        exists.body["message"],
        "unable to create VM 101: config file already exists\n"
    );

    // The template cannot go while linked clones use its base volume.
    let destroy = s.send(s.http.delete(s.url("/nodes/pve1/qemu/9000"))).await;
    let status = s.wait(&destroy.body["data"]).await;
    assert_eq!(
        status["exitstatus"],
        "base volume 'local-zfs:base-9000-disk-0' is still in use by linked cloned"
    );
    s.finish().await;
}

#[tokio::test]
async fn full_clone_takes_space_and_destroy_gives_it_back() {
    let s = sim().await;
    let (used0, avail0) = s.storage("local-zfs").await;
    let exit = s
        .run(
            s.post(
                "/nodes/pve1/qemu/101/clone",
                &[("newid", "130"), ("full", "1")],
            )
            .await,
        )
        .await;
    assert_eq!(exit, "OK");
    let (used1, avail1) = s.storage("local-zfs").await;
    let disk = 40u64 << 30;
    let cloudinit = 4u64 << 20;
    assert_eq!(used1 - used0, disk + cloudinit);
    assert_eq!(avail0 - avail1, disk + cloudinit);
    assert_eq!(
        s.config(130).await["scsi0"],
        "local-zfs:vm-130-disk-0,size=40G"
    );
    let zfs = s.get("/nodes/pve1/disks/zfs").await;
    assert_eq!(zfs.body["data"][0]["name"], "rpool");

    let exit = s
        .run(s.send(s.http.delete(s.url("/nodes/pve1/qemu/130"))).await)
        .await;
    assert_eq!(exit, "OK");
    assert_eq!(s.storage("local-zfs").await, (used0, avail0));
    assert!(!s.sim.handle().vm_ids().contains(&130));
    s.finish().await;
}

#[tokio::test]
async fn rollback_to_an_older_snapshot_is_refused_like_zfs() {
    let s = sim().await;
    for name in ["before", "after"] {
        let exit = s
            .run(
                s.post("/nodes/pve1/qemu/102/snapshot", &[("snapname", name)])
                    .await,
            )
            .await;
        assert_eq!(exit, "OK");
    }
    let again = s
        .run(
            s.post("/nodes/pve1/qemu/102/snapshot", &[("snapname", "after")])
                .await,
        )
        .await;
    assert_eq!(again, "snapshot name 'after' already used");
    let reserved = s
        .post("/nodes/pve1/qemu/102/snapshot", &[("snapname", "current")])
        .await;
    assert_eq!(reserved.status, 500);

    let list = s.get("/nodes/pve1/qemu/102/snapshot").await.body["data"].clone();
    let current = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "current")
        .unwrap();
    assert_eq!(current["parent"], "after");
    assert_eq!(current["running"], json!(1));
    let after = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "after")
        .unwrap();
    assert_eq!(after["parent"], "before");

    let refused = s
        .run(
            s.post("/nodes/pve1/qemu/102/snapshot/before/rollback", &[])
                .await,
        )
        .await;
    assert_eq!(
        refused,
        "can't rollback, 'before' is not most recent snapshot on 'local-zfs:vm-102-disk-0'"
    );
    assert!(!s.sim.handle().vm_config(102).unwrap().contains_key("lock"));

    // The latest one works; the running VM is stopped for it, and `start` brings it back.
    let ok = s
        .run(
            s.post(
                "/nodes/pve1/qemu/102/snapshot/after/rollback",
                &[("start", "1")],
            )
            .await,
        )
        .await;
    assert_eq!(ok, "OK");
    let current = s.get("/nodes/pve1/qemu/102/status/current").await.body["data"].clone();
    assert_eq!(current["status"], "running");
    // Deleting the newer snapshot makes the older one the latest.
    let del = s
        .run(
            s.send(s.http.delete(s.url("/nodes/pve1/qemu/102/snapshot/after")))
                .await,
        )
        .await;
    assert_eq!(del, "OK");
    let ok = s
        .run(
            s.post("/nodes/pve1/qemu/102/snapshot/before/rollback", &[])
                .await,
        )
        .await;
    assert_eq!(ok, "OK");
    s.finish().await;
}

#[tokio::test]
async fn parameter_validation_answers_400_with_the_errors_map() {
    let s = sim().await;
    let a = s
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &[
                ("newid", "abc"),
                ("bogus", "1"),
                ("format", "vhd"),
                ("name", "not_a_dns_name"),
                ("bwlimit", "-5"),
                ("full", "true"),
            ],
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body,
        json!({"data": null, "errors": {
            "newid": "type check ('integer') failed - got 'abc'",
            "bogus": "property is not defined in schema and the schema does not allow additional properties",
            "format": "value 'vhd' does not have a value in the enumeration 'raw, qcow2, vmdk'",
            "name": "invalid format - value does not look like a valid DNS name\n",
            "bwlimit": "value must have a minimum value of 0",
            "full": "type check ('boolean') failed - got 'true'",
        }, "message": "Parameter verification failed.\n"})
    );
    let a = s
        .put(
            "/nodes/pve1/qemu/101/resize",
            &[("disk", "scsi0"), ("size", "huge")],
        )
        .await;
    assert_eq!(
        a.body["errors"]["size"],
        "value does not match the regex pattern"
    );
    let a = s
        .put(
            "/nodes/pve1/qemu/101/config",
            &[("net0", "virtio,bridge=vmbr1,tag=5000")],
        )
        .await;
    assert_eq!(
        a.body["errors"]["net0"],
        "invalid format - format error\nnet0.tag: value must have a maximum value of 4094\n"
    );
    let a = s.get("/nodes/pve1/qemu/99/config").await;
    assert_eq!(
        a.body["errors"]["vmid"],
        "invalid format - value does not look like a valid VM ID\n"
    );
    let a = s.get("/cluster/nextid?vmid=101").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["errors"]["vmid"], "VM 101 already exists");
    let a = s.get("/nodes/pve1/storage/nfs1/status").await;
    assert_eq!(a.body["errors"]["storage"], "No such storage.");
    let a = s.get("/nodes/pve1/tasks/garbage/status").await;
    assert_eq!(a.body["errors"]["upid"], "unable to parse worker upid");
    // Path parameters given again with another value are refused.
    let a = s
        .put(
            "/nodes/pve1/qemu/101/config",
            &[("vmid", "102"), ("cores", "2")],
        )
        .await;
    assert_eq!(
        a.body["errors"]["vmid"],
        "duplicate parameter (already defined in URI) with conflicting values!"
    );

    // The reason phrase is Proxmox's, and the journal keeps what was received.
    let (head, body) = raw(
        &s,
        &format!(
            "GET /api2/json/nodes/pve1/qemu/101/config?bogus=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            s.auth
        ),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 400 Parameter verification failed.\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Server: pve-api-daemon/3.0") || head.contains("server: pve-api-daemon/3.0"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json;charset=utf-8"),
        "{head}"
    );
    assert!(body.contains("bogus"), "{body}");
    let entry = s.last_journal();
    assert_eq!(
        entry.template.as_deref(),
        Some("/nodes/{node}/qemu/{vmid}/config")
    );
    assert_eq!(entry.params["bogus"], "1");
    assert_eq!(entry.params["vmid"], "101");
    assert_eq!(entry.status, 400);
    s.finish().await;
}

#[tokio::test]
async fn unknown_paths_are_501_and_bad_tokens_401_with_an_empty_body() {
    let s = sim().await;
    let a = s.get("/foo").await;
    assert_eq!(a.status, 501);
    let (head, _) = raw(
        &s,
        &format!(
            "GET /api2/json/foo HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            s.auth
        ),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 501 Method 'GET /foo' not implemented\r\n"),
        "{head}"
    );
    // In the schema but not simulated: also 501.
    let a = s.get("/nodes/pve1/lxc").await;
    assert_eq!(a.status, 501);

    for auth in [
        "PVEAPIToken=root@pam!proxflow=wrong".to_owned(),
        "PVEAPIToken=root@pam!other=proxflow-dev-secret".to_owned(),
    ] {
        let res = s
            .http
            .get(s.url("/version"))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.text().await.unwrap(), "");
    }
    let (head, body) = raw(
        &s,
        "GET /api2/json/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401 No ticket\r\n"), "{head}");
    assert_eq!(body, "");
    let (head, _) = raw(
        &s,
        "GET /api2/json/version HTTP/1.1\r\nHost: x\r\nAuthorization: PVEAPIToken=root@pam!proxflow=nope\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 401 Authentication failed!\r\n"),
        "{head}"
    );
    // The secret is split from the id on the last '=' and the header may be url-encoded.
    let ok = s
        .http
        .get(s.url("/version"))
        .header(
            "Authorization",
            "PVEAPIToken=root%40pam%21proxflow=proxflow-dev-secret",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    s.finish().await;
}

#[tokio::test]
async fn form_and_json_bodies_digest_and_config_semantics() {
    let s = sim().await;
    let before = s.config(103).await;
    let digest = before["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 40);

    // Form-encoded, synchronous PUT with the right digest.
    let a = s
        .put(
            "/nodes/pve1/qemu/103/config",
            &[
                ("description", "worker three"),
                ("tags", "k8s-node k3s,zeta"),
                ("digest", &digest),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"data": null}));
    let after = s.config(103).await;
    assert_eq!(after["description"], "worker three");
    assert_eq!(after["tags"], "k3s;k8s-node;zeta");
    assert_ne!(after["digest"], before["digest"]);

    // The old digest is now stale.
    let stale = s
        .put(
            "/nodes/pve1/qemu/103/config",
            &[("cores", "6"), ("digest", &digest)],
        )
        .await;
    assert_eq!(stale.status, 500);
    assert_eq!(
        stale.body["message"],
        "checksum mismatch (file change by other user?)\n"
    );

    // JSON body with typed values, asynchronous POST.
    let a = s
        .json(
            reqwest::Method::POST,
            "/nodes/pve1/qemu/103/config",
            json!({"cores": 6, "onboot": true, "memory": "current=12288", "cipassword": "s3cret",
                   "sshkeys": "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIKey%2B%2F%3D%20me%40host"}),
        )
        .await;
    assert_eq!(s.run(a).await, "OK");
    let c = s.config(103).await;
    assert_eq!(c["cores"], json!(6));
    assert_eq!(c["onboot"], json!(1));
    assert_eq!(c["memory"], "12288");
    assert_eq!(c["cipassword"], "**********");
    assert_eq!(
        c["sshkeys"],
        "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIKey%2B%2F%3D%20me%40host"
    );
    let entry = s
        .sim
        .handle()
        .journal()
        .into_iter()
        .rev()
        .find(|e| e.method == "POST")
        .unwrap();
    assert_eq!(
        entry.params["cores"],
        json!(6),
        "the journal keeps JSON types"
    );

    let a = s
        .put("/nodes/pve1/qemu/103/config", &[("balloon", "20000")])
        .await;
    assert_eq!(
        a.body["message"],
        "balloon value too large (must be smaller than assigned memory)\n"
    );
    let a = s
        .put(
            "/nodes/pve1/qemu/103/config",
            &[("delete", "description,tags")],
        )
        .await;
    assert_eq!(a.status, 200);
    let c = s.config(103).await;
    assert!(
        c.get("description").is_none() && c.get("tags").is_none(),
        "{c}"
    );
    let a = s.get("/nodes/pve1/qemu/555/config").await;
    assert_eq!(
        a.body["message"],
        "Configuration file 'nodes/pve1/qemu-server/555.conf' does not exist\n"
    );

    // Resize: grow relative, refuse shrinking.
    let exit = s
        .run(
            s.put(
                "/nodes/pve1/qemu/103/resize",
                &[("disk", "scsi0"), ("size", "+10G")],
            )
            .await,
        )
        .await;
    assert_eq!(exit, "OK");
    assert_eq!(
        s.config(103).await["scsi0"],
        "local-zfs:vm-103-disk-0,size=50G"
    );
    let shrink = s
        .put(
            "/nodes/pve1/qemu/103/resize",
            &[("disk", "scsi0"), ("size", "20G")],
        )
        .await;
    assert_eq!(shrink.body["message"], "shrinking disks is not supported\n");
    s.finish().await;
}

#[tokio::test]
async fn power_destroy_and_task_listing() {
    let s = sim().await;
    let a = s.send(s.http.delete(s.url("/nodes/pve1/qemu/101"))).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.body["message"], "VM 101 is running - destroy failed\n");
    let again = s
        .run(s.post("/nodes/pve1/qemu/101/status/start", &[]).await)
        .await;
    assert_eq!(again, "VM 101 already running");
    // A template's start fails inside its task (tests/fidelity.rs).

    assert_eq!(
        s.run(s.post("/nodes/pve1/qemu/101/status/shutdown", &[]).await)
            .await,
        "OK"
    );
    let current = s.get("/nodes/pve1/qemu/101/status/current").await.body["data"].clone();
    assert_eq!(current["status"], "stopped");
    assert_eq!(current["ha"], json!({"managed": 0}));
    assert_eq!(
        s.run(
            s.send(s.http.delete(s.url("/nodes/pve1/qemu/101?purge=1")))
                .await
        )
        .await,
        "OK"
    );
    assert_eq!(s.sim.handle().vm_ids(), vec![102, 103, 9000]);

    let nextid = s.get("/cluster/nextid").await;
    assert_eq!(
        nextid.body["data"], "100",
        "Perl returns the id as a string"
    );
    let free = s.get("/cluster/nextid?vmid=101").await;
    assert_eq!(free.body["data"], "101", "101 is free again");
    let tasks = s.get("/nodes/pve1/tasks?vmid=101&typefilter=qmstart").await;
    assert_eq!(tasks.body["total"], json!(1));
    assert_eq!(tasks.body["data"][0]["status"], "VM 101 already running");
    let all = s.get("/nodes/pve1/tasks?limit=2").await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(all.body["total"], json!(3));
    assert_eq!(all.body["data"][0]["type"], "qmdestroy", "newest first");

    let resources = s.get("/cluster/resources?type=vm").await.body["data"].clone();
    assert_eq!(resources.as_array().unwrap().len(), 3);
    assert!(
        resources
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "qemu/9000" && r["template"] == json!(1))
    );
    s.finish().await;
}

#[tokio::test]
async fn guest_agent_answers_after_the_boot_delay_with_the_right_address() {
    let s = sim().await;
    assert_eq!(
        s.run(
            s.post("/nodes/pve1/qemu/9000/clone", &[("newid", "140")])
                .await
        )
        .await,
        "OK"
    );
    let a = s
        .put(
            "/nodes/pve1/qemu/140/config",
            &[("ipconfig0", "ip=10.20.0.50/24,gw=10.20.0.1")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let stopped = s.post("/nodes/pve1/qemu/140/agent/ping", &[]).await;
    assert_eq!(stopped.body["message"], "VM 140 is not running\n");

    assert_eq!(
        s.run(s.post("/nodes/pve1/qemu/140/status/start", &[]).await)
            .await,
        "OK"
    );
    let booting = s.post("/nodes/pve1/qemu/140/agent/ping", &[]).await;
    assert_eq!(booting.status, 500);
    assert_eq!(booting.body["message"], "QEMU guest agent is not running\n");

    let deadline = Instant::now() + DEADLINE;
    let interfaces = loop {
        let a = s
            .get("/nodes/pve1/qemu/140/agent/network-get-interfaces")
            .await;
        if a.status == 200 {
            break a.body["data"]["result"].clone();
        }
        assert_eq!(a.body["message"], "QEMU guest agent is not running\n");
        assert!(Instant::now() < deadline, "agent never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let eth0 = interfaces
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .unwrap();
    assert_eq!(eth0["ip-addresses"][0]["ip-address"], "10.20.0.50");
    assert_eq!(eth0["ip-addresses"][0]["prefix"], json!(24));
    let mac = mac_of(&s.config(140).await["net0"]).to_ascii_lowercase();
    assert_eq!(eth0["hardware-address"], json!(mac));

    // A running seed VM answers at once; without ipconfig a DHCP-like lease on its VLAN.
    let a = s
        .put("/nodes/pve1/qemu/102/config", &[("delete", "ipconfig0")])
        .await;
    assert_eq!(a.status, 200);
    let a = s
        .get("/nodes/pve1/qemu/102/agent/network-get-interfaces")
        .await;
    assert_eq!(
        a.body["data"]["result"][1]["ip-addresses"][0]["ip-address"],
        "10.20.0.202"
    );

    // Scripted exec through the control API.
    let res = s
        .http
        .put(format!("{}/_sim/agent/exec", s.sim.base_url()))
        .header("Authorization", &s.auth)
        .body(json!({"rules": [{"command": ["k3s", "kubectl"], "out_data": "Ready", "running_polls": 1}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let a = s
        .json(
            reqwest::Method::POST,
            "/nodes/pve1/qemu/102/agent/exec",
            json!({"command": ["k3s", "kubectl", "get", "nodes"]}),
        )
        .await;
    let pid = a.body["data"]["pid"].as_u64().unwrap();
    let path = format!("/nodes/pve1/qemu/102/agent/exec-status?pid={pid}");
    assert_eq!(s.get(&path).await.body["data"], json!({"exited": 0}));
    assert_eq!(
        s.get(&path).await.body["data"],
        json!({"exited": 1, "exitcode": 0, "out-data": "Ready"})
    );
    let a = s
        .post("/nodes/pve1/qemu/102/agent/exec", &[("command", "uptime")])
        .await;
    assert_eq!(
        a.status, 200,
        "a form gives a one-element command: {}",
        a.body
    );
    s.finish().await;
}

#[tokio::test]
async fn https_fingerprint_is_the_certificate_the_client_sees() {
    let s = sim_with(config(true)).await;
    let pem = s.sim.ca_pem().unwrap();
    let fingerprint = s.sim.fingerprint().unwrap();
    assert!(s.sim.base_url().starts_with("https://127.0.0.1:"));
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .tls_info(true)
        .build()
        .unwrap();
    let res = client
        .get(s.url("/version"))
        .header("Authorization", &s.auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let der = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec();
    let seen: Vec<String> = <sha2::Sha256 as sha2::Digest>::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(fingerprint, seen.join(":"));
    let version = res.json::<Value>().await.unwrap();
    assert_eq!(version["data"]["release"], "8.4");
    let nodes = client
        .get(s.url("/nodes"))
        .header("Authorization", &s.auth)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(nodes["data"][0]["ssl_fingerprint"], json!(fingerprint));
    s.finish().await;
}

#[tokio::test]
async fn faults_and_the_control_api() {
    let s = sim().await;
    let mut faults = Faults {
        fresh_upid_unknown: true,
        ..Faults::default()
    };
    faults.endpoints.insert(
        "POST /nodes/{node}/qemu/{vmid}/clone".into(),
        EndpointFault {
            fail_next: 1,
            ..EndpointFault::default()
        },
    );
    faults.task_failures.insert(
        "qmsnapshot".into(),
        "snapshot feature is not available".into(),
    );
    faults.task_warnings.insert("qmstop".into(), 2);
    s.sim.handle().set_faults(faults);

    let a = s
        .post("/nodes/pve1/qemu/9000/clone", &[("newid", "150")])
        .await;
    assert_eq!(a.status, 500);
    assert_eq!(
        a.body["message"],
        "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout\n"
    );
    let a = s
        .post("/nodes/pve1/qemu/9000/clone", &[("newid", "150")])
        .await;
    assert_eq!(a.status, 200);
    let upid = a.body["data"].as_str().unwrap().to_owned();
    let first = s
        .get(&format!("/nodes/pve1/tasks/{}/status", encode(&upid)))
        .await;
    assert_eq!(first.status, 400);
    assert_eq!(first.body["errors"]["upid"], "no such task");
    assert_eq!(s.wait(&json!(upid)).await["exitstatus"], "OK");

    let snap = s
        .run(
            s.post("/nodes/pve1/qemu/101/snapshot", &[("snapname", "x1")])
                .await,
        )
        .await;
    assert_eq!(snap, "snapshot feature is not available");
    assert!(!s.sim.handle().vm_config(101).unwrap().contains_key("lock"));
    let stop = s
        .run(s.post("/nodes/pve1/qemu/101/status/stop", &[]).await)
        .await;
    assert_eq!(stop, "WARNINGS: 2");

    // The control API needs the token and answers field-level errors.
    let base = s.sim.base_url();
    let res = s
        .http
        .get(format!("{base}/_sim/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = s
        .http
        .put(format!("{base}/_sim/faults"))
        .header("Authorization", &s.auth)
        .body(json!({"endpoints": {"POST /nope": {"error_rate": 0.5}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let errors = res.json::<Value>().await.unwrap()["errors"].clone();
    assert!(
        errors
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("POST /nope")),
        "{errors}"
    );
    let res = s
        .http
        .put(format!("{base}/_sim/load/vm/102"))
        .header("Authorization", &s.auth)
        .body(json!({"cpu": 1.5, "mem": 0.5}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().await.unwrap()["errors"]["cpu"].is_string());

    s.sim.handle().set_vm_load(102, Load::fixed(1.0, 0.5));
    let vm = s.get("/nodes/pve1/qemu/102/status/current").await.body["data"].clone();
    assert_eq!(vm["cpu"], json!(1.0));
    assert_eq!(vm["mem"], json!(4096u64 << 20));
    let node = s.get("/nodes/pve1/status").await.body["data"].clone();
    assert!(node["cpu"].as_f64().unwrap() >= 4.0 / 16.0, "{node}");
    assert!(node["loadavg"][0].is_string());
    let state = s
        .http
        .get(format!("{base}/_sim/state"))
        .header("Authorization", &s.auth)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        state["vms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["vmid"] == 150)
    );
    s.finish().await;
}

#[tokio::test]
async fn bad_scenarios_and_schemas_stop_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let seed =
        proxflow_pve_sim::scenario::SEED.replace("capacity = \"1.8T\"", "capacity = \"much\"");
    std::fs::write(&path, seed).unwrap();
    let err = start(SimConfig {
        scenario: Some(path),
        ..config(false)
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("storage[1] (local-zfs).capacity"), "{err}");

    let err = start(SimConfig {
        schema: Some(dir.path().join("missing.json")),
        ..config(false)
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing.json"), "{err}");
}

#[tokio::test]
async fn time_scale_zero_finishes_tasks_at_once_but_still_asynchronously() {
    let s = sim_with(SimConfig {
        time_scale: 0.0,
        durations: TaskDurations::default(),
        ..config(false)
    })
    .await;
    let a = s
        .post("/nodes/pve1/qemu/9000/clone", &[("newid", "160")])
        .await;
    assert_eq!(
        a.status, 200,
        "the UPID comes back before the task ends: {}",
        a.body
    );
    assert_eq!(s.wait(&a.body["data"]).await["exitstatus"], "OK");
    assert_eq!(
        s.run(s.post("/nodes/pve1/qemu/160/status/start", &[]).await)
            .await,
        "OK"
    );
    // The 5 s agent boot delay is scaled away too.
    let ping = s.post("/nodes/pve1/qemu/160/agent/ping", &[]).await;
    assert_eq!(ping.body, json!({"data": {"result": {}}}));
    let apt = s.run(s.post("/nodes/pve1/apt/update", &[]).await).await;
    assert_eq!(apt, "OK");
    let updates = s.get("/nodes/pve1/apt/update").await.body["data"].clone();
    assert!(
        updates
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["Package"] == "proxmox-kernel-6.8")
    );
    s.finish().await;
}
