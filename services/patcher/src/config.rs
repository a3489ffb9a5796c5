//! `[patch]`: when patching runs, what needs an approval, how nodes are drained and reached, and
//! the gates. Every bad value is refused at load naming its key (exit 78).

use std::time::Duration;

use proxflow_runtime::config::{ConfigError, ConsumerConfig, Validate};
use serde::{Deserialize, Serialize};

use crate::window::WindowConfig;

/// `[patch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatchConfig {
    /// Start a run at the start of every window (off: runs start only on request).
    pub enabled: bool,
    /// Bearer-token names (`gateway.bearer_tokens`) allowed to approve or reject a plan.
    pub approvers: Vec<String>,
    /// Apply only updates from a security archive on the VMs (others are held during the upgrade
    /// and listed as skipped). The host always takes every pending update: Proxmox VE is upgraded
    /// as a whole (`full-upgrade`), and its API does not tell security updates apart.
    pub security_only: bool,
    /// `approve`: a host reboot (every VM goes down with it) needs an approval; `auto`: not.
    pub host_reboot: HostReboot,
    /// What a failed node is left as: `stop` (cordoned, with the reason) or `rollback` (back on
    /// its pre-change snapshot, started and uncordoned).
    pub on_failure: OnFailure,
    /// VMs carrying this Proxmox tag are patched.
    pub vm_tag: String,
    /// Of those, VMs carrying this tag are k3s servers: patched after the agents, shut down after
    /// them and started before them around a host reboot.
    pub server_tag: String,
    /// The weekly window.
    pub window: WindowConfig,
    /// What is major.
    pub major: MajorRules,
    /// The gates checked before each node.
    pub gate: GateConfig,
    /// How commands reach the VMs.
    pub guest: GuestConfig,
    /// Cordon, drain, uncordon and readiness.
    pub kubectl: KubectlConfig,
    /// The Proxmox VE host.
    pub host: HostConfig,
    /// How long the snapshotter may take to answer a pre-change request.
    #[serde(with = "humantime_serde")]
    pub snapshot_timeout: Duration,
    /// How long a rebooted VM may take until its guest agent answers and its node is `Ready`.
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// The advance consumer.
    pub consumer: ConsumerConfig,
}

impl Default for PatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            approvers: Vec::new(),
            security_only: true,
            host_reboot: HostReboot::Approve,
            on_failure: OnFailure::Stop,
            vm_tag: "k3s".into(),
            server_tag: "k3s-server".into(),
            window: WindowConfig::default(),
            major: MajorRules::default(),
            gate: GateConfig::default(),
            guest: GuestConfig::default(),
            kubectl: KubectlConfig::default(),
            host: HostConfig::default(),
            snapshot_timeout: Duration::from_secs(120),
            ready_timeout: Duration::from_secs(600),
            consumer: ConsumerConfig::default(),
        }
    }
}

/// `patch.host_reboot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostReboot {
    /// Held for approval.
    Approve,
    /// Done in the window.
    Auto,
}

/// `patch.on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop; the node stays cordoned with the reason.
    Stop,
    /// Stop; the node is rolled back to its pre-change snapshot, started and uncordoned.
    Rollback,
}

/// `[patch.major]`: which changes wait for an approval. Package patterns are names or `prefix*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MajorRules {
    /// A change of the upstream major of these is a distribution release change (Debian 12 → 13,
    /// Ubuntu 22.04 → 24.04).
    pub release_packages: Vec<String>,
    /// A change of the upstream major of these is a Proxmox VE major (8 → 9).
    pub pve_major_packages: Vec<String>,
    /// A change of the upstream major.minor of these is major (pve-manager 8.3 → 8.4).
    pub upstream_minor_packages: Vec<String>,
    /// Kernel packages: one whose kernel series (major.minor) differs from the running kernel's,
    /// or an `-hwe-` flavour the running kernel is not, is major. Any of them means a reboot.
    pub kernel_packages: Vec<String>,
    /// Packages that make a VM ask for a reboot (Ubuntu's `/var/run/reboot-required`), so the plan
    /// shows it ahead; the file itself decides after the upgrade. Not major.
    pub reboot_packages: Vec<String>,
}

