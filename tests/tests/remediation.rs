//! Alerts to guarded, audited remediation on real parts: nats-server, the gateway over HTTP, the
//! decision engine and the remediator in this process, the Proxmox simulator for the actions, and a
//! real Alertmanager for the delivery path. Guard time runs on a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/zfs.rs"]
mod zfs_fixture;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proxflow_orchestrator::remediation::Rules;
use proxflow_platform::RemediationConfig;
use proxflow_pve_sim::RunningSim;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::clock::ManualClock;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::names::{durable, stream, subject};
use proxflow_schemas::remediation::{Reason, RemediationDecision, RemediationPage, Verdict};
use proxflow_schemas::workflow::WorkflowState;
use proxflow_testkit::TestNats;
use proxflow_testkit::alertmanager::TestAlertmanager;
use proxflow_testkit::pve::start_sim;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use proxflow_e2e::ALERT_TOKEN as TOKEN;

const RESTART: &str = r#"
[[rule]]
name = "vm-down-restart"
alertname = "VMDown"
target = "vm/{labels.vmid}"
action = { kind = "restart_vm", vmid = "{labels.vmid}", shutdown_timeout = "30s" }
cooldown = "30m"
dry_run = false
"#;

struct Rig {
    _nats: TestNats,
    sim: RunningSim,
    ctx: ServiceContext,
    gateway: String,
    clock: ManualClock,
    store: WorkflowStore,
    http: reqwest::Client,
    stop: CancellationToken,
}

async fn rig(rules: &str, tweak: impl FnOnce(&mut RemediationConfig)) -> Rig {
    let nats = TestNats::start().unwrap();
    let ctx = nats.context("remediation-e2e").await.unwrap();
    let (sim, pve) = start_sim(|_| {}).await.unwrap();
    let stop = CancellationToken::new();
    let gateway = proxflow_e2e::start_gateway(&ctx, "alertmanager", TOKEN, &stop).await;
    let mut config = RemediationConfig::default();
    config.consumer.ack_wait = Duration::from_secs(30);
    tweak(&mut config);
    let clock = ManualClock::new(chrono::Utc::now());
    tokio::spawn(proxflow_orchestrator::remediation::run_engine(
        ctx.clone().with_clock(clock.shared()),
        config.clone(),
        Rules::parse(rules).unwrap(),
        stop.clone(),
    ));
    tokio::spawn(proxflow_remediator::run(
        ctx.clone(),
        proxflow_remediator::RemediatorSettings { config, pve },
        stop.clone(),
    ));
    let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
    Rig {
        _nats: nats,
        sim,
        ctx,
        gateway,
        clock,
        store,
        http: reqwest::Client::new(),
        stop,
    }
}

use proxflow_e2e::alertmanager_alert as alert;

impl Rig {
    async fn post(&self, alerts: Vec<Value>) {
        proxflow_e2e::post_alerts(&self.gateway, alerts).await;
    }

    async fn decisions(&self) -> Vec<RemediationDecision> {
        proxflow_e2e::stored(
            &self.ctx.bus.js,
            stream::EVT,
            &subject::evt("remediation", "decision"),
        )
        .await
    }

    /// Waits until the engine, the remediator and the breakers have handled everything sent so far.
    async fn settled(&self) -> Vec<RemediationDecision> {
        proxflow_e2e::until_idle(
            &self.ctx,
            &[
                ("PF_INGEST", durable::ORCHESTRATOR_ALERTS),
                ("PF_CMD", durable::REMEDIATOR),
                ("PF_EVT", durable::ORCHESTRATOR_REMEDIATION_OUTCOMES),
            ],
        )
        .await;
        self.decisions().await
    }

    async fn until_ended(&self, id: &str) -> proxflow_schemas::workflow::WorkflowRecord {
        proxflow_e2e::until_ended(&self.store, id).await
    }

