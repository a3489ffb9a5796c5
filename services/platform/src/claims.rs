//! Names and static addresses in use (`pf_claims`).
//!
//! A provision claims its VM's name and static address before anything is created, by
//! compare-and-set, so two requests for one name (or one address) never both go ahead. The gateway
//! claims at the edge (a conflict is 409 naming the field); the provisioner's `admit` step claims
//! again, which is a no-op for the workflow's own claims and covers provisions the gateway never
//! saw (a scale-out's node). A provision that succeeds settles its claims with the VMID; one that
//! fails or is cancelled releases them. The provisioner's sweep keeps the bucket true to Proxmox:
//! a VM made outside proxflow gets its name and address claimed, and the claims of a VM destroyed
//! since are dropped, so its name can be used again.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use proxflow_runtime::kv::{self as cas, CasError, Change};
use proxflow_runtime::workflow::{WorkflowStore, WorkflowStoreError};
use proxflow_schemas::names::{bucket, key};
use proxflow_schemas::provision::ProvisionRequested;
use proxflow_schemas::workflow::WorkflowState;
use serde::{Deserialize, Serialize};

/// How long a claim may wait for its workflow's record to appear. A gateway that died between the
/// claim and the record leaves a claim nobody will settle; after this it may be taken over.
pub const UNRECORDED_GRACE: Duration = Duration::from_secs(120);

/// One name or address, as `pf_claims` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmClaim {
    /// The provision that claimed it; `None` for a VM the sweep found on Proxmox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The VM holding it, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// When it was claimed.
    pub since: DateTime<Utc>,
}

/// What a claim is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed<'a> {
    /// A VM name.
    Name(&'a str),
    /// A static IPv4 address.
    Address(Ipv4Addr),
}

impl Claimed<'_> {
    fn key(self) -> String {
        match self {
            Self::Name(name) => key::claim_name(name),
            Self::Address(addr) => key::claim_ip(addr),
        }
    }

    /// The request field that asked for it.
    pub fn field(self) -> &'static str {
        match self {
            Self::Name(_) => "name",
            Self::Address(_) => "ip.cidr",
        }
    }
}

impl std::fmt::Display for Claimed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "the name {name}"),
            Self::Address(addr) => write!(f, "the address {addr}"),
        }
    }
}

/// Why a claim was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Someone else holds it.
    #[error("{field}: {message}")]
    Held {
        /// The request field (`name`, `ip.cidr`).
        field: &'static str,
        /// Who holds it, for the caller.
        message: String,
    },
    /// KV failed; the claim may be retried.
    #[error(transparent)]
    Kv(#[from] CasError),
    /// The holder's workflow record could not be read.
    #[error(transparent)]
    Workflow(#[from] WorkflowStoreError),
}

/// A VM as the sweep sees it on Proxmox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInUse {
    /// Its VMID.
    pub vmid: u32,
    /// Its name.
    pub name: Option<String>,
    /// Its static address (`ipconfig0`'s `ip=`), if any.
    pub address: Option<Ipv4Addr>,
}

/// What a provision request claims: its name and, when static, its address.
pub fn of_request(request: &ProvisionRequested) -> Vec<Claimed<'_>> {
    let mut claimed = vec![Claimed::Name(&request.name)];
    claimed.extend(request.ip.static_address().map(Claimed::Address));
    claimed
}

/// What one sweep changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Claims added for VMs found on Proxmox.
    pub claimed: usize,
    /// Claims dropped because their VM is gone (or no longer has that name or address).
    pub dropped: usize,
}

/// The claims bucket, and the workflow records that say whether a claim is still live.
#[derive(Clone)]
pub struct Claims {
    kv: kv::Store,
    workflows: WorkflowStore,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims").finish_non_exhaustive()
    }
}

/// What the holder of a claim means for a newcomer.
enum Holder {
    /// It stands; the message says who.
    Live(String),
    /// It is stale (its provision failed, or never got recorded) and may be taken over.
    Gone,
}

