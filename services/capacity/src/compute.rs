//! From what Proxmox reports to the figures the detectors watch. Pure: an [`Inventory`] in, a
//! [`CapacitySample`] and its per-metric observations out, so the arithmetic is tested without a
//! host and one poll of a 10,000-VM platform is benchmarked without the network.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use proxflow_platform::ClusterConfig;
use proxflow_pve::types::{ClusterResource, NodeStatus, StorageStatus, VmSummary, ZfsPool};
use proxflow_schemas::capacity::{
    CapacitySample, ClusterSample, HostSample, MetricId, Scope, StorageUse,
};

use crate::config::CapacityConfig;

/// Everything one poll reads from Proxmox.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The node's name.
    pub node: String,
    /// `GET /nodes/{node}/status`: physical memory, logical CPUs, CPU busy.
    pub status: NodeStatus,
    /// `GET /cluster/resources?type=vm`: every guest's CPU, memory, tags and state.
    pub guests: Vec<ClusterResource>,
    /// `GET /nodes/{node}/qemu`: only for the balloon minimums, which cluster resources lack.
    pub vms: Vec<VmSummary>,
    /// `GET /nodes/{node}/storage`.
    pub storages: Vec<StorageStatus>,
    /// `GET /nodes/{node}/disks/zfs`.
    pub zfs_pools: Vec<ZfsPool>,
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole * 100.0
    } else {
        0.0
    }
}

fn has_tag(tags: Option<&str>, tag: &str) -> bool {
    tags.is_some_and(|t| t.split([';', ',', ' ']).any(|x| x == tag))
}

/// The sample of one poll at `at`.
pub fn evaluate(inv: &Inventory, config: &CapacityConfig, at: DateTime<Utc>) -> CapacitySample {
    let balloon: HashMap<u32, u64> = inv
        .vms
        .iter()
        .filter_map(|v| v.balloon_min.map(|b| (v.vmid, b)))
        .collect();
    // Guests of this node that hold host resources: running, not templates.
    let running = || {
        inv.guests.iter().filter(|g| {
            g.resource_type == "qemu"
                && !g.template
                && g.status.as_deref() == Some("running")
                && g.node.as_deref().is_none_or(|n| n == inv.node)
        })
    };
    let (mut committed, mut floor, mut vcpus, mut count) = (0u64, 0u64, 0u32, 0u32);
    for g in running() {
        committed = committed.saturating_add(g.maxmem);
        let min = g
            .vmid
            .and_then(|id| u32::try_from(id).ok())
            .and_then(|id| balloon.get(&id).copied())
            .unwrap_or(g.maxmem);
        floor = floor.saturating_add(min.min(g.maxmem));
        vcpus = vcpus.saturating_add(g.maxcpu.round() as u32);
        count += 1;
    }
    let total = inv.status.memory.total;
    let logical = inv.status.cpuinfo.cpus;
    let ratio = |part: u64| {
        if total > 0 {
            part as f64 / total as f64
        } else {
            0.0
        }
    };
    let host = HostSample {
        node: inv.node.clone(),
        cpu_percent: inv.status.cpu * 100.0,
        memory_percent: percent(inv.status.memory.used as f64, total as f64),
        memory_total: total,
        memory_used: inv.status.memory.used,
        memory_committed: committed,
        memory_floor: floor,
        memory_commitment_ratio: ratio(committed),
        memory_floor_ratio: ratio(floor),
        logical_cpus: logical,
        vcpus_committed: vcpus,
        vcpu_ratio: if logical > 0 {
            f64::from(vcpus) / f64::from(logical)
        } else {
            0.0
        },
        storages: inv
            .storages
            .iter()
            .filter(|s| s.enabled && s.active && s.total > 0)
            .filter_map(|s| {
                s.storage.as_ref().map(|name| StorageUse {
                    name: name.clone(),
                    used: s.used,
                    total: s.total,
                    used_percent: percent(s.used as f64, s.total as f64),
                })
            })
            .collect(),
        zfs_pools: inv
            .zfs_pools
            .iter()
            .map(|p| StorageUse {
                name: p.name.clone(),
                used: p.alloc,
                total: p.size,
                used_percent: percent(p.alloc as f64, p.size as f64),
            })
            .collect(),
        running_vms: count,
    };
    let clusters = config
        .clusters
        .iter()
        .map(|(name, c)| cluster_sample(inv, name, c))
        .collect();
    CapacitySample { at, host, clusters }
}

