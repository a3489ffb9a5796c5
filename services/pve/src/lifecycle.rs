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
}

/// The RRD window of `…/rrddata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeframe {
    /// 70 rows of 1 minute.
    Hour,
    /// 70 rows of 30 minutes.
    Day,
    /// 70 rows of 3 hours.
    Week,
    /// 70 rows of 12 hours.
    Month,
    /// 70 rows of 1 week.
    Year,
}

impl Timeframe {
    /// The `timeframe` parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// The RRD consolidation function of `…/rrddata`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consolidation {
    /// The mean over each row's step (Proxmox's default).
    #[default]
    Average,
    /// The maximum over each row's step.
    Max,
}

impl Consolidation {
    /// The `cf` parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Average => "AVERAGE",
            Self::Max => "MAX",
        }
    }
}

/// One RRD row: its time and every value it has (a row of a gap has only `time`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrdRow {
    /// End of the row's step, epoch seconds.
    #[serde(deserialize_with = "perl::u64")]
    pub time: u64,
    /// The values by name (node: `cpu`, `memused`, `loadavg`, …; VM: `cpu`, `mem`, `netin`, …).
    #[serde(flatten, deserialize_with = "lenient_values")]
    pub values: BTreeMap<String, f64>,
}

impl RrdRow {
    /// One value.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }
}

/// A percentage as a number or numeric string; `N/A` (disks without a wear figure) is `None`.
fn opt_percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// Numbers or numeric strings; anything else (a null of a gap) is left out.
fn lenient_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| {
            let n = match &v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }?;
            Some((k, n))
        })
        .collect())
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

    /// `GET /nodes/{node}/rrddata`: the node's history, oldest row first.
    pub async fn node_rrddata(
        &self,
        node: &str,
        timeframe: Timeframe,
        cf: Consolidation,
    ) -> Result<Vec<RrdRow>, PveError> {
        self.call(
            Method::GET,
            &format!("/nodes/{node}/rrddata"),
            &Params::new()
                .set("timeframe", timeframe.as_str())
                .set("cf", cf.as_str()),
        )
        .await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/rrddata`: a VM's history, oldest row first.
    pub async fn vm_rrddata(
        &self,
        node: &str,
        vmid: u32,
        timeframe: Timeframe,
        cf: Consolidation,
    ) -> Result<Vec<RrdRow>, PveError> {
        self.call(
            Method::GET,
            &format!("/nodes/{node}/qemu/{vmid}/rrddata"),
            &Params::new()
                .set("timeframe", timeframe.as_str())
                .set("cf", cf.as_str()),
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
        let row: RrdRow =
            serde_json::from_str(r#"{"time":1700000000,"cpu":"0.25","mem":1024,"gap":null}"#)
                .expect("decodes");
        assert_eq!(row.get("cpu"), Some(0.25));
        assert_eq!(row.get("gap"), None);
    }
}
