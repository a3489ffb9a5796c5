//! `just bench`: the gateway under 2,000 idle and 500 slowloris connections — the latency of a
//! legitimate authenticated request (`GET /v1/workflows/{id}` with a bearer token, a new connection
//! each) and the gateway's RSS, before, during and after the abuse.
//!
//! The gateway runs as its own process (`pf-test-gateway`, the service's `run` with the shipped
//! defaults) so that its RSS is its own. The abusers hold their connections for the whole phase:
//! one closed by the gateway (its header read timeout) is opened again at once. Run twice: with the
//! shipped `gateway.http.max_connections` (1,024, below the 2,500 abusive connections: legitimate
//! requests past the cap get 503 at once) and with 4,096 (every connection fits).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proxflow_testkit::TestNats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "edge-bench-token-0123456789";
const IDLE: usize = 2_000;
const SLOWLORIS: usize = 500;
const REQUESTS: usize = 200;

fn main() {
    proxflow_e2e::bench_main(|| async {
        println!(
            "gateway under {IDLE} idle + {SLOWLORIS} slowloris connections \
             ({REQUESTS} authenticated GETs per phase, a new connection each):"
        );
        for max_connections in [None, Some(4096)] {
            run(max_connections).await;
        }
    });
}

struct Gateway {
    child: Child,
    addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(nats: &TestNats, max_connections: Option<usize>) -> Gateway {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pf-test-gateway"));
    command
        .env("PF_NATS_URL", nats.url())
        .env("PF_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(max) = max_connections {
        command.env("PF_MAX_CONNECTIONS", max.to_string());
    }
    let mut child = command.spawn().expect("pf-test-gateway");
    // Log lines may come first (the service logs to stdout).
    let addr = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("listening ").map(str::to_owned))
        .expect("a listening line");
    Gateway { child, addr }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// `REQUESTS` authenticated GETs of workflow `id`: p50, p99 (ms) and how many were not 200.
async fn legitimate(addr: &str, id: &str) -> (f64, f64, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut took = Vec::with_capacity(REQUESTS);
    let mut refused = 0;
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let ok = client
            .get(format!("http://{addr}/v1/workflows/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        took.push(start.elapsed().as_secs_f64() * 1e3);
        refused += usize::from(!ok);
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    (at(0.50), at(0.99), refused)
}

/// Holds `n` connections open until `stop`; `slow` ones send a header line a byte per second and
/// never finish it. A connection the gateway closes is opened again.
fn abuse(addr: &str, n: usize, slow: bool, open: &Arc<AtomicUsize>, stop: &CancellationToken) {
    for _ in 0..n {
        let (addr, open, stop) = (addr.to_owned(), open.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok(mut stream) = TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                open.fetch_add(1, Ordering::Relaxed);
                let held = async {
                    if slow {
                        stream
                            .write_all(b"POST /v1/provision HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
                            .await?;
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            stream.write_all(b"a").await?;
                        }
                    } else {
                        // Idle: nothing sent; returns when the gateway closes it.
                        let mut buf = [0u8; 512];
                        while stream.read(&mut buf).await? > 0 {}
                        Ok::<(), std::io::Error>(())
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = held => {}
                }
                open.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
}

async fn run(max_connections: Option<usize>) {
    let nats = TestNats::start().expect("nats-server");
    // Declares the streams and buckets, as `proxflow up` does before the services start.
    let _ctx = nats.context("edge-bench").await.expect("topology");
    let gw = start_gateway(&nats, max_connections);
    let client = reqwest::Client::new();
    // A workflow to read: one real provisioning request (retried while the gateway starts).
    let id = loop {
        let accepted = client
            .post(format!("http://{}/v1/provision", gw.addr))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"name": "edge-bench", "idempotency_key": "edge-bench"}))
            .send()
            .await;
        if let Ok(r) = accepted
            && r.status().is_success()
        {
            let body: serde_json::Value = r.json().await.unwrap();
            break body["workflow_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = gw.child.id();
    let label = max_connections.map_or_else(
        || "max_connections 1024 (shipped)".to_owned(),
        |m| format!("max_connections {m}"),
    );
    println!("  {label}:");
    let print = |phase: &str, (p50, p99, refused): (f64, f64, usize), rss: f64| {
        println!(
            "    {phase:<7} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  not 200: {refused:>3}/{REQUESTS}  RSS {rss:>6.1} MiB"
        );
    };
    print("before", legitimate(&gw.addr, &id).await, rss_mib(pid));

    // Rounds (`BENCH_EDGE_ROUNDS`, default 2): memory that stayed after one should be reused by the
    // next, not added to.
    let rounds: usize = std::env::var("BENCH_EDGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for round in 1..=rounds {
        let (open, stop) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        abuse(&gw.addr, IDLE, false, &open, &stop);
        abuse(&gw.addr, SLOWLORIS, true, &open, &stop);
        let deadline = Instant::now() + Duration::from_secs(30);
        while open.load(Ordering::Relaxed) < IDLE + SLOWLORIS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held = open.load(Ordering::Relaxed);
        let during = legitimate(&gw.addr, &id).await;
        print("during", during, rss_mib(pid));
        println!(
            "            (round {round}: {held} abusive connections open when measuring began)"
        );
        stop.cancel();
        // The abusers close their sockets; the gateway sees the ends at once, and its allocator
        // (jemalloc, as in `proxflow`) hands freed pages back after its 10 s decay.
        tokio::time::sleep(Duration::from_secs(12)).await;
        print("after", legitimate(&gw.addr, &id).await, rss_mib(pid));
    }
}
