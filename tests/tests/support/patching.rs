//! The patching rig: a real nats-server, the Proxmox simulator (its guest packages, host apt state
//! and node reboot), a real Alertmanager, the snapshotter answering pre-change requests (VMs through
//! the simulator, the host's root dataset on a zfs-fuse pool), the gateway (approvals) and the
//! patcher, on a manual clock that starts inside the Sunday window.
//!
//! Two stand-ins, named as such: MOCK kubectl (`pf-test-kubectl`, node state in a JSON file —
//! there is no Kubernetes API server here) and MOCK ssh (`pf-test-ssh`, the host upgrade asked of
//! the simulated host — there is no Debian host here).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proxflow_patcher::PatchConfig;
use proxflow_patcher::config::HostReboot;
use proxflow_pve::PveClient;
use proxflow_pve_sim::RunningSim;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::patch::PatchEvent;
use proxflow_schemas::workflow::WorkflowRecord;
use proxflow_testkit::TestNats;
use proxflow_testkit::alertmanager::TestAlertmanager;
use proxflow_testkit::pve::start_sim;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::zfs_fixture::ZfsFixture;

/// The approver's bearer token (name `ops`, in `patch.approvers`).
pub const APPROVER: &str = "ops-token-0123456789abcdef";
/// A token that may read but not decide (name `viewer`).
pub const VIEWER: &str = "viewer-token-0123456789abcdef";

/// 2026-12-06 is a Sunday: five minutes into the 02:00–05:00 UTC window.
pub fn in_window() -> DateTime<Utc> {
    "2026-12-06T02:05:00Z".parse().unwrap()
}

pub struct Rig {
    pub nats: TestNats,
    pub ctx: ServiceContext,
    pub clock: ManualClock,
    pub sim: RunningSim,
    pub pve: PveClient,
    pub am: TestAlertmanager,
    pub gateway: String,
    pub zfs: ZfsFixture,
    pub kube: tempfile::TempDir,
    pub store: WorkflowStore,
    pub stop: CancellationToken,
    pub patcher: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    http: reqwest::Client,
}

impl Rig {
    /// Everything but the patcher (see [`Rig::start_patcher`]), on the manual clock.
    pub async fn start(tag: &str) -> Self {
        Self::start_with(tag, |_| {}, true).await
    }

