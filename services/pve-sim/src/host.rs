//! The host's own packages and power: what `apt-get full-upgrade` over SSH does to it (the PVE API
//! has no upgrade call; `POST /_sim/host/upgrade` stands in), the package changelogs
//! `GET …/apt/changelog` shows, and a node reboot (`POST /nodes/{node}/status command=reboot`).
//!
//! A node reboot, as pve-guests and systemd run it: the running VMs are shut down in reverse boot
//! order (one `stopall` task), then the host is down for `durations.node_reboot` (scaled) — every
//! `/api2/json` request answers 503 meanwhile, where a real host would refuse the connection —,
//! then it comes up on its newest installed kernel with its uptime restarted, and starts the VMs
//! with `onboot=1` one after the other in boot order (`startup: order=N` ascending, then VMID,
//! waiting each VM's `up=` delay), each through a normal `qmstart` task (one `startall` task
//! around them).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Shared;
use crate::agent::property_map;
use crate::api::TaskOp;
use crate::scenario::{AptPackage, HostUpgradeSpec};
use crate::state::{Power, State};

/// Dates of the generated changelog entries (fixed, so answers are reproducible).
const CANDIDATE_DATE: &str = "Tue, 01 Jul 2025 10:00:00 +0000";
const INSTALLED_DATE: &str = "Mon, 03 Mar 2025 09:00:00 +0000";

/// One entry of a Debian changelog.
fn changelog_entry(
    name: &str,
    version: &str,
    suite: &str,
    line: &str,
    maintainer: &str,
    date: &str,
) -> String {
    format!(
        "{name} ({version}) {suite}; urgency=medium\n\n  * {line}\n\n -- {maintainer}  {date}\n\n"
    )
}

/// The message of a host upgrade whose dpkg run fails.
pub(crate) const DPKG_ERROR: &str = "E: Sub-process /usr/bin/dpkg returned an error code (1)";

/// The packages `GET …/apt/versions` lists after `proxmox-ve`, `pve-manager` and the kernels, when
/// installed (pve-manager's `versions` list: its required and optional packages).
const LISTED: [&str; 62] = [
    "amd64-microcode",
    "ceph",
    "ceph-fuse",
    "corosync",
    "criu",
    "dnsmasq",
    "frr-pythontools",
    "gfs2-utils",
    "ifupdown",
    "ifupdown2",
    "intel-microcode",
    "ksm-control-daemon",
    "ksmtuned",
    "libjs-extjs",
    "libknet1",
    "libproxmox-acme-perl",
    "libproxmox-backup-qemu0",
    "libproxmox-rs-perl",
    "libpve-access-control",
    "libpve-apiclient-perl",
    "libpve-cluster-api-perl",
    "libpve-cluster-perl",
    "libpve-common-perl",
    "libpve-guest-common-perl",
    "libpve-http-server-perl",
    "libpve-network-perl",
    "libpve-rs-perl",
    "libpve-storage-perl",
    "libqb0",
    "libspice-server1",
    "lvm2",
    "lxc-pve",
    "lxcfs",
    "novnc-pve",
    "openvswitch-switch",
    "proxmox-backup-client",
    "proxmox-backup-file-restore",
    "proxmox-backup-restore-image",
    "proxmox-firewall",
    "proxmox-kernel-helper",
    "proxmox-mail-forward",
    "proxmox-mini-journalreader",
    "proxmox-offline-mirror-helper",
    "proxmox-widget-toolkit",
    "pve-cluster",
    "pve-container",
    "pve-docs",
    "pve-edk2-firmware",
    "pve-esxi-import-tools",
    "pve-firewall",
    "pve-firmware",
    "pve-ha-manager",
    "pve-i18n",
    "pve-qemu-kvm",
    "pve-xtermjs",
    "pve-zsync",
    "qemu-server",
    "smartmontools",
    "spiceterm",
    "swtpm",
    "vncterm",
    "zfsutils-linux",
];

/// Titles of the packages the seed host has installed, for `apt/versions`.
fn title(package: &str) -> &'static str {
    match package {
        "proxmox-ve" => "Proxmox Virtual Environment",
        "pve-manager" => "Proxmox Virtual Environment Management Tools",
        "qemu-server" => "Qemu Server Tools",
        "pve-qemu-kvm" => "Full virtualization on x86 hardware",
        "zfsutils-linux" => "command-line tools to manage OpenZFS filesystems",
        p if is_kernel_package(p) => "Proxmox Kernel Image (signed)",
        _ => "",
    }
}

