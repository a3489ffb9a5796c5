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
    /// Advances of `remediate` workflows (the remediator's engine).
    pub const WORKFLOW_REMEDIATE: &str = "pf.cmd.workflow.remediate";
    /// Advances of `scale_out` workflows (the orchestrator's engine).
    pub const WORKFLOW_SCALE_OUT: &str = "pf.cmd.workflow.scale_out";
    /// Advances of `provision` workflows (the provisioner's engine).
    pub const WORKFLOW_PROVISION: &str = "pf.cmd.workflow.provision";
    /// Advances of `patch_run` workflows (the patcher's engine).
    pub const WORKFLOW_PATCH_RUN: &str = "pf.cmd.workflow.patch_run";
    /// Advances of the lifecycle service's `config_export` workflows.
    pub const WORKFLOW_CONFIG_EXPORT: &str = "pf.cmd.workflow.config_export";
    /// Advances of the lifecycle service's `restore_drill` workflows.
    pub const WORKFLOW_RESTORE_DRILL: &str = "pf.cmd.workflow.restore_drill";
    /// Advances of the lifecycle service's `disk_health` workflows.
    pub const WORKFLOW_DISK_HEALTH: &str = "pf.cmd.workflow.disk_health";
    /// Advances of the lifecycle service's `pool_scrub` workflows.
    pub const WORKFLOW_POOL_SCRUB: &str = "pf.cmd.workflow.pool_scrub";
    /// Advances of `capacity_review` workflows (the capacity service's engine).
    pub const WORKFLOW_CAPACITY_REVIEW: &str = "pf.cmd.workflow.capacity_review";
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

    /// Whether `subject` matches the NATS pattern `pattern` (`*` one token, `>` the rest); tests hold
    /// each message's subject to its type's [`crate::Message::SUBJECT`] with it.
    #[cfg(test)]
    pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
        let mut subject = subject.split('.');
        for token in pattern.split('.') {
            match (token, subject.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(s)) if t == s => {}
                _ => return false,
            }
        }
        subject.next().is_none()
    }

    /// `pf.trace.<trace_id>`: the finished spans of one trace ([`crate::trace::SpanRecord`]).
    pub fn trace(trace_id: &str) -> String {
        format!("pf.trace.{trace_id}")
    }
}

#[cfg(test)]
mod subject_tests {
    use super::subject::{self, matches};
    use crate::Message;
    use crate::events::DeadLetter;
    use crate::provision::ProvisionOutcome;

    #[test]
    fn patterns_match_whole_tokens() {
        assert!(matches("pf.evt.vm.*", "pf.evt.vm.provisioned"));
        assert!(!matches("pf.evt.vm.*", "pf.evt.vm.a.b"));
        assert!(matches("pf.evt.>", "pf.evt.vm.a.b"));
        assert!(!matches("pf.evt.vm.*", "pf.evt.vm"));
        assert!(!matches(
            "pf.evt.vm.provisioned",
            "pf.evt.vm.provision_failed"
        ));
    }

