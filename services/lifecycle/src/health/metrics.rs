//! The health gauges the shipped alert rules read (`deploy/prometheus/proxflow-alerts.yml`:
//! PoolDegraded, PoolDeviceErrors, DiskFailing, DiskWearoutHigh, ScrubOverdue, HealthCheckStale).

use proxflow_runtime::ops::{GaugeFamily, Metrics};
use proxflow_schemas::health::{Finding, HealthReport, PoolStatus, ScanKind, ScanState};

use super::judge;

/// `proxflow_pool_*`, `proxflow_disk_*`, `proxflow_health_*`.
#[derive(Clone)]
pub struct HealthMetrics {
    /// `pool_healthy{pool}`: 1 online without data errors, 0 otherwise (or unreadable).
    pub pool_healthy: GaugeFamily<1>,
    /// `pool_vdev_errors{pool,vdev,kind}`: read/write/cksum counters of each vdev line.
    pub vdev_errors: GaugeFamily<3>,
    /// `disk_healthy{disk}`: 0 when SMART says FAILED.
    pub disk_healthy: GaugeFamily<1>,
    /// `disk_wearout_percent{disk}`: life left.
    pub disk_wearout: GaugeFamily<1>,
    /// `pool_last_scrub_timestamp{pool}`: when the last scrub ended (0: never).
    pub last_scrub: GaugeFamily<1>,
    /// `pool_scrub_errors{pool}`: errors of the last finished scrub.
    pub scrub_errors: GaugeFamily<1>,
    /// `health_last_check_timestamp`: when a check last completed.
    pub last_check: GaugeFamily<0>,
}

impl HealthMetrics {
    /// Registers them.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            pool_healthy: metrics.gauge_family(
                "pool_healthy",
                "1 when the ZFS pool is ONLINE with every device online and no data errors",
                ["pool"],
            ),
            vdev_errors: metrics.gauge_family(
                "pool_vdev_errors",
                "Error counters of each vdev line of zpool status (kind: read, write, cksum)",
                ["pool", "vdev", "kind"],
            ),
            disk_healthy: metrics.gauge_family(
                "disk_healthy",
                "0 when the disk's SMART health is FAILED",
                ["disk"],
            ),
            disk_wearout: metrics.gauge_family(
                "disk_wearout_percent",
                "Life left of the disk in percent (100 = new), as Proxmox reports it",
                ["disk"],
            ),
            last_scrub: metrics.gauge_family(
                "pool_last_scrub_timestamp",
                "Unix time the pool's last scrub ended (0: none on record)",
                ["pool"],
            ),
            scrub_errors: metrics.gauge_family(
                "pool_scrub_errors",
                "Errors the pool's last finished scrub found",
                ["pool"],
            ),
            last_check: metrics.gauge_family(
                "health_last_check_timestamp",
                "Unix time a disk and pool health check last completed",
                [],
            ),
        }
    }

    /// The pools' gauges from their statuses and the findings about them (unreadable pools
    /// included: they count as unhealthy).
    pub fn record_pools(&self, pools: &[String], statuses: &[PoolStatus], findings: &[Finding]) {
        for pool in pools {
            let healthy = judge::pool_healthy(findings, pool);
            self.pool_healthy
                .set([pool], if healthy { 1.0 } else { 0.0 });
        }
        for s in statuses {
            for v in &s.vdevs {
                for (kind, n) in [("read", v.read), ("write", v.write), ("cksum", v.cksum)] {
                    self.vdev_errors.set([&s.pool, &v.name, kind], n as f64);
                }
            }
            // A resilver's end is not a scrub's: the gauge keeps the last scrub it saw.
            if s.scan.kind != Some(ScanKind::Resilver) {
                match (s.scan.state, s.scan.ended_at) {
                    (ScanState::Finished, Some(at)) => {
                        self.last_scrub.set([&s.pool], at.timestamp() as f64);
                        self.scrub_errors
                            .set([&s.pool], s.scan.errors.unwrap_or(0) as f64);
                    }
                    // Never scrubbed: overdue from the start, which is the point.
                    (ScanState::None, _) => self.last_scrub.set([&s.pool], 0.0),
                    _ => {}
                }
            }
        }
    }

    /// Everything a check measured.
    pub fn record_check(&self, report: &HealthReport) {
        let pools: Vec<String> = report
            .pools
            .iter()
            .map(|p| p.pool.clone())
            .chain(report.findings.iter().filter_map(|f| f.pool.clone()))
            .collect();
        self.record_pools(&pools, &report.pools, &report.findings);
        for d in &report.disks {
            let healthy = judge::disk_healthy(d);
            self.disk_healthy
                .set([&d.devpath], if healthy { 1.0 } else { 0.0 });
            if let Some(w) = d.wearout {
                self.disk_wearout.set([&d.devpath], w as f64);
            }
        }
        self.last_check.set([], report.at.timestamp() as f64);
    }
}
