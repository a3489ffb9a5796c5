//! `proxflow nats-accounts`: writes `deploy/nats/accounts.conf`, the least-privilege NATS users.
//!
//! Permissions are derived, not written by hand: each durable consumer (and which user pulls from it)
//! comes from [`names::consumer::ALL`], the same table the services build their consumers from, and
//! each message subject from its type's [`Message::SUBJECT`]. What is declared here per user is only
//! what the table cannot know: what it publishes, which KV buckets it uses and which requests it
//! answers. A test fails when the checked-in file differs from what this writes.

use std::fmt::Write as _;

use proxflow_schemas::Message;
use proxflow_schemas::capacity::{
    CapacityExceeded, CapacityRecovered, CapacitySample, HostExhausted, ScaleOutRequested,
};
use proxflow_schemas::capacity_review::CapacityReviewed;
use proxflow_schemas::health::HealthReport;
use proxflow_schemas::lifecycle::{DrillCompleted, ExportCompleted};
use proxflow_schemas::names::{self, bucket, stream, subject, user};
use proxflow_schemas::remediation::{RemediationDecision, RemediationOutcome, RemediationPage};
use proxflow_schemas::replication::{ReplicationRequested, ReplicationRun};
use proxflow_schemas::snapshot::{PruneRequested, SnapshotTaken};

/// Subjects a user may publish, with the reason (a comment in the file) when it is not obvious.
struct Grant {
    why: Option<&'static str>,
    allow: Vec<String>,
}

