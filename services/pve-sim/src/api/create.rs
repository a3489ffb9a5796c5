//! `POST /nodes/{node}/qemu`: a VM created from config keys (qemu-server `create_vm`, without
//! restore). Synchronously, as qemu-server does before forking its worker: the VMID must be free
//! (`unable to create VM <id> - VM <id> already exists on node '<node>'`), a pool must exist,
//! then the config is written with `lock: create` — disks allocated (`local-zfs:32`), cloud-init
//! drives created, NICs given MACs, `smbios1` and `vmgenid` generated, a boot order set. The
//! `qmcreate` task then drops the lock and, with `start=1`, boots the VM. Restores (`archive`)
//! are not simulated.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{ApiError, P, Reply, TaskOp, failed};
use crate::schema::ApiSchema;
use crate::state::{Power, State, Vm};

/// Parameters of the call that are not config keys.
const NOT_CONFIG: [&str; 9] = [
    "node",
    "vmid",
    "archive",
    "bwlimit",
    "force",
    "live-restore",
    "pool",
    "start",
    "storage",
];

impl State {
    pub(super) fn create_vm(&mut self, schema: &ApiSchema, p: &P<'_>) -> Result<Reply, ApiError> {
        let vmid = p.vmid()?;
        if p.str("archive").is_some() {
            return Err(ApiError::NotSimulated(
                "not simulated by pve-sim: POST /nodes/{node}/qemu archive= (restore)".into(),
            ));
        }
        if self.vms.contains_key(&vmid) {
            return Err(failed(format!(
                "unable to create VM {vmid} - VM {vmid} already exists on node '{}'",
                self.node.name
            )));
        }
        let pool = p.str("pool");
        if let Some(pool) = &pool
            && !self.platform.pools.iter().any(|x| &x.poolid == pool)
        {
            return Err(failed(format!("pool '{pool}' does not exist")));
        }
        // The config keys go through the same path as a config update of an empty VM, so disks,
        // cloud-init drives, MACs and the balloon check behave alike.
        let mut params: Map<String, Value> =
            p.0.iter()
                .filter(|(k, _)| !NOT_CONFIG.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        let has_keys = !params.is_empty();
        params.insert("vmid".into(), Value::String(vmid.to_string()));
        self.vms.insert(
            vmid,
            Vm {
                config: BTreeMap::new(),
                snapshots: Vec::new(),
                power: Power::Stopped,
                exec: BTreeMap::new(),
                next_exec_pid: 1000,
                packages: None,
            },
        );
        if has_keys && let Err(e) = self.update_config(schema, &P(&params), true) {
            self.vms.remove(&vmid);
            self.volumes.retain(|_, v| v.vmid != vmid);
            return Err(e);
        }
        let uuid = self.new_uuid();
        let genid = self.new_uuid();
        let Some(vm) = self.vms.get_mut(&vmid) else {
            return Err(super::no_config(&self.node.name, vmid));
        };
        let config = &mut vm.config;
        config
            .entry("smbios1".into())
            .or_insert_with(|| format!("uuid={uuid}"));
        if config.get("vmgenid").is_none_or(|g| g == "1") {
            config.insert("vmgenid".into(), genid);
        }
        if !config.contains_key("boot") {
            // qemu-server's default: the first disk, then the first NIC.
            let first = |prefixes: &[&str]| {
                config
                    .keys()
                    .find(|k| {
                        crate::schema::split_index(k)
                            .is_some_and(|(prefix, _)| prefixes.contains(&prefix))
                            && !config.get(*k).is_some_and(|v| v.contains("media=cdrom"))
                    })
                    .cloned()
            };
            let order: Vec<String> = first(&["scsi", "virtio", "sata", "ide"])
                .into_iter()
                .chain(first(&["net"]))
                .collect();
            if !order.is_empty() {
                config.insert("boot".into(), format!("order={}", order.join(";")));
            }
        }
        config.insert("lock".into(), "create".into());
        if let Some(pool) = pool
            && let Some(spec) = self.platform.pools.iter_mut().find(|x| x.poolid == pool)
        {
            spec.vms.push(vmid);
        }
        let start = p.flag("start").unwrap_or(false);
        Ok(self.task(vmid, TaskOp::Create { vmid, start }))
    }
}
