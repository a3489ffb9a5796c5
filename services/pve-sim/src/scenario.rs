//! Scenario files: the platform the simulator starts with (node, storages, bridges, VMs, pending
//! apt updates, what the host's upgrade installs, and the guests' package state with the updates
//! their archive offers). The built-in default is `scenarios/seed.toml`, compiled in.
//!
//! Parsing is strict (`deny_unknown_fields`), and every semantic problem is reported with the
//! field it is about (`vm[1] (vmid 101).config.net0: ...`), because a scenario typo should fail at
//! start, not show up later as a strange answer. VM config values are checked against the official
//! schema the same way a `POST .../config` would be.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::packages::{GuestUpdate, UpdateError, check_updates, is_package_name};
use crate::schema::ApiSchema;
use crate::schema::formats::{is_vmid, parse_size};
use crate::volumes::{DiskRef, parse_disk};

mod platform;

pub use platform::{AclSpec, DiskSpec, HostConfigSpec, PoolSpec, TokenSpec, UserSpec};
pub(crate) use platform::{CheckedPlatform, RuleScope, check_health, default_disks};

/// The seed platform, compiled in.
pub const SEED: &str = include_str!("../scenarios/seed.toml");

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("invalid scenario {origin}: cannot read it: {source}")]
    Read {
        /// The file.
        origin: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a scenario's TOML (syntax, unknown or missing fields, wrong types).
    #[error("invalid scenario {origin}: {source}")]
    Parse {
        /// The file, or `built-in seed`.
        origin: String,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid scenario {origin}: {source}")]
    Check {
        /// The file, or `built-in seed`.
        origin: String,
        /// The problem, naming the field.
        source: CheckError,
    },
}

/// A semantic problem in a scenario, naming the field it is about (`at` is the item, e.g.
/// `storage[1] (local-zfs)` or `vm[1] (vmid 101)`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    /// `node.name` is not a host name.
    #[error("node.name: '{0}' is not a valid node name")]
    NodeName(String),
    /// No cores or no sockets.
    #[error("node.cores, node.sockets: must be at least 1")]
    NoCpus,
    /// A base load outside 0..=1.
    #[error("{field}: {value} is not a fraction between 0 and 1")]
    NotAFraction {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// A size that `parse_size` refuses.
    #[error("{field}: '{text}' is not a size (a number with an optional K, M, G or T suffix)")]
    NotASize {
        /// The field.
        field: String,
        /// Its value.
        text: String,
    },
    /// A storage id Proxmox would refuse.
    #[error("{at}.id: not a valid storage id")]
    StorageId {
        /// The storage.
        at: String,
    },
    /// A `dir` storage without `path`, or with `pool`.
    #[error("{at}: a dir storage needs `path` and no `pool`")]
    DirStorage {
        /// The storage.
        at: String,
    },
    /// A `zfspool` storage without `pool`, or with `path`.
    #[error("{at}: a zfspool storage needs `pool` and no `path`")]
    ZfsPoolStorage {
        /// The storage.
        at: String,
    },
    /// A storage type the simulator does not know.
    #[error("{at}.type: '{kind}' is not one of dir, zfspool")]
    StorageType {
        /// The storage.
        at: String,
        /// The type given.
        kind: String,
    },
    /// `used` above `capacity`.
    #[error("{at}.used: larger than the capacity")]
    OverCapacity {
        /// The storage.
        at: String,
    },
    /// Two storages with one id.
    #[error("{at}.id: duplicate storage id")]
    DuplicateStorage {
        /// The second storage.
        at: String,
    },
    /// A bridge without a name, or with another bridge's.
    #[error("bridge[{index}].name: empty or duplicate '{name}'")]
    Bridge {
        /// Its position.
        index: usize,
        /// Its name.
        name: String,
    },
    /// A vmid outside 100..=999999999.
    #[error("{at}.vmid: not a VM id (100 to 999999999)")]
    Vmid {
        /// The VM.
        at: String,
    },
    /// A config value that is a table or an array.
    #[error("{at}.config.{key}: must be a string, number or boolean")]
    ConfigType {
        /// The VM.
        at: String,
        /// The config key.
        key: String,
    },
    /// A config value the API schema refuses, with Proxmox's message.
    #[error("{at}.config.{key}: {message}")]
    ConfigValue {
        /// The VM.
        at: String,
        /// The config key.
        key: String,
        /// The schema's message.
        message: String,
    },
    /// A disk on a storage the scenario does not define.
    #[error("{at}.config.{key}: unknown storage '{storage}'")]
    UnknownStorage {
        /// The VM.
        at: String,
        /// The config key.
        key: String,
        /// The storage named.
        storage: String,
    },
    /// A volume two disks use.
    #[error("{at}.config.{key}: volume {volid} is used twice")]
    VolumeUsedTwice {
        /// The VM.
        at: String,
        /// The config key.
        key: String,
        /// `storage:volname`.
        volid: String,
    },
    /// A NIC on a bridge the scenario does not define.
    #[error("{at}.config.{key}: unknown bridge '{bridge}'")]
    UnknownBridge {
        /// The VM.
        at: String,
        /// The config key.
        key: String,
        /// The bridge named.
        bridge: String,
    },
    /// Two VMs with one vmid.
    #[error("{at}.vmid: duplicate")]
    DuplicateVmid {
        /// The second VM.
        at: String,
    },
    /// A template marked running.
    #[error("{at}.running: a template cannot run")]
    RunningTemplate {
        /// The VM.
        at: String,
    },
    /// A linked clone whose base volume no VM has.
    #[error("{volid}: linked clone of missing base volume {base}")]
    MissingBase {
        /// The clone's volume.
        volid: String,
        /// `storage:base`.
        base: String,
    },
    /// A pending update without `Package` or `Version`.
    #[error("apt_update[{0}]: Package and Version must not be empty")]
    AptUpdate(usize),
    /// `host_upgrade.kernel_release` given but empty.
    #[error("host_upgrade.kernel_release: must not be empty when given")]
    HostKernel,
    /// Package state for a VM the scenario does not have.
    #[error("guest_packages[{index}].vmid: VM {vmid} is not in the scenario")]
    GuestPackagesVm {
        /// The entry.
        index: usize,
        /// The VM named.
        vmid: u32,
    },
    /// A second package state for one VM.
    #[error("guest_packages[{index}].vmid: VM {vmid} has package state already")]
    GuestPackagesTwice {
        /// The second entry.
        index: usize,
        /// The VM.
        vmid: u32,
    },
    /// A guest without a running kernel.
    #[error("guest_packages[{0}].kernel: must not be empty")]
    GuestKernel(usize),
    /// An installed package with a bad name or an empty version.
    #[error("guest_packages[{index}].installed.{package}: {message}")]
    GuestInstalled {
        /// The entry.
        index: usize,
        /// The package.
        package: String,
        /// What is wrong.
        message: &'static str,
    },
    /// An update for a VM without package state.
    #[error("guest_update[{index}].vmid: VM {vmid} has no guest_packages")]
    GuestUpdateVm {
        /// The update.
        index: usize,
        /// The VM named.
        vmid: u32,
    },
    /// An update for every VM with package state, when none has.
    #[error("guest_update[{0}]: no VM has guest_packages to offer it to")]
    GuestUpdateNowhere(usize),
    /// An update that cannot be offered to a VM.
    #[error("guest_update[{index}] (vmid {vmid}).{source}")]
    GuestUpdate {
        /// The update.
        index: usize,
        /// The VM it was checked for.
        vmid: u32,
        /// What is wrong, starting with the field.
        source: UpdateError,
    },
    /// A host-configuration table (`host_config`, `pool`, `user`, `acl`, `firewall_rule`,
    /// `backup_job`, `disk`) with a bad value.
    #[error("{field}: {message}")]
    Platform {
        /// The field, e.g. `firewall_rule[2].dport`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The file's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The one node.
    pub node: NodeSpec,
    /// Storages.
    #[serde(default)]
    pub storage: Vec<StorageSpec>,
    /// The ZFS pool behind the `zfspool` storages.
    pub zpool: ZpoolSpec,
    /// Linux bridges.
    #[serde(default)]
    pub bridge: Vec<BridgeSpec>,
    /// VMs and templates.
    #[serde(default)]
    pub vm: Vec<VmSpec>,
    /// Pending package updates (`GET /nodes/{node}/apt/update`).
    #[serde(default)]
    pub apt_update: Vec<AptPackage>,
    /// What the host's upgrade (`POST /_sim/host/upgrade`) installs besides the pending updates.
    #[serde(default)]
    pub host_upgrade: HostUpgradeSpec,
    /// Per-VM package state behind the guest agent (VMs without an entry have none).
    #[serde(default)]
    pub guest_packages: Vec<GuestPackagesSpec>,
    /// Updates the guests' archive offers.
    #[serde(default)]
    pub guest_update: Vec<GuestUpdateSpec>,
    /// DNS, time zone and the datacenter firewall switch.
    #[serde(default)]
    pub host_config: HostConfigSpec,
    /// Resource pools.
    #[serde(default)]
    pub pool: Vec<PoolSpec>,
    /// Users besides `root@pam` (which always exists), with their API tokens.
    #[serde(default)]
    pub user: Vec<UserSpec>,
    /// ACL entries.
    #[serde(default)]
    pub acl: Vec<AclSpec>,
    /// Firewall rules: `scope` (`cluster`, `node`, `vm` with `vmid`) and the parameters of
    /// `POST /cluster/firewall/rules`.
    #[serde(default)]
    pub firewall_rule: Vec<BTreeMap<String, toml::Value>>,
    /// Backup jobs: the parameters of `POST /cluster/backup` (with `id`).
    #[serde(default)]
    pub backup_job: Vec<BTreeMap<String, toml::Value>>,
    /// The node's disks; absent: the seed's NVMe mirror.
    #[serde(default)]
    pub disk: Vec<DiskSpec>,
}

/// The host's upgrade.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostUpgradeSpec {
    /// The kernel release it installs (`6.8.12-10-pve`); a reboot is then required.
    pub kernel_release: Option<String>,
    /// The upgrade fails (dpkg's error) and changes nothing.
    pub fail: bool,
}

/// One VM's package state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestPackagesSpec {
    /// The VM (or template).
    pub vmid: u32,
    /// The running, and newest installed, kernel release (`5.15.0-118-generic`).
    pub kernel: String,
    /// Package -> installed version.
    #[serde(default)]
    pub installed: BTreeMap<String, String>,
}

