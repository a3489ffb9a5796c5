//! The consumer loop: pulls from a durable consumer with bounded concurrency, runs a handler per
//! message inside a span parented by the producer's trace context, keeps long handlers' messages with
//! progress acks, and maps the handler's [`Outcome`] to the server in one place:
//!
//! | outcome                              | server            | also                          |
//! |--------------------------------------|-------------------|-------------------------------|
//! | `Ack`                                | `+ACK`            |                               |
//! | `Retry` before the last delivery     | `-NAK` with delay | delay from the retry backoff  |
//! | `Retry` on the last delivery         | `+TERM`           | dead-letter event, exhausted  |
//! | `Poison` (or undecodable message)    | `+TERM`           | dead-letter event, poison     |
//! | delivered more often than allowed    | `+TERM`           | dead-letter event, exhausted  |
//! | shutdown while the handler runs      | `-NAK` (no delay) | redelivered at once elsewhere |
//!
//! The dead-letter event is published before the `+TERM`; if that publish fails the message is NAKed
//! instead, so a message is never dropped without its dead letter on the bus.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::Cause;
use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::message::Acker;
use base64::Engine;
use futures::{FutureExt, StreamExt};
use proxflow_schemas::events::{DeadLetter, DeadLetterReason, PayloadEncoding};
use proxflow_schemas::names::header;
use proxflow_schemas::{Message, SchemaId, SchemaMismatch};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::topology::{self, ConsumerSpec, TopologyError};
use crate::config::ConsumerConfig;
use crate::ops::ConsumerMetrics;
use crate::service::ServiceContext;
use crate::telemetry;

/// What a handler decided about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or already done: handlers are idempotent).
    Ack,
    /// A transient failure; try again later.
    Retry {
        /// Why, kept for the dead letter if retries run out.
        reason: String,
        /// Delay before the next delivery; `None` takes the consumer's retry backoff.
        delay: Option<Duration>,
    },
    /// The message can never succeed; dead-letter it now.
    Poison {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Retry after the consumer's backoff delay.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            delay: None,
        }
    }

    /// Retry after `delay`.
    pub fn retry_after(reason: impl Into<String>, delay: Duration) -> Self {
        Self::Retry {
            reason: reason.into(),
            delay: Some(delay),
        }
    }

    /// Dead-letter now.
    pub fn poison(reason: impl Into<String>) -> Self {
        Self::Poison {
            reason: reason.into(),
        }
    }
}

/// One decoded delivery handed to a handler.
#[derive(Debug, Clone)]
pub struct Delivery<M> {
    /// The decoded message.
    pub message: M,
    /// Subject it was published on.
    pub subject: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// Sequence in its stream.
    pub stream_sequence: u64,
    /// Its `Nats-Msg-Id`.
    pub msg_id: Option<String>,
}

/// Handles one message type. Must be idempotent: JetStream delivers at least once.
pub trait Handler<M: Message>: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle(&self, delivery: Delivery<M>) -> impl Future<Output = Outcome> + Send;
}

/// Why a consumer loop stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The consumer could not be declared.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// A durable consumer bound to a handler for message type `M`.
pub struct ConsumerLoop<M, H> {
    ctx: ServiceContext,
    spec: ConsumerSpec,
    tuning: ConsumerConfig,
    handler: Arc<H>,
    _message: PhantomData<fn() -> M>,
}

/// Pause before declaring a consumer again after its pull stream failed.
const REOPEN_DELAY: Duration = Duration::from_millis(500);

impl<M: Message, H: Handler<M>> ConsumerLoop<M, H> {
    /// Binds `handler` to the consumer `spec`.
    pub fn new(
        ctx: ServiceContext,
        spec: ConsumerSpec,
        tuning: ConsumerConfig,
        handler: H,
    ) -> Self {
        Self {
            ctx,
            spec,
            tuning,
            handler: Arc::new(handler),
            _message: PhantomData,
        }
    }

