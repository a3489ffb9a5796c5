//! The Proxmox steps of a provision, each idempotent: it looks at the VM first and does only what is
//! missing, so a step re-run after a crash (of this process, or between the request and its answer)
//! converges on the same single VM instead of failing or doing the work twice.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use proxflow_platform::{Profile, VmShape};
use proxflow_pve::types::VmConfig;
use proxflow_pve::{CloneSpec, ConfigChange, ErrorKind, PveClient, PveError, encode_sshkeys};
use proxflow_schemas::provision::{IpConfig, ProvisionRequested};

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Proxmox refused or failed.
    #[error(transparent)]
    Pve(#[from] PveError),
    /// The VMID holds a VM that is not ours: never touch it.
    #[error("VMID {vmid} belongs to another VM ('{found}'), not to {expected}")]
    Foreign {
        /// The VMID.
        vmid: u32,
        /// The name it has.
        found: String,
        /// The name we expected.
        expected: String,
    },
    /// The guest never reported an address.
    #[error("VM {vmid}: no IPv4 address from the guest agent within {waited:?} (last: {last})")]
    NoAddress {
        /// The VMID.
        vmid: u32,
        /// How long we waited.
        waited: Duration,
        /// The last answer.
        last: String,
    },
    /// A clone of this VMID has not finished within 10 minutes.
    #[error("VM {vmid} is still locked (clone) after 10 minutes")]
    StillCloning {
        /// The VMID.
        vmid: u32,
    },
    /// The disk is larger than asked and Proxmox cannot shrink.
    #[error(
        "VM {vmid}: {disk} is {have_gib} GiB, larger than the {want_gib} GiB asked; disks cannot shrink"
    )]
    DiskTooLarge {
        /// The VMID.
        vmid: u32,
        /// The disk.
        disk: String,
        /// Current size.
        have_gib: u64,
        /// Asked size.
        want_gib: u64,
    },
}

impl StepError {
    /// Whether retrying the step later could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Pve(e) => matches!(
                e.kind,
                ErrorKind::Transient
                    | ErrorKind::Locked
                    | ErrorKind::OutcomeUnknown
                    | ErrorKind::TaskTimeout
            ),
            StepError::NoAddress { .. } | StepError::StillCloning { .. } => true,
            StepError::Foreign { .. } | StepError::DiskTooLarge { .. } => false,
        }
    }
}

/// The VM's config, or `None` if the VMID is free.
async fn config_of(client: &PveClient, vmid: u32) -> Result<Option<VmConfig>, PveError> {
    match client.vm_config(vmid).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Clone the profile's template to `vmid` named `name`, unless that VM already exists (then wait for
/// its clone to finish). A VMID holding some other VM is an error, never adopted.
pub async fn ensure_cloned(
    client: &PveClient,
    profile: &Profile,
    vmid: u32,
    name: &str,
) -> Result<(), StepError> {
    if let Some(config) = config_of(client, vmid).await? {
        let found = config.get("name").unwrap_or("");
        if found != name {
            return Err(StepError::Foreign {
                vmid,
                found: found.to_string(),
                expected: name.to_string(),
            });
        }
        return wait_unlocked(client, vmid).await;
    }
    let spec = CloneSpec {
        newid: vmid,
        name: Some(name.to_string()),
        full: Some(profile.full_clone),
        pool: profile.pool.clone(),
        storage: profile.storage.clone().filter(|_| profile.full_clone),
        description: None,
    };
    let upid = client.clone_vm(profile.template, &spec).await?;
    client.wait_task(&upid, None).await?;
    Ok(())
}

/// Waits until a clone in progress (`lock: clone`) has finished.
async fn wait_unlocked(client: &PveClient, vmid: u32) -> Result<(), StepError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pause = Duration::from_millis(50);
    loop {
        let config = client.vm_config(vmid).await?;
        if config.lock() != Some("clone") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StepError::StillCloning { vmid });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The config keys a profile and request determine.
pub fn desired_config(
    profile: &Profile,
    shape: &VmShape,
    request: &ProvisionRequested,
    current_net0: Option<&str>,
) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    c.insert("cores".into(), shape.cores.to_string());
    c.insert("sockets".into(), "1".into());
    c.insert("cpu".into(), profile.cpu.clone());
    c.insert("memory".into(), shape.memory_mib.to_string());
    c.insert("balloon".into(), shape.balloon_mib.to_string());
    c.insert("scsihw".into(), profile.scsihw.clone());
    c.insert("agent".into(), "1".into());
    // Keep the MAC the clone was given: a new one would look like a new NIC to the guest.
    let model = current_net0
        .and_then(|n| n.split(',').next())
        .filter(|m| m.contains('='))
        .unwrap_or("virtio");
    let mut net0 = format!("{model},bridge={}", profile.bridge);
    if let Some(tag) = profile.vlan {
        net0.push_str(&format!(",tag={tag}"));
    }
    c.insert("net0".into(), net0);
    c.insert("ciuser".into(), profile.ciuser.clone());
    if !request.ssh_keys.is_empty() {
        c.insert(
            "sshkeys".into(),
            encode_sshkeys(&format!("{}\n", request.ssh_keys.join("\n"))),
        );
    }
    let ipconfig = match &request.ip {
        IpConfig::Dhcp => "ip=dhcp".to_string(),
        IpConfig::Static { cidr, gateway } => format!("ip={cidr},gw={gateway}"),
    };
    c.insert("ipconfig0".into(), ipconfig);
    if let Some(ns) = &profile.nameserver {
        c.insert("nameserver".into(), ns.clone());
    }
    if let Some(sd) = &profile.searchdomain {
        c.insert("searchdomain".into(), sd.clone());
    }
    let mut tags: Vec<String> = profile
        .tags
        .iter()
        .chain(request.tags.iter())
        .map(|t| t.to_lowercase())
        .collect();
    tags.sort();
    tags.dedup();
    c.insert("tags".into(), tags.join(";"));
    c
}