impl Grant {
    fn plain(allow: &[&str]) -> Self {
        Self {
            why: None,
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn because(why: &'static str, allow: &[&str]) -> Self {
        Self {
            why: Some(why),
            ..Self::plain(allow)
        }
    }
}

/// What one service user may do beyond its consumers.
struct User {
    name: &'static str,
    /// Comment above the user: what the service is and why it needs what it has.
    about: &'static str,
    /// Subjects it publishes (messages, requests) and stream reads it makes.
    publishes: Vec<Grant>,
    /// KV buckets it reads and writes.
    buckets: Vec<&'static str>,
    /// KV buckets it lists (with an ephemeral ordered consumer), and why.
    lists: Vec<(&'static str, &'static str)>,
    /// Core request/reply subjects it answers: subscribed to, replied to through `allow_responses`.
    answers: Vec<&'static str>,
}

/// Direct and by-sequence reads of one message of a stream (KV gets, last-by-subject reads).
fn direct_get(stream: &str) -> [String; 2] {
    [
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]
}

/// The JetStream stream under a KV bucket.
fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

fn users() -> Vec<User> {
    let orchestrator_reads_samples = direct_get(stream::EVT);
    let decisions = format!(
        "$JS.API.CONSUMER.CREATE.{}.*.{}",
        stream::EVT,
        RemediationDecision::SUBJECT
    );
    let capacity_samples = format!(
        "$JS.API.CONSUMER.CREATE.{}.*.{}",
        stream::EVT,
        CapacitySample::SUBJECT
    );
    let replication_completed = format!(
        "$JS.API.CONSUMER.CREATE.{}.*.pf.evt.replication.completed",
        stream::EVT
    );
    let console_reads: Vec<String> = [
        CapacitySample::SUBJECT,
        HealthReport::SUBJECT,
        ReplicationRun::SUBJECT,
        SnapshotTaken::SUBJECT,
        ExportCompleted::SUBJECT,
        DrillCompleted::SUBJECT,
    ]
    .iter()
    .map(|s| format!("$JS.API.CONSUMER.CREATE.{}.*.{s}", stream::EVT))
    .chain([
        format!("$JS.API.STREAM.INFO.{}", stream::EVT),
        format!("$JS.API.CONSUMER.CREATE.{}", stream::TRACE),
        format!("$JS.API.CONSUMER.CREATE.{}.>", stream::TRACE),
        format!("$JS.API.CONSUMER.MSG.NEXT.{}.*", stream::TRACE),
        format!("$JS.API.CONSUMER.INFO.{}.*", stream::TRACE),
        format!("$JS.API.CONSUMER.DELETE.{}.*", stream::TRACE),
        format!("$JS.API.STREAM.INFO.{}", stream::TRACE),
    ])
    .collect();
    let console_reads: Vec<&str> = console_reads.iter().map(String::as_str).collect();
    vec![
        User {
            name: user::GATEWAY,
            about: "HTTP ingress: publishes what it accepted, creates each workflow's first record, remembers\n\
                    accepted webhook ids (replay guard) and reads workflow records for the status API.",
            publishes: vec![
                Grant::plain(&[subject::INGEST_ALL]),
                Grant::because(
                    "An approver's decision is a signal to the waiting patch run: its advance.",
                    &[subject::WORKFLOW_PATCH_RUN],
                ),
                Grant::because(
                    "GET /v1/remediations reads the decision events with an ordered consumer, filtered\n\
                     to that one subject (the filter is the last tokens of the create subject).",
                    &[
                        &decisions,
                        &format!("$JS.API.CONSUMER.MSG.NEXT.{}.*", stream::EVT),
                        &format!("$JS.API.CONSUMER.INFO.{}.*", stream::EVT),
                        &format!("$JS.API.CONSUMER.DELETE.{}.*", stream::EVT),
                    ],
                ),
                Grant::because(
                    "The console's overview reads the newest capacity sample, health check, replication\n\
                     and snapshot events and lifecycle reports the same way, each subject alone; a\n\
                     workflow's page reads its trace from PF_TRACE.",
                    &console_reads,
                ),
            ],
            buckets: vec![bucket::WORKFLOWS, bucket::WEBHOOK_IDS, bucket::CLAIMS],
            lists: vec![(
                bucket::WORKFLOWS,
                "GET /v1/patch/runs and the console list workflows from the index (idx.<kind>.<state>.*).",
            )],
            answers: vec![],
        },
        User {
            name: user::ORCHESTRATOR,
            about: "Orchestrator: reads ingest and events, sends commands, owns workflow state, admissions\n\
                    (caps), locks and cooldowns.",
            publishes: vec![
                Grant::plain(&[subject::CMD_ALL, &subject::evt("workflow", ">")]),
                Grant::because(
                    "A scale-out reports a full host, and tells a remediation that asked for it how it\n\
                     ended.",
                    &[
                        HostExhausted::SUBJECT,
                        &subject::evt("handoff", "scale_out"),
                    ],
                ),
                Grant::because(
                    "Remediation: the audit trail and the breaker's page.",
                    &[RemediationDecision::SUBJECT, RemediationPage::SUBJECT],
                ),
                Grant::because(
                    "A scale-out asked for by an alert decides on the newest capacity sample.",
                    &[
                        &orchestrator_reads_samples[0],
                        &orchestrator_reads_samples[1],
                    ],
                ),
                Grant::because(
                    "Patch and remediation workflows ask the snapshotter for pre-change snapshots\n\
                     (core request/reply; the answer comes back on its own inbox).",
                    &[subject::RPC_SNAPSHOTTER_PRECHANGE],
                ),
            ],
            buckets: vec![
                bucket::WORKFLOWS,
                bucket::ADMISSIONS,
                bucket::LOCKS,
                bucket::COOLDOWNS,
            ],
            lists: vec![(
                bucket::WORKFLOWS,
                "The workflow engine's waker (scale-outs) watches the index (idx.<kind>.<state>.*)\n\
                 with an ephemeral ordered consumer.",
            )],
            answers: vec![],
        },
        User {
            name: user::PROVISIONER,
            about: "Provisioner: runs the `provision` workflows (its workflow engine advances them, holding\n\
                    each one's lease, and wakes the due ones from the index), admits each to its profile's\n\
                    caps, holds VMID reservations and publishes the VM outcomes.",
            publishes: vec![Grant::plain(&[
                &subject::evt("vm", ">"),
                subject::WORKFLOW_PROVISION,
            ])],
            buckets: vec![
                bucket::VMIDS,
                bucket::WORKFLOWS,
                bucket::ADMISSIONS,
                bucket::LOCKS,
                bucket::CLAIMS,
            ],
            lists: vec![
                (
                    bucket::CLAIMS,
                    "The claims sweep lists the names and addresses in use with an ephemeral ordered\n\
                     consumer.",
                ),
                (
                    bucket::VMIDS,
                    "Listing its reservations (a resumed provision finds its VMID) reads the bucket with an\n\
                     ephemeral ordered consumer.",
                ),
                (
                    bucket::WORKFLOWS,
                    "The workflow engine's waker watches the index (idx.<kind>.<state>.*) with an\n\
                     ephemeral ordered consumer.",
                ),
            ],
            answers: vec![],
        },
        User {
            name: user::CAPACITY,
            about: "Capacity: polls Proxmox (no bus input), publishes samples and sustained-threshold events,\n\
                    keeps its detectors in pf_capacity, and runs the `capacity_review` workflows (its\n\
                    workflow engine advances them) that read the month's samples back.",
            publishes: vec![
                Grant::plain(&[
                    CapacitySample::SUBJECT,
                    CapacityExceeded::SUBJECT,
                    CapacityRecovered::SUBJECT,
                    CapacityReviewed::SUBJECT,
                    subject::WORKFLOW_CAPACITY_REVIEW,
                ]),
                Grant::because(
                    "A review reads the window's capacity samples back with an ordered consumer.",
                    &[
                        &capacity_samples,
                        &format!("$JS.API.CONSUMER.MSG.NEXT.{}.*", stream::EVT),
                        &format!("$JS.API.CONSUMER.INFO.{}.*", stream::EVT),
                        &format!("$JS.API.CONSUMER.DELETE.{}.*", stream::EVT),
                    ],
                ),
            ],
            buckets: vec![bucket::CAPACITY, bucket::WORKFLOWS],
            lists: vec![
                (
                    bucket::CAPACITY,
                    "A restart lists the stored detectors with an ephemeral ordered consumer.",
                ),
                (
                    bucket::WORKFLOWS,
                    "The workflow engine's waker lists the index (idx.<kind>.<state>.*) with an\n\
                     ephemeral ordered consumer.",
                ),
            ],
            answers: vec![],
        },
        User {
            name: user::SNAPSHOTTER,
            about: "Snapshotter: answers pre-change requests (core request/reply, the reply to the requester's\n\
                    inbox, which allow_responses permits for exactly the requests it received), consumes\n\
                    prune requests, publishes snapshot events, and takes the per-target leases in pf_locks\n\
                    that it shares with the replicator.",
            publishes: vec![Grant::plain(&[
                &subject::evt("snapshot", ">"),
                &subject::evt("handoff", "prune"),
            ])],
            buckets: vec![bucket::LOCKS],
            lists: vec![],
            answers: vec![subject::RPC_SNAPSHOTTER_PRECHANGE],
        },
        User {
            name: user::REPLICATOR,
            about: "Replicator: runs on its schedule and on request, publishes replication events, takes the\n\
                    source dataset's lease in pf_locks.",
            publishes: vec![Grant::plain(&[
                &subject::evt("replication", ">"),
                &subject::evt("handoff", "replication"),
            ])],
            buckets: vec![bucket::LOCKS],
            lists: vec![],
            answers: vec![],
        },
        User {
            name: user::REMEDIATOR,
            about: "Remediator: runs the `remediate` workflows the orchestrator's decisions start (its workflow\n\
                    engine advances them and lists the waiting ones from the index), holding the target's\n\
                    lease, and ends hand-offs on the owner's outcome.",
            publishes: vec![
                Grant::plain(&[RemediationOutcome::SUBJECT, subject::WORKFLOW_REMEDIATE]),
                Grant::because(
                    "Hands scale-outs to the orchestrator, replication runs to the replicator and prunes\n\
                     to the snapshotter.",
                    &[
                        ScaleOutRequested::SUBJECT,
                        ReplicationRequested::SUBJECT,
                        PruneRequested::SUBJECT,
                    ],
                ),
            ],
            buckets: vec![bucket::LOCKS, bucket::WORKFLOWS],
            lists: vec![(
                bucket::WORKFLOWS,
                "The workflow engine's waker lists due timers and expired waits from the index\n\
                 (idx.<kind>.<state>.*) with an ephemeral ordered consumer.",
            )],
            answers: vec![],
        },
        User {
            name: user::PATCHER,
            about: "Patcher: runs the `patch_run` workflows (its workflow engine advances them and wakes the\n\
                    waiting ones), asks the snapshotter for pre-change snapshots, publishes the patch events,\n\
                    keeps rejected packages in pf_patch and reads leases and in-flight workflows as gates.",
            publishes: vec![
                Grant::plain(&[&subject::evt("patch", ">"), subject::WORKFLOW_PATCH_RUN]),
                Grant::because(
                    "Pre-change snapshots before each node (core request/reply).",
                    &[subject::RPC_SNAPSHOTTER_PRECHANGE],
                ),
                Grant::because(
                    "The replication gate reads the newest completed run with an ordered consumer.",
                    &[
                        &replication_completed,
                        &format!("$JS.API.CONSUMER.MSG.NEXT.{}.*", stream::EVT),
                        &format!("$JS.API.CONSUMER.INFO.{}.*", stream::EVT),
                        &format!("$JS.API.CONSUMER.DELETE.{}.*", stream::EVT),
                    ],
                ),
            ],
            buckets: vec![bucket::WORKFLOWS, bucket::LOCKS, bucket::PATCH],
            lists: vec![(
                bucket::WORKFLOWS,
                "The workflow engine's waker and the gates list the index (idx.<kind>.<state>.*) with\n\
                 an ephemeral ordered consumer.",
            )],
            answers: vec![],
        },
        User {
            name: user::LIFECYCLE,
            about: "Lifecycle: runs the `config_export`, `restore_drill`, `disk_health` and `pool_scrub`\n\
                    workflows (its workflow engine advances them, its schedules start them) and publishes\n\
                    their events.",
            publishes: vec![Grant::plain(&[
                &subject::evt("export", ">"),
                &subject::evt("drill", ">"),
                &subject::evt("health", ">"),
                subject::WORKFLOW_CONFIG_EXPORT,
                subject::WORKFLOW_RESTORE_DRILL,
                subject::WORKFLOW_DISK_HEALTH,
                subject::WORKFLOW_POOL_SCRUB,
            ])],
            buckets: vec![bucket::WORKFLOWS, bucket::LOCKS],
            lists: vec![(
                bucket::WORKFLOWS,
                "The workflow engine's waker lists due timers and expired waits from the index\n\
                 (idx.<kind>.<state>.*) with an ephemeral ordered consumer.",
            )],
            answers: vec![],
        },
    ]
}

const HEADER: &str = "\
# proxflow users with least-privilege permissions, included by single-node.conf and the cluster nodes.
#
# GENERATED by `proxflow nats-accounts` (`just nats-accounts`); do not edit. The durable consumers
# and their users come from proxflow_schemas::names::consumer (what the services consume), the rest
# from the per-user declarations in services/proxflow/src/nats_accounts.rs.
#
# One user per service. Passwords come from the environment of the nats-server process (systemd
# LoadCredential / EnvironmentFile), never from this file: e.g. PF_GATEWAY_PASSWORD.
# Services read their own with PROXFLOW_NATS__USER / PROXFLOW_NATS__PASSWORD.
#
# JetStream API subjects a service needs:
#   $JS.API.INFO                         account info (start-up check)
#   $JS.API.STREAM.INFO.<stream>         topology check (declare is idempotent)
#   $JS.API.STREAM.CREATE/UPDATE.<s>     only the admin user, which declares the topology
#   $JS.API.CONSUMER.INFO/CREATE/UPDATE.<stream>.<durable>[.<filter>]   its own durables only
#   $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>                          pull from them
#   $JS.ACK.<stream>.<durable>.>                                          ack / nak / term / progress
# Replies come back on a per-service inbox prefix (_INBOX_<service>.>), so no service reads another's
# replies (a shared _INBOX.> would let any user read every reply on the account).
# Wildcards match whole tokens only, so every bucket and every durable is named.
";

/// The password variable of a user, read by nats-server from its environment.
fn password_var(user: &str) -> String {
    format!("$PF_{}_PASSWORD", user.to_ascii_uppercase())
}

fn comment(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "{indent}# {line}");
    }
}

