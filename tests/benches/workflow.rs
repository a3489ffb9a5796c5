//! `just bench`: the workflow engine's overhead over the bare KV writes it needs, on one
//! nats-server, in one process.
//!
//! Engine: `WORKFLOWS` (default 1,000, `BENCH_WORKFLOWS`) workflows of eight no-op steps, all
//! started at once and run by one [`Engine`] (its advance consumer runs them with its
//! `max_in_flight`); timed from the first start to the last record `succeeded`, seen on a watch of
//! the index (`idx.noop.succeeded.>`), not by polling records.
//! Bare: the same number of records, each written by compare-and-set alone: one `create` (the
//! start) and `8 + 2` sequential `kv.update`s (running, eight steps, succeeded), with the same
//! payload as the engine's final record and as many records in flight as the engine's consumer
//! runs workflows. The ratio `engine / bare` is what the engine costs per workflow beyond the
//! record writes themselves (leases, the index, advances, replays).
//!
//! Engine and bare alternate over `BENCH_ROUNDS` rounds (default 3) on fresh ids, so a noisy
//! neighbour hits both alike; it prints every round and the medians.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::config::ConsumerConfig;
use proxflow_runtime::workflow::{Engine, Halt, Run, StepError, Workflow, WorkflowStore};
use proxflow_schemas::names::bucket;
use proxflow_schemas::workflow::Origin;
use proxflow_testkit::TestNats;
use tokio_util::sync::CancellationToken;

/// Steps per workflow.
const STEPS: usize = 8;
/// The step names (each unique within a workflow, as the engine requires).
const STEP_NAMES: [&str; STEPS] = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"];

/// Eight steps that do nothing but return their number: all that is measured is the engine.
struct Noop;

impl Workflow for Noop {
    const KIND: &'static str = "noop";
    type Input = ();
    type Output = usize;
    type Undo = ();

    async fn run(&self, wf: &mut Run<Self>, (): ()) -> Result<usize, Halt> {
        let mut sum = 0;
        for (i, name) in STEP_NAMES.iter().enumerate() {
            sum += wf.step(name, async move { Ok::<_, StepError>(i) }).await?;
        }
        Ok(sum)
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }
}

/// Runs `n` workflows `<prefix>-<i>` on `engine` and returns the time until all succeeded.
async fn engine_round(
    engine: &Engine,
    kv: &Store,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Duration> {
    // Watch before starting, so no `succeeded` line can be missed; only new lines are delivered.
    let mut succeeded = kv.watch("idx.noop.succeeded.>").await?;
    let wanted = format!("idx.noop.succeeded.{prefix}-");
    let started = Instant::now();
    futures::future::try_join_all((0..n).map(|i| {
        let origin = Origin {
            source: "bench".into(),
            reference: format!("{prefix}-{i}"),
            reason: "engine overhead".into(),
        };
        let id = format!("{prefix}-{i}");
        async move { engine.start::<Noop>(&id, origin, &()).await }
    }))
    .await?;
    let mut done = HashSet::with_capacity(n);
    while done.len() < n {
        let entry = tokio::time::timeout(Duration::from_secs(120), succeeded.next())
            .await
            .map_err(|_| anyhow::anyhow!("{} of {n} workflows succeeded within 120 s", done.len()))?
            .ok_or_else(|| anyhow::anyhow!("index watch ended"))??;
        if entry.key.starts_with(&wanted) {
            done.insert(entry.key);
        }
    }
    Ok(started.elapsed())
}

/// Writes `n` records `<prefix>-<i>` by compare-and-set alone: a create, then `STEPS + 2`
/// sequential updates each, `in_flight` records at a time; returns the time it took.
async fn bare_round(
    kv: &Store,
    n: usize,
    prefix: &str,
    payload: &Bytes,
    in_flight: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let key = format!("{prefix}-{i}");
            async move {
                let mut revision = kv.create(&key, payload.clone()).await?;
                for _ in 0..STEPS + 2 {
                    revision = kv.update(&key, payload.clone(), revision).await?;
                }
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(started.elapsed())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; anything else (a `cargo test --all-targets`) must not start a
    // benchmark that proves nothing in a debug build.
    if !std::env::args().any(|a| a == "--bench") {
        println!("workflow benchmark: run it with `just bench`");
        return Ok(());
    }
    let n = env_or("BENCH_WORKFLOWS", 1_000);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let nats = TestNats::start()?;
    let ctx: ServiceContext = nats.context("bench").await?;
    let consumer = ConsumerConfig::default();
    let in_flight = consumer.max_in_flight;
    let kv = ctx.bus.js.get_key_value(bucket::WORKFLOWS).await?;
    let store = WorkflowStore::open(&ctx.bus.js).await?;

    let mut engine = Engine::new(&ctx).await?;
    engine.register(Noop);
    let stop = CancellationToken::new();
    let runner = engine.clone();
    let (run_ctx, run_stop, run_consumer) = (ctx.clone(), stop.clone(), consumer.clone());
    let task = tokio::spawn(async move { runner.run(&run_ctx, &run_consumer, &run_stop).await });

    println!(
        "workflow engine: {rounds} rounds of {n} workflows x {STEPS} no-op steps, all started at \
         once, {in_flight} advanced at a time (consumer max_in_flight); bare: {n} records x (create \
         + {} CAS updates), {in_flight} at a time; file storage, one nats-server",
        STEPS + 2
    );
    let (mut engine_rates, mut bare_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let prefix = format!("wf{round}");
        let took = engine_round(&engine, &kv, n, &prefix).await?;
        let wf_rate = n as f64 / took.as_secs_f64();
        println!(
            "engine  {n} workflows in {:>7.1} ms: {wf_rate:>7.0} workflows/s, {:>8.0} steps/s",
            took.as_secs_f64() * 1000.0,
            wf_rate * STEPS as f64
        );
        engine_rates.push(wf_rate);

        // The bare writes carry what the engine's records finally weigh.
        let (record, _) = store
            .get(&format!("{prefix}-0"))
            .await?
            .ok_or_else(|| anyhow::anyhow!("{prefix}-0 vanished"))?;
        let payload = Bytes::from(serde_json::to_vec(&record)?);
        let took = bare_round(&kv, n, &format!("bare{round}"), &payload, in_flight).await?;
        let bare_rate = n as f64 / took.as_secs_f64();
        println!(
            "bare    {n} records   in {:>7.1} ms: {bare_rate:>7.0} records/s,   {:>8.0} CAS writes/s ({} B each)",
            took.as_secs_f64() * 1000.0,
            bare_rate * (STEPS + 3) as f64,
            payload.len()
        );
        bare_rates.push(bare_rate);
    }
    let (engine_median, bare_median) = (median(&mut engine_rates), median(&mut bare_rates));
    println!(
        "median: engine {engine_median:.0} workflows/s ({:.0} steps/s), bare CAS {bare_median:.0} records/s",
        engine_median * STEPS as f64
    );
    println!(
        "engine / bare: {:.2}x throughput (workflows/s over records/s by bare compare-and-set), \
         i.e. a workflow takes {:.2}x the time of its bare record writes",
        engine_median / bare_median,
        bare_median / engine_median
    );
    stop.cancel();
    task.await??;
    Ok(())
}
