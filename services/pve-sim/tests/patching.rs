//! What a patching service needs from the simulator, over real HTTP: the guests' package state
//! behind the agent's `exec` (apt's plans and upgrades, holds, reboot-required, kernels), VM
//! reboots of every kind, snapshots and clones carrying packages, the host's upgrade (control
//! API), changelogs and versions, and a node reboot with its 503 window and ordered VM starts.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proxflow_pve_sim::scenario::SEED;
use proxflow_pve_sim::{SimConfig, start};
use reqwest::Method;
use serde_json::{Value, json};

mod support;

use support::*;

const UPGRADE: [&str; 7] = [
    "env",
    "DEBIAN_FRONTEND=noninteractive",
    "apt-get",
    "-y",
    "-o",
    "Dpkg::Options::=--force-confold",
    "dist-upgrade",
];
const SIMULATE_ALL: [&str; 5] = [
    "apt-get",
    "-s",
    "-o",
    "APT::Ignore-Hold=true",
    "dist-upgrade",
];
const SIMULATE: [&str; 3] = ["apt-get", "-s", "dist-upgrade"];
const REBOOT_REQUIRED: [&str; 3] = ["test", "-f", "/var/run/reboot-required"];
const NOTE: &str = "NOTE: This is only a simulation!\n      apt-get needs root privileges for real execution.\n      Keep also in mind that locking is deactivated,\n      so don't depend on the relevance to the real current situation!\n";
const RESOLVING: &str = "Reading package lists...\nBuilding dependency tree...\nReading state information...\nCalculating upgrade...\n";

async fn start_exec(s: &Sim, vmid: u32, argv: &[&str]) -> u64 {
    let a = s
        .json(
            Method::POST,
            &format!("/nodes/pve1/qemu/{vmid}/agent/exec"),
            json!({ "command": argv }),
        )
        .await;
    assert_eq!(a.status, 200, "{argv:?}: {}", a.body);
    a.body["data"]["pid"].as_u64().unwrap()
}

