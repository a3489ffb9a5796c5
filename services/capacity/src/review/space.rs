//! Memory commitment against the target, dataset growth and snapshot space by naming policy,
//! pure: from the node's VM list and memory, and the `zfs get` of the reviewed dataset trees.

use std::collections::{BTreeMap, HashMap};

use proxflow_pve::types::VmSummary;
use proxflow_runtime::schedule::Cadence;
use proxflow_runtime::snapshot_name::{self, NameKind};
use proxflow_schemas::capacity_review::{
    DatasetGrowth, MemoryCommitment, PolicySpace, SnapshotPolicy, SnapshotSpace,
};
use proxflow_zfs::space::{ObjectType, Space};

use super::series::Window;

/// Bytes per GiB.
const GIB: f64 = 1_073_741_824.0;

/// Σ max memory of the node's VMs (running, and all) over its physical memory, and the headroom
/// under `target`.
pub fn commitment(vms: &[VmSummary], physical: u64, target: f64) -> MemoryCommitment {
    let defined = || vms.iter().filter(|v| !v.template);
    let (mut running, mut committed) = (0u32, 0u64);
    for v in defined().filter(|v| v.status == "running") {
        running += 1;
        committed = committed.saturating_add(v.maxmem);
    }
    let all: u64 = defined().map(|v| v.maxmem).sum();
    let ratio = |bytes: u64| {
        if physical > 0 {
            bytes as f64 / physical as f64
        } else {
            0.0
        }
    };
    let headroom = (target * physical as f64 - committed as f64).round() as i64;
    MemoryCommitment {
        physical_bytes: physical,
        committed_bytes: committed,
        running_vms: running,
        committed_all_bytes: all,
        vms: u32::try_from(defined().count()).unwrap_or(u32::MAX),
        ratio: ratio(committed),
        ratio_all: ratio(all),
        target,
        headroom_bytes: headroom,
        headroom_gib: headroom as f64 / GIB,
    }
}

/// The policy a snapshot's name says it belongs to.
pub fn policy_of(prefix: &str, name: &str) -> SnapshotPolicy {
    match snapshot_name::parse(prefix, name).map(|p| p.kind) {
        Some(NameKind::Scheduled(Cadence::Daily)) => SnapshotPolicy::Daily,
        Some(NameKind::Scheduled(Cadence::Weekly)) => SnapshotPolicy::Weekly,
        Some(NameKind::Scheduled(Cadence::Monthly)) => SnapshotPolicy::Monthly,
        Some(NameKind::Scheduled(Cadence::Quarterly)) => SnapshotPolicy::Quarterly,
        Some(NameKind::PreChange) => SnapshotPolicy::Prechange,
        None => SnapshotPolicy::Other,
    }
}

/// Snapshot space of `objects` by the policy of each snapshot's name.
pub fn snapshot_space(objects: &[Space], prefix: &str) -> SnapshotSpace {
    let mut by: BTreeMap<SnapshotPolicy, (u64, u64)> = BTreeMap::new();
    let mut in_snapshots = 0u64;
    for o in objects {
        if let Some((_, name)) = o.snapshot_of() {
            let e = by.entry(policy_of(prefix, name)).or_default();
            e.0 += 1;
            e.1 = e.1.saturating_add(o.used);
            in_snapshots = in_snapshots.saturating_add(o.used);
        }
    }
    let usedbysnapshots: u64 = objects
        .iter()
        .filter(|o| o.kind != ObjectType::Snapshot)
        .map(|o| o.usedbysnapshots)
        .sum();
    SnapshotSpace {
        by_policy: by
            .into_iter()
            .map(|(policy, (snapshots, used_bytes))| PolicySpace {
                policy,
                snapshots,
                used_bytes,
            })
            .collect(),
        usedbysnapshots_bytes: usedbysnapshots,
        shared_bytes: usedbysnapshots.saturating_sub(in_snapshots),
    }
}

