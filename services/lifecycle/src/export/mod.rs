//! The weekly host-config export: one `config_export` workflow per run — collect everything into a
//! deterministic bundle, write it into the export dataset (replicated offsite with the rest; or a
//! plain `export.dir`),
//! compare it with the previous bundle, keep `keep` bundles, announce the changes.

pub mod collect;
pub mod normalize;
pub mod rebuild;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proxflow_runtime::bus::Publisher;
use proxflow_runtime::ops::{GaugeFamily, Metrics};
use proxflow_runtime::workflow::{Halt, Run, StepError, Workflow};
use proxflow_schemas::lifecycle::{ExportCompleted, ExportReport, JobInput};
use proxflow_zfs::Zfs;

use crate::bundle::{self, Bundle};
use crate::config::ExportConfig;
use collect::Collector;

/// The workflow kind of an export.
pub const KIND: &str = "config_export";
/// The schedule's job name, the prefix of scheduled runs' ids.
pub const JOB: &str = "export";

/// `proxflow_export_*` metrics.
#[derive(Clone)]
pub struct ExportMetrics {
    /// `export_last_success_timestamp`: when an export last wrote a bundle.
    pub last_success: GaugeFamily<0>,
    /// `export_bundle_bytes`: the last bundle's size.
    pub bytes: GaugeFamily<0>,
    /// `export_changes`: files changed since the previous bundle, at the last export.
    pub changes: GaugeFamily<0>,
}

impl ExportMetrics {
    /// Registers them.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            last_success: metrics.gauge_family(
                "export_last_success_timestamp",
                "Unix time the host-config export last wrote a bundle",
                [],
            ),
            bytes: metrics.gauge_family(
                "export_bundle_bytes",
                "Bytes of the last export bundle",
                [],
            ),
            changes: metrics.gauge_family(
                "export_changes",
                "Files of the last export bundle that differ from the previous bundle",
                [],
            ),
        }
    }
}

/// What an export acts on.
pub struct Exporter {
    /// Collects the content.
    pub collector: Collector,
    /// `[export]`.
    pub config: ExportConfig,
    /// Finds the dataset's mountpoint.
    pub zfs: Zfs,
    /// Announces.
    pub publisher: Publisher,
    /// Counts.
    pub metrics: ExportMetrics,
}

/// Why the bundles' directory is not there.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// Neither `export.dataset` nor `export.dir` is set.
    #[error("no export is configured (export.dataset or export.dir)")]
    NotConfigured,
    /// `export.dir` could not be made.
    #[error("export.dir {dir}: {source}", dir = .dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The dataset has no mountpoint.
    #[error(
        "export.dataset {0} is not mounted (mountpoint none or legacy): the bundle must land in \
         the dataset for replication to carry it offsite"
    )]
    NotMounted(String),
    /// zfs could not say where the dataset is mounted.
    #[error("export.dataset {dataset}: {source}")]
    Zfs {
        /// The dataset.
        dataset: String,
        /// The runner's error.
        #[source]
        source: proxflow_zfs::ZfsError,
    },
}

/// The directory the bundles go into: `export.dir` (made when missing), else the export dataset's
/// mountpoint, asked of `zfs`.
pub async fn bundles_dir(config: &ExportConfig, zfs: &Zfs) -> Result<PathBuf, RootError> {
    if let Some(dir) = &config.dir {
        std::fs::create_dir_all(dir).map_err(|source| RootError::Dir {
            dir: dir.clone(),
            source,
        })?;
        return Ok(dir.clone());
    }
    let dataset = config.dataset().ok_or(RootError::NotConfigured)?;
    match zfs.mountpoint(dataset).await {
        Ok(Some(dir)) => Ok(dir),
        Ok(None) => Err(RootError::NotMounted(dataset.to_owned())),
        Err(source) => Err(RootError::Zfs {
            dataset: dataset.to_owned(),
            source,
        }),
    }
}

fn terminal(context: &str) -> impl FnOnce(bundle::BundleError) -> StepError + '_ {
    move |e| StepError::terminal(format!("{context}: {e}")).with_source(e)
}

impl Exporter {
    /// The directory the bundles go into ([`bundles_dir`]); zfs briefly away is worth a retry.
    pub async fn root(&self) -> Result<PathBuf, StepError> {
        bundles_dir(&self.config, &self.zfs).await.map_err(|e| {
            if matches!(e, RootError::Zfs { .. }) {
                StepError::transient(e.to_string()).with_source(e)
            } else {
                StepError::terminal(e.to_string()).with_source(e)
            }
        })
    }

