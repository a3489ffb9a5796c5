//! The gateway's webhooks (provisioning, Alertmanager) and the workflow status API over real HTTP,
//! against a real nats-server: what is accepted is published exactly once (with a pending workflow
//! record for a provision), and whatever is refused leaves the ingest stream and the workflow bucket
//! untouched.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use proxflow_gateway::api::workflow_id;
use proxflow_gateway::webhook::{self, SignedHeaders, WebhookKey};
use proxflow_gateway::{GatewayConfig, WorkflowAccepted};
use proxflow_platform::Profiles;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::config::{Secret, TelemetryConfig};
use proxflow_runtime::telemetry::TelemetryGuard;
use proxflow_schemas::names::{bucket, header, stream};
use proxflow_schemas::provision::{IpConfig, ProvisionRequested};
use proxflow_schemas::workflow::{StepRecord, StepState, WorkflowRecord, WorkflowState};
use proxflow_testkit::TestNats;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ci-token-0123456789abcdef";
/// A real OpenSSH public key (generated with `ssh-keygen -t ed25519`).
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKZ2Z0ZzdhGaWLWNq147zKbEBGPziV/dR1yRJKm0FXUj ops@proxflow-test";
const WAIT: Duration = Duration::from_secs(20);
const AM_PASSWORD: &str = "am-password-0123456789";

/// Trace ids are minted only with the OpenTelemetry layer installed: once per test binary, as
/// `proxflow serve` does per process. Nothing is exported, so the guard never needs flushing.
fn telemetry() {
    static GUARD: OnceLock<TelemetryGuard> = OnceLock::new();
    GUARD.get_or_init(|| {
        proxflow_runtime::telemetry::init(&TelemetryConfig::default(), "gateway-test")
            .expect("telemetry")
    });
}

struct Gateway {
    nats: TestNats,
    ctx: ServiceContext,
    base: String,
    http: reqwest::Client,
    secrets: [Secret; 2],
    stop: CancellationToken,
    server: JoinHandle<Result<(), proxflow_gateway::GatewayError>>,
}

async fn start() -> Gateway {
    start_with(|_| {}).await
}

/// A gateway with the test's changes to the default test configuration.
async fn start_with(adjust: impl FnOnce(&mut GatewayConfig)) -> Gateway {
    telemetry();
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("gateway").await.expect("ctx");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let secrets = [webhook::generate_secret(), webhook::generate_secret()];
    let config = GatewayConfig {
        webhook_secrets: secrets.to_vec(),
        bearer_tokens: BTreeMap::from([("ci".to_owned(), Secret::new(TOKEN))]),
        alerts: proxflow_gateway::config::AlertIngestConfig {
            basic_auth: BTreeMap::from([("alertmanager".to_owned(), Secret::new(AM_PASSWORD))]),
            ..Default::default()
        },
        ..GatewayConfig::default()
    };
    let mut config = config;
    adjust(&mut config);
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
    let gw = Gateway {
        nats,
        ctx,
        base,
        http: reqwest::Client::new(),
        secrets,
        stop,
        server,
    };
    // Serving (buckets opened) before a test touches it, so a test that stops NATS stops it under a
    // running gateway.
    gw.wait_ready(200).await;
    gw
}

fn body(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("json")
}

