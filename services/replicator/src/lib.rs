//! # proxflow-replicator
//!
//! Incremental ZFS replication of datasets to an offsite target on a schedule: the first run sends a
//! full stream, later runs `zfs send -I <base> <newest> | zfs receive` from the newest snapshot both
//! sides share (matched by guid). The base stays held on both sides until the next success; an
//! interrupted transfer resumes where the zfs supports it and otherwise starts again from the base;
//! a diverged target is refused with an alert, never rolled back or destroyed. Runs take the source
//! dataset's lease, the one the snapshotter takes to prune it. Events
//! `pf.evt.replication.{started,completed,failed,diverged}`; Prometheus last success, lag, bytes,
//! failures.
//!
//! ## Layout
//! - [`config`] — `[replication]`: jobs (datasets, `source_command` / `target_command` prefixes,
//!   schedule, timeouts), retry delay, dry-run.
//! - [`plan`] — full / incremental / up to date / diverged, from both snapshot lists (pure).
//! - [`service`] — the service's state and [`run()`], which wires the schedule loop and the request
//!   consumer together.
//! - [`job`] — a job, its state between passes, the scheduled pass, [`JobError`].
//! - [`run`](mod@run) — one run: lease, plan, events, metrics.
//! - `transfer` — send | receive with busy retries; divergence detection.
//! - `holds` — the replication base's holds on both sides.
//! - [`request`] — on-demand runs (`pf.cmd.replicator.run`).
//! - `metrics` — the Prometheus metrics.
//!
//! Schedules (`daily@03:30`, ...) are [`proxflow_runtime::schedule`]'s, shared with the snapshotter.

pub mod config;
mod holds;
pub mod job;
mod metrics;
pub mod plan;
pub mod request;
pub mod run;
pub mod service;
mod transfer;

pub use config::{JobConfig, ReplicationConfig};
pub use service::{JobError, Replicator, RunControl, RunReport, run};
