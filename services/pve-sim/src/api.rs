//! The `/api2/json` handlers the simulator implements, with Proxmox's semantics and messages
//! (qemu-server `API2/Qemu.pm`, pve-manager `API2/Nodes.pm`/`Tasks.pm`, pve-storage): every
//! handler runs synchronously under the state lock, returns the `data` value and, for
//! asynchronous calls, a task to run. Checks that Proxmox makes before forking a worker answer
//! HTTP 500 here too; checks it makes inside the worker end the task with an error instead.
//!
//! Deliberately not simulated: pending changes (every config change applies at once, as if
//! hot-pluggable), writes to pools, firewall, access and jobs (their reads answer the scenario's
//! content; clone's `pool` is ignored), HA and replication, migration, and restores.

mod access;
mod create;
mod firewall;
mod hostconfig;
mod node;
mod observe;
mod qemu;
mod rrd;
mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::agent::interfaces;
use crate::schema::ApiSchema;
use crate::state::{State, Vm};
use crate::tasks::PendingTask;

pub(crate) use worker::TaskError;

const CONFIG: &str = "/nodes/{node}/qemu/{vmid}/config";

/// How a request failed, mapped to Proxmox's status codes by the HTTP layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ApiError {
    /// 400 `Parameter verification failed.` with per-parameter messages.
    Params(BTreeMap<String, String>),
    /// 500 with the message (a handler `die`).
    Failed(String),
    /// 501 for a method the schema has but the simulator does not answer (`GET /cluster/status`):
    /// distinct from PVE's own 501 for a path that does not exist, so nobody concludes PVE lacks it.
    NotSimulated(String),
}

fn failed(msg: impl Into<String>) -> ApiError {
    ApiError::Failed(msg.into())
}

fn param_error(key: &str, msg: impl Into<String>) -> ApiError {
    ApiError::Params(BTreeMap::from([(key.to_owned(), msg.into())]))
}

/// A handler's result.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub(crate) data: Value,
    /// Extra top-level envelope fields (`total`).
    pub(crate) extra: Map<String, Value>,
    pub(crate) task: Option<PendingTask>,
    /// A node reboot began: the generation whose down window and boot to run.
    pub(crate) reboot: Option<u64>,
}

impl Reply {
    fn data(data: Value) -> Self {
        Self {
            data,
            ..Self::default()
        }
    }
}

/// One validated request.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) template: &'a str,
    pub(crate) params: &'a Map<String, Value>,
}

/// A scalar parameter as Perl sees it: numbers as text, JSON booleans as 1/0.
pub(crate) fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1".into() } else { "0".into() }),
        _ => None,
    }
}

/// Parameter access; values are already schema-valid, so conversions only fail on bugs.
struct P<'a>(&'a Map<String, Value>);

impl P<'_> {
    fn str(&self, key: &str) -> Option<String> {
        value_text(self.0.get(key)?)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.str(key).map(|v| v == "1")
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, ApiError> {
        self.str(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| param_error(key, "property is missing and it is not optional"))
    }

    fn opt_num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.str(key).and_then(|v| v.parse().ok())
    }

    fn vmid(&self) -> Result<u32, ApiError> {
        self.num("vmid")
    }
}

/// The `TASK` kinds and what each does when its worker runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TaskOp {
    Create {
        vmid: u32,
        /// `start=1`: boot once created.
        start: bool,
    },
    Clone {
        newid: u32,
        /// (drive, source volid, target volid, linked)
        drives: Vec<(String, String, String, bool)>,
    },
    Start {
        vmid: u32,
    },
    Shutdown {
        vmid: u32,
    },
    Stop {
        vmid: u32,
    },
    Reboot {
        vmid: u32,
    },
    Config,
    Resize {
        vmid: u32,
        disk: String,
        size: u64,
    },
    Snapshot {
        vmid: u32,
        name: String,
        description: String,
        vmstate: bool,
    },
    DelSnapshot {
        vmid: u32,
        name: String,
    },
    Rollback {
        vmid: u32,
        name: String,
        start: bool,
    },
    Destroy {
        vmid: u32,
    },
    AptUpdate,
}

impl TaskOp {
    fn kind(&self) -> &'static str {
        match self {
            Self::Create { .. } => "qmcreate",
            Self::Clone { .. } => "qmclone",
            Self::Start { .. } => "qmstart",
            Self::Shutdown { .. } => "qmshutdown",
            Self::Stop { .. } => "qmstop",
            Self::Reboot { .. } => "qmreboot",
            Self::Config => "qmconfig",
            Self::Resize { .. } => "resize",
            Self::Snapshot { .. } => "qmsnapshot",
            Self::DelSnapshot { .. } => "qmdelsnapshot",
            Self::Rollback { .. } => "qmrollback",
            Self::Destroy { .. } => "qmdestroy",
            Self::AptUpdate => "aptupdate",
        }
    }
}

