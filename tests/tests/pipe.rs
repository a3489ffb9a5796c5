//! The pipe, end to end on a real nats-server: one service publishes, another handles through a
//! durable JetStream consumer; retries, dead letters, dedupe and shutdown behave as the runtime promises.

use std::time::Duration;

use async_nats::HeaderMap;
use proxflow_e2e::{Probe, Recorder, dead_letters, next_event, next_seen};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Handler, Outcome};
use proxflow_runtime::config::ConsumerConfig;
use proxflow_schemas::Versioned;
use proxflow_schemas::events::{DeadLetter, DeadLetterReason, PayloadEncoding};
use proxflow_schemas::names::{header, stream, subject};
use proxflow_testkit::TestNats;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn spec(durable: &str, topic: &str) -> ConsumerSpec {
    ConsumerSpec {
        stream: stream::EVT,
        durable: durable.into(),
        filter_subject: subject::evt("test", topic),
    }
}

fn fast(max_deliver: u32) -> ConsumerConfig {
    ConsumerConfig {
        max_deliver,
        retry_backoff: vec![Duration::from_millis(50)],
        ack_wait: Duration::from_secs(5),
        max_in_flight: 8,
    }
}

/// Starts a consumer loop in the background; cancelling the token stops it.
fn consume<H: Handler<Probe>>(
    ctx: &ServiceContext,
    spec: ConsumerSpec,
    tuning: ConsumerConfig,
    handler: H,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let run = ConsumerLoop::new(ctx.clone(), spec, tuning, handler).run(stop.clone());
    let task = tokio::spawn(async move { run.await.expect("consumer loop runs") });
    (stop, task)
}

async fn pending_and_unacked(ctx: &ServiceContext, durable: &str) -> (u64, usize) {
    let stream = ctx.bus.js.get_stream(stream::EVT).await.expect("stream");
    let info = stream.consumer_info(durable).await.expect("consumer info");
    (info.num_pending, info.num_ack_pending)
}

/// Polls the consumer until the server holds nothing pending or unacknowledged for it.
async fn settle_all(ctx: &ServiceContext, durable: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if pending_and_unacked(ctx, durable).await == (0, 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer {durable} still holds messages: {:?}",
            pending_and_unacked(ctx, durable).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_event_from_one_service_is_handled_by_another() {
    let nats = TestNats::start().expect("nats-server");
    let producer = nats.context("producer").await.expect("producer");
    let worker = nats.context("worker").await.expect("worker");
    let (handler, mut seen) = Recorder::new(|_, _| Outcome::Ack);
    let (stop, task) = consume(&worker, spec("hop-worker", "hop"), fast(3), handler);

    let receipt = producer
        .bus
        .publisher
        .publish(&Probe::new("hop", "h-1"))
        .await
        .expect("published");
    assert!(!receipt.duplicate);
    let got = next_seen(&mut seen, WAIT).await;
    assert_eq!((got.id.as_str(), got.attempt), ("h-1", 1));
    settle_all(&worker, "hop-worker").await;
    let metrics = worker.metrics.encode();
    assert!(
        metrics.contains("proxflow_messages_handled_total{consumer=\"hop-worker\"} 1"),
        "{metrics}"
    );
    stop.cancel();
    task.await.expect("loop ends");
}

#[tokio::test]
async fn a_retry_is_redelivered_after_its_delay() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("retry").await.expect("ctx");
    let delay = Duration::from_millis(400);
    let (handler, mut seen) = Recorder::new(move |_, attempt| {
        if attempt == 1 {
            Outcome::retry_after("warming up", delay)
        } else {
            Outcome::Ack
        }
    });
    let (stop, task) = consume(&ctx, spec("retry-worker", "retry"), fast(3), handler);
    ctx.bus
        .publisher
        .publish(&Probe::new("retry", "r-1"))
        .await
        .expect("published");
    let first = next_seen(&mut seen, WAIT).await;
    let second = next_seen(&mut seen, WAIT).await;
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert!(
        second.at - first.at >= delay,
        "redelivered after {:?}, before the {delay:?} asked for",
        second.at - first.at
    );
    settle_all(&ctx, "retry-worker").await;
    stop.cancel();
    task.await.expect("loop ends");
}

#[tokio::test]
async fn exhausting_max_deliver_dead_letters_with_the_reason() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("exhaust").await.expect("ctx");
    let mut letters = dead_letters(&ctx, "exhaust-worker").await;
    let (handler, mut seen) = Recorder::new(|_, _| Outcome::retry("proxmox unreachable"));
    let (stop, task) = consume(&ctx, spec("exhaust-worker", "exhaust"), fast(3), handler);
    let probe = Probe::new("exhaust", "e-1");
    ctx.bus.publisher.publish(&probe).await.expect("published");

    for expected in 1..=3 {
        assert_eq!(next_seen(&mut seen, WAIT).await.attempt, expected);
    }
    let letter: DeadLetter = next_event(&mut letters, WAIT).await;
    assert_eq!(letter.reason, DeadLetterReason::RetriesExhausted);
    assert_eq!(letter.deliveries, 3);
    assert!(
        letter.detail.contains("proxmox unreachable"),
        "{}",
        letter.detail
    );
    assert_eq!(letter.payload_encoding, PayloadEncoding::Utf8);
    let original: Probe = serde_json::from_str(&letter.payload).expect("original payload kept");
    assert_eq!(original, probe);
    assert_eq!(
        letter.headers.get(header::MSG_ID).map(Vec::as_slice),
        Some(&["probe/e-1".to_owned()][..])
    );
    // Terminated: the server holds nothing more for the consumer, so no fourth delivery can come.
    settle_all(&ctx, "exhaust-worker").await;
    assert!(
        seen.try_recv().is_err(),
        "delivered again after dead-lettering"
    );
    stop.cancel();
    task.await.expect("loop ends");
}

