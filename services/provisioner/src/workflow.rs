//! The `provision` workflow: one k3s node VM from a [`ProvisionRequested`], as steps of the
//! workflow engine, each recorded with its typed output before the next one starts.
//!
//! `admit` (the name and address claims, the profile's caps) → `reserve_vmid` → `clone` → `configure` → `resize` → `start` →
//! `wait_ip` → `join` → `onboard`.
//!
//! Every Proxmox step is idempotent against Proxmox (it looks before it acts), so a step that ran
//! but was not recorded before a crash converges instead of doing the work twice. A transient
//! failure is retried by the engine up to `[provision.consumer] max_deliver` attempts of the step;
//! then, or on a failure retrying cannot fix, the VMID's compensation runs: the VM is stopped and
//! destroyed, its scrape target removed and its reservation released. However the workflow ends,
//! its profile's slot is freed, its name and address claims are settled with the VMID (or released)
//! and `pf.evt.vm.provisioned` / `provision_failed` announces it. A provision naming a profile this
//! provisioner's configuration lacks is not run at all: it is parked as it is, its advance
//! dead-lettered, until the configuration is fixed and the dead letter replayed.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use proxflow_platform::claims::{self, ClaimError, Claims};
use proxflow_pve::PveClient;
use proxflow_runtime::admission::{Admissions, Caps, Decision};
use proxflow_runtime::bus::Publisher;
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::workflow::{Ending, Halt, Run, StepError, Unrunnable, Workflow};
use proxflow_schemas::names::key;
use proxflow_schemas::provision::{ProvisionOutcome, ProvisionRequested};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::config::ProvisionConfig;
use crate::file_sd::FileSd;
use crate::join::{self, JoinError, JoinRequest};
use crate::steps;
use crate::vmid::{Reservations, VmidError};

/// The steps of a provision, in the order its record shows them.
pub const STEPS: [&str; 9] = [
    "admit",
    "reserve_vmid",
    "clone",
    "configure",
    "resize",
    "start",
    "wait_ip",
    "join",
    "onboard",
];

/// The definition, with what its steps act on.
pub struct Provision {
    pub(crate) config: ProvisionConfig,
    pub(crate) pve: PveClient,
    pub(crate) vmids: Reservations,
    pub(crate) admissions: Admissions,
    pub(crate) claims: Claims,
    pub(crate) file_sd: FileSd,
    pub(crate) publisher: Publisher,
    pub(crate) clock: SharedClock,
}

/// What a provision ends with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioned {
    /// The new VM.
    pub vmid: u32,
    /// Its IPv4 address.
    pub ip: String,
}

/// How a provision is undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Undo {
    /// Whatever was built on the reserved VMID: the VM (if it exists and is ours), its scrape
    /// target and the reservation. Registered with the reservation, so a clone that failed half
    /// way is cleaned up too.
    Discard {
        /// The VMID.
        vmid: u32,
        /// The VM's name (a VM of another name on the VMID is never touched).
        name: String,
        /// The workflow holding the reservation.
        workflow: String,
    },
}

/// Whether a configuration, disk or power step changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// `false` when the VM already was as asked.
    pub changed: bool,
}

/// What the join command printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Its exit code.
    pub exit: Option<i32>,
}

impl Workflow for Provision {
    const KIND: &'static str = "provision";
    const RECORD_STARTS: bool = true;
    type Input = ProvisionRequested;
    type Output = Provisioned;
    type Undo = Undo;

    fn max_attempts(&self) -> u32 {
        self.config.consumer.max_deliver
    }

    /// A profile this provisioner's configuration lacks (the gateway's has it: one service's file
    /// was updated, the other's not yet) parks the provision instead of failing it: the request is
    /// sound, this deployment is not; fixed and replayed, it runs.
    fn accepts(&self, req: &ProvisionRequested) -> Result<(), Unrunnable> {
        self.profile(&req.profile).map(drop).map_err(Unrunnable)
    }

    async fn run(&self, wf: &mut Run<Self>, req: ProvisionRequested) -> Result<Provisioned, Halt> {
        let span = tracing::info_span!(
            "provision",
            otel.name = %format_args!("provision {}", req.name),
            workflow.id = %wf.id(),
            vm.name = %req.name,
        );
        self.provision(wf, req).instrument(span).await
    }

