//! Collects a host's configuration into a [`Bundle`]: the Proxmox API (datacenter, node, every VM),
//! the ZFS runner (pool and dataset properties), and an optional command for the files the API
//! cannot give (`/etc/network/interfaces`, a `sqlite3 .backup` of `/etc/pve`'s `config.db`, which
//! a file-level backup misses because `/etc/pve` is a FUSE mount).

use futures::{StreamExt, TryStreamExt};
use proxflow_pve::{Params, PveClient, PveError};
use proxflow_runtime::command::{self, CommandError, CommandSpec};
use proxflow_zfs::{Zfs, ZfsError};
use reqwest::Method;
use serde_json::{Value, json};

use super::normalize::{normalize, pending_only};
use super::rebuild;
use crate::bundle::Bundle;
use crate::config::ExportConfig;

/// One API read: (bundle path, API path, query parameters).
type Source = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Datacenter-wide sources.
const DATACENTER: &[Source] = &[
    ("cluster/options.json", "/cluster/options", &[]),
    (
        "cluster/firewall/options.json",
        "/cluster/firewall/options",
        &[],
    ),
    (
        "cluster/firewall/rules.json",
        "/cluster/firewall/rules",
        &[],
    ),
    (
        "cluster/firewall/groups.json",
        "/cluster/firewall/groups",
        &[],
    ),
    (
        "cluster/firewall/aliases.json",
        "/cluster/firewall/aliases",
        &[],
    ),
    (
        "cluster/firewall/ipset.json",
        "/cluster/firewall/ipset",
        &[],
    ),
    ("cluster/replication.json", "/cluster/replication", &[]),
    ("cluster/backup.json", "/cluster/backup", &[]),
    ("storage.json", "/storage", &[]),
    // `full=1` lists each user's API tokens: their ids and settings, never a secret (Proxmox shows
    // a token's secret once, at creation).
    ("access/users.json", "/access/users", &[("full", "1")]),
    ("access/groups.json", "/access/groups", &[]),
    ("access/roles.json", "/access/roles", &[]),
    ("access/acl.json", "/access/acl", &[]),
    ("access/domains.json", "/access/domains", &[]),
    ("pools.json", "/pools", &[]),
];

/// Per-node sources, under `nodes/<node>/`.
const NODE: &[(&str, &str)] = &[
    ("network.json", "/network"),
    ("dns.json", "/dns"),
    ("hosts.json", "/hosts"),
    ("time.json", "/time"),
    ("apt-repositories.json", "/apt/repositories"),
    ("firewall/options.json", "/firewall/options"),
    ("firewall/rules.json", "/firewall/rules"),
];

/// Per-VM sources, under `vms/<vmid>/` (`pending` is filtered to what is pending).
const VM: &[(&str, &str)] = &[
    ("config.json", "/config"),
    ("pending.json", "/pending"),
    ("firewall/options.json", "/firewall/options"),
    ("firewall/rules.json", "/firewall/rules"),
];

/// VMs read at once: a 200-VM host is 800 reads, which one at a time would take a minute.
const VM_CONCURRENCY: usize = 8;

/// Why a collection failed. An export missing a part is not an export: any failure fails it.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A Proxmox read failed.
    #[error("reading {what} from Proxmox: {source}")]
    Pve {
        /// What was read.
        what: String,
        /// The client's error.
        #[source]
        source: PveError,
    },
    /// A ZFS read failed.
    #[error("reading {what}: {source}")]
    Zfs {
        /// What was read.
        what: String,
        /// The runner's error.
        #[source]
        source: ZfsError,
    },
    /// The collect command failed or could not run.
    #[error("export.collect_command: {0}")]
    Command(String),
    /// A file it wrote could not be read.
    #[error("export.collect_command's file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl CollectError {
    /// Whether trying again may help: Proxmox or ZFS briefly away, not a refused or unknown read.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pve { source, .. } => source.is_transient(),
            Self::Zfs { .. } | Self::Command(_) => true,
            Self::File { .. } => false,
        }
    }
}

/// What collects.
#[derive(Debug, Clone)]
pub struct Collector {
    /// The Proxmox host.
    pub pve: PveClient,
    /// Its ZFS.
    pub zfs: Zfs,
    /// `[export]`.
    pub config: ExportConfig,
}