    /// Runs until `shutdown` is cancelled, then stops pulling, lets in-flight handlers finish within
    /// the context's grace period and NAKs the rest so another instance picks them up at once.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        let bus = &self.ctx.bus;
        // The first declaration's error is fatal (bad spec, no stream); later ones are retried.
        let (consumer, declared) =
            topology::declare_consumer(&bus.js, &self.spec, &self.tuning, bus.replicas).await?;
        tracing::info!(consumer = %self.spec.durable, filter = %self.spec.filter_subject, ?declared, "consuming");
        let readiness = format!("consumer {}", self.spec.durable);
        self.ctx.health.set(&readiness, true);

        let permits = Arc::new(Semaphore::new(self.tuning.max_in_flight));
        let tracker = TaskTracker::new();
        let abort = CancellationToken::new();
        let shared = Arc::new(Shared {
            ctx: self.ctx.clone(),
            spec: self.spec.clone(),
            tuning: self.tuning.clone(),
            metrics: self.ctx.metrics.consumer(&self.spec.durable),
            service: Arc::<str>::from(proxflow_schemas::names::service_of(&self.spec.durable))
                .into(),
        });

        let mut consumer = Some(consumer);
        while !shutdown.is_cancelled() {
            // After any failure the durable is declared again before pulling: it may have been
            // deleted (by an operator, or lost with a server's state), and pulling from a consumer
            // that no longer exists would wait forever.
            let current = match consumer.take() {
                Some(c) => c,
                None => match self.redeclare(&shutdown).await {
                    Some(c) => c,
                    None => break,
                },
            };
            let mut messages = match current
                .stream()
                .max_messages_per_batch(self.tuning.max_in_flight)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(consumer = %self.spec.durable, cause = %Cause::of(&e), error = %e, "cannot pull, declaring again");
                    continue;
                }
            };
            loop {
                let permit = tokio::select! {
                    () = shutdown.cancelled() => break,
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let next = tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(msg)) => {
                        let shared = Arc::clone(&shared);
                        let handler = Arc::clone(&self.handler);
                        let abort = abort.clone();
                        let mut work = Box::pin(tracker.track_future(async move {
                            process::<M, H>(&shared, handler.as_ref(), msg, abort).await;
                            drop(permit);
                        }));
                        // A quick handler is done at its first poll; only work that waits gets a task
                        // of its own (a spawn per message costs a cross-thread hand-off each).
                        if futures::poll!(work.as_mut()).is_pending() {
                            tokio::spawn(work);
                        }
                    }
                    Some(Err(e)) if matches!(e.kind(), MessagesErrorKind::MissingHeartbeat) => {
                        // Non-terminal: the server or the link hiccupped; the stream keeps polling.
                        tracing::warn!(consumer = %self.spec.durable, cause = %Cause::MissedHeartbeat, error = %e, "missed heartbeat");
                    }
                    Some(Err(e)) => {
                        tracing::warn!(consumer = %self.spec.durable, cause = %Cause::of(&e), error = %e, "pull stream failed, reopening");
                        break;
                    }
                    None => break,
                }
            }
        }

        self.ctx.health.set(&readiness, false);
        tracker.close();
        if tokio::time::timeout(self.ctx.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(consumer = %self.spec.durable, "grace period over, returning in-flight messages");
            abort.cancel();
            tracker.wait().await;
        }
        tracing::info!(consumer = %self.spec.durable, "consumer stopped");
        Ok(())
    }

    /// Declares the consumer again, retrying until it works or shutdown.
    async fn redeclare(&self, shutdown: &CancellationToken) -> Option<PullConsumer> {
        let bus = &self.ctx.bus;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(REOPEN_DELAY) => {}
            }
            match topology::declare_consumer(&bus.js, &self.spec, &self.tuning, bus.replicas).await
            {
                Ok((consumer, declared)) => {
                    tracing::info!(consumer = %self.spec.durable, ?declared, "consumer declared again");
                    return Some(consumer);
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.spec.durable, cause = %Cause::of(&e), error = %e, "cannot declare yet")
                }
            }
        }
    }
}

/// What every message task of one loop shares.
struct Shared {
    ctx: ServiceContext,
    spec: ConsumerSpec,
    tuning: ConsumerConfig,
    metrics: ConsumerMetrics,
    /// The service the consumer belongs to ([`proxflow_schemas::names::service_of`]): the service of
    /// each message's spans (several services share one process in `proxflow dev`).
    service: opentelemetry::StringValue,
}

