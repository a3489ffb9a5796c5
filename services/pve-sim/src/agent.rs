//! The simulated QEMU guest agent: network interfaces and scripted `exec` results.
//!
//! Addresses: a NIC's IPv4 address is the static `ip=` of its `ipconfigN` when set; otherwise
//! (`ip=dhcp` or no ipconfig) a deterministic "DHCP lease" in a subnet chosen by bridge and VLAN:
//! a VLAN tag T (1..=254) gives `10.T.0.0/24`, untagged `vmbr0` `192.168.0.0/24`, untagged
//! `vmbrN` (N >= 1) `172.16.N.0/24`; the host part is `100 + vmid % 150`. Each NIC also has its
//! EUI-64 link-local IPv6 address, and `lo` comes first, as `guest-network-get-interfaces` lists.
//!
//! Exec: the first [`ExecRule`] whose `vmid` (if set) and `command` prefix match decides the
//! result; with no match a guest with package state answers the package commands it knows
//! (`crate::packages`), and anything else exits 0 with empty output.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Scripted outputs for `POST .../agent/exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentExecScript {
    /// Checked in order; the first match wins.
    pub rules: Vec<ExecRule>,
}

/// One scripted command result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecRule {
    /// Only for this VM; `None` for any.
    pub vmid: Option<u32>,
    /// Argument-vector prefix to match (`["systemctl", "is-active"]`); empty matches everything.
    pub command: Vec<String>,
    /// Exit code reported once exited.
    pub exitcode: i64,
    /// Standard output (`out-data`).
    pub out_data: String,
    /// Standard error (`err-data`).
    pub err_data: String,
    /// How many `exec-status` reads answer `exited: 0` before the result.
    pub running_polls: u32,
}

impl AgentExecScript {
    /// The first rule matching `command` on `vmid`.
    pub(crate) fn rule_for(&self, vmid: u32, command: &[String]) -> Option<&ExecRule> {
        self.rules.iter().find(|r| {
            r.vmid.is_none_or(|v| v == vmid)
                && r.command.len() <= command.len()
                && r.command.iter().zip(command).all(|(a, b)| a == b)
        })
    }
}

/// A started command, polled through `exec-status`.
#[derive(Debug, Clone)]
pub(crate) struct ExecJob {
    pub(crate) result: ExecRule,
    pub(crate) polls_left: u32,
    /// Reported as running until then, however often it is polled (a package upgrade).
    pub(crate) running_until: Option<Instant>,
}

impl ExecJob {
    /// A scripted (or default) result: running for its `running_polls` reads.
    pub(crate) fn scripted(result: ExecRule) -> Self {
        Self {
            polls_left: result.running_polls,
            result,
            running_until: None,
        }
    }

    /// The next `exec-status` answer.
    pub(crate) fn poll(&mut self) -> Value {
        if self.polls_left > 0 {
            self.polls_left -= 1;
            return json!({"exited": 0});
        }
        if self
            .running_until
            .is_some_and(|until| Instant::now() < until)
        {
            return json!({"exited": 0});
        }
        let mut status = json!({"exited": 1, "exitcode": self.result.exitcode});
        if !self.result.out_data.is_empty() {
            status["out-data"] = json!(self.result.out_data);
        }
        if !self.result.err_data.is_empty() {
            status["err-data"] = json!(self.result.err_data);
        }
        status
    }
}

/// The IPv4 address and prefix a NIC gets without a static ipconfig.
pub(crate) fn dhcp_address(vmid: u32, bridge: &str, tag: Option<u32>) -> (String, u8) {
    let host = 100 + vmid % 150;
    let net = match tag {
        Some(t) if (1..=254).contains(&t) => format!("10.{t}.0"),
        _ => match bridge
            .strip_prefix("vmbr")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(0) | None => "192.168.0".to_owned(),
            Some(n) => format!("172.16.{}", n.min(255)),
        },
    };
    (format!("{net}.{host}"), 24)
}