/// One entry a line: the file is reviewed as a diff, and a line is one permission.
fn allow_line(out: &mut String, allow: &[String]) {
    for subject in allow {
        let _ = writeln!(out, "              {subject:?},");
    }
}

/// Why the file could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("consumer {durable} belongs to user {user}, which has no declaration in nats_accounts")]
pub struct UndeclaredUser {
    durable: &'static str,
    user: &'static str,
}

/// The whole `accounts.conf`.
pub fn render() -> Result<String, UndeclaredUser> {
    let users = users();
    if let Some(c) = names::consumer::ALL
        .iter()
        .find(|c| !users.iter().any(|u| u.name == c.user))
    {
        return Err(UndeclaredUser {
            durable: c.durable,
            user: c.user,
        });
    }
    let mut out = String::from(HEADER);
    out.push_str("\naccounts {\n  PROXFLOW {\n    jetstream: enabled\n    users: [\n");
    comment(
        &mut out,
        "      ",
        "Declares the whole topology (proxflow serve runs declare at start with this user in\n\
         single-process installs; in split installs run `proxflow serve` once as admin first).\n\
         The operator's CLI runs as admin too: `proxflow deadletters replay` publishes a dead\n\
         letter's original on its own subject (ingest, command or event) and claims the replay in\n\
         pf_replays, which no service user may.",
    );
    let _ = writeln!(
        out,
        "      {{ user: {}, password: {} }}",
        user::ADMIN,
        password_var(user::ADMIN)
    );
    for u in &users {
        out.push('\n');
        render_user(&mut out, u);
    }
    out.push_str("    ]\n  }\n");
    let _ = writeln!(
        out,
        "  SYS {{ users: [ {{ user: sys, password: {} }} ] }}",
        password_var("sys")
    );
    out.push_str("}\nsystem_account: SYS\n");
    Ok(out)
}