    /// The power operations the simulator received for `vmid`, in order.
    fn power_calls(&self, vmid: u32) -> Vec<String> {
        let prefix = format!("/nodes/pve1/qemu/{vmid}/status/");
        self.sim
            .handle()
            .journal()
            .into_iter()
            .filter(|e| e.method == "POST")
            .filter_map(|e| e.path.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn count(d: &[RemediationDecision], verdict: Verdict, reason: Reason) -> usize {
    d.iter()
        .filter(|x| x.verdict == verdict && x.reason == reason)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_through_alertmanager_restarts_the_vm_in_the_simulator() {
    let r = rig(RESTART, |_| {}).await;
    let am = TestAlertmanager::start(
        &format!("{}/v1/alerts/alertmanager", r.gateway),
        TOKEN,
        Duration::from_secs(1),
    )
    .unwrap();
    let fired = r
        .http
        .post(format!("{}/api/v2/alerts", am.url))
        .json(&json!([{"labels": {"alertname": "VMDown", "vmid": "102", "severity": "critical"}}]))
        .send()
        .await
        .unwrap();
    assert!(fired.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let acted = loop {
        let d = r.decisions().await;
        if let Some(a) = d.into_iter().find(|d| d.verdict == Verdict::Acted) {
            break a;
        }
        assert!(Instant::now() < deadline, "no decision; {}", am.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(acted.rule.as_deref(), Some("vm-down-restart"));
    assert_eq!(acted.target.as_deref(), Some("vm/102"));
    let record = r.until_ended(acted.workflow_id.as_deref().unwrap()).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    assert_eq!(r.power_calls(102), ["shutdown", "start"]);
    assert!(r.sim.handle().vm_config(102).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_deliveries_of_one_alert_remediate_once() {
    let r = rig(RESTART, |_| {}).await;
    let one = alert(
        "VMDown",
        &[("vmid", "101")],
        "firing",
        "2026-11-24T10:00:00Z",
    );
    let body = json!({"version": "4", "receiver": "proxflow", "status": "firing", "alerts": [one]});
    let body = serde_json::to_vec(&body).unwrap();
    let url = format!("{}/v1/alerts/alertmanager", r.gateway);
    let posts = futures::stream::iter(0..10_000).map(|_| {
        r.http
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    use futures::StreamExt;
    let statuses: Vec<u16> = posts
        .buffer_unordered(32)
        .map(|res| res.unwrap().status().as_u16())
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().find(|s| **s != 200)
    );
    assert_eq!(statuses.len(), 10_000);
    let d = r.settled().await;
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].verdict, Verdict::Acted);
    assert_eq!(r.power_calls(101), ["shutdown", "start"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_distinct_alerts_hold_the_rate_limit_and_every_one_is_audited() {
    let rules = r#"
[[rule]]
name = "node-exporter-down"
alertname = "NodeExporterDown"
target = "host/{labels.instance}"
action = { kind = "command", argv = ["true"] }
cooldown = "0s"
dry_run = false
"#;
    let r = rig(rules, |c| c.rate_limit.count = 10).await;
    for batch in 0..10 {
        let alerts = (0..100)
            .map(|i| {
                let instance = format!("10.0.{batch}.{i}");
                alert(
                    "NodeExporterDown",
                    &[("instance", &instance)],
                    "firing",
                    "2026-11-24T10:00:00Z",
                )
            })
            .collect();
        r.post(alerts).await;
    }
    let d = r.settled().await;
    assert_eq!(d.len(), 1000, "every alert audited");
    assert_eq!(count(&d, Verdict::Acted, Reason::None), 10);
    assert_eq!(count(&d, Verdict::Suppressed, Reason::RateLimit), 990);
    let limited = d.iter().find(|x| x.reason == Reason::RateLimit).unwrap();
    assert_eq!(limited.detail, "10 remediations within 1h (rate limit 10)");
    // The audit API serves the same trail: bearer only, newest last, capped by `limit`.
    let audit = |query: &str| {
        r.http
            .get(format!("{}/v1/remediations{query}", r.gateway))
            .bearer_auth(TOKEN)
            .send()
    };
    let all: Vec<RemediationDecision> = audit("?limit=5000").await.unwrap().json().await.unwrap();
    assert_eq!(all.len(), 1000);
    assert_eq!(count(&all, Verdict::Acted, Reason::None), 10);
    let last: Vec<RemediationDecision> = audit("?limit=3").await.unwrap().json().await.unwrap();
    assert_eq!(last, all[997..].to_vec());
    assert_eq!(audit("?since=soon").await.unwrap().status(), 422);
    let anonymous = r
        .http
        .get(format!("{}/v1/remediations", r.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // And the metric counts them by verdict and reason.
    let metrics = r.ctx.metrics.encode();
    assert!(
        metrics.contains(
            "proxflow_remediation_decisions_total{rule=\"node-exporter-down\",verdict=\"suppressed\",reason=\"rate_limit\"} 990"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_targets_per_window_holds_and_a_held_target_is_not_touched() {
    let rules = RESTART.replace(
        "cooldown = \"30m\"",
        "cooldown = \"30m\"\nmax_targets = { count = 2, per = \"1h\" }",
    );
    let r = rig(&rules, |_| {}).await;
    // Another remediation holds VM 103.
    let leases = proxflow_runtime::lease::Leases::open(&r.ctx.bus.js)
        .await
        .unwrap();
    let held = match leases
        .acquire(
            &proxflow_schemas::names::key::remediation_lock("vm/103"),
            "operator",
            "manual fix",
        )
        .await
        .unwrap()
    {
        proxflow_runtime::lease::Acquired::Held(l) => l,
        proxflow_runtime::lease::Acquired::Busy(_) => panic!("free"),
    };
    r.post(vec![alert(
        "VMDown",
        &[("vmid", "103")],
        "firing",
        "2026-11-24T10:00:00Z",
    )])
    .await;
    let d = r.settled().await;
    assert_eq!(d[0].reason, Reason::Lock);
    assert_eq!(d[0].detail, "vm/103 is held by operator (manual fix)");
    held.release().await.unwrap();
    // Three VMs down at once: two are restarted, the third is past the rule's max targets.
    r.post(vec![
        alert(
            "VMDown",
            &[("vmid", "101")],
            "firing",
            "2026-11-24T10:01:00Z",
        ),
        alert(
            "VMDown",
            &[("vmid", "102")],
            "firing",
            "2026-11-24T10:01:00Z",
        ),
        alert(
            "VMDown",
            &[("vmid", "103")],
            "firing",
            "2026-11-24T10:01:00Z",
        ),
    ])
    .await;
    let d = r.settled().await;
    assert_eq!(count(&d, Verdict::Acted, Reason::None), 2);
    let capped: Vec<_> = d
        .iter()
        .filter(|x| x.reason == Reason::MaxTargets)
        .collect();
    assert_eq!(capped.len(), 1);
    assert_eq!(
        capped[0].detail,
        "rule vm-down-restart acted on 2 targets within 1h (max 2)"
    );
}

#[test]
fn the_shipped_rules_alerts_and_alertmanager_config_fit_together() {
    let deploy = proxflow_testkit::project_dir().join("deploy");
    let rules = Rules::load(&deploy.join("remediation/rules.toml")).unwrap();
    assert_eq!(rules.len(), 6);
    let alerts = std::fs::read_to_string(deploy.join("prometheus/proxflow-alerts.yml")).unwrap();
    let text = std::fs::read_to_string(deploy.join("remediation/rules.toml")).unwrap();
    // Every alert a rule waits for is one Prometheus raises.
    for line in text.lines().filter_map(|l| l.strip_prefix("alertname = ")) {
        let name = line.trim_matches('"');
        assert!(
            alerts.contains(&format!("- alert: {name}")),
            "{name} is not in proxflow-alerts.yml"
        );
    }
    // Alertmanager's own checker accepts the shipped config.
    let am = deploy.join("alertmanager/alertmanager.yml");
    let out = std::process::Command::new("amtool")
        .args(["check-config"])
        .arg(&am)
        .output()
        .expect("amtool (prometheus-alertmanager) runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_holds_the_cooldown_and_resolved_alerts_act_only_where_a_rule_says() {
    let rules = format!(
        "{RESTART}{}",
        r#"
[[rule]]
name = "tell-on-resolve"
alertname = "VMDown"
status = ["resolved"]
target = "vm/{labels.vmid}"
action = { kind = "command", argv = ["true"] }
cooldown = "0s"
dry_run = false
"#
    );
    let r = rig(&rules, |_| {}).await;
    let vm = [("vmid", "103")];
    // Firing: the restart rule acts; the resolve-only rule ignores it.
    r.post(vec![alert("VMDown", &vm, "firing", "2026-11-24T10:00:00Z")])
        .await;
    let d = r.settled().await;
    assert_eq!(count(&d, Verdict::Acted, Reason::None), 1);
    assert_eq!(count(&d, Verdict::Ignored, Reason::Status), 1);
    // Resolved: the restart rule never acts on it; the rule that lists resolved does.
    r.post(vec![alert(
        "VMDown",
        &vm,
        "resolved",
        "2026-11-24T10:00:00Z",
    )])
    .await;
    let d = r.settled().await;
    let restart_on_resolved: Vec<_> = d
        .iter()
        .filter(|x| {
            x.rule.as_deref() == Some("vm-down-restart")
                && x.status == proxflow_schemas::alert::AlertStatus::Resolved
        })
        .collect();
    assert_eq!(restart_on_resolved.len(), 1);
    assert_eq!(restart_on_resolved[0].verdict, Verdict::Ignored);
    assert_eq!(count(&d, Verdict::Acted, Reason::None), 2);
    // Firing again 5 minutes later (a new episode): inside the 30-minute cooldown.
    r.clock.advance(Duration::from_secs(300));
    r.post(vec![alert("VMDown", &vm, "firing", "2026-11-24T10:05:00Z")])
        .await;
    let d = r.settled().await;
    let cooled: Vec<_> = d.iter().filter(|x| x.reason == Reason::Cooldown).collect();
    assert_eq!(cooled.len(), 1, "{d:#?}");
    assert!(
        cooled[0]
            .detail
            .starts_with("rule vm-down-restart acted on vm/103 at "),
        "{}",
        cooled[0].detail
    );
    // Past the cooldown it acts again.
    r.clock.advance(Duration::from_secs(30 * 60));
    r.post(vec![alert("VMDown", &vm, "firing", "2026-11-24T10:40:00Z")])
        .await;
    let d = r.settled().await;
    let restarts = d
        .iter()
        .filter(|x| x.rule.as_deref() == Some("vm-down-restart") && x.verdict == Verdict::Acted)
        .count();
    assert_eq!(restarts, 2);
    assert_eq!(
        r.power_calls(103),
        ["shutdown", "start", "shutdown", "start"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_failures_and_pages() {
    // VM 999 does not exist: every restart fails.
    let rules = RESTART.replace("cooldown = \"30m\"", "cooldown = \"0s\"");
    let r = rig(&rules, |c| {
        c.breaker.min_outcomes = 3;
        c.breaker.failure_ratio = 0.5;
    })
    .await;
    let mut pages = r
        .ctx
        .bus
        .client
        .subscribe(subject::evt("remediation", "page"))
        .await
        .unwrap();
    for minute in 0..3 {
        let starts = format!("2026-11-24T10:0{minute}:00Z");
        r.post(vec![alert("VMDown", &[("vmid", "999")], "firing", &starts)])
            .await;
        r.settled().await;
    }
    let page: RemediationPage = proxflow_e2e::next_event(&mut pages, Duration::from_secs(10)).await;
    assert_eq!(page.rule, "vm-down-restart");
    assert_eq!((page.failures, page.outcomes), (3, 3));
    r.post(vec![alert(
        "VMDown",
        &[("vmid", "999")],
        "firing",
        "2026-11-24T10:09:00Z",
    )])
    .await;
    let d = r.settled().await;
    assert_eq!(count(&d, Verdict::Acted, Reason::None), 3);
    let open: Vec<_> = d.iter().filter(|x| x.reason == Reason::Breaker).collect();
    assert_eq!(open.len(), 1);
    assert!(
        open[0]
            .detail
            .starts_with("the circuit breaker of rule vm-down-restart is open until ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_dry_run_false_only_records_what_it_would_do() {
    let r = rig(&RESTART.replace("dry_run = false\n", ""), |_| {}).await;
    r.post(vec![alert(
        "VMDown",
        &[("vmid", "101")],
        "firing",
        "2026-11-24T10:00:00Z",
    )])
    .await;
    let d = r.settled().await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].reason, Reason::DryRun);
    assert_eq!(
        d[0].detail,
        "dry-run: would restart VM 101 (shutdown within 30 s, else stop) (vm/101)"
    );
    assert!(r.power_calls(101).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threshold_waits_for_the_nth_alert_and_notify_and_snapshot_act() {
    // A webhook receiver for `notify`: answers 200 and hands over each body it got.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    let (bodies, mut received) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = receiver.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break Some(rest[..len].to_string());
                    }
                }
            };
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            if let Some(body) = body.and_then(|b| serde_json::from_str(&b).ok()) {
                let _ = bodies.send(body);
            }
        }
    });
    let rules = format!(
        r#"
[[rule]]
name = "disk-errors-snapshot"
alertname = "DiskErrors"
target = "vm/{{labels.vmid}}"
action = {{ kind = "snapshot_vm", vmid = "{{labels.vmid}}" }}
threshold = {{ count = 2, within = "10m" }}
dry_run = false

[[rule]]
name = "page"
alertname = "DiskErrors"
target = "page/{{labels.vmid}}"
action = {{ kind = "notify", url = "{hook}" }}
dry_run = false
"#
    );
    let r = rig(&rules, |_| {}).await;
    let vm = [("vmid", "102")];
    r.post(vec![alert(
        "DiskErrors",
        &vm,
        "firing",
        "2026-11-24T10:00:00Z",
    )])
    .await;
    let d = r.settled().await;
    let held: Vec<_> = d.iter().filter(|x| x.reason == Reason::Threshold).collect();
    assert_eq!(held.len(), 1, "{d:#?}");
    assert_eq!(held[0].detail, "1 of 2 alerts for vm/102 within 10m");
    // The page went out with the alert and the decision.
    let paged = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paged["rule"], "page");
    assert_eq!(paged["alert"]["labels"]["vmid"], "102");
    // A second alert for the same VM within 10 minutes: the snapshot is taken.
    r.clock.advance(Duration::from_secs(120));
    r.post(vec![alert(
        "DiskErrors",
        &vm,
        "firing",
        "2026-11-24T10:02:00Z",
    )])
    .await;
    let d = r.settled().await;
    let snap = d
        .iter()
        .find(|x| x.rule.as_deref() == Some("disk-errors-snapshot") && x.verdict == Verdict::Acted)
        .expect("snapshot acted");
    let record = r.until_ended(snap.workflow_id.as_deref().unwrap()).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    let posted: Vec<String> = r
        .sim
        .handle()
        .journal()
        .into_iter()
        .filter(|e| e.method == "POST" && e.path == "/nodes/pve1/qemu/102/snapshot")
        .map(|e| e.path)
        .collect();
    assert_eq!(posted.len(), 1);
}

/// One `[[rule]]` block of the shipped rules file, by name: the test runs the rule operators get.
fn shipped_rule(name: &str) -> String {
    let text = std::fs::read_to_string(
        proxflow_testkit::project_dir().join("deploy/remediation/rules.toml"),
    )
    .unwrap();
    let block = text
        .split("[[rule]]")
        .find(|b| b.contains(&format!("name = \"{name}\"")))
        .unwrap_or_else(|| panic!("no rule {name} in the shipped rules"));
    // Drop the comment lines of the next rule that trail the block.
    let body: Vec<&str> = block.lines().filter(|l| !l.starts_with('#')).collect();
    format!("[[rule]]{}\n", body.join("\n"))
}

/// The shipped "ZFS pool above 80 %" rule asks the snapshotter (its real service loop, on a real
/// zfs-fuse dataset) to apply the retention now: exactly what the grid lets go is destroyed — not
/// the held snapshot, not a foreign one, not the ones the grid keeps. A pool no policy covers is a
/// dead letter with the reason, for a human.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_pool_alert_prunes_what_the_grid_lets_go_and_nothing_else() {
    use proxflow_schemas::events::DeadLetter;
    use proxflow_schemas::snapshot::SnapshotsPruned;
    use proxflow_snapshotter::SnapshotConfig;
    use proxflow_snapshotter::retention::Grid;

    let r = rig(&shipped_rule("zfs-pool-full-prune"), |_| {}).await;
    let fx = zfs_fixture::ZfsFixture::new("prune-alert");
    let daily = |day: u32| format!("pf-daily-202611{day:02}T030000Z");
    for day in 1..=3 {
        fx.snapshot(&fx.source, &daily(day));
    }
    fx.snapshot(&fx.source, "manual-before-upgrade");
    zfs_fixture::zfs(&["hold", "keep", &format!("{}@{}", fx.source, daily(1))]);

    // Day 3 after the daily slot: the service's first pass finds the grid (3 dailies) satisfied.
    let clock = ManualClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-11-03T03:00:30Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
    );
    // One pass at start, the next an hour later: any pruning after the first pass is the alert's.
    let config = SnapshotConfig {
        interval: Duration::from_secs(3600),
        ..zfs_fixture::snapshot_config(
            &fx.source,
            Grid {
                hourly: 0,
                daily: 3,
                weekly: 0,
                monthly: 0,
            },
        )
    };
    let snapshotter = tokio::spawn(proxflow_snapshotter::run(
        r.ctx.clone().with_clock(clock.shared()),
        proxflow_snapshotter::SnapshotterSettings { config, pve: None },
        r.stop.clone(),
    ));
    let gauge = format!(
        "proxflow_snapshot_expected{{policy=\"data\",target=\"zfs/{}\"}}",
        fx.source
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !r.ctx.metrics.encode().contains(&gauge) {
        assert!(!snapshotter.is_finished(), "the snapshotter stopped");
        assert!(Instant::now() < deadline, "the first pass never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: BTreeSet<String> = fx.names(&fx.source).into_iter().collect();
    assert_eq!(before.len(), 4, "the first pass pruned nothing: {before:?}");

    // Two days on, two more dailies: the grid now lets days 1 and 2 go, and day 1 is held.
    fx.snapshot(&fx.source, &daily(4));
    fx.snapshot(&fx.source, &daily(5));
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    r.post(vec![alert(
        "ZfsPoolAlmostFull",
        &[("pool", "tank")],
        "firing",
        "2026-11-05T04:00:00Z",
    )])
    .await;
    let pruned_subject = subject::evt("snapshot", "pruned");
    let pruned: SnapshotsPruned = proxflow_e2e::eventually("a prune", || async {
        let events: Vec<SnapshotsPruned> =
            proxflow_e2e::stored(&r.ctx.bus.js, stream::EVT, &pruned_subject).await;
        events.into_iter().next()
    })
    .await;
    assert_eq!(pruned.pruned, [daily(2)]);
    let after: BTreeSet<String> = fx.names(&fx.source).into_iter().collect();
    let expected: BTreeSet<String> = [1, 3, 4, 5]
        .map(daily)
        .into_iter()
        .chain(["manual-before-upgrade".to_owned()])
        .collect();
    assert_eq!(after, expected);
    let acted = r
        .settled()
        .await
        .into_iter()
        .find(|d| d.verdict == Verdict::Acted)
        .expect("the rule acted");
    assert_eq!(acted.rule.as_deref(), Some("zfs-pool-full-prune"));
    let record = r.until_ended(acted.workflow_id.as_deref().unwrap()).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");

    // No policy covers a dataset on `offsite`: nothing to free there, a human must look.
    r.post(vec![alert(
        "ZfsPoolAlmostFull",
        &[("pool", "offsite")],
        "firing",
        "2026-11-05T04:05:00Z",
    )])
    .await;
    let dead_subject = subject::evt("deadletter", durable::SNAPSHOTTER_PRUNE);
    let dead: DeadLetter =
        proxflow_e2e::eventually("a dead letter for the uncovered pool", || async {
            let letters: Vec<DeadLetter> =
                proxflow_e2e::stored(&r.ctx.bus.js, stream::EVT, &dead_subject).await;
            letters.into_iter().next()
        })
        .await;
    assert!(
        dead.detail
            .contains("no snapshot policy covers a dataset on pool \"offsite\""),
        "{dead:?}"
    );
    assert_eq!(
        fx.names(&fx.source).into_iter().collect::<BTreeSet<_>>(),
        expected
    );
}

/// Seven more VMs (104–110) cloned from the template, so ten can be down at once.
async fn ten_vms(r: &Rig) -> Vec<u32> {
    let pve = proxflow_pve::PveClient::new(&proxflow_testkit::pve::client_config(&r.sim)).unwrap();
    for vmid in 104..=110 {
        let spec = proxflow_pve::CloneSpec {
            newid: vmid,
            name: Some(format!("storm-{vmid}")),
            full: Some(false),
            pool: None,
            storage: None,
            description: None,
        };
        let upid = pve.clone_vm(9000, &spec).await.unwrap();
        pve.wait_task(&upid, None).await.unwrap();
    }
    (101..=110).collect()
}

/// The storm of issue 12: 10 copies each of one alert for 10 VMs in one Alertmanager delivery, rule
/// without a threshold. Before guards were claimed atomically this gave 22 "acted" for 3 VMs, the
/// extra work orders failed on the target lease, the breaker opened and 7 VMs were never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_copies_for_ten_vms_restarts_each_vm_once_and_keeps_the_breaker_closed() {
    let r = rig(RESTART, |_| {}).await;
    let vms = ten_vms(&r).await;
    let mut alerts = Vec::new();
    for copy in 0..10 {
        for vmid in &vms {
            // Each copy is a distinct alert (its own start), as a flapping exporter would send.
            alerts.push(alert(
                "VMDown",
                &[("vmid", &vmid.to_string())],
                "firing",
                &format!("2026-11-24T10:00:{copy:02}Z"),
            ));
        }
    }
    r.post(alerts).await;
    let d = r.settled().await;
    assert_eq!(d.len(), 100, "every alert is decided");
    for vmid in &vms {
        let target = format!("vm/{vmid}");
        let mine: Vec<_> = d
            .iter()
            .filter(|x| x.target.as_deref() == Some(target.as_str()))
            .collect();
        let acted = mine.iter().filter(|x| x.verdict == Verdict::Acted).count();
        assert_eq!(acted, 1, "{target}: {mine:#?}");
        assert!(
            mine.iter()
                .filter(|x| x.verdict != Verdict::Acted)
                .all(|x| x.reason == Reason::Cooldown || x.reason == Reason::Lock),
            "{target}: {mine:#?}"
        );
        let starts = r
            .power_calls(*vmid)
            .iter()
            .filter(|c| *c == "start")
            .count();
        assert_eq!(
            starts,
            1,
            "{target} restarted once: {:?}",
            r.power_calls(*vmid)
        );
    }
    assert_eq!(count(&d, Verdict::Suppressed, Reason::Breaker), 0);
    // Every remediation succeeded: the breaker has nothing to open on.
    for x in d.iter().filter(|x| x.verdict == Verdict::Acted) {
        let record = r.until_ended(x.workflow_id.as_deref().unwrap()).await;
        assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    }
    let pages: Vec<RemediationPage> = proxflow_e2e::stored(
        &r.ctx.bus.js,
        stream::EVT,
        &subject::evt("remediation", "page"),
    )
    .await;
    assert!(pages.is_empty(), "{pages:#?}");
}

/// `+103`, `0103`, `00103` and `103` are one VM: one cooldown key, one restart. Before canonical
/// keys, VM 103 was restarted four times in 26 s under a 30 min cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_one_vmid_are_one_target() {
    let r = rig(RESTART, |_| {}).await;
    for (i, spelling) in ["103", "+103", "0103", "00103"].iter().enumerate() {
        r.post(vec![alert(
            "VMDown",
            &[("vmid", spelling)],
            "firing",
            &format!("2026-11-24T10:0{i}:00Z"),
        )])
        .await;
        r.settled().await;
    }
    let d = r.settled().await;
    assert_eq!(d.len(), 4, "{d:#?}");
    assert_eq!(count(&d, Verdict::Acted, Reason::None), 1, "{d:#?}");
    assert_eq!(
        count(&d, Verdict::Suppressed, Reason::Cooldown),
        3,
        "{d:#?}"
    );
    assert_eq!(r.power_calls(103), ["shutdown", "start"]);
}

/// A 5,000-character label becomes part of guard keys; an unbounded KV key is a subject longer than
/// the server's control line, and the server disconnects the client. The decision is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_thousand_character_label_is_decided_and_never_disconnects_nats() {
    const NOTIFY: &str = r#"
[[rule]]
name = "host-notify"
alertname = "HostDown"
target = "host/{labels.instance}"
action = { kind = "notify", url = "http://127.0.0.1:9/hook" }
cooldown = "30m"
dry_run = false
threshold = { count = 1, within = "5m" }
"#;
    let r = rig(NOTIFY, |_| {}).await;
    let connects = || {
        r.ctx
            .bus
            .client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = connects();
    let huge = "h".repeat(5_000);
    r.post(vec![alert(
        "HostDown",
        &[("instance", &huge)],
        "firing",
        "2026-11-24T10:00:00Z",
    )])
    .await;
    let d = r.settled().await;
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].verdict, Verdict::Acted, "{d:#?}");
    assert_eq!(
        d[0].target.as_deref(),
        Some(format!("host/{huge}").as_str())
    );
    // The engine shares this connection: it was never dropped and re-established.
    assert_eq!(connects(), before, "the client reconnected");
    // A second copy is held by the (bounded) cooldown key, so the key really was written and read.
    r.post(vec![alert(
        "HostDown",
        &[("instance", &huge)],
        "firing",
        "2026-11-24T10:01:00Z",
    )])
    .await;
    let d = r.settled().await;
    assert_eq!(
        count(&d, Verdict::Suppressed, Reason::Cooldown),
        1,
        "{d:#?}"
    );
}

/// A hand-off whose owner gives up on the request (its consumer dead-letters it: retries exhausted
/// on a dataset that stays busy) ends the waiting remediation `failed` with the owner's reason, at
/// once, instead of after the hand-off timeout. The test plays the replicator's dead letter; no
/// replicator runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_its_owner_dead_letters_ends_the_remediation_failed() {
    const REPLICATE: &str = r#"
[[rule]]
name = "replication-lag"
alertname = "ReplicationLagging"
target = "job/{labels.job}"
action = { kind = "replicate", job = "{labels.job}" }
cooldown = "30m"
dry_run = false
"#;
    let r = rig(REPLICATE, |_| {}).await;
    r.post(vec![alert(
        "ReplicationLagging",
        &[("job", "offsite")],
        "firing",
        "2026-11-24T10:00:00Z",
    )])
    .await;
    let d = r.settled().await;
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].verdict, Verdict::Acted);
    let id = d[0].workflow_id.clone().unwrap();
    // The remediation asked the replicator and waits for its answer.
    proxflow_e2e::eventually("waiting for the replicator", || async {
        let (rec, _) = r.store.get(&id).await.unwrap()?;
        (rec.state == WorkflowState::Waiting).then_some(())
    })
    .await;
    let request = proxflow_schemas::replication::ReplicationRequested {
        job: "offsite".into(),
        workflow_id: id.clone(),
        reason: "alert ReplicationLagging → rule replication-lag".into(),
    };
    let letter = proxflow_schemas::events::DeadLetter {
        consumer: durable::REPLICATOR_RUN.into(),
        stream: stream::CMD.into(),
        stream_sequence: 1,
        deliveries: 5,
        subject: "pf.cmd.replicator.run".into(),
        reason: proxflow_schemas::events::DeadLetterReason::RetriesExhausted,
        detail: "lease zfs/tank/data is held by snapshotter-1 (prune)".into(),
        headers: Default::default(),
        payload: serde_json::to_string(&request).unwrap(),
        payload_encoding: proxflow_schemas::events::PayloadEncoding::Utf8,
        dead_lettered_at: chrono::Utc::now(),
    };
    r.ctx.bus.publisher.publish(&letter).await.unwrap();
    let done = r.until_ended(&id).await;
    assert_eq!(done.state, WorkflowState::Failed, "{done:#?}");
    assert_eq!(
        done.error.as_deref(),
        Some(
            "replication: replicator-run gave up after 5 deliveries: lease zfs/tank/data is held \
             by snapshotter-1 (prune)"
        )
    );
}
