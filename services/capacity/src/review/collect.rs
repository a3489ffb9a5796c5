//! What a review reads, and nothing else: the node's capacity samples in the window from the event
//! stream (folded one at a time), the node's and each VM's RRD (month, AVERAGE), the VM list and
//! physical memory from Proxmox, and the configured dataset trees from zfs.

use futures::{StreamExt, TryStreamExt};
use proxflow_pve::rrd::{Consolidation, Timeframe};
use proxflow_pve::{ErrorKind, PveClient, PveError};
use proxflow_runtime::bus::history::{self, HistoryError};
use proxflow_schemas::Message;
use proxflow_schemas::capacity::CapacitySample;
use proxflow_schemas::names::stream;
use proxflow_zfs::{Zfs, ZfsError};

use super::{Parts, Trends, Window, series};
use crate::CapacityConfig;

/// VM RRD requests in flight at once: a 10,000-VM node is read in bounded parallel, not all at once.
const VM_RRD_PARALLEL: usize = 8;

/// Where a review reads from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The bus (the samples on `PF_EVT`).
    pub js: async_nats::jetstream::Context,
    /// The node reviewed.
    pub pve: PveClient,
    /// zfs of the reviewed datasets (`snapshot.zfs_command`).
    pub zfs: Zfs,
    /// The snapshot name prefix (`snapshot.prefix`).
    pub snapshot_prefix: String,
}

/// Why a review could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Nothing to trend.
    #[error(
        "no capacity samples of node {node} between {from} and {to} on {subject}: is the \
         capacity service running, and is the window within the 90 days the event stream keeps?"
    )]
    NoSamples {
        /// The node.
        node: String,
        /// Window start.
        from: chrono::DateTime<chrono::Utc>,
        /// Window end.
        to: chrono::DateTime<chrono::Utc>,
        /// The subject read.
        subject: &'static str,
    },
    /// The window ends before it starts.
    #[error("the review window ends ({to}) before it starts ({from})")]
    EmptyWindow {
        /// Window start.
        from: chrono::DateTime<chrono::Utc>,
        /// Window end.
        to: chrono::DateTime<chrono::Utc>,
    },
    /// The event stream could not be read.
    #[error("reading the capacity samples")]
    Bus(#[from] HistoryError),
    /// A Proxmox call failed.
    #[error("Proxmox: {what}")]
    Pve {
        /// Which call.
        what: String,
        /// Why.
        #[source]
        source: PveError,
    },
    /// zfs could not list a dataset tree.
    #[error("zfs space of {dataset}")]
    Zfs {
        /// The dataset.
        dataset: String,
        /// Why.
        #[source]
        source: ZfsError,
    },
}

impl ReviewError {
    /// Worth trying again later (a workflow step retries these).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Bus(_) | Self::Zfs { .. } => true,
            Self::Pve { source, .. } => source.is_transient(),
            Self::NoSamples { .. } | Self::EmptyWindow { .. } => false,
        }
    }
}

fn pve(what: impl Into<String>) -> impl FnOnce(PveError) -> ReviewError {
    let what = what.into();
    move |source| ReviewError::Pve { what, source }
}

/// Reads everything the review of `window` needs.
pub async fn collect(
    sources: &Sources,
    config: &CapacityConfig,
    window: Window,
) -> Result<Parts, ReviewError> {
    if window.to < window.from {
        return Err(ReviewError::EmptyWindow {
            from: window.from,
            to: window.to,
        });
    }
    let node = sources.pve.node().to_string();
    let mut trends = Trends::new(window, node.clone());
    // Published at or after the window's start (a sample is published when it is taken); those
    // taken after its end are left out by `Trends`.
    history::each(
        &sources.js,
        stream::EVT,
        CapacitySample::SUBJECT,
        window.from,
        |s: CapacitySample| trends.sample(&s),
    )
    .await?;
    if trends.samples() == 0 {
        return Err(ReviewError::NoSamples {
            node,
            from: window.from,
            to: window.to,
            subject: CapacitySample::SUBJECT,
        });
    }
    let pve_client = &sources.pve;
    let (rrd, status, vms) = tokio::try_join!(
        async {
            pve_client
                .node_rrd(Timeframe::Month, Consolidation::Average)
                .await
                .map_err(pve("node rrddata"))
        },
        async { pve_client.node_status().await.map_err(pve("node status")) },
        async { pve_client.list_vms().await.map_err(pve("VM list")) },
    )?;
    let mut notes = Vec::new();
    trends.node_rrd(&rrd);
    if let Some(oldest) = rrd
        .iter()
        .map(|r| r.time)
        .min()
        .and_then(|t| chrono::DateTime::from_timestamp(i64::try_from(t).unwrap_or(i64::MAX), 0))
        .filter(|oldest| *oldest > window.from)
    {
        notes.push(format!(
            "Proxmox's month RRD starts at {oldest}: the rrd trends cover only the window from there."
        ));
    }
    // Owned inputs per request: a stream of futures borrowing the VM list is not `Send` in the
    // workflow's step (higher-ranked lifetimes), and the client is a cheap handle.
    let targets: Vec<(u32, Option<String>)> = vms
        .iter()
        .filter(|v| !v.template)
        .map(|v| (v.vmid, v.name.clone()))
        .collect();
    let growth: Vec<Option<_>> = futures::stream::iter(targets)
        .map(|(vmid, name)| {
            let client = pve_client.clone();
            async move {
                match client
                    .vm_rrd(vmid, Timeframe::Month, Consolidation::Average)
                    .await
                {
                    Ok(rows) => Ok(series::vm_growth(&window, vmid, name, &rows)),
                    // Destroyed since the list was read: nothing to say about it.
                    Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(pve(format!("rrddata of VM {vmid}"))(e)),
                }
            }
        })
        .buffer_unordered(VM_RRD_PARALLEL)
        .try_collect()
        .await?;
    let growth: Vec<_> = growth.into_iter().flatten().collect();
    let space = if config.review.datasets.is_empty() {
        None
    } else {
        let mut objects = Vec::new();
        for dataset in &config.review.datasets {
            let tree = sources
                .zfs
                .space(dataset)
                .await
                .map_err(|source| ReviewError::Zfs {
                    dataset: dataset.clone(),
                    source,
                })?;
            objects.extend(tree);
        }
        // Nested roots would count a dataset twice.
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        objects.dedup_by(|a, b| a.name == b.name);
        Some(objects)
    };
    Ok(Parts {
        window,
        trends,
        vms,
        physical_memory: status.memory.total,
        vm_growth: growth,
        space,
        snapshot_prefix: sources.snapshot_prefix.clone(),
        notes,
    })
}
