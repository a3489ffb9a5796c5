//! The quarterly restore drill, on the offsite side, never touching the replication chain: one
//! `restore_drill` workflow clones each drilled copy's newest snapshot and checks it against the
//! source (lineage, guid, RPO, every file), verifies the newest export bundle found on the copy,
//! restores one VM from it into a scratch VMID with its links down, measures RPO and RTO, destroys
//! every clone and the VM, and gives one verdict. A failed check fails the workflow — and with it
//! `proxflow drill run`'s exit code; there is no "completed with errors".

pub mod bundle;
pub mod datasets;
pub mod files;
pub mod report;
pub mod restore;

use std::sync::Arc;

use chrono::Utc;
use proxflow_pve::PveClient;
use proxflow_runtime::bus::Publisher;
use proxflow_runtime::ops::{GaugeFamily, Metrics};
use proxflow_runtime::workflow::{Halt, Run, StepError, Workflow};
use proxflow_schemas::lifecycle::{DrillCheck, DrillCompleted, DrillReport, JobInput, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::DrillConfig;
use datasets::{CLONE_PREFIX, DrillTarget, Examined, check};

/// The workflow kind of a drill.
pub const KIND: &str = "restore_drill";
/// The schedule's job name.
pub const JOB: &str = "drill";

/// `proxflow_drill_*` metrics.
#[derive(Clone)]
pub struct DrillMetrics {
    /// `drill_last_pass_timestamp`: when a drill last passed (0: never).
    pub last_pass: GaugeFamily<0>,
    /// `drill_failed_checks`: failed checks of the last drill.
    pub failed_checks: GaugeFamily<0>,
}

impl DrillMetrics {
    /// Registers them.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            last_pass: metrics.gauge_family(
                "drill_last_pass_timestamp",
                "Unix time a restore drill last passed every check (0: never since records began)",
                [],
            ),
            failed_checks: metrics.gauge_family(
                "drill_failed_checks",
                "Checks the last restore drill failed",
                [],
            ),
        }
    }
}

/// What a drill acts on.
pub struct Driller {
    /// The replication jobs drilled.
    pub targets: Vec<DrillTarget>,
    /// `[drill]`.
    pub config: DrillConfig,
    /// Where VMs are restored.
    pub pve: PveClient,
    /// `export.dataset`, when an export is configured: its copy holds the bundles.
    pub export_dataset: Option<String>,
    /// Announces.
    pub publisher: Publisher,
    /// Counts.
    pub metrics: DrillMetrics,
}

/// What a failed drill undoes (a crash or a failure between steps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DrillUndo {
    /// Destroy the clones of drill `tag`.
    Clones {
        /// The drill's clone tag.
        tag: String,
    },
    /// Destroy the restored VM.
    Vm {
        /// Its VMID.
        vmid: u32,
    },
}

/// The `restore_drill` workflow.
pub struct RestoreDrill {
    /// What it acts on.
    pub driller: Arc<Driller>,
}

/// A run id as a dataset-name part.
fn tag_of(run: &str) -> String {
    run.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Driller {
    /// Destroys every clone of drill `tag`; what is left afterwards.
    async fn sweep(&self, tag: &str) -> Vec<String> {
        let prefix = format!("{CLONE_PREFIX}{tag}-");
        let mut left = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.targets {
            for (zfs, dataset) in [(&t.target_zfs, &t.target), (&t.source_zfs, &t.source)] {
                let pool = proxflow_zfs::names::pool_of(dataset).to_owned();
                if !seen.insert((zfs.host(), pool.clone())) {
                    continue;
                }
                match zfs.clones_named(&pool, &prefix).await {
                    Ok(clones) => {
                        for c in clones {
                            if let Err(e) = zfs.destroy_clone(&c).await {
                                left.push(format!("{c}: {e}"));
                            }
                        }
                        if let Ok(still) = zfs.clones_named(&pool, &prefix).await {
                            left.extend(still.into_iter().map(|c| format!("{c}: still there")));
                        }
                    }
                    Err(e) => left.push(format!("{pool}: listing: {e}")),
                }
            }
        }
        left.sort();
        left.dedup();
        left
    }

    /// The VM of the bundle to restore.
    fn pick<'a>(&self, vms: &'a [(u32, Value)]) -> Option<&'a (u32, Value)> {
        match self.config.restore_vm {
            Some(id) => vms.iter().find(|(vmid, _)| *vmid == id),
            None => vms.iter().find(|(_, c)| {
                c.get("template")
                    .is_none_or(|t| t.as_u64() != Some(1) && t.as_str() != Some("1"))
            }),
        }
    }
}

