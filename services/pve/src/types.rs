//! Typed views of the responses proxflow reads. Fields proxflow does not use are left out on purpose
//! (serde ignores them), so additions in a Proxmox release never break decoding; the fields kept are
//! decoded leniently (see [`crate::perl`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::perl;

/// One VM from `GET /nodes/{node}/qemu`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSummary {
    /// VMID.
    #[serde(deserialize_with = "perl::u32")]
    pub vmid: u32,
    /// Name, when set.
    #[serde(default)]
    pub name: Option<String>,
    /// `running` or `stopped`.
    pub status: String,
    /// Whether it is a template (Proxmox only sends the key when it is).
    #[serde(default, deserialize_with = "perl::bool")]
    pub template: bool,
    /// vCPUs.
    #[serde(default, deserialize_with = "perl::f64")]
    pub cpus: f64,
    /// CPU utilisation, 0..1 of its vCPUs.
    #[serde(default, deserialize_with = "perl::f64")]
    pub cpu: f64,
    /// Configured memory, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub maxmem: u64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub mem: u64,
    /// Root disk size, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub maxdisk: u64,
    /// Seconds since start.
    #[serde(default, deserialize_with = "perl::u64")]
    pub uptime: u64,
    /// Config lock (`clone`, `backup`, …).
    #[serde(default)]
    pub lock: Option<String>,
    /// Tags, `;`-separated.
    #[serde(default)]
    pub tags: Option<String>,
    /// Balloon minimum, bytes: memory the host cannot take back by ballooning (absent when
    /// ballooning is off).
    #[serde(default, deserialize_with = "perl::opt_u64")]
    pub balloon_min: Option<u64>,
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// QEMU's own view (`running`, `paused`, `prelaunch`, …).
    #[serde(default)]
    pub qmpstatus: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// vCPUs.
    #[serde(default, deserialize_with = "perl::f64")]
    pub cpus: f64,
    /// CPU utilisation 0..1.
    #[serde(default, deserialize_with = "perl::f64")]
    pub cpu: f64,
    /// Configured memory, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub maxmem: u64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub mem: u64,
    /// Seconds since start.
    #[serde(default, deserialize_with = "perl::u64")]
    pub uptime: u64,
    /// Guest agent enabled in the config.
    #[serde(default, deserialize_with = "perl::bool")]
    pub agent: bool,
    /// Config lock.
    #[serde(default)]
    pub lock: Option<String>,
}

impl VmStatus {
    /// Whether the VM is running.
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }
}

/// A VM configuration with the digest to send back for optimistic locking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// SHA-1 of the config file; pass to a config change so a concurrent edit fails instead of being lost.
    pub digest: String,
    /// Every key as Proxmox stores it (`memory` "8192", `net0` "virtio=…,bridge=vmbr1,tag=20").
    pub values: BTreeMap<String, String>,
}

impl VmConfig {
    /// One key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The config lock, if any.
    pub fn lock(&self) -> Option<&str> {
        self.get("lock")
    }

    /// Whether this is a template.
    pub fn is_template(&self) -> bool {
        self.get("template").is_some_and(|v| v == "1")
    }

    /// Tags, split as Proxmox splits them.
    pub fn tags(&self) -> Vec<&str> {
        self.get("tags")
            .map(|t| t.split([';', ',', ' ']).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }
}

/// One entry of `GET …/snapshot` (including the `current` pseudo-snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Name; `current` is "you are here".
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Creation time, epoch seconds.
    #[serde(default, deserialize_with = "perl::opt_u64")]
    pub snaptime: Option<u64>,
    /// Whether RAM was saved.
    #[serde(default, deserialize_with = "perl::bool")]
    pub vmstate: bool,
    /// The snapshot this one (or `current`) derives from.
    #[serde(default)]
    pub parent: Option<String>,
}

impl Snapshot {
    /// Whether this is the `current` pseudo-entry rather than a snapshot.
    pub fn is_current(&self) -> bool {
        self.name == "current"
    }
}

/// Memory or disk usage triple from node status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Total bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub total: u64,
    /// Used bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub used: u64,
    /// Free bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub free: u64,
}

