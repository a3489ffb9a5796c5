//! Node-level reads: version, node status, cluster resources and next id, the VM list and VM
//! status, storages and their content, the ZFS pool and the bridges. Figures derive from the
//! scenario, the volumes and the load model (see `crate::load`).

use std::time::Instant;

use serde_json::{Value, json};

use super::{ApiError, P, Reply, param_error};
use crate::schema::split_list;
use crate::state::{Power, State, StatusBroadcast, StorageKind};

impl State {
    pub(super) fn version(&self) -> Value {
        let mut parts = self.node.pve_version.split('/').skip(1);
        let version = parts.next().unwrap_or("8.4.1").to_owned();
        let repoid = parts.next().unwrap_or("2a5fa54a8503f96d").to_owned();
        let release = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        json!({"version": version, "release": release, "repoid": repoid, "console": "html5"})
    }

    pub(super) fn rootfs(&self) -> (u64, u64) {
        self.storages
            .iter()
            .find(|s| s.kind == StorageKind::Dir)
            .map(|s| {
                let (total, used, _) = self.storage_usage(s);
                (total, used)
            })
            .unwrap_or((100 << 30, 8 << 30))
    }

    pub(super) fn node_entry(&self) -> Value {
        let (cpu, mem) = self.host_usage();
        let (root_total, root_used) = self.rootfs();
        let mut v = json!({
            "id": format!("node/{}", self.node.name),
            "type": "node",
            "node": self.node.name,
            "status": "online",
            "level": "",
            "cpu": cpu,
            "maxcpu": self.node.cpus(),
            "mem": mem,
            "maxmem": self.node.memory,
            "disk": root_used,
            "maxdisk": root_total,
            "uptime": self.node_uptime(),
        });
        if let Some(fp) = &self.fingerprint {
            v["ssl_fingerprint"] = json!(fp);
        }
        v
    }

    pub(super) fn node_status(&self) -> Value {
        let (cpu, mem) = self.host_usage();
        let (root_total, root_used) = self.rootfs();
        let cpus = self.node.cpus();
        let load = cpu * f64::from(cpus);
        let n = &self.node;
        json!({
            "uptime": self.node_uptime(),
            "idle": 0,
            "loadavg": [format!("{:.2}", load), format!("{:.2}", load * 0.95), format!("{:.2}", load * 0.9)],
            "kversion": format!("Linux {} {}", n.kernel_release, n.kernel_version),
            "current-kernel": {"sysname": "Linux", "release": n.kernel_release, "version": n.kernel_version, "machine": "x86_64"},
            "boot-info": {"mode": "efi", "secureboot": 0},
            "cpuinfo": {
                "model": n.cpu_model, "cpus": cpus, "cores": n.cores, "sockets": n.sockets,
                "mhz": n.mhz, "hvm": "1", "user_hz": 100,
                "flags": "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf pni pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs skinit wdt tce topoext perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb cat_l3 cdp_l3 hw_pstate ssbd mba ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local clzero irperf xsaveerptr rdpru wbnoinvd amd_ppin arat npt lbrv svm_lock nrip_save tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold v_vmsave_vmload vgif v_spec_ctrl umip pku ospke vaes vpclmulqdq rdpid overflow_recov succor smca"
            },
            "cpu": cpu,
            "wait": 0.0012,
            "memory": {"total": n.memory, "used": mem, "free": n.memory - mem},
            "ksm": {"shared": 0},
            "swap": {"total": 8u64 << 30, "used": 0, "free": 8u64 << 30},
            "rootfs": {"total": root_total, "used": root_used, "free": root_total - root_used, "avail": root_total - root_used},
            "pveversion": n.pve_version,
        })
    }

    pub(super) fn nextid(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        if let Some(vmid) = p.opt_num::<u32>("vmid") {
            if self.vms.contains_key(&vmid) {
                return Err(param_error("vmid", format!("VM {vmid} already exists")));
            }
            return Ok(Reply::data(json!(vmid.to_string())));
        }
        let free = (100u32..)
            .find(|id| !self.vms.contains_key(id))
            .unwrap_or(100);
        // Perl stringifies the id: real hosts answer "100", not 100.
        Ok(Reply::data(json!(free.to_string())))
    }

