//! The capacity gauges on `/metrics` (`proxflow_capacity_*`), set from each sample.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use proxflow_runtime::ops::{CounterFamily, GaugeFamily, Metrics};
use proxflow_schemas::capacity::{CapacitySample, MetricId};

/// Handles on every capacity metric.
#[derive(Clone, Debug)]
pub struct Gauges {
    host: GaugeFamily<2>,
    storage: GaugeFamily<2>,
    zfs_pool: GaugeFamily<2>,
    cluster: GaugeFamily<2>,
    exceeded: GaugeFamily<1>,
    detector_bytes: Gauge<f64, AtomicU64>,
    polls: CounterFamily<1>,
}

impl Gauges {
    /// Registers the families on `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            host: metrics.gauge_family(
                "capacity_host",
                "Node figures: cpu_percent, memory_percent, memory_commitment_ratio, memory_floor_ratio, vcpu_ratio, running_vms",
                ["node", "figure"],
            ),
            storage: metrics.gauge_family(
                "capacity_storage_used_percent",
                "Proxmox storage use, percent",
                ["node", "storage"],
            ),
            zfs_pool: metrics.gauge_family(
                "capacity_zfs_pool_used_percent",
                "ZFS pool allocation, percent",
                ["node", "pool"],
            ),
            cluster: metrics.gauge_family(
                "capacity_cluster",
                "k3s cluster figures: cpu_avg, cpu_max, memory_avg, memory_max (percent), nodes, running",
                ["cluster", "figure"],
            ),
            exceeded: metrics.gauge_family(
                "capacity_exceeded",
                "1 while a metric is in a sustained-threshold episode",
                ["metric"],
            ),
            detector_bytes: {
                let gauge = Gauge::default();
                metrics.register(
                    "capacity_detector_memory_bytes",
                    "Memory the sustained-threshold detectors hold",
                    gauge.clone(),
                );
                gauge
            },
            polls: metrics.counter_family(
                "capacity_polls",
                "Capacity polls by result (ok, failed)",
                ["result"],
            ),
        }
    }

    /// Counts a poll.
    pub fn poll(&self, result: &str) {
        self.polls.inc([result]);
    }

    /// Sets every gauge of a sample.
    pub fn set_sample(&self, s: &CapacitySample) {
        let h = &s.host;
        let node = h.node.as_str();
        for (figure, value) in [
            ("cpu_percent", h.cpu_percent),
            ("memory_percent", h.memory_percent),
            ("memory_commitment_ratio", h.memory_commitment_ratio),
            ("memory_floor_ratio", h.memory_floor_ratio),
            ("vcpu_ratio", h.vcpu_ratio),
            ("running_vms", f64::from(h.running_vms)),
        ] {
            self.host.set([node, figure], value);
        }
        for st in &h.storages {
            self.storage.set([node, &st.name], st.used_percent);
        }
        for p in &h.zfs_pools {
            self.zfs_pool.set([node, &p.name], p.used_percent);
        }
        for c in &s.clusters {
            for (figure, value) in [
                ("cpu_avg", c.cpu_avg),
                ("cpu_max", c.cpu_max),
                ("memory_avg", c.memory_avg),
                ("memory_max", c.memory_max),
                ("nodes", c.nodes.len() as f64),
                ("running", f64::from(c.running)),
            ] {
                self.cluster.set([&c.name, figure], value);
            }
        }
    }

    /// Marks a metric exceeded or not.
    pub fn exceeded(&self, id: &MetricId, on: bool) {
        self.exceeded
            .set([&id.to_string()], if on { 1.0 } else { 0.0 });
    }

    /// The detectors' memory.
    pub fn detector_memory(&self, bytes: usize) {
        self.detector_bytes.set(bytes as f64);
    }
}