    /// As [`Rig::start`], with the simulator's configuration adjusted by `tweak_sim`, on the
    /// manual clock or (`manual` false) the wall clock — then give the patcher
    /// [`always_open`]'s window.
    pub async fn start_with(
        tag: &str,
        tweak_sim: impl FnOnce(&mut proxflow_pve_sim::SimConfig),
        manual: bool,
    ) -> Self {
        let zfs = ZfsFixture::new(tag);
        let nats = TestNats::start().expect("nats-server");
        let clock = ManualClock::new(in_window());
        let ctx = nats.context("patch-e2e").await.unwrap();
        let ctx = if manual {
            ctx.with_clock(clock.shared())
        } else {
            ctx.with_clock(proxflow_runtime::clock::system())
        };
        let (sim, pve) = start_sim(|c| {
            c.durations.agent_boot = Duration::from_millis(300);
            tweak_sim(c);
        })
        .await
        .expect("simulator");
        let stop = CancellationToken::new();
        // The snapshotter answers pre-change requests: VMs through Proxmox, the host's dataset on zfs.
        let snapshotter = Arc::new(
            proxflow_snapshotter::Snapshotter::new(
                &ctx,
                proxflow_snapshotter::SnapshotConfig::default(),
                Some(pve.clone()),
            )
            .unwrap(),
        );
        tokio::spawn(snapshotter.serve_prechange(
            ctx.bus.client.clone(),
            ctx.health.clone(),
            stop.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(proxflow_gateway::run(
            ctx.clone(),
            proxflow_gateway::GatewaySettings {
                console: Default::default(),
                config: proxflow_gateway::GatewayConfig {
                    bearer_tokens: std::collections::BTreeMap::from([
                        (
                            "ops".into(),
                            proxflow_runtime::config::Secret::new(APPROVER),
                        ),
                        (
                            "viewer".into(),
                            proxflow_runtime::config::Secret::new(VIEWER),
                        ),
                    ]),
                    ..proxflow_gateway::GatewayConfig::default()
                },
                profiles: proxflow_platform::Profiles::default(),
                listener,
                approvers: vec!["ops".into()],
            },
            stop.clone(),
        ));
        let am = TestAlertmanager::start(
            &format!("{gateway}/v1/alerts/alertmanager"),
            "unused",
            Duration::from_secs(60),
        )
        .expect("alertmanager");
        let kube = tempfile::tempdir().unwrap();
        let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
        let rig = Self {
            nats,
            ctx,
            clock,
            sim,
            pve,
            am,
            gateway,
            zfs,
            kube,
            store,
            stop,
            patcher: None,
            http: reqwest::Client::new(),
        };
        rig.write_kube(json!({"nodes": {
            "k3s-1": {}, "k3s-2": {}, "k3s-3": {}
        }}));
        let deadline = Instant::now() + Duration::from_secs(20);
        while rig.ctx.health.report().1.get("snapshotter.prechange") != Some(&true) {
            assert!(Instant::now() < deadline, "the snapshotter never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rig
    }

    pub fn kube_path(&self) -> PathBuf {
        self.kube.path().join("kubectl.json")
    }

    /// The MOCK kubectl's state.
    pub fn kube_state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.kube_path()).unwrap()).unwrap()
    }

    pub fn write_kube(&self, state: Value) {
        std::fs::write(self.kube_path(), serde_json::to_vec(&state).unwrap()).unwrap();
    }

    /// The patcher's configuration in this rig: Sunday 02:00–05:00 UTC, the real Alertmanager as
    /// gate, MOCK kubectl and MOCK ssh, the zfs fixture's dataset as the host's root, automatic host
    /// reboot (tests of the approval flow change it).
    pub fn config(&self) -> PatchConfig {
        let mut c = PatchConfig {
            enabled: false,
            approvers: vec!["ops".into()],
            host_reboot: HostReboot::Auto,
            ..PatchConfig::default()
        };
        c.gate.alertmanager_url = Some(self.am.url.clone());
        c.gate.matchers = vec!["severity=\"critical\"".into()];
        c.gate.recheck = Duration::from_secs(60);
        c.kubectl.command = vec![
            env!("CARGO_BIN_EXE_pf-test-kubectl").into(),
            "--state".into(),
            self.kube_path().display().to_string(),
        ];
        c.kubectl.drain_timeout = Duration::from_secs(20);
        c.host.dataset = self.zfs.source.clone();
        c.host.upgrade_command = vec![
            env!("CARGO_BIN_EXE_pf-test-ssh").into(),
            self.sim.base_url(),
            self.sim.token_id().into(),
            self.sim.token_secret().into(),
        ];
        c.host.reboot_timeout = Duration::from_secs(60);
        c.ready_timeout = Duration::from_secs(30);
        c.snapshot_timeout = Duration::from_secs(30);
        c.consumer = proxflow_e2e::test_consumer(Duration::from_secs(30));
        c
    }

    /// Runs the patcher in this process with `config`.
    pub fn start_patcher(&mut self, config: PatchConfig) {
        let stop = CancellationToken::new();
        let settings = proxflow_patcher::PatcherSettings {
            config,
            pve: self.pve.clone(),
            replication: false,
        };
        let task = tokio::spawn({
            let (ctx, stop) = (self.ctx.clone(), stop.clone());
            async move {
                if let Err(e) = proxflow_patcher::run(ctx, settings, stop).await {
                    panic!("patcher stopped: {e}");
                }
            }
        });
        self.patcher = Some((stop, task));
    }

    /// Asks the gateway for a run now.
    pub async fn start_run(&self, dry_run: bool) -> String {
        let r = self
            .http
            .post(format!("{}/v1/patch/runs", self.gateway))
            .bearer_auth(VIEWER)
            .json(&json!({"dry_run": dry_run}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        let v: Value = r.json().await.unwrap();
        v["workflow_id"].as_str().unwrap().to_string()
    }

    /// An approver's (or another token's) decision; the status and body.
    pub async fn decide(&self, token: &str, run: &str, verb: &str, plan: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/patch/runs/{run}/{verb}", self.gateway))
            .bearer_auth(token)
            .json(&json!({"plan": plan}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn record(&self, id: &str) -> WorkflowRecord {
        self.store.get(id).await.unwrap().expect("record").0
    }

    /// Waits (real time, up to `within`) until `check` holds for the run's record.
    pub async fn until(
        &self,
        id: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&WorkflowRecord) -> bool,
    ) -> WorkflowRecord {
        let deadline = Instant::now() + within;
        loop {
            if let Some((record, _)) = self.store.get(id).await.unwrap()
                && check(&record)
            {
                return record;
            }
            if Instant::now() > deadline {
                let record = self.store.get(id).await.unwrap().map(|(r, _)| r);
                panic!(
                    "{id}: never {what}; record: {}",
                    serde_json::to_string_pretty(&record).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn until_ended(&self, id: &str) -> WorkflowRecord {
        self.until(id, Duration::from_secs(120), "ended", |r| {
            r.state.is_terminal()
        })
        .await
    }

    /// A request to the simulator's control API, with its token.
    fn sim_control(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.sim.base_url()))
            .header(
                "Authorization",
                format!(
                    "PVEAPIToken={}={}",
                    self.sim.token_id(),
                    self.sim.token_secret()
                ),
            )
    }

    /// Makes the MOCK kubectl's drains take `ms`.
    pub fn set_drain_ms(&self, ms: u64) {
        let mut kube = self.kube_state();
        kube["drain_ms"] = json!(ms);
        self.write_kube(kube);
    }

    /// Waits until run `id` asks for a decision; its record then.
    pub async fn until_awaiting(&self, id: &str) -> WorkflowRecord {
        self.until(id, Duration::from_secs(90), "waiting for a decision", |r| {
            r.state == proxflow_schemas::workflow::WorkflowState::Waiting
                && !r.data["awaiting"].is_null()
        })
        .await
    }

    /// The simulator's state (`GET /_sim/state`).
    pub async fn sim_state(&self) -> Value {
        self.sim_control(reqwest::Method::GET, "/_sim/state")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Replaces VM `vmid`'s pending updates in the simulator.
    pub async fn set_updates(&self, vmid: u32, updates: Value) {
        let r = self
            .sim_control(reqwest::Method::PUT, &format!("/_sim/guest/{vmid}/updates"))
            .json(&json!({"updates": updates}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// Fires an alert in Alertmanager (ends in an hour unless resolved).
    pub async fn fire(&self, name: &str, severity: &str) {
        let now = Utc::now();
        let body = json!([{
            "labels": {"alertname": name, "severity": severity},
            "startsAt": now,
            "endsAt": now + chrono::Duration::hours(1),
        }]);
        let r = self
            .http
            .post(format!("{}/api/v2/alerts", self.am.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Resolves an alert (`endsAt` now).
    pub async fn resolve(&self, name: &str, severity: &str) {
        let now = Utc::now();
        let body = json!([{
            "labels": {"alertname": name, "severity": severity},
            "startsAt": now - chrono::Duration::minutes(5),
            "endsAt": now,
        }]);
        self.http
            .post(format!("{}/api/v2/alerts", self.am.url))
            .json(&body)
            .send()
            .await
            .unwrap();
    }

    /// Silences `alertname=name` for an hour.
    pub async fn silence(&self, name: &str) {
        let now = Utc::now();
        let body = json!({
            "matchers": [{"name": "alertname", "value": name, "isRegex": false, "isEqual": true}],
            "startsAt": now,
            "endsAt": now + chrono::Duration::hours(1),
            "createdBy": "test",
            "comment": "maintenance",
        });
        let r = self
            .http
            .post(format!("{}/api/v2/silences", self.am.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// The patch events of `run` so far (from the event stream).
    pub async fn events(&self, run: &str) -> Vec<PatchEvent> {
        let all: Vec<PatchEvent> = proxflow_runtime::bus::history::since(
            &self.ctx.bus.js,
            proxflow_schemas::names::stream::EVT,
            "pf.evt.patch.>",
            DateTime::<Utc>::MIN_UTC,
            10_000,
        )
        .await
        .unwrap();
        all.into_iter().filter(|e| e.run == run).collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some((stop, _)) = &self.patcher {
            stop.cancel();
        }
    }
}

/// A pending update that brings a new kernel series (5.15 → 6.5): major by the default rules.
pub fn kernel_series_update() -> Value {
    json!([{
        "package": "linux-image-6.5.0-41-generic",
        "version": "6.5.0-41.41~22.04.1",
        "archive": "jammy-security",
        "kernel": "6.5.0-41-generic"
    }])
}

/// A window that is always open, for runs on the wall clock.
pub fn always_open(config: &mut PatchConfig) {
    config.window = proxflow_patcher::window::WindowConfig::always_open();
}

/// The steps of the record whose names start with `prefix`, in record order.
pub fn steps<'a>(record: &'a WorkflowRecord, prefix: &str) -> Vec<&'a str> {
    record
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The index of step `name` in the record (panics when absent).
pub fn at(record: &WorkflowRecord, name: &str) -> usize {
    record
        .steps
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}: {:?}", steps(record, "")))
}
