//! The scenario's host configuration beyond VMs: what a host-config export reads (DNS, time zone,
//! pools, users and their API tokens, ACLs, firewall rules, backup jobs) and the node's disks with
//! their SMART health. Every table is optional; without one the simulator serves an empty list (a
//! fresh host), except `root@pam` and the simulator's own token, which always exist, and the disks,
//! which default to the seed's NVMe mirror.
//!
//! Firewall rules and backup jobs are flat tables of the API's own parameters and are checked
//! against the schema of the call that would create them (`POST /cluster/firewall/rules`,
//! `POST /cluster/backup`), so a scenario cannot describe what a real host could not hold.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CheckError, Scenario, config_string};
use crate::schema::ApiSchema;

/// Node-level settings (`[host_config]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfigSpec {
    /// `GET /nodes/{node}/time` `timezone`.
    pub timezone: String,
    /// Its offset from UTC in minutes (the simulator has no time zone database).
    pub utc_offset_minutes: i32,
    /// DNS search domain; also the domain of the node's name in `/etc/hosts`.
    pub dns_search: String,
    /// Up to three name servers.
    pub dns_servers: Vec<String>,
    /// Whether the datacenter firewall is enabled (`/cluster/firewall/options` `enable`).
    pub firewall: bool,
}

impl Default for HostConfigSpec {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
            utc_offset_minutes: 0,
            dns_search: "lan".into(),
            dns_servers: Vec::new(),
            firewall: false,
        }
    }
}

/// A resource pool (`[[pool]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Pool id.
    pub poolid: String,
    /// Comment.
    #[serde(default)]
    pub comment: String,
    /// Member VMs (a VM destroyed later drops out).
    #[serde(default)]
    pub vms: Vec<u32>,
    /// Member storages.
    #[serde(default)]
    pub storages: Vec<String>,
}

/// An API token of a user: its id only (a simulator holds no secrets but its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Token id (the part after `!`).
    pub tokenid: String,
    /// Comment.
    #[serde(default)]
    pub comment: String,
    /// Privilege separation (ACLs of its own) — Proxmox's default.
    #[serde(default = "yes")]
    pub privsep: bool,
    /// Expiry, epoch seconds; 0 never.
    #[serde(default)]
    pub expire: u64,
}

fn yes() -> bool {
    true
}

/// A user (`[[user]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// `name@realm` (realm `pam` or `pve`).
    pub userid: String,
    /// Comment.
    #[serde(default)]
    pub comment: String,
    /// E-mail address.
    #[serde(default)]
    pub email: String,
    /// Enabled.
    #[serde(default = "yes")]
    pub enable: bool,
    /// Groups it belongs to (created by being named).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Its API tokens.
    #[serde(default)]
    pub tokens: Vec<TokenSpec>,
}

/// An ACL entry (`[[acl]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    /// Object path (`/`, `/vms/101`, `/pool/k3s`).
    pub path: String,
    /// Role.
    pub roleid: String,
    /// `user`, `group` or `token`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The user, group or token id (`root@pam!proxflow`).
    pub ugid: String,
    /// Inherited by the objects below.
    #[serde(default = "yes")]
    pub propagate: bool,
}

/// A disk of the node (`[[disk]]`), as `disks/list` and `disks/smart` report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// `/dev/nvme0n1`.
    pub devpath: String,
    /// Model.
    #[serde(default = "default_model")]
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Size (Proxmox units or bytes).
    #[serde(default = "default_size")]
    pub size: String,
    /// SMART overall health: `PASSED` or `FAILED`.
    #[serde(default = "passed")]
    pub health: String,
    /// Life left in percent (100 = new), as Proxmox's `wearout`.
    #[serde(default = "default_wearout")]
    pub wearout: u8,
}

fn default_model() -> String {
    "SAMSUNG MZQL21T9HCJR-00A07".into()
}

fn default_size() -> String {
    "1920383410176".into()
}

fn passed() -> String {
    "PASSED".into()
}

fn default_wearout() -> u8 {
    98
}

