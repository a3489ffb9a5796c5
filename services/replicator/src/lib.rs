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
//! - [`service`] — runs, holds, events, metrics, the schedule loop.
//!
//! Schedules (`daily@03:30`, ...) are [`proxflow_runtime::schedule`]'s, shared with the snapshotter.

pub mod config;
pub mod plan;
pub mod service;

pub use config::{JobConfig, ReplicationConfig};
pub use service::{JobError, Replicator, RunControl, RunReport, run};