    /// Collects, compares with the newest bundle before `name`, and writes `name` unless
    /// `dry_run`.
    pub async fn export(&self, name: &str, dry_run: bool) -> Result<ExportReport, StepError> {
        let content = self.collector.collect().await.map_err(|e| {
            let message = e.to_string();
            if e.is_transient() {
                StepError::transient(message).with_source(e)
            } else {
                StepError::terminal(message).with_source(e)
            }
        })?;
        let root = self.root().await?;
        let previous = bundle::list(&root)
            .map_err(terminal("listing the bundles"))?
            .into_iter()
            .rfind(|b| b.as_str() < name);
        let changes = match &previous {
            Some(p) => {
                let old =
                    Bundle::read(&root.join(p)).map_err(terminal("reading the previous bundle"))?;
                bundle::diff(&old, &content)
            }
            None => Vec::new(),
        };
        let mut report = ExportReport {
            bundle: name.to_owned(),
            dir: String::new(),
            files: u32::try_from(content.files().len()).unwrap_or(u32::MAX),
            bytes: content.bytes(),
            manifest_sha256: bundle::sha256(content.manifest().as_bytes()),
            previous,
            changes,
            pruned: Vec::new(),
            dry_run,
        };
        if !dry_run {
            bundle::clean_partials(&root, STALE_PARTIAL)
                .map_err(terminal("removing partial bundles"))?;
            let dir = content
                .write(&root, name)
                .map_err(terminal("writing the bundle"))?;
            report.dir = dir.display().to_string();
        }
        Ok(report)
    }

    /// Removes bundles beyond `keep`, oldest first; never `current`.
    pub async fn prune(&self, current: &str) -> Result<Vec<String>, StepError> {
        let root = self.root().await?;
        let all = bundle::list(&root).map_err(terminal("listing the bundles"))?;
        let keep = usize::try_from(self.config.keep).unwrap_or(usize::MAX);
        let excess = all.len().saturating_sub(keep);
        let mut pruned = Vec::new();
        for name in all.into_iter().take(excess) {
            if name == current {
                continue;
            }
            bundle::remove(&root, &name).map_err(terminal("removing an old bundle"))?;
            pruned.push(name);
        }
        Ok(pruned)
    }
}

/// A partial bundle untouched this long is a crashed export's: an export writes its bundle in
/// seconds, so an hour leaves any live one alone.
const STALE_PARTIAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The `config_export` workflow.
pub struct ConfigExport {
    /// What it acts on.
    pub exporter: Arc<Exporter>,
}

/// The bundle name of an export started at `at`: sorts by time, whoever started it.
pub fn bundle_name(at: DateTime<Utc>) -> String {
    format!("{}{}", bundle::PREFIX, at.format("%Y%m%dT%H%M%SZ"))
}

impl Workflow for ConfigExport {
    const KIND: &'static str = KIND;
    type Input = JobInput;
    type Output = ExportReport;
    type Undo = ();

    /// Proxmox or ZFS away for the length of a few backoffs fails the export with the reason
    /// (the metric of the last success then ages and alerts) instead of retrying all week.
    fn max_attempts(&self) -> u32 {
        8
    }

    async fn run(&self, wf: &mut Run<Self>, input: JobInput) -> Result<ExportReport, Halt> {
        let now = wf.now();
        // Named once: a replay after a crash rewrites the same bundle instead of adding one.
        let name: String = wf.step("name", async { Ok(bundle_name(now)) }).await?;
        let exporter = Arc::clone(&self.exporter);
        let mut report = wf
            .step("export", async {
                exporter.export(&name, input.dry_run).await
            })
            .await?;
        wf.note("bundle", &report.bundle);
        if !input.dry_run {
            report.pruned = wf
                .step("prune", async { exporter.prune(&name).await })
                .await?;
        }
        let run = wf.id().to_owned();
        let event = ExportCompleted {
            run,
            report: report.clone(),
            at: now,
        };
        wf.step("announce", async {
            exporter
                .publisher
                .publish(&event)
                .await
                .map_err(|e| StepError::transient(format!("publishing the export: {e}")))?;
            Ok(())
        })
        .await?;
        if !input.dry_run {
            let m = &self.exporter.metrics;
            m.last_success.set([], now.timestamp() as f64);
            m.bytes.set([], report.bytes as f64);
            m.changes.set([], report.changes.len() as f64);
        }
        Ok(report)
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }
}