fn is_kernel_package(name: &str) -> bool {
    name.starts_with("proxmox-kernel-") || name.starts_with("pve-kernel-")
}

/// The signed image package of a kernel release and its version (`6.8.12-9-pve` ->
/// `proxmox-kernel-6.8.12-9-pve-signed`, `6.8.12-9`).
fn kernel_package(release: &str) -> (String, String) {
    (
        format!("proxmox-kernel-{release}-signed"),
        release.trim_end_matches("-pve").to_owned(),
    )
}

/// Debian version order, closely enough for package versions: runs of digits compare as
/// numbers, other runs as text with `~` before anything (even the end).
pub(crate) fn version_cmp(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut digits = None;
        for (i, c) in s.char_indices() {
            let d = c.is_ascii_digit();
            if digits.is_some_and(|prev| prev != d) {
                out.push((digits.unwrap_or(false), &s[start..i]));
                start = i;
            }
            digits = Some(d);
        }
        if start < s.len() {
            out.push((digits.unwrap_or(false), &s[start..]));
        }
        out
    }
    let text_key = |c: char| match c {
        '~' => 0u32,
        c if c.is_ascii_alphabetic() => u32::from(c) + 1,
        c => u32::from(c) + 256,
    };
    let (ra, rb) = (runs(a), runs(b));
    for i in 0..ra.len().max(rb.len()) {
        let ord = match (ra.get(i), rb.get(i)) {
            (Some((true, x)), Some((true, y))) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            (Some((false, x)), Some((false, y))) => {
                x.chars().map(text_key).cmp(y.chars().map(text_key))
            }
            // A digit run against text: text first (dpkg compares a non-digit part first).
            (Some((true, _)), Some((false, y))) => {
                if y.starts_with('~') {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some((false, x)), Some((true, _))) => {
                if x.starts_with('~') {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some((_, x)), None) => {
                if x.starts_with('~') {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (None, Some((_, y))) => {
                if y.starts_with('~') {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (None, None) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// The host's package and power state (the running kernel is `Node::kernel_release`).
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// Package -> installed version: what `apt/versions` lists, and what the pending updates
    /// replace.
    pub(crate) installed: BTreeMap<String, String>,
    /// Installed kernel releases, oldest first; the last is the one the next boot runs.
    pub(crate) kernels: Vec<String>,
    pub(crate) upgrade: HostUpgradeSpec,
    pub(crate) reboot_required: bool,
    pub(crate) reboots: u32,
    /// Upgrades that changed something.
    pub(crate) upgrades: u32,
    /// Rebooting: `/api2/json` answers 503.
    pub(crate) down: bool,
    /// Counts reboots requested, so a boot sequence of an earlier one stops.
    pub(crate) generation: u64,
}

impl Host {
    /// The seed host's Proxmox packages at `pve_version`'s version with `kernel` running, then the
    /// installed versions the pending updates name.
    pub(crate) fn new(
        pve_version: &str,
        kernel: &str,
        pending: &[AptPackage],
        upgrade: HostUpgradeSpec,
    ) -> Self {
        let version = pve_version.split('/').nth(1).unwrap_or("8.4.1").to_owned();
        let (kernel_pkg, kernel_version) = kernel_package(kernel);
        let mut installed = BTreeMap::from([
            ("proxmox-ve".to_owned(), version.clone()),
            ("pve-manager".to_owned(), version),
            ("qemu-server".to_owned(), "8.3.12".to_owned()),
            ("pve-qemu-kvm".to_owned(), "9.0.2-4".to_owned()),
            ("zfsutils-linux".to_owned(), "2.2.7-pve2".to_owned()),
            (kernel_pkg, kernel_version),
        ]);
        for p in pending {
            if let Some(old) = &p.OldVersion {
                installed.insert(p.Package.clone(), old.clone());
            }
        }
        Self {
            installed,
            kernels: vec![kernel.to_owned()],
            upgrade,
            reboot_required: false,
            reboots: 0,
            upgrades: 0,
            down: false,
            generation: 0,
        }
    }

    /// The newest installed kernel.
    pub(crate) fn kernel_installed(&self) -> Option<&String> {
        self.kernels.last()
    }
}

/// Why a host upgrade did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostUpgradeError {
    /// The node is rebooting (SSH would not connect).
    #[error("node {0} is rebooting")]
    Down(String),
    /// dpkg failed (`host_upgrade.fail`); nothing changed.
    #[error("{DPKG_ERROR}")]
    Dpkg,
}

/// A VM's place in the boot order: `startup: order=N` ascending, VMs without an order after
/// those with one, then by VMID (pve-manager's `startall`).
fn boot_key(vmid: u32, config: &BTreeMap<String, String>) -> (u64, u32) {
    let order = config
        .get("startup")
        .and_then(|s| property_map(s, "order").get("order").cloned())
        .and_then(|o| o.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    (order, vmid)
}

/// A VM's `startup: up=N` delay, in simulated seconds.
fn up_delay(config: &BTreeMap<String, String>) -> u64 {
    config
        .get("startup")
        .and_then(|s| property_map(s, "order").get("up").cloned())
        .and_then(|u| u.parse().ok())
        .unwrap_or(0)
}

impl State {
    /// The 503 message while the node reboots.
    pub(crate) fn rebooting_message(&self) -> Option<String> {
        self.host
            .down
            .then(|| format!("node {} is rebooting", self.node.name))
    }

    /// VMIDs in boot order.
    fn boot_order(&self) -> Vec<u32> {
        let mut order: Vec<(u64, u32)> = self
            .vms
            .iter()
            .map(|(vmid, vm)| boot_key(*vmid, &vm.config))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, vmid)| vmid).collect()
    }

    /// `apt-get -y full-upgrade` on the host: every pending update, and the kernel of
    /// `host_upgrade`. Answers the packages upgraded and whether a reboot is required.
    pub(crate) fn host_upgrade(&mut self) -> Result<(Vec<String>, bool), HostUpgradeError> {
        if self.host.down {
            return Err(HostUpgradeError::Down(self.node.name.clone()));
        }
        if self.host.upgrade.fail {
            return Err(HostUpgradeError::Dpkg);
        }
        let mut upgraded = Vec::new();
        for p in std::mem::take(&mut self.apt) {
            if p.Package == "pve-manager" {
                // pveversion (and `/version`) name the pve-manager installed; its repoid is kept.
                let repoid = self
                    .node
                    .pve_version
                    .split('/')
                    .nth(2)
                    .unwrap_or("2a5fa54a8503f96d")
                    .to_owned();
                self.node.pve_version = format!("pve-manager/{}/{repoid}", p.Version);
            }
            self.host.installed.insert(p.Package.clone(), p.Version);
            upgraded.push(p.Package);
        }
        if let Some(kernel) = self.host.upgrade.kernel_release.clone()
            && !self.host.kernels.contains(&kernel)
        {
            let (package, version) = kernel_package(&kernel);
            self.host.installed.insert(package.clone(), version);
            if !upgraded.contains(&package) {
                upgraded.push(package);
            }
            self.host.kernels.push(kernel);
            self.host.reboot_required = true;
        }
        if !upgraded.is_empty() {
            self.host.upgrades = self.host.upgrades.saturating_add(1);
        }
        Ok((upgraded, self.host.reboot_required))
    }

    /// `command=reboot`: shuts the running VMs down in reverse boot order and takes the node down.
    /// Answers the reboot's generation, for [`spawn_reboot`].
    pub(crate) fn begin_node_reboot(&mut self) -> u64 {
        let running: Vec<u32> = self
            .boot_order()
            .into_iter()
            .rev()
            .filter(|vmid| self.vms.get(vmid).is_some_and(crate::state::Vm::running))
            .collect();
        let upid = self.record_task("stopall", "");
        for vmid in running {
            self.task_log(&upid, format!("Stopping VM {vmid} (timeout = 180 seconds)"));
            if let Some(vm) = self.vms.get_mut(&vmid) {
                vm.power = Power::Stopped;
                vm.exec.clear();
                if let Some(packages) = vm.packages.as_mut() {
                    packages.on_stop();
                }
            }
        }
        self.task_end(&upid, Ok(0));
        self.host.down = true;
        self.host.generation = self.host.generation.wrapping_add(1);
        self.broadcast = None;
        self.host.generation
    }

    /// The node is up again: newest kernel, uptime from zero. Answers the `startall` task and the
    /// VMs to start in order with their `up` delays (real time).
    fn node_boot(&mut self) -> (String, Vec<(u32, Duration)>) {
        if let Some(kernel) = self.host.kernel_installed().cloned()
            && kernel != self.node.kernel_release
        {
            // `uname -v` names the build: the old one's text with the new version in it.
            let old = self.node.kernel_release.trim_end_matches("-pve").to_owned();
            let new = kernel.trim_end_matches("-pve");
            self.node.kernel_version = if old.is_empty() {
                self.node.kernel_version.clone()
            } else {
                self.node.kernel_version.replace(&old, new)
            };
            self.node.kernel_release = kernel;
        }
        self.node.uptime0 = 0;
        self.started = Instant::now();
        self.host.reboot_required = false;
        self.host.reboots = self.host.reboots.saturating_add(1);
        self.host.down = false;
        self.broadcast = None;
        let upid = self.record_task("startall", "");
        let starts = self
            .boot_order()
            .into_iter()
            .filter_map(|vmid| {
                let vm = self.vms.get(&vmid)?;
                let onboot = vm.config.get("onboot").is_some_and(|v| v == "1");
                (onboot && !vm.is_template()).then(|| {
                    let up = Duration::from_secs(up_delay(&vm.config));
                    (vmid, self.scaled(up))
                })
            })
            .collect();
        (upid, starts)
    }

    /// The `qmstart` task of a VM the boot sequence starts, unless a newer reboot took over.
    fn boot_start(
        &mut self,
        generation: u64,
        startall: &str,
        vmid: u32,
    ) -> Option<crate::tasks::PendingTask> {
        if self.host.generation != generation || self.host.down {
            return None;
        }
        self.task_log(startall, format!("Starting VM {vmid}"));
        let delay = self.durations.start;
        let (_, task) = self.new_task("qmstart", &vmid.to_string(), delay, TaskOp::Start { vmid });
        Some(task)
    }

    /// `GET …/apt/changelog`: `apt-get changelog -qq NAME[=VERSION]` as pve-manager returns it —
    /// the tool's output, with `RC: n` appended when it failed (still HTTP 200). The entries are
    /// the candidate's (when it is at or below the version asked for) and the installed one's.
    pub(crate) fn changelog(&self, name: &str, version: Option<&str>) -> String {
        let pending = self.apt.iter().find(|p| p.Package == name);
        let installed = self.host.installed.get(name).map(String::as_str);
        let candidate = pending.map(|p| p.Version.as_str());
        let Some(newest) = candidate.or(installed) else {
            return format!("E: Unable to locate package {name}\nRC: 100");
        };
        let top = match version {
            None => newest,
            Some(v) if Some(v) == candidate || Some(v) == installed => v,
            Some(v) => return format!("E: Version '{v}' for '{name}' was not found\nRC: 100"),
        };
        let from_proxmox = pending.is_none_or(|p| p.Origin == "Proxmox");
        let maintainer = if from_proxmox {
            "Proxmox Support Team <support@proxmox.com>"
        } else {
            "Debian Maintainers <debian-devel@lists.debian.org>"
        };
        let mut text = String::new();
        if let Some(p) = pending
            && top == p.Version
            && installed != Some(top)
        {
            let says_security = |s: &str| s.to_ascii_lowercase().contains("security");
            let security = p.archive.as_deref().is_some_and(says_security)
                || says_security(&p.Origin)
                || says_security(&p.Section);
            let (suite, line, who) = if security {
                (
                    p.archive.as_deref().unwrap_or("bookworm-security"),
                    format!("SECURITY UPDATE: fixes in {name} {top} (simulated by pve-sim)"),
                    if from_proxmox {
                        maintainer
                    } else {
                        "Debian Security Team <team@security.debian.org>"
                    },
                )
            } else {
                (
                    p.archive.as_deref().unwrap_or("bookworm"),
                    format!("update {name} to {top} (simulated by pve-sim)"),
                    maintainer,
                )
            };
            text.push_str(&changelog_entry(
                name,
                top,
                suite,
                &line,
                who,
                CANDIDATE_DATE,
            ));
        }
        if let Some(old) = installed
            && version_cmp(old, top).is_le()
        {
            let line = format!("the installed {name} {old} (simulated by pve-sim)");
            text.push_str(&changelog_entry(
                name,
                old,
                "bookworm",
                &line,
                maintainer,
                INSTALLED_DATE,
            ));
        }
        text
    }

    /// `GET /nodes/{node}/apt/versions`: `proxmox-ve` (with the running kernel), `pve-manager`,
    /// the installed kernels newest first, then the other listed packages by name. `Version` is the
    /// candidate (a pending update's), `OldVersion` the installed one.
    pub(crate) fn apt_versions(&self) -> Value {
        let mut kernels: Vec<&String> = self
            .host
            .installed
            .keys()
            .filter(|p| is_kernel_package(p))
            .collect();
        kernels.sort_by(|a, b| {
            let version = |p: &String| self.host.installed.get(p).cloned().unwrap_or_default();
            version_cmp(&version(b), &version(a)).then_with(|| a.cmp(b))
        });
        let names = ["proxmox-ve", "pve-manager"]
            .into_iter()
            .chain(kernels.into_iter().map(String::as_str))
            .chain(LISTED);
        let manager = self
            .node
            .pve_version
            .split('/')
            .nth(1)
            .unwrap_or("8.4.1")
            .to_owned();
        let mut list = Vec::new();
        for name in names {
            let Some(old) = self.host.installed.get(name) else {
                continue;
            };
            let pending = self.apt.iter().find(|p| p.Package == name);
            let title = pending.map_or(title(name), |p| p.Title.as_str());
            let mut entry = json!({
                "Package": name,
                "Version": pending.map_or(old.as_str(), |p| p.Version.as_str()),
                "OldVersion": old,
                "CurrentState": "Installed",
                "Title": title,
                "Description": pending.map_or(title, |p| p.Description.as_str()),
                "Origin": pending.map_or("Proxmox", |p| p.Origin.as_str()),
                "Priority": pending.map_or("optional", |p| p.Priority.as_str()),
                "Section": pending.map_or(if is_kernel_package(name) { "kernel" } else { "admin" }, |p| p.Section.as_str()),
                "Arch": pending.map_or("amd64", |p| p.Arch.as_str()),
            });
            if name == "proxmox-ve" {
                entry["RunningKernel"] = json!(self.node.kernel_release);
                entry["ManagerVersion"] = json!(manager);
            }
            list.push(entry);
        }
        json!(list)
    }

    /// For `GET /_sim/state`.
    pub(crate) fn host_summary(&self) -> Value {
        json!({
            "kernel_running": self.node.kernel_release,
            "kernel_installed": self.host.kernel_installed(),
            "reboot_required": self.host.reboot_required,
            "reboots": self.host.reboots,
            "upgrades": self.host.upgrades,
            "down": self.host.down,
        })
    }
}

/// Runs the rest of a node reboot (down window, boot, VM starts) unless the simulator shuts down.
pub(crate) fn spawn_reboot(shared: &Arc<Shared>, generation: u64) {
    let worker = Arc::clone(shared);
    let cancel = shared.cancel.clone();
    shared.tracker.spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = reboot(worker, generation) => {}
        }
    });
}

async fn reboot(shared: Arc<Shared>, generation: u64) {
    let window = {
        let state = shared.lock();
        state.scaled(state.durations.node_reboot)
    };
    tokio::time::sleep(window).await;
    let (startall, starts) = {
        let mut state = shared.lock();
        if state.host.generation != generation {
            return;
        }
        state.node_boot()
    };
    // pve-guests starts them one after the other, each once its start task is done.
    for (vmid, up) in starts {
        let Some(task) = shared.lock().boot_start(generation, &startall, vmid) else {
            break;
        };
        crate::tasks::run(Arc::clone(&shared), task).await;
        if !up.is_zero() {
            tokio::time::sleep(up).await;
        }
    }
    shared.lock().task_end(&startall, Ok(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_like_dpkg_for_package_versions() {
        let less = [
            ("6.8.12-9", "6.8.12-11"),
            ("3.0.15-1~deb12u1", "3.0.17-1~deb12u2"),
            ("1.0~rc1", "1.0"),
            ("2.35-0ubuntu3.8", "2.35-0ubuntu3.9"),
            ("5.15.0.118.118", "5.15.0.119.119"),
        ];
        for (a, b) in less {
            assert_eq!(version_cmp(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(version_cmp(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(version_cmp("8.4.1", "8.4.1"), Ordering::Equal);
    }

    #[test]
    fn boot_order_puts_ordered_vms_first() {
        let config = |s: Option<&str>| {
            s.map(|v| BTreeMap::from([("startup".to_owned(), v.to_owned())]))
                .unwrap_or_default()
        };
        let mut keys = [
            boot_key(101, &config(None)),
            boot_key(103, &config(Some("order=1,up=30"))),
            boot_key(102, &config(Some("2"))),
        ];
        keys.sort_unstable();
        assert_eq!(keys.map(|(_, v)| v), [103, 102, 101]);
        assert_eq!(up_delay(&config(Some("order=1,up=30"))), 30);
    }
}
