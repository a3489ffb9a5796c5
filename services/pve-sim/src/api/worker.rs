//! Task workers and task reads: the checks and locks each task takes when its worker starts
//! (`task_begin`), the effect it has when it ends (`task_finish`, or `abort` for an injected
//! failure), and the task status, log and list endpoints.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::{ApiError, P, Reply, TaskOp, VmLocked, locked, param_error};
use crate::state::{Power, Snapshot, State, StorageKind, Vm, now_epoch};
use proxflow_schemas::pve::Upid;

use crate::tasks::TaskRecord;
use crate::volumes::{DiskRef, format_size, is_cloudinit, parse_disk, with_size};

/// Why a task ended in error; `Display` is its exit status, as Proxmox's worker would `die`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TaskError {
    #[error("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist")]
    NoConfig { node: String, vmid: u32 },
    #[error(transparent)]
    Locked(#[from] VmLocked),
    #[error("VM {0} already running")]
    AlreadyRunning(u32),
    #[error("VM {0} not running")]
    NotRunning(u32),
    #[error("you can't start a vm if it's a template")]
    StartTemplate,
    #[error("you can't take a snapshot if it's a template")]
    SnapshotOfTemplate,
    #[error("snapshot name '{0}' already used")]
    SnapshotExists(String),
    #[error("snapshot feature is not available")]
    SnapshotUnsupported,
    #[error("snapshot '{0}' does not exist")]
    NoSnapshot(String),
    #[error("can't rollback, '{name}' is not most recent snapshot on '{volid}'")]
    NotMostRecent { name: String, volid: String },
    #[error("VM {0} is running - destroy failed")]
    DestroyRunning(u32),
    #[error("base volume '{0}' is still in use by linked cloned")]
    BaseInUse(String),
    #[error("disk '{0}' does not exist")]
    NoDisk(String),
    /// The text configured in `faults.task_failures`.
    #[error("{0}")]
    Injected(String),
}

impl State {
    /// A task by UPID, answering like `Tasks.pm` for bad and unknown ones.
    pub(super) fn visible_task(&mut self, p: &P<'_>) -> Result<&TaskRecord, ApiError> {
        let upid = p.str("upid").unwrap_or_default();
        if upid.parse::<Upid>().is_err() {
            return Err(param_error("upid", "unable to parse worker upid"));
        }
        let Some(task) = self.tasks.get_mut(&upid) else {
            return Err(param_error("upid", "no such task"));
        };
        if task.hidden_reads > 0 {
            task.hidden_reads -= 1;
            return Err(param_error("upid", "no such task"));
        }
        Ok(task)
    }