    #[test]
    fn variable_subjects_match_their_type_pattern() {
        for event in ["provisioned", "provision_failed"] {
            assert!(matches(
                ProvisionOutcome::SUBJECT,
                &subject::evt("vm", event)
            ));
        }
        assert!(matches(
            DeadLetter::SUBJECT,
            &subject::dead_letter(super::durable::PROVISIONER)
        ));
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
    /// VM names and static addresses in use (`name/<name>`, `ip/<address>`), each claimed by
    /// compare-and-set by the provision that will use it, or found on Proxmox by the provisioner's
    /// sweep; a second request for either is refused.
    pub const CLAIMS: &str = "pf_claims";
    /// Patching's own state: `held.<target>` = the packages held (and at which version) after an
    /// approver rejected them, so a newer version is offered again.
    pub const PATCH: &str = "pf_patch";
    /// Dead letters an operator replayed (`<stream>.<sequence>` of the letter: who, when, where the
    /// replay went), each claimed with `create` before the replay is published, so a letter is
    /// replayed once. Entries live as long as the event stream keeps the letters.
    pub const REPLAYS: &str = "pf_replays";
}

/// Lifetime of an accepted webhook id in [`bucket::WEBHOOK_IDS`]. A replay is refused by this record
/// only while it lives; after that, by the signature timestamp, so the gateway's signature tolerance
/// must stay below it (it caps `gateway.signature_tolerance` at 10 minutes and the accepted clock skew
/// into the future so that a signature always expires before its id record does).
pub const WEBHOOK_ID_TTL_SECS: u64 = 15 * 60;

/// Durable consumer names. Each owning service consumes under the entry of [`consumer`] that uses
/// it; other crates read them to filter another's dead letters or to inspect a consumer.
pub mod durable {
    /// The provisioner's `provision` workflows (`pf.cmd.workflow.provision`), advanced by its
    /// workflow engine.
    pub const PROVISIONER: &str = "workflow-provision";
    /// Advances of `provision` workflows the provisioner's engine gave up on (their dead letters):
    /// compensated and failed with the reason.
    pub const PROVISIONER_GIVEN_UP: &str = "workflow-provision-givenup";
    /// The orchestrator's provisioning requests (`pf.ingest.webhook.provision`), each of which
    /// starts its `provision` workflow.
    pub const ORCHESTRATOR_PROVISION: &str = "orchestrator-provision";
    /// The orchestrator's provisioning outcomes (`pf.evt.vm.*`), which free a scale-out's cluster
    /// slot and answer the remediation that asked for it.
    pub const ORCHESTRATOR_OUTCOMES: &str = "orchestrator-outcomes";
    /// The orchestrator's capacity events (`pf.evt.capacity.exceeded`), which start scale-outs.
    pub const ORCHESTRATOR_SCALE_OUT: &str = "orchestrator-scaleout";
    /// The orchestrator's scale-outs requested by remediation (`pf.cmd.orchestrator.scale_out`).
    pub const ORCHESTRATOR_SCALE_OUT_REQUESTED: &str = "orchestrator-scaleout-requested";
    /// The orchestrator's `scale_out` workflows (`pf.cmd.workflow.scale_out`), advanced by its
    /// workflow engine.
    pub const ORCHESTRATOR_SCALE_OUT_WORKFLOW: &str = "workflow-scale_out";
    /// Advances of `scale_out` workflows the orchestrator's engine gave up on.
    pub const ORCHESTRATOR_SCALE_OUT_GIVEN_UP: &str = "workflow-scale_out-givenup";
    /// The remediation engine's alerts (`pf.ingest.alertmanager.alert`), run inside the orchestrator.
    pub const ORCHESTRATOR_ALERTS: &str = "orchestrator-alerts";
    /// The remediation engine's remediation outcomes (`pf.evt.remediation.outcome`, the circuit
    /// breakers).
    pub const ORCHESTRATOR_REMEDIATION_OUTCOMES: &str = "orchestrator-remediation-outcomes";
    /// The remediator's `remediate` workflows (`pf.cmd.workflow.remediate`); the workflow engine
    /// names each kind's advance consumer `workflow-<kind>` ([`super::workflow_durable`]).
    pub const REMEDIATOR: &str = "workflow-remediate";
    /// Advances of `remediate` workflows the remediator's engine gave up on.
    pub const REMEDIATOR_GIVEN_UP: &str = "workflow-remediate-givenup";
    /// The remediator's view of hand-off outcomes (`pf.evt.handoff.*`), which end the waiting
    /// remediations.
    pub const REMEDIATOR_HANDOFFS: &str = "remediator-handoffs";
    /// The remediator's view of the replicator's dead-lettered run requests: a remediation
    /// waiting for that run ends `failed` with the reason instead of waiting out its timeout.
    pub const REMEDIATOR_GIVEN_UP_REPLICATION: &str = "remediator-givenup-replication";
    /// Likewise for the snapshotter's dead-lettered prune requests.
    pub const REMEDIATOR_GIVEN_UP_PRUNE: &str = "remediator-givenup-prune";
    /// Likewise for the orchestrator's dead-lettered scale-out requests.
    pub const REMEDIATOR_GIVEN_UP_SCALE_OUT: &str = "remediator-givenup-scaleout";
    /// The snapshotter's prune requests (`pf.cmd.snapshotter.prune`).
    pub const SNAPSHOTTER_PRUNE: &str = "snapshotter-prune";
    /// The replicator's on-demand runs (`pf.cmd.replicator.run`).
    pub const REPLICATOR_RUN: &str = "replicator-run";
    /// The patcher's `patch_run` workflows (`pf.cmd.workflow.patch_run`).
    pub const PATCHER: &str = "workflow-patch_run";
    /// Advances of `patch_run` workflows the patcher's engine gave up on.
    pub const PATCHER_GIVEN_UP: &str = "workflow-patch_run-givenup";
    /// The lifecycle service's `config_export` workflows (`pf.cmd.workflow.config_export`).
    pub const LIFECYCLE_EXPORT: &str = "workflow-config_export";
    /// Advances of `config_export` workflows its engine gave up on.
    pub const LIFECYCLE_EXPORT_GIVEN_UP: &str = "workflow-config_export-givenup";
    /// The lifecycle service's `restore_drill` workflows (`pf.cmd.workflow.restore_drill`).
    pub const LIFECYCLE_DRILL: &str = "workflow-restore_drill";
    /// Advances of `restore_drill` workflows its engine gave up on.
    pub const LIFECYCLE_DRILL_GIVEN_UP: &str = "workflow-restore_drill-givenup";
    /// The lifecycle service's `disk_health` workflows (`pf.cmd.workflow.disk_health`).
    pub const LIFECYCLE_HEALTH: &str = "workflow-disk_health";
    /// Advances of `disk_health` workflows its engine gave up on.
    pub const LIFECYCLE_HEALTH_GIVEN_UP: &str = "workflow-disk_health-givenup";
    /// The lifecycle service's `pool_scrub` workflows (`pf.cmd.workflow.pool_scrub`).
    pub const LIFECYCLE_SCRUB: &str = "workflow-pool_scrub";
    /// Advances of `pool_scrub` workflows its engine gave up on.
    pub const LIFECYCLE_SCRUB_GIVEN_UP: &str = "workflow-pool_scrub-givenup";
    /// The capacity service's `capacity_review` workflows (`pf.cmd.workflow.capacity_review`).
    pub const CAPACITY_REVIEW: &str = "workflow-capacity_review";
    /// Advances of `capacity_review` workflows the capacity service's engine gave up on.
    pub const CAPACITY_REVIEW_GIVEN_UP: &str = "workflow-capacity_review-givenup";
}

/// The advance consumer of workflow kind `kind`: `workflow-<kind>` on `pf.cmd.workflow.<kind>`.
pub fn workflow_durable(kind: &str) -> String {
    format!("workflow-{kind}")
}

/// The consumer of the advances of kind `kind` its advance consumer gave up on (its dead letters):
/// `workflow-<kind>-givenup`.
pub fn workflow_given_up_durable(kind: &str) -> String {
    format!("workflow-{kind}-givenup")
}

/// The service a durable consumer belongs to, for traces and logs: its user in [`consumer::ALL`],
/// else the durable's first word (a consumer outside the table, e.g. a test's).
pub fn service_of(durable: &str) -> &str {
    consumer::ALL
        .iter()
        .find(|c| c.durable == durable)
        .map_or_else(|| durable.split('-').next().unwrap_or(durable), |c| c.user)
}

/// NATS users: one per service, the identity its permissions in `deploy/nats/accounts.conf` are
/// granted to (generated from [`consumer::ALL`] and `proxflow nats-accounts`' declarations).
pub mod user {
    /// Declares the topology; no restrictions.
    pub const ADMIN: &str = "admin";
    /// HTTP ingress.
    pub const GATEWAY: &str = "gateway";
    /// Workflows, admissions, scale-out and the remediation engine.
    pub const ORCHESTRATOR: &str = "orchestrator";
    /// Provisioning steps.
    pub const PROVISIONER: &str = "provisioner";
    /// Capacity polling.
    pub const CAPACITY: &str = "capacity";
    /// Snapshots and pre-change snapshots.
    pub const SNAPSHOTTER: &str = "snapshotter";
    /// Offsite replication.
    pub const REPLICATOR: &str = "replicator";
    /// Remediation actions.
    pub const REMEDIATOR: &str = "remediator";
    /// The patcher.
    pub const PATCHER: &str = "patcher";
    /// The lifecycle jobs (export, drill, disk health).
    pub const LIFECYCLE: &str = "lifecycle";