#[tokio::test]
async fn poison_is_terminated_and_dead_lettered_without_retries() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("poison").await.expect("ctx");
    let mut letters = dead_letters(&ctx, "poison-worker").await;
    let (handler, mut seen) = Recorder::new(|probe, _| {
        if probe.id == "bad-vmid" {
            Outcome::poison("vmid 99999999 is out of range")
        } else {
            Outcome::Ack
        }
    });
    let (stop, task) = consume(&ctx, spec("poison-worker", "poison"), fast(5), handler);

    // 1. The handler declares it poison: one delivery, then a dead letter.
    ctx.bus
        .publisher
        .publish(&Probe::new("poison", "bad-vmid"))
        .await
        .expect("published");
    assert_eq!(next_seen(&mut seen, WAIT).await.attempt, 1);
    let letter: DeadLetter = next_event(&mut letters, WAIT).await;
    assert_eq!(letter.reason, DeadLetterReason::Poison);
    assert_eq!(letter.deliveries, 1);
    assert!(letter.detail.contains("out of range"), "{}", letter.detail);

    // 2. Undecodable payloads never reach the handler, and are kept in the dead letter.
    let raw = |payload: &'static [u8], schema: &str, id: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::SCHEMA, schema);
        headers.insert(header::MSG_ID, id);
        let js = ctx.bus.js.clone();
        async move {
            js.publish_with_headers(subject::evt("test", "poison"), headers, payload.into())
                .await
                .expect("sent")
                .await
                .expect("stored");
        }
    };
    raw(b"{not json", &Probe::SCHEMA.to_string(), "raw-1").await;
    let letter: DeadLetter = next_event(&mut letters, WAIT).await;
    assert_eq!(letter.reason, DeadLetterReason::Poison);
    assert!(
        letter.detail.contains("not a valid pf.evt.test.probe/v1"),
        "{}",
        letter.detail
    );
    assert_eq!(letter.payload, "{not json");

    raw(&[0xff, 0x00, 0x80], &Probe::SCHEMA.to_string(), "raw-2").await;
    let letter: DeadLetter = next_event(&mut letters, WAIT).await;
    assert_eq!(letter.payload_encoding, PayloadEncoding::Base64);
    assert_eq!(letter.payload, "/wCA");

    raw(
        br#"{"id":"x","topic":"poison"}"#,
        "pf.evt.test.probe/v9",
        "raw-3",
    )
    .await;
    let letter: DeadLetter = next_event(&mut letters, WAIT).await;
    assert!(
        letter.detail.contains("newer than this consumer"),
        "{}",
        letter.detail
    );

    settle_all(&ctx, "poison-worker").await;
    assert!(
        seen.try_recv().is_err(),
        "the handler saw an undecodable message"
    );
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains(
            "proxflow_messages_dead_lettered_total{consumer=\"poison-worker\",reason=\"poison\"} 4"
        ),
        "{metrics}"
    );
    stop.cancel();
    task.await.expect("loop ends");
}

