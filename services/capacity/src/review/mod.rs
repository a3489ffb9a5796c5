//! The monthly capacity review: per metric the trend over the window and the days until its
//! threshold, memory commitment against the target, the VMs and datasets that grew most, and
//! snapshot space by naming policy.
//!
//! The computation is pure and tested with hand-computed numbers ([`forecast`], [`series`],
//! [`space`], [`render`]); [`collect`] is the only part that reads (the bus, Proxmox, zfs) and
//! [`write`] the only one that writes (the report files). The
//! `capacity_review` workflow ([`crate::flow`]) and `proxflow capacity review` both call
//! [`collect::collect`] and [`render::markdown`].

pub mod collect;
pub mod forecast;
pub mod render;
pub mod series;
pub mod space;
pub mod write;

use proxflow_pve::types::VmSummary;
use proxflow_schemas::capacity_review::{CapacityReview, VmGrowth};
use proxflow_zfs::space::Space;

pub use collect::{ReviewError, Sources, collect};
pub use series::{Trends, Window};

/// Everything a review is computed from, once read.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The window.
    pub window: Window,
    /// Metric series from the samples and the node's RRD.
    pub trends: Trends,
    /// The node's VMs now.
    pub vms: Vec<VmSummary>,
    /// Physical memory, bytes.
    pub physical_memory: u64,
    /// Each VM's growth from its RRD.
    pub vm_growth: Vec<VmGrowth>,
    /// The reviewed dataset trees (`None`: no dataset configured).
    pub space: Option<Vec<Space>>,
    /// The snapshot name prefix (`snapshot.prefix`).
    pub snapshot_prefix: String,
    /// What was approximated or could not be read, in words.
    pub notes: Vec<String>,
}

/// The review of `parts` judged by `config`.
pub fn assemble(parts: Parts, config: &crate::CapacityConfig) -> CapacityReview {
    let review = &config.review;
    let mut notes = parts.notes;
    notes.push(
        "Capacity samples carry no per-VM figures: VM growth is the trend of each VM's Proxmox RRD \
         (month, AVERAGE, one point per 12 hours) over the window; QEMU reports disk use as 0 \
         without the guest agent, so disk growth is 0 there."
            .into(),
    );
    let (top_datasets, snapshot_space) = match &parts.space {
        Some(objects) => {
            notes.push(
                "Dataset growth is approximated: ZFS keeps no history, so it is `referenced` now \
                 less `referenced` of the dataset's oldest snapshot inside the window (none without \
                 such a snapshot). Pool-level growth is in the zfs_pool trends."
                    .into(),
            );
            (
                space::dataset_growth(objects, &parts.window, review.top),
                space::snapshot_space(objects, &parts.snapshot_prefix),
            )
        }
        None => {
            notes.push(
                "No dataset reviewed (capacity.review.datasets is empty): dataset growth and \
                 snapshot space left out."
                    .into(),
            );
            (Vec::new(), Default::default())
        }
    };
    CapacityReview {
        node: parts.trends.node().to_string(),
        from: parts.window.from,
        to: parts.window.to,
        samples: parts.trends.samples(),
        trends: parts.trends.finish(config),
        commitment: space::commitment(&parts.vms, parts.physical_memory, review.commitment_target),
        top_vms: series::top_vms(parts.vm_growth, review.top),
        top_datasets,
        snapshot_space,
        notes,
    }
}

/// One line for the event and logs: the soonest threshold and the commitment.
pub fn summary(r: &CapacityReview) -> String {
    let soonest = match r.soonest() {
        Some((t, d)) if d <= 0.0 => format!("{} already above {}", t.metric, t.threshold),
        Some((t, d)) => format!("{} reaches {} in {d:.1} days", t.metric, t.threshold),
        None => "no metric trending to its threshold".into(),
    };
    let c = &r.commitment;
    format!(
        "{}: {soonest}; memory commitment {:.2}:1 (target {:.2}:1, headroom {:+.1} GiB)",
        r.node, c.ratio, c.target, c.headroom_gib
    )
}
