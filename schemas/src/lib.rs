//! # proxflow-schemas
//!
//! The wire contract of proxflow: every type that crosses NATS or is stored in a KV bucket, and every
//! subject, stream, bucket and header name. It holds no I/O so that any service (and any tool in another
//! language, through the generated JSON Schema in `schemas/json/`) can depend on it without pulling in a
//! runtime.
//!
//! ## Layout
//! - [`names`] — stream, subject, KV bucket and header names. Code elsewhere uses these constants, never
//!   string literals, so a rename is one edit and a review diff.
//! - [`message`] — [`Versioned`] and [`Message`], the traits that give a type its schema id, its subject
//!   and the domain key its `Nats-Msg-Id` is derived from.
//! - [`events`] — events published on `pf.evt.*` (the audit log).
//! - [`workflow`] — workflow records kept in the workflow KV bucket and served by the gateway.
//! - [`alert`] — Alertmanager alerts as ingested, one message per alert.
//! - [`remediation`] — remediation decisions (the audit trail), work orders, outcomes, pages.
//! - [`capacity`] — capacity samples, sustained-threshold events and host-headroom vetoes.
//! - [`capacity_review`] — the monthly capacity review: its workflow input, report and event.
//! - [`provision`] — the provisioning request the gateway publishes.
//! - [`snapshot`] — the snapshotter's pre-change request/reply and its events (taken, pruned, check).
//! - [`lifecycle`] — the lifecycle jobs (host-config export, restore drill).
//! - [`health`] — disk and pool health: check and scrub inputs, parsed `zpool status`, findings, events.
//! - [`patch`] — patch plans (content-addressed), approvals and the patch run's events.
//! - [`replication`] — replication run events (started, completed, failed) and the divergence alert.
//! - [`trace`] — span records on `pf.trace.<trace_id>`, what `proxflow trace` reads back.
//! - [`pve`] — Proxmox task ids ([`pve::Upid`]), shared by the Proxmox client and simulator.
//! - [`registry`] — the list of all wire types with their JSON Schema; `just schemas` writes it out and a
//!   test fails when the checked-in files drift from the types.
//!
//! ## Versioning
//! Each type has a [`SchemaId`] `<name>/v<N>` sent in the `Proxflow-Schema` header. Additive changes
//! (new optional fields) keep `N`; anything a consumer of version `N` would misread bumps it. Consumers
//! accept versions up to their own and dead-letter newer ones rather than guess.

pub mod alert;
pub mod capacity;
pub mod capacity_review;
pub mod events;
pub mod health;
pub mod lifecycle;
pub mod message;
pub mod names;
pub mod patch;
pub mod provision;
pub mod pve;
pub mod registry;
pub mod remediation;
pub mod replication;
pub mod snapshot;
pub mod trace;
pub mod workflow;

pub use message::{Message, SchemaId, SchemaMismatch, Versioned};
