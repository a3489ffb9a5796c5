//! Capacity monitoring and scale-out end to end: the Proxmox simulator's load model drives
//! utilisation, the capacity monitor polls it over HTTP on a manual clock (so a 15-minute window is
//! 16 polls, run back to back), detector state lives in KV on a real nats-server, and the
//! orchestrator and provisioner (in this process) turn a firing into a new node in the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxflow_capacity::{CapacityConfig, Monitor};
use proxflow_e2e::JOIN_OK;
use proxflow_orchestrator::Orchestration;
use proxflow_orchestrator::remediation::Rules;
use proxflow_platform::RemediationConfig;
use proxflow_pve::PveClient;
use proxflow_pve_sim::load::Load;
use proxflow_runtime::clock::ManualClock;
use proxflow_schemas::Message;
use proxflow_schemas::capacity::{CapacityExceeded, HostExhausted};
use proxflow_schemas::names::{stream, subject};
use proxflow_schemas::provision::ProvisionRequested;
use proxflow_schemas::remediation::{
    RemediationDecision, RemediationOutcome, RemediationResult, Verdict,
};
use proxflow_schemas::workflow::{WorkflowRecord, WorkflowState};
use proxflow_testkit::pve::client_config;

mod support;

use support::Platform;

fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The defaults (70 % for 15 min, clear below 60 %, 90 s max gap), a 10-minute cooldown, with `tweak`.
fn capacity(tweak: impl FnOnce(&mut proxflow_platform::ScaleOutConfig)) -> CapacityConfig {
    let mut c = CapacityConfig::default();
    tweak(&mut c.clusters.get_mut("k3s").unwrap().scale_out);
    c
}

struct Scaling {
    p: Platform,
    clock: ManualClock,
    config: CapacityConfig,
    monitor: Monitor,
    /// CPU busy of every k3s node, new ones included (applied before each poll).
    cpu: Option<f64>,
    /// The gateway's base URL, when started with remediation.
    gateway: Option<String>,
}

impl Scaling {
    async fn start(config: CapacityConfig) -> Self {
        Self::start_joining(config, JOIN_OK).await
    }

    /// With `join` as the k3s join command.
    async fn start_joining(config: CapacityConfig, join: &str) -> Self {
        Self::start_tweaked(config, join, |_| {}).await
    }

    /// With `join` as the k3s join command and the orchestration adjusted by `tweak`.
    async fn start_tweaked(
        config: CapacityConfig,
        join: &str,
        tweak: impl FnOnce(&mut Orchestration),
    ) -> Self {
        let clock = ManualClock::new(start_time());
        let p = Platform::start_orchestrated(
            join,
            // Each poll here is a step of a manual clock and must see the load the test just set:
            // the simulator's pvestatd lag (its status interval, in real time) is taken out.
            |sim| sim.durations.status_interval = std::time::Duration::ZERO,
            |_| {},
            |o| {
                o.clusters = config.clusters.clone();
                tweak(o);
            },
            clock.shared(),
        )
        .await;
        let monitor = Self::monitor(&p, &config, &clock).await;
        Self {
            p,
            clock,
            config,
            monitor,
            cpu: None,
            gateway: None,
        }
    }

    /// With alert remediation on: the orchestrator runs the remediation engine with `rules` (on the
    /// rig's manual clock), the remediator runs against the simulator, and a gateway takes
    /// Alertmanager's webhooks ([`Scaling::alert`]).
    async fn start_remediating(config: CapacityConfig, rules: &str) -> Self {
        let rules = Rules::parse(rules).unwrap();
        let mut s = Self::start_tweaked(config, JOIN_OK, |o| {
            o.rules = rules;
            o.remediation = RemediationConfig::default();
        })
        .await;
        let pve = PveClient::new(&client_config(&s.p.sim)).unwrap();
        tokio::spawn(proxflow_remediator::run(
            s.p.ctx.clone(),
            proxflow_remediator::RemediatorSettings {
                config: RemediationConfig::default(),
                pve,
            },
            s.p.stop.clone(),
        ));
        s.gateway = Some(
            proxflow_e2e::start_gateway(
                &s.p.ctx,
                "alertmanager",
                proxflow_e2e::ALERT_TOKEN,
                &s.p.stop,
            )
            .await,
        );
        s
    }

