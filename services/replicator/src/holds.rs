//! The replication base's holds: exactly one snapshot per side carries the job's hold, so the
//! snapshotter's pruning never destroys the next run's base and no hold leaks.

use proxflow_zfs::{SnapshotInfo, ZfsError, names};

use crate::job::{Job, JobError};
use crate::service::Replicator;

impl Replicator {
    /// Puts the job's hold on `base` (found by guid) on both sides, then releases the job's hold
    /// from every other snapshot. Holding first means the base is never unprotected in between.
    pub(crate) async fn move_holds(&self, job: &Job, base: &SnapshotInfo) -> Result<(), JobError> {
        let tag = names::hold_tag(&job.config.name);
        let sides = [
            (&job.source, &job.config.source),
            (&job.target, &job.config.target),
        ];
        let mut listings = Vec::with_capacity(2);
        for (zfs, dataset) in sides {
            let snaps = zfs.snapshots(dataset).await?;
            match snaps.iter().find(|s| s.guid == base.guid) {
                Some(copy) => {
                    zfs.hold(&tag, dataset, &copy.name).await?;
                }
                None => {
                    return Err(JobError::Zfs(ZfsError::Unsupported {
                        host: zfs.host(),
                        what: format!("{dataset} lacks the base {} after the receive", base.name),
                    }));
                }
            }
            listings.push((zfs, dataset, snaps));
        }
        for (zfs, dataset, snaps) in listings {
            let hold_listing = zfs.capabilities(dataset).await?.hold_listing;
            for old in snaps.iter().filter(|s| s.guid != base.guid && s.is_held()) {
                // Where holds can be listed, only ours are touched; elsewhere a release of our tag
                // is tried and a "no such tag" answer means the hold is someone else's.
                if hold_listing
                    && !zfs
                        .holds(dataset, &old.name)
                        .await?
                        .unwrap_or_default()
                        .contains(&tag)
                {
                    continue;
                }
                if zfs.release(&tag, dataset, &old.name).await? {
                    tracing::info!(snapshot = %old.full_name(), host = %zfs.host(), "older replication hold released");
                }
            }
        }
        Ok(())
    }
}
