//! VM profiles (`[provision.profiles.<name>]`): what a requested VM looks like and how far a request may
//! change it. The default, `k8s-node`, is the seed's k3s node: the Ubuntu 22.04 cloud-init template,
//! 4 vCPU (cpu=host), 8 GiB with ballooning, a 40 GiB root disk on virtio-scsi, one NIC on vmbr1 in the
//! cluster VLAN.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proxflow_runtime::config::ConfigError;
use proxflow_schemas::provision::VmOverrides;
use serde::{Deserialize, Serialize};

/// How far a request may move a profile's sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverrideLimits {
    /// Most vCPUs a request may ask for.
    pub max_cores: u32,
    /// Most memory, MiB.
    pub max_memory_mib: u32,
    /// Largest root disk, GiB.
    pub max_disk_gib: u32,
}

impl Default for OverrideLimits {
    fn default() -> Self {
        Self {
            max_cores: 16,
            max_memory_mib: 65536,
            max_disk_gib: 500,
        }
    }
}

/// One VM profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Template VMID to clone.
    pub template: u32,
    /// Full copy instead of a linked clone (a linked clone shares the template's base disk).
    pub full_clone: bool,
    /// Target storage for full clones.
    pub storage: Option<String>,
    /// Resource pool for new VMs.
    pub pool: Option<String>,
    /// vCPUs.
    pub cores: u32,
    /// CPU type.
    pub cpu: String,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Balloon minimum, MiB (0 disables ballooning).
    pub balloon_mib: u32,
    /// Root disk (`scsi0`) and its size, GiB.
    pub disk: String,
    /// Root disk size, GiB.
    pub disk_gib: u32,
    /// SCSI controller.
    pub scsihw: String,
    /// Bridge of `net0`.
    pub bridge: String,
    /// VLAN tag of `net0`.
    pub vlan: Option<u16>,
    /// The IPv4 subnet of that VLAN (`10.20.0.0/24`): a static address a request asks for must lie
    /// inside it, with its prefix length. `None` accepts any.
    pub subnet: Option<String>,
    /// Cloud-init user.
    pub ciuser: String,
    /// Cloud-init DNS server.
    pub nameserver: Option<String>,
    /// Cloud-init search domain.
    pub searchdomain: Option<String>,
    /// Tags every VM of this profile gets.
    pub tags: Vec<String>,
    /// Limits on per-request overrides.
    pub limits: OverrideLimits,
    /// Most provisions of this profile running at once; more are refused with the reason.
    pub max_concurrent: u32,
    /// Most VMs of this profile created per hour.
    pub max_per_hour: u32,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            template: 9000,
            full_clone: false,
            storage: None,
            pool: None,
            cores: 4,
            cpu: "host".into(),
            memory_mib: 8192,
            balloon_mib: 4096,
            disk: "scsi0".into(),
            disk_gib: 40,
            scsihw: "virtio-scsi-pci".into(),
            bridge: "vmbr1".into(),
            vlan: Some(20),
            subnet: Some("10.20.0.0/24".into()),
            ciuser: "ubuntu".into(),
            nameserver: Some("10.20.0.1".into()),
            searchdomain: Some("k3s.lan".into()),
            tags: vec!["k3s".into(), "k8s-node".into()],
            limits: OverrideLimits::default(),
            max_concurrent: 25,
            max_per_hour: 60,
        }
    }
}

/// The sizes of one VM: a profile with a request's overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmShape {
    /// vCPUs.
    pub cores: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Balloon minimum, MiB.
    pub balloon_mib: u32,
    /// Root disk, GiB.
    pub disk_gib: u32,
}

impl Profile {
    /// Applies overrides within the limits; errors name the field (`overrides.cores`) and the limit.
    pub fn shape(&self, o: &VmOverrides) -> Result<VmShape, Vec<(String, String)>> {
        let shape = VmShape {
            cores: o.cores.unwrap_or(self.cores),
            memory_mib: o.memory_mib.unwrap_or(self.memory_mib),
            balloon_mib: o.balloon_mib.unwrap_or(self.balloon_mib),
            disk_gib: o.disk_gib.unwrap_or(self.disk_gib),
        };
        let mut errors = Vec::new();
        let mut check = |field: &str, ok: bool, msg: String| {
            if !ok {
                errors.push((format!("overrides.{field}"), msg));
            }
        };
        let l = &self.limits;
        check(
            "cores",
            (1..=l.max_cores).contains(&shape.cores),
            format!("must be 1 to {}", l.max_cores),
        );
        check(
            "memory_mib",
            (512..=l.max_memory_mib).contains(&shape.memory_mib),
            format!("must be 512 to {}", l.max_memory_mib),
        );
        check(
            "balloon_mib",
            shape.balloon_mib <= shape.memory_mib,
            format!("must not exceed the memory ({} MiB)", shape.memory_mib),
        );
        check(
            "disk_gib",
            (1..=l.max_disk_gib).contains(&shape.disk_gib),
            format!("must be 1 to {}", l.max_disk_gib),
        );
        if errors.is_empty() {
            Ok(shape)
        } else {
            Err(errors)
        }
    }
}

