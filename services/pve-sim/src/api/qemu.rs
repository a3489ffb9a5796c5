//! VM operations: clone, config (read, PUT, POST), resize, power actions, destroy, snapshots and
//! the guest agent (whose `exec` runs scripted rules first, then a guest's package commands).
//! Each makes Proxmox's synchronous checks here and leaves what qemu-server does inside its worker
//! to `super::worker`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use super::{
    ApiError, P, Reply, TaskOp, failed, locked, no_config, param_error, typed_config, value_text,
};
use crate::agent::{ExecJob, ExecRule, Nic};
use crate::schema::{ApiSchema, split_list};
use crate::state::{CLOUDINIT_SIZE, Power, State, StorageKind, Vm, Volume};
use crate::volumes::{
    DiskRef, is_cloudinit, is_disk_key, own_name, parse_disk, with_size, with_volume,
};

/// URI::Escape's default: everything but `A-Za-z0-9-._~` percent-encoded.
fn uri_escape(text: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, KEEP).to_string()
}

/// `PVE::Tools::validate_ssh_public_keys`, loosely: every non-comment line is `<type> <base64>...`.
fn ssh_keys_valid(keys: &str) -> bool {
    keys.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .all(|line| {
            let mut fields = line.split_whitespace();
            let kind = fields.next().unwrap_or("");
            let blob = fields.next().unwrap_or("");
            (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
                && !blob.is_empty()
                && blob
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        })
}

impl State {
    pub(super) fn clone_vm(&mut self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        let newid: u32 = p.num("newid")?;
        let src = self.existing(vmid)?.clone();
        locked(&src)?;
        // A clone's disks, and so its packages, are the source's (or the snapshot's).
        let (base_config, packages) = match p.str("snapname") {
            Some(snap) => src
                .snapshots
                .iter()
                .find(|s| s.name == snap)
                .map(|s| (s.config.clone(), s.packages.clone()))
                .ok_or_else(|| failed(format!("snapshot '{snap}' does not exist")))?,
            None => (src.config.clone(), src.packages.clone()),
        };
        let template = src.is_template();
        let full = p.flag("full").unwrap_or(!template);
        if !full {
            for key in ["storage", "format"] {
                if p.str(key).is_some() {
                    return Err(failed(format!(
                        "parameter '{key}' not allowed for linked clones"
                    )));
                }
            }
        }
        if let Some(target) = p.str("target")
            && target != self.node.name
        {
            return Err(failed(format!(
                "can't clone VM to node '{target}' (VM uses local storage)"
            )));
        }
        if self.vms.contains_key(&newid) {
            return Err(failed(format!(
                "unable to create VM {newid}: config file already exists"
            )));
        }
        let target_storage = p.str("storage");
        if let Some(s) = &target_storage
            && self.storage(s).is_none()
        {
            return Err(failed(format!("storage '{s}' does not exist")));
        }
        let format = p.str("format").unwrap_or_else(|| "raw".into());

        let mut config = base_config;
        for key in [
            "template",
            "lock",
            "parent",
            "snaptime",
            "vmstate",
            "snapstate",
        ] {
            config.remove(key);
        }
        config.retain(|k, _| !k.starts_with("unused"));
        let src_name = src.config.get("name").cloned().unwrap_or_default();
        config.insert(
            "name".into(),
            p.str("name")
                .unwrap_or_else(|| format!("Copy-of-VM-{src_name}")),
        );
        if let Some(description) = p.str("description") {
            config.insert("description".into(), description);
        }
        if let Some(smbios) = config.get("smbios1").cloned() {
            let mut parts: Vec<String> = smbios
                .split(',')
                .filter(|p| !p.starts_with("uuid="))
                .map(str::to_owned)
                .collect();
            parts.insert(0, format!("uuid={}", self.new_uuid()));
            config.insert("smbios1".into(), parts.join(","));
        }
        if config.contains_key("vmgenid") {
            let id = self.new_uuid();
            config.insert("vmgenid".into(), id);
        }
        let nic_keys: Vec<String> = config
            .keys()
            .filter(|k| crate::schema::split_index(k).is_some_and(|(p, _)| p == "net"))
            .cloned()
            .collect();
        for key in nic_keys {
            if let Some(value) = config.get(&key) {
                let mut nic = Nic::parse(value);
                nic.mac = Some(self.new_mac());
                config.insert(key, nic.print());
            }
        }

        let mut new_volumes: Vec<(String, Volume)> = Vec::new();
        let mut drives = Vec::new();
        let mut disk_index = 0;
        let disk_keys: Vec<(String, String)> = config
            .iter()
            .filter(|(k, _)| is_disk_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in disk_keys {
            let Some(DiskRef::Volume {
                storage,
                volname,
                size,
                cdrom: false,
            }) = parse_disk(&key, &value)
            else {
                continue;
            };
            let src_volid = format!("{storage}:{volname}");
            let size = size
                .or_else(|| self.volumes.get(&src_volid).map(|v| v.size))
                .unwrap_or(0);
            let store_id = target_storage.clone().unwrap_or_else(|| storage.clone());
            let kind = self
                .storage(&store_id)
                .map(|s| s.kind)
                .ok_or_else(|| failed(format!("storage '{store_id}' does not exist")))?;
            let (new_volname, used, linked) = if is_cloudinit(&volname) {
                let name = match kind {
                    StorageKind::ZfsPool => format!("vm-{newid}-cloudinit"),
                    StorageKind::Dir => format!("{newid}/vm-{newid}-cloudinit.qcow2"),
                };
                (name, CLOUDINIT_SIZE, false)
            } else if full {
                let name = match kind {
                    StorageKind::ZfsPool => format!("vm-{newid}-disk-{disk_index}"),
                    StorageKind::Dir => format!("{newid}/vm-{newid}-disk-{disk_index}.{format}"),
                };
                disk_index += 1;
                (name, size, false)
            } else {
                let base = own_name(&volname);
                if !template || !base.starts_with("base-") {
                    return Err(failed(format!(
                        "Linked clone feature is not supported for drive '{key}'"
                    )));
                }
                let name = format!("{base}/vm-{newid}-disk-{disk_index}");
                disk_index += 1;
                (name, 0, true)
            };
            let new_volid = format!("{store_id}:{new_volname}");
            config.insert(key.clone(), with_volume(&value, &new_volid));
            if !is_cloudinit(&volname) {
                drives.push((key.clone(), src_volid, new_volid.clone(), linked));
            }
            new_volumes.push((
                new_volid,
                Volume {
                    storage: store_id,
                    vmid: newid,
                    size,
                    used,
                },
            ));
        }
        self.check_space(&new_volumes)?;
        config.insert("lock".into(), "clone".into());
        for (volid, volume) in new_volumes {
            self.volumes.insert(volid, volume);
        }
        self.vms.insert(
            newid,
            Vm {
                config,
                snapshots: Vec::new(),
                power: Power::Stopped,
                exec: BTreeMap::new(),
                next_exec_pid: 1000,
                packages: packages.as_ref().map(|p| p.for_clone()),
            },
        );
        Ok(self.task(vmid, TaskOp::Clone { newid, drives }))
    }

    /// Refuses allocations that do not fit (`zfs create` runs out of space).
    pub(super) fn check_space(&self, new: &[(String, Volume)]) -> Result<(), ApiError> {
        for storage in &self.storages {
            let need: u64 = new
                .iter()
                .filter(|(_, v)| v.storage == storage.id)
                .map(|(_, v)| v.used)
                .sum();
            let (_, _, avail) = self.storage_usage(storage);
            if need > avail {
                let name = new
                    .iter()
                    .find(|(_, v)| v.storage == storage.id)
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default();
                return Err(failed(format!(
                    "zfs error: cannot create '{name}': out of space"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn get_config(&self, schema: &ApiSchema, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        if p.str("snapshot").is_some() && p.flag("current").unwrap_or(false) {
            let msg = "cannot use 'snapshot' parameter with 'current'";
            return Err(ApiError::Params(
                [("snapshot", msg), ("current", msg)]
                    .map(|(k, m)| (k.to_owned(), m.to_owned()))
                    .into(),
            ));
        }
        let vm = self.existing(vmid)?;
        if let Some(snap) = p.str("snapshot") {
            let s = vm
                .snapshots
                .iter()
                .find(|s| s.name == snap)
                .ok_or_else(|| failed(format!("snapshot '{snap}' does not exist")))?;
            // qemu-server hands back the snapshot's section with the config file's digest.
            let mut typed = typed_config(schema, &s.config);
            typed.insert("digest".into(), json!(Self::digest(vm)));
            return Ok(Reply::data(Value::Object(typed)));
        }
        let mut config = vm.config.clone();
        if config.contains_key("cipassword") {
            config.insert("cipassword".into(), "**********".into());
        }
        let mut typed = typed_config(schema, &config);
        typed.insert("digest".into(), json!(Self::digest(vm)));
        Ok(Reply::data(Value::Object(typed)))
    }

    pub(super) fn snapshot_config(&self, schema: &ApiSchema, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        let vm = self.existing(vmid)?;
        let name = p.str("snapname").unwrap_or_default();
        let snap = vm
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| failed(format!("snapshot '{name}' does not exist")))?;
        let mut config = typed_config(schema, &snap.config);
        config.insert("snaptime".into(), json!(snap.snaptime));
        config.insert("description".into(), json!(snap.description));
        if snap.vmstate {
            config.insert("vmstate".into(), json!(1));
        }
        if let Some(parent) = &snap.parent {
            config.insert("parent".into(), json!(parent));
        }
        Ok(Reply::data(Value::Object(config)))
    }

    /// `PUT` (sync, null) and `POST` (async, UPID) config: both make their checks and write the
    /// config before answering, as qemu-server's `update_vm` does.
    pub(super) fn update_config(
        &mut self,
        schema: &ApiSchema,
        p: &P<'_>,
        sync: bool,
    ) -> Result<Reply, ApiError> {
        const NOT_CONFIG: [&str; 8] = [
            "node",
            "vmid",
            "digest",
            "delete",
            "skiplock",
            "force",
            "revert",
            "background_delay",
        ];
        let vmid = p.vmid()?;
        let deletes: Vec<String> = p
            .str("delete")
            .map(|d| split_list(&d).into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        for key in &deletes {
            // `PVE::QemuServer::check_delete` knows every option of the config schema.
            if schema.param_type("POST", super::CONFIG, key).is_none()
                || NOT_CONFIG.contains(&key.as_str())
            {
                return Err(param_error("delete", format!("unknown option '{key}'")));
            }
            if p.0.contains_key(key) {
                return Err(param_error(
                    "delete",
                    format!("you can't use '-{key}' and -delete {key}' at the same time"),
                ));
            }
        }
        let vm = self.existing(vmid)?;
        if let Some(digest) = p.str("digest")
            && !digest.is_empty()
            && digest != Self::digest(vm)
        {
            return Err(failed("checksum mismatch (file change by other user?)"));
        }
        if !p.flag("skiplock").unwrap_or(false) {
            locked(vm)?;
        }
        let changes: Vec<(String, String)> =
            p.0.keys()
                .filter(|k| !NOT_CONFIG.contains(&k.as_str()))
                .filter_map(|k| p.str(k).map(|v| (k.clone(), v)))
                .collect();
        if changes.is_empty() && deletes.is_empty() {
            return Err(failed("no options specified"));
        }

        let mut config = vm.config.clone();
        let mut new_volumes: Vec<(String, Volume)> = Vec::new();
        let mut freed: Vec<String> = Vec::new();
        let mut unused_add: Vec<String> = Vec::new();
        for key in &deletes {
            let Some(old) = config.remove(key) else {
                continue;
            };
            if let Some(DiskRef::Volume {
                storage,
                volname,
                cdrom: false,
                ..
            }) = parse_disk(key, &old)
            {
                let volid = format!("{storage}:{volname}");
                if key.starts_with("unused") || is_cloudinit(&volname) {
                    freed.push(volid);
                } else {
                    unused_add.push(volid);
                }
            }
        }
        let mut next_disk = self.next_disk_index(vmid);
        for (key, raw) in changes {
            let value = if key.starts_with("net")
                && crate::schema::split_index(&key).is_some_and(|(p, _)| p == "net")
            {
                let mut nic = Nic::parse(&raw);
                if nic.mac.is_none() {
                    nic.mac = Some(self.new_mac());
                }
                nic.print()
            } else if key == "tags" {
                let mut tags: Vec<&str> = split_list(&raw);
                tags.sort_unstable();
                tags.dedup();
                tags.join(";")
            } else if key == "memory" {
                raw.strip_prefix("current=").unwrap_or(&raw).to_owned()
            } else if key == "sshkeys" {
                let decoded = percent_encoding::percent_decode_str(&raw)
                    .decode_utf8_lossy()
                    .into_owned();
                if !ssh_keys_valid(&decoded) {
                    return Err(failed("SSH public key validation error"));
                }
                uri_escape(&decoded)
            } else {
                match parse_disk(&key, &raw) {
                    Some(DiskRef::Alloc { storage, gib }) => {
                        let kind = self
                            .storage(&storage)
                            .map(|s| s.kind)
                            .ok_or_else(|| failed(format!("storage '{storage}' does not exist")))?;
                        let volname = match kind {
                            StorageKind::ZfsPool => format!("vm-{vmid}-disk-{next_disk}"),
                            StorageKind::Dir => format!("{vmid}/vm-{vmid}-disk-{next_disk}.raw"),
                        };
                        next_disk += 1;
                        let size = (gib * f64::from(1u32 << 30)) as u64;
                        let volid = format!("{storage}:{volname}");
                        new_volumes.push((
                            volid.clone(),
                            Volume {
                                storage,
                                vmid,
                                size,
                                used: size,
                            },
                        ));
                        with_size(&with_volume(&raw, &volid), size)
                    }
                    Some(DiskRef::CloudInit { storage }) => {
                        let kind = self
                            .storage(&storage)
                            .map(|s| s.kind)
                            .ok_or_else(|| failed(format!("storage '{storage}' does not exist")))?;
                        let volname = match kind {
                            StorageKind::ZfsPool => format!("vm-{vmid}-cloudinit"),
                            StorageKind::Dir => format!("{vmid}/vm-{vmid}-cloudinit.qcow2"),
                        };
                        let volid = format!("{storage}:{volname}");
                        new_volumes.push((
                            volid.clone(),
                            Volume {
                                storage,
                                vmid,
                                size: CLOUDINIT_SIZE,
                                used: CLOUDINIT_SIZE,
                            },
                        ));
                        format!("{volid},media=cdrom")
                    }
                    Some(DiskRef::Volume {
                        storage,
                        volname,
                        cdrom,
                        ..
                    }) => {
                        let volid = format!("{storage}:{volname}");
                        if self.storage(&storage).is_none() {
                            return Err(failed(format!("storage '{storage}' does not exist")));
                        }
                        if !cdrom && !self.volumes.contains_key(&volid) {
                            return Err(failed(format!("volume '{volid}' does not exist")));
                        }
                        raw
                    }
                    _ => raw,
                }
            };
            // A replaced disk is kept as unusedN, as qemu-server does.
            if let Some(old) = config.get(&key)
                && let Some(DiskRef::Volume {
                    storage,
                    volname,
                    cdrom: false,
                    ..
                }) = parse_disk(&key, old)
            {
                let volid = format!("{storage}:{volname}");
                if !value.starts_with(&format!("{volid},")) && value != volid {
                    if is_cloudinit(&volname) {
                        freed.push(volid);
                    } else {
                        unused_add.push(volid);
                    }
                }
            }
            config.insert(key, value);
        }
        let memory = config
            .get("memory")
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or(512);
        if let Some(balloon) = config.get("balloon").and_then(|b| b.parse::<u64>().ok())
            && balloon > memory
        {
            return Err(failed(
                "balloon value too large (must be smaller than assigned memory)",
            ));
        }
        self.check_space(&new_volumes)?;
        for volid in unused_add {
            let slot = (0..256)
                .map(|i| format!("unused{i}"))
                .find(|k| !config.contains_key(k))
                .unwrap_or_else(|| "unused255".into());
            config.insert(slot, volid);
        }
        for volid in freed {
            self.volumes.remove(&volid);
        }
        for (volid, volume) in new_volumes {
            self.volumes.insert(volid, volume);
        }
        if let Some(vm) = self.vms.get_mut(&vmid) {
            vm.config = config;
        }
        if sync {
            Ok(Reply::data(Value::Null))
        } else {
            Ok(self.task(vmid, TaskOp::Config))
        }
    }

    /// The lowest free `disk-<n>` of a VM across its volumes.
    pub(super) fn next_disk_index(&self, vmid: u32) -> u32 {
        let taken: Vec<&str> = self
            .volumes
            .keys()
            .filter_map(|id| id.split_once(':'))
            .map(|(_, name)| {
                let own = own_name(name);
                own.split_once('.').map_or(own, |(stem, _)| stem)
            })
            .collect();
        (0u32..)
            .find(|n| !taken.contains(&format!("vm-{vmid}-disk-{n}").as_str()))
            .unwrap_or(0)
    }

    pub(super) fn resize(&mut self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        let disk = p.str("disk").unwrap_or_default();
        let size_text = p.str("size").unwrap_or_default();
        let vm = self.existing(vmid)?;
        if let Some(digest) = p.str("digest")
            && digest != Self::digest(vm)
        {
            return Err(failed("checksum mismatch (file change by other user?)"));
        }
        if !p.flag("skiplock").unwrap_or(false) {
            locked(vm)?;
        }
        let value = vm
            .config
            .get(&disk)
            .ok_or_else(|| failed(format!("disk '{disk}' does not exist")))?;
        let Some(DiskRef::Volume {
            storage,
            volname,
            size,
            cdrom,
        }) = parse_disk(&disk, value)
        else {
            return Err(failed(format!("disk '{disk}' does not exist")));
        };
        if cdrom || is_cloudinit(&volname) {
            return Err(failed("you can't resize a cdrom"));
        }
        let volid = format!("{storage}:{volname}");
        let old = size
            .or_else(|| self.volumes.get(&volid).map(|v| v.size))
            .unwrap_or(0);
        let (relative, amount) = match size_text.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, size_text.as_str()),
        };
        let amount = crate::schema::parse_size(amount)
            .ok_or_else(|| failed(format!("unable to parse size '{size_text}'")))?;
        let new = if relative {
            old.saturating_add(amount)
        } else {
            amount
        };
        if new < old {
            return Err(failed("shrinking disks is not supported"));
        }
        Ok(self.task(
            vmid,
            TaskOp::Resize {
                vmid,
                disk,
                size: new,
            },
        ))
    }

    pub(super) fn power(&mut self, p: &P<'_>, action: &str) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        let vm = self.existing(vmid)?;
        let op = match action {
            "start" => TaskOp::Start { vmid },
            "reboot" => {
                if !vm.running() {
                    return Err(failed(format!("VM {vmid} not running")));
                }
                TaskOp::Reboot { vmid }
            }
            "shutdown" => TaskOp::Shutdown { vmid },
            _ => TaskOp::Stop { vmid },
        };
        Ok(self.task(vmid, op))
    }

    pub(super) fn destroy(&mut self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        let vm = self.existing(vmid)?;
        if !p.flag("skiplock").unwrap_or(false) {
            locked(vm)?;
        }
        if vm.config.get("protection").is_some_and(|v| v == "1") {
            return Err(failed(format!(
                "can't remove VM {vmid} - protection mode enabled"
            )));
        }
        if vm.running() {
            return Err(failed(format!("VM {vmid} is running - destroy failed")));
        }
        Ok(self.task(vmid, TaskOp::Destroy { vmid }))
    }

    /// The VM if its guest agent answers, else the error qemu-server gives.
    pub(super) fn agent_ready(&self, vmid: u32) -> Result<&Vm, ApiError> {
        let vm = self.existing(vmid)?;
        if !vm.agent_enabled() {
            return Err(failed("No QEMU guest agent configured"));
        }
        let Power::Running { agent_ready_at, .. } = &vm.power else {
            return Err(failed(format!("VM {vmid} is not running")));
        };
        if Instant::now() < *agent_ready_at || self.faults.agent_never_up.contains(&vmid) {
            return Err(failed("QEMU guest agent is not running"));
        }
        Ok(vm)
    }

    pub(super) fn agent_exec(&mut self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        self.agent_ready(vmid)?;
        let command: Vec<String> = match p.0.get("command") {
            Some(Value::Array(items)) => items.iter().filter_map(value_text).collect(),
            _ => p.str("command").into_iter().collect(),
        };
        if command.is_empty() {
            return Err(param_error(
                "command",
                "property is missing and it is not optional",
            ));
        }
        let scripted = self.exec_script.rule_for(vmid, &command).cloned();
        let upgrade_time = self.scaled(self.durations.guest_upgrade);
        let Some(vm) = self.vms.get_mut(&vmid) else {
            return Err(no_config(&self.node.name, vmid));
        };
        let pid = vm.next_exec_pid;
        vm.next_exec_pid = vm.next_exec_pid.wrapping_add(1);
        let now = Instant::now();
        let mut package_command = || {
            vm.packages
                .as_mut()
                .and_then(|packages| packages.exec(&command, pid, now, upgrade_time))
        };
        // A scripted rule wins over the package model, which wins over the default (exit 0).
        let (job, reboot) = match scripted.map(ExecJob::scripted) {
            Some(job) => (job, false),
            None => match package_command() {
                Some(outcome) => (
                    ExecJob {
                        result: ExecRule {
                            exitcode: outcome.exitcode,
                            out_data: outcome.out,
                            err_data: outcome.err,
                            ..ExecRule::default()
                        },
                        polls_left: 0,
                        running_until: outcome.running_until,
                    },
                    outcome.reboot,
                ),
                None => (ExecJob::scripted(ExecRule::default()), false),
            },
        };
        vm.exec.insert(pid, job);
        if reboot {
            self.guest_reboot(vmid);
        }
        Ok(Reply::data(json!({"pid": pid})))
    }

    /// The guest reboots itself (`systemctl reboot`): QEMU resets in place (same process, so PVE's
    /// uptime goes on), the agent is down until the guest is back up (`durations.reboot`) and has
    /// started it (`agent_boot`), and the guest boots its newest kernel.
    fn guest_reboot(&mut self, vmid: u32) {
        let down = self
            .scaled(self.durations.reboot)
            .saturating_add(self.scaled(self.durations.agent_boot));
        let Some(vm) = self.vms.get_mut(&vmid) else {
            return;
        };
        vm.exec.clear();
        if let Power::Running { agent_ready_at, .. } = &mut vm.power {
            let now = Instant::now();
            *agent_ready_at = now
                .checked_add(down)
                .unwrap_or_else(|| crate::state::agent_never(now));
        }
        if let Some(packages) = vm.packages.as_mut() {
            packages.on_boot();
        }
    }

    pub(super) fn agent_exec_status(&mut self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        let pid: Option<u32> = p.opt_num("pid");
        self.agent_ready(vmid)?;
        let Some(vm) = self.vms.get_mut(&vmid) else {
            return Err(no_config(&self.node.name, vmid));
        };
        let Some((pid, job)) = pid.and_then(|pid| vm.exec.get_mut(&pid).map(|job| (pid, job)))
        else {
            return Err(failed("Agent error: Invalid parameter 'pid'"));
        };
        let status = job.poll();
        // The guest agent forgets a command once its exit was read.
        if status["exited"] == json!(1) {
            vm.exec.remove(&pid);
        }
        Ok(Reply::data(status))
    }

    pub(super) fn list_snapshots(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        let vm = self.existing(vmid)?;
        let mut list: Vec<Value> = vm
            .snapshots
            .iter()
            .map(|s| {
                let mut v = json!({
                    "name": s.name,
                    "description": s.description,
                    "snaptime": s.snaptime,
                    "vmstate": u8::from(s.vmstate),
                });
                if let Some(parent) = &s.parent {
                    v["parent"] = json!(parent);
                }
                v
            })
            .collect();
        let mut current = json!({
            "name": "current",
            "description": "You are here!",
            "digest": Self::digest(vm),
            "running": u8::from(vm.running()),
        });
        if let Some(parent) = vm.config.get("parent") {
            current["parent"] = json!(parent);
        }
        list.push(current);
        Ok(Reply::data(json!(list)))
    }

    pub(super) fn snapshot(&mut self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        self.existing(vmid)?;
        let name = p.str("snapname").unwrap_or_default();
        if name == "current" || name.eq_ignore_ascii_case("pending") {
            return Err(failed(format!(
                "unable to use snapshot name '{name}' (reserved name)"
            )));
        }
        let description = p.str("description").unwrap_or_default();
        let vmstate = p.flag("vmstate").unwrap_or(false);
        Ok(self.task(
            vmid,
            TaskOp::Snapshot {
                vmid,
                name,
                description,
                vmstate,
            },
        ))
    }
}
