//! The snapshotter's Prometheus metrics: validity gauges, snapshots taken and pruned, failures.

use proxflow_runtime::ops::{CounterFamily, GaugeFamily, Metrics};

/// The snapshotter's Prometheus metrics.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotMetrics {
    pub(crate) newest_age: GaugeFamily<2>,
    pub(crate) expected: GaugeFamily<2>,
    pub(crate) missing: GaugeFamily<2>,
    pub(crate) taken: CounterFamily<2>,
    pub(crate) pruned: CounterFamily<1>,
    pub(crate) failures: CounterFamily<2>,
}

impl SnapshotMetrics {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        Self {
            newest_age: metrics.gauge_family(
                "snapshot_newest_age_seconds",
                "Age of the newest scheduled snapshot, per policy and target",
                ["policy", "target"],
            ),
            expected: metrics.gauge_family(
                "snapshot_expected",
                "Scheduled snapshots the policy says should exist now",
                ["policy", "target"],
            ),
            missing: metrics.gauge_family(
                "snapshot_missing",
                "Expected scheduled snapshots that do not exist",
                ["policy", "target"],
            ),
            taken: metrics.counter_family(
                "snapshots_taken",
                "Snapshots taken, per policy (or prechange) and kind",
                ["policy", "kind"],
            ),
            pruned: metrics.counter_family(
                "snapshots_pruned",
                "Snapshots destroyed by retention, per policy",
                ["policy"],
            ),
            failures: metrics.counter_family(
                "snapshot_failures",
                "Failed snapshot operations, per policy and operation",
                ["policy", "operation"],
            ),
        }
    }

    pub(crate) fn failed(&self, policy: &str, operation: &str) {
        self.failures.inc([policy, operation]);
    }
}
