//! `just bench`: the Proxmox simulator's throughput and the client's own cost per call.
//!
//! 1. Simulator, `GET …/status/current`: requests/s with `BENCH_CONCURRENCY` (default 16) callers over
//!    plain HTTP and over HTTPS (keep-alive, as the services use it).
//! 2. Simulator, clone + wait with zero task duration: clones/s with the same concurrency.
//! 3. Client overhead per call: the same GET against a minimal local HTTP server, once with bare reqwest
//!    (send, read, parse JSON) and once through `PveClient::vm_status` (auth header, span, retry loop,
//!    envelope and lenient decoding), sequentially; rounds alternate and medians are printed.
//!
//! `BENCH_N` sets requests per round (default 5000), `BENCH_ROUNDS` the rounds (default 5).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use proxflow_pve::{CloneSpec, PveClient, PveConfig};
use proxflow_pve_sim::SimConfig;
use proxflow_runtime::config::Secret;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn client_for(sim: &proxflow_pve_sim::RunningSim) -> anyhow::Result<PveClient> {
    Ok(PveClient::new(&PveConfig {
        url: sim.base_url(),
        token_id: sim.token_id().to_string(),
        token_secret: Secret::new(sim.token_secret()),
        fingerprint: sim.fingerprint(),
        task_poll_max: Duration::from_millis(5),
        ..PveConfig::default()
    })?)
}

/// Runs `total` calls of `op` with `concurrency` callers; returns calls/s.
async fn drive<F, Fut>(concurrency: usize, total: usize, op: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let op = op.clone();
        set.spawn(async move {
            let mut i = worker;
            while i < total {
                op(i).await?;
                i += concurrency;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn status_rate(tls: bool, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let sim = proxflow_pve_sim::start(SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        time_scale: 0.0,
        ..SimConfig::default()
    })
    .await?;
    let client = client_for(&sim)?;
    client.vm_status(101).await?; // warm the connection pool
    let rate = drive(concurrency, n, move |_| {
        let client = client.clone();
        async move {
            client.vm_status(101).await?;
            Ok(())
        }
    })
    .await?;
    sim.shutdown().await;
    Ok(rate)
}

async fn clone_rate(n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let sim = proxflow_pve_sim::start(SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: false,
        time_scale: 0.0,
        ..SimConfig::default()
    })
    .await?;
    let client = client_for(&sim)?;
    let rate = drive(concurrency, n, move |i| {
        let client = client.clone();
        async move {
            let spec = CloneSpec {
                newid: 10_000 + i as u32,
                name: Some(format!("bench-{i}")),
                ..CloneSpec::default()
            };
            let upid = client.clone_vm(9000, &spec).await?;
            client.wait_task(&upid, None).await?;
            Ok(())
        }
    })
    .await?;
    sim.shutdown().await;
    Ok(rate)
}

const STATUS_BODY: &str = r#"{"data":{"status":"running","qmpstatus":"running","name":"k3s-1","cpus":4,"cpu":0.12,"maxmem":8589934592,"mem":4294967296,"uptime":3600,"agent":1,"vmid":101,"ha":{"managed":0}}}"#;

async fn overhead(n: usize, rounds: usize) -> anyhow::Result<()> {
    let app = Router::new().route(
        "/api2/json/nodes/pve1/qemu/101/status/current",
        get(|| async {
            (
                [("content-type", "application/json;charset=UTF-8")],
                STATUS_BODY,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}");
    let bare = reqwest::Client::new();
    let client = PveClient::new(&PveConfig {
        url: url.clone(),
        token_secret: Secret::new("bench"),
        ..PveConfig::default()
    })?;
    let full = format!("{url}/api2/json/nodes/pve1/qemu/101/status/current");
    let (mut raw_us, mut client_us) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let start = Instant::now();
        for _ in 0..n {
            let body = bare.get(&full).send().await?.bytes().await?;
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            std::hint::black_box(v);
        }
        let raw = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(client.vm_status(101).await?);
        }
        let ours = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "  round {round}: bare reqwest {raw:>7.1} µs/call   PveClient {ours:>7.1} µs/call"
        );
        raw_us.push(raw);
        client_us.push(ours);
    }
    let (raw, ours) = (median(raw_us), median(client_us));
    println!(
        "client overhead: median {:.1} µs/call over bare reqwest ({raw:.1} → {ours:.1} µs, {:.2}×)",
        ours - raw,
        ours / raw
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` runs this binary too; the figures only mean something when asked for.
        return Ok(());
    }
    proxflow_runtime::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let n = env_usize("BENCH_N", 5000);
        let rounds = env_usize("BENCH_ROUNDS", 5).max(1);
        let concurrency = env_usize("BENCH_CONCURRENCY", 16).max(1);
        println!("pve-sim, GET status/current, {concurrency} concurrent callers, {n} requests:");
        let http = status_rate(false, n, concurrency).await?;
        let https = status_rate(true, n, concurrency).await?;
        println!("  http  {http:>8.0} requests/s\n  https {https:>8.0} requests/s");
        let clones = (n / 10).max(50);
        let rate = clone_rate(clones, concurrency).await?;
        println!("pve-sim, clone + wait (task duration 0), {clones} clones: {rate:.0} clones/s");
        println!("client overhead per call, {n} sequential calls × {rounds} rounds:");
        overhead(n, rounds).await
    })
}
