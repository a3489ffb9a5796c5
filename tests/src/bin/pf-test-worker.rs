//! A one-consumer worker process for tests that need a real process boundary: SIGTERM in the middle of
//! a handler, or a handler that crashes its process.
//!
//! Environment: `PF_NATS_URL`, `PF_DURABLE`, `PF_TOPIC` (consumes `pf.evt.test.<topic>`), `PF_MODE`
//! (`ack`: acknowledge; `hang`: never finish; `abort`: crash the process), `PF_MAX_DELIVER`,
//! `PF_ACK_WAIT_MS`, `PF_GRACE_MS`. It prints `ready`, then `handling <id> <attempt>` when a handler
//! starts and `handled <id> <attempt>` when it acknowledges, one line each, on stdout.

use std::time::Duration;

use proxflow_e2e::{Probe, child_context, child_env as env};
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome};
use proxflow_runtime::config::ConsumerConfig;
use proxflow_schemas::names::{stream, subject};
use tokio_util::sync::CancellationToken;

struct Scripted {
    mode: String,
}

impl Handler<Probe> for Scripted {
    async fn handle(&self, d: Delivery<Probe>) -> Outcome {
        println!("handling {} {}", d.message.id, d.attempt);
        match self.mode.as_str() {
            "hang" => std::future::pending().await,
            "abort" => std::process::abort(),
            _ => {
                println!("handled {} {}", d.message.id, d.attempt);
                Outcome::Ack
            }
        }
    }
}

fn env_ms(name: &str) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(env(name)?.parse()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (ctx, telemetry) = child_context("pf-test-worker", env_ms("PF_GRACE_MS")?).await?;
    let spec = ConsumerSpec {
        stream: stream::EVT,
        durable: env("PF_DURABLE")?,
        filter_subject: subject::evt("test", &env("PF_TOPIC")?),
    };
    let tuning = ConsumerConfig {
        max_deliver: env("PF_MAX_DELIVER")?.parse()?,
        ack_wait: env_ms("PF_ACK_WAIT_MS")?,
        retry_backoff: vec![Duration::from_millis(100)],
        max_in_flight: 4,
    };
    let stop = CancellationToken::new();
    proxflow_runtime::shutdown::cancel_on_signal(stop.clone())?;
    let consumer = ConsumerLoop::new(
        ctx.clone(),
        spec,
        tuning,
        Scripted {
            mode: env("PF_MODE")?,
        },
    );
    let running = tokio::spawn(consumer.run(stop));
    println!("ready");
    running.await??;
    ctx.bus.client.flush().await?;
    telemetry.shutdown().await;
    Ok(())
}