/// `fe80::/64` address from a MAC (modified EUI-64).
fn link_local(mac: &str) -> Option<String> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let [a, b, c, d, e, f] = bytes.as_slice() else {
        return None;
    };
    Some(format!(
        "fe80::{:x}:{:x}:{:x}:{:x}",
        (u16::from(a ^ 0x02) << 8) | u16::from(*b),
        (u16::from(*c) << 8) | 0xff,
        0xfe00 | u16::from(*d),
        (u16::from(*e) << 8) | u16::from(*f)
    ))
}

/// Splits `k=v,k=v` (first bare part under `first_key`).
pub(crate) fn property_map(value: &str, first_key: &str) -> BTreeMap<String, String> {
    value
        .split(',')
        .enumerate()
        .filter_map(|(i, part)| match part.split_once('=') {
            Some((k, v)) => Some((k.to_owned(), v.to_owned())),
            None if i == 0 => Some((first_key.to_owned(), part.to_owned())),
            None => None,
        })
        .collect()
}

/// The NIC models, whose key carries the MAC (`virtio=BC:24:11:..`).
pub(crate) const NIC_MODELS: [&str; 14] = [
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// A parsed `netN` value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Nic {
    pub(crate) model: String,
    pub(crate) mac: Option<String>,
    /// Other keys in their order of appearance.
    pub(crate) rest: Vec<(String, String)>,
}

