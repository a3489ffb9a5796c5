//! Disk and pool health: the `disk_health` workflow (the daily check, and the quarterly audit that
//! also keeps every disk's full SMART report and the pools' properties) and the `pool_scrub`
//! workflow ([`scrub`]). A check reads the node's disks from Proxmox (`disks/list`, `disks/smart`)
//! and `zpool status -v` of each pool, judges them ([`judge`]), announces the report on
//! `pf.evt.health.checked` and, when something is wrong, `pf.evt.health.degraded` naming the
//! pool, vdev or disk, and sets the gauges the shipped alerts read ([`metrics`]).
//!
//! A check never fails for what it finds: a pool it cannot read is a finding, so the report and
//! the alerts still come. It fails only when it cannot announce (the bus away past its attempts),
//! and then `proxflow_health_last_check_timestamp` ages into `HealthCheckStale`.

pub mod config;
pub mod judge;
pub mod metrics;
pub mod scrub;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proxflow_pve::PveClient;
use proxflow_runtime::bus::Publisher;
use proxflow_runtime::workflow::{Halt, Run, StepError, Workflow};
use proxflow_schemas::health::{
    CheckMode, DiskStatus, Finding, HealthDegraded, HealthInput, HealthReport, PoolProperty,
    PoolStatus,
};
use proxflow_zfs::Zfs;

pub use config::HealthConfig;
pub use metrics::HealthMetrics;
pub use proxflow_schemas::health::{DISK_HEALTH_KIND as KIND, POOL_SCRUB_KIND};

/// What the health workflows act on.
pub struct HealthChecker {
    /// `[health]`.
    pub config: HealthConfig,
    /// The node's disks.
    pub pve: PveClient,
    /// `zpool` on the host.
    pub zfs: Zfs,
    /// Announces.
    pub publisher: Publisher,
    /// The gauges.
    pub metrics: HealthMetrics,
}

impl HealthChecker {
    /// Every configured pool's status; a pool that cannot be read is a finding instead.
    pub async fn pools(&self, pools: &[String]) -> (Vec<PoolStatus>, Vec<Finding>) {
        let tz = self.config.tz();
        let mut statuses = Vec::new();
        let mut findings = Vec::new();
        for pool in pools {
            match self.zfs.pool_health(pool, &tz).await {
                Ok(s) => statuses.push(s),
                Err(e) => findings.push(judge::unreadable_pool(pool, &e.to_string())),
            }
        }
        (statuses, findings)
    }

    /// The node's disks with their SMART verdicts (and, for an audit, full reports).
    async fn disks(&self, audit: bool) -> Result<Vec<DiskStatus>, String> {
        let node = self.pve.node();
        let listed = self
            .pve
            .disks(node)
            .await
            .map_err(|e| format!("GET /nodes/{node}/disks/list: {e}"))?;
        let mut disks = Vec::new();
        for d in listed {
            // The list's verdict can be stale or skipped; the disk's own report is asked too.
            let smart = self.pve.disk_smart(node, &d.devpath).await;
            let (smart_health, full) = match smart {
                Ok(r) => (
                    Some(r.health.clone()),
                    audit.then(|| serde_json::to_value(&r).unwrap_or_default()),
                ),
                Err(e) => {
                    tracing::warn!(disk = %d.devpath, error = %e, "SMART report unreadable");
                    (None, None)
                }
            };
            disks.push(DiskStatus {
                health: d.health.clone().unwrap_or_else(|| "UNKNOWN".to_owned()),
                devpath: d.devpath,
                model: d.model,
                serial: d.serial,
                smart_health,
                wearout: d.wearout,
                smart: full,
            });
        }
        Ok(disks)
    }

    /// One check, judged.
    pub async fn check(&self, run: &str, mode: CheckMode, at: DateTime<Utc>) -> HealthReport {
        let audit = mode == CheckMode::Audit;
        let (pools, mut findings) = self.pools(&self.config.pools).await;
        for p in &pools {
            findings.extend(judge::pool(p));
        }
        let disks = match self.disks(audit).await {
            Ok(d) => d,
            Err(e) => {
                findings.push(judge::unreadable_disks(&e));
                Vec::new()
            }
        };
        for d in &disks {
            findings.extend(judge::disk(d, self.config.wearout_threshold));
        }
        let mut pool_properties = BTreeMap::new();
        if audit {
            for p in &pools {
                match self.zfs.pool_properties(&p.pool).await {
                    Ok(props) => {
                        let props = props
                            .into_iter()
                            .map(|(property, value, source)| PoolProperty {
                                property,
                                value,
                                source,
                            })
                            .collect();
                        pool_properties.insert(p.pool.clone(), props);
                    }
                    Err(e) => {
                        tracing::warn!(pool = %p.pool, error = %e, "pool properties unreadable");
                    }
                }
            }
        }
        HealthReport {
            run: run.to_owned(),
            mode,
            at,
            healthy: findings.is_empty(),
            findings,
            pools,
            disks,
            pool_properties,
        }
    }

    /// Publishes `pf.evt.health.degraded` when there are findings.
    pub async fn announce_degraded(
        &self,
        run: &str,
        at: DateTime<Utc>,
        findings: &[Finding],
    ) -> Result<(), StepError> {
        if findings.is_empty() {
            return Ok(());
        }
        let event = HealthDegraded {
            run: run.to_owned(),
            at,
            findings: findings.to_vec(),
        };
        self.publisher
            .publish(&event)
            .await
            .map_err(|e| StepError::transient(format!("publishing the findings: {e}")))?;
        Ok(())
    }
}

/// The `disk_health` workflow.
pub struct DiskHealth {
    /// What it acts on.
    pub checker: Arc<HealthChecker>,
}

impl Workflow for DiskHealth {
    const KIND: &'static str = KIND;
    type Input = HealthInput;
    type Output = HealthReport;
    type Undo = ();

    fn max_attempts(&self) -> u32 {
        5
    }

    async fn run(&self, wf: &mut Run<Self>, input: HealthInput) -> Result<HealthReport, Halt> {
        let c = Arc::clone(&self.checker);
        let run = wf.id().to_owned();
        let now = wf.now();
        // One step: a replay announces what was read, not a second look.
        let report = wf
            .step("check", async { Ok(c.check(&run, input.mode, now).await) })
            .await?;
        wf.note("findings", &report.findings);
        wf.step("announce", async {
            c.publisher
                .publish(&report)
                .await
                .map_err(|e| StepError::transient(format!("publishing the report: {e}")))?;
            c.announce_degraded(&report.run, report.at, &report.findings)
                .await
        })
        .await?;
        c.metrics.record_check(&report);
        Ok(report)
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }
}