#[tokio::test]
async fn a_duplicate_msg_id_is_handled_once() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("dedupe").await.expect("ctx");
    let (handler, mut seen) = Recorder::new(|_, _| Outcome::Ack);
    let tuning = ConsumerConfig {
        max_in_flight: 1,
        ..fast(3)
    };
    let (stop, task) = consume(&ctx, spec("dedupe-worker", "dedupe"), tuning, handler);

    let probe = Probe::new("dedupe", "d-1");
    let first = ctx.bus.publisher.publish(&probe).await.expect("first");
    let second = ctx.bus.publisher.publish(&probe).await.expect("second");
    assert!(!first.duplicate);
    assert!(second.duplicate, "the stream did not recognise the repeat");
    assert_eq!(first.sequence, second.sequence);
    // A later message marks the end: with one message in flight, delivery is in stream order.
    ctx.bus
        .publisher
        .publish(&Probe::new("dedupe", "sentinel"))
        .await
        .expect("sentinel");
    let a = next_seen(&mut seen, WAIT).await;
    let b = next_seen(&mut seen, WAIT).await;
    assert_eq!((a.id.as_str(), b.id.as_str()), ("d-1", "sentinel"));
    settle_all(&ctx, "dedupe-worker").await;
    assert!(seen.try_recv().is_err(), "handled more than once");
    stop.cancel();
    task.await.expect("loop ends");
}

#[tokio::test]
async fn a_deleted_consumer_is_declared_again_and_nothing_is_lost() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("redeclare").await.expect("ctx");
    let (handler, mut seen) = Recorder::new(|_, _| Outcome::Ack);
    let (stop, task) = consume(
        &ctx,
        spec("redeclare-worker", "redeclare"),
        fast(3),
        handler,
    );
    ctx.bus
        .publisher
        .publish(&Probe::new("redeclare", "before"))
        .await
        .expect("published");
    assert_eq!(next_seen(&mut seen, WAIT).await.id, "before");

    // An operator (or a lost server) removes the durable under the running loop.
    let stream = ctx.bus.js.get_stream(stream::EVT).await.expect("stream");
    stream
        .delete_consumer("redeclare-worker")
        .await
        .expect("deleted");
    ctx.bus
        .publisher
        .publish(&Probe::new("redeclare", "after"))
        .await
        .expect("published");
    // The loop declares the durable again; delivering from the start, it sees both messages again
    // (handlers are idempotent) and, crucially, the one published while it had no consumer.
    let ids: Vec<String> = [
        next_seen(&mut seen, WAIT).await,
        next_seen(&mut seen, WAIT).await,
    ]
    .into_iter()
    .map(|s| s.id)
    .collect();
    assert!(ids.contains(&"after".to_owned()), "{ids:?}");
    stop.cancel();
    task.await.expect("loop ends");
}

#[tokio::test]
async fn the_loop_survives_a_nats_server_restart() {
    let mut nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("restart").await.expect("ctx");
    let (handler, mut seen) = Recorder::new(|_, _| Outcome::Ack);
    let (stop, task) = consume(&ctx, spec("restart-worker", "restart"), fast(3), handler);
    ctx.bus
        .publisher
        .publish(&Probe::new("restart", "before"))
        .await
        .expect("published");
    assert_eq!(next_seen(&mut seen, WAIT).await.id, "before");

    nats.restart()
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", nats.log_tail()));
    // The client reconnects by itself; the publisher retries until the stream answers again.
    ctx.bus
        .publisher
        .publish(&Probe::new("restart", "after"))
        .await
        .expect("published after the restart");
    let got = next_seen(&mut seen, Duration::from_secs(30)).await;
    assert_eq!(got.id, "after");
    settle_all(&ctx, "restart-worker").await;
    stop.cancel();
    task.await.expect("loop ends");
}