/// The parts of a delivery that outlive the split into payload and acker.
struct Received {
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
    attempt: u32,
    stream_sequence: u64,
}

async fn process<M: Message, H: Handler<M>>(
    shared: &Shared,
    handler: &H,
    msg: async_nats::jetstream::Message,
    abort: CancellationToken,
) {
    let (attempt, stream_sequence) = match msg.info() {
        Ok(info) => (
            u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            info.stream_sequence,
        ),
        Err(_) => (1, 0),
    };
    let (msg, acker) = msg.split();
    let received = Received {
        subject: msg.subject.to_string(),
        headers: msg.headers.unwrap_or_default(),
        payload: msg.payload,
        attempt,
        stream_sequence,
    };
    let durable = shared.spec.durable.as_str();
    let span = tracing::debug_span!(
        "process",
        otel.name = %format_args!("{} process", received.subject),
        otel.kind = "consumer",
        messaging.consumer.group.name = %durable,
        messaging.message.id = received.headers.get(super::MSG_ID).map_or("", |v| v.as_str()),
        proxflow.attempt = attempt,
    );
    // Parent before entering, or the span starts a trace of its own.
    telemetry::set_parent_from_nats(&span, &received.headers, shared.service.clone());
    async {
        let started = Instant::now();
        let outcome = if attempt > shared.tuning.max_deliver {
            Some(Outcome::Retry {
                reason: format!(
                    "delivered {attempt} times, more than max_deliver {}, without being settled \
                     (the handler crashed or outlived ack_wait)",
                    shared.tuning.max_deliver
                ),
                delay: None,
            })
        } else {
            match decode::<M>(&received) {
                Ok(delivery) => run_handler(shared, handler, delivery, &acker, &abort).await,
                Err(reason) => Some(Outcome::poison(reason.to_string())),
            }
        };
        let Some(outcome) = outcome else {
            // Shutdown overtook the handler: hand the message back for immediate redelivery.
            if let Err(e) = acker.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(cause = %Cause::of(&e), error = %e, "could not return message; it comes back after ack_wait");
            }
            return;
        };
        shared
            .metrics
            .handler_seconds
            .observe(started.elapsed().as_secs_f64());
        settle(shared, &received, &acker, outcome).await;
    }
    .instrument(span)
    .await;
}

/// Why a received message is not a `M` (it is poison: no redelivery makes it one).
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    /// No schema header.
    #[error("no {} header", header::SCHEMA)]
    NoSchema,
    /// Another message type, or a newer version of this one.
    #[error(transparent)]
    Schema(#[from] SchemaMismatch),
    /// The payload does not deserialise.
    #[error("payload is not a valid {schema}: {source}")]
    Payload {
        /// The schema it claimed.
        schema: SchemaId,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
}

fn decode<M: Message>(received: &Received) -> Result<Delivery<M>, DecodeError> {
    let schema = received
        .headers
        .get(super::SCHEMA)
        .ok_or(DecodeError::NoSchema)?;
    M::SCHEMA.accepts(schema.as_str())?;
    let message =
        serde_json::from_slice::<M>(&received.payload).map_err(|source| DecodeError::Payload {
            schema: M::SCHEMA,
            source,
        })?;
    Ok(Delivery {
        message,
        subject: received.subject.clone(),
        attempt: received.attempt,
        stream_sequence: received.stream_sequence,
        msg_id: received
            .headers
            .get(super::MSG_ID)
            .map(|v| v.as_str().to_owned()),
    })
}

/// Runs the handler, sending progress acks while it works. `None` when shutdown aborted it.
async fn run_handler<M: Message, H: Handler<M>>(
    shared: &Shared,
    handler: &H,
    delivery: Delivery<M>,
    acker: &Acker,
    abort: &CancellationToken,
) -> Option<Outcome> {
    let work = AssertUnwindSafe(handler.handle(delivery)).catch_unwind();
    tokio::pin!(work);
    // Most handlers finish without waiting on anything; they need no progress timer.
    if let std::task::Poll::Ready(result) = futures::poll!(&mut work) {
        return Some(result.unwrap_or_else(panic_outcome));
    }
    let every = shared.tuning.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            result = &mut work => return Some(result.unwrap_or_else(panic_outcome)),
            _ = progress.tick() => {
                if let Err(e) = acker.ack_with(AckKind::Progress).await {
                    tracing::warn!(cause = %Cause::of(&e), error = %e, "progress ack failed");
                }
            }
            () = abort.cancelled() => return None,
        }
    }
}

