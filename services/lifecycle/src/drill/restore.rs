//! Restoring one VM of the export bundle into a scratch VMID: its exported config with fresh disks
//! of the same sizes and every NIC `link_down=1` (a restored twin must not answer on the network
//! its original lives on), started, its guest agent asked, then destroyed.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use proxflow_pve::PveClient;
use serde_json::Value;

use crate::export::normalize::REDACTED;

/// Keys of an exported config that do not belong on a new VM: derived, state, or another VM's
/// volumes (`unusedN`, the cloud-init drive).
fn dropped(key: &str) -> bool {
    matches!(
        key,
        "digest"
            | "meta"
            | "vmgenid"
            | "lock"
            | "template"
            | "parent"
            | "snaptime"
            | "efidisk0"
            | "tpmstate0"
    ) || key.starts_with("unused")
}

/// `scsi0`, `virtio1`, `sata2`, `ide3`: a drive.
fn is_drive(key: &str) -> bool {
    ["scsi", "virtio", "sata", "ide"].iter().any(|bus| {
        key.strip_prefix(bus)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The size of a drive spec (`…,size=40G`) in whole GiB, at least 1.
fn size_gib(spec: &str) -> Option<u64> {
    let size = spec.split(',').find_map(|p| p.strip_prefix("size="))?;
    let (number, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let gib = match unit {
        "T" => n * 1024,
        "G" => n,
        "M" => n.div_ceil(1024),
        "K" => 1,
        _ => return None,
    };
    Some(gib.max(1))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        _ => None,
    }
}

/// The creation parameters of a drill twin of `config` (the VMID goes separately), its disks on
/// `storage`.
pub fn creation_params(config: &Value, storage: &str) -> Result<BTreeMap<String, String>, String> {
    let map = config
        .as_object()
        .ok_or("the exported config is not an object")?;
    let mut params = BTreeMap::new();
    for (key, value) in map {
        let Some(value) = text(value) else { continue };
        if dropped(key) || value == REDACTED {
            continue;
        }
        let value = if is_drive(key) {
            if value.contains("media=cdrom") || value.contains("cloudinit") {
                continue;
            }
            let gib = size_gib(&value)
                .ok_or_else(|| format!("{key} = {value:?} has no size to allocate"))?;
            format!("{storage}:{gib}")
        } else if key.starts_with("net") && key[3..].bytes().all(|b| b.is_ascii_digit()) {
            let kept: Vec<&str> = value
                .split(',')
                .filter(|p| !p.starts_with("link_down="))
                .collect();
            format!("{},link_down=1", kept.join(","))
        } else if key == "name" {
            format!("{value}-drill")
        } else if key == "onboot" {
            "0".to_owned()
        } else if key == "tags" {
            format!("{value};proxflow-drill")
        } else {
            value
        };
        params.insert(key.clone(), value);
    }
    params
        .entry("tags".to_owned())
        .or_insert_with(|| "proxflow-drill".to_owned());
    Ok(params)
}

/// The first VMID of `[first, last]` no VM uses.
pub async fn free_vmid(pve: &PveClient, [first, last]: [u32; 2]) -> Result<u32, String> {
    let used: std::collections::BTreeSet<u32> = pve
        .list_vms()
        .await
        .map_err(|e| format!("listing VMs: {e}"))?
        .iter()
        .map(|v| v.vmid)
        .collect();
    (first..=last)
        .find(|id| !used.contains(id))
        .ok_or_else(|| format!("every scratch VMID {first}–{last} is taken (drill.scratch_vmids)"))
}

/// Starts `vmid` and waits until its guest agent answers; the seconds that took.
pub async fn boot(pve: &PveClient, vmid: u32, timeout: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let upid = pve
        .start_vm(vmid)
        .await
        .map_err(|e| format!("starting VM {vmid}: {e}"))?;
    pve.wait_task(&upid, Some(timeout))
        .await
        .map_err(|e| format!("starting VM {vmid}: {e}"))?;
    loop {
        match pve.agent_ping(vmid).await {
            Ok(()) => return Ok(started.elapsed().as_secs_f64()),
            Err(e) if started.elapsed() >= timeout => {
                return Err(format!(
                    "VM {vmid}'s guest agent did not answer within {}: {e}",
                    humantime_serde::re::humantime::format_duration(timeout)
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Stops and destroys `vmid` (purged); absent already is done.
pub async fn destroy(pve: &PveClient, vmid: u32, timeout: Duration) -> Result<(), String> {
    let exists = pve
        .list_vms()
        .await
        .map_err(|e| format!("listing VMs: {e}"))?
        .iter()
        .any(|v| v.vmid == vmid);
    if !exists {
        return Ok(());
    }
    if let Ok(upid) = pve.stop_vm(vmid, None).await {
        pve.wait_task(&upid, Some(timeout))
            .await
            .map_err(|e| format!("stopping VM {vmid}: {e}"))?;
    }
    let upid = pve
        .destroy_vm(vmid, true)
        .await
        .map_err(|e| format!("destroying VM {vmid}: {e}"))?;
    pve.wait_task(&upid, Some(timeout))
        .await
        .map_err(|e| format!("destroying VM {vmid}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn a_twin_gets_fresh_disks_its_links_down_and_no_foreign_volume() {
        let config = json!({
            "name": "k3s-1", "memory": 8192, "cores": 4, "onboot": 1, "digest": "x",
            "scsi0": "local-zfs:vm-101-disk-0,discard=on,size=40G",
            "ide2": "local-zfs:vm-101-cloudinit,media=cdrom",
            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1,tag=20",
            "net1": "virtio=BC:24:11:00:00:02,bridge=vmbr2,link_down=0",
            "unused0": "local-zfs:vm-101-disk-9", "cipassword": REDACTED, "tags": "k3s"
        });
        let got = creation_params(&config, "local-zfs").unwrap();
        assert_eq!(got["name"], "k3s-1-drill");
        assert_eq!(got["scsi0"], "local-zfs:40");
        assert_eq!(
            got["net0"],
            "virtio=BC:24:11:00:00:01,bridge=vmbr1,tag=20,link_down=1"
        );
        assert_eq!(
            got["net1"],
            "virtio=BC:24:11:00:00:02,bridge=vmbr2,link_down=1"
        );
        assert_eq!(got["onboot"], "0");
        assert_eq!(got["tags"], "k3s;proxflow-drill");
        for gone in ["ide2", "unused0", "digest", "cipassword"] {
            assert!(!got.contains_key(gone), "{gone}");
        }
    }
}