/// An IPv4 network in CIDR form with its host bits zero (`10.20.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/p`; the message says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IPv4 network such as 10.20.0.0/24");
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
        if !(1..=31).contains(&prefix) {
            return Err(format!("{text:?}: the prefix length must be 1 to 31"));
        }
        let subnet = Self { network, prefix };
        if subnet.network_of(network) != network {
            return Err(format!(
                "{text:?} has host bits set; the network is {}/{prefix}",
                subnet.network_of(network)
            ));
        }
        Ok(subnet)
    }

    /// The network address `addr` has under this prefix length.
    fn network_of(&self, addr: Ipv4Addr) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(addr) & (u32::MAX << (32 - u32::from(self.prefix))))
    }

    /// Whether `addr/prefix` is an address of this subnet, with this subnet's prefix length.
    pub fn holds(&self, addr: Ipv4Addr, prefix: u8) -> bool {
        prefix == self.prefix && self.network_of(addr) == self.network
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `[provision.profiles]`: profiles by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Profiles(pub BTreeMap<String, Profile>);

impl Default for Profiles {
    fn default() -> Self {
        Self(BTreeMap::from([(
            "k8s-node".to_string(),
            Profile::default(),
        )]))
    }
}

impl Profiles {
    /// A profile by name.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.0.get(name)
    }

    /// The profile names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// Checks every profile; errors name `<section>.<profile>.<key>`.
    pub fn validate_at(&self, section: &str) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            return Err(ConfigError::value(section, "define at least one profile"));
        }
        for (name, p) in &self.0 {
            let key = |k: &str| format!("{section}.{name}.{k}");
            if p.template < 100 {
                return Err(ConfigError::value(
                    key("template"),
                    "must be a VMID (100 or above)",
                ));
            }
            if let Err(errors) = p.shape(&VmOverrides::default()) {
                let (field, msg) = &errors[0];
                let field = field.trim_start_matches("overrides.");
                return Err(ConfigError::value(
                    key(field),
                    format!("the profile's own value {msg}"),
                ));
            }
            if p.vlan.is_some_and(|v| !(1..=4094).contains(&v)) {
                return Err(ConfigError::value(key("vlan"), "must be 1 to 4094"));
            }
            if let Some(subnet) = &p.subnet
                && let Err(why) = Subnet::parse(subnet)
            {
                return Err(ConfigError::value(key("subnet"), why));
            }
            if p.max_concurrent == 0 || p.max_per_hour == 0 {
                return Err(ConfigError::value(
                    key("max_concurrent"),
                    "caps must be at least 1 (remove the profile to disable it)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_hold_their_addresses_with_their_prefix() {
        let s = Subnet::parse("10.20.0.0/24").expect("valid");
        let a = |t: &str| t.parse::<Ipv4Addr>().expect("addr");
        assert!(s.holds(a("10.20.0.44"), 24));
        assert!(!s.holds(a("10.30.0.44"), 24));
        assert!(
            !s.holds(a("10.20.0.44"), 16),
            "another prefix is another network"
        );
        assert!(
            Subnet::parse("10.20.0.1/24")
                .expect_err("host bits")
                .contains("10.20.0.0/24")
        );
        assert!(Subnet::parse("10.20.0.0").is_err());
        assert!(Subnet::parse("10.20.0.0/0").is_err());
        let mut profiles = Profiles::default();
        if let Some(p) = profiles.0.get_mut("k8s-node") {
            p.subnet = Some("10.20.0.0/33".into());
        }
        let e = profiles
            .validate_at("provision.profiles")
            .expect_err("bad subnet");
        assert!(
            e.to_string().contains("provision.profiles.k8s-node.subnet"),
            "{e}"
        );
    }

    #[test]
    fn the_default_profile_is_the_seeds_k8s_node() {
        let profiles = Profiles::default();
        profiles.validate_at("provision.profiles").expect("valid");
        let p = profiles.get("k8s-node").expect("k8s-node");
        let shape = p.shape(&VmOverrides::default()).expect("shape");
        assert_eq!(
            (
                shape.cores,
                shape.memory_mib,
                shape.balloon_mib,
                shape.disk_gib
            ),
            (4, 8192, 4096, 40)
        );
    }

    #[test]
    fn overrides_outside_the_limits_name_the_field() {
        let p = Profile::default();
        let errors = p
            .shape(&VmOverrides {
                cores: Some(64),
                memory_mib: Some(1024),
                balloon_mib: Some(2048),
                disk_gib: Some(0),
            })
            .expect_err("out of limits");
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "overrides.cores",
                "overrides.balloon_mib",
                "overrides.disk_gib"
            ]
        );
    }
}
