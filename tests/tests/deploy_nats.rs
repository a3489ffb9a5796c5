//! The NATS configs in `deploy/nats` are valid for the server version we pin, and the per-service
//! users really are least-privilege: checked against a real nats-server running the shipped accounts.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod support;
#[path = "support/zfs.rs"]
mod zfs_fixture;

use proxflow_e2e::{provisioner_config, test_consumer};
use proxflow_gateway::GatewayConfig;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::{self, topology};
use proxflow_runtime::config::{NatsConfig, Secret};
use proxflow_runtime::nats_server;
use proxflow_runtime::ops::Health;
use proxflow_runtime::ops::Metrics;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::names::durable;
use proxflow_schemas::workflow::WorkflowState;
use proxflow_testkit::pve::start_sim;
use proxflow_testkit::{TestNats, project_dir};
use tokio_util::sync::CancellationToken;

const PASSWORDS: [&str; 13] = [
    "PF_REMEDIATOR_PASSWORD",
    "PF_PATCHER_PASSWORD",
    "PF_LIFECYCLE_PASSWORD",
    "PF_ADMIN_PASSWORD",
    "PF_CAPACITY_PASSWORD",
    "PF_SNAPSHOTTER_PASSWORD",
    "PF_REPLICATOR_PASSWORD",
    "PF_GATEWAY_PASSWORD",
    "PF_ORCHESTRATOR_PASSWORD",
    "PF_PROVISIONER_PASSWORD",
    "PF_SYS_PASSWORD",
    "PF_ROUTE_PASSWORD",
    "PF_UNUSED",
];

/// The bearer token the console is logged in with.
const CONSOLE_TOKEN: &str = "ops-console-token-0123456789";

fn deploy_dir() -> PathBuf {
    project_dir().join("deploy/nats")
}

#[test]
fn every_shipped_config_passes_the_servers_own_check() {
    let bin = nats_server::locate_supported(&project_dir()).expect("nats-server");
    let mut checked = 0;
    for entry in std::fs::read_dir(deploy_dir()).expect("deploy/nats") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".conf") || name == "accounts.conf" {
            continue;
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("-t").arg("-c").arg(&path);
        for var in PASSWORDS {
            cmd.env(var, "test-password");
        }
        // The cluster nodes take their route URLs (with the route credentials) from here.
        cmd.env(
            "PF_ROUTE_URLS",
            r#"["nats-route://route:test-password@pf-nats-1:6222", "nats-route://route:test-password@pf-nats-2:6222"]"#,
        );
        let out = cmd.output().expect("nats-server runs");
        assert!(
            out.status.success(),
            "{name} rejected:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert_eq!(
        checked, 4,
        "expected single-node.conf and three cluster nodes"
    );
}

fn user(nats: &TestNats, name: &str, inbox_prefix: &str) -> NatsConfig {
    NatsConfig {
        user: Some(name.into()),
        password: Secret::new(format!("{name}-pw")),
        inbox_prefix: inbox_prefix.into(),
        request_timeout: Duration::from_secs(1),
        publish_attempts: 1,
        ..nats.nats_config()
    }
}

