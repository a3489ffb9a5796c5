//! Scenario files: the platform the simulator starts with (node, storages, bridges, VMs, pending
//! apt updates). The built-in default is `scenarios/seed.toml`, compiled in.
//!
//! Parsing is strict (`deny_unknown_fields`), and every semantic problem is reported with the
//! field it is about (`vm[1] (vmid 101).config.net0: ...`), because a scenario typo should fail at
//! start, not show up later as a strange answer. VM config values are checked against the official
//! schema the same way a `POST .../config` would be.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::ApiSchema;
use crate::schema::formats::{is_vmid, parse_size};
use crate::volumes::{DiskRef, parse_disk};

/// The seed platform, compiled in.
pub const SEED: &str = include_str!("../scenarios/seed.toml");

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid scenario {origin}: {message}")]
pub struct ScenarioError {
    /// The file, or `built-in seed`.
    pub origin: String,
    /// The problem, naming the field.
    pub message: String,
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
}

/// Reads the scenario file, or the seed when `path` is `None`.
pub(crate) fn load(path: Option<&Path>, schema: &ApiSchema) -> Result<Checked, ScenarioError> {
    let (origin, text) = match path {
        Some(p) => {
            let origin = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ScenarioError {
                origin: origin.clone(),
                message: format!("cannot read it: {e}"),
            })?;
            (origin, text)
        }
        None => ("built-in seed".to_owned(), SEED.to_owned()),
    };
    let fail = |message: String| ScenarioError {
        origin: origin.clone(),
        message,
    };
    let raw: Scenario = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    check(raw, schema).map_err(fail)
}

fn size(field: &str, text: &str) -> Result<u64, String> {
    parse_size(text).ok_or_else(|| {
        format!("{field}: '{text}' is not a size (a number with an optional K, M, G or T suffix)")
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

fn check(raw: Scenario, schema: &ApiSchema) -> Result<Checked, String> {
    let node = &raw.node;
    let node_ok = !node.name.is_empty()
        && node
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !node.name.starts_with('-')
        && !node.name.ends_with('-');
    if !node_ok {
        return Err(format!(
            "node.name: '{}' is not a valid node name",
            node.name
        ));
    }
    if node.cores == 0 || node.sockets == 0 {
        return Err("node.cores, node.sockets: must be at least 1".into());
    }
    for (field, v) in [
        ("node.base_cpu", node.base_cpu),
        ("node.base_mem", node.base_mem),
    ] {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            return Err(format!("{field}: {v} is not a fraction between 0 and 1"));
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
            return Err(format!("{at}.id: not a valid storage id"));
        }
        match (s.kind.as_str(), &s.path, &s.pool) {
            ("dir", Some(_), None) | ("zfspool", None, Some(_)) => {}
            ("dir", _, _) => return Err(format!("{at}: a dir storage needs `path` and no `pool`")),
            ("zfspool", _, _) => {
                return Err(format!(
                    "{at}: a zfspool storage needs `pool` and no `path`"
                ));
            }
            (other, _, _) => {
                return Err(format!("{at}.type: '{other}' is not one of dir, zfspool"));
            }
        }
        let capacity = size(&format!("{at}.capacity"), &s.capacity)?;
        let used = match &s.used {
            Some(u) => size(&format!("{at}.used"), u)?,
            None => 0,
        };
        if used > capacity {
            return Err(format!("{at}.used: larger than the capacity"));
        }
        if storage_sizes
            .insert(s.id.clone(), (capacity, used))
            .is_some()
        {
            return Err(format!("{at}.id: duplicate storage id"));
        }
    }

    let mut bridges = BTreeSet::new();
    for (i, b) in raw.bridge.iter().enumerate() {
        if b.name.is_empty() || !bridges.insert(b.name.clone()) {
            return Err(format!("bridge[{i}].name: empty or duplicate '{}'", b.name));
        }
    }

    let mut configs = BTreeMap::new();
    let mut volumes = BTreeSet::new();
    for (i, vm) in raw.vm.iter().enumerate() {
        let at = format!("vm[{i}] (vmid {})", vm.vmid);
        if !is_vmid(&vm.vmid.to_string()) || vm.vmid < 100 {
            return Err(format!("{at}.vmid: not a VM id (100 to 999999999)"));
        }
        let mut config = BTreeMap::new();
        let mut params = Map::new();
        params.insert("node".into(), Value::String(node.name.clone()));
        params.insert("vmid".into(), Value::String(vm.vmid.to_string()));
        for (key, value) in &vm.config {
            let Some(text) = config_string(value) else {
                return Err(format!(
                    "{at}.config.{key}: must be a string, number or boolean"
                ));
            };
            params.insert(key.clone(), Value::String(text.clone()));
            config.insert(key.clone(), text);
        }
        if let Err(errors) =
            schema.validate_params("POST", "/nodes/{node}/qemu/{vmid}/config", &params)
            && let Some((key, msg)) = errors.into_iter().next()
        {
            return Err(format!("{at}.config.{key}: {}", msg.trim_end()));
        }
        for (key, value) in &config {
            if let Some(DiskRef::Volume {
                storage, volname, ..
            }) = parse_disk(key, value)
            {
                if !storage_sizes.contains_key(&storage) {
                    return Err(format!("{at}.config.{key}: unknown storage '{storage}'"));
                }
                if !volumes.insert(format!("{storage}:{volname}")) {
                    return Err(format!(
                        "{at}.config.{key}: volume {storage}:{volname} is used twice"
                    ));
                }
            }
            if key.starts_with("net")
                && let Some(bridge) = value.split(',').find_map(|p| p.strip_prefix("bridge="))
                && !bridges.contains(bridge)
            {
                return Err(format!("{at}.config.{key}: unknown bridge '{bridge}'"));
            }
        }
        if configs.insert(vm.vmid, config).is_some() {
            return Err(format!("{at}.vmid: duplicate"));
        }
        let template = configs
            .get(&vm.vmid)
            .and_then(|c| c.get("template"))
            .is_some_and(|t| t == "1");
        if vm.running && template {
            return Err(format!("{at}.running: a template cannot run"));
        }
    }
    // Linked clones need their base volume.
    for volid in &volumes {
        if let Some((storage, rest)) = volid.split_once(':')
            && let Some((base, _)) = rest.split_once('/')
            && !volumes.contains(&format!("{storage}:{base}"))
        {
            return Err(format!(
                "{volid}: linked clone of missing base volume {storage}:{base}"
            ));
        }
    }
    for (i, p) in raw.apt_update.iter().enumerate() {
        if p.Package.is_empty() || p.Version.is_empty() {
            return Err(format!(
                "apt_update[{i}]: Package and Version must not be empty"
            ));
        }
    }
    Ok(Checked {
        raw,
        memory,
        storage_sizes,
        configs,
    })
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
    }

    fn error_of(edit: impl Fn(&str) -> String) -> String {
        let text = edit(SEED);
        let raw: Scenario = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => return e.to_string(),
        };
        check(raw, &schema()).expect_err("must be refused")
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
    }
}