impl Workflow for RestoreDrill {
    const KIND: &'static str = KIND;
    type Input = JobInput;
    type Output = DrillReport;
    type Undo = DrillUndo;
    // Reading a dataset's files takes minutes: an operator watches the step that runs.
    const RECORD_STARTS: bool = true;

    fn max_attempts(&self) -> u32 {
        3
    }

    async fn run(&self, wf: &mut Run<Self>, input: JobInput) -> Result<DrillReport, Halt> {
        let d = Arc::clone(&self.driller);
        let run = wf.id().to_owned();
        let tag = tag_of(&run);
        let now = wf.now();
        let mut checks: Vec<DrillCheck> = Vec::new();
        let mut report = DrillReport {
            verdict: Verdict::Pass,
            checks: Vec::new(),
            rpo_secs: None,
            rto_secs: None,
            checksum_secs: 0.0,
            clone_secs: 0.0,
            report_path: String::new(),
            dry_run: input.dry_run,
        };
        if d.targets.is_empty() {
            checks.push(check(
                "datasets",
                "-",
                false,
                "no replication job to drill ([[replication.jobs]], drill.jobs)",
                Value::Null,
            ));
        }
        // Registered first: whatever fails later, this drill's clones go.
        let sweep_tag = tag.clone();
        wf.step_undo("begin", async { Ok(()) }, move |()| DrillUndo::Clones {
            tag: sweep_tag,
        })
        .await?;
        let mut first_clone = None;
        let mut found = None;
        for (i, target) in d.targets.iter().enumerate() {
            let carries = d.export_dataset.as_deref() == Some(target.source.as_str());
            let how = datasets::Examine {
                tag: &tag,
                index: i,
                now,
                rpo: d.config.rpo,
                files_timeout: d.config.files_timeout,
                // A dry run reads the snapshot listings only: no clone.
                files: !input.dry_run,
                bundle_here: carries && !input.dry_run,
            };
            let examined: Examined = wf
                .step(&format!("examine.{i}"), async {
                    Ok(datasets::examine(target, how).await)
                })
                .await?;
            report.rpo_secs = report.rpo_secs.max(examined.age_secs);
            report.checksum_secs += examined.checksum_secs;
            report.clone_secs += examined.clone_secs;
            first_clone = first_clone.or(examined.cloned_at);
            checks.extend(examined.checks);
            if let Some(b) = examined.bundle {
                found = Some(b);
            }
        }
        let restore_wanted = d.config.restore && !input.dry_run;
        if let Some(dataset) = &d.export_dataset
            && !input.dry_run
        {
            match &found {
                Some(b) => checks.push(b.check.clone()),
                None => {
                    let carried = d.targets.iter().any(|t| &t.source == dataset);
                    let why = if carried {
                        format!(
                            "the offsite copy of export.dataset {dataset} could not be cloned (see \
                             its files check): no bundle could be read from it"
                        )
                    } else {
                        format!(
                            "export.dataset {dataset} is not the source of a drilled replication \
                             job: its offsite copy, and the bundles on it, cannot be checked"
                        )
                    };
                    checks.push(check("bundle", dataset, false, why, Value::Null));
                }
            }
        }
        let chosen = found
            .as_ref()
            .filter(|b| b.check.passed)
            .and_then(|b| d.pick(&b.vms).cloned());
        if restore_wanted && d.export_dataset.is_some() {
            match chosen {
                None if found.as_ref().is_some_and(|b| b.check.passed) => checks.push(check(
                    "restore",
                    "-",
                    false,
                    "the bundle holds no VM to restore (drill.restore_vm)",
                    Value::Null,
                )),
                None => {}
                Some((source_vmid, config)) => {
                    let pve = &d.pve;
                    let storage = d.config.scratch_storage.clone();
                    let vmid: Result<u32, String> = wf
                        .step_undo(
                            "restore.create",
                            async {
                                let params = match restore::creation_params(&config, &storage) {
                                    Ok(p) => p,
                                    Err(e) => return Ok(Err(e)),
                                };
                                let vmid =
                                    match restore::free_vmid(pve, d.config.scratch_vmids).await {
                                        Ok(v) => v,
                                        Err(e) => return Ok(Err(e)),
                                    };
                                let created = async {
                                    let upid = pve.create_vm(pve.node(), vmid, &params).await?;
                                    pve.wait_task(&upid, Some(d.config.agent_timeout)).await
                                };
                                Ok(created
                                    .await
                                    .map(|_| vmid)
                                    .map_err(|e| format!("creating VM {vmid}: {e}")))
                            },
                            |r: &Result<u32, String>| DrillUndo::Vm {
                                vmid: r.as_ref().copied().unwrap_or(0),
                            },
                        )
                        .await?;
                    match vmid {
                        Err(e) => checks.push(check(
                            "restore",
                            &format!("VM {source_vmid}"),
                            false,
                            e,
                            Value::Null,
                        )),
                        Ok(vmid) => {
                            let timeout = d.config.agent_timeout;
                            let booted: Result<f64, String> = wf
                                .step("restore.boot", async {
                                    Ok(restore::boot(pve, vmid, timeout).await)
                                })
                                .await?;
                            let ended = Utc::now();
                            match booted {
                                Ok(secs) => {
                                    let rto = first_clone
                                        .map(|at| (ended - at).num_milliseconds() as f64 / 1e3);
                                    report.rto_secs = rto;
                                    checks.push(check(
                                        "restore",
                                        &format!("VM {source_vmid} as {vmid}"),
                                        true,
                                        format!("created with every NIC link_down=1, started, agent answered after {secs:.1} s"),
                                        json!({"boot_secs": secs, "rto_secs": rto}),
                                    ));
                                }
                                Err(e) => checks.push(check(
                                    "restore",
                                    &format!("VM {source_vmid} as {vmid}"),
                                    false,
                                    e,
                                    Value::Null,
                                )),
                            }
                            let destroyed: Result<(), String> = wf
                                .step("restore.destroy", async {
                                    Ok(restore::destroy(pve, vmid, timeout).await)
                                })
                                .await?;
                            if let Err(e) = destroyed {
                                checks.push(check(
                                    "cleanup",
                                    &format!("VM {vmid}"),
                                    false,
                                    e,
                                    Value::Null,
                                ));
                            }
                        }
                    }
                }
            }
        }
        let left: Vec<String> = wf
            .step("cleanup", async { Ok(d.sweep(&tag).await) })
            .await?;
        checks.push(check(
            "cleanup",
            &format!("{CLONE_PREFIX}{tag}-*"),
            left.is_empty(),
            if left.is_empty() {
                "no clone left behind".to_owned()
            } else {
                format!("left behind: {}", left.join("; "))
            },
            Value::Null,
        ));
        report.checks = checks;
        if report.checks.iter().any(|c| !c.passed) {
            report.verdict = Verdict::Fail;
        }
        let rendered = report::render(&run, now, &report);
        let dir = d.config.report_dir.clone();
        let path: String = wf
            .step("report", async {
                if input.dry_run {
                    return Ok(String::new());
                }
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StepError::terminal(format!("drill.report_dir {}: {e}", dir.display()))
                })?;
                let path = dir.join(format!("{run}.md"));
                std::fs::write(&path, &rendered)
                    .map_err(|e| StepError::terminal(format!("writing {}: {e}", path.display())))?;
                Ok(path.display().to_string())
            })
            .await?;
        report.report_path = path;
        wf.note("report", &report);
        let event = DrillCompleted {
            run: run.clone(),
            report: report.clone(),
            at: now,
        };
        wf.step("announce", async {
            d.publisher
                .publish(&event)
                .await
                .map_err(|e| StepError::transient(format!("publishing the drill: {e}")))?;
            Ok(())
        })
        .await?;
        let failed: Vec<String> = report
            .failed()
            .map(|c| format!("{} on {}: {}", c.check, c.target, c.detail))
            .collect();
        if !input.dry_run {
            d.metrics.failed_checks.set([], failed.len() as f64);
            if failed.is_empty() {
                d.metrics.last_pass.set([], Utc::now().timestamp() as f64);
            }
        }
        if !failed.is_empty() {
            return Err(Halt::Step(StepError::terminal(format!(
                "drill failed {} check(s): {}",
                failed.len(),
                failed.join(" | ")
            ))));
        }
        Ok(report)
    }

    async fn undo(&self, undo: DrillUndo) -> Result<(), StepError> {
        match undo {
            DrillUndo::Clones { tag } => {
                let left = self.driller.sweep(&tag).await;
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(StepError::transient(format!(
                        "clones left: {}",
                        left.join("; ")
                    )))
                }
            }
            DrillUndo::Vm { vmid: 0 } => Ok(()),
            DrillUndo::Vm { vmid } => {
                restore::destroy(&self.driller.pve, vmid, self.driller.config.agent_timeout)
                    .await
                    .map_err(StepError::transient)
            }
        }
    }
}
