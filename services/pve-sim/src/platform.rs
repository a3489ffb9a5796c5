//! The host's configuration beyond VMs, as the state keeps it: DNS and time zone, pools, users and
//! API tokens, ACLs, firewall rules, backup jobs, and the node's disks with their SMART health
//! (which `PUT /_sim/host/disk` changes). Built from the scenario (`crate::scenario`'s platform
//! tables); the handlers that read it are in `crate::api` (`access`, `firewall`, `hostconfig`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::scenario::{
    AclSpec, Checked, DiskSpec, HostConfigSpec, PoolSpec, RuleScope, TokenSpec, UserSpec,
    check_health, default_disks,
};

/// One disk of the node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Disk {
    pub(crate) spec: DiskSpec,
    pub(crate) size: u64,
}

/// The host-configuration part of the state.
#[derive(Debug, Clone)]
pub(crate) struct Platform {
    pub(crate) host_config: HostConfigSpec,
    pub(crate) pools: Vec<PoolSpec>,
    /// Sorted by user id, `root@pam` and the simulator's token included.
    pub(crate) users: Vec<UserSpec>,
    pub(crate) acl: Vec<AclSpec>,
    pub(crate) firewall_rules: Vec<(RuleScope, BTreeMap<String, String>)>,
    pub(crate) backup_jobs: BTreeMap<String, BTreeMap<String, String>>,
    pub(crate) disks: Vec<Disk>,
}

/// A `PUT /_sim/host/disk` request: the disk and what to change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskHealth {
    /// The disk, e.g. `/dev/nvme1n1`.
    pub devpath: String,
    /// `PASSED` or `FAILED`; unchanged when absent.
    #[serde(default)]
    pub health: Option<String>,
    /// Life left in percent (100 = new); unchanged when absent.
    #[serde(default)]
    pub wearout: Option<u8>,
}

/// Why a disk's health was not changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskHealthError {
    /// No such disk (404).
    #[error("no such disk '{0}'")]
    NoDisk(String),
    /// A bad value (400); the first word is the field.
    #[error("{field}: {message}")]
    Invalid {
        /// `health` or `wearout`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The digest of a simulated config file: SHA-256 of its JSON, cut to SHA-1's 40 hex digits
/// (the same shape as Proxmox's, and stable: the same content gives the same digest).
pub(crate) fn digest_of(value: &Value) -> String {
    let mut hex = hex::encode(Sha256::digest(value.to_string().as_bytes()));
    hex.truncate(40);
    hex
}

impl Platform {
    /// From the checked scenario; `token_id` is the simulator's own `user@realm!tokenid`.
    pub(crate) fn new(scenario: &Checked, token_id: &str) -> Self {
        let raw = &scenario.raw;
        let mut users: BTreeMap<String, UserSpec> = raw
            .user
            .iter()
            .map(|u| (u.userid.clone(), u.clone()))
            .collect();
        users.entry("root@pam".into()).or_insert_with(|| UserSpec {
            userid: "root@pam".into(),
            comment: String::new(),
            email: format!("root@{}.{}", raw.node.name, raw.host_config.dns_search),
            enable: true,
            groups: Vec::new(),
            tokens: Vec::new(),
        });
        if let Some((user, token)) = token_id.split_once('!') {
            let entry = users.entry(user.to_owned()).or_insert_with(|| UserSpec {
                userid: user.to_owned(),
                comment: String::new(),
                email: String::new(),
                enable: true,
                groups: Vec::new(),
                tokens: Vec::new(),
            });
            if !entry.tokens.iter().any(|t| t.tokenid == token) {
                entry.tokens.push(TokenSpec {
                    tokenid: token.to_owned(),
                    comment: "proxflow automation".into(),
                    privsep: false,
                    expire: 0,
                });
            }
        }
        let specs = if raw.disk.is_empty() {
            // Without disks of its own, a scenario whose pool is not ONLINE has failing disks.
            let health = if raw.zpool.health == "ONLINE" {
                "PASSED"
            } else {
                "FAILED"
            };
            default_disks()
                .into_iter()
                .map(|d| DiskSpec {
                    health: health.into(),
                    ..d
                })
                .collect()
        } else {
            raw.disk.clone()
        };
        let disks = specs
            .into_iter()
            .map(|spec| Disk {
                size: scenario
                    .platform
                    .disk_sizes
                    .get(&spec.devpath)
                    .copied()
                    .or_else(|| crate::schema::parse_size(&spec.size))
                    .unwrap_or(0),
                spec,
            })
            .collect();
        Self {
            host_config: raw.host_config.clone(),
            pools: raw.pool.clone(),
            users: users.into_values().collect(),
            acl: raw.acl.clone(),
            firewall_rules: scenario.platform.firewall_rules.clone(),
            backup_jobs: scenario.platform.backup_jobs.clone(),
            disks,
        }
    }

    pub(crate) fn disk(&self, devpath: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.spec.devpath == devpath)
    }

    /// Changes a disk's SMART health and wearout; answers the disk as it now is.
    pub(crate) fn set_disk_health(&mut self, change: &DiskHealth) -> Result<Disk, DiskHealthError> {
        let disk = self
            .disks
            .iter_mut()
            .find(|d| d.spec.devpath == change.devpath)
            .ok_or_else(|| DiskHealthError::NoDisk(change.devpath.clone()))?;
        let health = change
            .health
            .clone()
            .unwrap_or_else(|| disk.spec.health.clone());
        let wearout = change.wearout.unwrap_or(disk.spec.wearout);
        check_health(&health, wearout)
            .map_err(|(field, message)| DiskHealthError::Invalid { field, message })?;
        disk.spec.health = health;
        disk.spec.wearout = wearout;
        Ok(disk.clone())
    }
}
