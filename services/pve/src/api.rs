//! The operations proxflow performs, one method each, with Proxmox's parameter names and types.
//!
//! Methods that start a worker return its [`Upid`]; wait with [`PveClient::wait_task`]. They go through
//! [`PveClient::dispatch_task`], which never blindly re-sends a request whose outcome is unknown.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{Params, PveClient};
use crate::error::{ErrorKind, PveError};
use crate::perl;
use crate::task::Upid;
use crate::types::{
    AgentInterface, AptUpdate, ClusterResource, ExecStatus, NodeStatus, ResourceType, Snapshot,
    StorageStatus, VmConfig, VmStatus, VmSummary, ZfsPool,
};

/// What `POST …/clone` should create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloneSpec {
    /// VMID of the new VM.
    pub newid: u32,
    /// Its name (DNS-safe).
    pub name: Option<String>,
    /// Full copy (`Some(true)`), linked clone (`Some(false)`), or Proxmox's default (linked for templates).
    pub full: Option<bool>,
    /// Resource pool to add it to.
    pub pool: Option<String>,
    /// Target storage (full clones only; Proxmox refuses it for linked clones).
    pub storage: Option<String>,
    /// Description.
    pub description: Option<String>,
}

/// A configuration change: keys to set, keys to delete, and the digest it was computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigChange {
    /// Keys and values as Proxmox takes them (`cores` "4", `net0` "virtio,bridge=vmbr1,tag=20").
    pub set: BTreeMap<String, String>,
    /// Keys to remove.
    pub delete: Vec<String>,
    /// Digest of the config this change was based on; a concurrent edit then fails with
    /// `checksum mismatch` instead of being overwritten.
    pub digest: Option<String>,
}

impl ConfigChange {
    fn params(&self) -> Params {
        let mut p = Params::new();
        for (k, v) in &self.set {
            p = p.set(k, v);
        }
        if !self.delete.is_empty() {
            p = p.set("delete", self.delete.join(","));
        }
        p.opt("digest", self.digest.as_deref())
    }
}

/// How `shutdown` should behave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownOptions {
    /// Seconds to wait for the guest (Proxmox's default is 60).
    pub timeout: Option<u32>,
    /// Stop the VM hard when the timeout passes.
    pub force_stop: bool,
}

/// Percent-encodes an `sshkeys` value the way Proxmox requires (its `urlencoded` format allows only
/// `[-%a-zA-Z0-9_.!~*'()]`); form encoding is applied on top when sending.
pub fn encode_sshkeys(keys: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    percent_encoding::utf8_percent_encode(keys, KEEP).to_string()
}

#[derive(Deserialize)]
struct AgentResult<T> {
    result: T,
}

#[derive(Deserialize)]
struct ExecStarted {
    #[serde(deserialize_with = "perl::u64")]
    pid: u64,
}

impl PveClient {
    fn node_path(&self, rest: &str) -> String {
        format!("/nodes/{}{rest}", self.node())
    }

    fn vm_path(&self, vmid: u32, rest: &str) -> String {
        format!("/nodes/{}/qemu/{vmid}{rest}", self.node())
    }