fn no_config(node: &str, vmid: u32) -> ApiError {
    failed(format!(
        "Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
    ))
}

/// A VM whose config carries a `lock`; handlers answer 500 with it, workers end their task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VM is locked ({0})")]
pub(crate) struct VmLocked(String);

impl From<VmLocked> for ApiError {
    fn from(e: VmLocked) -> Self {
        failed(e.to_string())
    }
}

fn locked(vm: &Vm) -> Result<(), VmLocked> {
    match vm.lock() {
        Some(lock) => Err(VmLocked(lock.to_owned())),
        None => Ok(()),
    }
}

/// Config values typed as Proxmox's `check_type` returns them: integers and numbers as JSON
/// numbers, booleans as 0/1, everything else (including `memory`) as strings.
fn typed_config(schema: &ApiSchema, config: &BTreeMap<String, String>) -> Map<String, Value> {
    config
        .iter()
        .map(|(k, v)| {
            let ty = schema.param_type("POST", CONFIG, k);
            let typed = match ty.as_deref() {
                Some("integer" | "boolean") => {
                    v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n))
                }
                Some("number") => v.parse::<f64>().map_or_else(|_| json!(v), |n| json!(n)),
                _ => json!(v),
            };
            (k.clone(), typed)
        })
        .collect()
}

