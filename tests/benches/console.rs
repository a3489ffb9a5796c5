//! `just bench`: the console's pages with a busy history — 1,000 workflow records (most ended,
//! some running, waiting or failed) and 10,000 remediation decisions on the bus — served by a real
//! gateway over HTTP with a real session. Prints each page's median, p95 and worst time over 30
//! requests; the target is < 200 ms.

use std::time::{Duration, Instant};

use chrono::Utc;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::Message;
use proxflow_schemas::alert::AlertStatus;
use proxflow_schemas::remediation::{Reason, RemediationDecision, Verdict};
use proxflow_schemas::workflow::{Origin, StepRecord, StepState, WorkflowRecord, WorkflowState};
use proxflow_testkit::TestNats;

const WORKFLOWS: usize = 1_000;
const DECISIONS: usize = 10_000;
const ROUNDS: usize = 30;

fn record(n: usize) -> WorkflowRecord {
    let now = Utc::now() - chrono::Duration::minutes(i64::try_from(WORKFLOWS - n).unwrap_or(0));
    let (kind, state) = match n % 100 {
        0..=2 => ("provision", WorkflowState::Running),
        3 => ("patch_run", WorkflowState::Waiting),
        4..=9 => ("provision", WorkflowState::Failed),
        10..=29 => ("remediate", WorkflowState::Succeeded),
        30..=34 => ("scale_out", WorkflowState::Succeeded),
        _ => ("provision", WorkflowState::Succeeded),
    };
    let steps = [
        "admit",
        "reserve_vmid",
        "clone",
        "configure",
        "resize",
        "start",
        "wait_ip",
    ]
    .iter()
    .map(|name| StepRecord {
        state: StepState::Succeeded,
        attempts: 1,
        started_at: Some(now),
        finished_at: Some(now + chrono::Duration::seconds(1)),
        ..StepRecord::started(name, now)
    })
    .collect();
    WorkflowRecord {
        id: format!("bench-{kind}-{n:05}"),
        kind: kind.to_owned(),
        state,
        origin: Origin {
            source: "bench".into(),
            reference: format!("ref-{n}"),
            reason: "console bench".into(),
        },
        steps,
        data: serde_json::json!({ "name": format!("k3s-{n}") }),
        error: (state == WorkflowState::Failed).then(|| "clone failed: storage full".to_owned()),
        trace_id: None,
        traceparent: None,
        wait: None,
        parent: None,
        created_at: now,
        updated_at: now,
    }
}

fn decision(n: usize) -> RemediationDecision {
    RemediationDecision {
        alert_id: format!("alert-{n}"),
        fingerprint: format!("{n:016x}"),
        alertname: "NodeNotReady".into(),
        status: AlertStatus::Firing,
        rule: Some("restart-node".into()),
        target: Some(format!("vm/{}", 100 + n % 20)),
        verdict: if n.is_multiple_of(3) {
            Verdict::Acted
        } else {
            Verdict::Suppressed
        },
        reason: if n.is_multiple_of(3) {
            Reason::None
        } else {
            Reason::Cooldown
        },
        detail: "bench".into(),
        action: None,
        workflow_id: None,
        trace_id: None,
        at: Utc::now(),
    }
}

async fn time_page(http: &reqwest::Client, cookie: &str, url: &str) -> (f64, f64, f64, usize) {
    let mut times = Vec::with_capacity(ROUNDS);
    let mut size = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let response = http
            .get(url)
            .header("cookie", cookie)
            .send()
            .await
            .expect("page");
        let status = response.status();
        let body = response.bytes().await.expect("body");
        assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
        size = body.len();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (
        times[ROUNDS / 2],
        times[ROUNDS * 95 / 100],
        times[ROUNDS - 1],
        size,
    )
}

async fn bench() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("console-bench").await.expect("context");
    let engine = Engine::new(&ctx).await.expect("engine");
    let started = Instant::now();
    for chunk in (0..WORKFLOWS).collect::<Vec<_>>().chunks(50) {
        let records: Vec<WorkflowRecord> = chunk.iter().map(|n| record(*n)).collect();
        futures::future::try_join_all(records.iter().map(|r| engine.start_record(r)))
            .await
            .expect("records");
    }
    for chunk in (0..DECISIONS).collect::<Vec<_>>().chunks(500) {
        let acks = futures::future::try_join_all(chunk.iter().map(|n| {
            let d = decision(*n);
            let js = ctx.bus.js.clone();
            async move {
                js.publish(d.subject(), serde_json::to_vec(&d).expect("encode").into())
                    .await
            }
        }))
        .await
        .expect("publish");
        futures::future::try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
            .await
            .expect("stored");
    }
    println!(
        "console: seeded {WORKFLOWS} workflows and {DECISIONS} remediation decisions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let token = "console-bench-token-0123456789";
    let gateway = proxflow_e2e::start_gateway(&ctx, "ops", token, &stop).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    proxflow_e2e::eventually("the gateway is ready", || async {
        http.get(format!("{gateway}/readyz"))
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    let cookie = proxflow_e2e::console_session(&http, &gateway, token).await;
    let failed = record(4).id;
    for (name, path) in [
        ("overview", "/ui".to_owned()),
        (
            "workflow list (newest 200 of all)",
            "/ui/workflows".to_owned(),
        ),
        (
            "workflow list (failed provisions)",
            "/ui/workflows?kind=provision&state=failed".to_owned(),
        ),
        ("workflow detail", format!("/ui/workflows/{failed}")),
    ] {
        let (p50, p95, max, size) = time_page(&http, &cookie, &format!("{gateway}{path}")).await;
        println!(
            "console {name:<36} median {p50:6.1} ms  p95 {p95:6.1} ms  worst {max:6.1} ms  ({:.0} KiB)",
            size as f64 / 1024.0
        );
    }
    stop.cancel();
}

fn main() {
    proxflow_e2e::bench_main(bench);
}
