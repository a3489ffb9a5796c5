//! RRD history (`GET …/rrddata`): Proxmox's own averages of a node or a VM over an hour, day, week,
//! month or year, 70 rows each. The capacity review reads a month (one row per 12 hours) to trend
//! the host and each VM beside the capacity samples. A row where nothing was recorded (the node
//! was down) carries only its time, so every figure is optional.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Params, PveClient};
use crate::error::PveError;
use crate::perl;

/// How far back, and at what resolution (`timeframe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeframe {
    /// 70 rows of one minute.
    Hour,
    /// 70 rows of 30 minutes.
    Day,
    /// 70 rows of 3 hours.
    Week,
    /// 70 rows of 12 hours.
    Month,
    /// 70 rows of one week.
    Year,
}

impl Timeframe {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// Consolidation of each row (`cf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consolidation {
    /// The mean over the row's interval.
    Average,
    /// The highest value in it.
    Max,
}

impl Consolidation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Average => "AVERAGE",
            Self::Max => "MAX",
        }
    }
}

/// One row of a node's RRD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRrdRow {
    /// Epoch seconds at the row's end.
    #[serde(deserialize_with = "perl::u64")]
    pub time: u64,
    /// CPU busy, 0..1 of all logical CPUs.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub cpu: Option<f64>,
    /// Physical memory, bytes.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub memtotal: Option<f64>,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub memused: Option<f64>,
    /// Root file system size, bytes.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub roottotal: Option<f64>,
    /// Root file system in use, bytes.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub rootused: Option<f64>,
}

/// One row of a VM's RRD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRrdRow {
    /// Epoch seconds at the row's end.
    #[serde(deserialize_with = "perl::u64")]
    pub time: u64,
    /// CPU busy, 0..1 of its vCPUs.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub cpu: Option<f64>,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub mem: Option<f64>,
    /// Configured memory, bytes.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub maxmem: Option<f64>,
    /// Disk in use, bytes (0 for QEMU guests unless the guest agent reports it).
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub disk: Option<f64>,
    /// Disk size, bytes.
    #[serde(default, deserialize_with = "perl::opt_f64")]
    pub maxdisk: Option<f64>,
}

fn params(timeframe: Timeframe, cf: Consolidation) -> Params {
    Params::new()
        .set("timeframe", timeframe.as_str())
        .set("cf", cf.as_str())
}

impl PveClient {
    /// `GET /nodes/{node}/rrddata`: the node's history, oldest row first.
    pub async fn node_rrd(
        &self,
        timeframe: Timeframe,
        cf: Consolidation,
    ) -> Result<Vec<NodeRrdRow>, PveError> {
        let path = format!("/nodes/{}/rrddata", self.node());
        self.call(Method::GET, &path, &params(timeframe, cf)).await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/rrddata`: one VM's history, oldest row first.
    pub async fn vm_rrd(
        &self,
        vmid: u32,
        timeframe: Timeframe,
        cf: Consolidation,
    ) -> Result<Vec<VmRrdRow>, PveError> {
        let path = format!("/nodes/{}/qemu/{vmid}/rrddata", self.node());
        self.call(Method::GET, &path, &params(timeframe, cf)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rows_without_data_decode_with_only_their_time() {
        let rows: Vec<NodeRrdRow> = serde_json::from_str(
            r#"[{"time":1700000000},{"time":"1700043200","cpu":0.25,"memtotal":"1024","memused":512}]"#,
        )
        .unwrap();
        assert_eq!(rows[0].cpu, None);
        assert_eq!(rows[1].time, 1_700_043_200);
        assert_eq!(rows[1].memtotal, Some(1024.0));
        assert_eq!(rows[1].memused, Some(512.0));
    }
}