/// A panicking handler is a bug, possibly transient (a poisoned cache): retry, and dead-letter with
/// the panic message once retries run out.
fn panic_outcome(panic: Box<dyn std::any::Any + Send>) -> Outcome {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Outcome::retry(format!("handler panicked: {what}"))
}

async fn settle(shared: &Shared, received: &Received, acker: &Acker, outcome: Outcome) {
    let durable = shared.spec.durable.as_str();
    let result = match outcome {
        Outcome::Ack => {
            shared.metrics.handled.inc();
            acker.ack().await
        }
        Outcome::Retry { reason, delay } if received.attempt < shared.tuning.max_deliver => {
            let delay = delay.unwrap_or_else(|| shared.tuning.retry_delay(received.attempt));
            tracing::info!(
                consumer = durable,
                subject = %received.subject,
                stream_sequence = received.stream_sequence,
                attempt = received.attempt,
                ?delay,
                %reason,
                "retrying later"
            );
            shared.metrics.retried.inc();
            acker.ack_with(AckKind::Nak(Some(delay))).await
        }
        Outcome::Retry { reason, .. } => {
            dead_letter(
                shared,
                received,
                acker,
                DeadLetterReason::RetriesExhausted,
                reason,
            )
            .await
        }
        Outcome::Poison { reason } => {
            dead_letter(shared, received, acker, DeadLetterReason::Poison, reason).await
        }
    };
    if let Err(e) = result {
        // The server will redeliver after ack_wait; handlers are idempotent.
        tracing::warn!(cause = %Cause::of(&e), error = %e, "could not settle message");
    }
}

async fn dead_letter(
    shared: &Shared,
    received: &Received,
    acker: &Acker,
    reason: DeadLetterReason,
    detail: String,
) -> Result<(), async_nats::Error> {
    let letter = dead_letter_event(&shared.spec, received, reason, detail);
    tracing::warn!(
        consumer = %letter.consumer,
        subject = %letter.subject,
        stream_sequence = letter.stream_sequence,
        deliveries = letter.deliveries,
        ?reason,
        detail = %letter.detail,
        "dead-lettering message"
    );
    match shared.ctx.bus.publisher.publish(&letter).await {
        Ok(_) => {
            shared
                .ctx
                .metrics
                .dead_lettered(&shared.spec.durable, reason);
            acker.ack_with(AckKind::Term).await
        }
        Err(e) => {
            // Never drop a message without its dead letter: keep it and try again later.
            tracing::error!(error = %e, "dead-letter publish failed; keeping the message");
            acker
                .ack_with(AckKind::Nak(Some(
                    shared.tuning.retry_delay(received.attempt),
                )))
                .await
        }
    }
}

fn dead_letter_event(
    spec: &ConsumerSpec,
    received: &Received,
    reason: DeadLetterReason,
    detail: String,
) -> DeadLetter {
    let headers: BTreeMap<String, Vec<String>> = received
        .headers
        .iter()
        .map(|(k, vs)| {
            (
                k.to_string(),
                vs.iter().map(|v| v.as_str().to_owned()).collect(),
            )
        })
        .collect();
    let (payload, payload_encoding) = match std::str::from_utf8(&received.payload) {
        Ok(text) => (text.to_owned(), PayloadEncoding::Utf8),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&received.payload),
            PayloadEncoding::Base64,
        ),
    };
    DeadLetter {
        consumer: spec.durable.clone(),
        stream: spec.stream.to_owned(),
        stream_sequence: received.stream_sequence,
        deliveries: u64::from(received.attempt),
        subject: received.subject.clone(),
        reason,
        detail,
        headers,
        payload,
        payload_encoding,
        dead_lettered_at: chrono::Utc::now(),
    }
}