/// An update the guests' archive offers: a [`GuestUpdate`] with the VM it is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestUpdateSpec {
    /// The VM; absent: every VM with `guest_packages`.
    #[serde(default)]
    pub vmid: Option<u32>,
    /// Package name; one not installed is a new package.
    pub package: String,
    /// Candidate version (may be left out for a removal).
    #[serde(default)]
    pub version: String,
    /// The archive, e.g. `jammy-security` (`jammy-updates` is not security).
    #[serde(default)]
    pub archive: String,
    /// The kernel release this package installs.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Installing it writes `/var/run/reboot-required`.
    #[serde(default)]
    pub reboot: bool,
    /// The upgrade removes this installed package instead.
    #[serde(default)]
    pub remove: bool,
    /// The upgrade fails at this package.
    #[serde(default)]
    pub fail: bool,
}

impl GuestUpdateSpec {
    /// The update without its VM.
    pub fn update(&self) -> GuestUpdate {
        GuestUpdate {
            package: self.package.clone(),
            version: self.version.clone(),
            archive: self.archive.clone(),
            kernel: self.kernel.clone(),
            reboot: self.reboot,
            remove: self.remove,
            fail: self.fail,
        }
    }
}

/// The node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name (`pve1`).
    pub name: String,
    /// `cpuinfo.model`.
    pub cpu_model: String,
    /// Cores per socket.
    pub cores: u32,
    /// Sockets.
    pub sockets: u32,
    /// `cpuinfo.mhz` (a string, as Proxmox reports it).
    pub mhz: String,
    /// RAM, e.g. `128G`.
    pub memory: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// `uname -v`.
    pub kernel_version: String,
    /// `pveversion` string.
    pub pve_version: String,
    /// Host uptime in seconds when the simulator starts.
    #[serde(default)]
    pub uptime: u64,
    /// The host's own CPU fraction.
    #[serde(default)]
    pub base_cpu: f64,
    /// The host's own memory fraction.
    #[serde(default)]
    pub base_mem: f64,
}

