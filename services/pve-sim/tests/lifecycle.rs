//! What the lifecycle jobs read and do: the host-config export's reads (storage config, firewall,
//! access, pools, DNS/hosts/time, APT repositories, replication and backup jobs) answered from
//! the seed and byte-identical when nothing changed, a VM created from a config and used like any
//! other, disks whose SMART health a test can fail, and RRD history over a month. Every answer is
//! checked against the official schema when each test finishes.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::*;

/// The reads of a host-config export.
const EXPORT_PATHS: [&str; 23] = [
    "/storage",
    "/storage/local-zfs",
    "/cluster/firewall/options",
    "/cluster/firewall/rules",
    "/cluster/firewall/groups",
    "/cluster/firewall/aliases",
    "/cluster/firewall/ipset",
    "/nodes/pve1/firewall/options",
    "/nodes/pve1/firewall/rules",
    "/nodes/pve1/qemu/101/firewall/options",
    "/nodes/pve1/qemu/101/firewall/rules",
    "/access/users?full=1",
    "/access/users/root@pam/token",
    "/access/groups",
    "/access/roles",
    "/access/acl",
    "/access/domains",
    "/pools",
    "/pools/k3s",
    "/cluster/options",
    "/nodes/pve1/dns",
    "/nodes/pve1/hosts",
    "/nodes/pve1/apt/repositories",
];

async fn raw_text(s: &Sim, path: &str) -> (u16, String) {
    let res = s
        .http
        .get(s.url(path))
        .header("Authorization", &s.auth)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {key}={value} in {list}"))
}

