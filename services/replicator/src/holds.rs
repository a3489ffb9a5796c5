//! The replication base's holds: exactly one snapshot per side carries the job's hold, so the
//! snapshotter's pruning never destroys the next run's base and no hold leaks.

use std::borrow::Cow;

use proxflow_zfs::{SnapshotInfo, Zfs, ZfsError, names};

use crate::job::{Job, JobError};
use crate::service::Replicator;

/// What the run knows of both sides when it moves the holds.
pub(crate) struct Listings<'a> {
    /// The source's snapshots the run planned from. Still current for what matters here: the run
    /// holds the source's lease (nothing is pruned), and only this job's runs — under that lease —
    /// place or remove its hold, so the snapshots carrying it are the ones listed.
    pub(crate) source: &'a [SnapshotInfo],
    /// The target's snapshots the run planned from: current unless the run received something.
    pub(crate) target: &'a [SnapshotInfo],
    /// Whether the run received a stream, so the base's copy on the target is new and has to be
    /// looked up (by guid) in a fresh listing.
    pub(crate) received: bool,
}

impl Replicator {
    /// Puts the job's hold on `base` (found by guid) on both sides, then releases the job's hold
    /// from every other snapshot. Holding first means the base is never unprotected in between.
    /// The sides are independent, so each step runs on both at once; the releases start only
    /// once both holds are in place.
    pub(crate) async fn move_holds(
        &self,
        job: &Job,
        base: &SnapshotInfo,
        listings: Listings<'_>,
    ) -> Result<(), JobError> {
        let tag = names::hold_tag(&job.config.name);
        let (src, tgt) = (&job.config.source, &job.config.target);
        let (source_held, target_snaps) = tokio::join!(
            hold_copy(&job.source, src, listings.source, base, &tag),
            async {
                let snaps: Cow<'_, [SnapshotInfo]> = if listings.received {
                    Cow::Owned(job.target.snapshots(tgt).await?)
                } else {
                    Cow::Borrowed(listings.target)
                };
                hold_copy(&job.target, tgt, &snaps, base, &tag).await?;
                Ok::<_, JobError>(snaps)
            },
        );
        // Both awaited before either error is returned: no hold command is left half-way.
        source_held?;
        let target_snaps = target_snaps?;
        let (source_released, target_released) = tokio::join!(
            release_older(&job.source, src, listings.source, base, &tag),
            release_older(&job.target, tgt, &target_snaps, base, &tag),
        );
        source_released?;
        target_released
    }
}

/// Holds `dataset`'s copy of `base` (by guid) with `tag`.
async fn hold_copy(
    zfs: &Zfs,
    dataset: &str,
    snaps: &[SnapshotInfo],
    base: &SnapshotInfo,
    tag: &str,
) -> Result<(), JobError> {
    let Some(copy) = snaps.iter().find(|s| s.guid == base.guid) else {
        return Err(JobError::Zfs(ZfsError::Unsupported {
            host: zfs.host(),
            what: format!("{dataset} lacks the base {} after the receive", base.name),
        }));
    };
    zfs.hold(tag, dataset, &copy.name).await?;
    Ok(())
}

/// Releases `tag` from every held snapshot of `dataset` but the base. The release is tried
/// rather than the holds listed first (not every zfs can list them, and where one can the listing
/// is a command per snapshot too): releasing our tag touches only our hold, and "no such tag"
/// means the hold is someone else's.
async fn release_older(
    zfs: &Zfs,
    dataset: &str,
    snaps: &[SnapshotInfo],
    base: &SnapshotInfo,
    tag: &str,
) -> Result<(), JobError> {
    for old in snaps.iter().filter(|s| s.guid != base.guid && s.is_held()) {
        if zfs.release(tag, dataset, &old.name).await? {
            tracing::info!(snapshot = %old.full_name(), host = %zfs.host(), "older replication hold released");
        }
    }
    Ok(())
}
