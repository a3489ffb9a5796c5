//! VMID reservations in the `pf_vmids` bucket: `<vmid>` → workflow id, taken with `create`.
//!
//! Proxmox's `nextid` is only a hint: two workflows asking at once get the same answer. A reservation
//! is taken atomically in KV before the clone, so concurrent provisions never collide, and it is looked
//! up by workflow id when a provision resumes after a crash, so a resumed workflow keeps its VMID.

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use proxflow_pve::{ErrorKind, PveClient, PveError};
use proxflow_runtime::backoff::Backoff;
use proxflow_schemas::names::bucket;

/// Candidates tried before giving up (each taken one moves to the next id).
const MAX_CANDIDATES: u32 = 1000;

/// Why no VMID could be reserved or released.
#[derive(Debug, thiserror::Error)]
pub enum VmidError {
    /// KV failed.
    #[error("VMID reservations: {0}")]
    Kv(String),
    /// Proxmox failed.
    #[error(transparent)]
    Pve(#[from] PveError),
    /// Nothing free.
    #[error("no free VMID among {MAX_CANDIDATES} candidates from {0}")]
    Exhausted(u32),
}

/// Handle on the reservations bucket.
#[derive(Clone)]
pub struct Reservations {
    kv: kv::Store,
}

impl Reservations {
    /// Opens the bucket (declared by the topology).
    pub async fn open(js: &jetstream::Context) -> Result<Self, VmidError> {
        js.get_key_value(bucket::VMIDS)
            .await
            .map(|kv| Self { kv })
            .map_err(|e| VmidError::Kv(e.to_string()))
    }

    /// The VMID reserved for `workflow_id`, if any. Retried while the bucket does not answer (a
    /// leader election), so an election costs a pause, not one of the step's attempts.
    pub async fn find(&self, workflow_id: &str) -> Result<Option<u32>, VmidError> {
        let mut retries = Backoff::UNAVAILABLE.start();
        retries.next().await;
        loop {
            match self.find_once(workflow_id).await {
                Err(e) if retries.next().await.is_some() => {
                    tracing::debug!(error = %e, "VMID reservations unavailable; retrying");
                }
                done => return done,
            }
        }
    }

    async fn find_once(&self, workflow_id: &str) -> Result<Option<u32>, VmidError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| VmidError::Kv(e.to_string()))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| VmidError::Kv(e.to_string()))?;
            if self.owner(&key).await?.as_deref() == Some(workflow_id) {
                return Ok(key.parse().ok());
            }
        }
        Ok(None)
    }

    /// Who holds `key`.
    async fn owner(&self, key: &str) -> Result<Option<String>, VmidError> {
        let value = self
            .kv
            .get(key)
            .await
            .map_err(|e| VmidError::Kv(e.to_string()))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Creates the reservation `key` for `workflow_id`: `true` when it is ours (now, or from an
    /// earlier attempt whose answer was lost), `false` when another workflow holds it. During a
    /// leader election a create can fail although it landed, or report an existing key as a
    /// generic "wrong last sequence": the stored owner decides, and while the bucket does not
    /// answer the claim is retried (an election costs a pause, not one of the step's attempts).
    async fn claim(&self, key: &str, workflow_id: &str) -> Result<bool, VmidError> {
        let mut retries = Backoff::UNAVAILABLE.start();
        retries.next().await;
        loop {
            let failed = match self
                .kv
                .create(key, workflow_id.as_bytes().to_vec().into())
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(false),
                Err(e) if e.kind() == kv::CreateErrorKind::InvalidKey => {
                    return Err(VmidError::Kv(e.to_string()));
                }
                Err(e) => match self.owner(key).await {
                    Ok(Some(owner)) => return Ok(owner == workflow_id),
                    Ok(None) | Err(_) => e,
                },
            };
            if retries.next().await.is_none() {
                return Err(VmidError::Kv(failed.to_string()));
            }
        }
    }

    /// Reserves a VMID for `workflow_id` (the one it already holds, if any): Proxmox's next free id,
    /// or the next one up that is neither reserved nor used by a VM.
    pub async fn reserve(&self, client: &PveClient, workflow_id: &str) -> Result<u32, VmidError> {
        if let Some(vmid) = self.find(workflow_id).await? {
            // Held from an earlier attempt: still good unless a VM appeared on it meanwhile (this
            // step runs before the clone, so any VM there is someone else's).
            match client.vm_config(vmid).await {
                Err(e) if e.kind == ErrorKind::NotFound => return Ok(vmid),
                Ok(_) => self.release(vmid, workflow_id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        let first = client.next_id().await?;
        for candidate in first..first.saturating_add(MAX_CANDIDATES) {
            let key = candidate.to_string();
            if !self.claim(&key, workflow_id).await? {
                continue;
            }
            // Reserved in KV; make sure nothing outside proxflow created that VM meanwhile.
            match client.vm_config(candidate).await {
                Err(e) if e.kind == ErrorKind::NotFound => return Ok(candidate),
                Ok(_) => {
                    self.release(candidate, workflow_id).await?;
                }
                Err(e) => {
                    self.release(candidate, workflow_id).await?;
                    return Err(e.into());
                }
            }
        }
        Err(VmidError::Exhausted(first))
    }

    /// Releases `vmid` if `workflow_id` holds it (compensation and completion both call this; a
    /// reservation held by another workflow is never touched).
    pub async fn release(&self, vmid: u32, workflow_id: &str) -> Result<(), VmidError> {
        let key = vmid.to_string();
        if self.owner(&key).await?.as_deref() == Some(workflow_id) {
            self.kv
                .purge(&key)
                .await
                .map_err(|e| VmidError::Kv(e.to_string()))?;
        }
        Ok(())
    }
}
