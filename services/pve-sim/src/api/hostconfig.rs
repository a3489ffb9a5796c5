//! The reads a host-config export makes besides VMs, firewall and access: the datacenter storage
//! config (`storage.cfg`), pools, `datacenter.cfg`, the node's DNS, `/etc/hosts` and time, its APT
//! repositories, and the replication and backup jobs. Every answer is a function of the state
//! alone (sorted, digests of the content), so an unchanged host exports byte-identical JSON — except
//! `time`, which is the clock.

use serde_json::{Value, json};

use super::{ApiError, P, Reply, failed};
use crate::platform::digest_of;
use crate::state::{State, StorageKind, now_epoch};

/// An APT source line of the host: (file, types, URI, suite, components, enabled).
type Repo = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    bool,
);

/// The repositories of a PVE 8 host on the no-subscription repository.
const REPOS: [Repo; 5] = [
    (
        "/etc/apt/sources.list",
        "deb",
        "http://deb.debian.org/debian",
        "bookworm",
        &["main", "contrib"],
        true,
    ),
    (
        "/etc/apt/sources.list",
        "deb",
        "http://deb.debian.org/debian",
        "bookworm-updates",
        &["main", "contrib"],
        true,
    ),
    (
        "/etc/apt/sources.list",
        "deb",
        "http://security.debian.org/debian-security",
        "bookworm-security",
        &["main", "contrib"],
        true,
    ),
    (
        "/etc/apt/sources.list.d/pve-enterprise.list",
        "deb",
        "https://enterprise.proxmox.com/debian/pve",
        "bookworm",
        &["pve-enterprise"],
        false,
    ),
    (
        "/etc/apt/sources.list.d/pve-no-subscription.list",
        "deb",
        "http://download.proxmox.com/debian/pve",
        "bookworm",
        &["pve-no-subscription"],
        true,
    ),
];

impl State {
    /// A storage's `storage.cfg` section as `GET /storage` lists it.
    fn storage_config_entry(&self, id: &str) -> Option<Value> {
        let s = self.storage(id)?;
        let mut entry = json!({
            "storage": s.id,
            "type": s.kind.name(),
            "content": s.content,
        });
        match s.kind {
            StorageKind::Dir => {
                entry["path"] = json!(s.path);
                entry["prune-backups"] = json!("keep-all=1");
                entry["shared"] = json!(0);
            }
            StorageKind::ZfsPool => {
                entry["pool"] = json!(s.pool);
                entry["sparse"] = json!(1);
            }
        }
        Some(entry)
    }

    /// `storage.cfg`'s digest: of every section.
    fn storage_cfg_digest(&self) -> String {
        let all: Vec<Value> = self
            .storages
            .iter()
            .filter_map(|s| self.storage_config_entry(&s.id))
            .collect();
        digest_of(&json!(all))
    }

    /// `GET /storage` (datacenter storage config), optionally of one `type`, sorted by id.
    pub(super) fn storage_config_list(&self, p: &P<'_>) -> Value {
        let kind = p.str("type");
        let digest = self.storage_cfg_digest();
        let mut ids: Vec<&str> = self.storages.iter().map(|s| s.id.as_str()).collect();
        ids.sort_unstable();
        json!(
            ids.into_iter()
                .filter_map(|id| self.storage_config_entry(id))
                .filter(|e| kind.as_deref().is_none_or(|k| e["type"] == k))
                .map(|mut e| {
                    e["digest"] = json!(digest);
                    e
                })
                .collect::<Vec<_>>()
        )
    }

    /// `GET /storage/{storage}`.
    pub(super) fn storage_config(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let id = p.str("storage").unwrap_or_default();
        let mut entry = self
            .storage_config_entry(&id)
            .ok_or_else(|| failed(format!("storage '{id}' does not exist")))?;
        entry["digest"] = json!(self.storage_cfg_digest());
        Ok(Reply::data(entry))
    }