    /// Sends a request that starts a worker and returns its UPID.
    ///
    /// If the outcome is unknown (the request left but no answer came back), the request is **not**
    /// simply sent again: the node's task list is searched for a task of this type on this object,
    /// started by this token since just before the dispatch. One match is adopted; several are
    /// ambiguous and reported as [`ErrorKind::OutcomeUnknown`] for the caller to resolve from the VM's
    /// state; none means the request never took effect, and it is sent once more.
    pub async fn dispatch_task(
        &self,
        method: Method,
        path: &str,
        params: &Params,
        task_type: &str,
        object_id: &str,
    ) -> Result<Upid, PveError> {
        let since = epoch_now().saturating_sub(2);
        let mut resent = false;
        loop {
            match self.call_value(method.clone(), path, params).await {
                Ok(data) => return parse_upid(&method, path, &data),
                Err(e) if e.kind == ErrorKind::OutcomeUnknown && !resent => {
                    tracing::warn!(error = %e, task_type, object_id, "outcome unknown; looking for the task before anything else");
                    let found = self.find_tasks(task_type, object_id, since).await?;
                    match found.as_slice() {
                        [one] => {
                            tracing::info!(upid = %one, "the request did take effect; adopting its task");
                            return Ok(one.clone());
                        }
                        [] => {
                            tracing::info!("no such task started; sending the request again");
                            resent = true;
                        }
                        _ => {
                            let mut e = e;
                            e.message = format!(
                                "{}; {} matching {task_type} tasks on {object_id} since then, cannot tell which is ours",
                                e.message,
                                found.len()
                            );
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Tasks of `task_type` on `object_id` started by this client's token at or after `since` (epoch s).
    pub async fn find_tasks(
        &self,
        task_type: &str,
        object_id: &str,
        since: u64,
    ) -> Result<Vec<Upid>, PveError> {
        let mut params = Params::new()
            .set("typefilter", task_type)
            .set("source", "all")
            .set("since", since)
            .set("limit", 500);
        if let Ok(vmid) = object_id.parse::<u32>() {
            params = params.set("vmid", vmid);
        }
        let tasks: Vec<TaskStatusLite> = self
            .call(Method::GET, &self.node_path("/tasks"), &params)
            .await?;
        Ok(tasks
            .into_iter()
            .filter(|t| {
                t.task_type == task_type
                    && t.id == object_id
                    && t.started_by() == self.token_id()
                    && t.starttime >= since
            })
            .filter_map(|t| t.upid.parse().ok())
            .collect())
    }

    /// `GET /cluster/nextid`: the lowest free VMID (a string on the wire).
    pub async fn next_id(&self) -> Result<u32, PveError> {
        let v = self
            .call_value(Method::GET, "/cluster/nextid", &Params::new())
            .await?;
        perl::u32(v).map_err(|e| {
            PveError::new(
                ErrorKind::Decode,
                "GET",
                "/cluster/nextid",
                Some(200),
                e.to_string(),
            )
        })
    }

    /// `GET /nodes/{node}/qemu`.
    pub async fn list_vms(&self) -> Result<Vec<VmSummary>, PveError> {
        self.call(Method::GET, &self.node_path("/qemu"), &Params::new())
            .await
    }

    /// `POST …/{source}/clone` → `qmclone` task. The new VM holds `lock: clone` until the task ends.
    pub async fn clone_vm(&self, source: u32, spec: &CloneSpec) -> Result<Upid, PveError> {
        let mut params = Params::new()
            .set("newid", spec.newid)
            .opt("name", spec.name.as_deref())
            .opt("pool", spec.pool.as_deref())
            .opt("storage", spec.storage.as_deref())
            .opt("description", spec.description.as_deref());
        if let Some(full) = spec.full {
            params = params.flag("full", full);
        }
        self.dispatch_task(
            Method::POST,
            &self.vm_path(source, "/clone"),
            &params,
            "qmclone",
            &source.to_string(),
        )
        .await
    }

    /// `GET …/config` with its digest (values stringified as in the `.conf` file).
    pub async fn vm_config(&self, vmid: u32) -> Result<VmConfig, PveError> {
        let path = self.vm_path(vmid, "/config");
        let data: BTreeMap<String, Value> = self.call(Method::GET, &path, &Params::new()).await?;
        let mut values: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.clone(), perl::value_to_string(v)))
            .collect();
        let digest = values.remove("digest").ok_or_else(|| {
            PveError::new(
                ErrorKind::Decode,
                "GET",
                &path,
                Some(200),
                "config without digest",
            )
        })?;
        Ok(VmConfig { digest, values })
    }

    /// `PUT …/config`: synchronous change (no disk allocation).
    pub async fn update_config(&self, vmid: u32, change: &ConfigChange) -> Result<(), PveError> {
        self.call_value(
            Method::PUT,
            &self.vm_path(vmid, "/config"),
            &change.params(),
        )
        .await
        .map(|_| ())
    }

    /// `POST …/config`: asynchronous change (may allocate disks) → `qmconfig` task, or `None` when
    /// Proxmox applied it without a worker.
    pub async fn update_config_async(
        &self,
        vmid: u32,
        change: &ConfigChange,
    ) -> Result<Option<Upid>, PveError> {
        let path = self.vm_path(vmid, "/config");
        let data = self
            .call_value(Method::POST, &path, &change.params())
            .await?;
        if data.is_null() {
            return Ok(None);
        }
        parse_upid(&Method::POST, &path, &data).map(Some)
    }

    /// `PUT …/resize` (`size` `+10G` or absolute `40G`) → `resize` task.
    pub async fn resize_disk(
        &self,
        vmid: u32,
        disk: &str,
        size: &str,
        digest: Option<&str>,
    ) -> Result<Upid, PveError> {
        let params = Params::new()
            .set("disk", disk)
            .set("size", size)
            .opt("digest", digest);
        self.dispatch_task(
            Method::PUT,
            &self.vm_path(vmid, "/resize"),
            &params,
            "resize",
            &vmid.to_string(),
        )
        .await
    }

    async fn power(&self, vmid: u32, action: &str, params: Params) -> Result<Upid, PveError> {
        self.dispatch_task(
            Method::POST,
            &self.vm_path(vmid, &format!("/status/{action}")),
            &params,
            &format!("qm{action}"),
            &vmid.to_string(),
        )
        .await
    }

    /// `POST …/status/start` → `qmstart`.
    pub async fn start_vm(&self, vmid: u32) -> Result<Upid, PveError> {
        self.power(vmid, "start", Params::new()).await
    }

    /// `POST …/status/shutdown` (ACPI or guest agent) → `qmshutdown`.
    pub async fn shutdown_vm(&self, vmid: u32, opts: ShutdownOptions) -> Result<Upid, PveError> {
        let mut params = Params::new().opt("timeout", opts.timeout);
        if opts.force_stop {
            params = params.flag("forceStop", true);
        }
        self.power(vmid, "shutdown", params).await
    }

    /// `POST …/status/stop` (hard) → `qmstop`.
    pub async fn stop_vm(&self, vmid: u32, timeout: Option<u32>) -> Result<Upid, PveError> {
        self.power(vmid, "stop", Params::new().opt("timeout", timeout))
            .await
    }

    /// `POST …/status/reboot` (applies pending changes) → `qmreboot`.
    pub async fn reboot_vm(&self, vmid: u32, timeout: Option<u32>) -> Result<Upid, PveError> {
        self.power(vmid, "reboot", Params::new().opt("timeout", timeout))
            .await
    }

    /// `GET …/status/current`.
    pub async fn vm_status(&self, vmid: u32) -> Result<VmStatus, PveError> {
        self.call(
            Method::GET,
            &self.vm_path(vmid, "/status/current"),
            &Params::new(),
        )
        .await
    }

    /// `DELETE …/{vmid}` → `qmdestroy`; `purge` also removes it from jobs, HA and ACLs.
    pub async fn destroy_vm(&self, vmid: u32, purge: bool) -> Result<Upid, PveError> {
        let mut params = Params::new();
        if purge {
            params = params.flag("purge", true);
        }
        self.dispatch_task(
            Method::DELETE,
            &self.vm_path(vmid, ""),
            &params,
            "qmdestroy",
            &vmid.to_string(),
        )
        .await
    }

    /// `POST …/agent/ping`: Ok once the guest agent answers.
    pub async fn agent_ping(&self, vmid: u32) -> Result<(), PveError> {
        self.call_value(
            Method::POST,
            &self.vm_path(vmid, "/agent/ping"),
            &Params::new(),
        )
        .await
        .map(|_| ())
    }

    /// `GET …/agent/network-get-interfaces`.
    pub async fn agent_network_interfaces(
        &self,
        vmid: u32,
    ) -> Result<Vec<AgentInterface>, PveError> {
        let r: AgentResult<Vec<AgentInterface>> = self
            .call(
                Method::GET,
                &self.vm_path(vmid, "/agent/network-get-interfaces"),
                &Params::new(),
            )
            .await?;
        Ok(r.result)
    }

    /// `POST …/agent/exec`: starts `command` (program and arguments) in the guest; returns its PID.
    pub async fn agent_exec(&self, vmid: u32, command: &[&str]) -> Result<u64, PveError> {
        // An array parameter is one form field per element.
        let params = command
            .iter()
            .fold(Params::new(), |p, part| p.set("command", part));
        let started: ExecStarted = self
            .call(Method::POST, &self.vm_path(vmid, "/agent/exec"), &params)
            .await?;
        Ok(started.pid)
    }

    /// `GET …/agent/exec-status`.
    pub async fn agent_exec_status(&self, vmid: u32, pid: u64) -> Result<ExecStatus, PveError> {
        self.call(
            Method::GET,
            &self.vm_path(vmid, "/agent/exec-status"),
            &Params::new().set("pid", pid),
        )
        .await
    }

    /// `GET …/snapshot`: every snapshot plus the `current` entry.
    pub async fn snapshots(&self, vmid: u32) -> Result<Vec<Snapshot>, PveError> {
        self.call(
            Method::GET,
            &self.vm_path(vmid, "/snapshot"),
            &Params::new(),
        )
        .await
    }

    /// `POST …/snapshot` → `qmsnapshot`.
    pub async fn create_snapshot(
        &self,
        vmid: u32,
        name: &str,
        description: Option<&str>,
        vmstate: bool,
    ) -> Result<Upid, PveError> {
        let mut params = Params::new()
            .set("snapname", name)
            .opt("description", description);
        if vmstate {
            params = params.flag("vmstate", true);
        }
        self.dispatch_task(
            Method::POST,
            &self.vm_path(vmid, "/snapshot"),
            &params,
            "qmsnapshot",
            &vmid.to_string(),
        )
        .await
    }

    /// `DELETE …/snapshot/{name}` → `qmdelsnapshot`.
    pub async fn delete_snapshot(
        &self,
        vmid: u32,
        name: &str,
        force: bool,
    ) -> Result<Upid, PveError> {
        let mut params = Params::new();
        if force {
            params = params.flag("force", true);
        }
        self.dispatch_task(
            Method::DELETE,
            &self.vm_path(vmid, &format!("/snapshot/{name}")),
            &params,
            "qmdelsnapshot",
            &vmid.to_string(),
        )
        .await
    }

    /// `POST …/snapshot/{name}/rollback` → `qmrollback` (on ZFS only to the most recent snapshot).
    pub async fn rollback_snapshot(
        &self,
        vmid: u32,
        name: &str,
        start: bool,
    ) -> Result<Upid, PveError> {
        let mut params = Params::new();
        if start {
            params = params.flag("start", true);
        }
        self.dispatch_task(
            Method::POST,
            &self.vm_path(vmid, &format!("/snapshot/{name}/rollback")),
            &params,
            "qmrollback",
            &vmid.to_string(),
        )
        .await
    }

    /// `GET /nodes/{node}/status`.
    pub async fn node_status(&self) -> Result<NodeStatus, PveError> {
        self.call(Method::GET, &self.node_path("/status"), &Params::new())
            .await
    }

    /// `GET /nodes/{node}/storage`.
    pub async fn storages(&self) -> Result<Vec<StorageStatus>, PveError> {
        self.call(Method::GET, &self.node_path("/storage"), &Params::new())
            .await
    }

    /// `GET /nodes/{node}/storage/{storage}/status`.
    pub async fn storage_status(&self, storage: &str) -> Result<StorageStatus, PveError> {
        self.call(
            Method::GET,
            &self.node_path(&format!("/storage/{storage}/status")),
            &Params::new(),
        )
        .await
    }

    /// `GET /cluster/resources`, optionally of one type.
    pub async fn cluster_resources(
        &self,
        kind: Option<ResourceType>,
    ) -> Result<Vec<ClusterResource>, PveError> {
        let params = Params::new().opt("type", kind.map(ResourceType::as_str));
        self.call(Method::GET, "/cluster/resources", &params).await
    }

    /// `GET /nodes/{node}/disks/zfs`.
    pub async fn zfs_pools(&self) -> Result<Vec<ZfsPool>, PveError> {
        self.call(Method::GET, &self.node_path("/disks/zfs"), &Params::new())
            .await
    }

    /// `GET /nodes/{node}/apt/update`: the cached list of pending updates.
    pub async fn apt_updates(&self) -> Result<Vec<AptUpdate>, PveError> {
        self.call(Method::GET, &self.node_path("/apt/update"), &Params::new())
            .await
    }

    /// `GET /nodes/{node}/apt/changelog`: the changelog of a pending update (text).
    pub async fn apt_changelog(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<String, PveError> {
        self.call(
            Method::GET,
            &self.node_path("/apt/changelog"),
            &Params::new().set("name", name).opt("version", version),
        )
        .await
    }

    /// `POST /nodes/{node}/status` with `command=reboot`: the host reboots (every guest is stopped
    /// first; the API is gone until it is back up). Not a task: it answers before going down.
    pub async fn reboot_node(&self) -> Result<(), PveError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                &self.node_path("/status"),
                &Params::new().set("command", "reboot"),
            )
            .await?;
        Ok(())
    }

    /// `POST /nodes/{node}/apt/update` → `aptupdate` (runs `apt-get update`, rebuilds the list).
    pub async fn apt_refresh(&self) -> Result<Upid, PveError> {
        self.dispatch_task(
            Method::POST,
            &self.node_path("/apt/update"),
            &Params::new(),
            "aptupdate",
            "",
        )
        .await
    }
}

/// The fields of a task-list entry needed to recognise a task (the list omits `status` for running ones).
#[derive(Deserialize)]
struct TaskStatusLite {
    upid: String,
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default, deserialize_with = "perl::string")]
    id: String,
    /// `root@pam` for a token's task: PVE reports the token apart, in `tokenid`.
    #[serde(default)]
    user: String,
    #[serde(default)]
    tokenid: Option<String>,
    #[serde(default, deserialize_with = "perl::u64")]
    starttime: u64,
}

impl TaskStatusLite {
    /// Who started it as one id: `root@pam!proxflow` for a token, as the UPID carries it.
    fn started_by(&self) -> String {
        match &self.tokenid {
            Some(token) => format!("{}!{token}", self.user),
            None => self.user.clone(),
        }
    }
}

fn parse_upid(method: &Method, path: &str, data: &Value) -> Result<Upid, PveError> {
    data.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
        PveError::new(
            ErrorKind::Decode,
            method.as_str(),
            path,
            Some(200),
            format!("expected a task UPID, got {data}"),
        )
    })
}

fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshkeys_are_encoded_for_the_urlencoded_format() {
        let key = "ssh-ed25519 AAAAC3Nz+a/b= ops@host\n";
        let enc = encode_sshkeys(key);
        assert_eq!(enc, "ssh-ed25519%20AAAAC3Nz%2Ba%2Fb%3D%20ops%40host%0A");
        assert!(
            enc.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-%_.!~*'()".contains(c))
        );
    }

    #[test]
    fn config_change_params() {
        let mut change = ConfigChange {
            digest: Some("abc".into()),
            delete: vec!["ide2".into(), "serial0".into()],
            ..ConfigChange::default()
        };
        change.set.insert("cores".into(), "4".into());
        let p = change.params();
        assert_eq!(
            p.pairs(),
            &[
                ("cores".to_string(), "4".to_string()),
                ("delete".to_string(), "ide2,serial0".to_string()),
                ("digest".to_string(), "abc".to_string())
            ]
        );
    }
}