    async fn undo(&self, undo: Undo) -> Result<(), StepError> {
        let Undo::Discard {
            vmid,
            name,
            workflow,
        } = undo;
        // Each part is attempted even if an earlier one fails; a Proxmox that is unavailable is
        // waited for (the compensation resumes), anything else is reported.
        let mut failures = Vec::new();
        if let Err(e) = steps::ensure_destroyed(&self.pve, vmid, &name).await {
            if e.is_retryable() {
                return Err(step_error(e));
            }
            failures.push(format!("VM {vmid} not destroyed: {e}"));
        }
        if let Err(e) = self.file_sd.remove(vmid) {
            failures.push(format!("scrape target of {vmid} not removed: {e}"));
        }
        if let Err(e) = self.vmids.release(vmid, &workflow).await {
            return Err(StepError::transient(e.to_string()).with_source(e));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(StepError::terminal(failures.join("; ")))
        }
    }

    async fn ended(
        &self,
        id: &str,
        req: &ProvisionRequested,
        ending: Ending<'_, Provisioned>,
    ) -> Result<(), StepError> {
        self.admissions
            .finish(&key::provision_ledger(&req.profile), id)
            .await
            .map_err(|e| StepError::transient(e.to_string()).with_source(e))?;
        let (done, error) = match ending {
            Ending::Succeeded(done) => (Some(done), None),
            Ending::Failed(why) | Ending::Cancelled(why) => (None, Some(why.to_string())),
        };
        let claimed = claims::of_request(req);
        let claims = match done {
            Some(done) => self.claims.settle(id, &claimed, done.vmid).await,
            None => self.claims.release(id, &claimed).await,
        };
        claims.map_err(|e| StepError::transient(e.to_string()).with_source(e))?;
        if let Some(done) = done
            && let Err(e) = self.vmids.release(done.vmid, id).await
        {
            // The VM exists now, so Proxmox itself guards the id; a stale reservation only wastes it.
            tracing::warn!(vmid = done.vmid, error = %e, "reservation not released");
        }
        let outcome = ProvisionOutcome {
            workflow_id: id.to_string(),
            name: req.name.clone(),
            profile: req.profile.clone(),
            vmid: done.map(|d| d.vmid),
            ip: done.map(|d| d.ip.clone()),
            error,
            at: self.clock.now(),
        };
        self.publisher
            .publish(&outcome)
            .await
            .map(drop)
            .map_err(|e| {
                StepError::transient(format!("publishing the outcome: {e}")).with_source(e)
            })
    }
}