impl Collector {
    async fn get(
        &self,
        what: &str,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, CollectError> {
        let params = params.iter().fold(Params::new(), |p, (k, v)| p.set(k, v));
        self.pve
            .call_value(Method::GET, path, &params)
            .await
            .map_err(|source| CollectError::Pve {
                what: what.to_owned(),
                source,
            })
    }

    /// Everything, as a bundle (with its `REBUILD.md`).
    pub async fn collect(&self) -> Result<Bundle, CollectError> {
        let mut bundle = Bundle::new();
        for (file, path, params) in DATACENTER {
            let value = self.get(path, path, params).await?;
            bundle.insert_json(file, &normalize(value));
        }
        let node = self.pve.node().to_owned();
        for (file, path) in NODE {
            let api = format!("/nodes/{node}{path}");
            let value = self.get(&api, &api, &[]).await?;
            bundle.insert_json(&format!("nodes/{node}/{file}"), &normalize(value));
        }
        let vms = self
            .pve
            .list_vms()
            .await
            .map_err(|source| CollectError::Pve {
                what: format!("/nodes/{node}/qemu"),
                source,
            })?;
        let mut vmids: Vec<u32> = vms.iter().map(|v| v.vmid).collect();
        vmids.sort_unstable();
        let per_vm: Vec<(u32, Vec<(String, Value)>)> = futures::stream::iter(vmids)
            .map(|vmid| self.vm(&node, vmid))
            .buffered(VM_CONCURRENCY)
            .try_collect()
            .await?;
        for (vmid, files) in per_vm {
            for (file, value) in files {
                bundle.insert_json(&format!("vms/{vmid}/{file}"), &value);
            }
        }
        self.zfs_into(&mut bundle).await?;
        if !self.config.collect_command.is_empty() {
            self.command_into(&mut bundle).await?;
        }
        let rebuild = rebuild::render(&bundle, &node);
        bundle.insert_bytes(rebuild::FILE, rebuild.into_bytes());
        Ok(bundle)
    }

    async fn vm(&self, node: &str, vmid: u32) -> Result<(u32, Vec<(String, Value)>), CollectError> {
        let mut files = Vec::new();
        for (file, path) in VM {
            let api = format!("/nodes/{node}/qemu/{vmid}{path}");
            let value = self.get(&api, &api, &[]).await?;
            let value = if *file == "pending.json" {
                let pending = pending_only(value);
                // No pending changes, no file: the common case stays out of the diff.
                if pending.as_array().is_some_and(Vec::is_empty) {
                    continue;
                }
                pending
            } else {
                normalize(value)
            };
            files.push(((*file).to_owned(), value));
        }
        Ok((vmid, files))
    }

    async fn zfs_into(&self, bundle: &mut Bundle) -> Result<(), CollectError> {
        let zfs_err = |what: String| move |source| CollectError::Zfs { what, source };
        let mut pools = serde_json::Map::new();
        let mut datasets = serde_json::Map::new();
        for pool in &self.config.pools {
            let props = self
                .zfs
                .pool_properties(pool)
                .await
                .map_err(zfs_err(format!("zpool get all {pool}")))?;
            let props: serde_json::Map<String, Value> = props
                .into_iter()
                .map(|(p, v, source)| (p, json!({"value": v, "source": source})))
                .collect();
            pools.insert(pool.clone(), Value::Object(props));
            let local = self
                .zfs
                .local_properties(pool)
                .await
                .map_err(zfs_err(format!("zfs get -r -s local,received all {pool}")))?;
            for (dataset, property, value, source) in local {
                let entry = datasets
                    .entry(dataset)
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                if let Value::Object(map) = entry {
                    map.insert(property, json!({"value": value, "source": source}));
                }
            }
        }
        bundle.insert_json("zfs/pools.json", &Value::Object(pools));
        bundle.insert_json("zfs/datasets.json", &Value::Object(datasets));
        Ok(())
    }

    /// Runs `collect_command` with `PROXFLOW_EXPORT_DIR` set to an empty directory; every file it
    /// leaves there goes into the bundle under `host/`.
    async fn command_into(&self, bundle: &mut Bundle) -> Result<(), CollectError> {
        let dir = tempfile_dir().map_err(|e| CollectError::Command(e.to_string()))?;
        let spec = CommandSpec {
            argv: self.config.collect_command.clone(),
            env: vec![(
                "PROXFLOW_EXPORT_DIR".to_owned(),
                dir.path().display().to_string(),
            )],
            timeout: self.config.collect_timeout,
            ..CommandSpec::default()
        };
        let out = command::run(&spec)
            .await
            .map_err(|e: CommandError| CollectError::Command(e.to_string()))?;
        if !out.success() {
            return Err(CollectError::Command(format!(
                "{}: {}",
                out.summary(),
                out.stderr.trim()
            )));
        }
        let files = crate::bundle::files_under(dir.path())
            .map_err(|e| CollectError::Command(format!("reading what it wrote: {e}")))?;
        for rel in files {
            let bytes =
                std::fs::read(dir.path().join(&rel)).map_err(|source| CollectError::File {
                    path: rel.clone(),
                    source,
                })?;
            bundle.insert_bytes(&format!("host/{rel}"), bytes);
        }
        Ok(())
    }
}

fn tempfile_dir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("proxflow-export-")
        .tempdir()
}