    pub(super) fn task_log_page(&mut self, p: &P<'_>) -> Result<Reply, ApiError> {
        let start: usize = p.opt_num("start").unwrap_or(0);
        let limit: usize = p.opt_num("limit").unwrap_or(50);
        let task = self.visible_task(p)?;
        let total = task.log.len();
        let lines: Vec<Value> = task
            .log
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, t)| json!({"n": i + 1, "t": t}))
            .collect();
        let mut extra = Map::new();
        extra.insert("total".into(), json!(total));
        Ok(Reply {
            data: json!(lines),
            extra,
            ..Reply::default()
        })
    }

    pub(super) fn task_list(&self, p: &P<'_>) -> Reply {
        let start: usize = p.opt_num("start").unwrap_or(0);
        let limit: usize = p.opt_num("limit").unwrap_or(50);
        let vmid = p.str("vmid");
        let typefilter = p.str("typefilter");
        let userfilter = p.str("userfilter");
        let errors = p.flag("errors").unwrap_or(false);
        let source = p.str("source").unwrap_or_else(|| "archive".into());
        let since: Option<u64> = p.opt_num("since");
        let until: Option<u64> = p.opt_num("until");
        let matching: Vec<Value> = self
            .tasks
            .list
            .iter()
            .rev()
            .filter(|t| match source.as_str() {
                "active" => t.running(),
                "all" => true,
                _ => !t.running(),
            })
            .filter(|t| vmid.as_ref().is_none_or(|v| *v == t.info.id))
            .filter(|t| typefilter.as_ref().is_none_or(|f| *f == t.info.task_type))
            .filter(|t| {
                userfilter
                    .as_ref()
                    .is_none_or(|u| t.info.user.contains(u.as_str()))
            })
            .filter(|t| {
                !errors
                    || t.exitstatus
                        .as_ref()
                        .is_some_and(|e| e != "OK" && !e.starts_with("WARNINGS"))
            })
            .filter(|t| since.is_none_or(|s| t.info.starttime >= s))
            .filter(|t| until.is_none_or(|u| t.info.starttime <= u))
            .map(TaskRecord::list_json)
            .collect();
        let total = matching.len();
        let page: Vec<Value> = matching.into_iter().skip(start).take(limit).collect();
        let mut extra = Map::new();
        extra.insert("total".into(), json!(total));
        Reply {
            data: json!(page),
            extra,
            ..Reply::default()
        }
    }

    /// The worker's first step: the checks Proxmox makes inside the task, and locks taken.
    pub(crate) fn task_begin(&mut self, upid: &str, op: &TaskOp) -> Result<(), TaskError> {
        let node = self.node.name.clone();
        let missing = |vmid: u32| TaskError::NoConfig {
            node: node.clone(),
            vmid,
        };
        let mut log: Vec<String> = Vec::new();
        match op {
            TaskOp::Create { vmid, .. } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                for (_, volid) in self.vm_disks(vm) {
                    log.push(format!("{volid}: allocated"));
                }
            }
            TaskOp::Clone { drives, .. } => {
                for (drive, src, _, linked) in drives {
                    log.push(if *linked {
                        format!("create linked clone of drive {drive} ({src})")
                    } else {
                        format!("create full clone of drive {drive} ({src})")
                    });
                }
            }
            TaskOp::Start { vmid } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                // qemu-server checks this inside the worker: the API call returns a UPID.
                if vm.is_template() {
                    return Err(TaskError::StartTemplate);
                }
                locked(vm)?;
                if vm.running() {
                    return Err(TaskError::AlreadyRunning(*vmid));
                }
                if vm.config.values().any(|v| v.contains("-cloudinit")) {
                    log.push("generating cloud-init ISO".into());
                }
            }
            TaskOp::Shutdown { vmid } | TaskOp::Stop { vmid } | TaskOp::Reboot { vmid } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                locked(vm)?;
                // `_do_vm_stop` returns when there is no QEMU process: stopping or shutting down
                // a stopped VM ends its task OK. A reboot needs a running VM.
                if !vm.running() && matches!(op, TaskOp::Reboot { .. }) {
                    return Err(TaskError::NotRunning(*vmid));
                }
                if matches!(op, TaskOp::Shutdown { .. }) && vm.agent_enabled() {
                    log.push("requesting shutdown via QEMU guest agent".into());
                }
                // qmreboot shuts the guest down first: its agent is gone until the new start.
                if matches!(op, TaskOp::Reboot { .. })
                    && let Some(vm) = self.vms.get_mut(vmid)
                {
                    vm.agent_down();
                }
            }
            TaskOp::Config | TaskOp::AptUpdate => {
                if matches!(op, TaskOp::AptUpdate) {
                    log.push("starting apt-get update".into());
                    log.push("Hit:1 http://security.debian.org bookworm-security InRelease".into());
                    log.push("Hit:2 http://ftp.debian.org/debian bookworm InRelease".into());
                    log.push(
                        "Hit:3 http://download.proxmox.com/debian/pve bookworm InRelease".into(),
                    );
                    log.push("Reading package lists...".into());
                }
            }
            TaskOp::Resize { vmid, .. } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                locked(vm)?;
            }
            TaskOp::Snapshot { vmid, name, .. } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                if vm.is_template() {
                    return Err(TaskError::SnapshotOfTemplate);
                }
                locked(vm)?;
                if vm.snapshots.iter().any(|s| &s.name == name) {
                    return Err(TaskError::SnapshotExists(name.clone()));
                }
                let disks = self.vm_disks(vm);
                if disks.iter().any(|(_, volid)| !self.on_zfs(volid)) {
                    return Err(TaskError::SnapshotUnsupported);
                }
                for (drive, volid) in disks {
                    log.push(format!("snapshotting 'drive-{drive}' ({volid})"));
                }
                self.set_lock(*vmid, Some("snapshot"));
            }
            TaskOp::DelSnapshot { vmid, name } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                if !vm.snapshots.iter().any(|s| &s.name == name) {
                    return Err(TaskError::NoSnapshot(name.clone()));
                }
                locked(vm)?;
                self.set_lock(*vmid, Some("snapshot-delete"));
            }
            TaskOp::Rollback { vmid, name, .. } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                let Some(pos) = vm.snapshots.iter().position(|s| &s.name == name) else {
                    return Err(TaskError::NoSnapshot(name.clone()));
                };
                locked(vm)?;
                // ZFS can only roll back to a volume's most recent snapshot (pve-storage
                // ZFSPoolPlugin::volume_rollback_is_possible); PVE refuses rather than destroy
                // the newer ones.
                if pos + 1 < vm.snapshots.len()
                    && let Some(snap) = vm.snapshots.get(pos)
                {
                    let snap_vm = Vm {
                        config: snap.config.clone(),
                        ..vm.clone()
                    };
                    if let Some((_, volid)) = self
                        .vm_disks(&snap_vm)
                        .into_iter()
                        .find(|(_, volid)| self.on_zfs(volid))
                    {
                        return Err(TaskError::NotMostRecent {
                            name: name.clone(),
                            volid,
                        });
                    }
                }
                if vm.running() {
                    log.push(format!("stopping VM {vmid} before rollback"));
                    if let Some(vm) = self.vms.get_mut(vmid) {
                        vm.power = Power::Stopped;
                        vm.exec.clear();
                        if let Some(packages) = vm.packages.as_mut() {
                            packages.on_stop();
                        }
                    }
                }
                self.set_lock(*vmid, Some("rollback"));
            }
            TaskOp::Destroy { vmid } => {
                let vm = self.vms.get(vmid).ok_or_else(|| missing(*vmid))?;
                if vm.running() {
                    return Err(TaskError::DestroyRunning(*vmid));
                }
                for (_, volid) in self.vm_disks(vm) {
                    let prefix = format!("{volid}/");
                    if self.volumes.keys().any(|k| k.starts_with(&prefix)) {
                        return Err(TaskError::BaseInUse(volid));
                    }
                }
            }
        }
        for line in log {
            self.task_log(upid, line);
        }
        Ok(())
    }

    /// The worker's last step; `Ok(n)` is the number of warnings.
    pub(crate) fn task_finish(&mut self, upid: &str, op: &TaskOp) -> Result<u32, TaskError> {
        let kind = op.kind();
        if let Some(error) = self.faults.task_failures.get(kind).cloned() {
            self.abort(op);
            return Err(TaskError::Injected(error));
        }
        let node = self.node.name.clone();
        let missing = |vmid: u32| TaskError::NoConfig {
            node: node.clone(),
            vmid,
        };
        match op {
            TaskOp::Create { vmid, start } => {
                self.clear_lock(*vmid, "create");
                if *start {
                    self.task_log(upid, format!("Starting VM {vmid}"));
                    self.boot(*vmid).ok_or_else(|| missing(*vmid))?;
                }
            }
            TaskOp::Clone { newid, .. } => {
                if self.vms.contains_key(newid) {
                    self.clear_lock(*newid, "clone");
                }
            }
            TaskOp::Start { vmid } => self.boot(*vmid).ok_or_else(|| missing(*vmid))?,
            TaskOp::Reboot { vmid } => self.boot(*vmid).ok_or_else(|| missing(*vmid))?,
            TaskOp::Shutdown { vmid } | TaskOp::Stop { vmid } => {
                let vm = self.vms.get_mut(vmid).ok_or_else(|| missing(*vmid))?;
                vm.power = Power::Stopped;
                vm.exec.clear();
                if let Some(packages) = vm.packages.as_mut() {
                    packages.on_stop();
                }
            }
            TaskOp::Config | TaskOp::AptUpdate => {}
            TaskOp::Resize { vmid, disk, size } => {
                let vm = self.vms.get_mut(vmid).ok_or_else(|| missing(*vmid))?;
                let value = vm
                    .config
                    .get(disk)
                    .cloned()
                    .ok_or_else(|| TaskError::NoDisk(disk.clone()))?;
                if let Some(DiskRef::Volume {
                    storage, volname, ..
                }) = parse_disk(disk, &value)
                {
                    vm.config.insert(disk.clone(), with_size(&value, *size));
                    if let Some(volume) = self.volumes.get_mut(&format!("{storage}:{volname}")) {
                        // A grown zvol reserves the new size; a linked clone still shares its base.
                        if volume.used == volume.size {
                            volume.used = *size;
                        }
                        volume.size = *size;
                    }
                    self.task_log(upid, format!("Image resized to {}.", format_size(*size)));
                }
            }
            TaskOp::Snapshot {
                vmid,
                name,
                description,
                vmstate,
            } => {
                let vm = self.vms.get_mut(vmid).ok_or_else(|| missing(*vmid))?;
                let mut config = vm.config.clone();
                config.remove("lock");
                let parent = config.remove("parent");
                vm.snapshots.push(Snapshot {
                    name: name.clone(),
                    description: description.clone(),
                    snaptime: now_epoch(),
                    vmstate: *vmstate && vm.running(),
                    parent,
                    config,
                    packages: vm.packages.clone(),
                });
                vm.config.insert("parent".into(), name.clone());
                self.clear_lock(*vmid, "snapshot");
            }
            TaskOp::DelSnapshot { vmid, name } => {
                let vm = self.vms.get_mut(vmid).ok_or_else(|| missing(*vmid))?;
                let removed_parent = vm
                    .snapshots
                    .iter()
                    .find(|s| &s.name == name)
                    .map(|s| s.parent.clone());
                if let Some(grandparent) = removed_parent {
                    vm.snapshots.retain(|s| &s.name != name);
                    for snap in &mut vm.snapshots {
                        if snap.parent.as_ref() == Some(name) {
                            snap.parent.clone_from(&grandparent);
                        }
                    }
                    if vm.config.get("parent") == Some(name) {
                        match grandparent {
                            Some(g) => vm.config.insert("parent".into(), g),
                            None => vm.config.remove("parent"),
                        };
                    }
                }
                self.clear_lock(*vmid, "snapshot-delete");
            }
            TaskOp::Rollback { vmid, name, start } => {
                let vm = self.vms.get_mut(vmid).ok_or_else(|| missing(*vmid))?;
                let snap = vm
                    .snapshots
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| TaskError::NoSnapshot(name.clone()))?;
                let mut config = snap.config.clone();
                config.insert("parent".into(), name.clone());
                // The disks go back, and with them the packages installed on them.
                if let (Some(current), Some(then)) = (vm.packages.as_mut(), snap.packages.as_ref())
                {
                    current.restore(then);
                }
                vm.config = config;
                if *start {
                    self.boot(*vmid);
                }
            }
            TaskOp::Destroy { vmid } => {
                if self.vms.get(vmid).is_some_and(Vm::running) {
                    return Err(TaskError::DestroyRunning(*vmid));
                }
                self.vms.remove(vmid).ok_or_else(|| missing(*vmid))?;
                self.volumes.retain(|_, v| v.vmid != *vmid);
                self.vm_loads.remove(vmid);
                self.task_log(upid, "Removing image: 100% complete...done.");
            }
        }
        let warnings = self.faults.task_warnings.get(kind).copied().unwrap_or(0);
        for i in 1..=warnings {
            self.task_log(
                upid,
                format!("WARN: simulated warning {i} (faults.task_warnings)"),
            );
        }
        Ok(warnings)
    }

    /// Undoes what `task_begin` and the synchronous part did, for an injected task failure.
    pub(super) fn abort(&mut self, op: &TaskOp) {
        match op {
            // qemu-server removes what it created when the worker fails.
            TaskOp::Create { vmid, .. } => {
                self.vms.remove(vmid);
                self.volumes.retain(|_, v| v.vmid != *vmid);
            }
            TaskOp::Clone { newid, .. } => {
                self.vms.remove(newid);
                self.volumes.retain(|_, v| v.vmid != *newid);
            }
            TaskOp::Snapshot { vmid, .. } => self.clear_lock(*vmid, "snapshot"),
            TaskOp::DelSnapshot { vmid, .. } => self.clear_lock(*vmid, "snapshot-delete"),
            TaskOp::Rollback { vmid, .. } => self.clear_lock(*vmid, "rollback"),
            // The reboot never happened: the agent that `task_begin` took down answers again.
            TaskOp::Reboot { vmid } => {
                if let Some(Vm {
                    power: Power::Running { agent_ready_at, .. },
                    ..
                }) = self.vms.get_mut(vmid)
                {
                    *agent_ready_at = Instant::now();
                }
            }
            _ => {}
        }
    }

    /// Marks a VM running now; the agent answers after `agent_boot` (scaled); the guest runs its
    /// newest kernel.
    pub(super) fn boot(&mut self, vmid: u32) -> Option<()> {
        let agent_boot = self.scaled(self.durations.agent_boot);
        let pid = self.next_pid();
        self.clear_lock(vmid, "rollback");
        let vm = self.vms.get_mut(&vmid)?;
        let now = Instant::now();
        vm.power = Power::Running {
            since: now,
            uptime0: 0,
            pid,
            // An absurd agent_boot overflows Instant: treat it as "never" (a year), not a panic.
            agent_ready_at: now
                .checked_add(agent_boot)
                .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
                .unwrap_or(now),
        };
        vm.exec.clear();
        if let Some(packages) = vm.packages.as_mut() {
            packages.on_boot();
        }
        Some(())
    }

    pub(super) fn set_lock(&mut self, vmid: u32, lock: Option<&str>) {
        if let Some(vm) = self.vms.get_mut(&vmid) {
            match lock {
                Some(l) => vm.config.insert("lock".into(), l.to_owned()),
                None => vm.config.remove("lock"),
            };
        }
    }

    pub(super) fn clear_lock(&mut self, vmid: u32, expected: &str) {
        if self
            .vms
            .get(&vmid)
            .is_some_and(|vm| vm.lock() == Some(expected))
        {
            self.set_lock(vmid, None);
        }
    }

    /// (drive, volid) of a VM's data disks (no CD-ROMs, no cloud-init, no unused).
    pub(super) fn vm_disks(&self, vm: &Vm) -> Vec<(String, String)> {
        vm.config
            .iter()
            .filter(|(k, _)| !k.starts_with("unused"))
            .filter_map(|(k, v)| match parse_disk(k, v) {
                Some(DiskRef::Volume {
                    storage,
                    volname,
                    cdrom: false,
                    ..
                }) if !is_cloudinit(&volname) => Some((k.clone(), format!("{storage}:{volname}"))),
                _ => None,
            })
            .collect()
    }

    pub(super) fn on_zfs(&self, volid: &str) -> bool {
        volid
            .split_once(':')
            .and_then(|(s, _)| self.storage(s))
            .is_some_and(|s| s.kind == StorageKind::ZfsPool)
    }
}