/// A storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// Storage id.
    pub id: String,
    /// `dir` or `zfspool`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Directory (dir).
    #[serde(default)]
    pub path: Option<String>,
    /// Dataset (zfspool), e.g. `rpool/data`.
    #[serde(default)]
    pub pool: Option<String>,
    /// Content types, e.g. `images,rootdir`.
    pub content: String,
    /// Total size.
    pub capacity: String,
    /// Space used by things other than VM volumes (ISOs, backups).
    #[serde(default)]
    pub used: Option<String>,
}

/// The ZFS pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZpoolSpec {
    /// Pool name.
    pub name: String,
    /// Fragmentation in percent.
    pub frag: u32,
    /// Dedup ratio.
    pub dedup: f64,
    /// `ONLINE`, `DEGRADED`, ...
    pub health: String,
}

/// A bridge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    /// `vmbr0`.
    pub name: String,
    /// Its purpose.
    #[serde(default)]
    pub comment: String,
    /// Whether it trunks VLANs.
    #[serde(default)]
    pub vlan_aware: bool,
    /// The host's address on it.
    #[serde(default)]
    pub cidr: Option<String>,
}

/// A VM or template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// VM id.
    pub vmid: u32,
    /// Running at start.
    #[serde(default)]
    pub running: bool,
    /// Seconds it has been up at start (running VMs; their agent answers at once).
    #[serde(default)]
    pub uptime: u64,
    /// Config keys and values as in the `.conf` (strings; integers and booleans are converted).
    pub config: BTreeMap<String, toml::Value>,
}