impl Gateway {
    fn post(&self, body: &[u8]) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/provision", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec())
    }

    fn signed_by(&self, secret: &Secret, body: &[u8]) -> (reqwest::RequestBuilder, SignedHeaders) {
        let signed = SignedHeaders::new(secret, body).expect("signs");
        let mut request = self.post(body);
        for (name, value) in signed.pairs() {
            request = request.header(name, value);
        }
        (request, signed)
    }

    fn signed(&self, body: &[u8]) -> (reqwest::RequestBuilder, SignedHeaders) {
        self.signed_by(&self.secrets[0], body)
    }

    fn get_workflow(&self, id: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}/v1/workflows/{id}", self.base))
    }

    async fn ingest(&self) -> Stream {
        self.ctx
            .bus
            .js
            .get_stream(stream::INGEST)
            .await
            .expect("ingest stream")
    }

    async fn published(&self) -> u64 {
        self.ingest()
            .await
            .info()
            .await
            .expect("stream info")
            .state
            .messages
    }

    async fn record(&self, id: &str) -> Option<WorkflowRecord> {
        let kv = self
            .ctx
            .bus
            .js
            .get_key_value(bucket::WORKFLOWS)
            .await
            .expect("bucket");
        kv.get(id)
            .await
            .expect("kv get")
            .map(|b| serde_json::from_slice(&b).expect("a workflow record"))
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Polls `/readyz` until it answers `status` (NATS went away or came back).
    async fn wait_ready(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self
                .http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .expect("readyz");
            if r.status() == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.server.await.expect("joins").expect("clean stop");
    }
}

