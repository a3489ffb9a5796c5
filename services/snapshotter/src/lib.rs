//! # proxflow-snapshotter
//!
//! Snapshot policies on the seed's cadence: scheduled snapshots of VMs (through the Proxmox snapshot
//! API) and ZFS datasets (directly), pruned by a sanoid-style retention grid; pre-change snapshots
//! on request over NATS, protected for a TTL; a validity check (expected snapshots present, newest
//! within its SLO) as events and Prometheus gauges; a dry-run that prints what would be created and
//! pruned. Only snapshots carrying the configured prefix are ever pruned, never a held one (the
//! replicator holds its base), and pruning a dataset takes the same lease the replicator takes while
//! sending it.
//!
//! ## Layout
//! - [`config`] — `[snapshot]`: prefix, policies, TTLs, check schedule, dry-run.
//! - Schedules (`daily@03:00`, `weekly@sun 03:00`, ...) are [`proxflow_runtime::schedule`]'s, shared
//!   with the replicator.
//! - [`naming`] — snapshot names (valid Proxmox and ZFS names), parsed back: re-exported from
//!   [`proxflow_runtime::snapshot_name`], which the capacity review shares.
//! - [`retention`] — the grid (pure).
//! - [`plan`] — what to create, prune and protect on one target; the validity check (pure).
//! - [`target`] — VMs and datasets behind one interface.
//! - [`service`] — the service's state and [`run()`], which wires the tasks below together.
//! - [`pass`] — a scheduled pass over every policy's targets; dry-run plans.
//! - [`prune`] — pruning a target under its lease; prune requests from remediations.
//! - [`prechange`] — the pre-change responder and its client side ([`request_prechange`]).
//! - `metrics` — the Prometheus metrics.

pub mod config;
mod metrics;
pub use proxflow_runtime::snapshot_name as naming;
pub mod pass;
pub mod plan;
pub mod prechange;
pub mod prune;
pub mod retention;
pub mod service;
pub mod target;

pub use config::{PolicyConfig, SnapshotConfig, Targets};
pub use service::{Snapshotter, SnapshotterSettings, request_prechange, run};