impl Default for MajorRules {
    fn default() -> Self {
        let list = |items: &[&str]| items.iter().map(|s| (*s).to_string()).collect();
        Self {
            release_packages: list(&["base-files"]),
            pve_major_packages: list(&["pve-manager", "proxmox-ve"]),
            upstream_minor_packages: list(&[
                "pve-manager",
                "qemu-server",
                "pve-qemu-kvm",
                "zfsutils-linux",
                "corosync",
                "lxc-pve",
                "libpve-*",
            ]),
            kernel_packages: list(&[
                "linux-image-*",
                "linux-generic*",
                "proxmox-kernel-*",
                "pve-kernel-*",
            ]),
            reboot_packages: list(&["libc6", "dbus", "linux-base"]),
        }
    }
}

/// `[patch.gate]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Alertmanager's base URL (API v2); absent: no alert gate.
    pub alertmanager_url: Option<String>,
    /// Alertmanager matchers (`severity="critical"`, `alertname=~"Node.*"`): a firing, unsilenced,
    /// uninhibited alert matching all of them closes the gate.
    pub matchers: Vec<String>,
    /// How often a closed gate is looked at again.
    #[serde(with = "humantime_serde")]
    pub recheck: Duration,
    /// The newest completed replication must be younger than this (when replication jobs are
    /// configured).
    #[serde(with = "humantime_serde")]
    pub replication_rpo: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            alertmanager_url: None,
            matchers: vec!["severity=~\"critical|warning\"".into()],
            recheck: Duration::from_secs(60),
            replication_rpo: Duration::from_secs(26 * 3600),
        }
    }
}

/// `[patch.guest]`: how the patcher runs `apt-get` and friends in a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// `agent`: the QEMU guest agent's exec through the Proxmox API; `command`: the command below.
    pub transport: Transport,
    /// For `command`: program and arguments; `{ip}`, `{name}`, `{vmid}`, `{user}`, `{request}`
    /// are replaced. It gets `{"vmid", "name", "ip", "user", "argv"}` as JSON on stdin and in the
    /// file `{request}`, must run `argv` on the VM, print its output and exit with its exit code
    /// (the JSON command contract of the provisioner's join).
    pub command: Vec<String>,
    /// SSH user for `command`.
    pub user: String,
    /// Deadline of one command (an upgrade included).
    #[serde(with = "humantime_serde")]
    pub exec_timeout: Duration,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Agent,
            command: [
                "deploy/ansible/guest-exec.sh",
                "{ip}",
                "{user}",
                "{request}",
            ]
            .map(String::from)
            .to_vec(),
            user: "ubuntu".into(),
            exec_timeout: Duration::from_secs(1800),
        }
    }
}

/// `patch.guest.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// QEMU guest agent.
    Agent,
    /// A command (Ansible, ssh).
    Command,
}

/// `[patch.kubectl]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubectlConfig {
    /// The kubectl program and its leading arguments (`["kubectl", "--kubeconfig", "/etc/..."]`).
    pub command: Vec<String>,
    /// Arguments `drain <node>` gets.
    pub drain_args: Vec<String>,
    /// Deadline of a drain.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Deadline of any other kubectl call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for KubectlConfig {
    fn default() -> Self {
        Self {
            command: vec!["kubectl".into()],
            drain_args: [
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=300s",
            ]
            .map(String::from)
            .to_vec(),
            drain_timeout: Duration::from_secs(360),
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[patch.host]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Patch the host at all (last).
    pub enabled: bool,
    /// The host's root dataset, snapshotted before its upgrade.
    pub dataset: String,
    /// The upgrade (the API has no upgrade call); `{node}` is replaced. Exit 0 is success.
    pub upgrade_command: Vec<String>,
    /// Deadline of the upgrade.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// How long the host may take from the reboot request until its API answers again.
    #[serde(with = "humantime_serde")]
    pub reboot_timeout: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dataset: "rpool/ROOT/pve-1".into(),
            upgrade_command: [
                "ssh",
                "-o",
                "BatchMode=yes",
                "root@{node}",
                "DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confold \
                 full-upgrade",
            ]
            .map(String::from)
            .to_vec(),
            upgrade_timeout: Duration::from_secs(1800),
            reboot_timeout: Duration::from_secs(900),
        }
    }
}