    /// Posts one firing alert `name` with `labels`, as Alertmanager does, to the gateway.
    async fn alert(&self, name: &str, labels: &[(&str, &str)], starts: &str) {
        let gateway = self.gateway.as_deref().expect("started with remediation");
        let alert = proxflow_e2e::alertmanager_alert(name, labels, "firing", starts);
        proxflow_e2e::post_alerts(gateway, vec![alert]).await;
    }

    /// Waits until the engine has recorded `n` acted remediation decisions; returns them, oldest
    /// first.
    async fn acted(&self, n: usize) -> Vec<RemediationDecision> {
        let what = format!("{n} acted remediation decisions");
        proxflow_e2e::eventually(&what, || async {
            let all: Vec<RemediationDecision> = proxflow_e2e::stored(
                &self.p.ctx.bus.js,
                stream::EVT,
                &subject::evt("remediation", "decision"),
            )
            .await;
            let acted: Vec<RemediationDecision> = all
                .into_iter()
                .filter(|d| d.verdict == Verdict::Acted)
                .collect();
            (acted.len() >= n).then_some(acted)
        })
        .await
    }

    async fn monitor(p: &Platform, config: &CapacityConfig, clock: &ManualClock) -> Monitor {
        let pve = PveClient::new(&client_config(&p.sim)).unwrap();
        let ctx = p.ctx.clone().with_clock(clock.shared());
        Monitor::new(&ctx, config.clone(), pve).await.unwrap()
    }

    /// Every k3s node at `cpu` busy and 30 % memory, from now on (nodes added later included).
    fn load(&mut self, cpu: f64) {
        self.cpu = Some(cpu);
        self.apply_load();
    }

    fn apply_load(&self) {
        let Some(cpu) = self.cpu else { return };
        let handle = self.p.sim.handle();
        for vmid in handle.vm_ids() {
            let tagged = handle
                .vm_config(vmid)
                .and_then(|c| c.get("tags").cloned())
                .is_some_and(|t| t.split(';').any(|x| x == "k8s-node"));
            if tagged {
                handle.set_vm_load(vmid, Load::fixed(cpu, 0.3));
            }
        }
    }

    /// `n` polls one minute apart at the current load; the firings they published.
    async fn polls(&mut self, n: usize) -> Vec<CapacityExceeded> {
        let mut fired = Vec::new();
        for _ in 0..n {
            self.apply_load();
            self.clock.advance(Duration::from_secs(60));
            let report = self.monitor.poll().await.unwrap();
            assert!(report.failed.is_none(), "{:?}", report.failed);
            fired.extend(report.exceeded);
        }
        fired
    }

    /// `n` polls; the `cluster/k3s/cpu_avg` firings among them (the scale-out trigger).
    async fn cpu_avg_polls(&mut self, n: usize) -> Vec<CapacityExceeded> {
        self.polls(n)
            .await
            .into_iter()
            .filter(|e| e.metric.metric == "cpu_avg")
            .collect()
    }

    /// Messages stored on `subject` in the event stream.
    async fn count(&self, subject: &str) -> usize {
        let s = self.p.ctx.bus.js.get_stream(stream::EVT).await.unwrap();
        let mut subjects = s.info_with_subjects(subject).await.unwrap();
        let mut n = 0;
        while let Some(entry) = subjects.next().await {
            n += entry.unwrap().1;
        }
        n
    }

    /// The `capacity.exceeded` events of cluster metric `metric` stored in the event stream.
    async fn firings(&self, metric: &str) -> Vec<CapacityExceeded> {
        proxflow_e2e::stored::<CapacityExceeded>(
            &self.p.ctx.bus.js,
            stream::EVT,
            &exceeded_subject(),
        )
        .await
        .into_iter()
        .filter(|e| e.metric.metric == metric)
        .collect()
    }

    fn tagged_vms(&self) -> usize {
        let handle = self.p.sim.handle();
        handle
            .vm_ids()
            .into_iter()
            .filter(|id| {
                handle
                    .vm_config(*id)
                    .and_then(|c| c.get("tags").cloned())
                    .is_some_and(|t| t.split(';').any(|x| x == "k8s-node"))
            })
            .count()
    }