#[tokio::test]
async fn the_export_reads_answer_from_the_seed_byte_identically_twice() {
    let s = sim().await;
    for path in EXPORT_PATHS
        .iter()
        .chain(&["/cluster/replication", "/cluster/backup"])
    {
        let (status, first) = raw_text(&s, path).await;
        assert_eq!(status, 200, "GET {path}: {first}");
        let (_, second) = raw_text(&s, path).await;
        assert_eq!(first, second, "GET {path} changed between two reads");
    }
    let storages = s.get("/storage").await.body["data"].clone();
    let zfs = find(&storages, "storage", "local-zfs");
    assert_eq!(
        (&zfs["type"], &zfs["pool"], &zfs["content"]),
        (
            &json!("zfspool"),
            &json!("rpool/data"),
            &json!("images,rootdir")
        )
    );
    assert_eq!(find(&storages, "storage", "local")["path"], "/var/lib/vz");
    let dir_only = s.get("/storage?type=dir").await.body["data"].clone();
    assert_eq!(dir_only.as_array().unwrap().len(), 1, "{dir_only}");
    assert_eq!(s.get("/storage/nosuch").await.status, 500);

    let rules = s.get("/cluster/firewall/rules").await.body["data"].clone();
    let ports: Vec<&Value> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["dport"])
        .collect();
    assert_eq!(ports, [&json!("22"), &json!("8006"), &Value::Null]);
    assert_eq!(rules[0]["pos"], 0);
    assert_eq!(rules[2]["macro"], "Ping");
    let aliases = s.get("/cluster/firewall/aliases").await.body["data"].clone();
    assert_eq!(
        find(&aliases, "name", "net_vmbr0")["cidr"],
        "192.168.1.0/24"
    );
    let vm_rules = s.get("/nodes/pve1/qemu/101/firewall/rules").await.body["data"].clone();
    assert_eq!(vm_rules[0]["dport"], "6443");
    let options = s.get("/nodes/pve1/qemu/9000/firewall/options").await;
    assert_eq!(options.body["data"], json!({}), "no rules, no .fw file");
    assert_eq!(
        s.get("/cluster/firewall/options").await.body["data"]["enable"],
        1
    );

    // Token ids only: no secret anywhere in the access answers.
    let users = s.get("/access/users?full=1").await.body["data"].clone();
    let root = find(&users, "userid", "root@pam");
    assert_eq!(root["tokens"][0]["tokenid"], "proxflow");
    let monitoring = find(&users, "userid", "monitoring@pve");
    assert_eq!(monitoring["tokens"][0]["tokenid"], "prometheus");
    assert_eq!(monitoring["groups"], "auditors");
    let plain = s.get("/access/users").await.body["data"].clone();
    assert!(plain[0].get("tokens").is_none(), "tokens only with full=1");
    for path in ["/access/users?full=1", "/access/users/root@pam/token"] {
        let (_, text) = raw_text(&s, path).await;
        assert!(!text.contains(s.sim.token_secret()), "{path}: {text}");
    }
    let unknown = s.get("/access/users/nobody@pve/token").await;
    assert_eq!(unknown.status, 500, "{}", unknown.body);
    let groups = s.get("/access/groups").await.body["data"].clone();
    assert_eq!(find(&groups, "groupid", "admins")["users"], "ops@pam");
    let roles = s.get("/access/roles").await.body["data"].clone();
    assert!(
        find(&roles, "roleid", "PVEAuditor")["privs"]
            .as_str()
            .unwrap()
            .contains("VM.Audit")
    );
    let acl = s.get("/access/acl").await.body["data"].clone();
    assert!(acl.as_array().unwrap().iter().any(|a| a["type"] == "token"));

    let pools = s.get("/pools").await.body["data"].clone();
    assert_eq!(pools.as_array().unwrap().len(), 2);
    let k3s = s.get("/pools/k3s").await.body["data"].clone();
    let members: Vec<&Value> = k3s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["vmid"])
        .collect();
    assert_eq!(members, [&json!(101), &json!(102), &json!(103)]);
    let with_members = s.get("/pools?poolid=templates&type=storage").await.body["data"].clone();
    assert_eq!(with_members[0]["members"][0]["storage"], "local-zfs");
    assert_eq!(s.get("/pools/nosuch").await.status, 500);

    let dns = s.get("/nodes/pve1/dns").await.body["data"].clone();
    assert_eq!(
        dns,
        json!({"search": "lan", "dns1": "192.168.1.1", "dns2": "9.9.9.9"})
    );
    let hosts = s.get("/nodes/pve1/hosts").await.body["data"].clone();
    assert!(
        hosts["data"]
            .as_str()
            .unwrap()
            .contains("192.168.1.10 pve1.lan pve1"),
        "{hosts}"
    );
    let time = s.get("/nodes/pve1/time").await.body["data"].clone();
    assert_eq!(time["timezone"], "Europe/Berlin");
    assert_eq!(
        time["localtime"].as_i64().unwrap() - time["time"].as_i64().unwrap(),
        3600
    );
    let repos = s.get("/nodes/pve1/apt/repositories").await.body["data"].clone();
    assert!(repos["files"].as_array().unwrap().len() >= 3);
    let jobs = s.get("/cluster/backup").await.body["data"].clone();
    assert_eq!(jobs[0]["id"], "backup-weekly-k3s");
    assert_eq!(jobs[0]["schedule"], "sun 01:30");
    assert_eq!(s.get("/cluster/replication").await.body["data"], json!([]));
    s.finish().await;
}