impl Claims {
    /// Opens the buckets (declared by the topology at start).
    pub async fn open(js: &jetstream::Context) -> Result<Self, ClaimError> {
        let kv = js
            .get_key_value(bucket::CLAIMS)
            .await
            .map_err(|e| CasError::kv(bucket::CLAIMS, e))?;
        Ok(Self {
            kv,
            workflows: WorkflowStore::open(js).await?,
        })
    }

    /// Claims each of `claimed` for `workflow`, in order; its own claims are no-ops. When one is
    /// held by someone else, those before it are released again, so a refused request leaves
    /// nothing behind.
    pub async fn take(
        &self,
        workflow: &str,
        claimed: &[Claimed<'_>],
        now: DateTime<Utc>,
    ) -> Result<(), ClaimError> {
        for (i, what) in claimed.iter().enumerate() {
            if let Err(e) = self.take_one(workflow, *what, now).await {
                if let Err(release) = self.release(workflow, &claimed[..i]).await {
                    tracing::warn!(error = %release, "claims of a refused request not released; a newcomer takes them over once its workflow ends");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    async fn take_one(
        &self,
        workflow: &str,
        what: Claimed<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), ClaimError> {
        let key = what.key();
        let ours = VmClaim {
            workflow_id: Some(workflow.to_string()),
            vmid: None,
            since: now,
        };
        // A stale holder is overwritten only if the claim is still exactly what was judged stale.
        let mut stale: Option<VmClaim> = None;
        for _ in 0..4 {
            let (holder, _) =
                cas::change(&self.kv, &key, |current: Option<VmClaim>| match current {
                    None => Change::Write(ours.clone(), None),
                    Some(c) if c.workflow_id.as_deref() == Some(workflow) => Change::Keep(None),
                    Some(c) if stale.as_ref() == Some(&c) => Change::Write(ours.clone(), None),
                    Some(c) => Change::Keep(Some(c)),
                })
                .await?;
            let Some(holder) = holder else {
                return Ok(());
            };
            match self.judge(&holder, now).await? {
                Holder::Live(who) => {
                    return Err(ClaimError::Held {
                        field: what.field(),
                        message: format!("{what} is already in use: {who}"),
                    });
                }
                Holder::Gone => stale = Some(holder),
            }
        }
        Err(ClaimError::Held {
            field: what.field(),
            message: format!("{what} is changing hands; retry"),
        })
    }

    async fn judge(&self, holder: &VmClaim, now: DateTime<Utc>) -> Result<Holder, ClaimError> {
        if let Some(vmid) = holder.vmid {
            return Ok(Holder::Live(match &holder.workflow_id {
                Some(workflow) => format!("VM {vmid}, provisioned by workflow {workflow}"),
                None => format!("VM {vmid}"),
            }));
        }
        let Some(workflow) = &holder.workflow_id else {
            return Ok(Holder::Live("a VM on Proxmox".into()));
        };
        Ok(match self.workflows.get(workflow).await? {
            Some((record, _)) => match record.state {
                WorkflowState::Failed | WorkflowState::Cancelled => Holder::Gone,
                WorkflowState::Succeeded => {
                    Holder::Live(format!("the VM provisioned by workflow {workflow}"))
                }
                _ => Holder::Live(format!("being provisioned by workflow {workflow}")),
            },
            None if (now - holder.since).to_std().unwrap_or_default() > UNRECORDED_GRACE => {
                Holder::Gone
            }
            None => Holder::Live(format!("claimed by workflow {workflow}")),
        })
    }

    /// Records the VM that now holds `workflow`'s claims.
    pub async fn settle(
        &self,
        workflow: &str,
        claimed: &[Claimed<'_>],
        vmid: u32,
    ) -> Result<(), ClaimError> {
        for what in claimed {
            cas::change(&self.kv, &what.key(), |current: Option<VmClaim>| {
                match current {
                    Some(mut c) if c.workflow_id.as_deref() == Some(workflow) => {
                        c.vmid = Some(vmid);
                        Change::Write(c, ())
                    }
                    // Taken over, or never taken (a provision started before claims existed).
                    _ => Change::Keep(()),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Drops `workflow`'s claims that no VM holds (its provision failed or was cancelled).
    pub async fn release(&self, workflow: &str, claimed: &[Claimed<'_>]) -> Result<(), ClaimError> {
        for what in claimed {
            self.release_one(workflow, *what).await?;
        }
        Ok(())
    }

    async fn release_one(&self, workflow: &str, what: Claimed<'_>) -> Result<(), ClaimError> {
        cas::change(
            &self.kv,
            &what.key(),
            |current: Option<VmClaim>| match current {
                Some(c) if c.workflow_id.as_deref() == Some(workflow) && c.vmid.is_none() => {
                    Change::Delete(())
                }
                _ => Change::Keep(()),
            },
        )
        .await?;
        Ok(())
    }

    /// Reads every claim with its revision; a sweep reads them *before* it lists Proxmox, so a
    /// claim settled after the listing (a VM the listing missed) has a newer revision and survives.
    pub async fn snapshot(&self) -> Result<BTreeMap<String, (VmClaim, u64)>, ClaimError> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| CasError::kv(bucket::CLAIMS, e))?
            .try_collect()
            .await
            .map_err(|e| CasError::kv(bucket::CLAIMS, e))?;
        let mut claims = BTreeMap::new();
        for key in keys {
            let read = cas::read::<VmClaim>(&self.kv, &key).await?;
            if let (Some(claim), Some(revision)) = (read.value, read.revision) {
                claims.insert(key, (claim, revision));
            }
        }
        Ok(claims)
    }

    /// Makes the claims agree with `vms` (every VM on Proxmox, listed after `before` was read):
    /// claims of VMs that are gone, renamed or readdressed are dropped (only if unchanged since
    /// `before`), and names and addresses of VMs nobody claimed are claimed for them.
    pub async fn sweep(
        &self,
        before: &BTreeMap<String, (VmClaim, u64)>,
        vms: &[VmInUse],
        now: DateTime<Utc>,
    ) -> Result<Swept, ClaimError> {
        let mut in_use: BTreeMap<String, u32> = BTreeMap::new();
        for vm in vms {
            if let Some(name) = &vm.name {
                in_use.insert(Claimed::Name(name).key(), vm.vmid);
            }
            if let Some(addr) = vm.address {
                in_use.insert(Claimed::Address(addr).key(), vm.vmid);
            }
        }
        let mut swept = Swept::default();
        for (key, (claim, revision)) in before {
            let Some(vmid) = claim.vmid else {
                // Not settled: a provision in flight (or failed, which releases it, or a newcomer
                // takes it over).
                continue;
            };
            if in_use.get(key) == Some(&vmid) {
                continue;
            }
            match self.kv.delete_expect_revision(key, Some(*revision)).await {
                Ok(()) => {
                    tracing::info!(key, vmid, "claim dropped: its VM is gone from Proxmox");
                    swept.dropped += 1;
                }
                // Changed since it was read: it is somebody's current claim.
                Err(e) => tracing::debug!(key, error = %e, "claim changed during the sweep; kept"),
            }
        }
        for (key, vmid) in in_use {
            if before.contains_key(&key) {
                continue;
            }
            let found = VmClaim {
                workflow_id: None,
                vmid: Some(vmid),
                since: now,
            };
            let (created, _) =
                cas::change(&self.kv, &key, |current: Option<VmClaim>| match current {
                    None => Change::Write(found.clone(), true),
                    Some(_) => Change::Keep(false),
                })
                .await?;
            if created {
                tracing::info!(key, vmid, "claimed for a VM found on Proxmox");
                swept.claimed += 1;
            }
        }
        Ok(swept)
    }
}
