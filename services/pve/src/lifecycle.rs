//! Operations of the lifecycle jobs (restore drill, disk health, capacity history): creating a VM
//! from a config, the node's disks and their SMART health, and RRD history of the node and of VMs,
//! with typed results decoded leniently like the rest of the crate.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Params, PveClient};
use crate::error::PveError;
use crate::perl;
use crate::task::Upid;

/// One disk from `GET /nodes/{node}/disks/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Device path (`/dev/nvme0n1`).
    pub devpath: String,
    /// SMART overall health (`PASSED`, `FAILED`, `UNKNOWN`); absent when SMART was skipped.
    #[serde(default)]
    pub health: Option<String>,
    /// Life left in percent (100 = new), for SSDs; `None` for others (Proxmox sends `N/A`).
    #[serde(default, deserialize_with = "opt_percent")]
    pub wearout: Option<u64>,
    /// Size, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub size: u64,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// `nvme`, `ssd`, `hdd`, …
    #[serde(rename = "type", default)]
    pub disk_type: Option<String>,
    /// What uses it (`ZFS`, `LVM`, `partitions`, …).
    #[serde(default)]
    pub used: Option<String>,
}

impl DiskInfo {
    /// Whether SMART says the disk is failing.
    pub fn is_failed(&self) -> bool {
        self.health.as_deref() == Some("FAILED")
    }
}

/// `GET /nodes/{node}/disks/smart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmartReport {
    /// `PASSED`, `FAILED`, …
    pub health: String,
    /// `text` (NVMe: smartctl's output in `text`) or `ata` (in `attributes`).
    #[serde(rename = "type", default)]
    pub report_type: Option<String>,
    /// smartctl's text, for NVMe disks.
    #[serde(default)]
    pub text: Option<String>,
    /// Life left in percent, when reported.
    #[serde(default, deserialize_with = "opt_percent")]
    pub wearout: Option<u64>,
    /// The SMART attribute table, for ATA disks (`id`, `name`, `value`, `worst`, `threshold`,
    /// `raw`, …), kept as Proxmox sends it: the audit records it whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<serde_json::Value>,
}

/// A percentage as a number or numeric string; `N/A` (disks without a wear figure) is `None`.
fn opt_percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

impl PveClient {
    /// `POST /nodes/{node}/qemu` → `qmcreate` task: a new VM `vmid` from config keys as Proxmox
    /// takes them (`name`, `memory`, `cores`, `net0` "virtio,bridge=vmbr1,link_down=1", `scsi0`
    /// "local-zfs:32", `pool`, `start`, …). A taken VMID fails at once with
    /// [`crate::ErrorKind::AlreadyExists`]; the VM holds `lock: create` until the task ends.
    pub async fn create_vm(
        &self,
        node: &str,
        vmid: u32,
        params: &BTreeMap<String, String>,
    ) -> Result<Upid, PveError> {
        let params = params
            .iter()
            .filter(|(k, _)| k.as_str() != "vmid")
            .fold(Params::new().set("vmid", vmid), |p, (k, v)| p.set(k, v));
        self.dispatch_task(
            Method::POST,
            &format!("/nodes/{node}/qemu"),
            &params,
            "qmcreate",
            &vmid.to_string(),
        )
        .await
    }

    /// `GET /nodes/{node}/disks/list`: the node's disks with their SMART health and wearout.
    pub async fn disks(&self, node: &str) -> Result<Vec<DiskInfo>, PveError> {
        self.call(
            Method::GET,
            &format!("/nodes/{node}/disks/list"),
            &Params::new(),
        )
        .await
    }

    /// `GET /nodes/{node}/disks/smart?disk=…`: one disk's SMART report.
    pub async fn disk_smart(&self, node: &str, disk: &str) -> Result<SmartReport, PveError> {
        self.call(
            Method::GET,
            &format!("/nodes/{node}/disks/smart"),
            &Params::new().set("disk", disk),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_and_rows_decode_perl_leniently() {
        let disk: DiskInfo = serde_json::from_str(
            r#"{"devpath":"/dev/sda","size":"4000787030016","wearout":"N/A","health":"PASSED"}"#,
        )
        .expect("decodes");
        assert_eq!((disk.size, disk.wearout), (4_000_787_030_016, None));
    }
}