#[tokio::test]
async fn a_created_vm_boots_answers_its_agent_and_is_destroyed() {
    let s = sim().await;
    let a = s
        .post(
            "/nodes/pve1/qemu",
            &[
                ("vmid", "200"),
                ("name", "restore-drill"),
                ("memory", "4096"),
                ("cores", "2"),
                ("sockets", "1"),
                ("cpu", "host"),
                ("ostype", "l26"),
                ("agent", "1"),
                ("scsihw", "virtio-scsi-pci"),
                ("scsi0", "local-zfs:32,discard=on"),
                ("ide2", "local-zfs:cloudinit"),
                ("net0", "virtio,bridge=vmbr1,tag=20,link_down=1"),
                ("net1", "virtio,bridge=vmbr2"),
                ("tags", "drill"),
                ("pool", "k3s"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["data"].as_str().unwrap().contains(":qmcreate:200:"));
    // The config is written before the task runs, locked until it ends.
    assert_eq!(s.config(200).await["lock"], "create");
    assert_eq!(s.run(a).await, "OK");
    let config = s.config(200).await;
    assert!(config.get("lock").is_none(), "{config}");
    assert_eq!(
        config["scsi0"],
        "local-zfs:vm-200-disk-0,discard=on,size=32G"
    );
    assert!(
        config["net0"].as_str().unwrap().contains(",link_down=1"),
        "{config}"
    );
    assert!(mac_of(&config["net0"]).starts_with("BC:24:11:"));
    assert!(config["smbios1"].as_str().unwrap().starts_with("uuid="));
    assert_eq!(config["boot"], "order=scsi0;net0");
    let members = s.get("/pools/k3s").await.body["data"]["members"].clone();
    assert!(members.as_array().unwrap().iter().any(|m| m["vmid"] == 200));

    assert_eq!(
        s.run(s.post("/nodes/pve1/qemu/200/status/start", &[]).await)
            .await,
        "OK"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ping = s.post("/nodes/pve1/qemu/200/agent/ping", &[]).await;
        if ping.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent never answered: {}",
            ping.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = s.get("/nodes/pve1/qemu/200/status/current").await;
    assert_eq!(status.body["data"]["status"], "running");
    assert_eq!(
        s.run(s.post("/nodes/pve1/qemu/200/status/stop", &[]).await)
            .await,
        "OK"
    );
    let a = s
        .form(reqwest::Method::DELETE, "/nodes/pve1/qemu/200", &[])
        .await;
    assert_eq!(s.run(a).await, "OK");
    assert_eq!(s.get("/nodes/pve1/qemu/200/config").await.status, 500);
    let state = s.state().await;
    assert!(
        !state["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().contains("vm-200")),
        "{state}"
    );
    s.finish().await;
}

#[tokio::test]
async fn creating_on_a_taken_vmid_or_with_start_is_like_proxmox() {
    let s = sim().await;
    let a = s
        .post("/nodes/pve1/qemu", &[("vmid", "101"), ("name", "dup")])
        .await;
    assert_eq!(a.status, 500, "{}", a.body);
    assert_eq!(
        a.body["message"],
        "unable to create VM 101 - VM 101 already exists on node 'pve1'\n"
    );
    // A bad config key is the schema's 400, and nothing is created.
    let a = s
        .post("/nodes/pve1/qemu", &[("vmid", "201"), ("cores", "zero")])
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(s.get("/nodes/pve1/qemu/201/config").await.status, 500);
    // start=1 boots it inside the task.
    let a = s
        .post(
            "/nodes/pve1/qemu",
            &[("vmid", "202"), ("memory", "1024"), ("start", "1")],
        )
        .await;
    assert_eq!(s.run(a).await, "OK");
    let status = s.get("/nodes/pve1/qemu/202/status/current").await;
    assert_eq!(status.body["data"]["status"], "running");
    let a = s
        .post("/nodes/pve1/qemu", &[("vmid", "203"), ("pool", "nosuch")])
        .await;
    assert_eq!(a.status, 500, "{}", a.body);
    s.finish().await;
}

#[tokio::test]
async fn a_disk_made_to_fail_shows_in_the_list_and_in_smart() {
    let s = sim().await;
    let list = s.get("/nodes/pve1/disks/list").await.body["data"].clone();
    assert_eq!(find(&list, "devpath", "/dev/nvme1n1")["health"], "PASSED");
    assert_eq!(find(&list, "devpath", "/dev/nvme1n1")["wearout"], 97);
    let a = s
        .control(
            reqwest::Method::PUT,
            "/_sim/host/disk",
            Some(json!({"devpath": "/dev/nvme1n1", "health": "FAILED", "wearout": 12})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["disk"]["health"], "FAILED");
    let list = s.get("/nodes/pve1/disks/list").await.body["data"].clone();
    let disk = find(&list, "devpath", "/dev/nvme1n1");
    assert_eq!(
        (&disk["health"], &disk["wearout"]),
        (&json!("FAILED"), &json!(12))
    );
    assert_eq!(find(&list, "devpath", "/dev/nvme0n1")["health"], "PASSED");
    let smart = s
        .get(&format!(
            "/nodes/pve1/disks/smart?disk={}",
            encode("/dev/nvme1n1")
        ))
        .await
        .body["data"]
        .clone();
    assert_eq!(smart["health"], "FAILED");
    assert_eq!(smart["wearout"], 12);
    let text = smart["text"].as_str().unwrap();
    assert!(
        text.contains("Percentage Used:                    88%"),
        "{text}"
    );
    assert!(text.contains("test result: FAILED!"), "{text}");
    let only = s
        .get(&format!(
            "/nodes/pve1/disks/smart?disk={}&healthonly=1",
            encode("/dev/nvme1n1")
        ))
        .await;
    assert_eq!(only.body["data"], json!({"health": "FAILED"}));
    // Bad values and unknown disks are refused, naming the field.
    let bad = s
        .control(
            reqwest::Method::PUT,
            "/_sim/host/disk",
            Some(json!({"devpath": "/dev/nvme1n1", "health": "MEH"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body["errors"]["health"].is_string(), "{}", bad.body);
    let bad = s
        .control(
            reqwest::Method::PUT,
            "/_sim/host/disk",
            Some(json!({"devpath": "/dev/nvme1n1", "wearout": 101})),
        )
        .await;
    assert!(bad.body["errors"]["wearout"].is_string(), "{}", bad.body);
    let missing = s
        .control(
            reqwest::Method::PUT,
            "/_sim/host/disk",
            Some(json!({"devpath": "/dev/sdz", "health": "FAILED"})),
        )
        .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    s.finish().await;
}

#[tokio::test]
async fn a_month_of_rrd_history_spans_35_days_to_now_and_follows_the_load_curve() {
    let s = sim().await;
    // time_scale is 1 in the test config: curve seconds are real seconds, so a ramp over the
    // last 30 days is history now (the curve starts when set; earlier rows hold its first value).
    s.sim.handle().set_vm_load(
        101,
        serde_json::from_value(json!({"cpu": [[0, 0.1]], "mem": 0.4})).unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for path in [
        "/nodes/pve1/rrddata?timeframe=month&cf=AVERAGE",
        "/nodes/pve1/qemu/101/rrddata?timeframe=month&cf=AVERAGE",
        "/nodes/pve1/qemu/101/rrddata?timeframe=month&cf=MAX",
    ] {
        let rows = s.get(path).await.body["data"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 70, "{path}");
        let times: Vec<i64> = rows.iter().map(|r| r["time"].as_i64().unwrap()).collect();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] == 43_200),
            "{path}: {times:?}"
        );
        let newest = *times.last().unwrap();
        assert!(
            newest <= now + 1 && newest > now - 43_200,
            "{path}: newest {newest}, now {now}"
        );
        assert_eq!(newest % 43_200, 0);
        assert!(times[0] >= now - 70 * 43_200, "{path}");
        assert!(rows.iter().all(|r| r["cpu"].as_f64().is_some()), "{path}");
    }
    s.finish().await;
}

#[tokio::test]
async fn rrd_history_replays_the_load_curve_and_max_is_at_least_average() {
    // At this scale 50 ms of real time are 500 simulated seconds: the ramp below is over, so the
    // newest row shows the high load and rows an hour back the low one from before the ramp.
    let s = sim_with(proxflow_pve_sim::SimConfig {
        time_scale: 0.0001,
        ..config(false)
    })
    .await;
    s.sim.handle().set_vm_load(
        101,
        serde_json::from_value(json!({"cpu": [[0, 0.1], [100, 0.9]], "mem": 0.4})).unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cpu = |rows: &Value, i: usize| rows[i]["cpu"].as_f64().unwrap();
    let avg = s
        .get("/nodes/pve1/qemu/101/rrddata?timeframe=hour&cf=AVERAGE")
        .await
        .body["data"]
        .clone();
    let max = s
        .get("/nodes/pve1/qemu/101/rrddata?timeframe=hour&cf=MAX")
        .await
        .body["data"]
        .clone();
    assert!((cpu(&avg, 69) - 0.9).abs() < 0.01, "newest {}", avg[69]);
    assert!((cpu(&avg, 0) - 0.1).abs() < 0.01, "oldest {}", avg[0]);
    for i in 0..70 {
        assert!(cpu(&max, i) >= cpu(&avg, i) - 1e-9, "row {i}");
    }
    // The host's history carries the VM's load too.
    let host = s.get("/nodes/pve1/rrddata?timeframe=hour").await.body["data"].clone();
    assert!(
        cpu(&host, 69) > cpu(&host, 0),
        "{} vs {}",
        host[69],
        host[0]
    );
    s.finish().await;
}