    /// The reply-inbox prefix of a user (`_INBOX_<user>`): its permissions let it read only its own
    /// replies, which a shared `_INBOX` would not.
    pub fn inbox_prefix(user: &str) -> String {
        format!("_INBOX_{user}")
    }
}

/// What a durable consumer reads: one subject pattern, or the dead letters of another consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// A subject pattern, normally a message type's [`crate::Message::SUBJECT`].
    Subject(&'static str),
    /// `pf.evt.deadletter.<durable>`: what that consumer gave up on.
    DeadLettersOf(&'static str),
}

/// One durable pull consumer: where it reads, under which name, what, and as which NATS user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    /// The stream it reads ([`stream`]).
    pub stream: &'static str,
    /// Its durable name ([`durable`]); also its metrics label and dead-letter subject suffix.
    pub durable: &'static str,
    /// What it reads.
    pub filter: Filter,
    /// The NATS user ([`user`]) of the service that consumes it; only that user may pull from it.
    pub user: &'static str,
}

impl Consumer {
    /// The filter as a subject pattern.
    pub fn filter_subject(&self) -> String {
        match self.filter {
            Filter::Subject(s) => s.to_owned(),
            Filter::DeadLettersOf(durable) => subject::dead_letter(durable),
        }
    }
}

/// Every durable consumer of proxflow. Services build their consumer specs from these entries and
/// `proxflow nats-accounts` grants each one to its user, so a consumer and its permission cannot
/// drift apart.
pub mod consumer {
    use super::{Consumer, Filter, durable, stream, user};
    use crate::Message;
    use crate::alert::AlertReceived;
    use crate::capacity::{CapacityExceeded, ScaleOutRequested};
    use crate::provision::{ProvisionOutcome, ProvisionRequested};
    use crate::remediation::{HandOffOutcome, RemediationOutcome};
    use crate::replication::ReplicationRequested;
    use crate::snapshot::PruneRequested;