    /// A pool's members that still exist, VMs then storages, as `/cluster/resources` entries.
    fn pool_members(&self, pool: &crate::scenario::PoolSpec, kind: Option<&str>) -> Vec<Value> {
        let node = &self.node.name;
        let mut vmids = pool.vms.clone();
        vmids.sort_unstable();
        vmids.dedup();
        let vms = vmids.into_iter().filter_map(|vmid| {
            let vm = self.vms.get(&vmid)?;
            let mut entry = json!({
                "id": format!("qemu/{vmid}"),
                "type": "qemu",
                "vmid": vmid,
                "node": node,
                "name": vm.name(vmid),
                "status": if vm.running() { "running" } else { "stopped" },
                "maxcpu": vm.cpus(),
                "maxmem": vm.maxmem(),
                "maxdisk": vm.maxdisk(),
            });
            if vm.is_template() {
                entry["template"] = json!(1);
            }
            Some(entry)
        });
        let mut storages = pool.storages.clone();
        storages.sort();
        let storages = storages.into_iter().filter_map(|id| {
            let s = self.storage(&id)?;
            Some(json!({
                "id": format!("storage/{node}/{id}"),
                "type": "storage",
                "storage": id,
                "node": node,
                "plugintype": s.kind.name(),
                "content": s.content,
                "status": "available",
            }))
        });
        vms.chain(storages)
            .filter(|m| kind.is_none_or(|k| m["type"] == k))
            .collect()
    }

    fn pool(&self, poolid: &str) -> Result<&crate::scenario::PoolSpec, ApiError> {
        self.platform
            .pools
            .iter()
            .find(|p| p.poolid == poolid)
            .ok_or_else(|| failed(format!("pool '{poolid}' does not exist")))
    }

    /// `GET /pools`: every pool sorted by id; with `poolid` that pool with its members.
    pub(super) fn pools(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        if let Some(poolid) = p.str("poolid") {
            let pool = self.pool(&poolid)?;
            let mut entry = json!({
                "poolid": pool.poolid,
                "members": self.pool_members(pool, p.str("type").as_deref()),
            });
            if !pool.comment.is_empty() {
                entry["comment"] = json!(pool.comment);
            }
            return Ok(Reply::data(json!([entry])));
        }
        let mut pools: Vec<&crate::scenario::PoolSpec> = self.platform.pools.iter().collect();
        pools.sort_by(|a, b| a.poolid.cmp(&b.poolid));
        Ok(Reply::data(json!(
            pools
                .iter()
                .map(|pool| {
                    let mut entry = json!({"poolid": pool.poolid});
                    if !pool.comment.is_empty() {
                        entry["comment"] = json!(pool.comment);
                    }
                    entry
                })
                .collect::<Vec<_>>()
        )))
    }

    /// `GET /pools/{poolid}` (deprecated in PVE 8, still served): comment and members.
    pub(super) fn pool_get(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let poolid = p.str("poolid").unwrap_or_default();
        let pool = self.pool(&poolid)?;
        let mut entry = json!({"members": self.pool_members(pool, p.str("type").as_deref())});
        if !pool.comment.is_empty() {
            entry["comment"] = json!(pool.comment);
        }
        Ok(Reply::data(entry))
    }

    /// `GET /cluster/options`: `datacenter.cfg`.
    pub(super) fn cluster_options(&self) -> Value {
        let hc = &self.platform.host_config;
        json!({
            "keyboard": "en-us",
            "console": "xtermjs",
            "mac_prefix": "BC:24:11",
            "email_from": format!("root@{}.{}", self.node.name, hc.dns_search),
            "next-id": {"lower": "100", "upper": "1000000"},
        })
    }

    /// `GET /nodes/{node}/dns`: `/etc/resolv.conf`.
    pub(super) fn node_dns(&self) -> Value {
        let hc = &self.platform.host_config;
        let mut dns = json!({"search": hc.dns_search});
        for (i, server) in hc.dns_servers.iter().enumerate() {
            dns[format!("dns{}", i + 1)] = json!(server);
        }
        dns
    }

