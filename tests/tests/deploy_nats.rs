//! The NATS configs in `deploy/nats` are valid for the server version we pin, and the per-service
//! users really are least-privilege: checked against a real nats-server running the shipped accounts.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use proxflow_runtime::bus::{self, topology};
use proxflow_runtime::config::{NatsConfig, Secret};
use proxflow_runtime::nats_server;
use proxflow_runtime::ops::Metrics;
use proxflow_testkit::{TestNats, project_dir};

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

#[tokio::test]
async fn the_gateway_user_may_ingest_and_nothing_more() {
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
