//! The simulated platform: node, storages and their volumes, bridges, VMs with raw config maps,
//! snapshots and guest package state, the host's packages and power, tasks, faults and load. One
//! `State` lives behind one mutex in [`crate::Shared`]; handlers take the lock, do their
//! synchronous work and drop it before any await.
//!
//! Storage accounting: a volume's `used` counts against its storage. Full disks use their size
//! (a zvol without `sparse` reserves it), linked clones start at 0 (a ZFS clone shares its
//! origin's blocks until written), cloud-init drives 4 MiB. A `zfspool` storage's total is its
//! fixed capacity (used + avail of the dataset); `rpool` is the sum of the storages on it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::agent::{AgentExecScript, ExecJob};
use crate::config::{Faults, SimConfig, TaskDurations};
use crate::host::Host;
use crate::load::{Load, LoadState};
use crate::packages::{GuestPackages, GuestUpdate, UpdateError};
use crate::platform::Platform;
use crate::scenario::{AptPackage, BridgeSpec, Checked, ZpoolSpec};
use proxflow_schemas::pve::Upid;

use crate::tasks::{PendingTask, TaskRecord, Tasks};
use crate::volumes::{DiskRef, is_cloudinit, parse_disk};

/// Size of a cloud-init drive.
pub(crate) const CLOUDINIT_SIZE: u64 = 4 << 20;

/// Default load of a running VM: mostly idle, about a third of its memory in use.
fn default_vm_load() -> Load {
    Load::fixed(0.05, 0.35)
}

pub(crate) fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The node's static facts.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) cpu_model: String,
    pub(crate) cores: u32,
    pub(crate) sockets: u32,
    pub(crate) mhz: String,
    pub(crate) memory: u64,
    pub(crate) kernel_release: String,
    pub(crate) kernel_version: String,
    pub(crate) pve_version: String,
    pub(crate) uptime0: u64,
}

