//! The claims sweep: every `provision.claims_sweep`, the names and static addresses in `pf_claims`
//! are made to agree with Proxmox. A VM made outside proxflow gets its name and address claimed (so
//! a request for a second `k3s-1` is refused at the gateway), and the claims of a VM destroyed or
//! renamed since are dropped (so its name can be used again). Claims of provisions in flight are
//! never touched: only claims settled with a VMID are compared with Proxmox.

use std::net::Ipv4Addr;

use proxflow_platform::claims::{ClaimError, Claims, Swept, VmInUse};
use proxflow_pve::{PveClient, PveError};
use proxflow_runtime::clock::SharedClock;

/// Why a sweep did not finish (the next one tries again).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Proxmox did not list its VMs or their configurations.
    #[error("listing the VMs on Proxmox: {0}")]
    Pve(#[from] PveError),
    /// The claims bucket failed.
    #[error(transparent)]
    Claims(#[from] ClaimError),
}

/// One sweep: claims read first, then Proxmox listed, then the differences written (a claim that
/// changed in between is left alone).
pub async fn sweep_once(
    pve: &PveClient,
    claims: &Claims,
    clock: &SharedClock,
) -> Result<Swept, SweepError> {
    let before = claims.snapshot().await?;
    let mut vms = Vec::new();
    for vm in pve.list_vms().await? {
        let config = pve.vm_config(vm.vmid).await?;
        vms.push(VmInUse {
            vmid: vm.vmid,
            name: vm.name,
            address: config.get("ipconfig0").and_then(static_address),
        });
    }
    Ok(claims.sweep(&before, &vms, clock.now()).await?)
}

/// The address of an `ipconfig0` value (`ip=10.20.0.44/24,gw=10.20.0.1`); `None` for DHCP or none.
fn static_address(ipconfig: &str) -> Option<Ipv4Addr> {
    ipconfig
        .split(',')
        .find_map(|part| part.trim().strip_prefix("ip="))
        .and_then(|ip| ip.split('/').next())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_addresses_come_from_ipconfig0() {
        assert_eq!(
            static_address("ip=10.20.0.44/24,gw=10.20.0.1"),
            Some(Ipv4Addr::new(10, 20, 0, 44))
        );
        assert_eq!(
            static_address("gw=10.20.0.1, ip=10.20.0.7/24"),
            Some(Ipv4Addr::new(10, 20, 0, 7))
        );
        assert_eq!(static_address("ip=dhcp"), None);
        assert_eq!(static_address("ip6=auto"), None);
    }
}