    /// A VM as listed (`GET .../qemu`, `full` = `status/current` fields).
    pub(super) fn vm_entry(&self, vmid: u32, current: bool) -> Value {
        let Some(vm) = self.vms.get(&vmid) else {
            return Value::Null;
        };
        let (cpu, _) = self.vm_load(vmid);
        let uptime = vm.uptime();
        let running = vm.running();
        let mut v = json!({
            "vmid": vmid,
            "name": vm.name(vmid),
            "status": if running { "running" } else { "stopped" },
            "cpus": vm.cpus(),
            "cpu": cpu,
            "maxmem": vm.maxmem(),
            "mem": self.vm_mem(vmid),
            "maxdisk": vm.maxdisk(),
            "disk": 0,
            "uptime": uptime,
            "netin": uptime.saturating_mul(12_000),
            "netout": uptime.saturating_mul(8_000),
            "diskread": uptime.saturating_mul(50_000),
            "diskwrite": uptime.saturating_mul(30_000),
        });
        if let Power::Running { pid, .. } = &vm.power {
            v["pid"] = json!(pid);
        }
        if let Some(lock) = vm.lock() {
            v["lock"] = json!(lock);
        }
        if let Some(tags) = vm.config.get("tags") {
            v["tags"] = json!(tags);
        }
        if vm.is_template() {
            v["template"] = json!(1);
        }
        if vm.config.keys().any(|k| k.starts_with("serial")) {
            v["serial"] = json!(1);
        }
        // Proxmox's vmstatus sets `balloon_min` for every VM with ballooning, listed or not.
        let balloon = vm
            .config
            .get("balloon")
            .and_then(|b| b.parse::<u64>().ok())
            .filter(|b| *b > 0);
        if let Some(balloon) = balloon {
            v["balloon_min"] = json!(balloon.saturating_mul(1 << 20));
        }
        if current {
            v["qmpstatus"] = json!(if running { "running" } else { "stopped" });
            v["ha"] = json!({"managed": 0});
            if vm.agent_enabled() {
                v["agent"] = json!(1);
            }
            if balloon.is_some() && running {
                v["balloon"] = json!(vm.maxmem());
                v["freemem"] = json!(vm.maxmem().saturating_sub(self.vm_mem(vmid)));
            }
            if running {
                v["running-machine"] = json!("pc-i440fx-9.0+pve0");
                v["running-qemu"] = json!("9.0.2");
            }
        }
        v
    }

    /// An entry of `GET /nodes/{node}/qemu`; with `full`, a running VM also gets what
    /// `vmstatus($full)` adds from QMP: run state, balloon, block and NIC counters, machine and QEMU
    /// versions, and the `proxmox-support` feature map.
    pub(super) fn vm_list_entry(&self, vmid: u32, full: bool) -> Value {
        let mut v = self.vm_entry(vmid, false);
        let Some(vm) = self.vms.get(&vmid) else {
            return v;
        };
        if !full || !vm.running() {
            return v;
        }
        let uptime = vm.uptime();
        let (maxmem, mem) = (vm.maxmem(), self.vm_mem(vmid));
        v["qmpstatus"] = json!("running");
        v["running-machine"] = json!("pc-i440fx-9.0+pve0");
        v["running-qemu"] = json!("9.0.2");
        v["ballooninfo"] = json!({
            "actual": maxmem,
            "max_mem": maxmem,
            "total_mem": maxmem,
            "free_mem": maxmem.saturating_sub(mem),
            "mem_swapped_in": 0,
            "mem_swapped_out": 0,
            "major_page_faults": uptime.saturating_mul(3),
            "minor_page_faults": uptime.saturating_mul(900),
            "last_update": crate::state::now_epoch(),
        });
        let blockstat: serde_json::Map<String, Value> = self
            .vm_disks(vm)
            .into_iter()
            .map(|(drive, _)| {
                (
                    drive,
                    json!({
                        "rd_bytes": uptime.saturating_mul(50_000),
                        "wr_bytes": uptime.saturating_mul(30_000),
                        "rd_operations": uptime.saturating_mul(12),
                        "wr_operations": uptime.saturating_mul(8),
                        "flush_operations": uptime,
                        "failed_rd_operations": 0,
                        "failed_wr_operations": 0,
                    }),
                )
            })
            .collect();
        v["blockstat"] = Value::Object(blockstat);
        let nics: serde_json::Map<String, Value> = vm
            .config
            .keys()
            .filter_map(|k| k.strip_prefix("net"))
            .filter(|n| n.parse::<u32>().is_ok())
            .map(|n| {
                (
                    format!("tap{vmid}i{n}"),
                    json!({
                        "netin": uptime.saturating_mul(12_000),
                        "netout": uptime.saturating_mul(8_000),
                    }),
                )
            })
            .collect();
        v["nics"] = Value::Object(nics);
        v["proxmox-support"] = json!({
            "backup-fleecing": true,
            "backup-max-workers": true,
            "pbs-dirty-bitmap": true,
            "pbs-dirty-bitmap-migration": true,
            "pbs-dirty-bitmap-savevm": true,
            "pbs-library-version": "1.4.1 (UNKNOWN)",
            "pbs-masterkey": true,
            "query-bitmap-info": true,
        });
        v
    }