/// Each dataset's space and its growth since the oldest of its snapshots taken in `window` (ZFS
/// keeps no history of `referenced`; a snapshot records it at its creation), most growth first
/// (datasets without such a snapshot last, by name), at most `top`.
pub fn dataset_growth(objects: &[Space], window: &Window, top: usize) -> Vec<DatasetGrowth> {
    let mut baseline: HashMap<&str, &Space> = HashMap::new();
    for o in objects {
        let Some((dataset, _)) = o.snapshot_of() else {
            continue;
        };
        if !window.contains(o.creation) {
            continue;
        }
        let older = baseline
            .get(dataset)
            .is_none_or(|b| o.creation < b.creation);
        if older {
            baseline.insert(dataset, o);
        }
    }
    let mut out: Vec<DatasetGrowth> = objects
        .iter()
        .filter(|o| o.kind != ObjectType::Snapshot)
        .map(|o| {
            let base = baseline.get(o.name.as_str());
            DatasetGrowth {
                dataset: o.name.clone(),
                used_bytes: o.used,
                referenced_bytes: o.referenced,
                snapshots_bytes: o.usedbysnapshots,
                growth_bytes: base.map(|b| o.referenced as i64 - b.referenced as i64),
                baseline: base
                    .and_then(|b| b.snapshot_of())
                    .map(|(_, n)| n.to_owned()),
                baseline_at: base.map(|b| b.creation),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.growth_bytes
            .unwrap_or(i64::MIN)
            .cmp(&a.growth_bytes.unwrap_or(i64::MIN))
            .then_with(|| a.dataset.cmp(&b.dataset))
    });
    out.truncate(top);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::{DateTime, Utc};

    use super::*;

    fn vm(vmid: u32, status: &str, gib: u64, template: bool) -> VmSummary {
        serde_json::from_value(serde_json::json!({
            "vmid": vmid, "status": status, "maxmem": gib << 30, "template": u8::from(template),
        }))
        .unwrap()
    }

    #[test]
    fn commitment_counts_running_vms_against_the_target() {
        // 64 GiB physical; running 32 + 48 GiB = 80 GiB (1.25:1); a stopped 16 GiB VM makes
        // 96 GiB (1.5:1) if started; the template does not count. Headroom under 1.5:1:
        // 96 − 80 = 16 GiB.
        let vms = [
            vm(100, "running", 32, false),
            vm(101, "running", 48, false),
            vm(102, "stopped", 16, false),
            vm(9000, "stopped", 8, true),
        ];
        let c = commitment(&vms, 64 << 30, 1.5);
        assert_eq!(c.committed_bytes, 80 << 30);
        assert_eq!((c.running_vms, c.vms), (2, 3));
        assert!((c.ratio - 1.25).abs() < 1e-12);
        assert!((c.ratio_all - 1.5).abs() < 1e-12);
        assert_eq!(c.headroom_bytes, 16 << 30);
        assert!((c.headroom_gib - 16.0).abs() < 1e-12);
        // Over the target: negative headroom.
        let c = commitment(&vms, 48 << 30, 1.5);
        assert!((c.headroom_gib - (72.0 - 80.0)).abs() < 1e-12);
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn obj(
        name: &str,
        kind: ObjectType,
        used: u64,
        referenced: u64,
        ubs: u64,
        created: &str,
    ) -> Space {
        Space {
            name: name.into(),
            kind,
            used,
            referenced,
            usedbysnapshots: ubs,
            creation: at(created),
        }
    }

    #[test]
    fn snapshots_are_grouped_by_their_naming_policy() {
        use ObjectType::*;
        let objects = [
            obj("tank/a", Filesystem, 900, 500, 400, "2026-01-01T00:00:00Z"),
            obj(
                "tank/a@pf-daily-20261001T030000Z",
                Snapshot,
                100,
                300,
                0,
                "2026-10-01T03:00:00Z",
            ),
            obj(
                "tank/a@pf-daily-20261002T030000Z",
                Snapshot,
                50,
                350,
                0,
                "2026-10-02T03:00:00Z",
            ),
            obj(
                "tank/a@pf-weekly-20261004T030000Z",
                Snapshot,
                20,
                360,
                0,
                "2026-10-04T03:00:00Z",
            ),
            obj(
                "tank/a@pf-pre-patch-1-20261005T101500Z",
                Snapshot,
                30,
                400,
                0,
                "2026-10-05T10:15:00Z",
            ),
            obj(
                "tank/a@manual",
                Snapshot,
                40,
                420,
                0,
                "2026-09-01T00:00:00Z",
            ),
        ];
        let s = snapshot_space(&objects, "pf-");
        let got: Vec<_> = s
            .by_policy
            .iter()
            .map(|p| (p.policy, p.snapshots, p.used_bytes))
            .collect();
        assert_eq!(
            got,
            [
                (SnapshotPolicy::Daily, 2, 150),
                (SnapshotPolicy::Weekly, 1, 20),
                (SnapshotPolicy::Prechange, 1, 30),
                (SnapshotPolicy::Other, 1, 40),
            ]
        );
        // usedbysnapshots 400, in single snapshots 240: 160 shared.
        assert_eq!((s.usedbysnapshots_bytes, s.shared_bytes), (400, 160));
        // Growth from the oldest snapshot inside the window (the daily of 10-01, 300 referenced;
        // the manual one of September is outside): 500 − 300 = 200.
        let window = Window {
            from: at("2026-10-01T00:00:00Z"),
            to: at("2026-10-31T00:00:00Z"),
        };
        let mut objects = objects.to_vec();
        objects.push(obj("tank/b", Volume, 10, 10, 0, "2026-01-01T00:00:00Z"));
        let g = dataset_growth(&objects, &window, 10);
        assert_eq!(g[0].dataset, "tank/a");
        assert_eq!(g[0].growth_bytes, Some(200));
        assert_eq!(g[0].baseline.as_deref(), Some("pf-daily-20261001T030000Z"));
        assert_eq!(g[1].growth_bytes, None, "no snapshot, no growth");
        assert_eq!(dataset_growth(&objects, &window, 1).len(), 1);
    }
}
