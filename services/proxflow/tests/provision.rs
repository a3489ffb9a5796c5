//! `proxflow provision` as an operator runs it, against a gateway and nats-server the test runs: the
//! signed request becomes a pending workflow, `--wait` follows it to its end, and refusals exit
//! non-zero with the gateway's reasons.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use proxflow_gateway::GatewayConfig;
use proxflow_gateway::api::workflow_id;
use proxflow_gateway::webhook::{self, WebhookKey};
use proxflow_platform::Profiles;
use proxflow_runtime::config::Secret;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::names::stream;
use proxflow_schemas::workflow::{StepRecord, StepState, WorkflowState};
use proxflow_testkit::TestNats;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ci-token-0123456789abcdef";
/// A real OpenSSH public key (generated with `ssh-keygen -t ed25519`).
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKZ2Z0ZzdhGaWLWNq147zKbEBGPziV/dR1yRJKm0FXUj ops@proxflow-test";

/// The binary with only the `PROXFLOW_*` settings a test gives it.
fn proxflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxflow"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROXFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_submits_a_signed_request_and_waits_for_the_workflow() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("gateway").await.expect("ctx");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let secret = webhook::generate_secret();
    let config = GatewayConfig {
        webhook_secrets: vec![secret.clone()],
        bearer_tokens: BTreeMap::from([("ci".to_owned(), Secret::new(TOKEN))]),
        ..GatewayConfig::default()
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(proxflow_gateway::run(
        ctx.clone(),
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config,
            profiles: Profiles::default(),
            listener,
            approvers: Vec::new(),
        },
        stop.clone(),
    ));
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("id_ed25519.pub");
    std::fs::write(&key_file, format!("# ops\n{SSH_KEY}\n")).expect("write key");

    let mut child = proxflow()
        .args([
            "provision",
            "--name",
            "k3s-cli",
            "--cores",
            "6",
            "--ssh-key",
        ])
        .arg(&key_file)
        .args(["--ip", "10.20.0.50/24", "--gateway", "10.20.0.1"])
        .args(["--tag", "cli", "--idempotency-key", "cli-1", "--url", &base])
        .args(["--wait", "--timeout", "60s"])
        .env("PROXFLOW_GATEWAY__WEBHOOK_SECRETS", secret.expose())
        .env("PROXFLOW_GATEWAY__BEARER_TOKENS__CI", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("provision runs");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = tokio::task::spawn_blocking(move || {
        let line = lines.recv_timeout(Duration::from_secs(30));
        (line, lines)
    });
    let (line, lines) = first.await.expect("join");
    let Ok(line) = line else {
        let out = child.wait_with_output().expect("output");
        panic!(
            "provision printed nothing; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let id = workflow_id("cli-1");
    assert_eq!(line, format!("workflow  {id} (pending)"));

    // The gateway took it: one message, a pending record with the request as the CLI built it.
    let store = WorkflowStore::open(&ctx.bus.js).await.expect("store");
    let (record, _) = store.get(&id).await.expect("get").expect("record");
    assert_eq!(record.state, WorkflowState::Pending);
    assert_eq!(record.data["name"], "k3s-cli");
    assert_eq!(record.data["overrides"]["cores"], 6);
    assert_eq!(record.data["ssh_keys"][0], SSH_KEY);
    assert_eq!(record.data["ip"]["cidr"], "10.20.0.50/24");
    assert_eq!(record.data["tags"][0], "cli");
    let key_id = WebhookKey::parse(&secret).expect("key").id().to_owned();
    assert_eq!(record.data["requested_by"], format!("webhook:{key_id}"));
    let mut ingest = ctx.bus.js.get_stream(stream::INGEST).await.expect("stream");
    assert_eq!(ingest.info().await.expect("info").state.messages, 1);

    // Standing in for the orchestrator and provisioner: the workflow runs and succeeds.
    let now = chrono::Utc::now();
    store
        .update(&id, |r| {
            r.state = WorkflowState::Succeeded;
            r.steps = vec![StepRecord {
                name: "clone".into(),
                state: StepState::Succeeded,
                attempts: 1,
                started_at: Some(now),
                finished_at: Some(now),
                error: None,
                output: serde_json::Value::Null,
                undo: None,
            }];
            r.data["vmid"] = 104.into();
        })
        .await
        .expect("update");
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let rest: Vec<String> = lines.try_iter().collect();
    let rest = rest.join("\n");
    assert!(
        exit.status.success(),
        "{rest}\n{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    assert!(rest.contains("state     succeeded"), "{rest}");
    assert!(rest.contains("steps\n  clone"), "{rest}");
    assert!(rest.contains("\"vmid\":104"), "{rest}");

    // Refused by the gateway: exit 1 with the field the gateway named.
    let invalid = proxflow()
        .args(["provision", "--name", "Not_A_Label", "--url", &base])
        .env("PROXFLOW_GATEWAY__WEBHOOK_SECRETS", secret.expose())
        .output()
        .expect("runs");
    assert_eq!(invalid.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("name: must be a DNS label"),
        "{stderr}"
    );
    assert_eq!(ingest.info().await.expect("info").state.messages, 1);

    stop.cancel();
    server.await.expect("joins").expect("clean stop");
}

#[test]
fn provision_without_a_credential_is_a_config_error() {
    let out = proxflow()
        .args([
            "provision",
            "--name",
            "k3s-x",
            "--url",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PROXFLOW_GATEWAY__WEBHOOK_SECRETS"),
        "{stderr}"
    );

    let out = proxflow()
        .args([
            "provision",
            "--name",
            "k3s-x",
            "--url",
            "http://127.0.0.1:9",
            "--wait",
        ])
        .env(
            "PROXFLOW_GATEWAY__WEBHOOK_SECRETS",
            webhook::generate_secret().expose(),
        )
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78), "--wait without a token");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer"));
}