    /// `GET /cluster/resources`. The guests are listed as they are now (PVE reads the VM list and
    /// configs from the cluster file system), but the figures — node, storage and guest usage,
    /// guest status and uptime — are those pvestatd last broadcast, refreshed every
    /// `durations.status_interval` (10 s); a guest created since has none yet (`status: unknown`).
    pub(super) fn resources(&mut self, kind: Option<&str>) -> Value {
        let interval = self.scaled(self.durations.status_interval);
        if self
            .broadcast
            .as_ref()
            .is_none_or(|b| b.taken.elapsed() >= interval)
        {
            self.broadcast = Some(self.live_broadcast());
        }
        let Some(broadcast) = &self.broadcast else {
            return json!([]);
        };
        let shows = |k: &str| kind.is_none_or(|wanted| wanted == k);
        let mut out = Vec::new();
        if shows("node") {
            out.push(broadcast.node.clone());
        }
        if shows("storage") {
            out.extend(broadcast.storages.iter().cloned());
        }
        if shows("sdn") {
            // PVE 8 lists each node's local network zone, SDN configured or not.
            out.push(json!({
                "id": format!("sdn/{}/localnetwork", self.node.name),
                "type": "sdn",
                "sdn": "localnetwork",
                "node": self.node.name,
                "status": "ok",
            }));
        }
        if shows("vm") {
            for (vmid, vm) in &self.vms {
                let mut v = broadcast.vms.get(vmid).cloned().unwrap_or_else(|| {
                    json!({"id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid,
                           "node": self.node.name, "status": "unknown"})
                });
                // From the configuration, not from pvestatd: current at once.
                v["template"] = json!(u8::from(vm.is_template()));
                if let Some(lock) = vm.lock() {
                    v["lock"] = json!(lock);
                }
                if let Some(tags) = vm.config.get("tags") {
                    v["tags"] = json!(tags);
                }
                out.push(v);
            }
        }
        json!(out)
    }

    /// The node, storage and guest figures as they are now: what pvestatd would broadcast.
    fn live_broadcast(&self) -> StatusBroadcast {
        let storages = self
            .storages
            .iter()
            .map(|s| {
                let (total, used, _) = self.storage_usage(s);
                json!({
                    "id": format!("storage/{}/{}", self.node.name, s.id),
                    "type": "storage",
                    "storage": s.id,
                    "node": self.node.name,
                    "plugintype": s.kind.name(),
                    "status": "available",
                    "shared": 0,
                    "content": s.content,
                    "disk": used,
                    "maxdisk": total,
                })
            })
            .collect();
        let vms = self
            .vms
            .iter()
            .map(|(vmid, vm)| {
                let entry = self.vm_entry(*vmid, false);
                let mut v = json!({
                    "id": format!("qemu/{vmid}"),
                    "type": "qemu",
                    "vmid": vmid,
                    "node": self.node.name,
                    "maxcpu": vm.cpus(),
                });
                for key in [
                    "name",
                    "status",
                    "cpu",
                    "maxmem",
                    "mem",
                    "maxdisk",
                    "disk",
                    "netin",
                    "netout",
                    "diskread",
                    "diskwrite",
                    "uptime",
                ] {
                    if let Some(value) = entry.get(key) {
                        v[key] = value.clone();
                    }
                }
                (*vmid, v)
            })
            .collect();
        StatusBroadcast {
            taken: Instant::now(),
            node: self.node_entry(),
            storages,
            vms,
        }
    }

