//! `proxflow trace` as an operator runs it, against a real nats-server: a workflow id or trace id
//! in, the recorded spans out as a tree (or JSON); and a running `proxflow` recording its own spans
//! so that the command finds them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxflow_runtime::ServiceContext;
use proxflow_schemas::Versioned;
use proxflow_schemas::names::{bucket, header, subject};
use proxflow_schemas::trace::{SpanKind, SpanRecord, SpanStatus, StatusCode};
use proxflow_schemas::workflow::{Origin, WorkflowRecord, WorkflowState};
use proxflow_testkit::TestNats;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn proxflow(nats: &TestNats) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxflow"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROXFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PROXFLOW_NATS__URL", nats.url())
        .env("PROXFLOW_NATS__CONNECT_TIMEOUT", "5s");
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("proxflow runs"))
        .await
        .expect("joined")
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(1_750_000_000_000 + ms)
}

fn record(id: &str, parent: Option<&str>, name: &str, service: &str, ms: (i64, i64)) -> SpanRecord {
    SpanRecord {
        trace_id: TRACE.into(),
        span_id: id.into(),
        parent_span_id: parent.map(str::to_owned),
        name: name.into(),
        service: service.into(),
        kind: SpanKind::Internal,
        start: at(ms.0),
        end: at(ms.1),
        duration_us: u64::try_from((ms.1 - ms.0) * 1000).expect("positive"),
        status: SpanStatus {
            code: StatusCode::Ok,
            message: None,
        },
        attributes: Default::default(),
        events: Vec::new(),
    }
}

/// Publishes spans as a service's sink does: on `pf.trace.<trace_id>` with the schema header.
async fn publish(ctx: &ServiceContext, spans: &[SpanRecord]) {
    for span in spans {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(header::SCHEMA, SpanRecord::SCHEMA.to_string().as_str());
        ctx.bus
            .js
            .publish_with_headers(
                subject::trace(&span.trace_id),
                headers,
                serde_json::to_vec(span).expect("json").into(),
            )
            .await
            .expect("sent")
            .await
            .expect("stored");
    }
}

async fn store_workflow(ctx: &ServiceContext, id: &str, trace_id: Option<&str>) {
    let record = WorkflowRecord {
        id: id.into(),
        kind: "provision".into(),
        state: WorkflowState::Failed,
        origin: Origin {
            source: "webhook".into(),
            reference: "msg_1".into(),
            reason: "requested".into(),
        },
        steps: Vec::new(),
        data: serde_json::Value::Null,
        error: Some("join failed".into()),
        trace_id: trace_id.map(str::to_owned),
        traceparent: None,
        wait: None,
        parent: None,
        created_at: at(0),
        updated_at: at(5000),
    };
    let kv = ctx
        .bus
        .js
        .get_key_value(bucket::WORKFLOWS)
        .await
        .expect("bucket");
    kv.put(id, serde_json::to_vec(&record).expect("json").into())
        .await
        .expect("put");
}

