//! Names on the bus: JetStream streams, subjects, KV buckets and message headers.
//!
//! Subjects follow `pf.<class>.<domain>.<name>`:
//! - `pf.ingest.<source>.<kind>`: what the gateway accepted from outside, deduplicated by the stream;
//! - `pf.cmd.<service>.<action>`: work for one service (work-queue retention);
//! - `pf.evt.<domain>.<event>`: facts that happened; long retention, it doubles as the audit log.
//! - `pf.trace.<trace_id>`: every finished span, so a trace can be read back from the bus.
//! - `pf.rpc.<service>.<action>`: core NATS request/reply that needs an answer now; no stream
//!   captures it.

/// JetStream stream names.
pub mod stream {
    /// Accepted webhooks and alerts (`pf.ingest.>`), deduplicated over [`super::INGEST_DUPLICATE_WINDOW_SECS`].
    pub const INGEST: &str = "PF_INGEST";
    /// Commands to services (`pf.cmd.>`), removed once acknowledged.
    pub const CMD: &str = "PF_CMD";
    /// Events (`pf.evt.>`), kept as the audit log.
    pub const EVT: &str = "PF_EVT";
    /// Finished spans of every service (`pf.trace.<trace_id>`), kept 7 days for `proxflow trace`.
    pub const TRACE: &str = "PF_TRACE";
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
    /// Everything the trace stream captures.
    pub const TRACE_ALL: &str = "pf.trace.>";
    /// Prefix of dead-letter events; the consumer's durable name follows.
    pub const DEAD_LETTER_PREFIX: &str = "pf.evt.deadletter";

    /// Pre-change snapshot requests to the snapshotter: a core NATS request/reply, deliberately
    /// outside `pf.cmd.>` and `pf.evt.>`. A core request on a subject a stream captures is answered by
    /// the stream's PubAck, which the requester would take for the snapshotter's reply; and a caller
    /// waiting to patch needs the snapshot's name now, not a queued command.
    pub const RPC_SNAPSHOTTER_PRECHANGE: &str = "pf.rpc.snapshotter.prechange";

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

