//! The lifecycle jobs' wire types: the weekly host-config export (its report and event, the
//! week-to-week changes), and what starts each job.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};

/// What a lifecycle job's run is started with (the schedule, or `proxflow export|drill run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    /// Compute and report; write, create and destroy nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Who or what started it (`schedule`, `cli`).
    pub requested_by: String,
}

/// How one file of a bundle differs from the previous bundle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// New this time (a VM created, an ACL file that was empty before).
    Added,
    /// Gone this time (a VM destroyed).
    Removed,
    /// Present in both, different.
    Changed,
}

/// One change between two bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleChange {
    /// The file, relative to the bundle (`vms/105/config.json`).
    pub path: String,
    /// What it describes, in words (`VM 105`, `ACLs`, `node pve1 network`).
    pub subject: String,
    /// Added, removed or changed.
    pub change: ChangeKind,
    /// The entries that differ: top-level keys of a changed object (`memory`), or the identities
    /// of list entries added, removed or changed (`/vms:PVEVMUser:group:ops`). Empty for added
    /// and removed files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// What one export produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportReport {
    /// The bundle's name (`export-20261206T0300Z`), a directory under the export dataset.
    pub bundle: String,
    /// Where it was written (nothing is, in a dry run).
    pub dir: String,
    /// Files in the bundle, the manifest not counted.
    pub files: u32,
    /// Their bytes.
    pub bytes: u64,
    /// sha256 of the manifest: the same content gives the same value.
    pub manifest_sha256: String,
    /// The bundle it was compared with, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// What changed since `previous`.
    #[serde(default)]
    pub changes: Vec<BundleChange>,
    /// Older bundles removed by retention.
    #[serde(default)]
    pub pruned: Vec<String>,
    /// Nothing was written.
    #[serde(default)]
    pub dry_run: bool,
}

/// An export finished (`pf.evt.export.completed`): the bundle, its manifest hash and the changes
/// since the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportCompleted {
    /// The run's workflow id.
    pub run: String,
    /// What it produced.
    pub report: ExportReport,
    /// When.
    pub at: DateTime<Utc>,
}

impl Versioned for ExportCompleted {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.export.completed",
        version: 1,
    };
}

impl Message for ExportCompleted {
    const SUBJECT: &'static str = "pf.evt.export.completed";

    fn subject(&self) -> String {
        Self::SUBJECT.to_owned()
    }

    fn dedupe_id(&self) -> String {
        format!("export/{}", self.run)
    }
}

/// A drill's verdict: there is no "completed with errors".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// At least one check failed.
    Fail,
}

/// One check of a drill, with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillCheck {
    /// What was checked: `lineage`, `guid`, `files`, `rpo`, `bundle`, `restore`, `cleanup`.
    pub check: String,
    /// On what (`offsite/data@pf-daily-20261206T0300Z`, `VM 101`).
    pub target: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was found, in words; on a failure, what and where (the file, the snapshot).
    pub detail: String,
    /// Its figures (`files`, `bytes`, `seconds`, `age_secs`).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub figures: serde_json::Map<String, serde_json::Value>,
}

/// What a restore drill found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillReport {
    /// Pass only when every check passed.
    pub verdict: Verdict,
    /// Every check, in the order run.
    pub checks: Vec<DrillCheck>,
    /// Age of the newest replicated snapshot across the drilled datasets (the worst), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_secs: Option<u64>,
    /// From the first clone to the restored VM answering its agent, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_secs: Option<f64>,
    /// Seconds spent checksumming files, and cloning (the benchmark's split).
    #[serde(default)]
    pub checksum_secs: f64,
    /// Seconds spent creating and destroying clones.
    #[serde(default)]
    pub clone_secs: f64,
    /// Where the Markdown report was written (empty in a dry run).
    #[serde(default)]
    pub report_path: String,
    /// Nothing was cloned, restored or written.
    #[serde(default)]
    pub dry_run: bool,
}

impl DrillReport {
    /// The failed checks.
    pub fn failed(&self) -> impl Iterator<Item = &DrillCheck> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// A drill ended (`pf.evt.drill.completed`), passed or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillCompleted {
    /// The run's workflow id.
    pub run: String,
    /// What it found.
    pub report: DrillReport,
    /// When.
    pub at: DateTime<Utc>,
}

impl Versioned for DrillCompleted {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.drill.completed",
        version: 1,
    };
}

impl Message for DrillCompleted {
    const SUBJECT: &'static str = "pf.evt.drill.completed";

    fn subject(&self) -> String {
        Self::SUBJECT.to_owned()
    }

    fn dedupe_id(&self) -> String {
        format!("drill/{}", self.run)
    }
}
