//! # proxflow-runtime
//!
//! What every proxflow service shares, so that services hold only their domain logic.
//!
//! ## Layout
//! - [`admission`] — caps (max running, max per window) kept in KV by compare-and-set.
//! - [`backoff`] — the one retry spacing: full-jitter exponential, bounded by attempts and a deadline.
//! - [`kv`] — compare-and-set on one KV key with conflicts retried in the handler.
//! - [`guard`] — canonical target keys and guards claimed atomically (cooldowns).
//! - [`clock`] — time as a dependency ([`clock::ManualClock`] for tests).
//! - [`command`] — external commands with a deadline (the whole process group killed) and bounded output.
//! - [`config`] — figment loading (defaults < TOML < `PROXFLOW_*` env), the shared config sections,
//!   [`config::Secret`].
//! - [`bus`] — connecting to NATS, the JetStream topology ([`bus::topology`]), the publisher that sets
//!   `Nats-Msg-Id`, schema and trace headers ([`bus::publish`]), and the consumer loop that maps handler
//!   outcomes to ack / nak / term + dead letter ([`bus::consume`]), and the probe that makes
//!   readiness follow JetStream's availability ([`bus::probe`]).
//! - [`telemetry`] — subscriber, spans recorded on the bus (`pf.trace.*`) and read back, OTLP export,
//!   trace context over NATS and HTTP headers.
//! - [`lease`] — one holder at a time per target, in KV, renewed while held.
//! - [`schedule`] — periodic schedules (`daily@03:00`, `weekly@sun 03:00`, `monthly@1 03:00`) in a time
//!   zone, as slots, and [`schedule::every`], the pass loop; shared by the snapshotter and the replicator.
//! - [`ops`] — `/healthz`, `/readyz`, `/metrics`, the [`ops::Health`] and [`ops::Metrics`] handles.
//! - [`serve`] — the HTTP server of every listener: connection cap, header and idle timeouts, a
//!   shutdown bounded by the grace period.
//! - [`service`] — [`ServiceContext`], what each service's `run` receives, and [`service::Tasks`],
//!   the supervisor of its named tasks.
//! - [`shutdown`] — SIGINT/SIGTERM to a cancellation token.
//! - [`snapshot_name`] — proxflow's snapshot names (scheduled, pre-change), made and parsed back;
//!   the snapshotter names with them, the capacity review groups snapshot space by them.
//! - [`workflow`] — workflow records in KV, changed only by compare-and-set.
//! - [`nats_server`] — a nats-server child process, for `proxflow dev` and the test harness.

pub mod admission;
pub mod backoff;
pub mod bus;
pub mod clock;
pub mod command;
pub mod config;
pub mod guard;
pub mod kv;
pub mod lease;
pub mod nats_server;
pub mod ops;
pub mod schedule;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod snapshot_name;
pub mod telemetry;
pub mod workflow;

pub use service::{ServiceContext, TaskError, Tasks};

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call first thing in `main`: with no
/// default installed, the first TLS connection picks one at random or panics.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