impl Node {
    pub(crate) fn cpus(&self) -> u32 {
        self.cores.saturating_mul(self.sockets).max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageKind {
    Dir,
    ZfsPool,
}

impl StorageKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::ZfsPool => "zfspool",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Storage {
    pub(crate) id: String,
    pub(crate) kind: StorageKind,
    pub(crate) content: String,
    pub(crate) capacity: u64,
    pub(crate) base_used: u64,
    /// Directory (`dir`), as in `storage.cfg`.
    pub(crate) path: Option<String>,
    /// Dataset (`zfspool`), as in `storage.cfg`.
    pub(crate) pool: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Volume {
    pub(crate) storage: String,
    pub(crate) vmid: u32,
    pub(crate) size: u64,
    pub(crate) used: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) snaptime: i64,
    pub(crate) vmstate: bool,
    pub(crate) parent: Option<String>,
    pub(crate) config: BTreeMap<String, String>,
    /// The guest's packages when the snapshot was taken (a rollback restores them).
    pub(crate) packages: Option<GuestPackages>,
}

#[derive(Debug, Clone)]
pub(crate) enum Power {
    Stopped,
    Running {
        since: Instant,
        /// Uptime already accumulated when `since` was taken (scenario VMs).
        uptime0: u64,
        pid: u32,
        agent_ready_at: Instant,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Vm {
    pub(crate) config: BTreeMap<String, String>,
    /// In creation order: the last is the most recent.
    pub(crate) snapshots: Vec<Snapshot>,
    pub(crate) power: Power,
    pub(crate) exec: BTreeMap<u32, ExecJob>,
    pub(crate) next_exec_pid: u32,
    /// Package state behind the guest agent; `None` for a VM the scenario gives none.
    pub(crate) packages: Option<GuestPackages>,
}

/// An `agent_ready_at` so far ahead that the agent does not answer until the next boot sets it.
pub(crate) fn agent_never(now: Instant) -> Instant {
    now.checked_add(Duration::from_secs(86_400 * 365))
        .unwrap_or(now)
}

impl Vm {
    /// The guest goes down for a reboot: its agent stops answering and what it ran is gone, until
    /// the next boot sets the agent's time.
    pub(crate) fn agent_down(&mut self) {
        if let Power::Running { agent_ready_at, .. } = &mut self.power {
            *agent_ready_at = agent_never(Instant::now());
        }
        self.exec.clear();
    }

    pub(crate) fn running(&self) -> bool {
        matches!(self.power, Power::Running { .. })
    }

    pub(crate) fn uptime(&self) -> u64 {
        match &self.power {
            Power::Running { since, uptime0, .. } => {
                uptime0.saturating_add(since.elapsed().as_secs())
            }
            Power::Stopped => 0,
        }
    }

    pub(crate) fn is_template(&self) -> bool {
        self.config.get("template").is_some_and(|t| t == "1")
    }

    pub(crate) fn lock(&self) -> Option<&str> {
        self.config.get("lock").map(String::as_str)
    }

    /// vCPUs: `vcpus` when set, else cores × sockets.
    pub(crate) fn cpus(&self) -> u32 {
        let get = |k: &str, d: u32| {
            self.config
                .get(k)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(d)
        };
        let vcpus = get("vcpus", 0);
        if vcpus > 0 {
            vcpus
        } else {
            get("cores", 1).saturating_mul(get("sockets", 1)).max(1)
        }
    }

    /// `memory` in bytes (the schema puts no upper bound on it, hence saturating).
    pub(crate) fn maxmem(&self) -> u64 {
        self.memory_mib().saturating_mul(1 << 20)
    }

    /// `memory` in MiB (`[current=]<MiB>`, default 512).
    pub(crate) fn memory_mib(&self) -> u64 {
        self.config
            .get("memory")
            .map(|m| m.strip_prefix("current=").unwrap_or(m))
            .and_then(|m| m.split(',').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(512)
    }

    pub(crate) fn name(&self, vmid: u32) -> String {
        self.config
            .get("name")
            .cloned()
            .unwrap_or_else(|| format!("VM {vmid}"))
    }

    /// Size of the boot disk (first of `boot: order=`, else the first disk), as `maxdisk`.
    pub(crate) fn maxdisk(&self) -> u64 {
        let boot_disk = self
            .config
            .get("boot")
            .and_then(|b| b.strip_prefix("order="))
            .and_then(|o| o.split(';').next())
            .and_then(|k| self.config.get(k).map(|v| (k, v)));
        let first = || {
            self.config.iter().find(|(k, v)| {
                !k.starts_with("unused")
                    && matches!(parse_disk(k, v), Some(DiskRef::Volume { cdrom: false, ref volname, .. }) if !is_cloudinit(volname))
            })
        };
        let pick = boot_disk.or_else(|| first().map(|(k, v)| (k.as_str(), v)));
        match pick.and_then(|(k, v)| parse_disk(k, v)) {
            Some(DiskRef::Volume { size, .. }) => size.unwrap_or(0),
            _ => 0,
        }
    }

    pub(crate) fn agent_enabled(&self) -> bool {
        self.config.get("agent").is_some_and(|a| {
            let first = a.split(',').next().unwrap_or("");
            let enabled = first.strip_prefix("enabled=").unwrap_or(first);
            matches!(enabled, "1" | "on" | "yes" | "true")
        })
    }
}

/// Why a VM's pending updates were not replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SetUpdatesError {
    /// No such VM (404).
    #[error("VM {0} does not exist")]
    NoVm(u32),
    /// A VM without package state (404).
    #[error("VM {0} has no package state (the scenario gives it no guest_packages)")]
    NoPackages(u32),
    /// An update that cannot be offered (400); the message starts with its field.
    #[error("updates[{index}].{source}")]
    Invalid { index: usize, source: UpdateError },
}

/// The figures pvestatd last broadcast, as `/cluster/resources` entries.
pub(crate) struct StatusBroadcast {
    /// When.
    pub(crate) taken: Instant,
    /// The node's entry.
    pub(crate) node: serde_json::Value,
    /// The storages' entries.
    pub(crate) storages: Vec<serde_json::Value>,
    /// The guests' entries by VMID, without what comes from their configs (template, lock, tags).
    pub(crate) vms: BTreeMap<u32, serde_json::Value>,
}

/// The mutable world.
pub(crate) struct State {
    pub(crate) node: Node,
    pub(crate) storages: Vec<Storage>,
    pub(crate) zpool: ZpoolSpec,
    pub(crate) bridges: Vec<BridgeSpec>,
    pub(crate) volumes: BTreeMap<String, Volume>,
    pub(crate) vms: BTreeMap<u32, Vm>,
    pub(crate) apt: Vec<AptPackage>,
    /// The host's packages and power.
    pub(crate) host: Host,
    /// DNS, pools, users, ACLs, firewall, backup jobs, disks.
    pub(crate) platform: Platform,
    pub(crate) tasks: Tasks,
    pub(crate) rng: StdRng,
    pub(crate) faults: Faults,
    pub(crate) exec_script: AgentExecScript,
    /// Loads by vmid, kept even while the VM does not exist (a load can precede a clone).
    pub(crate) vm_loads: BTreeMap<u32, LoadState>,
    pub(crate) host_load: LoadState,
    pub(crate) time_scale: f64,
    pub(crate) durations: TaskDurations,
    /// The token id, which the UPIDs of tasks it starts carry as user.
    pub(crate) user: String,
    pub(crate) fingerprint: Option<String>,
    /// What pvestatd last broadcast for `/cluster/resources`.
    pub(crate) broadcast: Option<StatusBroadcast>,
    pub(crate) started: Instant,
    next_pid: u32,
}

impl State {
    pub(crate) fn new(config: &SimConfig, scenario: Checked, fingerprint: Option<String>) -> Self {
        let platform = Platform::new(&scenario, &config.token_id);
        let raw = scenario.raw;
        let mut guest_updates = scenario.guest_updates;
        let mut guests: BTreeMap<u32, GuestPackages> = raw
            .guest_packages
            .iter()
            .map(|g| {
                let pending = guest_updates.remove(&g.vmid).unwrap_or_default();
                (
                    g.vmid,
                    GuestPackages::new(g.kernel.clone(), g.installed.clone(), pending),
                )
            })
            .collect();
        let n = &raw.node;
        let node = Node {
            name: n.name.clone(),
            cpu_model: n.cpu_model.clone(),
            cores: n.cores,
            sockets: n.sockets,
            mhz: n.mhz.clone(),
            memory: scenario.memory,
            kernel_release: n.kernel_release.clone(),
            kernel_version: n.kernel_version.clone(),
            pve_version: n.pve_version.clone(),
            uptime0: n.uptime,
        };
        let storages = raw
            .storage
            .iter()
            .map(|s| {
                let (capacity, base_used) = scenario
                    .storage_sizes
                    .get(&s.id)
                    .copied()
                    .unwrap_or_default();
                Storage {
                    id: s.id.clone(),
                    kind: if s.kind == "zfspool" {
                        StorageKind::ZfsPool
                    } else {
                        StorageKind::Dir
                    },
                    content: s.content.clone(),
                    capacity,
                    base_used,
                    path: s.path.clone(),
                    pool: s.pool.clone(),
                }
            })
            .collect();
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut next_pid = 0x1000 + rng.random_range(0..0x8000u32);
        let mut vms = BTreeMap::new();
        let mut volumes = BTreeMap::new();
        let running: BTreeMap<u32, (bool, u64)> = raw
            .vm
            .iter()
            .map(|v| (v.vmid, (v.running, v.uptime)))
            .collect();
        for (vmid, config) in scenario.configs {
            let (is_running, uptime0) = running.get(&vmid).copied().unwrap_or_default();
            let template = config.get("template").is_some_and(|t| t == "1");
            for (key, value) in &config {
                if let Some(DiskRef::Volume {
                    storage,
                    volname,
                    size,
                    cdrom: false,
                }) = parse_disk(key, value)
                {
                    let linked = volname.contains('/');
                    let size = size.unwrap_or(if is_cloudinit(&volname) {
                        CLOUDINIT_SIZE
                    } else {
                        0
                    });
                    let used = if linked && !template { 0 } else { size };
                    volumes.insert(
                        format!("{storage}:{volname}"),
                        Volume {
                            storage,
                            vmid,
                            size,
                            used,
                        },
                    );
                }
            }
            let power = if is_running {
                next_pid += 17;
                Power::Running {
                    since: now,
                    uptime0,
                    pid: next_pid,
                    agent_ready_at: now,
                }
            } else {
                Power::Stopped
            };
            vms.insert(
                vmid,
                Vm {
                    config,
                    snapshots: Vec::new(),
                    power,
                    exec: BTreeMap::new(),
                    next_exec_pid: 1000,
                    packages: guests.remove(&vmid),
                },
            );
        }
        Self {
            host_load: LoadState::new(Load::fixed(n.base_cpu, n.base_mem)),
            node,
            storages,
            zpool: raw.zpool.clone(),
            bridges: raw.bridge.clone(),
            volumes,
            vms,
            apt: raw.apt_update.clone(),
            host: Host::new(
                &n.pve_version,
                &n.kernel_release,
                &raw.apt_update,
                raw.host_upgrade.clone(),
            ),
            platform,
            tasks: Tasks::default(),
            rng,
            faults: config.faults.clone(),
            exec_script: AgentExecScript::default(),
            vm_loads: BTreeMap::new(),
            time_scale: config.time_scale,
            durations: config.durations.clone(),
            user: config.token_id.clone(),
            fingerprint,
            broadcast: None,
            started: now,
            next_pid,
        }
    }

    /// A duration of simulated time in real time.
    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        Duration::try_from_secs_f64(d.as_secs_f64() * self.time_scale).unwrap_or(Duration::MAX)
    }

    /// The delay before a 401, in real time.
    pub(crate) fn auth_failure_delay(&self) -> Duration {
        self.scaled(self.durations.auth_failure)
    }

    pub(crate) fn next_pid(&mut self) -> u32 {
        self.next_pid = self
            .next_pid
            .wrapping_add(1 + self.rng.random_range(0..40u32))
            % 0x3F_FFFF;
        self.next_pid.max(0x1000)
    }

    pub(crate) fn node_uptime(&self) -> u64 {
        self.node
            .uptime0
            .saturating_add(self.started.elapsed().as_secs())
    }

    /// `BC:24:11:xx:xx:xx`, Proxmox's OUI, unique among configured NICs.
    pub(crate) fn new_mac(&mut self) -> String {
        loop {
            let b: [u8; 3] = self.rng.random();
            let mac = format!("BC:24:11:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2]);
            let taken = self
                .vms
                .values()
                .any(|vm| vm.config.values().any(|v| v.contains(&mac)));
            if !taken {
                return mac;
            }
        }
    }

    /// A random (version 4) UUID.
    pub(crate) fn new_uuid(&mut self) -> String {
        let mut b: [u8; 16] = self.rng.random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    pub(crate) fn storage(&self, id: &str) -> Option<&Storage> {
        self.storages.iter().find(|s| s.id == id)
    }

    /// (total, used, avail) of a storage.
    pub(crate) fn storage_usage(&self, storage: &Storage) -> (u64, u64, u64) {
        let volumes: u64 = self
            .volumes
            .values()
            .filter(|v| v.storage == storage.id)
            .map(|v| v.used)
            .sum();
        let used = storage
            .base_used
            .saturating_add(volumes)
            .min(storage.capacity);
        (storage.capacity, used, storage.capacity - used)
    }

    /// The `current` (or snapshot) config file text, whose hash is the digest.
    fn conf_text(vm: &Vm) -> String {
        let mut text = String::new();
        for (k, v) in &vm.config {
            text.push_str(&format!("{k}: {v}\n"));
        }
        for snap in &vm.snapshots {
            text.push_str(&format!("\n[{}]\n", snap.name));
            for (k, v) in &snap.config {
                text.push_str(&format!("{k}: {v}\n"));
            }
        }
        text
    }

    /// The config digest: Proxmox uses SHA-1 of the file; this is SHA-256 of the simulated file,
    /// truncated to SHA-1's 40 hex digits (same shape, same `maxLength`).
    pub(crate) fn digest(vm: &Vm) -> String {
        let hash = Sha256::digest(Self::conf_text(vm).as_bytes());
        let mut hex = hex::encode(hash);
        hex.truncate(40);
        hex
    }

    /// (cpu, mem fraction) of a VM now; zero when stopped.
    pub(crate) fn vm_load(&self, vmid: u32) -> (f64, f64) {
        self.vm_load_back(vmid, 0.0)
    }

    /// (cpu, mem fraction) of a VM `back` simulated seconds ago, with its power state of now
    /// (no history of power is kept).
    pub(crate) fn vm_load_back(&self, vmid: u32, back: f64) -> (f64, f64) {
        let Some(vm) = self.vms.get(&vmid) else {
            return (0.0, 0.0);
        };
        if !vm.running() {
            return (0.0, 0.0);
        }
        match self.vm_loads.get(&vmid) {
            Some(state) => state.sample_back(self.time_scale, back),
            None => {
                let d = default_vm_load();
                (d.cpu.at(0.0), d.mem.at(0.0))
            }
        }
    }

    /// Bytes of memory a VM uses now.
    pub(crate) fn vm_mem(&self, vmid: u32) -> u64 {
        self.vm_mem_back(vmid, 0.0)
    }

    /// Bytes of memory a VM used `back` simulated seconds ago.
    pub(crate) fn vm_mem_back(&self, vmid: u32, back: f64) -> u64 {
        let Some(vm) = self.vms.get(&vmid) else {
            return 0;
        };
        let (_, mem) = self.vm_load_back(vmid, back);
        (vm.memory_mib() as f64 * 1_048_576.0 * mem) as u64
    }

    /// (cpu fraction, memory used bytes) of the host.
    pub(crate) fn host_usage(&self) -> (f64, u64) {
        self.host_usage_back(0.0)
    }

    /// (cpu fraction, memory used bytes) of the host `back` simulated seconds ago.
    pub(crate) fn host_usage_back(&self, back: f64) -> (f64, u64) {
        let (base_cpu, base_mem) = self.host_load.sample_back(self.time_scale, back);
        let cpus = f64::from(self.node.cpus());
        let mut cpu = base_cpu;
        let mut mem = (self.node.memory as f64 * base_mem) as u64;
        for (vmid, vm) in &self.vms {
            if vm.running() {
                let (vm_cpu, _) = self.vm_load_back(*vmid, back);
                cpu += vm_cpu * f64::from(vm.cpus()) / cpus;
                mem = mem.saturating_add(self.vm_mem_back(*vmid, back));
            }
        }
        (cpu.clamp(0.0, 1.0), mem.min(self.node.memory))
    }

    /// Creates a task record and the worker to run; `delay` is simulated time.
    pub(crate) fn new_task(
        &mut self,
        kind: &str,
        id: &str,
        delay: Duration,
        op: crate::api::TaskOp,
    ) -> (String, PendingTask) {
        let upid = self.record_task(kind, id);
        let pending = PendingTask {
            upid: upid.clone(),
            op,
            delay: self.scaled(delay),
        };
        (upid, pending)
    }

    /// A running task's record without a worker (the caller logs to it and ends it).
    pub(crate) fn record_task(&mut self, kind: &str, id: &str) -> String {
        let pid = self.next_pid();
        let info = Upid::new(
            &self.node.name,
            pid,
            self.node_uptime().saturating_mul(100) % 0xFFFF_FFFF,
            u64::try_from(now_epoch()).unwrap_or_default(),
            kind,
            id,
            &self.user,
        );
        let upid = info.to_string();
        self.tasks.push(TaskRecord {
            upid: upid.clone(),
            info,
            endtime: None,
            exitstatus: None,
            log: Vec::new(),
            hidden_reads: u32::from(self.faults.fresh_upid_unknown),
        });
        upid
    }

    pub(crate) fn task_log(&mut self, upid: &str, line: impl Into<String>) {
        if let Some(task) = self.tasks.get_mut(upid) {
            task.log.push(line.into());
        }
    }

    pub(crate) fn task_end(&mut self, upid: &str, result: Result<u32, crate::api::TaskError>) {
        self.tasks.finish(upid, result, now_epoch());
    }

    /// Replaces a VM's pending updates (`PUT /_sim/guest/{vmid}/updates`); answers them.
    pub(crate) fn set_guest_updates(
        &mut self,
        vmid: u32,
        updates: Vec<GuestUpdate>,
    ) -> Result<Vec<GuestUpdate>, SetUpdatesError> {
        let vm = self.vms.get_mut(&vmid).ok_or(SetUpdatesError::NoVm(vmid))?;
        let packages = vm
            .packages
            .as_mut()
            .ok_or(SetUpdatesError::NoPackages(vmid))?;
        packages
            .set_pending(updates)
            .map_err(|(index, source)| SetUpdatesError::Invalid { index, source })?;
        Ok(packages.pending.clone())
    }

    /// A short summary for `GET /_sim/state`.
    pub(crate) fn summary(&self) -> Value {
        let vms: Vec<Value> = self
            .vms
            .iter()
            .map(|(vmid, vm)| {
                let agent_up = match &vm.power {
                    Power::Running { agent_ready_at, .. } => {
                        vm.agent_enabled()
                            && Instant::now() >= *agent_ready_at
                            && !self.faults.agent_never_up.contains(vmid)
                    }
                    Power::Stopped => false,
                };
                let mut v = json!({
                    "vmid": vmid,
                    "name": vm.name(*vmid),
                    "status": if vm.running() { "running" } else { "stopped" },
                    "template": vm.is_template(),
                    "lock": vm.lock(),
                    "agent_up": agent_up,
                    "snapshots": vm.snapshots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                });
                if let Some(packages) = &vm.packages {
                    v["packages"] = packages.summary();
                }
                v
            })
            .collect();
        let storages: Vec<Value> = self
            .storages
            .iter()
            .map(|s| {
                let (total, used, avail) = self.storage_usage(s);
                json!({"storage": s.id, "total": total, "used": used, "avail": avail})
            })
            .collect();
        let running = self.tasks.list.iter().filter(|t| t.running()).count();
        json!({
            "node": self.node.name,
            "host": self.host_summary(),
            "time_scale": self.time_scale,
            "vms": vms,
            "storages": storages,
            "volumes": self.volumes.keys().collect::<Vec<_>>(),
            "tasks": {"total": self.tasks.list.len(), "running": running},
        })
    }
}