impl Provision {
    async fn provision(
        &self,
        wf: &mut Run<Self>,
        req: ProvisionRequested,
    ) -> Result<Provisioned, Halt> {
        let id = wf.id().to_string();
        // `accepts` let it through, so the profile is there.
        let profile = self.profile(&req.profile).map_err(StepError::terminal)?;
        let shape = profile.shape(&req.overrides).map_err(|errors| {
            StepError::terminal(
                errors
                    .iter()
                    .map(|(f, m)| format!("{f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let now = wf.now();
        wf.step("admit", self.admit(&id, &req, profile, now))
            .await?;
        let vmid: u32 = wf
            .step_undo(
                "reserve_vmid",
                async {
                    self.vmids.reserve(&self.pve, &id).await.map_err(|e| {
                        let retry = !matches!(e, VmidError::Exhausted(_));
                        kind(retry, e.to_string()).with_source(e)
                    })
                },
                |vmid| Undo::Discard {
                    vmid: *vmid,
                    name: req.name.clone(),
                    workflow: id.clone(),
                },
            )
            .await?;
        wf.note("vmid", vmid);
        let template: u32 = wf
            .step("clone", async {
                steps::ensure_cloned(&self.pve, profile, vmid, &req.name)
                    .await
                    .map_err(step_error)?;
                Ok(profile.template)
            })
            .await?;
        tracing::debug!(template, vmid, "cloned");
        wf.step("configure", async {
            let current = self
                .pve
                .vm_config(vmid)
                .await
                .map_err(|e| step_error(steps::StepError::from(e)))?;
            let desired = steps::desired_config(profile, &shape, &req, current.get("net0"));
            let changed = steps::ensure_config(&self.pve, vmid, &desired)
                .await
                .map_err(step_error)?;
            Ok(Changed { changed })
        })
        .await?;
        wf.step("resize", async {
            let changed = steps::ensure_disk(&self.pve, vmid, &profile.disk, shape.disk_gib)
                .await
                .map_err(step_error)?;
            Ok(Changed { changed })
        })
        .await?;
        wf.step("start", async {
            let changed = steps::ensure_running(&self.pve, vmid)
                .await
                .map_err(step_error)?;
            Ok(Changed { changed })
        })
        .await?;
        let ip: String = wf
            .step("wait_ip", async {
                steps::wait_for_ipv4(&self.pve, vmid, self.config.ip_timeout)
                    .await
                    .map(|ip| ip.to_string())
                    .map_err(step_error)
            })
            .await?;
        wf.note("ip", &ip);
        let request = JoinRequest {
            workflow_id: id.clone(),
            vmid,
            name: req.name.clone(),
            ip: ip.clone(),
            user: profile.ciuser.clone(),
            profile: req.profile.clone(),
        };
        wf.step("join", self.join(&request)).await?;
        let target: String = wf
            .step("onboard", async {
                let target = format!("{ip}:{}", self.config.node_exporter_port);
                let labels = BTreeMap::from([
                    ("name".to_string(), req.name.clone()),
                    ("profile".to_string(), req.profile.clone()),
                    ("workflow".to_string(), id.clone()),
                ]);
                self.file_sd
                    .upsert(vmid, &target, labels)
                    .map_err(|e| StepError::terminal(e.to_string()).with_source(e))?;
                Ok(target)
            })
            .await?;
        tracing::info!(vmid, %ip, %target, "provisioned");
        Ok(Provisioned { vmid, ip })
    }

    /// Profile `name` of this provisioner's configuration; the error names the ones it has.
    fn profile(&self, name: &str) -> Result<&proxflow_platform::Profile, String> {
        self.config.profiles.get(name).ok_or_else(|| {
            format!(
                "unknown profile '{name}' (known: {}): [provision.profiles] of this provisioner \
                 lacks it",
                self.config.profiles.names().join(", ")
            )
        })
    }

    /// The profile's caps: `max_concurrent` running, `max_per_hour` started. A refusal ends the
    /// workflow `cancelled` with the numbers.
    async fn admit(
        &self,
        id: &str,
        req: &ProvisionRequested,
        profile: &proxflow_platform::Profile,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), StepError> {
        // The name and the address first: a provision refused for them takes no slot. The gateway
        // claimed them for this workflow already (a no-op here); a scale-out's node is claimed here.
        self.claims
            .take(id, &claims::of_request(req), now)
            .await
            .map_err(|e| match e {
                ClaimError::Held { .. } => StepError::refused(e.to_string()),
                other => StepError::transient(other.to_string()).with_source(other),
            })?;
        // A VM made by hand since the last claims sweep has no claim yet; Proxmox itself would
        // accept a second VM of the same name.
        let vms = self
            .pve
            .list_vms()
            .await
            .map_err(|e| step_error(steps::StepError::from(e)))?;
        if let Some(vm) = vms.iter().find(|vm| {
            vm.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(&req.name))
        }) {
            return Err(StepError::refused(format!(
                "name: the name {} is already in use: VM {} on Proxmox",
                req.name, vm.vmid
            )));
        }
        let caps = Caps {
            max_running: profile.max_concurrent,
            max_per_window: profile.max_per_hour,
            window: Duration::from_secs(3600),
        };
        let ledger = key::provision_ledger(&req.profile);
        match self.admissions.admit(&ledger, id, caps, now).await {
            Ok(Decision::Admitted) => Ok(()),
            Ok(Decision::Refused(why)) => Err(StepError::refused(format!(
                "refused by the {} profile's caps: {why}",
                req.profile
            ))),
            Err(e) => Err(StepError::transient(e.to_string()).with_source(e)),
        }
    }

    async fn join(&self, request: &JoinRequest) -> Result<Joined, StepError> {
        match join::run(&self.config.join, request).await {
            Ok(out) => Ok(Joined {
                stdout: out.stdout,
                stderr: out.stderr,
                exit: out.code,
            }),
            // A failing playbook is retried: ansible runs converge, and a VM that just booted is
            // often not quite ready for ssh.
            Err(JoinError::Failed(out)) => Err(StepError::transient(format!(
                "join command failed ({}); stderr tail: {}",
                out.summary(),
                tail_lines(&out.stderr, 5)
            ))),
            Err(e) => Err(StepError::terminal(e.to_string()).with_source(e)),
        }
    }
}

/// A Proxmox step's error, transient when retrying later could succeed.
fn step_error(e: steps::StepError) -> StepError {
    kind(e.is_retryable(), e.to_string()).with_source(e)
}

fn kind(retryable: bool, message: String) -> StepError {
    if retryable {
        StepError::transient(message)
    } else {
        StepError::terminal(message)
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
