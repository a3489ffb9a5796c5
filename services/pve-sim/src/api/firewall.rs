//! `/cluster/firewall/*`, `/nodes/{node}/firewall/*` and `/nodes/{node}/qemu/{vmid}/firewall/*`
//! reads: the datacenter options, rules, security groups, aliases and IP sets, the node's options
//! and rules, a VM's options and rules. Read-only, and nothing is enforced: the simulator answers
//! what `cluster.fw`, `host.fw` and `<vmid>.fw` would hold, it filters no traffic.
//!
//! Rules come from the scenario (`[[firewall_rule]]`); aliases are one per bridge with an address
//! (`net_<bridge>`, its network), and a security group `k3s` and IP set `k3s_nodes` exist when a
//! VM is tagged `k3s`, which is how the seed's cluster nodes are marked.

use serde_json::{Value, json};

use super::{ApiError, P, Reply};
use crate::platform::digest_of;
use crate::scenario::RuleScope;
use crate::state::State;

/// `a.b.c.d/len` -> the network's `a.b.c.0/len` (IPv4; anything else unchanged).
fn network_of(cidr: &str) -> String {
    let Some((ip, len)) = cidr.split_once('/') else {
        return cidr.to_owned();
    };
    match (ip.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) {
        (Ok(ip), Ok(len)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(ip) & mask))
        }
        _ => cidr.to_owned(),
    }
}

impl State {
    /// Whether any VM carries the `k3s` tag (then the group and IP set exist).
    fn has_k3s(&self) -> bool {
        self.vms.values().any(|vm| {
            vm.config
                .get("tags")
                .is_some_and(|t| t.split([';', ',', ' ']).any(|tag| tag == "k3s"))
        })
    }

    /// The rules of one scope, numbered from 0 in scenario order, with the file's digest.
    fn rules(&self, scope: RuleScope) -> Value {
        let rules: Vec<Value> = self
            .platform
            .firewall_rules
            .iter()
            .filter(|(s, _)| *s == scope)
            .enumerate()
            .map(|(pos, (_, rule))| {
                let mut entry = json!({"pos": pos, "enable": 1});
                for (key, value) in rule {
                    if key == "pos" || key == "digest" {
                        continue;
                    }
                    // `enable` is an integer in `cluster.fw`'s parsed form; the rest are strings.
                    entry[key] = match (key.as_str(), value.parse::<i64>()) {
                        ("enable", Ok(n)) => json!(n),
                        _ => json!(value),
                    };
                }
                entry
            })
            .collect();
        let digest = digest_of(&json!(rules));
        json!(
            rules
                .into_iter()
                .map(|mut r| {
                    r["digest"] = json!(digest);
                    r
                })
                .collect::<Vec<_>>()
        )
    }

    /// `GET /cluster/firewall/options`.
    pub(super) fn firewall_cluster_options(&self) -> Value {
        json!({
            "enable": u8::from(self.platform.host_config.firewall),
            "policy_in": "DROP",
            "policy_out": "ACCEPT",
            "policy_forward": "ACCEPT",
            "ebtables": 1,
            "log_ratelimit": "enable=1,burst=5,rate=1/second",
        })
    }

    /// `GET /cluster/firewall/rules`.
    pub(super) fn firewall_cluster_rules(&self) -> Value {
        self.rules(RuleScope::Cluster)
    }

    /// `GET /cluster/firewall/groups`.
    pub(super) fn firewall_groups(&self) -> Value {
        if !self.has_k3s() {
            return json!([]);
        }
        let groups =
            json!([{"group": "k3s", "comment": "k3s node traffic (API, kubelet, flannel)"}]);
        with_digest(groups)
    }

    /// `GET /cluster/firewall/aliases`: one per bridge with an address, named `net_<bridge>`.
    pub(super) fn firewall_aliases(&self) -> Value {
        let aliases: Vec<Value> = self
            .bridges
            .iter()
            .filter_map(|b| {
                let cidr = b.cidr.as_deref()?;
                let mut alias =
                    json!({"name": format!("net_{}", b.name), "cidr": network_of(cidr)});
                if !b.comment.is_empty() {
                    alias["comment"] = json!(b.comment);
                }
                Some(alias)
            })
            .collect();
        with_digest(json!(aliases))
    }

    /// `GET /cluster/firewall/ipset`.
    pub(super) fn firewall_ipsets(&self) -> Value {
        if !self.has_k3s() {
            return json!([]);
        }
        with_digest(json!([{"name": "k3s_nodes", "comment": "addresses of the k3s nodes"}]))
    }

    /// `GET /nodes/{node}/firewall/options`.
    pub(super) fn firewall_node_options() -> Value {
        json!({
            "enable": 1,
            "nosmurfs": 1,
            "tcpflags": 1,
            "log_level_in": "nolog",
            "log_level_out": "nolog",
            "nf_conntrack_max": 262_144,
        })
    }

    /// `GET /nodes/{node}/firewall/rules`.
    pub(super) fn firewall_node_rules(&self) -> Value {
        self.rules(RuleScope::Node)
    }

    /// `GET /nodes/{node}/qemu/{vmid}/firewall/options`: a VM with rules has its firewall on.
    pub(super) fn firewall_vm_options(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        self.existing(vmid)?;
        let has_rules = self
            .platform
            .firewall_rules
            .iter()
            .any(|(s, _)| *s == RuleScope::Vm(vmid));
        Ok(Reply::data(if has_rules {
            json!({
                "enable": 1,
                "policy_in": "DROP",
                "policy_out": "ACCEPT",
                "macfilter": 1,
                "dhcp": 1,
                "ipfilter": 0,
                "log_level_in": "nolog",
                "log_level_out": "nolog",
            })
        } else {
            // No `<vmid>.fw`: no options set.
            json!({})
        }))
    }

    /// `GET /nodes/{node}/qemu/{vmid}/firewall/rules`.
    pub(super) fn firewall_vm_rules(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        self.existing(vmid)?;
        Ok(Reply::data(self.rules(RuleScope::Vm(vmid))))
    }
}

/// Adds the list's (the file's) digest to every entry.
fn with_digest(list: Value) -> Value {
    let digest = digest_of(&list);
    match list {
        Value::Array(items) => json!(
            items
                .into_iter()
                .map(|mut item| {
                    item["digest"] = json!(digest);
                    item
                })
                .collect::<Vec<_>>()
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::network_of;

    #[test]
    fn networks_of_addresses() {
        assert_eq!(network_of("192.168.1.10/24"), "192.168.1.0/24");
        assert_eq!(network_of("10.99.0.10/16"), "10.99.0.0/16");
        assert_eq!(network_of("fd00::1/64"), "fd00::1/64");
    }
}
