//! Which pools a host has and creating a dataset in one: what `proxflow dev` needs to find the
//! zfs-fuse pools and set up its own dataset there (production datasets are the operator's to
//! create; the services only snapshot, send and receive).

use crate::{Zfs, ZfsError, valid_dataset};

impl Zfs {
    /// The names of the imported pools (`zpool list -H -o name`). Fails when zfs cannot answer at
    /// all (no daemon, no `zpool`), which is how a caller tells "no ZFS here" from "no such pool".
    pub async fn pools(&self) -> Result<Vec<String>, ZfsError> {
        let text = self.zpool(&["list", "-H", "-o", "name"]).await?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Creates `dataset` and any missing parents (`zfs create -p`); nothing when it exists.
    pub async fn create(&self, dataset: &str) -> Result<(), ZfsError> {
        valid_dataset(dataset)?;
        self.check(&["create", "-p", dataset]).await.map(drop)
    }
}
