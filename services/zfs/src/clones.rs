//! Clones for looking at a snapshot's files without touching it: the restore drill clones the
//! newest replicated snapshot, reads it, and destroys the clone. Destroying is limited to clones
//! (a dataset with an `origin`), one at a time, never recursive: a wrong name can never take a
//! replicated dataset with it.

use std::time::Duration;

use crate::{Zfs, ZfsError, names, valid_dataset};

/// How often a busy clone (zfs-fuse reports a just-unmounted dataset as busy for a moment) is
/// tried again, and how long in all.
const BUSY_RETRY: Duration = Duration::from_millis(200);
const BUSY_ATTEMPTS: u32 = 25;

impl Zfs {
    /// Clones `snapshot` (`dataset@name`) as `clone`, read-only.
    pub async fn clone_snapshot(&self, snapshot: &str, clone: &str) -> Result<(), ZfsError> {
        let (dataset, name) = snapshot
            .split_once('@')
            .ok_or_else(|| ZfsError::InvalidName(snapshot.to_owned()))?;
        valid_dataset(dataset)?;
        valid_dataset(clone)?;
        if !names::is_snapshot_name(name) || names::pool_of(dataset) != names::pool_of(clone) {
            // ZFS clones only within a pool; say so before it does, less clearly.
            return Err(ZfsError::InvalidName(format!("{snapshot} → {clone}")));
        }
        self.check(&["clone", snapshot, clone]).await?;
        // `clone -o readonly=on` is ignored by some zfs (zfs-fuse): set it afterwards.
        self.set(clone, "readonly", "on").await
    }

    /// The snapshot `dataset` was cloned from, `None` when it is not a clone.
    pub async fn origin(&self, dataset: &str) -> Result<Option<String>, ZfsError> {
        valid_dataset(dataset)?;
        let text = self
            .check(&["get", "-H", "-o", "value", "origin", dataset])
            .await?;
        let origin = text.trim();
        Ok((origin.contains('@')).then(|| origin.to_owned()))
    }

    /// Destroys the clone `dataset`: refused for a dataset that is not a clone. Absent already is
    /// done; busy (still being unmounted) is tried again for a few seconds.
    pub async fn destroy_clone(&self, dataset: &str) -> Result<(), ZfsError> {
        valid_dataset(dataset)?;
        if !self.exists(dataset).await? {
            return Ok(());
        }
        if self.origin(dataset).await?.is_none() {
            return Err(ZfsError::InvalidName(format!(
                "{dataset} is not a clone; refusing to destroy it"
            )));
        }
        let args = ["destroy", dataset];
        for attempt in 1..=BUSY_ATTEMPTS {
            let out = self.run(&args).await?;
            if out.success() || out.stderr.contains("does not exist") {
                return Ok(());
            }
            if !out.stderr.contains("busy") || attempt == BUSY_ATTEMPTS {
                return Err(self.failed(&args, &out));
            }
            tokio::time::sleep(BUSY_RETRY).await;
        }
        Ok(())
    }

    /// The clones under `parent` whose name starts with `prefix` (left by an interrupted drill).
    pub async fn clones_named(&self, parent: &str, prefix: &str) -> Result<Vec<String>, ZfsError> {
        valid_dataset(parent)?;
        let text = self
            .check(&["list", "-H", "-r", "-d", "1", "-o", "name", parent])
            .await?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|name| {
                name.rsplit('/')
                    .next()
                    .is_some_and(|leaf| leaf.starts_with(prefix))
            })
            .map(str::to_owned)
            .collect())
    }
}