#[tokio::test]
async fn a_workflows_spans_print_as_a_tree_and_as_json() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("trace-test").await.expect("context");
    let mut clone = record(
        "c3",
        Some("c2"),
        "pve POST /nodes/{node}/qemu/{vmid}/clone",
        "provisioner",
        (20, 65),
    );
    clone.attributes.insert(
        "pve.upid".into(),
        "UPID:pve1:0001:qmclone:104:root@pam:".into(),
    );
    clone.attributes.insert("pve.vmid".into(), "104".into());
    let mut join = record(
        "c4",
        Some("c2"),
        "run ansible-playbook",
        "provisioner",
        (100, 1300),
    );
    join.status = SpanStatus {
        code: StatusCode::Error,
        message: Some("exit 2: unreachable".into()),
    };
    // In the order services finish them: children before parents, services interleaved.
    publish(
        &ctx,
        &[
            clone,
            join,
            record(
                "c2",
                Some("c1"),
                "provision k3s-4",
                "provisioner",
                (10, 1400),
            ),
            record(
                "c1",
                Some("c0"),
                "pf.ingest.webhook.provision process",
                "orchestrator",
                (5, 1500),
            ),
            record("c0", None, "POST /v1/provision", "gateway", (0, 12)),
        ],
    )
    .await;
    store_workflow(&ctx, "prov-3f2a", Some(TRACE)).await;

    let out = run({
        let mut cmd = proxflow(&nats);
        cmd.args(["trace", "prov-3f2a"]);
        cmd
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("trace {TRACE}  (workflow prov-3f2a, 5 spans, 1.50 s)")
    );
    let shape: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            vec!["POST /v1/provision", "gateway", "12.0 ms"],
            vec![
                "└─ pf.ingest.webhook.provision process",
                "orchestrator",
                "1.50 s"
            ],
            vec!["└─ provision k3s-4", "provisioner", "1.39 s"],
            vec![
                "├─ pve POST /nodes/{node}/qemu/{vmid}/clone",
                "provisioner",
                "45.0 ms",
                "vmid=104",
                "upid=UPID:pve1:0001:qmclone:104:root@pam:"
            ],
            vec![
                "└─ run ansible-playbook",
                "provisioner",
                "1.20 s",
                "ERROR exit 2: unreachable"
            ],
        ],
        "{stdout}"
    );

    // The trace id works as well, and --json gives the records themselves.
    let out = run({
        let mut cmd = proxflow(&nats);
        cmd.args(["trace", &TRACE.to_uppercase(), "--json"]);
        cmd
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<SpanRecord> = serde_json::from_slice(&out.stdout).expect("JSON records");
    let ids: Vec<&str> = records.iter().map(|r| r.span_id.as_str()).collect();
    assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4"], "by start time");
    assert_eq!(
        records[4].status.message.as_deref(),
        Some("exit 2: unreachable")
    );
}

#[tokio::test]
async fn an_unknown_workflow_or_a_trace_without_spans_exits_1_with_the_reason() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("trace-test").await.expect("context");
    store_workflow(&ctx, "prov-untraced", None).await;
    store_workflow(&ctx, "prov-quiet", Some(TRACE)).await;
    for (id, reason) in [
        (
            "prov-missing",
            "workflow \"prov-missing\" not found in pf_workflows",
        ),
        (
            "prov-untraced",
            "workflow \"prov-untraced\" has no trace id",
        ),
        (
            "prov-quiet",
            &format!("no spans recorded for trace {TRACE} (workflow prov-quiet)"),
        ),
        ("bad key*", "reading workflow \"bad key*\""),
    ] {
        let out = run({
            let mut cmd = proxflow(&nats);
            cmd.args(["trace", id]);
            cmd
        })
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{id}: {stderr}");
        assert!(stderr.contains(reason), "{id}: {stderr}");
        assert!(out.stdout.is_empty(), "{id}");
    }
}

/// `proxflow dev` against the test's server records the gateway's request span, flushes it when
/// stopped, and `proxflow trace` finds it by the trace id the gateway echoed.
#[tokio::test]
async fn a_running_proxflow_records_its_spans_for_proxflow_trace() {
    let nats = TestNats::start().expect("nats-server");
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = proxflow(&nats)
        .arg("dev")
        // The repository root, where the simulator finds the Proxmox API schema.
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env("PROXFLOW_NATS_URL", nats.url())
        .env("PROXFLOW_DEV__STATE_DIR", state.path())
        .env("PROXFLOW_GATEWAY__LISTEN", "127.0.0.1:0")
        .env("PROXFLOW_OPS__LISTEN", "127.0.0.1:0")
        .env("PROXFLOW_SIM__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let gateway = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["gateway", url, ..] => Some((*url).to_owned()),
                    _ => None,
                }
            })
    });
    let gateway = tokio::time::timeout(Duration::from_secs(60), gateway)
        .await
        .expect("dev printed its summary in time")
        .expect("joined")
        .expect("a gateway line");

    let response = reqwest::get(format!("{gateway}/healthz"))
        .await
        .expect("healthz");
    let traceparent = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("traceparent echoed")
        .to_owned();
    let trace_id = traceparent.split('-').nth(1).expect("trace id").to_owned();
    // Stopped at once: the span is still in the batch processor (it hands spans over once a
    // second), so finding it afterwards shows that shutdown flushes spans to the bus.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("wait");
    assert!(exit.success(), "dev exited with {exit}");

    let out = run({
        let mut cmd = proxflow(&nats);
        cmd.args(["trace", &trace_id]);
        cmd
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request = stdout.lines().nth(1).expect("a span line");
    assert!(
        request.starts_with("GET /healthz") && request.contains(" gateway "),
        "{stdout}"
    );
}
