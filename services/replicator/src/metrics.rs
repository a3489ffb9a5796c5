//! The replicator's Prometheus metrics: last success, lag, bytes, failures per job.

use proxflow_runtime::ops::{CounterFamily, GaugeFamily, Metrics};

/// The replicator's Prometheus metrics, per `replication_job` (not `job`: Prometheus sets that
/// label to the scrape job and would rename this one).
#[derive(Debug, Clone)]
pub(crate) struct ReplicationMetrics {
    pub(crate) last_success: GaugeFamily<1>,
    pub(crate) lag: GaugeFamily<1>,
    pub(crate) bytes: CounterFamily<1>,
    pub(crate) failures: CounterFamily<2>,
}

impl ReplicationMetrics {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        Self {
            last_success: metrics.gauge_family(
                "replication_last_success_timestamp_seconds",
                "When each job last completed (Unix time)",
                ["replication_job"],
            ),
            lag: metrics.gauge_family(
                "replication_lag_seconds",
                "Age of the newest snapshot the target holds, per job",
                ["replication_job"],
            ),
            bytes: metrics.counter_family(
                "replication_bytes",
                "Stream bytes replicated, per job",
                ["replication_job"],
            ),
            failures: metrics.counter_family(
                "replication_failures",
                "Failed replication runs, per job and reason",
                ["replication_job", "reason"],
            ),
        }
    }
}