/// A nats-server running the shipped accounts (copied beside its config, as includes resolve there),
/// with the passwords in its environment as in production.
fn accounts_server() -> (tempfile::TempDir, TestNats) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.conf");
    // The shipped accounts (includes resolve beside the including file, so it is copied there);
    // passwords come from the server's environment, as in production.
    std::fs::copy(
        deploy_dir().join("accounts.conf"),
        dir.path().join("accounts.conf"),
    )
    .expect("copy accounts");
    // The store limit as the shipped single-node.conf sets one: without it nats-server takes 75 %
    // of the free disk, which a CI machine may not have for the streams' caps.
    std::fs::write(
        &config,
        "jetstream { max_file_store: 10G }\ninclude ./accounts.conf\n",
    )
    .expect("write config");
    let env = [
        ("PF_ADMIN_PASSWORD", "admin-pw"),
        ("PF_GATEWAY_PASSWORD", "gateway-pw"),
        ("PF_ORCHESTRATOR_PASSWORD", "orchestrator-pw"),
        ("PF_PROVISIONER_PASSWORD", "provisioner-pw"),
        ("PF_CAPACITY_PASSWORD", "capacity-pw"),
        ("PF_SNAPSHOTTER_PASSWORD", "snapshotter-pw"),
        ("PF_REPLICATOR_PASSWORD", "replicator-pw"),
        ("PF_REMEDIATOR_PASSWORD", "remediator-pw"),
        ("PF_PATCHER_PASSWORD", "patcher-pw"),
        ("PF_LIFECYCLE_PASSWORD", "lifecycle-pw"),
        ("PF_SYS_PASSWORD", "sys-pw"),
    ];
    let nats = TestNats::start_with_config(&config, &env).expect("nats-server with accounts");
    (dir, nats)
}

/// The admin user connects and declares the topology, as a first `proxflow serve` does.
async fn admin_declares(nats: &TestNats) -> bus::Bus {
    let admin = bus::connect(&user(nats, "admin", "_INBOX"), "admin", Metrics::new())
        .await
        .expect("admin connects");
    topology::declare(&admin.client, &admin.js, 1)
        .await
        .expect("admin declares the topology");
    admin
}