    async fn scale_out_of(&self, fired: &CapacityExceeded) -> WorkflowRecord {
        let id = proxflow_orchestrator::scaleout::workflow_id(fired);
        self.p.until_ended(&id).await
    }
}

fn exceeded_subject() -> String {
    subject::evt("capacity", "exceeded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_shorter_than_the_window_fires_nothing() {
    let mut s = Scaling::start(capacity(|_| {})).await;
    s.load(0.9);
    let mut fired = s.polls(14).await;
    s.load(0.2);
    fired.extend(s.polls(1).await);
    s.load(0.9);
    fired.extend(s.polls(14).await);
    assert!(fired.is_empty(), "{fired:#?}");
    assert_eq!(s.count(&exceeded_subject()).await, 0);
    // 29 polls were published as samples: the monitor did run against the simulator.
    assert_eq!(s.count(&subject::evt("capacity", "sample")).await, 29);
    assert_eq!(s.tagged_vms(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_fires_once_and_adds_exactly_one_node() {
    let mut s = Scaling::start(capacity(|_| {})).await;
    s.load(0.85);
    let fired = s.polls(20).await;
    // cpu_avg and cpu_max both stay over; only cpu_avg triggers a scale-out by default.
    let cpu_avg: Vec<&CapacityExceeded> = fired
        .iter()
        .filter(|e| e.metric.to_string() == "cluster/k3s/cpu_avg")
        .collect();
    assert_eq!(cpu_avg.len(), 1, "{fired:#?}");
    let e = cpu_avg[0];
    assert_eq!(e.since, start_time() + chrono::Duration::minutes(1));
    assert_eq!(e.sequence, 0);
    // Fired by the 16th poll (minute 16), the first at which 15 minutes had passed since minute 1.
    assert_eq!(
        e.evidence.last().unwrap().at,
        start_time() + chrono::Duration::minutes(16)
    );
    // The whole window is the evidence: 16 observations over 15 minutes, every one above 70 %.
    assert_eq!(e.evidence.len(), 16);
    assert!(
        e.evidence.iter().all(|o| o.value > 70.0),
        "{:?}",
        e.evidence
    );
    assert_eq!(
        e.evidence.last().unwrap().at - e.evidence[0].at,
        chrono::Duration::minutes(15)
    );
    let record = s.scale_out_of(e).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    assert_eq!(record.data["node"], "k3s-4");
    let provision = record.data["provision_workflow"]
        .as_str()
        .unwrap()
        .to_string();
    let provisioned = s.p.until_ended(&provision).await;
    assert_eq!(
        provisioned.state,
        WorkflowState::Succeeded,
        "{provisioned:#?}"
    );
    s.p.until_idle().await;
    assert_eq!(s.tagged_vms(), 4);
    assert_eq!(s.firings("cpu_avg").await.len(), 1);
    // The scale-out entered provision admission directly: nothing looped back through the
    // webhook's ingest subject.
    let ingest = s.p.ctx.bus.js.get_stream(stream::INGEST).await.unwrap();
    let mut subjects = ingest
        .info_with_subjects(ProvisionRequested::SUBJECT)
        .await
        .unwrap();
    let mut looped = 0;
    while let Some(entry) = subjects.next().await {
        looped += entry.unwrap().1;
    }
    assert_eq!(
        looped,
        0,
        "a provision request on {}",
        ProvisionRequested::SUBJECT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_load_never_scales_twice_within_the_cooldown() {
    let mut s = Scaling::start(capacity(|so| so.cooldown = Duration::from_secs(3600))).await;
    // Around 70 %: never 15 minutes above it, so nothing fires at all.
    for _ in 0..15 {
        s.load(0.72);
        assert!(s.polls(1).await.is_empty());
        s.load(0.68);
        assert!(s.polls(1).await.is_empty());
    }
    // Above for a window, below the hysteresis level, above for a window again: two episodes.
    s.load(0.85);
    let first = s.cpu_avg_polls(16).await;
    assert_eq!(first.len(), 1);
    let one = s.scale_out_of(&first[0]).await;
    assert_eq!(one.state, WorkflowState::Succeeded, "{one:#?}");
    s.p.until_ended(one.data["provision_workflow"].as_str().unwrap())
        .await;
    s.load(0.3);
    s.polls(1).await;
    s.load(0.85);
    let second = s.cpu_avg_polls(16).await;
    assert_eq!(second.len(), 1, "a new episode fires again");
    assert_ne!(second[0].since, first[0].since);
    let two = s.scale_out_of(&second[0]).await;
    assert_eq!(two.state, WorkflowState::Cancelled, "{two:#?}");
    let reason = two.error.clone().unwrap();
    assert!(
        reason.starts_with("cooldown: the last scale-out of k3s"),
        "{reason}"
    );
    s.p.until_idle().await;
    assert_eq!(s.tagged_vms(), 4, "one node in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cap_stops_scaling_with_a_recorded_reason() {
    let mut s = Scaling::start(capacity(|so| so.max_nodes = 3)).await;
    s.load(0.85);
    let fired = s.cpu_avg_polls(16).await;
    let record = s.scale_out_of(&fired[0]).await;
    assert_eq!(record.state, WorkflowState::Cancelled);
    assert_eq!(
        record.error.as_deref(),
        Some("cap reached: cluster k3s has 3 nodes, max_nodes 3")
    );
    let provision = format!("{}-node", record.id);
    assert!(s.p.store.get(&provision).await.unwrap().is_none());
    s.p.until_idle().await;
    assert_eq!(s.tagged_vms(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_commitment_over_budget_vetoes_and_reports_host_exhausted() {
    // The seed host: 128 GiB, three running 8 GiB k3s nodes = 0.1875:1. One more makes 32 GiB,
    // 0.25:1, over a budget of 0.2:1.
    let mut s = Scaling::start(capacity(|so| so.memory_commitment_budget = 0.2)).await;
    let mut exhausted =
        s.p.ctx
            .bus
            .client
            .subscribe(subject::evt("capacity", "host_exhausted"))
            .await
            .unwrap();
    s.load(0.85);
    let fired = s.cpu_avg_polls(16).await;
    assert!((fired[0].sample.host.memory_commitment_ratio - 0.1875).abs() < 1e-9);
    let record = s.scale_out_of(&fired[0]).await;
    assert_eq!(record.state, WorkflowState::Cancelled);
    let reason = record.error.clone().unwrap();
    assert!(
        reason.starts_with(
            "vetoed: memory commitment would be 0.25:1 (24.0 GiB committed + 8.0 GiB of the new node, on 128.0 GiB), budget 0.20:1"
        ),
        "{reason}"
    );
    let event: HostExhausted =
        proxflow_e2e::next_event(&mut exhausted, Duration::from_secs(10)).await;
    assert_eq!(event.workflow_id, record.id);
    assert!((event.memory_commitment_after - 0.25).abs() < 1e-9);
    assert_eq!(event.memory_commitment_budget, 0.2);
    s.p.until_idle().await;
    assert_eq!(s.tagged_vms(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_window_neither_fires_twice_nor_loses_the_window() {
    let mut s = Scaling::start(capacity(|so| so.enabled = false)).await;
    s.load(0.85);
    assert!(s.polls(10).await.is_empty());
    // Restart: a new monitor with nothing in memory, reading its state back from KV.
    s.monitor = Scaling::monitor(&s.p, &s.config, &s.clock).await;
    let after = s.cpu_avg_polls(6).await;
    assert_eq!(
        after.len(),
        1,
        "the window begun before the restart completes on time"
    );
    assert_eq!(after[0].since, start_time() + chrono::Duration::minutes(1));
    // A second replica polling the same platform at the same times adds no firing, and neither
    // does a third monitor replaying an already-stored minute.
    let mut replica = Scaling::monitor(&s.p, &s.config, &s.clock).await;
    for _ in 0..20 {
        s.clock.advance(Duration::from_secs(60));
        let a = s.monitor.poll().await.unwrap();
        let b = replica.poll().await.unwrap();
        assert!(
            a.exceeded
                .iter()
                .chain(&b.exceeded)
                .all(|e| e.metric.metric != "cpu_avg" || e.sequence == 1),
            "only the re-firing after another whole window"
        );
    }
    let cpu_avg_firings: Vec<String> = s
        .firings("cpu_avg")
        .await
        .iter()
        .map(CapacityExceeded::firing_id)
        .collect();
    // Two firings of one episode (the first, and one more after another whole window), each once.
    assert_eq!(cpu_avg_firings.len(), 2, "{cpu_avg_firings:?}");
    assert_ne!(cpu_avg_firings[0], cpu_avg_firings[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_records_what_it_would_do_and_provisions_nothing() {
    let mut s = Scaling::start(capacity(|so| so.dry_run = true)).await;
    s.load(0.85);
    let fired = s.cpu_avg_polls(16).await;
    let record = s.scale_out_of(&fired[0]).await;
    assert_eq!(record.state, WorkflowState::Cancelled);
    assert_eq!(record.data["dry_run"], true);
    let reason = record.error.clone().unwrap();
    assert!(
        reason.starts_with("dry-run: would provision k3s-4 (profile k8s-node) for cluster k3s"),
        "{reason}"
    );
    assert!(
        s.p.store
            .get(&format!("{}-node", record.id))
            .await
            .unwrap()
            .is_none()
    );
    s.p.until_idle().await;
    assert_eq!(s.tagged_vms(), 3);
}

/// Reads `name{labels} value` from a Prometheus text page.
fn gauge(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not on /metrics:\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_figures_computed_by_hand() {
    let mut s = Scaling::start(capacity(|_| {})).await;
    let handle = s.p.sim.handle();
    // Seed: host 16 cores, 128 GiB, its own share 2 % CPU and 6 % memory; k3s-1..3 running with
    // 4 vCPU, 8 GiB and a 4 GiB balloon minimum each; the template is stopped.
    handle.set_vm_load(101, Load::fixed(0.5, 0.25));
    handle.set_vm_load(102, Load::fixed(0.7, 0.5));
    handle.set_vm_load(103, Load::fixed(0.9, 0.75));
    s.polls(1).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = s.p.stop.clone();
    let router = proxflow_runtime::ops::router(s.p.ctx.ops_state());
    tokio::spawn(async move {
        let limits = proxflow_runtime::serve::HttpLimits::default();
        proxflow_runtime::serve::serve(listener, router, stop, &limits, Duration::from_secs(1))
            .await
    });
    let page = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // (series, figure computed by hand from the seed and the loads above, how).
    let cluster =
        |figure: &str| format!(r#"proxflow_capacity_cluster{{cluster="k3s",figure="{figure}"}}"#);
    let host = |figure: &str| format!(r#"proxflow_capacity_host{{node="pve1",figure="{figure}"}}"#);
    let expected = [
        // Cluster: mean and max of the three nodes.
        (cluster("cpu_avg"), (50.0 + 70.0 + 90.0) / 3.0),
        (cluster("cpu_max"), 90.0),
        (cluster("memory_avg"), (25.0 + 50.0 + 75.0) / 3.0),
        (cluster("memory_max"), 75.0),
        (cluster("nodes"), 3.0),
        // Host CPU: own 2 % + Σ(VM busy × vCPUs) / 16 cores = 0.02 + (0.5 + 0.7 + 0.9) × 4 / 16.
        (host("cpu_percent"), (0.02 + 2.1 * 4.0 / 16.0) * 100.0),
        // Host memory: 6 % of 128 GiB + (2 + 4 + 6) GiB used by the VMs = 19.68 GiB of 128.
        (
            host("memory_percent"),
            (0.06 * 128.0 + 12.0) / 128.0 * 100.0,
        ),
        // Commitment: 3 × 8 GiB of 128 GiB; its balloon floor 3 × 4 GiB; vCPUs 12 of 16.
        (host("memory_commitment_ratio"), 24.0 / 128.0),
        (host("memory_floor_ratio"), 12.0 / 128.0),
        (host("vcpu_ratio"), 12.0 / 16.0),
        (host("running_vms"), 3.0),
        // Storage `local`: 8 GiB used of 100 GiB.
        (
            r#"proxflow_capacity_storage_used_percent{node="pve1",storage="local"}"#.to_string(),
            8.0,
        ),
        (
            r#"proxflow_capacity_polls_total{result="ok"}"#.to_string(),
            1.0,
        ),
    ];
    for (series, want) in expected {
        let got = gauge(&page, &series);
        assert!(
            (got - want).abs() < 1e-6,
            "{series}: {got}, computed {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_poll_breaks_the_window() {
    let mut s = Scaling::start(capacity(|so| so.enabled = false)).await;
    s.load(0.85);
    assert!(s.polls(10).await.is_empty());
    // Proxmox unreachable for one poll: that minute was not observed.
    let healthy = s.p.sim.handle().faults();
    let mut faults = healthy.clone();
    faults.endpoints.insert(
        "GET /nodes/{node}/status".into(),
        proxflow_pve_sim::EndpointFault {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    s.p.sim.handle().set_faults(faults);
    s.clock.advance(Duration::from_secs(60));
    let report = s.monitor.poll().await.unwrap();
    assert!(report.failed.is_some());
    s.p.sim.handle().set_faults(healthy);
    // 15 more minutes of load after the gap are needed: 15 polls are not yet a full window.
    assert!(
        s.polls(15)
            .await
            .iter()
            .all(|e| e.metric.metric != "cpu_avg")
    );
    let fired = s.polls(1).await;
    assert!(
        fired.iter().any(|e| e.metric.metric == "cpu_avg"
            && e.since == start_time() + chrono::Duration::minutes(12))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scale_out_at_a_time_until_the_new_node_is_provisioned() {
    // The join step waits for a file the test creates: the first node's provision is held in flight
    // for as long as the test needs, with no timing guesswork.
    let gate = tempfile::tempdir().unwrap();
    let release = gate.path().join("go");
    let join = format!(
        "cat > /dev/null; while [ ! -e {} ]; do sleep 0.05; done; echo joined {{name}} at {{ip}}",
        release.display()
    );
    let mut s = Scaling::start_joining(capacity(|so| so.cooldown = Duration::ZERO), &join).await;
    s.load(0.9);
    let first = s.cpu_avg_polls(16).await;
    let one = s.scale_out_of(&first[0]).await;
    assert_eq!(one.state, WorkflowState::Succeeded, "{one:#?}");
    let provision = one.data["provision_workflow"].as_str().unwrap().to_string();
    // Wait until the new node is up and held at its join, so every later poll sees four nodes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (record, _) = s.p.store.get(&provision).await.unwrap().unwrap();
        let joining = record.steps.iter().any(|st| {
            st.name == "join" && st.state == proxflow_schemas::workflow::StepState::Running
        });
        if joining {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{record:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still over a whole window later: the detector fires again, the slot is taken.
    let again = s.cpu_avg_polls(15).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].sequence, 1);
    let two = s.scale_out_of(&again[0]).await;
    assert_eq!(two.state, WorkflowState::Cancelled);
    assert_eq!(
        two.error.as_deref(),
        Some("one scale-out at a time for k3s: 1 already running (max_concurrent 1)")
    );
    // The first node joins; its provision ends and frees the slot for the next firing.
    std::fs::write(&release, b"").unwrap();
    assert_eq!(
        s.p.until_ended(&provision).await.state,
        WorkflowState::Succeeded
    );
    s.p.until_idle().await;
    let third = s.cpu_avg_polls(15).await;
    let three = s.scale_out_of(&third[0]).await;
    assert_eq!(three.state, WorkflowState::Succeeded, "{three:#?}");
    assert_eq!(three.data["node"], "k3s-5");
}

/// `K3sClusterCpuHigh` scales the cluster out; the rule's own cooldown (1 min) is far shorter than
/// the scale-out's (10 min by default), so only the capacity guards can hold a second alert back.
const SCALE_OUT_RULE: &str = r#"
[[rule]]
name = "cluster-hot-scale-out"
alertname = "K3sClusterCpuHigh"
target = "cluster/{labels.cluster}"
action = { kind = "scale_out", cluster = "{labels.cluster}" }
cooldown = "1m"
dry_run = false
"#;

/// An alert's remediation hands the scale-out to the orchestrator, which decides it on the newest
/// `capacity.sample` and provisions one more node, and a second alert once the rule's cooldown has
/// passed is refused by the scale-out cooldown: the alert path goes through the same guards as a
/// capacity firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_remediation_scales_out_through_the_capacity_guards() {
    let mut s = Scaling::start_remediating(capacity(|_| {}), SCALE_OUT_RULE).await;
    // A sample on the bus for the scale-out to be decided on; at 50 % nothing fires by itself.
    s.load(0.5);
    assert!(s.polls(1).await.is_empty());
    assert_eq!(s.count(&subject::evt("capacity", "sample")).await, 1);

    let cluster = [("cluster", "k3s")];
    s.alert("K3sClusterCpuHigh", &cluster, "2026-11-24T08:01:00Z")
        .await;
    let acted = s.acted(1).await;
    assert_eq!(acted.len(), 1, "{acted:#?}");
    assert_eq!(acted[0].rule.as_deref(), Some("cluster-hot-scale-out"));
    assert_eq!(acted[0].target.as_deref(), Some("cluster/k3s"));
    assert_eq!(acted[0].action.as_deref(), Some("scale_out"));
    let remediation = acted[0].workflow_id.clone().unwrap();
    let record = s.p.until_ended(&remediation).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    let first = format!("scaleout-k3s-{remediation}");
    let one = s.p.until_ended(&first).await;
    assert_eq!(one.state, WorkflowState::Succeeded, "{one:#?}");
    assert_eq!(one.origin.source, "alert");
    assert_eq!(one.origin.reference, remediation);
    assert_eq!(one.data["node"], "k3s-4");
    let provision = one.data["provision_workflow"].as_str().unwrap().to_string();
    let provisioned = s.p.until_ended(&provision).await;
    assert_eq!(
        provisioned.state,
        WorkflowState::Succeeded,
        "{provisioned:#?}"
    );
    s.p.until_idle().await;
    assert_eq!(s.tagged_vms(), 4);

    // Past the rule's cooldown, within the scale-out's: the remediation acts, the scale-out refuses.
    s.clock.advance(Duration::from_secs(120));
    s.alert("K3sClusterCpuHigh", &cluster, "2026-11-24T08:03:00Z")
        .await;
    let acted = s.acted(2).await;
    assert_eq!(acted.len(), 2, "{acted:#?}");
    let again = acted[1].workflow_id.clone().unwrap();
    assert_ne!(again, remediation, "a new alert, a new remediation");
    // The remediation ends with the scale-out's answer, not with its request being queued: refused
    // (cancelled), with the scale-out's own reason, and the breaker hears "refused".
    let record = s.p.until_ended(&again).await;
    assert_eq!(record.state, WorkflowState::Cancelled, "{record:#?}");
    let why = record.error.clone().unwrap();
    assert!(
        why.starts_with(&format!(
            "scale_out: cooldown: the last scale-out of k3s ({first}, node k3s-4) started at "
        )),
        "{why}"
    );
    let outcomes: Vec<RemediationOutcome> = proxflow_e2e::stored(
        &s.p.ctx.bus.js,
        stream::EVT,
        &subject::evt("remediation", "outcome"),
    )
    .await;
    let told = outcomes.iter().find(|o| o.workflow_id == again).unwrap();
    assert_eq!(told.result(), RemediationResult::Refused, "{told:#?}");
    assert_eq!(told.error.as_deref(), Some(why.as_str()));
    let two = s.p.until_ended(&format!("scaleout-k3s-{again}")).await;
    assert_eq!(two.state, WorkflowState::Cancelled, "{two:#?}");
    let reason = two.error.clone().unwrap();
    assert!(
        reason.starts_with(&format!(
            "cooldown: the last scale-out of k3s ({first}, node k3s-4) started at "
        )),
        "{reason}"
    );
    assert!(
        s.p.store
            .get(&format!("{}-node", two.id))
            .await
            .unwrap()
            .is_none(),
        "no provision for a refused scale-out"
    );
    s.p.until_idle().await;
    assert_eq!(s.tagged_vms(), 4, "one node in all");
}