impl Nic {
    pub(crate) fn parse(value: &str) -> Self {
        let mut nic = Nic {
            model: "virtio".into(),
            mac: None,
            rest: Vec::new(),
        };
        for (i, part) in value.split(',').enumerate() {
            match part.split_once('=') {
                Some(("model", v)) => nic.model = v.to_owned(),
                Some(("macaddr", v)) => nic.mac = Some(v.to_owned()),
                Some((k, v)) if NIC_MODELS.contains(&k) => {
                    nic.model = k.to_owned();
                    nic.mac = Some(v.to_owned());
                }
                Some((k, v)) => nic.rest.push((k.to_owned(), v.to_owned())),
                None if i == 0 => nic.model = part.to_owned(),
                None => {}
            }
        }
        nic
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.rest
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Proxmox's stored form: `<model>=<MAC>` then the other keys sorted.
    pub(crate) fn print(&self) -> String {
        let mut rest = self.rest.clone();
        rest.sort();
        let mut out = match &self.mac {
            Some(mac) => format!("{}={mac}", self.model),
            None => self.model.clone(),
        };
        for (k, v) in rest {
            out.push_str(&format!(",{k}={v}"));
        }
        out
    }
}

/// `guest-network-get-interfaces` for a VM config.
pub(crate) fn interfaces(vmid: u32, config: &BTreeMap<String, String>, uptime: u64) -> Value {
    let mut list = vec![json!({
        "name": "lo",
        "hardware-address": "00:00:00:00:00:00",
        "ip-addresses": [
            {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
            {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128},
        ],
        "statistics": stats(uptime, 1),
    })];
    let mut nics: Vec<(u32, &String)> = config
        .iter()
        .filter_map(|(k, v)| {
            let (prefix, n) = crate::schema::split_index(k)?;
            (prefix == "net").then_some((n, v))
        })
        .collect();
    nics.sort();
    for (n, value) in nics {
        let nic = Nic::parse(value);
        let mac = nic.mac.clone().unwrap_or_default().to_ascii_lowercase();
        let ipconfig = config
            .get(&format!("ipconfig{n}"))
            .map(|v| property_map(v, "ip"))
            .unwrap_or_default();
        let mut addresses = Vec::new();
        let static_v4 = ipconfig
            .get("ip")
            .and_then(|ip| ip.split_once('/'))
            .and_then(|(a, p)| Some((a.to_owned(), p.parse::<u8>().ok()?)));
        let (v4, prefix) = static_v4.unwrap_or_else(|| {
            let tag = nic.get("tag").and_then(|t| t.parse().ok());
            dhcp_address(vmid, nic.get("bridge").unwrap_or("vmbr0"), tag)
        });
        addresses.push(json!({"ip-address": v4, "ip-address-type": "ipv4", "prefix": prefix}));
        if let Some((a, p)) = ipconfig.get("ip6").and_then(|ip| ip.split_once('/'))
            && let Ok(p) = p.parse::<u8>()
        {
            addresses.push(json!({"ip-address": a, "ip-address-type": "ipv6", "prefix": p}));
        }
        if let Some(ll) = link_local(&mac) {
            addresses.push(json!({"ip-address": ll, "ip-address-type": "ipv6", "prefix": 64}));
        }
        list.push(json!({
            "name": format!("eth{n}"),
            "hardware-address": mac,
            "ip-addresses": addresses,
            "statistics": stats(uptime, 40 + u64::from(n)),
        }));
    }
    json!({ "result": list })
}

/// Plausible counters growing with uptime.
fn stats(uptime: u64, weight: u64) -> Value {
    let rx = uptime.saturating_mul(weight).saturating_mul(300);
    let tx = uptime.saturating_mul(weight).saturating_mul(200);
    json!({
        "rx-bytes": rx, "rx-packets": rx / 800, "rx-errs": 0, "rx-dropped": 0,
        "tx-bytes": tx, "tx-packets": tx / 800, "tx-errs": 0, "tx-dropped": 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_ipconfig_then_the_bridge_mapping() {
        let mut config = BTreeMap::from([
            (
                "net0".to_owned(),
                "virtio=BC:24:11:3C:01:01,bridge=vmbr1,tag=20".to_owned(),
            ),
            (
                "net1".to_owned(),
                "virtio=BC:24:11:3C:01:02,bridge=vmbr2".to_owned(),
            ),
            (
                "ipconfig0".to_owned(),
                "ip=10.20.0.11/24,gw=10.20.0.1".to_owned(),
            ),
        ]);
        let v = interfaces(101, &config, 10);
        let list = v["result"].as_array().expect("list");
        assert_eq!(list[0]["name"], "lo");
        assert_eq!(list[1]["ip-addresses"][0]["ip-address"], "10.20.0.11");
        assert_eq!(list[1]["hardware-address"], "bc:24:11:3c:01:01");
        assert_eq!(
            list[1]["ip-addresses"][1]["ip-address"],
            "fe80::be24:11ff:fe3c:101"
        );
        assert_eq!(list[2]["ip-addresses"][0]["ip-address"], "172.16.2.201");
        config.insert("ipconfig0".into(), "ip=dhcp".into());
        let v = interfaces(104, &config, 10);
        assert_eq!(
            v["result"][1]["ip-addresses"][0]["ip-address"],
            "10.20.0.204"
        );
        assert_eq!(
            dhcp_address(5000, "vmbr0", None),
            ("192.168.0.150".into(), 24)
        );
    }

    #[test]
    fn nics_round_trip_in_proxmox_form() {
        let nic = Nic::parse("virtio,tag=20,bridge=vmbr1");
        assert_eq!(nic.mac, None);
        assert_eq!(nic.print(), "virtio,bridge=vmbr1,tag=20");
        let nic = Nic::parse("model=e1000,macaddr=BC:24:11:00:00:01,bridge=vmbr0");
        assert_eq!(nic.print(), "e1000=BC:24:11:00:00:01,bridge=vmbr0");
    }

    #[test]
    fn exec_rules_match_by_prefix_and_vm() {
        let script = AgentExecScript {
            rules: vec![
                ExecRule {
                    vmid: Some(102),
                    command: vec!["k3s".into()],
                    exitcode: 3,
                    ..ExecRule::default()
                },
                ExecRule {
                    command: vec!["k3s".into(), "kubectl".into()],
                    out_data: "Ready".into(),
                    running_polls: 1,
                    ..ExecRule::default()
                },
            ],
        };
        let cmd = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            script
                .rule_for(102, &cmd("k3s kubectl get nodes"))
                .map(|r| r.exitcode),
            Some(3)
        );
        let rule = script
            .rule_for(101, &cmd("k3s kubectl get nodes"))
            .cloned()
            .unwrap_or_default();
        let mut job = ExecJob::scripted(rule);
        assert_eq!(job.poll(), json!({"exited": 0}));
        assert_eq!(
            job.poll(),
            json!({"exited": 1, "exitcode": 0, "out-data": "Ready"})
        );
        assert_eq!(script.rule_for(101, &cmd("true")), None);
    }
}