/// Polls `exec-status` until the command exited; answers its final status.
async fn exec_result(s: &Sim, vmid: u32, pid: u64) -> Value {
    let path = format!("/nodes/pve1/qemu/{vmid}/agent/exec-status?pid={pid}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = s.get(&path).await;
        assert_eq!(a.status, 200, "{}", a.body);
        if a.body["data"]["exited"] == json!(1) {
            return a.body["data"].clone();
        }
        assert!(Instant::now() < deadline, "pid {pid} never exited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn exec(s: &Sim, vmid: u32, argv: &[&str]) -> Value {
    let pid = start_exec(s, vmid, argv).await;
    exec_result(s, vmid, pid).await
}

fn out(status: &Value) -> &str {
    status["out-data"].as_str().unwrap_or_default()
}

async fn set_updates(s: &Sim, vmid: u32, updates: Value) -> Answer {
    s.control(
        Method::PUT,
        &format!("/_sim/guest/{vmid}/updates"),
        Some(json!({ "updates": updates })),
    )
    .await
}

fn vm_state(state: &Value, vmid: u64) -> Value {
    state["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vmid"] == vmid)
        .unwrap_or_else(|| panic!("VM {vmid} not in {state}"))
        .clone()
}

async fn packages(s: &Sim, vmid: u64) -> Value {
    vm_state(&s.state().await, vmid)["packages"].clone()
}

fn names(pending: &Value) -> Vec<String> {
    pending
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["package"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls until the VM's agent answers.
async fn wait_agent(s: &Sim, vmid: u32) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = s
            .post(&format!("/nodes/pve1/qemu/{vmid}/agent/ping"), &[])
            .await;
        if a.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent of {vmid} never up: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dpkg(s: &Sim, vmid: u32) -> String {
    let status = exec(s, vmid, &["dpkg-query", "-W"]).await;
    assert_eq!(status["exitcode"], 0);
    out(&status).to_owned()
}

async fn uname(s: &Sim, vmid: u32) -> String {
    out(&exec(s, vmid, &["uname", "-r"]).await).to_owned()
}

/// The seed with `edit` applied, as a scenario file.
fn scenario(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

async fn start_error(text: &str) -> String {
    let file = scenario(text);
    let config = SimConfig {
        scenario: Some(file.path().to_owned()),
        ..config(false)
    };
    match start(config).await {
        Ok(_) => panic!("scenario accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// The seed without VM 103's package state.
fn seed_without_103_packages() -> String {
    let from = SEED.find("[[guest_packages]]\nvmid = 103\n").unwrap();
    let to = from + SEED[from..].find("\n# Pending security updates").unwrap();
    format!("{}{}", &SEED[..from], &SEED[to..])
}

#[tokio::test]
async fn scenario_package_errors_name_the_field_and_a_new_package_is_allowed() {
    let update = |body: &str| format!("{SEED}\n[[guest_update]]\n{body}\n");
    let cases = [
        (
            update("vmid = 555\npackage = \"curl\"\nversion = \"1\"\narchive = \"jammy-updates\""),
            "guest_update[4].vmid: VM 555 has no guest_packages",
        ),
        (
            format!("{SEED}\n[[guest_packages]]\nvmid = 555\nkernel = \"5.15.0-118-generic\"\n"),
            "guest_packages[4].vmid: VM 555 is not in the scenario",
        ),
        (
            format!("{SEED}\n[[guest_packages]]\nvmid = 101\nkernel = \"5.15.0-118-generic\"\n"),
            "guest_packages[4].vmid: VM 101 has package state already",
        ),
        (
            update("package = \"curl\"\nversion = \"\"\narchive = \"jammy-updates\""),
            "guest_update[4] (vmid 101).version: must not be empty",
        ),
        (
            update("package = \"curl\"\nremove = true"),
            "guest_update[4] (vmid 101).remove: curl is not installed",
        ),
        (
            update("package = \"openssl\"\nversion = \"9\"\narchive = \"jammy-updates\""),
            "guest_update[4] (vmid 101).package: openssl has another pending update",
        ),
        (
            update("package = \"Curl\"\nversion = \"1\"\narchive = \"jammy-updates\""),
            "guest_update[4] (vmid 101).package: 'Curl' is not a package name",
        ),
        (
            SEED.replace(
                "kernel_release = \"6.8.12-11-pve\"",
                "kernel_release = \"\"",
            ),
            "host_upgrade.kernel_release: must not be empty when given",
        ),
        (
            SEED.replace("kernel = \"5.15.0-118-generic\"", "kernel = \" \""),
            "guest_packages[0].kernel: must not be empty",
        ),
        (
            update("pakage = \"curl\"\nversion = \"1\"\narchive = \"jammy-updates\""),
            "pakage",
        ),
    ];
    for (text, expected) in cases {
        let e = start_error(&text).await;
        assert!(e.contains(expected), "{expected}\n  not in: {e}");
        assert!(e.starts_with("invalid scenario "), "{e}");
    }
    // A package that is not installed is a new one.
    let file = scenario(&update(
        "package = \"curl\"\nversion = \"7.81.0-1ubuntu1.16\"\narchive = \"jammy-security\"",
    ));
    let s = sim_with(SimConfig {
        scenario: Some(file.path().to_owned()),
        ..config(false)
    })
    .await;
    let plan = exec(&s, 101, &SIMULATE_ALL).await;
    assert!(
        out(&plan).contains("Inst curl (7.81.0-1ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n"),
        "{}",
        out(&plan)
    );
    s.finish().await;
}

#[tokio::test]
async fn the_simulation_lists_every_pending_update_and_a_hold_keeps_one_back() {
    let s = sim().await;
    let a = set_updates(
        &s,
        101,
        json!([
            {"package": "openssl", "version": "3.0.2-0ubuntu1.16", "archive": "jammy-security"},
            {"package": "libssl3", "version": "3.0.2-0ubuntu1.16", "archive": "jammy-security"},
            {"package": "linux-image-5.15.0-119-generic", "version": "5.15.0-119.129",
             "archive": "jammy-security", "kernel": "5.15.0-119-generic"},
            {"package": "base-files", "version": "12ubuntu4.7", "archive": "jammy-updates"},
            {"package": "openssh-server", "remove": true},
        ]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        names(&a.body["updates"]),
        [
            "openssl",
            "libssl3",
            "linux-image-5.15.0-119-generic",
            "base-files",
            "openssh-server"
        ]
    );
    let plan = exec(&s, 101, &SIMULATE_ALL).await;
    assert_eq!(plan["exitcode"], 0);
    let expected = format!(
        "{NOTE}{RESOLVING}\
         The following packages will be REMOVED:\n  openssh-server\n\
         The following NEW packages will be installed:\n  linux-image-5.15.0-119-generic\n\
         The following packages will be upgraded:\n  base-files libssl3 openssl\n\
         3 upgraded, 1 newly installed, 1 to remove and 0 not upgraded.\n\
         Inst openssl [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
         Inst libssl3 [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
         Inst linux-image-5.15.0-119-generic (5.15.0-119.129 Ubuntu:22.04/jammy-security [amd64])\n\
         Inst base-files [12ubuntu4.6] (12ubuntu4.7 Ubuntu:22.04/jammy-updates [amd64])\n\
         Remv openssh-server [1:8.9p1-3ubuntu0.10]\n\
         Conf openssl (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
         Conf libssl3 (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
         Conf linux-image-5.15.0-119-generic (5.15.0-119.129 Ubuntu:22.04/jammy-security [amd64])\n\
         Conf base-files (12ubuntu4.7 Ubuntu:22.04/jammy-updates [amd64])\n"
    );
    assert_eq!(out(&plan), expected);
    // Without the hold option the plan is the same while nothing is held.
    assert_eq!(out(&exec(&s, 101, &SIMULATE).await), expected);

    let hold = exec(&s, 101, &["apt-mark", "hold", "openssl", "libssl3"]).await;
    assert_eq!(
        (hold["exitcode"].clone(), out(&hold)),
        (json!(0), "openssl set on hold.\nlibssl3 set on hold.\n")
    );
    let plain = exec(&s, 101, &SIMULATE).await;
    let text = out(&plain);
    assert!(
        text.contains("The following packages have been kept back:\n  libssl3 openssl\n"),
        "{text}"
    );
    assert!(
        text.contains("1 upgraded, 1 newly installed, 1 to remove and 2 not upgraded.\n"),
        "{text}"
    );
    assert!(
        !text.contains("Inst openssl") && !text.contains("Inst libssl3"),
        "{text}"
    );
    let all = exec(&s, 101, &SIMULATE_ALL).await;
    assert!(
        out(&all).contains("Inst openssl [3.0.2-0ubuntu1.15]"),
        "{}",
        out(&all)
    );
    assert_eq!(
        packages(&s, 101).await["held"],
        json!(["libssl3", "openssl"])
    );

    let missing = exec(&s, 101, &["apt-mark", "hold", "nosuch"]).await;
    assert_eq!(missing["exitcode"], 100);
    assert_eq!(missing["err-data"], "E: Unable to locate package nosuch\n");
    let unhold = exec(&s, 101, &["apt-mark", "unhold", "openssl"]).await;
    assert_eq!(out(&unhold), "Canceled hold on openssl.\n");
    assert_eq!(packages(&s, 101).await["held"], json!(["libssl3"]));
    assert!(out(&exec(&s, 101, &SIMULATE).await).contains("Inst openssl ["));

    // Another VM's plan is its own: the seed's four security updates.
    let other = exec(&s, 102, &SIMULATE_ALL).await;
    assert!(
        out(&other).contains(
            "The following packages will be upgraded:\n  libc-bin libc6 libssl3 openssl\n"
        ),
        "{}",
        out(&other)
    );
    s.finish().await;
}

#[tokio::test]
async fn the_small_commands_answer_like_the_real_tools() {
    let s = sim().await;
    let update = exec(&s, 101, &["apt-get", "update"]).await;
    assert_eq!(update["exitcode"], 0);
    assert!(
        out(&update).starts_with("Hit:1 http://archive.ubuntu.com/ubuntu jammy InRelease\n"),
        "{}",
        out(&update)
    );
    assert!(out(&update).ends_with("Reading package lists...\n"));

    let listed = dpkg(&s, 101).await;
    let lines: Vec<&str> = listed.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted);
    assert_eq!(lines[0], "base-files\t12ubuntu4.6");
    assert!(lines.contains(&"openssl\t3.0.2-0ubuntu1.15"), "{listed}");
    assert!(
        lines.contains(&"linux-image-generic\t5.15.0.118.118"),
        "{listed}"
    );
    assert_eq!(uname(&s, 101).await, "5.15.0-118-generic\n");
    let flag = exec(&s, 101, &REBOOT_REQUIRED).await;
    assert_eq!(flag["exitcode"], 1);
    assert!(flag.get("out-data").is_none(), "{flag}");

    // Anything else keeps the agent's default; a scripted rule wins over the package model.
    let other = exec(&s, 101, &["apt-get", "upgrade"]).await;
    assert_eq!(other, json!({"exited": 1, "exitcode": 0}));
    let a = s
        .control(
            Method::PUT,
            "/_sim/agent/exec",
            Some(json!({"rules": [{"vmid": 101, "command": ["uname"], "out_data": "scripted\n"}]})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(uname(&s, 101).await, "scripted\n");
    assert_eq!(uname(&s, 102).await, "5.15.0-118-generic\n");
    s.finish().await;
}

#[tokio::test]
async fn the_upgrade_takes_its_time_applies_in_order_and_asks_for_a_reboot() {
    let mut config = config(false);
    config.durations.guest_upgrade = Duration::from_secs(1);
    let s = sim_with(config).await;
    let hold = exec(&s, 101, &["apt-mark", "hold", "libc-bin"]).await;
    assert_eq!(hold["exitcode"], 0);

    let started = Instant::now();
    let pid = start_exec(&s, 101, &UPGRADE).await;
    let path = format!("/nodes/pve1/qemu/101/agent/exec-status?pid={pid}");
    // Time, not the number of reads, ends it; meanwhile dpkg's lock is taken.
    for _ in 0..5 {
        let a = s.get(&path).await;
        if started.elapsed() < Duration::from_millis(900) {
            assert_eq!(a.body["data"], json!({"exited": 0}));
        }
    }
    let second = exec(&s, 101, &UPGRADE).await;
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(second["exitcode"], 100, "{second}");
        assert!(
            second["err-data"]
                .as_str()
                .unwrap()
                .starts_with("E: Could not get lock /var/lib/dpkg/lock-frontend."),
            "{second}"
        );
    }
    let done = exec_result(&s, 101, pid).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(done["exitcode"], 0, "{done}");
    let text = out(&done);
    assert!(
        text.contains("The following packages have been kept back:\n  libc-bin\n"),
        "{text}"
    );
    assert!(
        text.contains("Unpacking openssl (3.0.2-0ubuntu1.16) over (3.0.2-0ubuntu1.15) ...\nSetting up openssl (3.0.2-0ubuntu1.16) ..."),
        "{text}"
    );
    let listed = dpkg(&s, 101).await;
    for line in [
        "openssl\t3.0.2-0ubuntu1.16",
        "libssl3\t3.0.2-0ubuntu1.16",
        "libc6\t2.35-0ubuntu3.9",
        "libc-bin\t2.35-0ubuntu3.8",
    ] {
        assert!(listed.lines().any(|l| l == line), "{line} in {listed}");
    }
    assert_eq!(exec(&s, 101, &REBOOT_REQUIRED).await["exitcode"], 0);
    let p = packages(&s, 101).await;
    assert_eq!(names(&p["pending"]), ["libc-bin"]);
    assert_eq!(
        (&p["upgrades"], &p["reboot_required"], &p["reboots"]),
        (&json!(1), &json!(true), &json!(0))
    );
    // The next run has nothing but the held package: it changes nothing.
    let again = exec(&s, 101, &UPGRADE).await;
    assert_eq!(again["exitcode"], 0);
    assert!(
        out(&again).contains("0 upgraded, 0 newly installed, 0 to remove and 1 not upgraded.\n"),
        "{}",
        out(&again)
    );
    assert_eq!(packages(&s, 101).await["upgrades"], 1);
    // Other VMs are untouched.
    assert_eq!(names(&packages(&s, 102).await["pending"]).len(), 4);
    s.finish().await;
}

#[tokio::test]
async fn a_failing_package_stops_the_upgrade_and_the_rest_stays_pending() {
    let s = sim().await;
    let plan = json!([
        {"package": "openssl", "version": "3.0.2-0ubuntu1.16", "archive": "jammy-security"},
        {"package": "libssl3", "version": "3.0.2-0ubuntu1.16", "archive": "jammy-security", "fail": true},
        {"package": "libc6", "version": "2.35-0ubuntu3.9", "archive": "jammy-security", "reboot": true},
    ]);
    assert_eq!(set_updates(&s, 102, plan).await.status, 200);
    let failed = exec(&s, 102, &UPGRADE).await;
    assert_eq!(failed["exitcode"], 100, "{failed}");
    assert_eq!(
        failed["err-data"],
        "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
    );
    assert!(
        out(&failed).contains("dpkg: error processing package libssl3 (--configure):\n"),
        "{}",
        out(&failed)
    );
    let listed = dpkg(&s, 102).await;
    assert!(listed.contains("openssl\t3.0.2-0ubuntu1.16\n"), "{listed}");
    assert!(listed.contains("libssl3\t3.0.2-0ubuntu1.15\n"), "{listed}");
    assert!(listed.contains("libc6\t2.35-0ubuntu3.8\n"), "{listed}");
    let p = packages(&s, 102).await;
    assert_eq!(names(&p["pending"]), ["libssl3", "libc6"]);
    assert_eq!(
        (&p["upgrades"], &p["reboot_required"]),
        (&json!(1), &json!(false))
    );

    // The plan changes mid-run: the fixed package goes through, libc6 asks for a reboot.
    let fixed = json!([
        {"package": "libssl3", "version": "3.0.2-0ubuntu1.16", "archive": "jammy-security"},
        {"package": "libc6", "version": "2.35-0ubuntu3.9", "archive": "jammy-security", "reboot": true},
    ]);
    assert_eq!(set_updates(&s, 102, fixed).await.status, 200);
    assert_eq!(exec(&s, 102, &UPGRADE).await["exitcode"], 0);
    let p = packages(&s, 102).await;
    assert_eq!(p["pending"], json!([]));
    assert_eq!(
        (&p["upgrades"], &p["reboot_required"]),
        (&json!(2), &json!(true))
    );
    assert_eq!(p["installed"]["libc6"], "2.35-0ubuntu3.9");
    s.finish().await;
}

#[tokio::test]
async fn every_kind_of_vm_reboot_boots_the_newest_kernel_and_clears_the_flag() {
    let s = sim().await;
    let kernel = |n: u32| {
        json!([
            {"package": format!("linux-image-5.15.0-{n}-generic"), "version": format!("5.15.0-{n}.129"),
             "archive": "jammy-security", "kernel": format!("5.15.0-{n}-generic")},
            {"package": "linux-image-generic", "version": format!("5.15.0.{n}.{n}"), "archive": "jammy-security"},
        ])
    };
    assert_eq!(set_updates(&s, 103, kernel(119)).await.status, 200);
    assert_eq!(exec(&s, 103, &UPGRADE).await["exitcode"], 0);
    assert_eq!(uname(&s, 103).await, "5.15.0-118-generic\n");
    assert_eq!(exec(&s, 103, &REBOOT_REQUIRED).await["exitcode"], 0);
    assert_eq!(
        packages(&s, 103).await["kernels_installed"],
        json!(["5.15.0-118-generic", "5.15.0-119-generic"])
    );

    // 1. The API's reboot (qmreboot): the agent is gone until agent_boot after the start.
    let asked = Instant::now();
    let reboot = s.post("/nodes/pve1/qemu/103/status/reboot", &[]).await;
    assert_eq!(s.run(reboot).await, "OK");
    let booted = Instant::now();
    let ping = s.post("/nodes/pve1/qemu/103/agent/ping", &[]).await;
    if booted.elapsed() < Duration::from_millis(350) {
        assert_eq!(ping.status, 500, "{}", ping.body);
        assert_eq!(ping.body["message"], "QEMU guest agent is not running\n");
    }
    wait_agent(&s, 103).await;
    assert!(asked.elapsed() >= Duration::from_millis(400));
    assert_eq!(uname(&s, 103).await, "5.15.0-119-generic\n");
    assert_eq!(exec(&s, 103, &REBOOT_REQUIRED).await["exitcode"], 1);
    let p = packages(&s, 103).await;
    assert_eq!(
        (&p["reboots"], &p["reboot_required"], &p["kernel_running"]),
        (&json!(1), &json!(false), &json!("5.15.0-119-generic"))
    );

    // 2. The guest's own `systemctl reboot`: a pid, then no agent until the guest is back.
    assert_eq!(set_updates(&s, 103, kernel(120)).await.status, 200);
    assert_eq!(exec(&s, 103, &UPGRADE).await["exitcode"], 0);
    let rebooted = Instant::now();
    start_exec(&s, 103, &["systemctl", "reboot"]).await;
    let ping = s.post("/nodes/pve1/qemu/103/agent/ping", &[]).await;
    if rebooted.elapsed() < Duration::from_millis(350) {
        assert_eq!(ping.status, 500, "{}", ping.body);
    }
    wait_agent(&s, 103).await;
    assert_eq!(uname(&s, 103).await, "5.15.0-120-generic\n");
    assert_eq!(packages(&s, 103).await["reboots"], 2);
    // The VM kept running throughout (QEMU resets in place).
    let current = s.get("/nodes/pve1/qemu/103/status/current").await;
    assert_eq!(current.body["data"]["status"], "running");

    // 3. A stop and a start.
    let flagged = json!([{"package": "base-files", "version": "12ubuntu4.7",
                          "archive": "jammy-updates", "reboot": true}]);
    assert_eq!(set_updates(&s, 103, flagged).await.status, 200);
    assert_eq!(exec(&s, 103, &UPGRADE).await["exitcode"], 0);
    assert_eq!(exec(&s, 103, &REBOOT_REQUIRED).await["exitcode"], 0);
    let stop = s.post("/nodes/pve1/qemu/103/status/stop", &[]).await;
    assert_eq!(s.run(stop).await, "OK");
    let start = s.post("/nodes/pve1/qemu/103/status/start", &[]).await;
    assert_eq!(s.run(start).await, "OK");
    wait_agent(&s, 103).await;
    assert_eq!(exec(&s, 103, &REBOOT_REQUIRED).await["exitcode"], 1);
    let p = packages(&s, 103).await;
    assert_eq!((&p["reboots"], &p["upgrades"]), (&json!(3), &json!(3)));
    s.finish().await;
}

#[tokio::test]
async fn a_rollback_restores_the_packages_and_a_clone_copies_them() {
    let s = sim().await;
    let before = dpkg(&s, 102).await;
    let snap = s
        .post("/nodes/pve1/qemu/102/snapshot", &[("snapname", "prepatch")])
        .await;
    assert_eq!(s.run(snap).await, "OK");
    assert_eq!(exec(&s, 102, &UPGRADE).await["exitcode"], 0);
    assert!(dpkg(&s, 102).await.contains("openssl\t3.0.2-0ubuntu1.16\n"));
    let rollback = s
        .post(
            "/nodes/pve1/qemu/102/snapshot/prepatch/rollback",
            &[("start", "1")],
        )
        .await;
    assert_eq!(s.run(rollback).await, "OK");
    wait_agent(&s, 102).await;
    assert_eq!(dpkg(&s, 102).await, before);
    let p = packages(&s, 102).await;
    assert_eq!(
        names(&p["pending"]),
        ["openssl", "libssl3", "libc6", "libc-bin"]
    );
    assert_eq!(
        (&p["reboot_required"], &p["upgrades"]),
        (&json!(false), &json!(1))
    );

    // A clone of the template has the template's packages and plan, and counts its own events.
    let clone = s
        .post("/nodes/pve1/qemu/9000/clone", &[("newid", "150")])
        .await;
    assert_eq!(s.run(clone).await, "OK");
    let template = packages(&s, 9000).await;
    let cloned = packages(&s, 150).await;
    for key in [
        "installed",
        "pending",
        "kernels_installed",
        "kernel_running",
        "held",
    ] {
        assert_eq!(cloned[key], template[key], "{key}");
    }
    assert_eq!(
        (&cloned["upgrades"], &cloned["reboots"]),
        (&json!(0), &json!(0))
    );
    let start = s.post("/nodes/pve1/qemu/150/status/start", &[]).await;
    assert_eq!(s.run(start).await, "OK");
    wait_agent(&s, 150).await;
    assert_eq!(uname(&s, 150).await, "5.15.0-118-generic\n");
    s.finish().await;
}

#[tokio::test]
async fn the_control_api_replaces_a_plan_and_refuses_bad_ones() {
    let file = scenario(&seed_without_103_packages());
    let s = sim_with(SimConfig {
        scenario: Some(file.path().to_owned()),
        ..config(false)
    })
    .await;
    let a = set_updates(&s, 999, json!([])).await;
    assert_eq!(
        (a.status, &a.body["message"]),
        (404, &json!("VM 999 does not exist"))
    );
    let a = set_updates(&s, 103, json!([])).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(vm_state(&s.state().await, 103).get("packages").is_none());
    assert_eq!(
        exec(&s, 103, &SIMULATE_ALL).await,
        json!({"exited": 1, "exitcode": 0}),
        "a VM without package state answers the default"
    );
    let bad = [
        (
            json!([{"package": "openssl", "version": "", "archive": "jammy-security"}]),
            "updates[0].version",
        ),
        (
            json!([{"package": "nosuch", "remove": true}]),
            "updates[0].remove",
        ),
        (
            json!([{"package": "curl", "version": "1", "archive": "x"},
                   {"package": "curl", "version": "2", "archive": "x"}]),
            "updates[1].package",
        ),
        (
            json!([{"package": "openssl", "version": "3.0.2-0ubuntu1.15", "archive": "x"}]),
            "updates[0].version",
        ),
    ];
    for (updates, field) in bad {
        let a = set_updates(&s, 101, updates.clone()).await;
        assert_eq!(a.status, 400, "{updates}: {}", a.body);
        let message = a.body["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{message}");
        assert!(a.body["errors"][field].is_string(), "{}", a.body);
    }
    let a = set_updates(
        &s,
        101,
        json!([{"vmid": 101, "package": "curl", "version": "1", "archive": "x"}]),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["message"].as_str().unwrap().contains("vmid"),
        "{}",
        a.body
    );
    // Nothing refused changed the plan; an empty one leaves nothing to do.
    assert_eq!(names(&packages(&s, 101).await["pending"]).len(), 4);
    assert_eq!(
        set_updates(&s, 101, json!([])).await.body,
        json!({"updates": []})
    );
    let plan = exec(&s, 101, &SIMULATE_ALL).await;
    assert_eq!(
        out(&plan),
        format!(
            "{NOTE}{RESOLVING}0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n"
        )
    );
    s.finish().await;
}

#[tokio::test]
async fn the_host_upgrade_applies_the_pending_updates_and_installs_the_kernel() {
    let s = sim().await;
    let pending = s.get("/nodes/pve1/apt/update").await;
    let listed: Vec<&str> = pending.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Package"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"openssl") && listed.contains(&"pve-manager"),
        "{listed:?}"
    );
    assert!(
        pending.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.get("archive").is_none()),
        "the scenario-only archive is never listed"
    );
    let versions = |a: &Answer| -> Vec<Value> { a.body["data"].as_array().unwrap().clone() };
    let find = |list: &[Value], name: &str| list.iter().find(|p| p["Package"] == name).cloned();
    let before = versions(&s.get("/nodes/pve1/apt/versions").await);
    let manager = find(&before, "pve-manager").unwrap();
    assert_eq!(
        (&manager["Version"], &manager["OldVersion"]),
        (&json!("8.4.5"), &json!("8.4.1"))
    );
    assert!(find(&before, "proxmox-kernel-6.8.12-11-pve-signed").is_none());

    let a = s.control(Method::POST, "/_sim/host/upgrade", None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let upgraded: Vec<&str> = a.body["upgraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(upgraded, listed);
    assert_eq!(a.body["reboot_required"], true);

    assert_eq!(
        s.get("/nodes/pve1/apt/update").await.body["data"],
        json!([])
    );
    let after = versions(&s.get("/nodes/pve1/apt/versions").await);
    let manager = find(&after, "pve-manager").unwrap();
    assert_eq!(
        (&manager["Version"], &manager["OldVersion"]),
        (&json!("8.4.5"), &json!("8.4.5"))
    );
    let qemu = find(&after, "pve-qemu-kvm").unwrap();
    assert_eq!(qemu["OldVersion"], "9.0.2-5");
    let kernels: Vec<&str> = after
        .iter()
        .filter_map(|p| p["Package"].as_str())
        .filter(|p| p.ends_with("-pve-signed"))
        .collect();
    assert_eq!(
        kernels,
        [
            "proxmox-kernel-6.8.12-11-pve-signed",
            "proxmox-kernel-6.8.12-9-pve-signed"
        ]
    );
    let ve = find(&after, "proxmox-ve").unwrap();
    assert_eq!(
        (&ve["RunningKernel"], &ve["ManagerVersion"]),
        (&json!("6.8.12-9-pve"), &json!("8.4.5"))
    );
    let status = s.get("/nodes/pve1/status").await.body["data"].clone();
    assert_eq!(status["current-kernel"]["release"], "6.8.12-9-pve");
    assert_eq!(s.get("/version").await.body["data"]["version"], "8.4.5");
    let host = s.state().await["host"].clone();
    assert_eq!(
        host,
        json!({"kernel_running": "6.8.12-9-pve", "kernel_installed": "6.8.12-11-pve",
               "reboot_required": true, "reboots": 0, "upgrades": 1, "down": false})
    );
    // Nothing left: the same answer again, with nothing upgraded.
    let again = s.control(Method::POST, "/_sim/host/upgrade", None).await;
    assert_eq!(again.body, json!({"upgraded": [], "reboot_required": true}));
    assert_eq!(s.state().await["host"]["upgrades"], 1);
    s.finish().await;
}

#[tokio::test]
async fn a_failing_host_upgrade_changes_nothing() {
    let file = scenario(&SEED.replace(
        "kernel_release = \"6.8.12-11-pve\"\nfail = false",
        "kernel_release = \"6.8.12-11-pve\"\nfail = true",
    ));
    let s = sim_with(SimConfig {
        scenario: Some(file.path().to_owned()),
        ..config(false)
    })
    .await;
    let before = s.get("/nodes/pve1/apt/versions").await.body;
    let a = s.control(Method::POST, "/_sim/host/upgrade", None).await;
    assert_eq!(a.status, 500);
    assert_eq!(
        a.body,
        json!({"message": "E: Sub-process /usr/bin/dpkg returned an error code (1)"})
    );
    assert_eq!(
        s.get("/nodes/pve1/apt/update").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(s.get("/nodes/pve1/apt/versions").await.body, before);
    let host = s.state().await["host"].clone();
    assert_eq!(
        (&host["upgrades"], &host["reboot_required"]),
        (&json!(0), &json!(false))
    );
    s.finish().await;
}

#[tokio::test]
async fn changelogs_name_the_candidate_and_security_fixes() {
    let s = sim().await;
    let log = |q: &'static str| {
        let s = &s;
        async move {
            let a = s.get(&format!("/nodes/pve1/apt/changelog?{q}")).await;
            assert_eq!(a.status, 200, "{q}: {}", a.body);
            a.body["data"].as_str().unwrap().to_owned()
        }
    };
    let openssl = log("name=openssl").await;
    assert!(
        openssl.starts_with(
            "openssl (3.0.17-1~deb12u2) bookworm-security; urgency=medium\n\n  * SECURITY UPDATE: "
        ),
        "{openssl}"
    );
    assert!(
        openssl.contains("\nopenssl (3.0.15-1~deb12u1) bookworm; urgency=medium\n"),
        "{openssl}"
    );
    assert!(openssl.contains("\n -- Debian Security Team <team@security.debian.org>  "));
    let manager = log("name=pve-manager").await;
    assert!(
        manager.starts_with("pve-manager (8.4.5) bookworm; urgency=medium\n\n  * "),
        "{manager}"
    );
    assert!(!manager.contains("SECURITY"), "{manager}");
    let old = log("name=openssl&version=3.0.15-1~deb12u1").await;
    assert!(
        old.starts_with("openssl (3.0.15-1~deb12u1) bookworm;"),
        "{old}"
    );
    assert!(!old.contains("3.0.17"), "{old}");
    // apt-get's error and exit code, as pve-manager passes them on (HTTP 200).
    assert_eq!(
        log("name=nosuch").await,
        "E: Unable to locate package nosuch\nRC: 100"
    );
    assert_eq!(
        log("name=openssl&version=9.9").await,
        "E: Version '9.9' for 'openssl' was not found\nRC: 100"
    );
    let a = s.get("/nodes/pve1/apt/changelog").await;
    assert_eq!(a.status, 400);
    assert!(a.body["errors"]["name"].is_string(), "{}", a.body);
    s.finish().await;
}

#[tokio::test]
async fn a_node_reboot_stops_the_vms_answers_503_then_boots_the_new_kernel_and_starts_onboot_vms() {
    let mut config = config(false);
    config.durations.node_reboot = Duration::from_millis(600);
    let s = sim_with(config).await;
    for (vmid, key, value) in [
        (103, "startup", "order=1"),
        (101, "startup", "order=2"),
        (102, "onboot", "0"),
    ] {
        let a = s
            .put(&format!("/nodes/pve1/qemu/{vmid}/config"), &[(key, value)])
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let a = s.control(Method::POST, "/_sim/host/upgrade", None).await;
    assert_eq!(a.body["reboot_required"], true, "{}", a.body);
    let uptime = s.get("/nodes/pve1/status").await.body["data"]["uptime"]
        .as_u64()
        .unwrap();
    assert!(uptime > 1000);

    let requested = Instant::now();
    let a = s.post("/nodes/pve1/status", &[("command", "reboot")]).await;
    assert_eq!((a.status, &a.body), (200, &json!({"data": null})));
    // The VMs are down and so is the API; the control API still answers.
    let state = s.state().await;
    assert_eq!(state["host"]["down"], true);
    for vmid in [101, 102, 103] {
        assert_eq!(vm_state(&state, vmid)["status"], "stopped", "{vmid}");
    }
    let during = s.get("/version").await;
    if requested.elapsed() < Duration::from_millis(550) {
        assert_eq!(during.status, 503);
        assert_eq!(
            during.body,
            json!({"data": null, "message": "node pve1 is rebooting"})
        );
    }
    // Up again after the window, on the new kernel, with its uptime restarted.
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let a = s.get("/nodes/pve1/status").await;
        if a.status == 200 {
            break a.body["data"].clone();
        }
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(Instant::now() < deadline, "the node never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(requested.elapsed() >= Duration::from_millis(600));
    assert_eq!(status["current-kernel"]["release"], "6.8.12-11-pve");
    assert!(
        status["kversion"]
            .as_str()
            .unwrap()
            .starts_with("Linux 6.8.12-11-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-11 "),
        "{status}"
    );
    assert!(status["uptime"].as_u64().unwrap() < 60, "{status}");
    let host = s.state().await["host"].clone();
    assert_eq!(
        (
            &host["reboots"],
            &host["reboot_required"],
            &host["kernel_running"],
            &host["down"]
        ),
        (
            &json!(1),
            &json!(false),
            &json!("6.8.12-11-pve"),
            &json!(false)
        )
    );
    let versions = s.get("/nodes/pve1/apt/versions").await.body["data"].clone();
    assert_eq!(versions[0]["RunningKernel"], "6.8.12-11-pve");

    // The onboot VMs start in boot order, each through its start and agent boot.
    wait_agent(&s, 103).await;
    wait_agent(&s, 101).await;
    let state = s.state().await;
    assert_eq!(vm_state(&state, 102)["status"], "stopped");
    assert_eq!(vm_state(&state, 9000)["status"], "stopped");
    for vmid in [101, 103] {
        let p = &vm_state(&state, vmid)["packages"];
        assert_eq!(p["reboots"], 1, "{vmid}");
    }
    let starts = s
        .get("/nodes/pve1/tasks?source=all&typefilter=qmstart")
        .await;
    let ids: Vec<&str> = starts.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["103", "101"]);
    let log_of = |kind: &'static str| {
        let s = &s;
        async move {
            let list = s
                .get(&format!("/nodes/pve1/tasks?source=all&typefilter={kind}"))
                .await;
            let upid = list.body["data"][0]["upid"].as_str().unwrap().to_owned();
            let log = s
                .get(&format!("/nodes/pve1/tasks/{}/log", encode(&upid)))
                .await;
            log.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["t"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        log_of("stopall").await,
        [
            "Stopping VM 102 (timeout = 180 seconds)",
            "Stopping VM 101 (timeout = 180 seconds)",
            "Stopping VM 103 (timeout = 180 seconds)",
            "TASK OK"
        ]
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = log_of("startall").await;
        if log.last().map(String::as_str) == Some("TASK OK") {
            assert_eq!(log, ["Starting VM 103", "Starting VM 101", "TASK OK"]);
            break;
        }
        assert!(Instant::now() < deadline, "startall never ended: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Shutting the node down is not simulated.
    let a = s
        .post("/nodes/pve1/status", &[("command", "shutdown")])
        .await;
    assert_eq!(a.status, 501, "{}", a.body);
    s.finish().await;
}