fn count(metrics: &str, outcome: &str) -> u64 {
    let line = format!("proxflow_webhooks_total{{endpoint=\"provision\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

fn trace_of(response: &reqwest::Response) -> String {
    let tp = response.headers()["traceparent"].to_str().expect("ascii");
    tp.split('-').nth(1).expect("trace id").to_owned()
}

#[tokio::test]
async fn a_signed_request_becomes_one_message_and_a_pending_workflow() {
    let gw = start().await;
    let request = body(json!({
        "name": "k3s-4",
        "overrides": {"cores": 8, "memory_mib": 16384},
        "ssh_keys": [SSH_KEY],
        "ip": {"mode": "static", "cidr": "10.20.0.44/24", "gateway": "10.20.0.1"},
        "tags": ["gpu"],
    }));
    let (post, signed) = gw.signed(&request);
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = post
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    assert_eq!(
        trace_of(&response),
        caller_trace,
        "the caller's trace continues"
    );
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let accepted: WorkflowAccepted = response.json().await.expect("json");
    // Without an idempotency key the webhook id is the key: a sender's retry names the same workflow.
    let id = workflow_id(&signed.id);
    assert_eq!(accepted.workflow_id, id);
    assert_eq!(accepted.state, WorkflowState::Pending);
    assert_eq!(accepted.trace_id.as_deref(), Some(caller_trace));
    assert_eq!(
        accepted.status_url,
        format!("{}/v1/workflows/{id}", gw.base)
    );
    assert_eq!(location, accepted.status_url);

    let record = gw.record(&id).await.expect("record created");
    assert_eq!(record.kind, "provision");
    assert_eq!(record.state, WorkflowState::Pending);
    assert_eq!(record.origin.source, "webhook");
    assert_eq!(record.origin.reference, signed.id);
    assert_eq!(record.origin.reason, "provision k3s-4 (k8s-node)");
    assert_eq!(record.trace_id.as_deref(), Some(caller_trace));
    assert!(record.steps.is_empty());

    assert_eq!(gw.published().await, 1);
    let msg = gw.ingest().await.get_raw_message(1).await.expect("message");
    assert_eq!(msg.subject.as_str(), "pf.ingest.webhook.provision");
    let hdr = |name: &str| {
        msg.headers
            .get(name)
            .unwrap_or_else(|| panic!("{name} header"))
            .as_str()
            .to_owned()
    };
    assert_eq!(hdr(header::MSG_ID), format!("provision/{id}"));
    assert_eq!(hdr(header::SCHEMA), "pf.ingest.provision_requested/v1");
    assert!(hdr(header::TRACEPARENT).contains(caller_trace));
    let sent: ProvisionRequested = serde_json::from_slice(&msg.payload).expect("payload");
    let key_id = WebhookKey::parse(&gw.secrets[0])
        .expect("key")
        .id()
        .to_owned();
    assert_eq!(sent.workflow_id, id);
    assert_eq!(sent.idempotency_key, signed.id);
    assert_eq!(
        (sent.name.as_str(), sent.profile.as_str()),
        ("k3s-4", "k8s-node")
    );
    assert_eq!(
        (sent.overrides.cores, sent.overrides.memory_mib),
        (Some(8), Some(16384))
    );
    assert_eq!(sent.ssh_keys, [SSH_KEY]);
    assert_eq!(
        sent.ip,
        IpConfig::Static {
            cidr: "10.20.0.44/24".into(),
            gateway: "10.20.0.1".into()
        }
    );
    assert_eq!(sent.tags, ["gpu"]);
    assert_eq!(sent.requested_by, format!("webhook:{key_id}"));
    assert_eq!(record.data, serde_json::to_value(&sent).expect("json"));

    // The same delivery again (a retry after the 202 was lost, or a replay): the same workflow with
    // its link, 200, nothing sent; the sender can record the VM it asked for.
    let mut replay = gw.post(&request);
    for (name, value) in signed.pairs() {
        replay = replay.header(name, value);
    }
    let replayed = replay.send().await.expect("post");
    assert_eq!(replayed.status(), 200);
    assert_eq!(
        replayed.headers()["location"].to_str().expect("ascii"),
        location
    );
    let again: WorkflowAccepted = replayed.json().await.expect("json");
    assert_eq!(again.workflow_id, id);
    assert_eq!(again.status_url, accepted.status_url);
    assert_eq!(gw.published().await, 1);

    // The same webhook id with another body (correctly signed: a sender's bug): 409, nothing sent.
    let other = body(json!({"name": "k3s-other"}));
    let resigned = SignedHeaders::with_id(&gw.secrets[0], &signed.id, &other).expect("signs");
    let mut reuse = gw.post(&other);
    for (name, value) in resigned.pairs() {
        reuse = reuse.header(name, value);
    }
    let reused = reuse.send().await.expect("post");
    assert_eq!(reused.status(), 409);
    let err: Value = reused.json().await.expect("json");
    assert_eq!(
        err["error"],
        format!(
            "webhook-id {} was already accepted with another body",
            signed.id
        )
    );
    assert_eq!(gw.published().await, 1);

    let metrics = gw.metrics().await;
    assert_eq!(count(&metrics, "accepted"), 1, "{metrics}");
    assert_eq!(count(&metrics, "duplicate"), 2, "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn links_never_come_from_the_requests_host_header() {
    let gw = start().await;
    let request = body(json!({"name": "k3s-7"}));
    let (post, _) = gw.signed(&request);
    let response = post
        .header("host", "attacker.example")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(location.starts_with(&gw.base), "{location}");
    assert!(!location.contains("attacker"), "{location}");
    gw.shutdown().await;
}

#[tokio::test]
async fn one_idempotency_key_is_one_workflow_and_one_message() {
    let gw = start().await;
    let request = body(json!({"name": "k3s-5", "idempotency_key": "ticket-42"}));
    let (first, _) = gw.signed(&request);
    let first = first.send().await.expect("post");
    assert_eq!(first.status(), 202);
    let first: WorkflowAccepted = first.json().await.expect("json");
    assert_eq!(first.workflow_id, workflow_id("ticket-42"));

    // A new delivery (new webhook id) with the same key: the same workflow, 200, nothing new on the
    // stream (the pending workflow's request is published again and dropped by the dedupe window).
    let (second, _) = gw.signed(&request);
    let second = second.send().await.expect("post");
    assert_eq!(second.status(), 200);
    let second: WorkflowAccepted = second.json().await.expect("json");
    assert_eq!(second, first);
    // The header form of the key is the same key.
    let header_form = body(json!({"name": "k3s-5"}));
    let (third, _) = gw.signed(&header_form);
    let third = third
        .header("idempotency-key", "ticket-42")
        .send()
        .await
        .expect("post");
    assert_eq!(third.status(), 200);
    assert_eq!(gw.published().await, 1);
    // The same key for a different request is the caller's mistake: 422 naming the key, nothing
    // started (as Stripe answers).
    let different = body(json!({"name": "k3s-9", "idempotency_key": "ticket-42"}));
    let (fourth, _) = gw.signed(&different);
    let fourth = fourth.send().await.expect("post");
    assert_eq!(fourth.status(), 422);
    let err: Value = fourth.json().await.expect("json");
    assert!(
        err["errors"]["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .contains("already used for a different request"),
        "{err}"
    );
    assert_eq!(gw.published().await, 1);

    // Two concurrent deliveries of one new webhook id: one creates, the other gets the same workflow.
    let request = body(json!({"name": "k3s-6"}));
    let signed = SignedHeaders::new(&gw.secrets[0], &request).expect("signs");
    let send = || {
        let mut post = gw.post(&request);
        for (name, value) in signed.pairs() {
            post = post.header(name, value);
        }
        post.send()
    };
    let (a, b) = tokio::join!(send(), send());
    let mut statuses = [
        a.expect("post").status().as_u16(),
        b.expect("post").status().as_u16(),
    ];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 202]);
    assert_eq!(gw.published().await, 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pending_workflow_whose_publish_was_lost_is_published_on_the_next_request() {
    let gw = start().await;
    // What a gateway leaves behind when it created the record and then lost NATS before publishing.
    let id = workflow_id("ticket-lost");
    let now = chrono::Utc::now();
    let lost = ProvisionRequested {
        workflow_id: id.clone(),
        idempotency_key: "ticket-lost".into(),
        name: "k3s-lost".into(),
        profile: "k8s-node".into(),
        overrides: Default::default(),
        ssh_keys: Vec::new(),
        ip: IpConfig::Dhcp,
        tags: Vec::new(),
        requested_by: "token:ci".into(),
        requested_at: now,
    };
    let record = WorkflowRecord {
        id: id.clone(),
        kind: "provision".into(),
        state: WorkflowState::Pending,
        origin: proxflow_schemas::workflow::Origin {
            source: "webhook".into(),
            reference: "ci".into(),
            reason: "provision k3s-lost (k8s-node)".into(),
        },
        steps: Vec::new(),
        data: serde_json::to_value(&lost).expect("json"),
        error: None,
        trace_id: None,
        traceparent: None,
        wait: None,
        parent: None,
        created_at: now,
        updated_at: now,
    };
    let store = proxflow_runtime::workflow::WorkflowStore::open(&gw.ctx.bus.js)
        .await
        .expect("store");
    assert!(store.create(&record).await.expect("create"));
    assert_eq!(gw.published().await, 0);

    // The caller retries the same request: it gets the existing workflow, and the stored request
    // is what goes out.
    let retry = gw
        .post(&body(json!({"name": "k3s-lost"})))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "ticket-lost")
        .send()
        .await
        .expect("post");
    assert_eq!(retry.status(), 200);
    assert_eq!(gw.published().await, 1);
    let msg = gw.ingest().await.get_raw_message(1).await.expect("message");
    let sent: ProvisionRequested = serde_json::from_slice(&msg.payload).expect("payload");
    assert_eq!(sent, lost);
    gw.shutdown().await;
}

#[tokio::test]
async fn refused_requests_publish_nothing() {
    let gw = start().await;
    let valid = body(json!({"name": "k3s-7"}));
    let status = |r: Result<reqwest::Response, reqwest::Error>| r.expect("post").status().as_u16();

    // Signed with a secret the gateway does not know.
    let (forged, _) = gw.signed_by(&webhook::generate_secret(), &valid);
    let forged = forged.send().await.expect("post");
    assert_eq!(forged.status(), 401);
    let err: Value = forged.json().await.expect("json");
    assert_eq!(err, json!({"error": "unauthorized"}), "nothing about why");

    // A valid signature over another body.
    let (_, signed) = gw.signed(&valid);
    let mut tampered = gw.post(&body(json!({"name": "k3s-8"})));
    for (name, value) in signed.pairs() {
        tampered = tampered.header(name, value);
    }
    assert_eq!(status(tampered.send().await), 401);

    // Signed six minutes ago: outside the 5-minute tolerance.
    let old = chrono::Utc::now().timestamp() - 360;
    let signature = webhook::sign(&gw.secrets[0], "msg_old", old, &valid).expect("signs");
    let expired = gw
        .post(&valid)
        .header(webhook::ID_HEADER, "msg_old")
        .header(webhook::TIMESTAMP_HEADER, old.to_string())
        .header(webhook::SIGNATURE_HEADER, signature);
    assert_eq!(status(expired.send().await), 401);

    // No credentials, or a wrong token.
    assert_eq!(status(gw.post(&valid).send().await), 401);
    assert_eq!(
        status(
            gw.post(&valid)
                .bearer_auth("not-the-token-at-all")
                .send()
                .await
        ),
        401
    );

    // Over 64 KiB, signed: refused by size before the signature is even checked.
    let huge = body(json!({"name": "k3s-9", "tags": ["x".repeat(70 * 1024)]}));
    let (too_large, _) = gw.signed(&huge);
    assert_eq!(status(too_large.send().await), 413);

    // Not JSON by content type.
    let (_, signed) = gw.signed(&valid);
    let mut plain = gw
        .http
        .post(format!("{}/v1/provision", gw.base))
        .header("content-type", "text/plain")
        .body(valid.clone());
    for (name, value) in signed.pairs() {
        plain = plain.header(name, value);
    }
    assert_eq!(status(plain.send().await), 415);

    // Authenticated but invalid: every field named.
    let invalid = body(json!({
        "name": "K3S_10",
        "overrides": {"cores": 99},
        "ssh_keys": [SSH_KEY, "ssh-ed25519 not-a-key"],
        "ip": {"mode": "static", "cidr": "10.20.0.44/24", "gateway": "192.168.0.1"},
        "tags": ["Bad Tag"],
        "extra": true,
    }));
    let (post, _) = gw.signed(&invalid);
    let rejected = post.send().await.expect("post");
    assert_eq!(rejected.status(), 422);
    let errors: Value = rejected.json().await.expect("json");
    let fields: Vec<&String> = errors["errors"]
        .as_object()
        .expect("errors object")
        .keys()
        .collect();
    assert_eq!(
        fields,
        [
            "extra",
            "ip.gateway",
            "name",
            "overrides.cores",
            "ssh_keys[1]",
            "tags[0]"
        ]
    );

    // An unknown profile, named with the ones there are.
    let (post, _) = gw.signed(&body(json!({"name": "k3s-11", "profile": "gpu-node"})));
    let rejected = post.send().await.expect("post");
    assert_eq!(rejected.status(), 422);
    let errors: Value = rejected.json().await.expect("json");
    assert_eq!(
        errors["errors"]["profile"],
        "unknown profile \"gpu-node\"; known: k8s-node"
    );

    assert_eq!(gw.published().await, 0, "a refused request was published");
    for name in ["msg_old", &signed.id] {
        assert!(gw.record(&workflow_id(name)).await.is_none());
    }
    let metrics = gw.metrics().await;
    for (outcome, n) in [
        ("unauthorized", 5),
        ("too_large", 1),
        ("unsupported_type", 1),
        ("invalid", 2),
        ("accepted", 0),
    ] {
        assert_eq!(count(&metrics, outcome), n, "{outcome}: {metrics}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_rotated_secret_and_bearer_tokens_are_accepted() {
    let gw = start().await;
    // Signed with the second configured secret only (a sender already moved to the new key).
    let request = body(json!({"name": "k3s-12"}));
    let (post, signed) = gw.signed_by(&gw.secrets[1], &request);
    assert_eq!(post.send().await.expect("post").status(), 202);
    let record = gw.record(&workflow_id(&signed.id)).await.expect("record");
    let second_key = WebhookKey::parse(&gw.secrets[1])
        .expect("key")
        .id()
        .to_owned();
    assert_eq!(record.data["requested_by"], format!("webhook:{second_key}"));

    // A bearer token: recorded by name; without a key every call is a workflow of its own (each
    // for a VM of its own name: one name is one VM).
    let by_token = |name: &str| {
        gw.post(&body(json!({ "name": name })))
            .bearer_auth(TOKEN)
            .send()
    };
    let (a, b) = (
        by_token("k3s-13").await.expect("post"),
        by_token("k3s-14").await.expect("post"),
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
    let a: WorkflowAccepted = a.json().await.expect("json");
    let b: WorkflowAccepted = b.json().await.expect("json");
    assert_ne!(a.workflow_id, b.workflow_id);
    let record = gw.record(&a.workflow_id).await.expect("record");
    assert_eq!(record.origin.reference, "ci");
    assert_eq!(record.data["requested_by"], "token:ci");

    // With an Idempotency-Key header a token caller is idempotent too.
    let keyed = || {
        gw.post(&body(json!({"name": "k3s-15"})))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "deploy-7")
            .send()
    };
    assert_eq!(keyed().await.expect("post").status(), 202);
    assert_eq!(keyed().await.expect("post").status(), 200);
    assert_eq!(gw.published().await, 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn workflows_are_readable_with_a_bearer_token_only() {
    let gw = start().await;
    let (post, _) = gw.signed(&body(json!({"name": "k3s-13"})));
    let accepted: WorkflowAccepted = post.send().await.expect("post").json().await.expect("json");
    let id = accepted.workflow_id;

    // The orchestrator moves it on: steps with times and outcomes, the VMID and address in data.
    let kv = gw
        .ctx
        .bus
        .js
        .get_key_value(bucket::WORKFLOWS)
        .await
        .expect("bucket");
    let mut record = gw.record(&id).await.expect("record");
    let now = chrono::Utc::now();
    record.state = WorkflowState::Running;
    record.steps.push(StepRecord {
        name: "clone".into(),
        state: StepState::Succeeded,
        attempts: 1,
        started_at: Some(now),
        finished_at: Some(now),
        error: None,
        output: json!({"upid": "UPID:pve1:00001234:00ABCDEF:6553F00D:qmclone:9000:root@pam:"}),
        undo: None,
    });
    record.data["vmid"] = json!(104);
    kv.put(&id, serde_json::to_vec(&record).expect("json").into())
        .await
        .expect("put");

    let read = gw
        .get_workflow(&id)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200);
    let served: WorkflowRecord = read.json().await.expect("a workflow record");
    assert_eq!(served, record);
    assert_eq!(served.data["vmid"], 104);
    assert_eq!(served.steps[0].state, StepState::Succeeded);

    let unknown = gw
        .get_workflow("prov-00000000000000000000")
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), 404);
    let not_an_id = gw
        .get_workflow("a.b")
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(not_an_id.status(), 404);

    let anonymous = gw.get_workflow(&id).send().await.expect("get");
    assert_eq!(anonymous.status(), 401);
    let wrong = gw
        .get_workflow(&id)
        .bearer_auth("ci-token-0123456789abcdeX")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn with_the_bus_down_requests_get_503_and_the_same_request_succeeds_after() {
    let mut gw = start().await;
    let request = body(json!({"name": "k3s-14"}));
    let (_, signed) = gw.signed(&request);
    let post = |gw: &Gateway| {
        let mut post = gw.post(&request);
        for (name, value) in signed.pairs() {
            post = post.header(name, value);
        }
        post.send()
    };

    gw.nats.stop();
    gw.wait_ready(503).await;
    let down = post(&gw).await.expect("post");
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    let err: Value = down.json().await.expect("json");
    assert!(
        err["error"].as_str().is_some_and(|e| e.contains("NATS")),
        "{err}"
    );
    let read = gw
        .get_workflow(&workflow_id(&signed.id))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 503);

    gw.nats
        .restart()
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", gw.nats.log_tail()));
    gw.wait_ready(200).await;
    // The very same delivery (id, timestamp, signature): nothing of it was kept, so it goes through.
    let up = post(&gw).await.expect("post");
    assert_eq!(up.status(), 202);
    assert_eq!(gw.published().await, 1);
    let metrics = gw.metrics().await;
    assert_eq!(count(&metrics, "unavailable"), 1, "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_gateway_refuses_to_start_without_credentials() {
    telemetry();
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("gateway").await.expect("ctx");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = proxflow_gateway::run(
        ctx,
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config: GatewayConfig::default(),
            profiles: Profiles::default(),
            listener,
            approvers: Vec::new(),
        },
        CancellationToken::new(),
    )
    .await
    .expect_err("no credentials");
    assert!(
        err.to_string()
            .contains("PROXFLOW_GATEWAY__WEBHOOK_SECRETS"),
        "{err}"
    );
}

/// An Alertmanager v4 delivery of `n` alerts named `name` (hex fingerprints distinct per name and index).
fn delivery(name: &str, n: usize, status: &str) -> Vec<u8> {
    let alerts: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "status": status,
                "labels": {"alertname": name, "vmid": format!("{}", 100 + i)},
                "annotations": {"summary": "VM down"},
                "startsAt": "2026-11-24T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": format!("{:08x}{i:08x}", name.bytes().map(u32::from).sum::<u32>())
            })
        })
        .collect();
    body(json!({
        "version": "4", "receiver": "proxflow", "status": status, "groupKey": "{}:{}",
        "externalURL": "http://alertmanager:9093", "alerts": alerts
    }))
}

