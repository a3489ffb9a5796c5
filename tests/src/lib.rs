//! # proxflow-e2e
//!
//! Cross-service end-to-end tests (`tests/tests/*.rs`) and benchmarks (`tests/benches/*.rs`) against a
//! real nats-server. This library holds what they share:
//! - [`Probe`]: a test-only wire type on `pf.evt.test.*`, so tests exercise the real publish and consume
//!   paths without borrowing a production message;
//! - [`Recorder`]: a handler that reports each delivery to the test and answers with scripted outcomes;
//! - [`next_event`] — waits (with a deadline) for the next message on a subject.
//!
//! The binary `pf-test-worker` runs one consumer loop in its own process, for tests that send real
//! signals or crash a worker.

pub mod workflows;

use std::time::Duration;

use futures::StreamExt;
use proxflow_runtime::bus::{Delivery, Handler, Outcome};
use proxflow_schemas::{Message, SchemaId, Versioned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A test message: `id` is its dedupe key, `topic` picks its subject `pf.evt.test.<topic>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Probe {
    /// Dedupe key.
    pub id: String,
    /// Subject suffix.
    pub topic: String,
}

impl Probe {
    /// A probe on `pf.evt.test.<topic>`.
    pub fn new(topic: &str, id: &str) -> Self {
        Self {
            id: id.to_owned(),
            topic: topic.to_owned(),
        }
    }
}

impl Versioned for Probe {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.test.probe",
        version: 1,
    };
}

impl Message for Probe {
    const SUBJECT: &'static str = "pf.evt.test.*";

    fn subject(&self) -> String {
        proxflow_schemas::names::subject::evt("test", &self.topic)
    }

    fn dedupe_id(&self) -> String {
        format!("probe/{}", self.id)
    }
}

/// What a [`Recorder`] saw of one delivery.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The probe's id.
    pub id: String,
    /// Delivery attempt.
    pub attempt: u32,
    /// When the handler was called.
    pub at: tokio::time::Instant,
}

/// A handler that reports every delivery on a channel and answers with `script(probe, attempt)`.
pub struct Recorder<F> {
    seen: mpsc::UnboundedSender<Seen>,
    script: F,
}

impl<F> Recorder<F>
where
    F: Fn(&Probe, u32) -> Outcome + Send + Sync + 'static,
{
    /// The handler and the receiving end of its reports.
    pub fn new(script: F) -> (Self, mpsc::UnboundedReceiver<Seen>) {
        let (seen, rx) = mpsc::unbounded_channel();
        (Self { seen, script }, rx)
    }
}

impl<F> Handler<Probe> for Recorder<F>
where
    F: Fn(&Probe, u32) -> Outcome + Send + Sync + 'static,
{
    async fn handle(&self, delivery: Delivery<Probe>) -> Outcome {
        let _ = self.seen.send(Seen {
            id: delivery.message.id.clone(),
            attempt: delivery.attempt,
            at: tokio::time::Instant::now(),
        });
        (self.script)(&delivery.message, delivery.attempt)
    }
}

/// Receives the next report, failing the test after `within`.
pub async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, within: Duration) -> Seen {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(seen)) => seen,
        Ok(None) => panic!("handler channel closed"),
        Err(_) => panic!("no delivery within {within:?}"),
    }
}

/// Subscribes to the dead letters of consumer `durable` (subscribe before triggering them).
pub async fn dead_letters(
    ctx: &proxflow_runtime::ServiceContext,
    durable: &str,
) -> async_nats::Subscriber {
    ctx.bus
        .client
        .subscribe(proxflow_schemas::names::subject::dead_letter(durable))
        .await
        .expect("subscribe to dead letters")
}

/// Waits for the next message on a core subscription and decodes it, failing the test after `within`.
pub async fn next_event<T: serde::de::DeserializeOwned>(
    sub: &mut async_nats::Subscriber,
    within: Duration,
) -> T {
    let msg = tokio::time::timeout(within, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no event within {within:?}"))
        .expect("subscription open");
    serde_json::from_slice(&msg.payload).expect("event decodes")
}

/// A join command that honours the contract without an SSH target: reads the request, prints a line.
pub const JOIN_OK: &str = "cat > /dev/null; echo joined {name} at {ip}";

/// The consumer settings of provisioning tests: 3 deliveries, 50 ms between them.
pub fn test_consumer(ack_wait: Duration) -> proxflow_runtime::config::ConsumerConfig {
    proxflow_runtime::config::ConsumerConfig {
        max_deliver: 3,
        retry_backoff: vec![Duration::from_millis(50)],
        ack_wait,
        max_in_flight: 25,
    }
}

/// The provisioner configuration of end-to-end tests (in-process and `pf-test-provisioner`): the
/// seed's profiles, [`JOIN_OK`], a 1 s address timeout, [`test_consumer`].
pub fn provisioner_config(
    file_sd: std::path::PathBuf,
    ack_wait: Duration,
) -> proxflow_provisioner::ProvisionConfig {
    proxflow_provisioner::ProvisionConfig {
        join: proxflow_provisioner::join::JoinConfig {
            command: ["sh", "-c", JOIN_OK].map(String::from).to_vec(),
            timeout: Duration::from_secs(10),
        },
        file_sd,
        ip_timeout: Duration::from_secs(1),
        consumer: test_consumer(ack_wait),
        ..proxflow_provisioner::ProvisionConfig::default()
    }
}

/// Every message stored on `subject` in `stream`, decoded, oldest first (read with an ephemeral
/// consumer, so nothing is acknowledged away).
pub async fn stored<T: serde::de::DeserializeOwned>(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<T> {
    let st = js.get_stream(stream).await.expect("stream");
    let mut counts = st.info_with_subjects(subject).await.expect("subjects");
    let mut n = 0;
    while let Some(entry) = counts.next().await {
        n += entry.expect("subject count").1;
    }
    if n == 0 {
        return Vec::new();
    }
    let consumer = st
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(n)
        .messages()
        .await
        .expect("fetch");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let m = messages.next().await.expect("message").expect("message");
        out.push(serde_json::from_slice(&m.payload).expect("decodes"));
    }
    out
}

/// Waits until each (stream, durable) consumer has nothing pending or unacknowledged: whatever the
/// last input caused has happened. A consumer not declared yet (its service still starting) is not
/// idle, nor is one whose ack floor is behind what it delivered (a message a handler asked to retry
/// later, waiting out its back-off, need not count as pending or unacknowledged).
pub async fn until_idle(ctx: &proxflow_runtime::ServiceContext, consumers: &[(&str, &str)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (stream, durable) in consumers {
        loop {
            let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                ctx.bus.js.get_consumer_from_stream(*durable, *stream).await;
            if let Ok(mut consumer) = consumer {
                let info = consumer.info().await.expect("consumer info");
                if info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.ack_floor.stream_sequence >= info.delivered.stream_sequence
                {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{durable} never went idle"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until workflow `id` reaches a terminal state (60 s at most) and returns its record.
pub async fn until_ended(
    store: &proxflow_runtime::workflow::WorkflowStore,
    id: &str,
) -> proxflow_schemas::workflow::WorkflowRecord {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((r, _)) = store.get(id).await.expect("workflow store")
            && r.state.is_terminal()
        {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workflow {id} did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts workflow `id` of `kind` with `input` on `engine` (as an operator's CLI does) and waits
/// until it ends (120 s at most); returns its record.
pub async fn run_workflow(
    engine: &proxflow_runtime::workflow::Engine,
    kind: &str,
    id: &str,
    input: &impl Serialize,
) -> proxflow_schemas::workflow::WorkflowRecord {
    let origin = proxflow_schemas::workflow::Origin {
        source: "test".into(),
        reference: id.into(),
        reason: "test".into(),
    };
    engine
        .start_kind(kind, id, origin, input)
        .await
        .expect("workflow started");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(r) = engine.get(id).await.expect("workflow record")
            && r.state.is_terminal()
        {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workflow {id} did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves the gateway on a free port for `ctx` with one bearer token (`name`, `token`) until `stop`;
/// returns its base URL.
pub async fn start_gateway(
    ctx: &proxflow_runtime::ServiceContext,
    name: &str,
    token: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(proxflow_gateway::run(
        ctx.clone(),
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config: proxflow_gateway::GatewayConfig {
                bearer_tokens: std::collections::BTreeMap::from([(
                    name.to_owned(),
                    proxflow_runtime::config::Secret::new(token),
                )]),
                ..proxflow_gateway::GatewayConfig::default()
            },
            profiles: proxflow_platform::Profiles::default(),
            listener,
            approvers: Vec::new(),
        },
        stop.clone(),
    ));
    url
}

/// The gateway's Alertmanager bearer token in tests that post alerts.
pub const ALERT_TOKEN: &str = "alertmanager-token-0123456789";

/// A provisioning request as a webhook sends it: workflow `id` (also its idempotency key), VM
/// `name`, the default profile, DHCP, no SSH keys or tags; tests change what they vary.
pub fn provision_request(id: &str, name: &str) -> proxflow_schemas::provision::ProvisionRequested {
    proxflow_schemas::provision::ProvisionRequested {
        workflow_id: id.to_owned(),
        idempotency_key: id.to_owned(),
        name: name.to_owned(),
        profile: "k8s-node".into(),
        overrides: proxflow_schemas::provision::VmOverrides::default(),
        ssh_keys: Vec::new(),
        ip: proxflow_schemas::provision::IpConfig::Dhcp,
        tags: Vec::new(),
        requested_by: "test".into(),
        requested_at: chrono::Utc::now(),
    }
}

/// One alert as Alertmanager posts it (webhook v4).
pub fn alertmanager_alert(
    name: &str,
    labels: &[(&str, &str)],
    status: &str,
    starts: &str,
) -> serde_json::Value {
    let mut l: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect();
    l.insert("alertname".into(), serde_json::json!(name));
    // Alertmanager's fingerprint is a hash of the label set; any stable hash of it will do here.
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name, labels).hash(&mut h);
        format!("{:016x}", h.finish())
    };
    serde_json::json!({"status": status, "labels": l, "annotations": {}, "startsAt": starts,
           "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint})
}

/// Posts `alerts` in one delivery to the gateway at `gateway` with [`ALERT_TOKEN`], as
/// Alertmanager does; the delivery must be accepted.
pub async fn post_alerts(gateway: &str, alerts: Vec<serde_json::Value>) {
    let body = serde_json::json!({"version": "4", "receiver": "proxflow", "status": "firing",
                                  "alerts": alerts});
    let r = reqwest::Client::new()
        .post(format!("{gateway}/v1/alerts/alertmanager"))
        .bearer_auth(ALERT_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status();
    assert_eq!(status, 200, "{:?}", r.text().await);
}

/// Polls `probe` until it yields something, failing the test with `what` after 60 s.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "{what} within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An environment variable a test child process (`pf-test-*`) is configured by.
pub fn child_env(name: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    std::env::var(name).with_context(|| format!("{name} not set"))
}

/// The Proxmox client of a test child process: `PF_PVE_URL`, `PF_PVE_TOKEN_ID`, `PF_PVE_SECRET`,
/// tasks polled at most 50 ms apart.
pub fn child_pve() -> anyhow::Result<proxflow_pve::PveClient> {
    Ok(proxflow_pve::PveClient::new(&proxflow_pve::PveConfig {
        url: child_env("PF_PVE_URL")?,
        token_id: child_env("PF_PVE_TOKEN_ID")?,
        token_secret: proxflow_runtime::config::Secret::new(child_env("PF_PVE_SECRET")?),
        task_poll_max: Duration::from_millis(50),
        ..proxflow_pve::PveConfig::default()
    })?)
}

/// What a test child process (`pf-test-*`) runs on: telemetry installed as `proxflow serve` does,
/// and a service context on the nats-server of `PF_NATS_URL` with `grace` to shut down in.
pub async fn child_context(
    name: &str,
    grace: Duration,
) -> anyhow::Result<(
    proxflow_runtime::ServiceContext,
    proxflow_runtime::telemetry::TelemetryGuard,
)> {
    proxflow_runtime::install_crypto_provider();
    let telemetry = proxflow_runtime::telemetry::init(
        &proxflow_runtime::config::TelemetryConfig::default(),
        name,
    )?;
    let metrics = proxflow_runtime::ops::Metrics::new();
    let nats = proxflow_runtime::config::NatsConfig {
        url: child_env("PF_NATS_URL")?.parse()?,
        ..proxflow_runtime::config::NatsConfig::default()
    };
    let bus = proxflow_runtime::bus::connect(&nats, name, metrics.clone()).await?;
    let ctx = proxflow_runtime::ServiceContext::new(
        bus,
        proxflow_runtime::ops::Health::default(),
        metrics,
        grace,
    )
    .await?;
    Ok((ctx, telemetry))
}

/// The body of a `harness = false` bench: nothing unless cargo passes `--bench` (`cargo test` builds
/// and runs benches without it), else `bench` on a multi-threaded runtime.
pub fn bench_main<F: std::future::Future<Output = ()>>(bench: impl FnOnce() -> F) {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    proxflow_runtime::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench());
}

/// Logs in to the console at `gateway` with bearer `token` as a browser would (the login form's
/// double-submit cookie, then the form): the `Cookie` header value of the session.
pub async fn console_session(http: &reqwest::Client, gateway: &str, token: &str) -> String {
    let form = http
        .get(format!("{gateway}/ui/login"))
        .send()
        .await
        .expect("login form");
    let login_cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pf_login="))
        .and_then(|v| v.split(';').next())
        .expect("login form cookie")
        .to_owned();
    let field = login_cookie.trim_start_matches("pf_login=").to_owned();
    let answer = http
        .post(format!("{gateway}/ui/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("token", token), ("form", field.as_str())])
                .expect("form"),
        )
        .send()
        .await
        .expect("login");
    assert_eq!(answer.status(), 303, "login refused");
    answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pf_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned()
}