    /// `GET /nodes/{node}/hosts`: `/etc/hosts` with the node at its management address.
    pub(super) fn node_hosts(&self) -> Value {
        let ip = self
            .bridges
            .iter()
            .find_map(|b| b.cidr.as_deref()?.split('/').next())
            .unwrap_or("127.0.1.1");
        let name = &self.node.name;
        let domain = &self.platform.host_config.dns_search;
        let data = format!(
            "127.0.0.1 localhost.localdomain localhost\n{ip} {name}.{domain} {name}\n\n\
             # The following lines are desirable for IPv6 capable hosts\n\n\
             ::1     ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\n\
             ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\nff02::3 ip6-allhosts\n"
        );
        let mut hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data.as_bytes()));
        hex.truncate(40);
        json!({"data": data, "digest": hex})
    }

    /// `GET /nodes/{node}/time`.
    pub(super) fn node_time(&self) -> Value {
        let now = now_epoch();
        let hc = &self.platform.host_config;
        json!({
            "time": now,
            "localtime": now + i64::from(hc.utc_offset_minutes) * 60,
            "timezone": hc.timezone,
        })
    }

    /// `GET /nodes/{node}/apt/repositories`: Debian bookworm and the Proxmox no-subscription
    /// repository, the enterprise one disabled, as a fresh no-subscription install has them.
    pub(super) fn apt_repositories() -> Value {
        let mut files: Vec<(&str, Vec<Value>, String)> = Vec::new();
        for (path, kind, uri, suite, components, enabled) in REPOS {
            let line = format!(
                "{}{kind} {uri} {suite} {}\n",
                if enabled { "" } else { "# " },
                components.join(" ")
            );
            let repo = json!({
                "Types": [kind],
                "URIs": [uri],
                "Suites": [suite],
                "Components": components,
                "Enabled": u8::from(enabled),
                "FileType": "list",
            });
            match files.iter_mut().find(|(p, _, _)| *p == path) {
                Some((_, repos, text)) => {
                    repos.push(repo);
                    text.push_str(&line);
                }
                None => files.push((path, vec![repo], line)),
            }
        }
        let mut all_text = String::new();
        let files: Vec<Value> = files
            .into_iter()
            .map(|(path, repos, text)| {
                all_text.push_str(&text);
                let digest: Vec<u8> =
                    <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).to_vec();
                json!({"path": path, "file-type": "list", "repositories": repos, "digest": digest})
            })
            .collect();
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(all_text.as_bytes()));
        json!({
            "files": files,
            "errors": [],
            "digest": digest,
            "infos": [{
                "path": "/etc/apt/sources.list.d/pve-no-subscription.list",
                "index": "0",
                "kind": "warning",
                "property": "Components",
                "message": "The no-subscription repository is not recommended for production use!",
            }],
            "standard-repos": [
                {"handle": "enterprise", "name": "Enterprise", "status": 0},
                {"handle": "no-subscription", "name": "No-Subscription", "status": 1},
                {"handle": "test", "name": "Test"},
                {"handle": "ceph-quincy-enterprise", "name": "Ceph Quincy Enterprise"},
                {"handle": "ceph-quincy-no-subscription", "name": "Ceph Quincy No-Subscription"},
                {"handle": "ceph-quincy-test", "name": "Ceph Quincy Test"},
                {"handle": "ceph-reef-enterprise", "name": "Ceph Reef Enterprise"},
                {"handle": "ceph-reef-no-subscription", "name": "Ceph Reef No-Subscription"},
                {"handle": "ceph-reef-test", "name": "Ceph Reef Test"},
            ],
        })
    }

    /// `GET /cluster/backup`: the scenario's jobs, sorted by id, typed as `jobs.cfg` parses them.
    pub(super) fn backup_jobs(&self) -> Value {
        json!(
            self.platform
                .backup_jobs
                .values()
                .map(|job| {
                    let entry: serde_json::Map<String, Value> = job
                        .iter()
                        .map(|(k, v)| {
                            let typed = match (k.as_str(), v.parse::<i64>()) {
                                (
                                    "enabled" | "all" | "remove" | "quiet" | "repeat-missed",
                                    Ok(n),
                                ) => {
                                    json!(n)
                                }
                                _ => json!(v),
                            };
                            (k.clone(), typed)
                        })
                        .collect();
                    let mut entry = Value::Object(entry);
                    entry["type"] = json!("vzdump");
                    entry
                })
                .collect::<Vec<_>>()
        )
    }
}
