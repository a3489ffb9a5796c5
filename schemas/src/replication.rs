//! Replication: one event per phase of a replication run (`pf.evt.replication.started`,
//! `completed`, `failed`) and the alert that a target diverged (`pf.evt.replication.diverged`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};
use crate::names::subject;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationPhase {
    /// The run took the dataset lock and is about to look at both sides.
    Started,
    /// The target holds the source's newest snapshot.
    Completed,
    /// It did not get there; `error` says why.
    Failed,
}

/// How the data went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// Nothing to send: the target already had the newest snapshot.
    UpToDate,
    /// A full stream of one snapshot (first run).
    Full,
    /// `zfs send -I <base> <newest>`.
    Incremental,
    /// `zfs send -t <token>`: an interrupted receive continued.
    Resumed,
}

/// One phase of one replication run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRun {
    /// Job name (`[[replication.jobs]] name`).
    pub job: String,
    /// Unique per run; the three phases of a run share it.
    pub run_id: String,
    /// Where the run is.
    pub phase: ReplicationPhase,
    /// Source dataset.
    pub source: String,
    /// Target dataset (on the target side's host).
    pub target: String,
    /// How the data went over (completed runs; failed runs once it was decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TransferMode>,
    /// The common base snapshot of an incremental send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The snapshot the target holds afterwards (or was to hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Stream bytes moved.
    pub bytes: u64,
    /// Run time so far, milliseconds.
    pub duration_ms: u64,
    /// How old the target's newest snapshot is (seconds since it was taken on the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_secs: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When this phase was reached.
    pub at: DateTime<Utc>,
}

impl Versioned for ReplicationRun {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.replication.run",
        version: 1,
    };
}

impl Message for ReplicationRun {
    /// The last token is the phase.
    const SUBJECT: &'static str = "pf.evt.replication.*";

    fn subject(&self) -> String {
        let event = match self.phase {
            ReplicationPhase::Started => "started",
            ReplicationPhase::Completed => "completed",
            ReplicationPhase::Failed => "failed",
        };
        subject::evt("replication", event)
    }

    fn dedupe_id(&self) -> String {
        let phase = match self.phase {
            ReplicationPhase::Started => "started",
            ReplicationPhase::Completed => "completed",
            ReplicationPhase::Failed => "failed",
        };
        format!("replication/{}/{}/{phase}", self.job, self.run_id)
    }
}

/// Why the target cannot take an incremental stream without destroying something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceReason {
    /// The target has snapshots after the newest one it shares with the source.
    TargetHasNewerSnapshots,
    /// The target has snapshots but none with a guid the source has.
    NoCommonSnapshot,
    /// The target dataset exists without any snapshot (a full stream would have to overwrite it).
    TargetNotEmpty,
    /// The target was written to since its newest snapshot.
    TargetModified,
}

/// Alert: replication refused to touch a diverged target (`pf.evt.replication.diverged`). Nothing
/// was destroyed or rolled back; an operator decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationDiverged {
    /// Job name.
    pub job: String,
    /// The run that found it.
    pub run_id: String,
    /// Source dataset.
    pub source: String,
    /// Target dataset.
    pub target: String,
    /// What is wrong.
    pub reason: DivergenceReason,
    /// The newest snapshot both sides share (by guid), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_base: Option<String>,
    /// Target snapshots the source does not know, newest last.
    #[serde(default)]
    pub target_only: Vec<String>,
    /// The zfs message, when the refusal came from `zfs receive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl Versioned for ReplicationDiverged {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.replication.diverged",
        version: 1,
    };
}

impl Message for ReplicationDiverged {
    const SUBJECT: &'static str = "pf.evt.replication.diverged";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("replication/{}/{}/diverged", self.job, self.run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_has_its_subject_and_dedupe_id() {
        let mut run = ReplicationRun {
            job: "offsite".into(),
            run_id: "r1".into(),
            phase: ReplicationPhase::Started,
            source: "tank/data".into(),
            target: "offsite/data".into(),
            mode: None,
            base: None,
            snapshot: None,
            bytes: 0,
            duration_ms: 0,
            lag_secs: None,
            error: None,
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        assert_eq!(run.subject(), "pf.evt.replication.started");
        assert!(crate::names::subject::matches(
            ReplicationRun::SUBJECT,
            &run.subject()
        ));
        assert_eq!(run.dedupe_id(), "replication/offsite/r1/started");
        run.phase = ReplicationPhase::Failed;
        assert_eq!(run.subject(), "pf.evt.replication.failed");
        assert!(crate::names::subject::matches(
            ReplicationRun::SUBJECT,
            &run.subject()
        ));
        run.phase = ReplicationPhase::Completed;
        assert_eq!(run.dedupe_id(), "replication/offsite/r1/completed");
    }
}

/// Run a replication job now (`pf.cmd.replicator.run`), e.g. a remediation of a lag alert. The run
/// reports through the usual `replication.*` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRequested {
    /// The job (`[[replication.jobs]] name`).
    pub job: String,
    /// The workflow that asks (dedupe: one run per asking workflow).
    pub workflow_id: String,
    /// Who and why, for the log.
    pub reason: String,
}

impl Versioned for ReplicationRequested {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.cmd.replication_requested",
        version: 1,
    };
}

impl Message for ReplicationRequested {
    const SUBJECT: &'static str = "pf.cmd.replicator.run";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("{}/replicate", self.workflow_id)
    }
}