impl State {
    /// Dispatches a validated request.
    pub(crate) fn handle(
        &mut self,
        schema: &ApiSchema,
        req: &Request<'_>,
    ) -> Result<Reply, ApiError> {
        let p = P(req.params);
        if req.template.starts_with("/nodes/{node}")
            && let Some(node) = p.str("node")
            && node != self.node.name
        {
            return Err(failed(format!(
                "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
            )));
        }
        match (req.method, req.template) {
            ("GET", "/version") => Ok(Reply::data(self.version())),
            ("GET", "/nodes") => Ok(Reply::data(json!([self.node_entry()]))),
            ("GET", "/nodes/{node}/status") => Ok(Reply::data(self.node_status())),
            ("POST", "/nodes/{node}/status") => match p.str("command").as_deref() {
                Some("reboot") => Ok(Reply {
                    reboot: Some(self.begin_node_reboot()),
                    ..Reply::data(Value::Null)
                }),
                other => Err(ApiError::NotSimulated(format!(
                    "not simulated by pve-sim: POST {} command={}",
                    req.template,
                    other.unwrap_or_default()
                ))),
            },
            ("GET", "/cluster/nextid") => self.nextid(&p),
            ("GET", "/cluster/resources") => {
                Ok(Reply::data(self.resources(p.str("type").as_deref())))
            }
            ("GET", "/nodes/{node}/qemu") => {
                let full = p.flag("full").unwrap_or(false);
                Ok(Reply::data(json!(
                    self.vms
                        .keys()
                        .map(|id| self.vm_list_entry(*id, full))
                        .collect::<Vec<_>>()
                )))
            }
            ("POST", "/nodes/{node}/qemu/{vmid}/clone") => self.clone_vm(&p),
            ("GET", CONFIG) => self.get_config(schema, &p),
            ("POST", CONFIG) => self.update_config(schema, &p, false),
            ("PUT", CONFIG) => self.update_config(schema, &p, true),
            ("PUT", "/nodes/{node}/qemu/{vmid}/resize") => self.resize(&p),
            ("POST", "/nodes/{node}/qemu/{vmid}/status/start") => self.power(&p, "start"),
            ("POST", "/nodes/{node}/qemu/{vmid}/status/shutdown") => self.power(&p, "shutdown"),
            ("POST", "/nodes/{node}/qemu/{vmid}/status/stop") => self.power(&p, "stop"),
            ("POST", "/nodes/{node}/qemu/{vmid}/status/reboot") => self.power(&p, "reboot"),
            ("GET", "/nodes/{node}/qemu/{vmid}/status/current") => {
                let vmid = p.vmid()?;
                if !self.vms.contains_key(&vmid) {
                    return Err(no_config(&self.node.name, vmid));
                }
                Ok(Reply::data(self.vm_entry(vmid, true)))
            }
            ("DELETE", "/nodes/{node}/qemu/{vmid}") => self.destroy(&p),
            ("POST", "/nodes/{node}/qemu/{vmid}/agent/ping") => {
                self.agent_ready(p.vmid()?)?;
                Ok(Reply::data(json!({"result": {}})))
            }
            ("GET", "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces") => {
                let vmid = p.vmid()?;
                let vm = self.agent_ready(vmid)?;
                Ok(Reply::data(interfaces(vmid, &vm.config, vm.uptime())))
            }
            ("POST", "/nodes/{node}/qemu/{vmid}/agent/exec") => self.agent_exec(&p),
            ("GET", "/nodes/{node}/qemu/{vmid}/agent/exec-status") => self.agent_exec_status(&p),
            ("GET", "/nodes/{node}/qemu/{vmid}/snapshot") => self.list_snapshots(&p),
            ("POST", "/nodes/{node}/qemu/{vmid}/snapshot") => self.snapshot(&p),
            ("DELETE", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}") => {
                let vmid = p.vmid()?;
                self.existing(vmid)?;
                let name = p.str("snapname").unwrap_or_default();
                Ok(self.task(vmid, TaskOp::DelSnapshot { vmid, name }))
            }
            ("POST", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback") => {
                let vmid = p.vmid()?;
                self.existing(vmid)?;
                let name = p.str("snapname").unwrap_or_default();
                let start = p.flag("start").unwrap_or(false);
                Ok(self.task(vmid, TaskOp::Rollback { vmid, name, start }))
            }
            ("GET", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config") => {
                self.snapshot_config(schema, &p)
            }
            ("GET", "/nodes/{node}/storage") => Ok(Reply::data(self.storage_list(&p))),
            ("GET", "/nodes/{node}/storage/{storage}/status") => self.storage_status(&p),
            ("GET", "/nodes/{node}/storage/{storage}/content") => self.storage_content(&p),
            ("GET", "/nodes/{node}/disks/zfs") => Ok(Reply::data(self.zpools())),
            ("GET", "/nodes/{node}/network") => {
                Ok(Reply::data(self.network(p.str("type").as_deref())))
            }
            ("GET", "/nodes/{node}/apt/update") => Ok(Reply::data(
                serde_json::to_value(&self.apt).unwrap_or_else(|_| json!([])),
            )),
            ("POST", "/nodes/{node}/apt/update") => {
                let delay = self.durations.aptupdate;
                let (upid, task) = self.new_task("aptupdate", "", delay, TaskOp::AptUpdate);
                Ok(Reply {
                    data: json!(upid),
                    task: Some(task),
                    ..Reply::default()
                })
            }
            ("GET", "/nodes/{node}/tasks/{upid}/status") => {
                let task = self.visible_task(&p)?;
                Ok(Reply::data(task.status_json()))
            }
            ("GET", "/nodes/{node}/tasks/{upid}/log") => self.task_log_page(&p),
            ("GET", "/nodes/{node}/tasks") => Ok(self.task_list(&p)),
            ("GET", "/cluster/status") => Ok(Reply::data(self.cluster_status())),
            ("GET", "/cluster/tasks") => Ok(Reply::data(self.cluster_tasks())),
            ("GET", "/nodes/{node}/apt/versions") => Ok(Reply::data(self.apt_versions())),
            ("GET", "/nodes/{node}/apt/changelog") => {
                let name = p.str("name").unwrap_or_default();
                let version = p.str("version").filter(|v| !v.is_empty());
                Ok(Reply::data(json!(
                    self.changelog(&name, version.as_deref())
                )))
            }
            ("GET", "/nodes/{node}/qemu/{vmid}/pending") => self.pending(&p),
            ("GET", "/nodes/{node}/rrddata" | "/nodes/{node}/qemu/{vmid}/rrddata") => {
                self.rrddata(&p)
            }
            ("GET", "/nodes/{node}/certificates/info") => Ok(Reply::data(self.certificates())),
            ("GET", "/nodes/{node}/qemu/{vmid}/agent/info") => self.agent_info(&p),
            ("GET", "/nodes/{node}/disks/list") => Ok(Reply::data(self.disks())),
            ("GET", "/nodes/{node}/disks/smart") => self.smart(&p),
            ("POST", "/nodes/{node}/qemu") => self.create_vm(schema, &p),
            ("GET", "/storage") => Ok(Reply::data(self.storage_config_list(&p))),
            ("GET", "/storage/{storage}") => self.storage_config(&p),
            ("GET", "/pools") => self.pools(&p),
            ("GET", "/pools/{poolid}") => self.pool_get(&p),
            ("GET", "/cluster/options") => Ok(Reply::data(self.cluster_options())),
            ("GET", "/cluster/replication") => Ok(Reply::data(json!([]))),
            ("GET", "/cluster/backup") => Ok(Reply::data(self.backup_jobs())),
            ("GET", "/nodes/{node}/dns") => Ok(Reply::data(self.node_dns())),
            ("GET", "/nodes/{node}/hosts") => Ok(Reply::data(self.node_hosts())),
            ("GET", "/nodes/{node}/time") => Ok(Reply::data(self.node_time())),
            ("GET", "/nodes/{node}/apt/repositories") => Ok(Reply::data(Self::apt_repositories())),
            ("GET", "/cluster/firewall/options") => {
                Ok(Reply::data(self.firewall_cluster_options()))
            }
            ("GET", "/cluster/firewall/rules") => Ok(Reply::data(self.firewall_cluster_rules())),
            ("GET", "/cluster/firewall/groups") => Ok(Reply::data(self.firewall_groups())),
            ("GET", "/cluster/firewall/aliases") => Ok(Reply::data(self.firewall_aliases())),
            ("GET", "/cluster/firewall/ipset") => Ok(Reply::data(self.firewall_ipsets())),
            ("GET", "/nodes/{node}/firewall/options") => {
                Ok(Reply::data(Self::firewall_node_options()))
            }
            ("GET", "/nodes/{node}/firewall/rules") => Ok(Reply::data(self.firewall_node_rules())),
            ("GET", "/nodes/{node}/qemu/{vmid}/firewall/options") => self.firewall_vm_options(&p),
            ("GET", "/nodes/{node}/qemu/{vmid}/firewall/rules") => self.firewall_vm_rules(&p),
            ("GET", "/access/users") => Ok(Reply::data(self.access_users(&p))),
            ("GET", "/access/users/{userid}/token") => self.access_user_tokens(&p),
            ("GET", "/access/groups") => Ok(Reply::data(self.access_groups())),
            ("GET", "/access/roles") => Ok(Reply::data(Self::access_roles())),
            ("GET", "/access/acl") => Ok(Reply::data(self.access_acl())),
            ("GET", "/access/domains") => Ok(Reply::data(Self::access_domains())),
            _ => {
                tracing::info!(
                    method = req.method,
                    template = req.template,
                    "pve-sim: endpoint not simulated"
                );
                Err(ApiError::NotSimulated(format!(
                    "not simulated by pve-sim: {} {}",
                    req.method, req.template
                )))
            }
        }
    }

    fn existing(&self, vmid: u32) -> Result<&Vm, ApiError> {
        self.vms
            .get(&vmid)
            .ok_or_else(|| no_config(&self.node.name, vmid))
    }

    /// Creates the task of `op` with its configured duration; the reply carries the UPID.
    fn task(&mut self, vmid: u32, op: TaskOp) -> Reply {
        let d = &self.durations;
        let delay = match &op {
            // Allocating a new VM's disks takes about as long as a config change allocating them.
            TaskOp::Create { .. } => d.config,
            TaskOp::Clone { .. } => d.clone,
            TaskOp::Start { .. } => d.start,
            TaskOp::Shutdown { .. } => d.shutdown,
            TaskOp::Stop { .. } => d.stop,
            TaskOp::Reboot { .. } => d.reboot,
            TaskOp::Config => d.config,
            TaskOp::Resize { .. } => d.resize,
            TaskOp::Snapshot { .. } => d.snapshot,
            TaskOp::DelSnapshot { .. } => d.delsnapshot,
            TaskOp::Rollback { .. } => d.rollback,
            TaskOp::Destroy { .. } => d.destroy,
            TaskOp::AptUpdate => d.aptupdate,
        };
        let kind = op.kind();
        let (upid, task) = self.new_task(kind, &vmid.to_string(), delay, op);
        Reply {
            data: json!(upid),
            task: Some(task),
            ..Reply::default()
        }
    }

    /// Draws the endpoint's faults: `(extra latency, error to answer with)`.
    pub(crate) fn endpoint_fault(
        &mut self,
        key: &str,
        params: &Map<String, Value>,
    ) -> (Duration, Option<String>) {
        let global = self.faults.latency;
        let Some(fault) = self.faults.endpoints.get_mut(key) else {
            return (global, None);
        };
        let latency = global.saturating_add(fault.latency);
        let vmid = P(params).str("vmid");
        let lock_msg = match &vmid {
            Some(vmid) => {
                format!("can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout")
            }
            None => format!(
                "can't lock file '/var/lock/pve-manager/pve-{}.lck' - got timeout",
                self.node.name
            ),
        };
        if fault.fail_next > 0 {
            fault.fail_next -= 1;
            return (latency, Some(lock_msg));
        }
        let (error_rate, lock_rate) = (fault.error_rate, fault.lock_contention_rate);
        if error_rate > 0.0 && self.rng.random::<f64>() < error_rate {
            return (
                latency,
                Some("simulated internal error (faults.endpoints.error_rate)".into()),
            );
        }
        if lock_rate > 0.0 && self.rng.random::<f64>() < lock_rate {
            return (latency, Some(lock_msg));
        }
        (latency, None)
    }
}
