//! `REBUILD.md`: the order in which to bring a host back from a bundle — pools, network, storage,
//! users and permissions, firewall, VMs — naming the files of this bundle for each step. Generated
//! from the bundle's content only, so it is as deterministic as the rest.

use std::fmt::Write as _;

use serde_json::Value;

use crate::bundle::Bundle;

/// Its file name in the bundle.
pub const FILE: &str = "REBUILD.md";

fn json(bundle: &Bundle, path: &str) -> Value {
    bundle
        .files()
        .get(path)
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null)
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| match e.get(key)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// The guide for `bundle` of node `node`.
pub fn render(bundle: &Bundle, node: &str) -> String {
    let mut md = String::new();
    let pools: Vec<String> = json(bundle, "zfs/pools.json")
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let datasets = json(bundle, "zfs/datasets.json")
        .as_object()
        .map_or(0, serde_json::Map::len);
    let ifaces = names(
        &json(bundle, &format!("nodes/{node}/network.json")),
        "iface",
    );
    let storages = names(&json(bundle, "storage.json"), "storage");
    let users = names(&json(bundle, "access/users.json"), "userid");
    let groups = names(&json(bundle, "access/groups.json"), "groupid");
    let acl = json(bundle, "access/acl.json")
        .as_array()
        .map_or(0, Vec::len);
    let host_files: Vec<&String> = bundle
        .files()
        .keys()
        .filter(|p| p.starts_with("host/"))
        .collect();
    let _ = writeln!(md, "# Rebuilding node `{node}` from this bundle\n");
    let _ = writeln!(
        md,
        "Check the bundle first: `proxflow export verify <this directory>` (or `sha256sum -c \
         MANIFEST.sha256` from inside it). Every file is JSON as the Proxmox API returns it, keys \
         sorted; secrets are `<redacted>` and must be set again by hand.\n"
    );
    let _ = writeln!(md, "## 1. ZFS pools and datasets\n");
    let _ = writeln!(
        md,
        "Install Proxmox VE with the same pool names ({}), then set the pool properties of \
         `zfs/pools.json` and the {datasets} datasets' local properties of `zfs/datasets.json` \
         (`zfs set <property>=<value> <dataset>`). Restore VM disks and data from the offsite \
         replicas (`zfs send` from the offsite pool) before creating the VMs.\n",
        list_or_none(&pools)
    );
    let _ = writeln!(md, "## 2. Network\n");
    let _ = writeln!(
        md,
        "Interfaces: {}. Recreate them from `nodes/{node}/network.json` (bridges with their \
         `bridge_vlan_aware`, `bridge_ports`, addresses){}; then DNS (`nodes/{node}/dns.json`), \
         `/etc/hosts` (`nodes/{node}/hosts.json`), the time zone (`nodes/{node}/time.json`) and the \
         apt repositories (`nodes/{node}/apt-repositories.json`). Reboot or `ifreload -a`.\n",
        list_or_none(&ifaces),
        if host_files.iter().any(|p| p.ends_with("network/interfaces")) {
            ", or copy `host/…/network/interfaces` as it was"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## 3. Storage\n");
    let _ = writeln!(
        md,
        "Storages: {}. Add each with `pvesm add <type> <storage> …` per `storage.json`.\n",
        list_or_none(&storages)
    );
    let _ = writeln!(md, "## 4. Users, groups, roles, permissions\n");
    let _ = writeln!(
        md,
        "Realms `access/domains.json`, custom roles `access/roles.json` (those without \
         `special`), groups ({}), users ({}) with their API token ids (new secrets are issued: \
         update whoever used them), then the {acl} ACL entries of `access/acl.json`; resource \
         pools `pools.json`.\n",
        list_or_none(&groups),
        list_or_none(&users)
    );
    let _ = writeln!(md, "## 5. Firewall and datacenter options\n");
    let _ = writeln!(
        md,
        "`cluster/options.json`, then the firewall: `cluster/firewall/*` (aliases and IP sets \
         before rules), `nodes/{node}/firewall/*`; enable it last, from a console, so a mistake \
         does not lock you out. Replication and backup jobs: `cluster/replication.json`, \
         `cluster/backup.json`.\n"
    );
    let _ = writeln!(md, "## 6. VMs\n");
    let _ = writeln!(
        md,
        "For each VM, with its disks restored: `pvesh create /nodes/{node}/qemu --vmid <vmid>` \
         with the keys of `vms/<vmid>/config.json` (and `pending.json` if it was mid-change), its \
         firewall from `vms/<vmid>/firewall/`. Start each with its NICs `link_down=1` first, check \
         it, then bring the links up.\n"
    );
    let mut vms: Vec<(u64, String)> = bundle
        .files()
        .keys()
        .filter_map(|p| {
            let vmid = p.strip_prefix("vms/")?.strip_suffix("/config.json")?;
            let config = json(bundle, p);
            let name = config
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            Some((vmid.parse().ok()?, name))
        })
        .collect();
    vms.sort();
    for (vmid, name) in &vms {
        let _ = writeln!(md, "- VM {vmid} `{name}`: `vms/{vmid}/config.json`");
    }
    if !host_files.is_empty() {
        let _ = writeln!(md, "\n## Files the API cannot give\n");
        for path in host_files {
            let _ = writeln!(md, "- `{path}`");
        }
    }
    md
}
