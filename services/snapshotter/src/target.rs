//! Snapshot targets behind one interface: VMs through the Proxmox snapshot API ([`PveClient`]),
//! datasets through [`Zfs`]. Each lists its snapshots as [`Existing`], takes and destroys them, and
//! names the lease that guards pruning it.

use chrono::{DateTime, Utc};
use proxflow_pve::{PveClient, PveError};
use proxflow_schemas::names::key;
use proxflow_schemas::snapshot::SnapshotTarget;
use proxflow_zfs::{Zfs, ZfsError};

use crate::config::Targets;
use crate::plan::Existing;

/// Marker before the expiry in a pre-change VM snapshot's description (VM snapshots have no user
/// properties; the description is the one free-text field Proxmox keeps with them).
const EXPIRES_MARKER: &str = "expires=";

/// Why a target operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Proxmox refused or failed.
    #[error("vm {vmid}: {source}")]
    Pve {
        /// The VM.
        vmid: u32,
        /// The client's error.
        #[source]
        source: Box<PveError>,
    },
    /// zfs failed.
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    /// A VM target without a Proxmox client configured.
    #[error("vm {0}: no Proxmox client (configure [pve])")]
    NoPve(u32),
    /// A name Proxmox would refuse (`pve-configid`).
    #[error("{0:?} is not a valid Proxmox snapshot name")]
    InvalidName(String),
}

fn pve_error(vmid: u32) -> impl FnOnce(PveError) -> TargetError {
    move |e| TargetError::Pve {
        vmid,
        source: Box::new(e),
    }
}

/// The systems snapshots are taken on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Proxmox, for VM targets.
    pub pve: Option<PveClient>,
    /// zfs, for dataset targets.
    pub zfs: Zfs,
}

/// The lease key guarding a target: `vm/<vmid>`, or the dataset key the replicator shares.
pub fn lease_key(target: &SnapshotTarget) -> String {
    match target {
        SnapshotTarget::Vm { vmid } => key::vm_lease(*vmid),
        SnapshotTarget::Dataset { dataset } => key::dataset_lease(dataset),
    }
}

/// Reads the expiry a pre-change VM snapshot's description records.
pub fn description_expiry(description: &str) -> Option<DateTime<Utc>> {
    let (_, rest) = description.rsplit_once(EXPIRES_MARKER)?;
    let value = rest.split_whitespace().next()?;
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A description that records `expires`.
pub fn description_with_expiry(text: &str, expires: DateTime<Utc>) -> String {
    format!(
        "{text} {EXPIRES_MARKER}{}",
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

impl Backends {
    /// The backends `[snapshot]` describes: its zfs prefix and timeout, and `pve` for VMs.
    pub fn from_config(config: &crate::SnapshotConfig, pve: Option<PveClient>) -> Self {
        Self {
            pve,
            zfs: Zfs::new(config.zfs_command.clone(), config.zfs_timeout),
        }
    }

    fn pve(&self, vmid: u32) -> Result<&PveClient, TargetError> {
        self.pve.as_ref().ok_or(TargetError::NoPve(vmid))
    }

    /// The targets a policy names now: its datasets and VMs, plus the (non-template) VMs carrying
    /// one of its tags, without duplicates.
    pub async fn resolve(&self, targets: &Targets) -> Result<Vec<SnapshotTarget>, TargetError> {
        let mut out: Vec<SnapshotTarget> = targets
            .datasets
            .iter()
            .map(|d| SnapshotTarget::Dataset { dataset: d.clone() })
            .chain(targets.vms.iter().map(|v| SnapshotTarget::Vm { vmid: *v }))
            .collect();
        if !targets.tags.is_empty() {
            let pve = self.pve(0)?;
            let vms = pve.list_vms().await.map_err(pve_error(0))?;
            for vm in vms.iter().filter(|vm| !vm.template) {
                let tags = vm.tags.as_deref().unwrap_or_default();
                if tags
                    .split([';', ',', ' '])
                    .any(|t| targets.tags.iter().any(|want| want == t))
                {
                    out.push(SnapshotTarget::Vm { vmid: vm.vmid });
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The target's snapshots.
    pub async fn list(&self, target: &SnapshotTarget) -> Result<Vec<Existing>, TargetError> {
        match target {
            SnapshotTarget::Vm { vmid } => {
                let snaps = self
                    .pve(*vmid)?
                    .snapshots(*vmid)
                    .await
                    .map_err(pve_error(*vmid))?;
                Ok(snaps
                    .into_iter()
                    .filter(|s| !s.is_current())
                    .map(|s| Existing {
                        expires: description_expiry(&s.description),
                        name: s.name,
                        held: false,
                    })
                    .collect())
            }
            SnapshotTarget::Dataset { dataset } => Ok(self
                .zfs
                .snapshots(dataset)
                .await?
                .into_iter()
                .map(|s| Existing {
                    held: s.is_held(),
                    expires: s.expires,
                    name: s.name,
                })
                .collect()),
        }
    }

    /// Takes snapshot `name`; `expires` is recorded with it (pre-change snapshots).
    pub async fn create(
        &self,
        target: &SnapshotTarget,
        name: &str,
        description: &str,
        expires: Option<DateTime<Utc>>,
    ) -> Result<(), TargetError> {
        match target {
            SnapshotTarget::Vm { vmid } => {
                // Generated names always pass; checked here because Proxmox would fail the request
                // only after the task started.
                if !crate::naming::is_valid_pve_name(name) {
                    return Err(TargetError::InvalidName(name.to_owned()));
                }
                let pve = self.pve(*vmid)?;
                let description = match expires {
                    Some(at) => description_with_expiry(description, at),
                    None => description.to_owned(),
                };
                let upid = pve
                    .create_snapshot(*vmid, name, Some(&description), false)
                    .await
                    .map_err(pve_error(*vmid))?;
                pve.wait_task(&upid, None).await.map_err(pve_error(*vmid))?;
                Ok(())
            }
            SnapshotTarget::Dataset { dataset } => {
                Ok(self.zfs.snapshot(dataset, name, expires).await?)
            }
        }
    }

    /// Destroys snapshot `name`.
    pub async fn destroy(&self, target: &SnapshotTarget, name: &str) -> Result<(), TargetError> {
        match target {
            SnapshotTarget::Vm { vmid } => {
                let pve = self.pve(*vmid)?;
                let upid = pve
                    .delete_snapshot(*vmid, name, false)
                    .await
                    .map_err(pve_error(*vmid))?;
                pve.wait_task(&upid, None).await.map_err(pve_error(*vmid))?;
                Ok(())
            }
            SnapshotTarget::Dataset { dataset } => {
                Ok(self.zfs.destroy_snapshot(dataset, name).await?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn expiry_round_trips_through_a_description() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = description_with_expiry("proxflow pre-change patch-7: kernel", at);
        assert_eq!(
            text,
            "proxflow pre-change patch-7: kernel expires=2026-12-01T10:00:00Z"
        );
        assert_eq!(description_expiry(&text), Some(at));
        assert_eq!(description_expiry("made by hand"), None);
        assert_eq!(description_expiry("expires=soon"), None);
    }

    #[test]
    fn lease_keys() {
        assert_eq!(lease_key(&SnapshotTarget::Vm { vmid: 104 }), "vm/104");
        assert_eq!(
            lease_key(&SnapshotTarget::Dataset {
                dataset: "tank/data".into()
            }),
            "zfs/tank/data"
        );
    }
}