    /// See [`durable::PROVISIONER`].
    pub const PROVISIONER: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::PROVISIONER,
        filter: Filter::Subject(super::subject::WORKFLOW_PROVISION),
        user: user::PROVISIONER,
    };
    /// See [`durable::PROVISIONER_GIVEN_UP`].
    pub const PROVISIONER_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::PROVISIONER_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::PROVISIONER),
        user: user::PROVISIONER,
    };
    /// See [`durable::ORCHESTRATOR_PROVISION`].
    pub const ORCHESTRATOR_PROVISION: Consumer = Consumer {
        stream: stream::INGEST,
        durable: durable::ORCHESTRATOR_PROVISION,
        filter: Filter::Subject(ProvisionRequested::SUBJECT),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::ORCHESTRATOR_OUTCOMES`].
    pub const ORCHESTRATOR_OUTCOMES: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::ORCHESTRATOR_OUTCOMES,
        filter: Filter::Subject(ProvisionOutcome::SUBJECT),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::ORCHESTRATOR_SCALE_OUT`].
    pub const ORCHESTRATOR_SCALE_OUT: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::ORCHESTRATOR_SCALE_OUT,
        filter: Filter::Subject(CapacityExceeded::SUBJECT),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::ORCHESTRATOR_SCALE_OUT_REQUESTED`].
    pub const ORCHESTRATOR_SCALE_OUT_REQUESTED: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::ORCHESTRATOR_SCALE_OUT_REQUESTED,
        filter: Filter::Subject(ScaleOutRequested::SUBJECT),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::ORCHESTRATOR_SCALE_OUT_WORKFLOW`].
    pub const ORCHESTRATOR_SCALE_OUT_WORKFLOW: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::ORCHESTRATOR_SCALE_OUT_WORKFLOW,
        filter: Filter::Subject(super::subject::WORKFLOW_SCALE_OUT),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::ORCHESTRATOR_SCALE_OUT_GIVEN_UP`].
    pub const ORCHESTRATOR_SCALE_OUT_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::ORCHESTRATOR_SCALE_OUT_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::ORCHESTRATOR_SCALE_OUT_WORKFLOW),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::ORCHESTRATOR_ALERTS`].
    pub const ORCHESTRATOR_ALERTS: Consumer = Consumer {
        stream: stream::INGEST,
        durable: durable::ORCHESTRATOR_ALERTS,
        filter: Filter::Subject(AlertReceived::SUBJECT),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::ORCHESTRATOR_REMEDIATION_OUTCOMES`].
    pub const ORCHESTRATOR_REMEDIATION_OUTCOMES: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::ORCHESTRATOR_REMEDIATION_OUTCOMES,
        filter: Filter::Subject(RemediationOutcome::SUBJECT),
        user: user::ORCHESTRATOR,
    };
    /// See [`durable::REMEDIATOR`].
    pub const REMEDIATOR: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::REMEDIATOR,
        filter: Filter::Subject(super::subject::WORKFLOW_REMEDIATE),
        user: user::REMEDIATOR,
    };
    /// See [`durable::REMEDIATOR_GIVEN_UP`].
    pub const REMEDIATOR_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::REMEDIATOR_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::REMEDIATOR),
        user: user::REMEDIATOR,
    };
    /// See [`durable::REMEDIATOR_HANDOFFS`].
    pub const REMEDIATOR_HANDOFFS: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::REMEDIATOR_HANDOFFS,
        filter: Filter::Subject(HandOffOutcome::SUBJECT),
        user: user::REMEDIATOR,
    };
    /// See [`durable::REMEDIATOR_GIVEN_UP_REPLICATION`].
    pub const REMEDIATOR_GIVEN_UP_REPLICATION: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::REMEDIATOR_GIVEN_UP_REPLICATION,
        filter: Filter::DeadLettersOf(durable::REPLICATOR_RUN),
        user: user::REMEDIATOR,
    };
    /// See [`durable::REMEDIATOR_GIVEN_UP_PRUNE`].
    pub const REMEDIATOR_GIVEN_UP_PRUNE: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::REMEDIATOR_GIVEN_UP_PRUNE,
        filter: Filter::DeadLettersOf(durable::SNAPSHOTTER_PRUNE),
        user: user::REMEDIATOR,
    };
    /// See [`durable::REMEDIATOR_GIVEN_UP_SCALE_OUT`].
    pub const REMEDIATOR_GIVEN_UP_SCALE_OUT: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::REMEDIATOR_GIVEN_UP_SCALE_OUT,
        filter: Filter::DeadLettersOf(durable::ORCHESTRATOR_SCALE_OUT_REQUESTED),
        user: user::REMEDIATOR,
    };
    /// See [`durable::SNAPSHOTTER_PRUNE`].
    pub const SNAPSHOTTER_PRUNE: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::SNAPSHOTTER_PRUNE,
        filter: Filter::Subject(PruneRequested::SUBJECT),
        user: user::SNAPSHOTTER,
    };
    /// See [`durable::REPLICATOR_RUN`].
    pub const REPLICATOR_RUN: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::REPLICATOR_RUN,
        filter: Filter::Subject(ReplicationRequested::SUBJECT),
        user: user::REPLICATOR,
    };

    /// See [`durable::PATCHER`].
    pub const PATCHER: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::PATCHER,
        filter: Filter::Subject(super::subject::WORKFLOW_PATCH_RUN),
        user: user::PATCHER,
    };
    /// See [`durable::PATCHER_GIVEN_UP`].
    pub const PATCHER_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::PATCHER_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::PATCHER),
        user: user::PATCHER,
    };

    /// See [`durable::LIFECYCLE_EXPORT`].
    pub const LIFECYCLE_EXPORT: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::LIFECYCLE_EXPORT,
        filter: Filter::Subject(super::subject::WORKFLOW_CONFIG_EXPORT),
        user: user::LIFECYCLE,
    };
    /// See [`durable::LIFECYCLE_EXPORT_GIVEN_UP`].
    pub const LIFECYCLE_EXPORT_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::LIFECYCLE_EXPORT_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::LIFECYCLE_EXPORT),
        user: user::LIFECYCLE,
    };
    /// See [`durable::LIFECYCLE_DRILL`].
    pub const LIFECYCLE_DRILL: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::LIFECYCLE_DRILL,
        filter: Filter::Subject(super::subject::WORKFLOW_RESTORE_DRILL),
        user: user::LIFECYCLE,
    };
    /// See [`durable::LIFECYCLE_DRILL_GIVEN_UP`].
    pub const LIFECYCLE_DRILL_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::LIFECYCLE_DRILL_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::LIFECYCLE_DRILL),
        user: user::LIFECYCLE,
    };
    /// See [`durable::LIFECYCLE_HEALTH`].
    pub const LIFECYCLE_HEALTH: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::LIFECYCLE_HEALTH,
        filter: Filter::Subject(super::subject::WORKFLOW_DISK_HEALTH),
        user: user::LIFECYCLE,
    };
    /// See [`durable::LIFECYCLE_HEALTH_GIVEN_UP`].
    pub const LIFECYCLE_HEALTH_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::LIFECYCLE_HEALTH_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::LIFECYCLE_HEALTH),
        user: user::LIFECYCLE,
    };
    /// See [`durable::LIFECYCLE_SCRUB`].
    pub const LIFECYCLE_SCRUB: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::LIFECYCLE_SCRUB,
        filter: Filter::Subject(super::subject::WORKFLOW_POOL_SCRUB),
        user: user::LIFECYCLE,
    };
    /// See [`durable::LIFECYCLE_SCRUB_GIVEN_UP`].
    pub const LIFECYCLE_SCRUB_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::LIFECYCLE_SCRUB_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::LIFECYCLE_SCRUB),
        user: user::LIFECYCLE,
    };
    /// See [`durable::CAPACITY_REVIEW`].
    pub const CAPACITY_REVIEW: Consumer = Consumer {
        stream: stream::CMD,
        durable: durable::CAPACITY_REVIEW,
        filter: Filter::Subject(super::subject::WORKFLOW_CAPACITY_REVIEW),
        user: user::CAPACITY,
    };
    /// See [`durable::CAPACITY_REVIEW_GIVEN_UP`].
    pub const CAPACITY_REVIEW_GIVEN_UP: Consumer = Consumer {
        stream: stream::EVT,
        durable: durable::CAPACITY_REVIEW_GIVEN_UP,
        filter: Filter::DeadLettersOf(durable::CAPACITY_REVIEW),
        user: user::CAPACITY,
    };

    /// All of them, in the order `deploy/nats/accounts.conf` lists them.
    pub const ALL: &[Consumer] = &[
        PROVISIONER,
        PROVISIONER_GIVEN_UP,
        ORCHESTRATOR_PROVISION,
        ORCHESTRATOR_OUTCOMES,
        ORCHESTRATOR_SCALE_OUT,
        ORCHESTRATOR_SCALE_OUT_REQUESTED,
        ORCHESTRATOR_SCALE_OUT_WORKFLOW,
        ORCHESTRATOR_SCALE_OUT_GIVEN_UP,
        ORCHESTRATOR_ALERTS,
        ORCHESTRATOR_REMEDIATION_OUTCOMES,
        REMEDIATOR,
        REMEDIATOR_GIVEN_UP,
        REMEDIATOR_HANDOFFS,
        REMEDIATOR_GIVEN_UP_REPLICATION,
        REMEDIATOR_GIVEN_UP_PRUNE,
        REMEDIATOR_GIVEN_UP_SCALE_OUT,
        SNAPSHOTTER_PRUNE,
        REPLICATOR_RUN,
        PATCHER,
        PATCHER_GIVEN_UP,
        LIFECYCLE_EXPORT,
        LIFECYCLE_EXPORT_GIVEN_UP,
        LIFECYCLE_DRILL,
        LIFECYCLE_DRILL_GIVEN_UP,
        LIFECYCLE_HEALTH,
        LIFECYCLE_HEALTH_GIVEN_UP,
        LIFECYCLE_SCRUB,
        LIFECYCLE_SCRUB_GIVEN_UP,
        CAPACITY_REVIEW,
        CAPACITY_REVIEW_GIVEN_UP,
    ];

    #[cfg(test)]
    mod tests {
        use std::collections::BTreeSet;

        use super::*;
        use crate::names::subject;

        #[test]
        fn durable_names_are_unique_and_single_tokens() {
            let names: BTreeSet<_> = ALL.iter().map(|c| c.durable).collect();
            assert_eq!(names.len(), ALL.len());
            for c in ALL {
                // A durable name is one subject token of the JetStream API and of dead letters.
                assert!(!c.durable.contains(['.', '*', '>', ' ']), "{}", c.durable);
            }
        }

        #[test]
        fn each_consumer_reads_a_subject_of_its_stream() {
            for c in ALL {
                let captured = match c.stream {
                    stream::INGEST => subject::INGEST_ALL,
                    stream::CMD => subject::CMD_ALL,
                    stream::EVT => subject::EVT_ALL,
                    other => panic!("{} reads unexpected stream {other}", c.durable),
                };
                let prefix = captured.trim_end_matches('>');
                assert!(
                    c.filter_subject().starts_with(prefix),
                    "{} filters {} outside {}",
                    c.durable,
                    c.filter_subject(),
                    c.stream
                );
            }
        }

        #[test]
        fn workflow_consumers_are_named_as_the_engine_names_them() {
            assert_eq!(
                REMEDIATOR.durable,
                crate::names::workflow_durable("remediate")
            );
            assert_eq!(
                REMEDIATOR.filter_subject(),
                subject::cmd("workflow", "remediate")
            );
            // The engine names the consumers it spawns per kind; the table must agree with it.
            for (advance, given_up, kind) in [
                (REMEDIATOR, REMEDIATOR_GIVEN_UP, "remediate"),
                (PROVISIONER, PROVISIONER_GIVEN_UP, "provision"),
                (
                    CAPACITY_REVIEW,
                    CAPACITY_REVIEW_GIVEN_UP,
                    crate::capacity_review::KIND,
                ),
                (
                    ORCHESTRATOR_SCALE_OUT_WORKFLOW,
                    ORCHESTRATOR_SCALE_OUT_GIVEN_UP,
                    "scale_out",
                ),
                (PATCHER, PATCHER_GIVEN_UP, "patch_run"),
                (LIFECYCLE_EXPORT, LIFECYCLE_EXPORT_GIVEN_UP, "config_export"),
                (LIFECYCLE_DRILL, LIFECYCLE_DRILL_GIVEN_UP, "restore_drill"),
                (
                    LIFECYCLE_HEALTH,
                    LIFECYCLE_HEALTH_GIVEN_UP,
                    crate::health::DISK_HEALTH_KIND,
                ),
                (
                    LIFECYCLE_SCRUB,
                    LIFECYCLE_SCRUB_GIVEN_UP,
                    crate::health::POOL_SCRUB_KIND,
                ),
            ] {
                assert_eq!(advance.durable, crate::names::workflow_durable(kind));
                assert_eq!(advance.filter_subject(), subject::cmd("workflow", kind));
                assert_eq!(
                    given_up.durable,
                    crate::names::workflow_given_up_durable(kind)
                );
            }
        }

        #[test]
        fn dead_letter_filters_name_a_consumer_of_the_table() {
            assert_eq!(
                PROVISIONER_GIVEN_UP.filter_subject(),
                "pf.evt.deadletter.workflow-provision"
            );
            for c in ALL {
                if let Filter::DeadLettersOf(d) = c.filter {
                    assert!(ALL.iter().any(|o| o.durable == d), "{d}");
                }
            }
        }
    }
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
    /// On a message an operator replayed from a dead letter: the letter's `<stream>.<sequence>`
    /// (`PF_EVT.1234`).
    pub const REPLAY_OF: &str = "Proxflow-Replay-Of";
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

    /// `remediation.cooldown.<rule>.<target>` in `pf_cooldowns`: when a rule last acted on a target.
    pub fn remediation_cooldown(rule: &str, target: &str) -> String {
        format!(
            "remediation.cooldown.{}.{}",
            key_part(rule),
            target_key(target)
        )
    }

    /// `remediation.threshold.<rule>.<target>` in `pf_admissions`: the alerts a rule has seen for a
    /// target within its threshold window.
    pub fn remediation_threshold(rule: &str, target: &str) -> String {
        format!(
            "remediation.threshold.{}.{}",
            key_part(rule),
            target_key(target)
        )
    }

    /// `remediation.targets.<rule>` in `pf_admissions`: the targets a rule acted on within its
    /// `max_targets` window.
    pub fn remediation_targets(rule: &str) -> String {
        format!("remediation.targets.{}", key_part(rule))
    }

    /// `remediation.breaker.<rule>` in `pf_cooldowns`: a rule's circuit breaker.
    pub fn remediation_breaker(rule: &str) -> String {
        format!("remediation.breaker.{}", key_part(rule))
    }

    /// `name/<vm name>` in `pf_claims` (names are DNS labels, lower-cased here as Proxmox compares
    /// them).
    pub fn claim_name(name: &str) -> String {
        format!("name/{}", key_part(&name.to_ascii_lowercase()))
    }

    /// `<stream>.<sequence>` in `pf_replays`: the replay of the message at `sequence` of `stream`.
    pub fn replay(stream: &str, sequence: u64) -> String {
        format!("{}.{sequence}", key_part(stream))
    }

    /// `ip/<IPv4 address>` in `pf_claims`.
    pub fn claim_ip(addr: std::net::Ipv4Addr) -> String {
        format!("ip/{addr}")
    }

    /// `provision.<profile>` in `pf_admissions`: the admission ledger of a provisioning profile.
    pub fn provision_ledger(profile: &str) -> String {
        format!("provision.{profile}")
    }

    /// `scaleout.<cluster>`: a cluster's scale-out slot in `pf_admissions`, and its last scale-out in
    /// `pf_cooldowns`.
    pub fn scale_out(cluster: &str) -> String {
        format!("scaleout.{cluster}")
    }

    /// `vm/<vmid>` in `pf_locks`: the lease the snapshotter holds while pruning a VM's snapshots.
    pub fn vm_lease(vmid: u32) -> String {
        format!("vm/{vmid}")
    }

    /// `zfs/<dataset>` in `pf_locks`: the lease the snapshotter takes while pruning a dataset and the
    /// replicator while sending it, so pruning never races a send; characters KV keys cannot carry
    /// are replaced.
    pub fn dataset_lease(dataset: &str) -> String {
        let safe: String = dataset
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_/=.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("zfs/{safe}")
    }

    /// `prechange/<target lease>` in `pf_locks`: one pre-change snapshot of a target at a time,
    /// without blocking the target's own lease (a prune or a send).
    pub fn prechange_lease(target_lease: &str) -> String {
        format!("prechange/{target_lease}")
    }

    /// `detector/<scope>/<name>/<metric>` in `pf_capacity`: one sustained-threshold detector.
    pub fn capacity_detector(id: &crate::capacity::MetricId) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_=".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!(
            "detector/{}/{}/{}",
            id.scope.as_str(),
            clean(&id.name),
            clean(&id.metric)
        )
    }

    /// The `pf_webhook_ids` key of a webhook id: its SHA-256, because senders choose ids freely and
    /// KV keys allow only `[-/_=.a-zA-Z0-9]`.
    pub fn webhook_id(webhook_id: &str) -> String {
        hex::encode(Sha256::digest(webhook_id.as_bytes()))
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
        fn key_formats_are_the_wire_values() {
            assert_eq!(
                remediation_cooldown("restart", "vm/0103"),
                "remediation.cooldown.restart.vm/103"
            );
            assert_eq!(
                remediation_threshold("restart", "VM/103"),
                "remediation.threshold.restart.vm/103"
            );
            assert_eq!(
                remediation_targets("restart"),
                "remediation.targets.restart"
            );
            assert_eq!(
                remediation_breaker("restart"),
                "remediation.breaker.restart"
            );
            assert_eq!(provision_ledger("k8s-node"), "provision.k8s-node");
            assert_eq!(scale_out("k3s"), "scaleout.k3s");
            assert_eq!(vm_lease(104), "vm/104");
            assert_eq!(dataset_lease("tank/data"), "zfs/tank/data");
            assert_eq!(dataset_lease("tank/a:b"), "zfs/tank/a_b");
            assert_eq!(prechange_lease("vm/104"), "prechange/vm/104");
            assert_eq!(replay("PF_EVT", 1234), "PF_EVT.1234");
            let webhook = webhook_id("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W with spaces.and*stars>");
            assert_eq!(webhook.len(), 64);
            assert!(webhook.bytes().all(|b| b.is_ascii_hexdigit()));
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