impl Gateway {
    /// Posts an alert delivery with the bearer token.
    async fn deliver(&self, body: &[u8]) -> reqwest::Response {
        self.post_alerts(body)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("post")
    }

    fn post_alerts(&self, body: &[u8]) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/alerts/alertmanager", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec())
    }
}

#[tokio::test]
async fn alert_deliveries_become_one_deduplicated_message_per_alert() {
    let gw = start().await;
    let three = delivery("VMDown", 3, "firing");
    let r = gw.deliver(&three).await;
    assert_eq!(r.status(), 200);
    let accepted: Value = r.json().await.expect("json");
    assert_eq!(accepted, json!({"alerts": 3, "duplicates": 0}));
    assert_eq!(gw.published().await, 3);
    // Alertmanager's re-send of the group (or a retry) is the same three alerts: dropped by the stream.
    let again = gw
        .post_alerts(&three)
        .basic_auth("alertmanager", Some(AM_PASSWORD))
        .send()
        .await
        .expect("post");
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.expect("json")["duplicates"], 3);
    assert_eq!(gw.published().await, 3);
    // Resolved is another fact about the same alert.
    let resolved = gw
        .post_alerts(&delivery("VMDown", 1, "resolved"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("post");
    assert_eq!(resolved.status(), 200);
    assert_eq!(gw.published().await, 4);
    let stored = gw
        .ingest()
        .await
        .get_last_raw_message_by_subject("pf.ingest.alertmanager.alert")
        .await
        .expect("last alert");
    let alert: proxflow_schemas::alert::AlertReceived =
        serde_json::from_slice(&stored.payload).expect("an alert");
    assert_eq!(alert.status, proxflow_schemas::alert::AlertStatus::Resolved);
    assert_eq!(alert.received_by, "token:ci");
    assert_eq!(alert.labels["vmid"], "100");
    gw.shutdown().await;
}

#[tokio::test]
async fn refused_alert_deliveries_publish_nothing() {
    let gw = start().await;
    let good = delivery("VMDown", 1, "firing");
    let cases: Vec<(reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        (gw.post_alerts(&good), 401, None),
        (gw.post_alerts(&good).bearer_auth("wrong-token-0123456789"), 401, None),
        (
            gw.post_alerts(&good).basic_auth("alertmanager", Some("wrong-password-0123")),
            401,
            None,
        ),
        (
            gw.http
                .post(format!("{}/v1/alerts/alertmanager", gw.base))
                .header("content-type", "text/plain")
                .body(good.clone())
                .basic_auth("alertmanager", Some(AM_PASSWORD)),
            415,
            None,
        ),
        (
            gw.post_alerts(br#"{"version":"4","receiver":"r","alerts":[{"status":"firing","labels":{"alertname":"X"},"startsAt":"soon","fingerprint":"a"}]}"#)
                .bearer_auth(TOKEN),
            400,
            Some("alerts[0].startsAt"),
        ),
        (
            gw.post_alerts(br#"{"version":"3","receiver":"r","alerts":[]}"#).bearer_auth(TOKEN),
            400,
            Some("version"),
        ),
    ];
    for (request, status, field) in cases {
        let r = request.send().await.expect("post");
        assert_eq!(r.status(), status);
        if let Some(field) = field {
            let err: Value = r.json().await.expect("json");
            assert_eq!(err["field"], field, "{err}");
        }
    }
    assert_eq!(gw.published().await, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn with_the_bus_down_an_alert_delivery_gets_503_and_its_retry_lands() {
    let mut gw = start().await;
    let two = delivery("HostMemoryHigh", 2, "firing");
    gw.nats.stop();
    gw.wait_ready(503).await;
    let down = gw.deliver(&two).await;
    assert_eq!(
        down.status(),
        503,
        "Alertmanager retries 5xx, and drops 4xx"
    );
    gw.nats
        .restart()
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", gw.nats.log_tail()));
    gw.wait_ready(200).await;
    let up = gw.deliver(&two).await;
    assert_eq!(up.status(), 200);
    assert_eq!(gw.published().await, 2);
    gw.shutdown().await;
}

/// Sends a signal to a process with procps' `kill`, as an operator would.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test]
async fn past_max_in_flight_a_delivery_gets_503_and_nothing_is_lost() {
    let gw = start_with(|config| config.alerts.max_in_flight = 4).await;
    // A frozen nats-server keeps the connection open but acknowledges nothing, so the first
    // delivery's four alerts stay in flight for as long as the test needs (no timing guess).
    signal(gw.nats.pid(), "-STOP");
    let first = tokio::spawn(
        gw.post_alerts(&delivery("VMDown", 4, "firing"))
            .bearer_auth(TOKEN)
            .send(),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while gauge(&gw.metrics().await, "proxflow_gateway_alerts_in_flight") < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first delivery never took its permits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = delivery("HostMemoryHigh", 2, "firing");
    let refused = gw.deliver(&second).await;
    assert_eq!(
        refused.status(),
        503,
        "back-pressure is a 5xx: Alertmanager retries it"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let reason: Value = refused.json().await.expect("json");
    assert!(
        reason
            .to_string()
            .contains("gateway.alerts.max_in_flight 4"),
        "{reason}"
    );
    signal(gw.nats.pid(), "-CONT");
    let first = first.await.expect("joins").expect("post");
    assert_eq!(first.status(), 200);
    assert_eq!(
        gauge(&gw.metrics().await, "proxflow_gateway_alerts_in_flight"),
        0
    );
    // Alertmanager's retry of the refused delivery lands: nothing was lost.
    let retried = gw.deliver(&second).await;
    assert_eq!(retried.status(), 200);
    assert_eq!(gw.published().await, 6);
    gw.shutdown().await;
}

/// The value of an unlabelled gauge in a Prometheus exposition (0 when absent).
fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |n| n.trim().parse().expect("a gauge value"))
}