fn cluster_sample(inv: &Inventory, name: &str, cluster: &ClusterConfig) -> ClusterSample {
    let members: Vec<&ClusterResource> = inv
        .guests
        .iter()
        .filter(|g| {
            g.resource_type == "qemu" && !g.template && has_tag(g.tags.as_deref(), &cluster.tag)
        })
        .collect();
    let mut nodes: Vec<String> = members
        .iter()
        .map(|g| {
            g.name
                .clone()
                .unwrap_or_else(|| format!("vm-{}", g.vmid.unwrap_or_default()))
        })
        .collect();
    nodes.sort();
    let (mut cpu_sum, mut cpu_max, mut mem_sum, mut mem_max, mut running) =
        (0.0, 0.0_f64, 0.0, 0.0_f64, 0u32);
    for g in members
        .iter()
        .filter(|g| g.status.as_deref() == Some("running"))
    {
        let cpu = g.cpu * 100.0;
        let mem = percent(g.mem as f64, g.maxmem as f64);
        cpu_sum += cpu;
        mem_sum += mem;
        cpu_max = cpu_max.max(cpu);
        mem_max = mem_max.max(mem);
        running += 1;
    }
    let avg = |sum: f64| {
        if running > 0 {
            sum / f64::from(running)
        } else {
            0.0
        }
    };
    ClusterSample {
        name: name.to_string(),
        tag: cluster.tag.clone(),
        nodes,
        running,
        cpu_avg: avg(cpu_sum),
        cpu_max,
        memory_avg: avg(mem_sum),
        memory_max: mem_max,
    }
}

/// Every metric of a sample with the kind of rule that watches it.
pub fn observations(sample: &CapacitySample) -> Vec<(MetricId, &'static str, f64)> {
    let h = &sample.host;
    let node = h.node.as_str();
    let mut out = vec![
        (
            MetricId::new(Scope::Host, node, "cpu"),
            "host_cpu",
            h.cpu_percent,
        ),
        (
            MetricId::new(Scope::Host, node, "memory"),
            "host_memory",
            h.memory_percent,
        ),
        (
            MetricId::new(Scope::Host, node, "memory_commitment"),
            "memory_commitment",
            h.memory_commitment_ratio,
        ),
        (
            MetricId::new(Scope::Host, node, "vcpu_ratio"),
            "vcpu_ratio",
            h.vcpu_ratio,
        ),
    ];
    for s in &h.storages {
        out.push((
            MetricId::new(Scope::Storage, &s.name, "used"),
            "storage",
            s.used_percent,
        ));
    }
    for p in &h.zfs_pools {
        out.push((
            MetricId::new(Scope::ZfsPool, &p.name, "used"),
            "zfs_pool",
            p.used_percent,
        ));
    }
    for c in &sample.clusters {
        // A cluster with no running node has no utilisation to speak of: not observed, so it can
        // neither fire nor recover on a made-up zero.
        if c.running == 0 {
            continue;
        }
        for (metric, kind, value) in [
            ("cpu_avg", "cluster_cpu_avg", c.cpu_avg),
            ("cpu_max", "cluster_cpu_max", c.cpu_max),
            ("memory_avg", "cluster_memory_avg", c.memory_avg),
            ("memory_max", "cluster_memory_max", c.memory_max),
        ] {
            out.push((MetricId::new(Scope::Cluster, &c.name, metric), kind, value));
        }
    }
    out
}
