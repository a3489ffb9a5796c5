//! Read-only endpoints operators' scripts, the patcher, the lifecycle jobs and the console read:
//! cluster status and tasks, pending changes, the node's certificates, the guest agent's info, and
//! the disks with their SMART health (RRD history is `super::rrd`; package versions and changelogs
//! are the host's, `crate::host`). Values derive from the same state and load model as the rest,
//! so they agree with `status/current` and `/cluster/resources`.

use serde_json::{Value, json};

use super::{ApiError, P, Reply, failed};
use crate::state::{State, now_epoch};

impl State {
    /// `GET /cluster/status`: a standalone node (no corosync cluster) lists only itself, at the
    /// address of its first bridge that has one (the management network).
    pub(super) fn cluster_status(&self) -> Value {
        let ip = self
            .bridges
            .iter()
            .find_map(|b| b.cidr.as_deref()?.split('/').next())
            .unwrap_or("127.0.0.1");
        json!([{
            "id": format!("node/{}", self.node.name),
            "name": self.node.name,
            "type": "node",
            "ip": ip,
            "level": "",
            "local": 1,
            "nodeid": 0,
            "online": 1,
        }])
    }

    /// `GET /cluster/tasks`: the newest tasks of every node, running first as PVE lists them.
    pub(super) fn cluster_tasks(&self) -> Value {
        let (running, done): (Vec<_>, Vec<_>) =
            self.tasks.list.iter().rev().partition(|t| t.running());
        json!(
            running
                .into_iter()
                .chain(done)
                .take(50)
                .map(crate::tasks::TaskRecord::list_json)
                .collect::<Vec<_>>()
        )
    }

    /// `GET …/qemu/{vmid}/pending`: every config key with its value. Changes apply at once here
    /// (as if hot-pluggable), so nothing is ever pending.
    pub(super) fn pending(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let vm = self.existing(p.vmid()?)?;
        Ok(Reply::data(json!(
            vm.config
                .iter()
                .map(|(key, value)| json!({"key": key, "value": value}))
                .collect::<Vec<_>>()
        )))
    }

    /// `GET /nodes/{node}/certificates/info`: the node's `pve-ssl.pem`.
    pub(super) fn certificates(&self) -> Value {
        let fingerprint = self.fingerprint.clone().unwrap_or_else(|| {
            // Plain HTTP: no certificate is served, but the node still has one.
            vec!["00"; 32].join(":")
        });
        let now = now_epoch();
        json!([{
            "filename": "pve-ssl.pem",
            "fingerprint": fingerprint,
            "issuer": "/CN=Proxmox Virtual Environment/OU=pve-sim/O=PVE Cluster Manager CA",
            "subject": format!("/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN={}.lan", self.node.name),
            "notbefore": now - 86_400,
            "notafter": now + 2 * 365 * 86_400,
            "public-key-type": "rsaEncryption",
            "public-key-bits": 2048,
            "san": ["127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001", "localhost", self.node.name],
        }])
    }

    /// `GET …/agent/info`: the guest agent's version and commands, once it answers.
    pub(super) fn agent_info(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        self.agent_ready(p.vmid()?)?;
        let commands: Vec<Value> = [
            "guest-exec",
            "guest-exec-status",
            "guest-fsfreeze-freeze",
            "guest-fsfreeze-thaw",
            "guest-get-osinfo",
            "guest-info",
            "guest-network-get-interfaces",
            "guest-ping",
            "guest-shutdown",
        ]
        .iter()
        .map(|name| json!({"name": name, "enabled": true, "success-response": *name != "guest-shutdown"}))
        .collect();
        Ok(Reply::data(
            json!({"result": {"version": "6.2.0", "supported_commands": commands}}),
        ))
    }

    /// `GET /nodes/{node}/disks/list`: the node's disks (the seed's NVMe mirror under `rpool`)
    /// with the SMART health and wearout the scenario or `PUT /_sim/host/disk` set.
    pub(super) fn disks(&self) -> Value {
        json!(
            self.platform
                .disks
                .iter()
                .map(disk_json)
                .collect::<Vec<_>>()
        )
    }

    /// One disk's `disks/list` entry, by devpath.
    pub(crate) fn disk_entry(&self, devpath: &str) -> Option<Value> {
        self.platform.disk(devpath).map(disk_json)
    }

    /// `GET /nodes/{node}/disks/smart?disk=…`: NVMe health as smartctl prints it; `Percentage
    /// Used` is 100 − wearout, and a failed disk shows a critical warning and spare below its
    /// threshold. `healthonly=1` leaves out the text.
    pub(super) fn smart(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let devpath = p.str("disk").unwrap_or_default();
        let disk = self
            .platform
            .disk(&devpath)
            .ok_or_else(|| failed(format!("no such disk '{devpath}'")))?;
        let s = &disk.spec;
        if p.flag("healthonly").unwrap_or(false) {
            return Ok(Reply::data(json!({"health": s.health})));
        }
        let failed_disk = s.health == "FAILED";
        let (warning, spare) = if failed_disk {
            ("0x04", 5)
        } else {
            ("0x00", 100)
        };
        let text = format!(
            "\nSMART overall-health self-assessment test result: {}\n\n\
             SMART/Health Information (NVMe Log 0x02)\nCritical Warning:                   {warning}\n\
             Temperature:                        38 Celsius\nAvailable Spare:                    {spare}%\n\
             Available Spare Threshold:          10%\nPercentage Used:                    {}%\n\
             Data Units Read:                    48,211,093 [24.6 TB]\n\
             Data Units Written:                 61,530,027 [31.5 TB]\nPower On Hours:                     {}\n\
             Unsafe Shutdowns:                   11\nMedia and Data Integrity Errors:    {}\n\
             Error Information Log Entries:      0\n",
            if failed_disk { "FAILED!" } else { "PASSED" },
            100 - u32::from(s.wearout.min(100)),
            self.node_uptime() / 3600 + 8_760,
            if failed_disk { 17 } else { 0 },
        );
        Ok(Reply::data(
            json!({"health": s.health, "type": "text", "text": text, "wearout": s.wearout}),
        ))
    }
}

/// A disk as `disks/list` reports it.
fn disk_json(d: &crate::platform::Disk) -> Value {
    let s = &d.spec;
    let nvme = s.devpath.starts_with("/dev/nvme");
    // The last four serial characters stand in for the unit's own EUI-64 suffix.
    let skip = s.serial.chars().count().saturating_sub(4);
    let tail: String = s.serial.chars().skip(skip).collect();
    let link = format!(
        "/dev/disk/by-id/{}-{}_{}",
        if nvme { "nvme" } else { "ata" },
        s.model.replace(' ', "_"),
        s.serial
    );
    json!({
        "devpath": s.devpath,
        "gpt": 1,
        "mounted": 0,
        "osdid": -1,
        "osdid-list": [],
        "health": s.health,
        "model": s.model,
        "serial": s.serial,
        "wwn": format!("eui.0025388b1b40{tail}"),
        "size": d.size,
        "type": if nvme { "nvme" } else { "ssd" },
        "used": "ZFS",
        "vendor": "unknown",
        "wearout": s.wearout,
        "rpm": 0,
        "by_id_link": link,
    })
}