/// One pending update, with Proxmox's capitalised keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct AptPackage {
    /// Package name.
    pub Package: String,
    /// Short description.
    pub Title: String,
    /// Long description.
    pub Description: String,
    /// `Proxmox`, `Debian`, ...
    pub Origin: String,
    /// Candidate version.
    pub Version: String,
    /// Installed version; absent for a new dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub OldVersion: Option<String>,
    /// Debian priority.
    pub Priority: String,
    /// Debian section.
    pub Section: String,
    /// Architecture.
    pub Arch: String,
    /// Not a Proxmox field, never listed: the archive the candidate comes from
    /// (`bookworm-security`), which the changelog's top entry names; `-security` makes it a
    /// security update.
    #[serde(rename = "archive", default, skip_serializing)]
    pub archive: Option<String>,
}

/// A scenario after its checks, with sizes in bytes and config values as strings.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) raw: Scenario,
    pub(crate) memory: u64,
    /// (capacity, non-volume used) per storage id.
    pub(crate) storage_sizes: BTreeMap<String, (u64, u64)>,
    /// vmid -> config.
    pub(crate) configs: BTreeMap<u32, BTreeMap<String, String>>,
    /// vmid -> pending updates, in scenario order (VMs with `guest_packages` only).
    pub(crate) guest_updates: BTreeMap<u32, Vec<GuestUpdate>>,
    /// The host-configuration tables, checked.
    pub(crate) platform: CheckedPlatform,
}

/// Reads the scenario file, or the seed when `path` is `None`.
pub(crate) fn load(path: Option<&Path>, schema: &ApiSchema) -> Result<Checked, ScenarioError> {
    let (origin, text) = match path {
        Some(p) => {
            let origin = p.display().to_string();
            match std::fs::read_to_string(p) {
                Ok(text) => (origin, text),
                Err(source) => return Err(ScenarioError::Read { origin, source }),
            }
        }
        None => ("built-in seed".to_owned(), SEED.to_owned()),
    };
    let raw: Scenario = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(source) => return Err(ScenarioError::Parse { origin, source }),
    };
    check(raw, schema).map_err(|source| ScenarioError::Check { origin, source })
}