    pub(super) fn storage_entry(&self, id: &str, with_id: bool) -> Option<Value> {
        let s = self.storage(id)?;
        let (total, used, avail) = self.storage_usage(s);
        let mut v = json!({
            "type": s.kind.name(),
            "content": s.content,
            "shared": 0,
            "enabled": 1,
            "active": 1,
            "total": total,
            "used": used,
            "avail": avail,
        });
        if with_id {
            v["storage"] = json!(s.id);
            v["used_fraction"] = json!(if total > 0 {
                used as f64 / total as f64
            } else {
                0.0
            });
        }
        Some(v)
    }

    pub(super) fn storage_list(&self, p: &P<'_>) -> Value {
        let wanted: Vec<String> = p
            .str("content")
            .map(|c| split_list(&c).into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        let only = p.str("storage");
        let list: Vec<Value> = self
            .storages
            .iter()
            .filter(|s| only.as_ref().is_none_or(|o| *o == s.id))
            .filter(|s| {
                wanted.is_empty() || s.content.split(',').any(|c| wanted.iter().any(|w| w == c))
            })
            .filter_map(|s| self.storage_entry(&s.id, true))
            .collect();
        json!(list)
    }

    pub(super) fn storage_status(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let id = p.str("storage").unwrap_or_default();
        self.storage_entry(&id, false)
            .map(Reply::data)
            .ok_or_else(|| param_error("storage", "No such storage."))
    }

    pub(super) fn storage_content(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let id = p.str("storage").unwrap_or_default();
        if self.storage(&id).is_none() {
            return Err(param_error("storage", "No such storage."));
        }
        let vmid: Option<u32> = p.opt_num("vmid");
        let list: Vec<Value> = self
            .volumes
            .iter()
            .filter(|(_, v)| v.storage == id && vmid.is_none_or(|w| w == v.vmid))
            .map(|(volid, v)| {
                let mut e = json!({
                    "volid": volid,
                    "format": if volid.ends_with(".qcow2") { "qcow2" } else { "raw" },
                    "size": v.size,
                    "used": v.used,
                    "vmid": v.vmid,
                    "content": "images",
                });
                if let Some((_, name)) = volid.split_once(':')
                    && let Some((base, _)) = name.split_once('/')
                {
                    e["parent"] = json!(format!("{base}@__base__"));
                }
                e
            })
            .collect();
        Ok(Reply::data(json!(list)))
    }

    pub(super) fn zpools(&self) -> Value {
        let (size, alloc) = self.storages.iter().fold((0u64, 0u64), |(s, a), st| {
            let (total, used, _) = self.storage_usage(st);
            (s.saturating_add(total), a.saturating_add(used))
        });
        json!([{
            "name": self.zpool.name,
            "size": size,
            "alloc": alloc,
            "free": size - alloc.min(size),
            "frag": self.zpool.frag,
            "dedup": self.zpool.dedup,
            "health": self.zpool.health,
        }])
    }

    /// Bridges (each on its own physical port `enoN`) and those ports.
    pub(super) fn network(&self, kind: Option<&str>) -> Value {
        let bridges =
            kind.is_none_or(|k| matches!(k, "bridge" | "any_bridge" | "any_local_bridge"));
        let ports = kind.is_none_or(|k| k == "eth");
        let mut list = Vec::new();
        for (i, b) in self.bridges.iter().enumerate() {
            let port = format!("eno{}", i + 1);
            if bridges {
                let mut v = json!({
                    "iface": b.name, "type": "bridge", "active": 1, "autostart": 1, "exists": 1,
                    "families": ["inet"], "method": if b.cidr.is_some() { "static" } else { "manual" },
                    "bridge_ports": port, "bridge_stp": "off", "bridge_fd": "0",
                    "priority": 10 + i,
                });
                if b.vlan_aware {
                    v["bridge_vlan_aware"] = json!(1);
                    v["bridge_vids"] = json!("2-4094");
                }
                if !b.comment.is_empty() {
                    v["comments"] = json!(format!("{}\n", b.comment));
                }
                if let Some((address, prefix)) = b.cidr.as_deref().and_then(|c| c.split_once('/'))
                    && let Ok(bits) = prefix.parse::<u32>()
                    && bits <= 32
                {
                    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                    v["cidr"] = json!(b.cidr);
                    v["address"] = json!(address);
                    v["netmask"] = json!(std::net::Ipv4Addr::from(mask).to_string());
                }
                list.push(v);
            }
            if ports {
                list.push(json!({
                    "iface": port, "type": "eth", "active": 1, "exists": 1,
                    "families": ["inet"], "method": "manual", "priority": 3 + i,
                }));
            }
        }
        json!(list)
    }
}