/// CPU description from node status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// Logical CPUs (threads).
    #[serde(default, deserialize_with = "perl::u32")]
    pub cpus: u32,
    /// Cores per socket.
    #[serde(default, deserialize_with = "perl::u32")]
    pub cores: u32,
    /// Sockets.
    #[serde(default, deserialize_with = "perl::u32")]
    pub sockets: u32,
    /// Clock, MHz (a string on the wire).
    #[serde(default, deserialize_with = "perl::f64")]
    pub mhz: f64,
}

/// KSM sharing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ksm {
    /// Bytes shared by KSM.
    #[serde(default, deserialize_with = "perl::u64")]
    pub shared: u64,
}

/// `GET /nodes/{node}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// CPU utilisation 0..1.
    #[serde(deserialize_with = "perl::f64")]
    pub cpu: f64,
    /// IO wait fraction.
    #[serde(default, deserialize_with = "perl::f64")]
    pub wait: f64,
    /// 1/5/15-minute load (strings on the wire).
    #[serde(default, deserialize_with = "perl::f64_list")]
    pub loadavg: Vec<f64>,
    /// Physical memory.
    pub memory: Usage,
    /// Swap.
    #[serde(default)]
    pub swap: Usage,
    /// Root filesystem.
    #[serde(default)]
    pub rootfs: Usage,
    /// KSM.
    #[serde(default)]
    pub ksm: Ksm,
    /// CPU description.
    pub cpuinfo: CpuInfo,
    /// Seconds since boot.
    #[serde(default, deserialize_with = "perl::u64")]
    pub uptime: u64,
    /// `pve-manager/8.x.y/<hash>`.
    #[serde(default)]
    pub pveversion: String,
    /// The running kernel (`current-kernel`).
    #[serde(rename = "current-kernel", default)]
    pub current_kernel: Option<CurrentKernel>,
}

/// `current-kernel` of the node status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurrentKernel {
    /// `uname -r` (`6.8.12-9-pve`).
    #[serde(default)]
    pub release: String,
}

/// A storage from `GET /nodes/{node}/storage` or its `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// Storage id (absent from the single-storage status call).
    #[serde(default)]
    pub storage: Option<String>,
    /// Plugin type (`zfspool`, `dir`, …).
    #[serde(rename = "type")]
    pub storage_type: String,
    /// Content types, comma-separated.
    #[serde(default)]
    pub content: String,
    /// Shared between nodes.
    #[serde(default, deserialize_with = "perl::bool")]
    pub shared: bool,
    /// Enabled in storage.cfg.
    #[serde(default, deserialize_with = "perl::bool")]
    pub enabled: bool,
    /// Currently usable.
    #[serde(default, deserialize_with = "perl::bool")]
    pub active: bool,
    /// Total bytes (for zfspool: used + avail of the dataset).
    #[serde(default, deserialize_with = "perl::u64")]
    pub total: u64,
    /// Used bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub used: u64,
    /// Available bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub avail: u64,
}

/// One entry of `GET /cluster/resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterResource {
    /// `qemu/100`, `node/pve1`, `storage/pve1/local-zfs`.
    pub id: String,
    /// `qemu`, `lxc`, `node`, `storage`, `pool`, `sdn`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Node.
    #[serde(default)]
    pub node: Option<String>,
    /// VMID for guests.
    #[serde(default, deserialize_with = "perl::opt_u64")]
    pub vmid: Option<u64>,
    /// Name for guests.
    #[serde(default)]
    pub name: Option<String>,
    /// Status (`running`, `online`, `available`, …).
    #[serde(default)]
    pub status: Option<String>,
    /// Template flag for guests.
    #[serde(default, deserialize_with = "perl::bool")]
    pub template: bool,
    /// CPU utilisation 0..1.
    #[serde(default, deserialize_with = "perl::f64")]
    pub cpu: f64,
    /// CPUs.
    #[serde(default, deserialize_with = "perl::f64")]
    pub maxcpu: f64,
    /// Memory used, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub mem: u64,
    /// Memory total, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub maxmem: u64,
    /// Disk used, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub disk: u64,
    /// Disk total, bytes.
    #[serde(default, deserialize_with = "perl::u64")]
    pub maxdisk: u64,
    /// Tags, `;`-separated.
    #[serde(default)]
    pub tags: Option<String>,
    /// Storage id, for storages.
    #[serde(default)]
    pub storage: Option<String>,
    /// Storage plugin, for storages.
    #[serde(default)]
    pub plugintype: Option<String>,
    /// Config lock, for guests.
    #[serde(default)]
    pub lock: Option<String>,
}