fn size(field: &str, text: &str) -> Result<u64, CheckError> {
    parse_size(text).ok_or_else(|| CheckError::NotASize {
        field: field.to_owned(),
        text: text.to_owned(),
    })
}

fn config_string(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(if *b { "1".into() } else { "0".into() }),
        _ => None,
    }
}

fn check(raw: Scenario, schema: &ApiSchema) -> Result<Checked, CheckError> {
    let node = &raw.node;
    let node_ok = !node.name.is_empty()
        && node
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !node.name.starts_with('-')
        && !node.name.ends_with('-');
    if !node_ok {
        return Err(CheckError::NodeName(node.name.clone()));
    }
    if node.cores == 0 || node.sockets == 0 {
        return Err(CheckError::NoCpus);
    }
    for (field, value) in [
        ("node.base_cpu", node.base_cpu),
        ("node.base_mem", node.base_mem),
    ] {
        if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
            return Err(CheckError::NotAFraction { field, value });
        }
    }
    let memory = size("node.memory", &node.memory)?;

    let mut storage_sizes = BTreeMap::new();
    for (i, s) in raw.storage.iter().enumerate() {
        let at = format!("storage[{i}] ({})", s.id);
        let id_ok = s.id.len() >= 2
            && s.id.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            return Err(CheckError::StorageId { at });
        }
        match (s.kind.as_str(), &s.path, &s.pool) {
            ("dir", Some(_), None) | ("zfspool", None, Some(_)) => {}
            ("dir", _, _) => return Err(CheckError::DirStorage { at }),
            ("zfspool", _, _) => return Err(CheckError::ZfsPoolStorage { at }),
            (other, _, _) => {
                return Err(CheckError::StorageType {
                    at,
                    kind: other.to_owned(),
                });
            }
        }
        let capacity = size(&format!("{at}.capacity"), &s.capacity)?;
        let used = match &s.used {
            Some(u) => size(&format!("{at}.used"), u)?,
            None => 0,
        };
        if used > capacity {
            return Err(CheckError::OverCapacity { at });
        }
        if storage_sizes
            .insert(s.id.clone(), (capacity, used))
            .is_some()
        {
            return Err(CheckError::DuplicateStorage { at });
        }
    }

    let mut bridges = BTreeSet::new();
    for (i, b) in raw.bridge.iter().enumerate() {
        if b.name.is_empty() || !bridges.insert(b.name.clone()) {
            return Err(CheckError::Bridge {
                index: i,
                name: b.name.clone(),
            });
        }
    }

    let mut configs = BTreeMap::new();
    let mut volumes = BTreeSet::new();
    for (i, vm) in raw.vm.iter().enumerate() {
        let at = format!("vm[{i}] (vmid {})", vm.vmid);
        if !is_vmid(&vm.vmid.to_string()) || vm.vmid < 100 {
            return Err(CheckError::Vmid { at });
        }
        let mut config = BTreeMap::new();
        let mut params = Map::new();
        params.insert("node".into(), Value::String(node.name.clone()));
        params.insert("vmid".into(), Value::String(vm.vmid.to_string()));
        for (key, value) in &vm.config {
            let Some(text) = config_string(value) else {
                return Err(CheckError::ConfigType {
                    at,
                    key: key.clone(),
                });
            };
            params.insert(key.clone(), Value::String(text.clone()));
            config.insert(key.clone(), text);
        }
        if let Err(errors) =
            schema.validate_params("POST", "/nodes/{node}/qemu/{vmid}/config", &params)
            && let Some((key, msg)) = errors.into_iter().next()
        {
            return Err(CheckError::ConfigValue {
                at,
                key,
                message: msg.trim_end().to_owned(),
            });
        }
        for (key, value) in &config {
            if let Some(DiskRef::Volume {
                storage, volname, ..
            }) = parse_disk(key, value)
            {
                if !storage_sizes.contains_key(&storage) {
                    return Err(CheckError::UnknownStorage {
                        at,
                        key: key.clone(),
                        storage,
                    });
                }
                let volid = format!("{storage}:{volname}");
                if !volumes.insert(volid.clone()) {
                    return Err(CheckError::VolumeUsedTwice {
                        at,
                        key: key.clone(),
                        volid,
                    });
                }
            }
            if key.starts_with("net")
                && let Some(bridge) = value.split(',').find_map(|p| p.strip_prefix("bridge="))
                && !bridges.contains(bridge)
            {
                return Err(CheckError::UnknownBridge {
                    at,
                    key: key.clone(),
                    bridge: bridge.to_owned(),
                });
            }
        }
        if configs.insert(vm.vmid, config).is_some() {
            return Err(CheckError::DuplicateVmid { at });
        }
        let template = configs
            .get(&vm.vmid)
            .and_then(|c| c.get("template"))
            .is_some_and(|t| t == "1");
        if vm.running && template {
            return Err(CheckError::RunningTemplate { at });
        }
    }
    // Linked clones need their base volume.
    for volid in &volumes {
        if let Some((storage, rest)) = volid.split_once(':')
            && let Some((base, _)) = rest.split_once('/')
            && !volumes.contains(&format!("{storage}:{base}"))
        {
            return Err(CheckError::MissingBase {
                volid: volid.clone(),
                base: format!("{storage}:{base}"),
            });
        }
    }
    for (i, p) in raw.apt_update.iter().enumerate() {
        if p.Package.is_empty() || p.Version.is_empty() {
            return Err(CheckError::AptUpdate(i));
        }
    }
    if raw
        .host_upgrade
        .kernel_release
        .as_ref()
        .is_some_and(|k| k.trim().is_empty())
    {
        return Err(CheckError::HostKernel);
    }
    let guest_updates = check_guests(&raw, &configs)?;
    let platform = platform::check(&raw, schema, &configs.keys().copied().collect())?;
    Ok(Checked {
        raw,
        memory,
        storage_sizes,
        configs,
        guest_updates,
        platform,
    })
}

