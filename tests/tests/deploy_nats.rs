//! The NATS configs in `deploy/nats` are valid for the server version we pin, and the per-service
//! users really are least-privilege: checked against a real nats-server running the shipped accounts.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod support;

use proxflow_e2e::{provisioner_config, test_consumer};
use proxflow_gateway::GatewayConfig;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::{self, topology};
use proxflow_runtime::config::{NatsConfig, Secret};
use proxflow_runtime::nats_server;
use proxflow_runtime::ops::Health;
use proxflow_runtime::ops::Metrics;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::workflow::WorkflowState;
use proxflow_testkit::pve::start_sim;
use proxflow_testkit::{TestNats, project_dir};
use tokio_util::sync::CancellationToken;

const PASSWORDS: [&str; 7] = [
    "PF_ADMIN_PASSWORD",
    "PF_GATEWAY_PASSWORD",
    "PF_ORCHESTRATOR_PASSWORD",
    "PF_PROVISIONER_PASSWORD",
    "PF_SYS_PASSWORD",
    "PF_ROUTE_PASSWORD",
    "PF_UNUSED",
];

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
    std::fs::write(&config, "include ./accounts.conf\n").expect("write config");
    let env = [
        ("PF_ADMIN_PASSWORD", "admin-pw"),
        ("PF_GATEWAY_PASSWORD", "gateway-pw"),
        ("PF_ORCHESTRATOR_PASSWORD", "orchestrator-pw"),
        ("PF_PROVISIONER_PASSWORD", "provisioner-pw"),
        ("PF_SYS_PASSWORD", "sys-pw"),
    ];
    let nats = TestNats::start_with_config(&config, &env).expect("nats-server with accounts");
    (dir, nats)
}

#[tokio::test]
async fn the_gateway_user_may_ingest_and_nothing_more() {
    let (_dir, nats) = accounts_server();

    let admin = bus::connect(&user(&nats, "admin", "_INBOX"), "admin", Metrics::new())
        .await
        .expect("admin connects");
    topology::declare(&admin.client, &admin.js, 1)
        .await
        .expect("admin declares the topology");

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
    ServiceContext {
        bus,
        health: Health::default(),
        metrics,
        shutdown_grace: Duration::from_secs(1),
    }
}

/// Every service as its own least-privilege user runs a whole provision: a permission missing from
/// `accounts.conf` shows up here as a stuck or failed workflow, not in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_users_can_run_a_provision() {
    let (_dir, nats) = accounts_server();
    let admin = bus::connect(&user(&nats, "admin", "_INBOX"), "admin", Metrics::new())
        .await
        .expect("admin connects");
    topology::declare(&admin.client, &admin.js, 1)
        .await
        .expect("admin declares the topology");
    let (_sim, pve) = start_sim(|_| {}).await.expect("simulator");
    let file_sd = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();

    let secret = proxflow_gateway::webhook::generate_secret();
    let gateway_config = GatewayConfig {
        webhook_secrets: vec![secret.clone()],
        ..GatewayConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let gateway_url = format!("http://{}", listener.local_addr().expect("address"));
    let profiles = proxflow_provisioner::Profiles::default();
    let gateway = tokio::spawn(proxflow_gateway::run(
        service_context(&nats, "gateway").await,
        gateway_config,
        profiles.clone(),
        listener,
        stop.clone(),
    ));
    let orchestrator = tokio::spawn(proxflow_orchestrator::run(
        service_context(&nats, "orchestrator").await,
        test_consumer(Duration::from_secs(30)),
        profiles,
        stop.clone(),
    ));
    let provisioner = tokio::spawn(proxflow_provisioner::run(
        service_context(&nats, "provisioner").await,
        provisioner_config(file_sd.path().join("sd.json"), Duration::from_secs(30)),
        pve,
        stop.clone(),
    ));

    let accepted =
        support::provision_via_gateway(&gateway_url, &secret, br#"{"name": "least-privilege"}"#)
            .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let id = accepted["workflow_id"]
        .as_str()
        .expect("workflow id")
        .to_owned();
    let store = WorkflowStore::open(&admin.js).await.expect("store");
    let record = loop {
        if let Some((r, _)) = store.get(&id).await.expect("read")
            && r.state.is_terminal()
        {
            break r;
        }
        if std::time::Instant::now() > deadline {
            // Name a service that stopped (a permission refused at start) before failing.
            for (name, finished) in [
                ("gateway", gateway.is_finished()),
                ("orchestrator", orchestrator.is_finished()),
                ("provisioner", provisioner.is_finished()),
            ] {
                assert!(!finished, "{name} stopped early");
            }
            panic!("workflow {id} did not finish: {:#?}", store.get(&id).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.cancel();
    assert_eq!(record.state, WorkflowState::Succeeded, "{record:#?}");
}