/// Waits for workflow `id` to end. On timeout, names a service task that stopped (a permission
/// refused at start) before failing.
async fn until_ended(
    store: &WorkflowStore,
    id: &str,
    stopped: &[(&str, &dyn Fn() -> bool)],
) -> proxflow_schemas::workflow::WorkflowRecord {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((r, _)) = store.get(id).await.expect("read")
            && r.state.is_terminal()
        {
            return r;
        }
        if std::time::Instant::now() > deadline {
            for (name, finished) in stopped {
                assert!(!finished(), "{name} stopped early");
            }
            panic!("workflow {id} did not finish: {:#?}", store.get(id).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_gateway_user_may_ingest_and_nothing_more() {
    let (_dir, nats) = accounts_server();

    let admin = admin_declares(&nats).await;

    let gateway = bus::connect(
        &user(&nats, "gateway", "_INBOX_gateway"),
        "gateway",
        Metrics::new(),
    )
    .await
    .expect("gateway connects");
    let ack = gateway
        .js
        .publish("pf.ingest.webhook.provision", "{}".into())
        .await
        .expect("sent")
        .await
        .expect("the gateway may publish what it ingests");
    assert_eq!(ack.stream, "PF_INGEST");

    let denied = async {
        gateway
            .js
            .publish("pf.cmd.provisioner.clone", "{}".into())
            .await?
            .await
    };
    assert!(denied.await.is_err(), "the gateway published a command");
    // The same subject is fine for a user allowed to use it: the refusal above is the permission.
    admin
        .js
        .publish("pf.cmd.provisioner.clone", "{}".into())
        .await
        .expect("sent")
        .await
        .expect("admin may publish commands");

    // With the shared inbox prefix the gateway cannot even hear its own acknowledgements.
    let shared_inbox = bus::connect(&user(&nats, "gateway", "_INBOX"), "gateway", Metrics::new())
        .await
        .expect("connects");
    let result = async {
        shared_inbox
            .js
            .publish("pf.ingest.webhook.provision", "{}".into())
            .await?
            .await
    };
    assert!(
        result.await.is_err(),
        "replies on the shared _INBOX reached the gateway"
    );
}

/// Every service's readiness probe works as its own user: a permission missing from
/// `accounts.conf` would leave that service unready for ever.
#[tokio::test]
async fn every_shipped_user_may_probe_jetstream() {
    let (_dir, nats) = accounts_server();
    admin_declares(&nats).await;
    for name in [
        "gateway",
        "orchestrator",
        "provisioner",
        "capacity",
        "snapshotter",
        "replicator",
        "remediator",
        "patcher",
    ] {
        let bus = bus::connect(
            &user(&nats, name, &format!("_INBOX_{name}")),
            name,
            Metrics::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"));
        bus::JetStreamProbe::default()
            .check(&bus.js)
            .await
            .unwrap_or_else(|e| panic!("{name} may not probe JetStream: {e}"));
    }
}

async fn service_context(nats: &TestNats, name: &str) -> ServiceContext {
    let metrics = Metrics::new();
    let bus = bus::connect(
        &NatsConfig {
            request_timeout: Duration::from_secs(5),
            publish_attempts: 3,
            ..user(nats, name, &format!("_INBOX_{name}"))
        },
        name,
        metrics.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("{name} connects: {e}"));
    ServiceContext::new(bus, Health::default(), metrics, Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("{name} opens the locks bucket: {e}"))
}

/// Every service as its own least-privilege user runs a whole provision: a permission missing from
/// `accounts.conf` shows up here as a stuck or failed workflow, not in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_users_can_run_a_provision() {
    let (_dir, nats) = accounts_server();
    let admin = admin_declares(&nats).await;
    let (_sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let file_sd = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();

    let secret = proxflow_gateway::webhook::generate_secret();
    let gateway_config = GatewayConfig {
        webhook_secrets: vec![secret.clone()],
        bearer_tokens: std::collections::BTreeMap::from([(
            "ops".to_owned(),
            proxflow_runtime::config::Secret::new(CONSOLE_TOKEN),
        )]),
        ..GatewayConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let gateway_url = format!("http://{}", listener.local_addr().expect("address"));
    let profiles = proxflow_platform::Profiles::default();
    let gateway = tokio::spawn(proxflow_gateway::run(
        service_context(&nats, "gateway").await,
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config: gateway_config,
            profiles: profiles.clone(),
            listener,
            approvers: Vec::new(),
        },
        stop.clone(),
    ));
    let orchestrator = tokio::spawn(proxflow_orchestrator::run(
        service_context(&nats, "orchestrator").await,
        proxflow_orchestrator::Orchestration::new(test_consumer(Duration::from_secs(30)), profiles),
        stop.clone(),
    ));
    let provisioner = tokio::spawn(proxflow_provisioner::run(
        service_context(&nats, "provisioner").await,
        proxflow_provisioner::ProvisionerSettings {
            config: provisioner_config(file_sd.path().join("sd.json"), Duration::from_secs(30)),
            pve,
        },
        stop.clone(),
    ));

    let accepted =
        support::provision_via_gateway(&gateway_url, &secret, br#"{"name": "least-privilege"}"#)
            .await;
    let id = accepted["workflow_id"]
        .as_str()
        .expect("workflow id")
        .to_owned();
    let store = WorkflowStore::open(&admin.js).await.expect("store");
    let record = until_ended(
        &store,
        &id,
        &[
            ("gateway", &|| gateway.is_finished()),
            ("orchestrator", &|| orchestrator.is_finished()),
            ("provisioner", &|| provisioner.is_finished()),
        ],
    )
    .await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");

    // The console, served as the gateway user: every page reads what it shows (the overview's
    // events, the workflow index, the record, its trace) within the gateway's grants.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cookie = proxflow_e2e::console_session(&http, &gateway_url, CONSOLE_TOKEN).await;
    for path in [
        "/ui".to_owned(),
        "/ui/workflows".to_owned(),
        "/ui/workflows?kind=provision&state=succeeded".to_owned(),
        format!("/ui/workflows/{id}"),
    ] {
        let page = http
            .get(format!("{gateway_url}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("page");
        let status = page.status();
        let body = page.text().await.expect("body");
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            !body.contains("violation"),
            "{path} hit a permission the gateway user lacks: {body}"
        );
    }
    stop.cancel();
}

/// Capacity, orchestrator and provisioner as their own users carry a sustained-load firing through
/// to a new node: the capacity user's detector state and events, the orchestrator's scale-out
/// consumer and its provision request on the webhook path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_users_can_scale_out() {
    let (_dir, nats) = accounts_server();
    let admin = admin_declares(&nats).await;
    let (sim, pve) = start_sim(|_| {}).await.expect("simulator");
    for vmid in [101, 102, 103] {
        sim.handle()
            .set_vm_load(vmid, proxflow_pve_sim::Load::fixed(0.9, 0.3));
    }
    let file_sd = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let mut capacity = proxflow_capacity::CapacityConfig::default();
    capacity.rules.insert(
        "cluster_cpu_avg".into(),
        proxflow_capacity::Rule {
            window: Duration::from_secs(120),
            ..proxflow_capacity::Rule::default()
        },
    );
    let clock = proxflow_runtime::clock::ManualClock::new(chrono::Utc::now());
    let profiles = proxflow_platform::Profiles::default();
    let orchestrator = tokio::spawn(proxflow_orchestrator::run(
        service_context(&nats, "orchestrator")
            .await
            .with_clock(clock.shared()),
        proxflow_orchestrator::Orchestration {
            clusters: capacity.clusters.clone(),
            ..proxflow_orchestrator::Orchestration::new(
                test_consumer(Duration::from_secs(30)),
                profiles,
            )
        },
        stop.clone(),
    ));
    let provisioner = tokio::spawn(proxflow_provisioner::run(
        service_context(&nats, "provisioner").await,
        proxflow_provisioner::ProvisionerSettings {
            config: provisioner_config(file_sd.path().join("sd.json"), Duration::from_secs(30)),
            pve: pve.clone(),
        },
        stop.clone(),
    ));
    let ctx = service_context(&nats, "capacity").await;
    let mut monitor =
        proxflow_capacity::Monitor::new(&ctx.clone().with_clock(clock.shared()), capacity, pve)
            .await
            .expect("the capacity user opens its bucket");
    let mut fired = Vec::new();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        let report = monitor
            .poll()
            .await
            .expect("the capacity user polls and publishes");
        fired.extend(report.exceeded);
    }
    let firing = fired
        .iter()
        .find(|e| e.metric.metric == "cpu_avg")
        .expect("cpu_avg fired");
    let id = proxflow_orchestrator::scaleout::workflow_id(firing);
    let store = WorkflowStore::open(&admin.js).await.expect("store");
    let orchestrator_stopped = || orchestrator.is_finished();
    let provisioner_stopped = || provisioner.is_finished();
    let services: [(&str, &dyn Fn() -> bool); 2] = [
        ("orchestrator", &orchestrator_stopped),
        ("provisioner", &provisioner_stopped),
    ];
    let scale_out = until_ended(&store, &id, &services).await;
    assert_eq!(scale_out.state, WorkflowState::Succeeded, "{scale_out:#?}");
    let provision = scale_out.data["provision_workflow"]
        .as_str()
        .expect("provision");
    let record = until_ended(&store, provision, &services).await;
    stop.cancel();
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    assert_eq!(record.data["name"], "k3s-4");
}

/// The snapshotter and the replicator as their own users: a pre-change request from the
/// orchestrator answered (request, reply to the caller's inbox, event), a scheduled dataset
/// snapshot and a replication run with their leases and events — and nothing beyond their subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshotter_and_replicator_users_work_and_nothing_more() {
    use proxflow_replicator::{JobConfig, ReplicationConfig, Replicator, RunControl};
    use proxflow_schemas::snapshot::{PreChangeRequest, SnapshotTarget};

    let (_dir, nats) = accounts_server();
    let admin = admin_declares(&nats).await;
    let (_sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let fx = zfs_fixture::ZfsFixture::new("accounts").with_job("offsite");

    let snapshotter_ctx = service_context(&nats, "snapshotter").await;
    let config = zfs_fixture::snapshot_config(&fx.source, Default::default());
    let stop = CancellationToken::new();
    let snapshotter = tokio::spawn(proxflow_snapshotter::run(
        snapshotter_ctx.clone(),
        proxflow_snapshotter::SnapshotterSettings {
            config,
            pve: Some(pve),
        },
        stop.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while snapshotter_ctx
        .health
        .report()
        .1
        .get("snapshotter.prechange")
        != Some(&true)
    {
        assert!(!snapshotter.is_finished(), "the snapshotter stopped");
        assert!(
            std::time::Instant::now() < deadline,
            "no pre-change responder"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The orchestrator (patch workflows) asks; the answer reaches its private inbox.
    let orchestrator = service_context(&nats, "orchestrator").await;
    let reply = proxflow_snapshotter::request_prechange(
        &orchestrator.bus.client,
        &PreChangeRequest {
            request_id: "patch-1".into(),
            target: SnapshotTarget::Vm { vmid: 101 },
            reason: "accounts test".into(),
            ttl_secs: None,
        },
        Duration::from_secs(20),
    )
    .await
    .expect("the snapshotter answers");
    assert_eq!(reply.error, None);
    // Its first pass took the dataset's daily snapshot (with the lease, and the event published).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !fx
        .names(&fx.source)
        .iter()
        .any(|n| n.starts_with("pf-daily-"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = admin.js.get_stream("PF_EVT").await.expect("stream");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while events
        .get_last_raw_message_by_subject("pf.evt.snapshot.taken")
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "no snapshot event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let replicator_ctx = service_context(&nats, "replicator").await;
    let replicator = Replicator::new(
        &replicator_ctx,
        ReplicationConfig {
            jobs: vec![JobConfig {
                name: "offsite".into(),
                source: fx.source.clone(),
                target: fx.target.clone(),
                ..JobConfig::default()
            }],
            ..ReplicationConfig::default()
        },
    )
    .expect("the replicator opens the locks bucket");
    // The snapshotter may be pruning under the same lease right now: then it is busy, briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        match replicator.run_job("offsite", &RunControl::default()).await {
            Ok(report) => break report,
            Err(proxflow_replicator::JobError::Busy { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("replication as the replicator user: {e}"),
        }
    };
    assert!(report.bytes > 0);
    events
        .get_last_raw_message_by_subject("pf.evt.replication.completed")
        .await
        .expect("the replicator published its event");
    // A remediation of a filling pool: the remediator asks, the snapshotter's prune consumer takes
    // the request and acknowledges it (a pool its policy covers, so no dead letter).
    let remediator = service_context(&nats, "remediator").await;
    remediator
        .bus
        .publisher
        .publish(&proxflow_schemas::snapshot::PruneRequested {
            pool: "tank".into(),
            workflow_id: "rem-accounts".into(),
            reason: "accounts test".into(),
        })
        .await
        .expect("the remediator may ask for a prune");
    let mut prune: async_nats::jetstream::consumer::PullConsumer = admin
        .js
        .get_consumer_from_stream(durable::SNAPSHOTTER_PRUNE, "PF_CMD")
        .await
        .expect("the snapshotter created its prune consumer");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = prune.info().await.expect("consumer info");
        if info.ack_floor.consumer_sequence >= 1 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the prune request was never acknowledged: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        events
            .get_last_raw_message_by_subject("pf.evt.deadletter.snapshotter-prune")
            .await
            .is_err(),
        "the prune request was dead-lettered"
    );
    stop.cancel();
    snapshotter
        .await
        .expect("joined")
        .expect("the snapshotter ran cleanly");

    // Least privilege: neither may publish outside its own events.
    for (ctx, subject) in [
        (&snapshotter_ctx, "pf.evt.replication.completed"),
        (&snapshotter_ctx, "pf.cmd.workflow.provision"),
        (&replicator_ctx, "pf.evt.snapshot.taken"),
        (&replicator_ctx, "pf.evt.vm.provisioned"),
    ] {
        let denied = async { ctx.bus.js.publish(subject, "{}".into()).await?.await };
        assert!(denied.await.is_err(), "published {subject}");
    }
    // The replicator cannot take over pre-change requests.
    let mut sub = replicator_ctx
        .bus
        .client
        .subscribe("pf.rpc.snapshotter.prechange")
        .await
        .expect("the client sends the SUB");
    let _ = replicator_ctx.bus.client.flush().await;
    admin
        .client
        .publish("pf.rpc.snapshotter.prechange", "{}".into())
        .await
        .expect("sent");
    let heard = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut sub),
    )
    .await;
    assert!(
        !matches!(heard, Ok(Some(_))),
        "the replicator heard a pre-change request"
    );
}

/// Gateway, orchestrator (the remediation engine) and remediator as their own users take an alert to
/// a restarted VM, and the gateway user reads the audit trail back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_users_can_remediate_an_alert() {
    let (_dir, nats) = accounts_server();
    let admin = admin_declares(&nats).await;
    let (sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let stop = CancellationToken::new();
    let token = "alertmanager-token-0123456789";
    let gateway_ctx = service_context(&nats, "gateway").await;
    let gateway_url = proxflow_e2e::start_gateway(&gateway_ctx, "alertmanager", token, &stop).await;
    let rules = proxflow_orchestrator::remediation::Rules::parse(
        r#"
[[rule]]
name = "vm-down-restart"
alertname = "VMDown"
target = "vm/{labels.vmid}"
action = { kind = "restart_vm", vmid = "{labels.vmid}", shutdown_timeout = "30s" }
dry_run = false
"#,
    )
    .expect("rules");
    let orchestrator = tokio::spawn(proxflow_orchestrator::run(
        service_context(&nats, "orchestrator").await,
        proxflow_orchestrator::Orchestration {
            rules,
            ..proxflow_orchestrator::Orchestration::new(
                test_consumer(Duration::from_secs(30)),
                proxflow_platform::Profiles::default(),
            )
        },
        stop.clone(),
    ));
    let remediator = tokio::spawn(proxflow_remediator::run(
        service_context(&nats, "remediator").await,
        proxflow_remediator::RemediatorSettings {
            config: proxflow_platform::RemediationConfig::default(),
            pve,
        },
        stop.clone(),
    ));
    let delivery = serde_json::json!({"version": "4", "receiver": "proxflow", "alerts": [{
        "status": "firing", "labels": {"alertname": "VMDown", "vmid": "101"},
        "startsAt": "2026-11-24T10:00:00Z", "fingerprint": "a1b2c3"}]});
    let http = reqwest::Client::new();
    let posted = http
        .post(format!("{gateway_url}/v1/alerts/alertmanager"))
        .bearer_auth(token)
        .json(&delivery)
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 200);
    let store = WorkflowStore::open(&admin.js).await.expect("store");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let decisions = loop {
        let response = http
            .get(format!("{gateway_url}/v1/remediations"))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let body = response.text().await.expect("body");
        let trail: Vec<proxflow_schemas::remediation::RemediationDecision> =
            serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("the gateway user reads the trail: {e}: {body}"));
        if !trail.is_empty() {
            break trail;
        }
        for (name, task) in [
            ("orchestrator", orchestrator.is_finished()),
            ("remediator", remediator.is_finished()),
        ] {
            assert!(!task, "{name} stopped early");
        }
        assert!(std::time::Instant::now() < deadline, "no decision");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = decisions[0].workflow_id.clone().expect("acted");
    let remediator_stopped = || remediator.is_finished();
    let record = until_ended(&store, &id, &[("remediator", &remediator_stopped)]).await;
    stop.cancel();
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
    let calls: Vec<String> = sim
        .handle()
        .journal()
        .into_iter()
        .filter(|e| e.method == "POST")
        .filter_map(|e| {
            e.path
                .strip_prefix("/nodes/pve1/qemu/101/status/")
                .map(str::to_string)
        })
        .collect();
    assert_eq!(calls, ["shutdown", "start"]);
}

/// The shipped users run a patch with an approval: the gateway (`gateway`) starts the run and
/// delivers the decision, the patcher (`patcher`) scans, gates on the replication history and
/// patches with pre-change snapshots from the snapshotter (`snapshotter`). MOCK kubectl keeps the
/// nodes' state in a file (there is no API server here).
#[tokio::test]
async fn the_shipped_users_can_patch_with_an_approval() {
    let (_dir, nats) = accounts_server();
    let admin = admin_declares(&nats).await;
    let (sim, pve) = start_sim(|c| {
        c.durations.agent_boot = Duration::from_millis(200);
    })
    .await
    .expect("simulator");
    let stop = CancellationToken::new();
    // The replication gate reads the newest completed run: one that just completed.
    admin
        .publisher
        .publish(&proxflow_schemas::replication::ReplicationRun {
            job: "offsite".into(),
            run_id: "r1".into(),
            phase: proxflow_schemas::replication::ReplicationPhase::Completed,
            source: "tank/data".into(),
            target: "backup/data".into(),
            mode: None,
            base: None,
            snapshot: None,
            bytes: 0,
            duration_ms: 1,
            lag_secs: Some(60),
            error: None,
            at: chrono::Utc::now(),
        })
        .await
        .expect("admin publishes");
    let snapshotter = std::sync::Arc::new(
        proxflow_snapshotter::Snapshotter::new(
            &service_context(&nats, "snapshotter").await,
            proxflow_snapshotter::SnapshotConfig::default(),
            Some(pve.clone()),
        )
        .expect("snapshotter"),
    );
    let snapshotter_ctx = service_context(&nats, "snapshotter").await;
    tokio::spawn(snapshotter.serve_prechange(
        snapshotter_ctx.bus.client.clone(),
        snapshotter_ctx.health.clone(),
        stop.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let gateway_url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(proxflow_gateway::run(
        service_context(&nats, "gateway").await,
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config: GatewayConfig {
                bearer_tokens: std::collections::BTreeMap::from([(
                    "ops".to_owned(),
                    Secret::new("ops-token-0123456789abcdef"),
                )]),
                ..GatewayConfig::default()
            },
            profiles: proxflow_platform::Profiles::default(),
            listener,
            approvers: vec!["ops".into()],
        },
        stop.clone(),
    ));
    let kube = tempfile::tempdir().expect("tempdir");
    let kube_state = kube.path().join("kubectl.json");
    std::fs::write(
        &kube_state,
        r#"{"nodes": {"k3s-1": {}, "k3s-2": {}, "k3s-3": {}}}"#,
    )
    .expect("kubectl state");
    let mut config = proxflow_patcher::PatchConfig {
        enabled: false,
        approvers: vec!["ops".into()],
        ..proxflow_patcher::PatchConfig::default()
    };
    config.host.enabled = false;
    config.window = proxflow_patcher::window::WindowConfig::always_open();
    config.kubectl.command = vec![
        env!("CARGO_BIN_EXE_pf-test-kubectl").into(),
        "--state".into(),
        kube_state.display().to_string(),
    ];
    config.consumer = test_consumer(Duration::from_secs(30));
    let patcher = tokio::spawn(proxflow_patcher::run(
        service_context(&nats, "patcher").await,
        proxflow_patcher::PatcherSettings {
            config,
            pve: pve.clone(),
            replication: true,
        },
        stop.clone(),
    ));
    // A new kernel series on VM 103 needs an approval.
    let http = reqwest::Client::new();
    let control = format!("{}/_sim/guest/103/updates", sim.base_url());
    let auth = format!("PVEAPIToken={}={}", sim.token_id(), sim.token_secret());
    let put = http
        .put(&control)
        .header("Authorization", &auth)
        .json(&serde_json::json!({"updates": [{
            "package": "linux-image-6.5.0-41-generic", "version": "6.5.0-41.41~22.04.1",
            "archive": "jammy-security", "kernel": "6.5.0-41-generic"}]}))
        .send()
        .await
        .expect("sim control");
    assert!(put.status().is_success());
    let started: serde_json::Value = http
        .post(format!("{gateway_url}/v1/patch/runs"))
        .bearer_auth("ops-token-0123456789abcdef")
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let id = started["workflow_id"].as_str().expect("an id").to_string();
    let store = WorkflowStore::open(&admin.js).await.expect("store");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let hash = loop {
        if let Some((r, _)) = store.get(&id).await.expect("read")
            && let Some(h) = r.data["awaiting"]["approval_hash"].as_str()
        {
            break h.to_string();
        }
        assert!(!patcher.is_finished(), "the patcher stopped");
        assert!(
            std::time::Instant::now() < deadline,
            "never asked: {:#?}",
            store.get(&id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let decided = http
        .post(format!("{gateway_url}/v1/patch/runs/{id}/approve"))
        .bearer_auth("ops-token-0123456789abcdef")
        .json(&serde_json::json!({"plan": hash}))
        .send()
        .await
        .expect("approve");
    assert_eq!(decided.status(), 202);
    let record = until_ended(&store, &id, &[("patcher", &|| patcher.is_finished())]).await;
    assert_eq!(record.state, WorkflowState::Succeeded, "{:#?}", record);
    assert_eq!(
        record.data["report"]["nodes"].as_array().map(Vec::len),
        Some(3)
    );
    stop.cancel();
}

/// The lifecycle user runs an export into a zfs-fuse dataset and drills its copy (bare `zfs send |
/// zfs receive`), started by the admin as `proxflow export|drill run` would: its permissions cover
/// its engine, its schedules and its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_lifecycle_user_can_export_and_drill() {
    let (_dir, nats) = accounts_server();
    let admin = admin_declares(&nats).await;
    let fx = zfs_fixture::ZfsFixture::new("accounts-lifecycle");
    let (_sim, pve) = start_sim(|c| c.durations.agent_boot = Duration::from_millis(200))
        .await
        .expect("simulator");
    let reports = tempfile::tempdir().expect("tempdir");
    let local = proxflow_zfs::Zfs::local(Duration::from_secs(60));
    let stop = CancellationToken::new();
    tokio::spawn(proxflow_lifecycle::run(
        service_context(&nats, "lifecycle").await,
        proxflow_lifecycle::LifecycleSettings {
            export: proxflow_lifecycle::ExportConfig {
                dataset: fx.source.clone(),
                pools: vec!["tank".into()],
                ..proxflow_lifecycle::ExportConfig::default()
            },
            // Not what these tests look at: no scheduled health runs.
            health: proxflow_lifecycle::HealthConfig {
                enabled: false,
                ..proxflow_lifecycle::HealthConfig::default()
            },
            drill: proxflow_lifecycle::DrillConfig {
                report_dir: reports.path().to_owned(),
                restore: false,
                ..proxflow_lifecycle::DrillConfig::default()
            },
            drill_targets: vec![proxflow_lifecycle::DrillTarget {
                job: "offsite".into(),
                source: fx.source.clone(),
                target: fx.target.clone(),
                source_zfs: local.clone(),
                target_zfs: local,
            }],
            pve,
        },
        stop.clone(),
    ));
    let admin_ctx = ServiceContext::new(
        admin,
        Health::default(),
        Metrics::new(),
        Duration::from_secs(5),
    )
    .await
    .expect("admin context");
    let engine = proxflow_runtime::workflow::Engine::new(&admin_ctx)
        .await
        .expect("engine");
    let input = proxflow_schemas::lifecycle::JobInput {
        dry_run: false,
        requested_by: "admin".into(),
    };
    let run = |kind, id| proxflow_e2e::run_workflow(&engine, kind, id, &input);
    let export = run(proxflow_lifecycle::export::KIND, "export-accounts").await;
    assert_eq!(export.state, WorkflowState::Succeeded, "{:?}", export.error);
    fx.snapshot(&fx.source, "s1");
    fx.send_bare("s1");
    let drill = run(proxflow_lifecycle::drill::KIND, "drill-accounts").await;
    assert_eq!(drill.state, WorkflowState::Succeeded, "{:?}", drill.error);
    stop.cancel();
}