/// The seed host's NVMe mirror under `rpool`: the disks of a scenario without `[[disk]]`.
pub(crate) fn default_disks() -> Vec<DiskSpec> {
    ["S5XANA0R100001", "S5XANA0R100002"]
        .iter()
        .enumerate()
        .map(|(i, serial)| DiskSpec {
            devpath: format!("/dev/nvme{i}n1"),
            model: default_model(),
            serial: (*serial).to_owned(),
            size: default_size(),
            health: passed(),
            wearout: default_wearout(),
        })
        .collect()
}

/// The checked tables, with rules and jobs as the strings of their config files.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckedPlatform {
    /// (scope, rule): scope `cluster`, `node` or a VMID.
    pub(crate) firewall_rules: Vec<(RuleScope, BTreeMap<String, String>)>,
    /// Backup jobs by id.
    pub(crate) backup_jobs: BTreeMap<String, BTreeMap<String, String>>,
    /// Disk sizes in bytes, by devpath.
    pub(crate) disk_sizes: BTreeMap<String, u64>,
}

/// Where a firewall rule lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RuleScope {
    Cluster,
    Node,
    Vm(u32),
}

/// Whether `id` is a pool, group or token id as Proxmox takes them.
fn is_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.len() >= 2
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_userid(id: &str) -> bool {
    id.split_once('@').is_some_and(|(name, realm)| {
        !name.is_empty() && !name.contains([':', '/', '@']) && is_id(realm) && id.len() <= 64
    })
}

/// Converts a flat table to strings, checks it against `POST template`; `at` names the entry.
fn check_table(
    schema: &ApiSchema,
    template: &str,
    table: &BTreeMap<String, toml::Value>,
    at: &str,
    skip: &[&str],
) -> Result<BTreeMap<String, String>, CheckError> {
    let mut out = BTreeMap::new();
    let mut params = Map::new();
    for (key, value) in table {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let text = config_string(value).ok_or_else(|| CheckError::Platform {
            field: format!("{at}.{key}"),
            message: "must be a string, number or boolean".into(),
        })?;
        params.insert(key.clone(), Value::String(text.clone()));
        out.insert(key.clone(), text);
    }
    if let Err(errors) = schema.validate_params("POST", template, &params)
        && let Some((key, msg)) = errors.into_iter().next()
    {
        return Err(CheckError::Platform {
            field: format!("{at}.{key}"),
            message: msg.trim_end().to_owned(),
        });
    }
    Ok(out)
}

fn bad(field: String, message: impl Into<String>) -> CheckError {
    CheckError::Platform {
        field,
        message: message.into(),
    }
}