/// Applies the desired keys that differ, with the digest of what was read.
pub async fn ensure_config(
    client: &PveClient,
    vmid: u32,
    desired: &BTreeMap<String, String>,
) -> Result<bool, StepError> {
    let config = client.vm_config(vmid).await?;
    let mut change = ConfigChange {
        digest: Some(config.digest.clone()),
        ..ConfigChange::default()
    };
    for (k, v) in desired {
        if config.get(k) != Some(v.as_str()) {
            change.set.insert(k.clone(), v.clone());
        }
    }
    if change.set.is_empty() {
        return Ok(false);
    }
    client.update_config(vmid, &change).await?;
    Ok(true)
}

/// Size in GiB of a disk config value (`local-zfs:vm-104-disk-0,size=40G`).
pub fn disk_size_gib(value: &str) -> Option<u64> {
    let size = value.split(',').find_map(|p| p.strip_prefix("size="))?;
    let (num, unit) = size.split_at(
        size.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(size.len()),
    );
    let n: f64 = num.parse().ok()?;
    let gib = match unit {
        "T" => n * 1024.0,
        "G" | "" => n,
        "M" => n / 1024.0,
        "K" => n / (1024.0 * 1024.0),
        _ => return None,
    };
    Some(gib.ceil() as u64)
}

/// Grows the disk to `gib` unless it is that size already.
pub async fn ensure_disk(
    client: &PveClient,
    vmid: u32,
    disk: &str,
    gib: u32,
) -> Result<bool, StepError> {
    let config = client.vm_config(vmid).await?;
    let have = config.get(disk).and_then(disk_size_gib).unwrap_or(0);
    let want = u64::from(gib);
    if have == want {
        return Ok(false);
    }
    if have > want {
        return Err(StepError::DiskTooLarge {
            vmid,
            disk: disk.to_string(),
            have_gib: have,
            want_gib: want,
        });
    }
    let upid = client
        .resize_disk(vmid, disk, &format!("{gib}G"), Some(&config.digest))
        .await?;
    client.wait_task(&upid, None).await?;
    Ok(true)
}

/// Starts the VM unless it runs.
pub async fn ensure_running(client: &PveClient, vmid: u32) -> Result<bool, StepError> {
    if client.vm_status(vmid).await?.is_running() {
        return Ok(false);
    }
    let upid = client.start_vm(vmid).await?;
    match client.wait_task(&upid, None).await {
        Ok(_) => Ok(true),
        // Started by an earlier attempt between our status read and this start.
        Err(e) if e.kind == ErrorKind::TaskFailed && e.message.contains("already running") => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Polls the guest agent until the VM reports a non-loopback IPv4 address.
pub async fn wait_for_ipv4(
    client: &PveClient,
    vmid: u32,
    timeout: Duration,
) -> Result<Ipv4Addr, StepError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let last = match client.agent_network_interfaces(vmid).await {
            Ok(ifaces) => {
                let found = ifaces
                    .iter()
                    .filter(|i| i.name != "lo")
                    .flat_map(|i| i.ip_addresses.iter())
                    .filter(|a| a.family == "ipv4")
                    .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
                    .find(|a| !a.is_loopback() && !a.is_link_local());
                if let Some(ip) = found {
                    return Ok(ip);
                }
                "no IPv4 address yet".to_string()
            }
            // The agent starts some seconds after boot: keep asking until the deadline.
            Err(e) if matches!(e.kind, ErrorKind::Server | ErrorKind::Transient) => {
                e.message.clone()
            }
            Err(e) => return Err(e.into()),
        };
        if started.elapsed() >= timeout {
            return Err(StepError::NoAddress {
                vmid,
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(pause.min(timeout.saturating_sub(started.elapsed()))).await;
        // Gentle backoff: a guest typically answers a few seconds after boot, and overshooting that
        // moment delays the whole provision.
        pause = (pause * 3 / 2).min(Duration::from_secs(1));
    }
}

/// Stops (hard) and destroys the VM if it exists and carries `name`: the compensation of a provision.
/// A VM with another name is left alone.
pub async fn ensure_destroyed(
    client: &PveClient,
    vmid: u32,
    name: &str,
) -> Result<bool, StepError> {
    let Some(config) = config_of(client, vmid).await? else {
        return Ok(false);
    };
    if config.get("name").unwrap_or("") != name {
        return Err(StepError::Foreign {
            vmid,
            found: config.get("name").unwrap_or("").to_string(),
            expected: name.to_string(),
        });
    }
    wait_unlocked(client, vmid).await?;
    if client.vm_status(vmid).await?.is_running() {
        let upid = client.stop_vm(vmid, None).await?;
        client.wait_task(&upid, None).await?;
    }
    let upid = client.destroy_vm(vmid, true).await?;
    client.wait_task(&upid, None).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sizes() {
        assert_eq!(disk_size_gib("local-zfs:vm-104-disk-0,size=40G"), Some(40));
        assert_eq!(
            disk_size_gib("local-zfs:base-9000-disk-0,size=2252M"),
            Some(3)
        );
        assert_eq!(
            disk_size_gib("local-zfs:vm-1-disk-0,discard=on,size=1T"),
            Some(1024)
        );
        assert_eq!(disk_size_gib("local-zfs:vm-1-disk-0"), None);
    }
}