/// Checks `guest_packages` and `guest_update`; returns each VM's pending updates.
fn check_guests(
    raw: &Scenario,
    configs: &BTreeMap<u32, BTreeMap<String, String>>,
) -> Result<BTreeMap<u32, Vec<GuestUpdate>>, CheckError> {
    let mut installed: BTreeMap<u32, &BTreeMap<String, String>> = BTreeMap::new();
    for (index, guest) in raw.guest_packages.iter().enumerate() {
        if !configs.contains_key(&guest.vmid) {
            return Err(CheckError::GuestPackagesVm {
                index,
                vmid: guest.vmid,
            });
        }
        if installed.insert(guest.vmid, &guest.installed).is_some() {
            return Err(CheckError::GuestPackagesTwice {
                index,
                vmid: guest.vmid,
            });
        }
        if guest.kernel.trim().is_empty() {
            return Err(CheckError::GuestKernel(index));
        }
        for (package, version) in &guest.installed {
            let message = if !is_package_name(package) {
                "not a package name (a lower-case letter or digit, then at least one of a-z 0-9 + - .)"
            } else if version.trim().is_empty() {
                "the version must not be empty"
            } else {
                continue;
            };
            return Err(CheckError::GuestInstalled {
                index,
                package: package.clone(),
                message,
            });
        }
    }
    let mut pending: BTreeMap<u32, Vec<GuestUpdate>> =
        installed.keys().map(|vmid| (*vmid, Vec::new())).collect();
    for (index, spec) in raw.guest_update.iter().enumerate() {
        let targets: Vec<u32> = match spec.vmid {
            Some(vmid) if installed.contains_key(&vmid) => vec![vmid],
            Some(vmid) => return Err(CheckError::GuestUpdateVm { index, vmid }),
            None if installed.is_empty() => return Err(CheckError::GuestUpdateNowhere(index)),
            None => installed.keys().copied().collect(),
        };
        for vmid in targets {
            if let Some(list) = pending.get_mut(&vmid) {
                list.push(spec.update());
            }
        }
    }
    for (vmid, updates) in &pending {
        let Some(packages) = installed.get(vmid) else {
            continue;
        };
        if let Err((position, source)) = check_updates(updates, packages) {
            // Back from the VM's list to the scenario entry it came from.
            let index = raw
                .guest_update
                .iter()
                .enumerate()
                .filter(|(_, u)| u.vmid.is_none_or(|v| v == *vmid))
                .nth(position)
                .map_or(position, |(i, _)| i);
            return Err(CheckError::GuestUpdate {
                index,
                vmid: *vmid,
                source,
            });
        }
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> ApiSchema {
        match ApiSchema::locate() {
            Ok((s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_seed_is_valid() {
        let checked = load(None, &schema()).expect("seed is valid");
        assert_eq!(checked.raw.node.name, "pve1");
        assert_eq!(checked.memory, 128 << 30);
        assert_eq!(
            checked.configs.keys().copied().collect::<Vec<_>>(),
            vec![101, 102, 103, 9000]
        );
        assert_eq!(checked.configs[&101]["memory"], "8192");
        assert!(
            checked
                .raw
                .apt_update
                .iter()
                .any(|p| p.Package == "proxmox-kernel-6.8")
        );
        // Every seed guest has packages and the four security updates, in scenario order.
        assert_eq!(
            checked.guest_updates.keys().copied().collect::<Vec<_>>(),
            vec![101, 102, 103, 9000]
        );
        let plan: Vec<&str> = checked.guest_updates[&101]
            .iter()
            .map(|u| u.package.as_str())
            .collect();
        assert_eq!(plan, ["openssl", "libssl3", "libc6", "libc-bin"]);
        assert!(
            checked.guest_updates[&101]
                .iter()
                .all(|u| u.archive == "jammy-security")
        );
        assert_eq!(
            checked.raw.host_upgrade.kernel_release.as_deref(),
            Some("6.8.12-11-pve")
        );
    }

    fn error_of(edit: impl Fn(&str) -> String) -> String {
        let text = edit(SEED);
        let raw: Scenario = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => return e.to_string(),
        };
        check(raw, &schema())
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn bad_scenarios_name_the_field() {
        let e = error_of(|s| {
            s.replace(
                "tag=20\"\nagent = \"1\"\nonboot",
                "tag=9999\"\nagent = \"1\"\nonboot",
            )
        });
        assert!(
            e.starts_with("vm[1] (vmid 101).config.net0: invalid format"),
            "{e}"
        );
        let e = error_of(|s| s.replace("capacity = \"1.8T\"", "capacity = \"lots\""));
        assert!(e.contains("storage[1] (local-zfs).capacity"), "{e}");
        let e = error_of(|s| s.replace("vmid = 102", "vmid = 101"));
        assert_eq!(e, "vm[2] (vmid 101).vmid: duplicate");
        let e = error_of(|s| s.replace("cores = 16", "cores = 16\nthreads = 2"));
        assert!(e.contains("threads"), "{e}");
        let e = error_of(|s| {
            s.replace(
                "bridge=vmbr1,tag=20\"\nagent",
                "bridge=vmbr7,tag=20\"\nagent",
            )
        });
        assert!(e.contains("unknown bridge 'vmbr7'"), "{e}");
        // Host-config tables: checked against the schema of the call that would create them.
        let e = error_of(|s| {
            s.replace(
                "type = \"in\"\naction = \"ACCEPT\"\nmacro",
                "type = \"sideways\"\naction = \"ACCEPT\"\nmacro",
            )
        });
        assert!(
            e.starts_with("firewall_rule[2].type: value 'sideways'"),
            "{e}"
        );
        let e = error_of(|s| s.replace("wearout = 97", "wearout = 140"));
        assert_eq!(e, "disk[1].wearout: 140 is not a percentage (0 to 100)");
        let e = error_of(|s| s.replace("vms = [101, 102, 103]", "vms = [101, 555]"));
        assert_eq!(e, "pool[0].vms: VM 555 is not in the scenario");
    }
}