/// Which entries `GET /cluster/resources` should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    /// Guests.
    Vm,
    /// Nodes.
    Node,
    /// Storages.
    Storage,
}

impl ResourceType {
    /// The `type` parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Vm => "vm",
            ResourceType::Node => "node",
            ResourceType::Storage => "storage",
        }
    }
}

/// A pool from `GET /nodes/{node}/disks/zfs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZfsPool {
    /// Pool name.
    pub name: String,
    /// Size, bytes.
    #[serde(deserialize_with = "perl::u64")]
    pub size: u64,
    /// Allocated, bytes.
    #[serde(deserialize_with = "perl::u64")]
    pub alloc: u64,
    /// Free, bytes.
    #[serde(deserialize_with = "perl::u64")]
    pub free: u64,
    /// Fragmentation, percent.
    #[serde(default, deserialize_with = "perl::u64")]
    pub frag: u64,
    /// Dedup ratio.
    #[serde(default, deserialize_with = "perl::f64")]
    pub dedup: f64,
    /// `ONLINE`, `DEGRADED`, …
    pub health: String,
}

/// A pending package update from `GET /nodes/{node}/apt/update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AptUpdate {
    /// Package name.
    #[serde(rename = "Package")]
    pub package: String,
    /// Candidate version.
    #[serde(rename = "Version")]
    pub version: String,
    /// Installed version; absent for a newly required dependency.
    #[serde(rename = "OldVersion", default)]
    pub old_version: Option<String>,
    /// Short description.
    #[serde(rename = "Title", default)]
    pub title: String,
    /// `Proxmox`, `Debian`, …
    #[serde(rename = "Origin", default)]
    pub origin: String,
    /// Debian priority.
    #[serde(rename = "Priority", default)]
    pub priority: String,
    /// Debian section.
    #[serde(rename = "Section", default)]
    pub section: String,
}

/// One interface reported by the guest agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInterface {
    /// Interface name (`eth0`, `lo`).
    pub name: String,
    /// MAC address.
    #[serde(rename = "hardware-address", default)]
    pub hardware_address: Option<String>,
    /// Addresses.
    #[serde(rename = "ip-addresses", default)]
    pub ip_addresses: Vec<AgentIp>,
}

/// One address of an agent-reported interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentIp {
    /// The address.
    #[serde(rename = "ip-address")]
    pub address: String,
    /// `ipv4` or `ipv6`.
    #[serde(rename = "ip-address-type")]
    pub family: String,
    /// Prefix length.
    #[serde(default, deserialize_with = "perl::u32")]
    pub prefix: u32,
}

/// Result of `GET …/agent/exec-status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecStatus {
    /// Whether the process has exited.
    #[serde(deserialize_with = "perl::bool")]
    pub exited: bool,
    /// Exit code, once exited.
    #[serde(default)]
    pub exitcode: Option<i64>,
    /// Captured stdout.
    #[serde(rename = "out-data", default)]
    pub out_data: Option<String>,
    /// Captured stderr.
    #[serde(rename = "err-data", default)]
    pub err_data: Option<String>,
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task.
    pub upid: String,
    /// `running` or `stopped`.
    pub status: String,
    /// Only once stopped: `OK`, `WARNINGS: n`, or the error.
    #[serde(default, deserialize_with = "opt_string")]
    pub exitstatus: Option<String>,
    /// Task type (`qmclone`, …).
    #[serde(rename = "type", default)]
    pub task_type: String,
    /// The object it works on (a VMID for VM tasks).
    #[serde(default, deserialize_with = "perl::string")]
    pub id: String,
    /// Who started it (`root@pam`; a token's name is in `tokenid`).
    #[serde(default)]
    pub user: String,
    /// The API token that started it, if one did (`proxflow`).
    #[serde(default)]
    pub tokenid: Option<String>,
    /// Start, epoch seconds.
    #[serde(default, deserialize_with = "perl::u64")]
    pub starttime: u64,
}

impl TaskStatus {
    /// Whether it has stopped.
    pub fn is_stopped(&self) -> bool {
        self.status == "stopped"
    }
}

fn opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(if v.is_null() {
        None
    } else {
        Some(perl::value_to_string(&v))
    })
}

/// One line of a task log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLogLine {
    /// Line number from 1.
    #[serde(deserialize_with = "perl::u64")]
    pub n: u64,
    /// Text.
    pub t: String,
}