    /// `pf.trace.<trace_id>`: the finished spans of one trace ([`crate::trace::SpanRecord`]).
    pub fn trace(trace_id: &str) -> String {
        format!("pf.trace.{trace_id}")
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
    /// Webhook ids the gateway accepted, taken with `create` so a replayed delivery is refused. Entries
    /// expire after [`super::WEBHOOK_ID_TTL_SECS`].
    pub const WEBHOOK_IDS: &str = "pf_webhook_ids";
    /// Admission ledgers (one key per guarded kind of work, e.g. `provision.k8s-node`): what is
    /// running and what started within the last hour, changed by compare-and-set.
    pub const ADMISSIONS: &str = "pf_admissions";
    /// Sustained-threshold detector state of the capacity service, one key per metric
    /// (`detector/cluster/k3s/cpu_avg`), changed by compare-and-set so a restart resumes its windows
    /// and a second replica never fires twice.
    pub const CAPACITY: &str = "pf_capacity";
}

/// Lifetime of an accepted webhook id in [`bucket::WEBHOOK_IDS`]. A replay is refused by this record
/// only while it lives; after that, by the signature timestamp, so the gateway's signature tolerance
/// must stay below it (it caps `gateway.signature_tolerance` at 10 minutes and the accepted clock skew
/// into the future so that a signature always expires before its id record does).
pub const WEBHOOK_ID_TTL_SECS: u64 = 15 * 60;

/// Durable consumer names another crate reads (a service filtering another's dead letters, the tests
/// and tooling inspecting a consumer). Each owning service consumes under the constant from here.
pub mod durable {
    /// The provisioner's provision commands (`pf.cmd.provisioner.provision`).
    pub const PROVISIONER: &str = "provisioner";
    /// The orchestrator's provisioning requests (`pf.ingest.webhook.provision`).
    pub const ORCHESTRATOR_PROVISION: &str = "orchestrator-provision";
    /// The orchestrator's provisioning outcomes (`pf.evt.vm.*`), which free admission slots.
    pub const ORCHESTRATOR_OUTCOMES: &str = "orchestrator-outcomes";
    /// The orchestrator's view of provision commands the provisioner gave up on (its dead letters).
    pub const ORCHESTRATOR_GIVEN_UP: &str = "orchestrator-givenup";
    /// The orchestrator's capacity events (`pf.evt.capacity.exceeded`), which start scale-outs.
    pub const ORCHESTRATOR_SCALE_OUT: &str = "orchestrator-scaleout";
    /// The remediation engine's alerts (`pf.ingest.alertmanager.alert`), run inside the orchestrator.
    pub const ORCHESTRATOR_ALERTS: &str = "orchestrator-alerts";
    /// The remediation engine's remediation outcomes (`pf.evt.remediation.outcome`, the circuit
    /// breakers).
    pub const ORCHESTRATOR_REMEDIATION_OUTCOMES: &str = "orchestrator-remediation-outcomes";
    /// The remediator's `remediate` workflows (`pf.cmd.workflow.remediate`).
    pub const REMEDIATOR: &str = "workflow-remediate";
    /// The remediator's view of hand-off outcomes (`pf.evt.handoff.>`), which end the waiting
    /// remediations.
    pub const REMEDIATOR_HANDOFFS: &str = "remediator-handoffs";
    /// The snapshotter's prune requests (`pf.cmd.snapshotter.prune`).
    pub const SNAPSHOTTER_PRUNE: &str = "snapshotter-prune";
    /// The replicator's on-demand runs (`pf.cmd.replicator.run`).
    pub const REPLICATOR_RUN: &str = "replicator-run";
}

/// The advance consumer of workflow kind `kind` (`workflow-<kind>` on `pf.cmd.workflow.<kind>`).
pub fn workflow_durable(kind: &str) -> String {
    format!("workflow-{kind}")
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

/// KV key parts built from outside input (alert labels, names): canonical and bounded.
///
/// A key built from a label as it came (`vm/0103`, a 5,000-character value) made `0103` and `103`
/// two cooldowns, and a key longer than the server's control line (4 KiB) disconnected the client.
pub mod key {
    use sha2::{Digest, Sha256};

    /// Longest key part kept as is; longer ones keep a readable prefix and a hash of the whole.
    const MAX_PART: usize = 96;

    /// The canonical form of a target (`vm/103`, `cluster/k3s`, `dataset/tank/vms`): each `/`-separated
    /// segment trimmed; a decimal number (with sign or leading zeros) as the plain integer; anything
    /// else lower-cased (Proxmox names and DNS names are case-insensitive).
    pub fn canonical_target(target: &str) -> String {
        target
            .trim()
            .split('/')
            .map(|segment| {
                let s = segment.trim();
                let digits = s.strip_prefix('+').unwrap_or(s);
                if !digits.is_empty()
                    && digits.len() <= 19
                    && digits.bytes().all(|b| b.is_ascii_digit())
                {
                    digits
                        .parse::<u64>()
                        .map_or_else(|_| s.to_ascii_lowercase(), |n| n.to_string())
                } else {
                    s.to_lowercase()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// A KV-key-safe, bounded form of a key part: letters, digits, `-`, `_`, `=` and `/` stay; a part
    /// that needed any other character replaced, or is longer than [`MAX_PART`], keeps a readable
    /// prefix and gets `_h` and a hash of the original, so two different parts never share a key.
    pub fn key_part(part: &str) -> String {
        let safe: String = part
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_=/".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if safe == part && part.len() <= MAX_PART && !part.is_empty() {
            return safe;
        }
        let hash = hex::encode(&Sha256::digest(part.as_bytes())[..12]);
        let prefix: String = safe.chars().take(MAX_PART / 2).collect();
        format!("{prefix}_h{hash}")
    }

    /// The key of a target: canonical, then made KV-safe.
    pub fn target_key(target: &str) -> String {
        key_part(&canonical_target(target))
    }

    /// The lease key of a remediation target, shared by the engine (which claims it) and the
    /// remediator (which adopts and releases it).
    pub fn remediation_lock(target: &str) -> String {
        format!("remediation/{}", target_key(target))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn numbers_are_canonical_and_names_fold_case() {
            for t in [
                "vm/103", "vm/+103", "vm/0103", "vm/00103", " VM/103 ", "vm/ 103",
            ] {
                assert_eq!(canonical_target(t), "vm/103", "{t}");
            }
            assert_eq!(canonical_target("cluster/K3S"), "cluster/k3s");
            assert_ne!(canonical_target("vm/103"), canonical_target("vm/1030"));
            // Not a number: kept (lower-cased), never parsed into one.
            assert_eq!(canonical_target("vm/1e3"), "vm/1e3");
            assert_eq!(canonical_target("vm/-3"), "vm/-3");
        }

        #[test]
        fn long_or_unsafe_parts_are_bounded_and_distinct() {
            let long = "x".repeat(5_000);
            let k = key_part(&long);
            assert!(k.len() <= MAX_PART / 2 + 2 + 24, "{}", k.len());
            assert_ne!(key_part(&long), key_part(&"x".repeat(5_001)));
            assert_eq!(key_part("vm/103"), "vm/103");
            // "a b" and "a_b" must not share a key.
            assert_ne!(key_part("a b"), key_part("a_b"));
            assert_eq!(key_part("a_b"), "a_b");
            assert!(
                key_part("a.b*>")
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=/".contains(c))
            );
        }
    }
}
