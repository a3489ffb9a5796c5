//! Read-only endpoints operators' scripts, the patcher, the lifecycle jobs and the console read:
//! cluster status and tasks, pending changes, RRD history, the node's certificates, the guest
//! agent's info, and the disks with their SMART health (package versions and changelogs are the
//! host's, `crate::host`). Values derive from
//! the same state and load model as the rest, so they agree with `status/current` and
//! `/cluster/resources`.

use serde_json::{Value, json};

use super::{ApiError, P, Reply, failed, param_error};
use crate::state::{State, now_epoch};

/// The NVMe mirror under `rpool`, as `disks/list` reports it (the seed host: two 1.92 TB drives).
const DISKS: [(&str, &str, &str); 2] = [
    ("/dev/nvme0n1", "S5XANA0R100001", "eui.0025388b1b400001"),
    ("/dev/nvme1n1", "S5XANA0R100002", "eui.0025388b1b400002"),
];
const DISK_MODEL: &str = "SAMSUNG MZQL21T9HCJR-00A07";
const DISK_SIZE: u64 = 1_920_383_410_176;

/// Seconds per RRD row for each `timeframe` (PVE keeps 70 rows per frame).
fn rrd_step(timeframe: &str) -> Option<i64> {
    match timeframe {
        "hour" => Some(60),
        "day" => Some(1_800),
        "week" => Some(10_800),
        "month" => Some(43_200),
        "year" => Some(604_800),
        _ => None,
    }
}

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

    /// `GET …/rrddata` of the node (`vmid` absent) or a VM: 70 rows of `timeframe`, the newest
    /// last, each the current load sample (the simulator keeps no history).
    pub(super) fn rrddata(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let timeframe = p.str("timeframe").unwrap_or_default();
        let step = rrd_step(&timeframe).ok_or_else(|| {
            param_error(
                "timeframe",
                "value does not have a value in the enumeration 'hour, day, week, month, year'",
            )
        })?;
        let row = match p.opt_num::<u32>("vmid") {
            Some(vmid) => {
                let vm = self.existing(vmid)?;
                let (cpu, _) = self.vm_load(vmid);
                let running = vm.running();
                json!({
                    "cpu": if running { cpu } else { 0.0 },
                    "maxcpu": vm.cpus(),
                    "mem": if running { self.vm_mem(vmid) } else { 0 },
                    "maxmem": vm.maxmem(),
                    "disk": 0,
                    "maxdisk": vm.maxdisk(),
                    "netin": if running { 1_500.0 } else { 0.0 },
                    "netout": if running { 1_000.0 } else { 0.0 },
                    "diskread": if running { 6_000.0 } else { 0.0 },
                    "diskwrite": if running { 4_000.0 } else { 0.0 },
                })
            }
            None => {
                let (cpu, mem) = self.host_usage();
                let (root_total, root_used) = self.rootfs();
                json!({
                    "cpu": cpu,
                    "maxcpu": self.node.cpus(),
                    "iowait": 0.0012,
                    "loadavg": cpu * f64::from(self.node.cpus()),
                    "memtotal": self.node.memory,
                    "memused": mem,
                    "swaptotal": 8u64 << 30,
                    "swapused": 0,
                    "roottotal": root_total,
                    "rootused": root_used,
                    "netin": 250_000.0,
                    "netout": 180_000.0,
                })
            }
        };
        let newest = now_epoch() / step * step;
        Ok(Reply::data(json!(
            (0..70)
                .rev()
                .map(|i| {
                    let mut r = row.clone();
                    r["time"] = json!(newest - i * step);
                    r
                })
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

    /// `GET /nodes/{node}/disks/list`: the NVMe mirror under `rpool`.
    pub(super) fn disks(&self) -> Value {
        let health = if self.zpool.health == "ONLINE" {
            "PASSED"
        } else {
            "FAILED"
        };
        json!(
            DISKS
                .iter()
                .map(|(devpath, serial, wwn)| json!({
                    "devpath": devpath,
                    "gpt": 1,
                    "mounted": 0,
                    "osdid": -1,
                    "osdid-list": [],
                    "health": health,
                    "model": DISK_MODEL,
                    "serial": serial,
                    "wwn": wwn,
                    "size": DISK_SIZE,
                    "type": "nvme",
                    "used": "ZFS",
                    "vendor": "unknown",
                    "wearout": 98,
                    "rpm": 0,
                    "by_id_link": format!("/dev/disk/by-id/nvme-{DISK_MODEL}_{serial}"),
                }))
                .collect::<Vec<_>>()
        )
    }

    /// `GET /nodes/{node}/disks/smart?disk=…`: NVMe health as smartctl prints it.
    pub(super) fn smart(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let disk = p.str("disk").unwrap_or_default();
        if !DISKS.iter().any(|(devpath, _, _)| *devpath == disk) {
            return Err(failed(format!("no such disk '{disk}'")));
        }
        let health = if self.zpool.health == "ONLINE" {
            "PASSED"
        } else {
            "FAILED"
        };
        let text = format!(
            "\nSMART/Health Information (NVMe Log 0x02)\nCritical Warning:                   0x00\n\
             Temperature:                        38 Celsius\nAvailable Spare:                    100%\n\
             Available Spare Threshold:          10%\nPercentage Used:                    2%\n\
             Data Units Read:                    48,211,093 [24.6 TB]\n\
             Data Units Written:                 61,530,027 [31.5 TB]\nPower On Hours:                     {}\n\
             Unsafe Shutdowns:                   11\nMedia and Data Integrity Errors:    0\n\
             Error Information Log Entries:      0\n",
            self.node_uptime() / 3600 + 8_760
        );
        Ok(Reply::data(
            json!({"health": health, "type": "text", "text": text, "wearout": 98}),
        ))
    }
}