/// Checks the platform tables of `raw`, whose VMs are `vmids`.
pub(crate) fn check(
    raw: &Scenario,
    schema: &ApiSchema,
    vmids: &BTreeSet<u32>,
) -> Result<CheckedPlatform, CheckError> {
    let hc = &raw.host_config;
    if hc.dns_servers.len() > 3 {
        return Err(bad(
            "host_config.dns_servers".into(),
            "at most three name servers",
        ));
    }
    if let Some(bad_ip) = hc
        .dns_servers
        .iter()
        .find(|s| s.parse::<std::net::IpAddr>().is_err())
    {
        return Err(bad(
            "host_config.dns_servers".into(),
            format!("'{bad_ip}' is not an IP address"),
        ));
    }
    if hc.utc_offset_minutes.abs() > 14 * 60 {
        return Err(bad(
            "host_config.utc_offset_minutes".into(),
            "must be within ±840 minutes",
        ));
    }
    let storages: BTreeSet<&str> = raw.storage.iter().map(|s| s.id.as_str()).collect();
    let mut pools = BTreeSet::new();
    for (i, pool) in raw.pool.iter().enumerate() {
        let at = format!("pool[{i}]");
        if !is_id(&pool.poolid) || !pools.insert(pool.poolid.clone()) {
            return Err(bad(format!("{at}.poolid"), "invalid or duplicate pool id"));
        }
        if let Some(vmid) = pool.vms.iter().find(|v| !vmids.contains(v)) {
            return Err(bad(
                format!("{at}.vms"),
                format!("VM {vmid} is not in the scenario"),
            ));
        }
        if let Some(s) = pool
            .storages
            .iter()
            .find(|s| !storages.contains(s.as_str()))
        {
            return Err(bad(
                format!("{at}.storages"),
                format!("unknown storage '{s}'"),
            ));
        }
    }
    let mut users = BTreeSet::new();
    for (i, user) in raw.user.iter().enumerate() {
        let at = format!("user[{i}]");
        if !is_userid(&user.userid) || !users.insert(user.userid.clone()) {
            return Err(bad(
                format!("{at}.userid"),
                "not a unique user id of the form name@realm",
            ));
        }
        if let Some(g) = user.groups.iter().find(|g| !is_id(g)) {
            return Err(bad(
                format!("{at}.groups"),
                format!("'{g}' is not a group id"),
            ));
        }
        let mut tokens = BTreeSet::new();
        for (j, token) in user.tokens.iter().enumerate() {
            if !is_id(&token.tokenid) || !tokens.insert(token.tokenid.clone()) {
                return Err(bad(
                    format!("{at}.tokens[{j}].tokenid"),
                    "invalid or duplicate token id",
                ));
            }
        }
    }
    for (i, acl) in raw.acl.iter().enumerate() {
        let at = format!("acl[{i}]");
        if !acl.path.starts_with('/') {
            return Err(bad(format!("{at}.path"), "must start with '/'"));
        }
        if !matches!(acl.kind.as_str(), "user" | "group" | "token") {
            return Err(bad(format!("{at}.type"), "must be user, group or token"));
        }
        if acl.roleid.is_empty() || acl.ugid.is_empty() {
            return Err(bad(at, "roleid and ugid must not be empty"));
        }
    }
    let mut checked = CheckedPlatform::default();
    for (i, rule) in raw.firewall_rule.iter().enumerate() {
        let at = format!("firewall_rule[{i}]");
        let scope = match rule.get("scope").and_then(toml::Value::as_str) {
            Some("cluster") | None => RuleScope::Cluster,
            Some("node") => RuleScope::Node,
            Some("vm") => {
                let vmid = rule
                    .get("vmid")
                    .and_then(toml::Value::as_integer)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| vmids.contains(v))
                    .ok_or_else(|| bad(format!("{at}.vmid"), "a VM of the scenario is needed"))?;
                RuleScope::Vm(vmid)
            }
            Some(other) => {
                return Err(bad(
                    format!("{at}.scope"),
                    format!("'{other}' is not one of cluster, node, vm"),
                ));
            }
        };
        let table = check_table(
            schema,
            "/cluster/firewall/rules",
            rule,
            &at,
            &["scope", "vmid"],
        )?;
        checked.firewall_rules.push((scope, table));
    }
    for (i, job) in raw.backup_job.iter().enumerate() {
        let at = format!("backup_job[{i}]");
        let table = check_table(schema, "/cluster/backup", job, &at, &[])?;
        let id = table
            .get("id")
            .cloned()
            .ok_or_else(|| bad(format!("{at}.id"), "a job needs an id"))?;
        if checked.backup_jobs.insert(id, table).is_some() {
            return Err(bad(format!("{at}.id"), "duplicate job id"));
        }
    }
    let mut devpaths = BTreeSet::new();
    for (i, disk) in raw.disk.iter().enumerate() {
        let at = format!("disk[{i}]");
        let path_ok = disk.devpath.strip_prefix("/dev/").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '/')
        });
        if !path_ok || !devpaths.insert(disk.devpath.clone()) {
            return Err(bad(
                format!("{at}.devpath"),
                "not a unique /dev/<name> path",
            ));
        }
        check_health(&disk.health, disk.wearout).map_err(|(f, m)| bad(format!("{at}.{f}"), m))?;
        let size = crate::schema::parse_size(&disk.size)
            .ok_or_else(|| bad(format!("{at}.size"), "not a size"))?;
        checked.disk_sizes.insert(disk.devpath.clone(), size);
    }
    Ok(checked)
}

/// Checks a SMART health and a wearout; `Err` is (field, message).
pub(crate) fn check_health(health: &str, wearout: u8) -> Result<(), (&'static str, String)> {
    if !matches!(health, "PASSED" | "FAILED") {
        return Err(("health", format!("'{health}' is not PASSED or FAILED")));
    }
    if wearout > 100 {
        return Err((
            "wearout",
            format!("{wearout} is not a percentage (0 to 100)"),
        ));
    }
    Ok(())
}