impl Validate for PatchConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.window.validate()?;
        for (i, name) in self.approvers.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(ConfigError::value(
                    format!("patch.approvers[{i}]"),
                    "must name a bearer token (gateway.bearer_tokens)",
                ));
            }
        }
        for (key, tag) in [
            ("patch.vm_tag", &self.vm_tag),
            ("patch.server_tag", &self.server_tag),
        ] {
            if tag.is_empty() || tag.contains([';', ',', ' ']) {
                return Err(ConfigError::value(key, "must be one Proxmox tag"));
            }
        }
        for (key, d) in [
            ("patch.snapshot_timeout", self.snapshot_timeout),
            ("patch.ready_timeout", self.ready_timeout),
            ("patch.gate.recheck", self.gate.recheck),
            ("patch.gate.replication_rpo", self.gate.replication_rpo),
            ("patch.guest.exec_timeout", self.guest.exec_timeout),
            ("patch.kubectl.drain_timeout", self.kubectl.drain_timeout),
            ("patch.kubectl.timeout", self.kubectl.timeout),
            ("patch.host.upgrade_timeout", self.host.upgrade_timeout),
            ("patch.host.reboot_timeout", self.host.reboot_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::value(key, "must be above zero"));
            }
        }
        if let Some(url) = &self.gate.alertmanager_url
            && reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            return Err(ConfigError::value(
                "patch.gate.alertmanager_url",
                format!("{url:?} is not an http(s) URL"),
            ));
        }
        for (i, m) in self.gate.matchers.iter().enumerate() {
            crate::gate::check_matcher(m).map_err(|e| {
                ConfigError::value(format!("patch.gate.matchers[{i}]"), e.to_string())
            })?;
        }
        for (key, cmd) in [
            ("patch.kubectl.command", &self.kubectl.command),
            ("patch.host.upgrade_command", &self.host.upgrade_command),
        ] {
            if cmd.first().is_none_or(|p| p.is_empty()) {
                return Err(ConfigError::value(key, "must name a program"));
            }
        }
        if self.guest.transport == Transport::Command
            && self.guest.command.first().is_none_or(|p| p.is_empty())
        {
            return Err(ConfigError::value(
                "patch.guest.command",
                "must name a program when patch.guest.transport = \"command\"",
            ));
        }
        if self.host.enabled && !proxflow_zfs::names::is_dataset_name(&self.host.dataset) {
            return Err(ConfigError::value(
                "patch.host.dataset",
                format!("{:?} is not a ZFS dataset name", self.host.dataset),
            ));
        }
        self.consumer.validate_at("patch.consumer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(toml: &str) -> String {
        let config: PatchConfig = toml::from_str(toml).expect("parses");
        config.validate().expect_err("refused").to_string()
    }

    #[test]
    fn defaults_validate() {
        PatchConfig::default().validate().expect("valid");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(refused("ready_timeout = \"0s\"").contains("patch.ready_timeout"));
        assert!(refused("[gate]\nalertmanager_url = \"ftp://x\"").contains("alertmanager_url"));
        assert!(refused("[gate]\nmatchers = [\"severity\"]").contains("patch.gate.matchers[0]"));
        assert!(refused("[kubectl]\ncommand = []").contains("patch.kubectl.command"));
        assert!(refused("[host]\ndataset = \"/rpool\"").contains("patch.host.dataset"));
        assert!(refused("[window]\nstart = \"25:00\"").contains("patch.window.start"));
        assert!(refused("approvers = [\" \"]").contains("patch.approvers[0]"));
    }
}
