//! `just bench`: JetStream through the runtime vs raw async-nats, on one nats-server, in one process.
//!
//! Raw: publish N messages with up to IN_FLIGHT acks outstanding, then pull-consume and ack them all.
//! Runtime: the same N messages through `Publisher::publish` (ids, schema and trace headers, publish
//! span) and a `ConsumerLoop` (decode, process span, handler, settlement), with the real telemetry
//! layer installed. Raw and runtime alternate over `BENCH_ROUNDS` rounds (default 5) on fresh subjects,
//! so a noisy neighbour hits both alike; it prints every round, the medians and the ratio of the
//! medians. The target is runtime >= 0.5x raw. `BENCH_N` sets N per round (default 20000).
//! Then, on the same server and beside the raw figure, alert ingest: deliveries through the gateway
//! to a remediation decision (`BENCH_ALERTS`, default 5000), with throughput and p50/p99 latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::{StreamExt, TryStreamExt};
use proxflow_e2e::Probe;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome};
use proxflow_runtime::config::{ConsumerConfig, TelemetryConfig};
use proxflow_schemas::names::{stream, subject};
use proxflow_testkit::TestNats;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const IN_FLIGHT: usize = 256;
const BATCH: usize = 256;

struct Count {
    done: Arc<AtomicUsize>,
    target: usize,
    finished: Arc<Notify>,
}

impl Handler<Probe> for Count {
    async fn handle(&self, _: Delivery<Probe>) -> Outcome {
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.finished.notify_one();
        }
        Outcome::Ack
    }
}

struct Phase {
    publish: Duration,
    consume: Duration,
}

impl Phase {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / (self.publish + self.consume).as_secs_f64()
    }

    fn print(&self, label: &str, n: usize) {
        println!(
            "{label:<8} publish {:>9.0} msg/s   consume {:>9.0} msg/s   end-to-end {:>9.0} msg/s",
            n as f64 / self.publish.as_secs_f64(),
            n as f64 / self.consume.as_secs_f64(),
            self.rate(n)
        );
    }
}

