//! Names on the bus: JetStream streams, subjects, KV buckets and message headers.
//!
//! Subjects follow `pf.<class>.<domain>.<name>`:
//! - `pf.ingest.<source>.<kind>`: what the gateway accepted from outside, deduplicated by the stream;
//! - `pf.cmd.<service>.<action>`: work for one service (work-queue retention);
//! - `pf.evt.<domain>.<event>`: facts that happened; long retention, it doubles as the audit log.

/// JetStream stream names.
pub mod stream {
    /// Accepted webhooks and alerts (`pf.ingest.>`), deduplicated over [`super::INGEST_DUPLICATE_WINDOW_SECS`].
    pub const INGEST: &str = "PF_INGEST";
    /// Commands to services (`pf.cmd.>`), removed once acknowledged.
    pub const CMD: &str = "PF_CMD";
    /// Events (`pf.evt.>`), kept as the audit log.
    pub const EVT: &str = "PF_EVT";
}

/// Dedupe window of the ingest stream. Alertmanager re-sends a firing group every `group_interval`
/// (5 min by default) and retries failed posts; ten minutes covers both.
pub const INGEST_DUPLICATE_WINDOW_SECS: u64 = 600;

/// Subjects and subject builders.
pub mod subject {
    /// Everything the ingest stream captures.
    pub const INGEST_ALL: &str = "pf.ingest.>";
    /// Everything the command stream captures.
    pub const CMD_ALL: &str = "pf.cmd.>";
    /// Everything the event stream captures.
    pub const EVT_ALL: &str = "pf.evt.>";
    /// Prefix of dead-letter events; the consumer's durable name follows.
    pub const DEAD_LETTER_PREFIX: &str = "pf.evt.deadletter";

    /// `pf.ingest.<source>.<kind>`.
    pub fn ingest(source: &str, kind: &str) -> String {
        format!("pf.ingest.{source}.{kind}")
    }

    /// `pf.cmd.<service>.<action>`.
    pub fn cmd(service: &str, action: &str) -> String {
        format!("pf.cmd.{service}.{action}")
    }

    /// `pf.evt.<domain>.<event>`.
    pub fn evt(domain: &str, event: &str) -> String {
        format!("pf.evt.{domain}.{event}")
    }

    /// `pf.evt.deadletter.<consumer>`: where a consumer parks what it could not handle.
    pub fn dead_letter(consumer: &str) -> String {
        format!("{DEAD_LETTER_PREFIX}.{consumer}")
    }
}

/// KV buckets. Each is a JetStream stream `KV_<bucket>` underneath.
pub mod bucket {
    /// Workflow records, updated with revision CAS.
    pub const WORKFLOWS: &str = "pf_workflows";
    /// Leases on targets (a VM, a dataset, a scale-out); the bucket TTL is the lease length.
    pub const LOCKS: &str = "pf_locks";
    /// Cooldown markers keyed by (rule, target); entries expire with the bucket TTL.
    pub const COOLDOWNS: &str = "pf_cooldowns";
    /// VMID reservations, taken with `create` so two workflows never get the same id.
    pub const VMIDS: &str = "pf_vmids";
}

/// Message headers. NATS header names are case-sensitive; these are the exact spellings sent.
pub mod header {
    /// JetStream dedupe key, derived from a domain key.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// The payload's [`crate::SchemaId`], as `<name>/v<N>`.
    pub const SCHEMA: &str = "Proxflow-Schema";
}