fn render_user(out: &mut String, u: &User) {
    let consumers: Vec<_> = names::consumer::ALL
        .iter()
        .filter(|c| c.user == u.name)
        .collect();
    comment(out, "      ", u.about);
    let _ = writeln!(
        out,
        "      {{ user: {}, password: {}, permissions: {{",
        u.name,
        password_var(u.name)
    );
    out.push_str("          publish: {\n            allow: [\n");
    for grant in &u.publishes {
        if let Some(why) = grant.why {
            comment(out, "              ", why);
        }
        allow_line(out, &grant.allow);
    }
    // Every service exports its spans; a service with consumers parks what it gives up on.
    let mut always = vec![subject::TRACE_ALL.to_owned()];
    if !consumers.is_empty() {
        always.push(subject::dead_letter(">"));
    }
    allow_line(out, &always);
    allow_line(
        out,
        &[
            "$JS.API.INFO".to_owned(),
            "$JS.API.STREAM.INFO.*".to_owned(),
        ],
    );
    for b in &u.buckets {
        let mut allow = vec![format!("$KV.{b}.>")];
        allow.extend(direct_get(&kv_stream(b)));
        allow_line(out, &allow);
    }
    for (b, why) in &u.lists {
        comment(out, "              ", why);
        let s = kv_stream(b);
        allow_line(
            out,
            &[
                format!("$JS.API.CONSUMER.CREATE.{s}"),
                format!("$JS.API.CONSUMER.CREATE.{s}.>"),
            ],
        );
        allow_line(
            out,
            &[
                format!("$JS.API.CONSUMER.DELETE.{s}.>"),
                format!("$JS.API.CONSUMER.INFO.{s}.>"),
                // An ordered consumer pulls: without this a listing stalls after its create.
                format!("$JS.API.CONSUMER.MSG.NEXT.{s}.*"),
                format!("$JS.FC.{s}.>"),
            ],
        );
    }
    for c in consumers {
        let (s, d) = (c.stream, c.durable);
        comment(
            out,
            "              ",
            &format!("Durable {d}: {} on {s}.", c.filter_subject()),
        );
        allow_line(
            out,
            &[
                format!("$JS.API.CONSUMER.INFO.{s}.{d}"),
                format!("$JS.API.CONSUMER.CREATE.{s}.{d}.>"),
                format!("$JS.API.CONSUMER.UPDATE.{s}.{d}.>"),
            ],
        );
        allow_line(
            out,
            &[
                format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{d}"),
                format!("$JS.ACK.{s}.{d}.>"),
            ],
        );
    }
    out.push_str("            ]\n          }\n");
    let mut subscribe = vec![format!("{}.>", user::inbox_prefix(u.name))];
    subscribe.extend(u.answers.iter().map(|s| (*s).to_owned()));
    let quoted: Vec<String> = subscribe.iter().map(|s| format!("{s:?}")).collect();
    let _ = writeln!(
        out,
        "          subscribe: {{ allow: [{}] }}",
        quoted.join(", ")
    );
    if !u.answers.is_empty() {
        out.push_str("          allow_responses: true\n");
    }
    out.push_str("      } }\n");
}

/// `proxflow nats-accounts --out <file>`.
pub fn write(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(out, render()?).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}