/// Raw async-nats. With `ids`, every message also carries the headers the runtime sends (a unique
/// `Nats-Msg-Id`, which the server deduplicates on, the schema and a `traceparent`), so the figure
/// separates what the wire and the server's dedupe cost from what the runtime's code costs.
async fn raw(
    ctx: &proxflow_runtime::ServiceContext,
    n: usize,
    round: usize,
    ids: bool,
) -> anyhow::Result<Phase> {
    let js = &ctx.bus.js;
    let topic = format!("bench-raw{}-{round}", if ids { "-ids" } else { "" });
    let payload = serde_json::to_vec(&Probe::new(&topic, "x"))?;
    let subject = subject::evt("test", &topic);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
            let topic = topic.clone();
            async move {
                let ack = if ids {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("{topic}/{i}").as_str());
                    headers.insert("Pf-Schema", "pf.test.probe.v1");
                    headers.insert(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    );
                    js.publish_with_headers(subject, headers, payload.into())
                        .await?
                } else {
                    js.publish(subject, payload.into()).await?
                };
                ack.await.map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let publish = started.elapsed();

    let consumer = js
        .get_stream(stream::EVT)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(topic.clone()),
            filter_subject: subject,
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 4 * BATCH as i64,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await?;
    for _ in 0..n {
        let msg = messages
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(Phase {
        publish,
        consume: started.elapsed(),
    })
}

async fn runtime(
    ctx: &proxflow_runtime::ServiceContext,
    n: usize,
    round: usize,
) -> anyhow::Result<Phase> {
    let topic = format!("bench-rt-{round}");
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let publisher = ctx.bus.publisher.clone();
            let probe = Probe::new(&topic, &format!("{round}-{i}"));
            async move { publisher.publish(&probe).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let publish = started.elapsed();

    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    let handler = Count {
        done: Arc::clone(&done),
        target: n,
        finished: Arc::clone(&finished),
    };
    let spec = ConsumerSpec {
        stream: stream::EVT,
        durable: topic.clone(),
        filter_subject: subject::evt("test", &topic),
    };
    let tuning = ConsumerConfig {
        max_in_flight: BATCH,
        ..ConsumerConfig::default()
    };
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task =
        tokio::spawn(ConsumerLoop::new(ctx.clone(), spec, tuning, handler).run(stop.clone()));
    if tokio::time::timeout(Duration::from_secs(60), finished.notified())
        .await
        .is_err()
    {
        anyhow::bail!(
            "runtime consumer handled {} of {n} messages within 60 s",
            done.load(Ordering::Relaxed)
        );
    }
    let consume = started.elapsed();
    stop.cancel();
    task.await??;
    Ok(Phase { publish, consume })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; anything else (a `cargo test --all-targets`) must not start a
    // benchmark that proves nothing in a debug build.
    if !std::env::args().any(|a| a == "--bench") {
        println!("bus benchmark: run it with `just bench`");
        return Ok(());
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let telemetry = proxflow_runtime::telemetry::init(
        &TelemetryConfig {
            log_level: "warn".into(),
            ..TelemetryConfig::default()
        },
        "bench",
    )?;
    let nats = TestNats::start()?;
    let ctx = nats.context("bench").await?;
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!(
        "bus: {rounds} rounds of {n} messages, {IN_FLIGHT} publishes in flight, pull batch {BATCH}, \
         file storage, one nats-server"
    );
    let (mut raw_rates, mut ids_rates, mut rt_rates) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let r = raw(&ctx, n, round, false).await?;
        r.print("raw", n);
        raw_rates.push(r.rate(n));
        let r = raw(&ctx, n, round, true).await?;
        r.print("raw+ids", n);
        ids_rates.push(r.rate(n));
        let t = runtime(&ctx, n, round).await?;
        t.print("runtime", n);
        rt_rates.push(t.rate(n));
    }
    let (raw_median, ids_median, rt_median) = (
        median(&mut raw_rates),
        median(&mut ids_rates),
        median(&mut rt_rates),
    );
    println!(
        "median end-to-end: raw {raw_median:.0} msg/s, raw with the runtime's headers \
         {ids_median:.0} msg/s, runtime {rt_median:.0} msg/s"
    );
    println!(
        "runtime / raw end-to-end: {:.2}x (target >= 0.50x); runtime / raw with the same headers: \
         {:.2}x",
        rt_median / raw_median,
        rt_median / ids_median
    );
    alerts(&ctx, raw_median).await?;
    telemetry.shutdown().await;
    Ok(())
}

/// Alert ingest on the same server, beside the raw figure above: Alertmanager-shaped deliveries
/// POSTed to the gateway, each alert published, consumed by the remediation engine and decided (a
/// dry-run rule matching every alert, so the whole guard path runs and nothing is acted on). Two
/// loads: a storm (deliveries of 10 alerts from 16 concurrent senders: throughput, and latency with
/// the queue that builds) and a trickle (one sender, one alert per delivery, sequential POSTs: latency without a queue). Latency is from the
/// start of an alert's POST to its decision event arriving; throughput is alerts over first POST to
/// last decision.
async fn alerts(ctx: &proxflow_runtime::ServiceContext, raw_median: f64) -> anyhow::Result<()> {
    const TOKEN: &str = "bench-token-0123456789abcdef";
    let total: usize = std::env::var("BENCH_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let stop = CancellationToken::new();
    let url = format!(
        "{}/v1/alerts/alertmanager",
        proxflow_e2e::start_gateway(ctx, "bench", TOKEN, &stop).await
    );
    let rules = proxflow_orchestrator::remediation::Rules::parse(
        r#"
[[rule]]
name = "bench"
target = "host/{labels.instance}"
action = { kind = "notify", url = "http://127.0.0.1:9/" }
"#,
    )?;
    tokio::spawn(proxflow_orchestrator::remediation::run_engine(
        ctx.clone(),
        proxflow_platform::RemediationConfig::default(),
        rules,
        stop.clone(),
    ));
    let load = AlertLoad {
        ctx,
        http: reqwest::Client::new(),
        url,
        token: TOKEN,
    };
    let (rate, storm) = load.run(0, total, 10, 16).await?;
    println!(
        "alerts (storm): {total} alerts in deliveries of 10 from 16 senders: gateway -> bus -> decision \
         {rate:.0} alerts/s (raw JetStream end-to-end above: {raw_median:.0} msg/s); POST -> decision \
         p50 {:.1} ms, p99 {:.1} ms",
        percentile(&storm, 0.50),
        percentile(&storm, 0.99)
    );
    let (_, trickle) = load.run(total, 300, 1, 1).await?;
    println!(
        "alerts (one at a time): 300 alerts: POST -> decision p50 {:.1} ms, p99 {:.1} ms",
        percentile(&trickle, 0.50),
        percentile(&trickle, 0.99)
    );
    stop.cancel();
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(last))
        .copied()
        .unwrap_or(f64::NAN)
}

struct AlertLoad<'a> {
    ctx: &'a proxflow_runtime::ServiceContext,
    http: reqwest::Client,
    url: String,
    token: &'static str,
}

impl AlertLoad<'_> {
    /// Sends `total` alerts (fingerprints from `first`) in deliveries of `per_delivery` from
    /// `senders` concurrent senders; returns alerts/s and the sorted latencies in ms.
    async fn run(
        &self,
        first: usize,
        total: usize,
        per_delivery: usize,
        senders: usize,
    ) -> anyhow::Result<(f64, Vec<f64>)> {
        let mut decided = self
            .ctx
            .bus
            .client
            .subscribe(subject::evt("remediation", "decision"))
            .await?;
        let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
            Arc::default();
        let started = Instant::now();
        let deliveries = total / per_delivery;
        let posting = futures::stream::iter(0..deliveries)
            .map(|d| {
                let sent = sent.clone();
                async move {
                    let alerts: Vec<serde_json::Value> = (0..per_delivery)
                        .map(|i| {
                            let fp = format!("{:x}", first + d * per_delivery + i + 1);
                            serde_json::json!({"status": "firing", "fingerprint": fp,
                                "labels": {"alertname": "BenchDown", "instance": fp},
                                "startsAt": "2026-11-24T10:00:00Z"})
                        })
                        .collect();
                    let now = Instant::now();
                    if let Ok(mut sent) = sent.lock() {
                        for a in &alerts {
                            let fp = a["fingerprint"].as_str().unwrap_or_default();
                            sent.insert(fp.to_owned(), now);
                        }
                    }
                    let body =
                        serde_json::json!({"version": "4", "receiver": "bench", "alerts": alerts});
                    let r = self
                        .http
                        .post(&self.url)
                        .bearer_auth(self.token)
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(r.status() == 200, "delivery refused: {}", r.status());
                    Ok::<(), anyhow::Error>(())
                }
            })
            .buffer_unordered(senders)
            .try_collect::<Vec<()>>();
        let collecting = async {
            let mut latencies = Vec::with_capacity(total);
            while latencies.len() < deliveries * per_delivery {
                let message = tokio::time::timeout(Duration::from_secs(60), decided.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("decisions stopped at {}", latencies.len()))?
                    .ok_or_else(|| anyhow::anyhow!("subscription closed"))?;
                let at = Instant::now();
                let d: proxflow_schemas::remediation::RemediationDecision =
                    serde_json::from_slice(&message.payload)?;
                if let Some(start) = sent
                    .lock()
                    .ok()
                    .and_then(|s| s.get(&d.fingerprint).copied())
                {
                    latencies.push((at - start).as_secs_f64() * 1000.0);
                }
            }
            Ok::<Vec<f64>, anyhow::Error>(latencies)
        };
        let (posted, latencies) = tokio::join!(posting, collecting);
        posted?;
        let mut latencies = latencies?;
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        Ok((rate, latencies))
    }
}
