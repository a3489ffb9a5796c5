//! The provisioner service: consumes `pf.cmd.provisioner.provision` and runs a provision workflow's
//! steps, recording each one in the workflow record.
//!
//! Durability: the record is the progress. A command redelivered after a crash (or a restart) skips the
//! steps the record shows as done and re-runs the rest, and every step is idempotent against Proxmox,
//! so a step that finished but was not yet recorded converges instead of doing the work twice.
//! A failure that retrying cannot fix, or that outlives the consumer's `max_deliver`, is compensated:
//! the VM is stopped and destroyed, its VMID released and its scrape target removed, and the workflow
//! ends `failed` with the reason.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::Utc;
use proxflow_pve::PveClient;
use proxflow_runtime::bus::topology::ConsumerSpec;
use proxflow_runtime::bus::{ConsumerLoop, Delivery, Handler, Outcome};
use proxflow_runtime::workflow::{WorkflowStore, WorkflowStoreError};
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use proxflow_schemas::names::consumer;
use proxflow_schemas::provision::{ProvisionCommand, ProvisionOutcome};
use proxflow_schemas::workflow::{StepRecord, StepState, WorkflowRecord, WorkflowState};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ProvisionConfig;
use crate::file_sd::FileSd;
use crate::join::{self, JoinError, JoinRequest};
use crate::steps::{self, StepError};
use crate::vmid::{Reservations, VmidError};

/// The steps of a provision, in order.
pub const STEPS: [&str; 8] = [
    "reserve_vmid",
    "clone",
    "configure",
    "resize",
    "start",
    "wait_ip",
    "join",
    "onboard",
];

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A bucket is missing.
    #[error(transparent)]
    Store(#[from] WorkflowStoreError),
    /// The VMID bucket is missing.
    #[error(transparent)]
    Vmid(#[from] VmidError),
    /// The command consumer failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Everything the provisioner needs beyond the [`ServiceContext`].
#[derive(Debug, Clone)]
pub struct ProvisionerSettings {
    /// `[provision]`.
    pub config: ProvisionConfig,
    /// The Proxmox it provisions on.
    pub pve: PveClient,
}

/// Runs the provisioner until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    settings: ProvisionerSettings,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let ProvisionerSettings { config, pve } = settings;
    let handler = Provisioner {
        store: WorkflowStore::open(&ctx.bus.js).await?,
        vmids: Reservations::open(&ctx.bus.js).await?,
        pve,
        file_sd: FileSd::new(&config.file_sd),
        publisher: ctx.bus.publisher.clone(),
        max_deliver: config.consumer.max_deliver,
        config: config.clone(),
    };
    let spec = ConsumerSpec::from(consumer::PROVISIONER);
    let mut tasks = Tasks::new(&ctx, &shutdown);
    let provisions = ConsumerLoop::new(ctx, spec, config.consumer, handler);
    tasks.spawn("provision commands", provisions.run(tasks.shutdown()));
    Ok(tasks.join().await?)
}

/// The command handler.
pub struct Provisioner {
    store: WorkflowStore,
    vmids: Reservations,
    pve: PveClient,
    file_sd: FileSd,
    publisher: proxflow_runtime::bus::Publisher,
    config: ProvisionConfig,
    max_deliver: u32,
}

/// A step's failure: whether it may be retried, and the message for the record.
struct Failure {
    retryable: bool,
    message: String,
}

impl From<StepError> for Failure {
    fn from(e: StepError) -> Self {
        Self {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

impl From<VmidError> for Failure {
    fn from(e: VmidError) -> Self {
        Self {
            retryable: !matches!(e, VmidError::Exhausted(_)),
            message: e.to_string(),
        }
    }
}

impl From<WorkflowStoreError> for Failure {
    fn from(e: WorkflowStoreError) -> Self {
        Self {
            retryable: true,
            message: e.to_string(),
        }
    }
}

impl Failure {
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

impl Handler<ProvisionCommand> for Provisioner {
    async fn handle(&self, delivery: Delivery<ProvisionCommand>) -> Outcome {
        let cmd = delivery.message;
        let span = tracing::info_span!(
            "provision",
            otel.name = %format!("provision {}", cmd.request.name),
            workflow.id = %cmd.workflow_id,
            vm.name = %cmd.request.name,
            attempt = delivery.attempt,
        );
        self.provision(&cmd, delivery.attempt)
            .instrument(span)
            .await
    }
}

impl Provisioner {
    async fn provision(&self, cmd: &ProvisionCommand, attempt: u32) -> Outcome {
        let record = match self.load_or_create(cmd).await {
            Ok(r) => r,
            Err(e) => return Outcome::retry(e.to_string()),
        };
        if record.state.is_terminal() {
            // Ended by an earlier delivery; announce the outcome again in case that delivery died
            // between recording the end and publishing it (the event's dedupe id makes this harmless).
            tracing::info!(state = ?record.state, "workflow already ended; announcing its outcome");
            return self.announce(cmd, &record).await;
        }
        match self.run_steps(cmd, &record).await {
            Ok(()) => self.finish(cmd, None).await,
            Err(f) if f.retryable && attempt < self.max_deliver => {
                tracing::warn!(error = %f.message, attempt, "step failed; will retry");
                Outcome::retry(f.message)
            }
            Err(f) => {
                tracing::error!(error = %f.message, "provision failed; compensating");
                self.compensate(cmd).await;
                self.finish(cmd, Some(f.message)).await
            }
        }
    }

    async fn load_or_create(
        &self,
        cmd: &ProvisionCommand,
    ) -> Result<WorkflowRecord, WorkflowStoreError> {
        if let Some((record, _)) = self.store.get(&cmd.workflow_id).await? {
            return Ok(record);
        }
        let record = cmd
            .request
            .pending_workflow(&cmd.request.requested_by, None);
        self.store.create(&record).await?;
        Ok(self
            .store
            .get(&cmd.workflow_id)
            .await?
            .map(|(r, _)| r)
            .unwrap_or(record))
    }

    async fn run_steps(
        &self,
        cmd: &ProvisionCommand,
        record: &WorkflowRecord,
    ) -> Result<(), Failure> {
        let req = &cmd.request;
        let profile = self.config.profiles.get(&req.profile).ok_or_else(|| {
            Failure::fatal(format!(
                "unknown profile '{}' (known: {})",
                req.profile,
                self.config.profiles.names().join(", ")
            ))
        })?;
        let shape = profile.shape(&req.overrides).map_err(|errors| {
            Failure::fatal(
                errors
                    .iter()
                    .map(|(f, m)| format!("{f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let done = |name: &str| {
            record
                .steps
                .iter()
                .any(|s| s.name == name && s.state == StepState::Succeeded)
        };
        let id = &cmd.workflow_id;
        self.store
            .update(id, |r| {
                if r.state == WorkflowState::Pending {
                    r.state = WorkflowState::Running;
                }
            })
            .await?;

        let vmid = match data_u32(record, "vmid") {
            Some(v) if done("reserve_vmid") => v,
            _ => {
                let vmid = self
                    .step(id, "reserve_vmid", async {
                        let vmid = self.vmids.reserve(&self.pve, id).await?;
                        Ok((vmid, json!({ "vmid": vmid })))
                    })
                    .await?;
                self.set_data(id, "vmid", json!(vmid)).await?;
                vmid
            }
        };
        if !done("clone") {
            self.step(id, "clone", async {
                steps::ensure_cloned(&self.pve, profile, vmid, &req.name).await?;
                Ok(((), json!({ "template": profile.template, "vmid": vmid })))
            })
            .await?;
        }
        if !done("configure") {
            self.step(id, "configure", async {
                let current = self.pve.vm_config(vmid).await.map_err(StepError::from)?;
                let desired = steps::desired_config(profile, &shape, req, current.get("net0"));
                let changed = steps::ensure_config(&self.pve, vmid, &desired).await?;
                Ok(((), json!({ "changed": changed })))
            })
            .await?;
        }
        if !done("resize") {
            self.step(id, "resize", async {
                let changed =
                    steps::ensure_disk(&self.pve, vmid, &profile.disk, shape.disk_gib).await?;
                Ok((
                    (),
                    json!({ "disk": profile.disk, "gib": shape.disk_gib, "changed": changed }),
                ))
            })
            .await?;
        }
        if !done("start") {
            self.step(id, "start", async {
                let started = steps::ensure_running(&self.pve, vmid).await?;
                Ok(((), json!({ "started": started })))
            })
            .await?;
        }
        let ip = match data_str(record, "ip") {
            Some(ip) if done("wait_ip") => ip,
            _ => {
                let ip = self
                    .step(id, "wait_ip", async {
                        let ip =
                            steps::wait_for_ipv4(&self.pve, vmid, self.config.ip_timeout).await?;
                        Ok((ip.to_string(), json!({ "ip": ip.to_string() })))
                    })
                    .await?;
                self.set_data(id, "ip", json!(ip)).await?;
                ip
            }
        };
        if !done("join") {
            let request = JoinRequest {
                workflow_id: id.clone(),
                vmid,
                name: req.name.clone(),
                ip: ip.clone(),
                user: profile.ciuser.clone(),
                profile: req.profile.clone(),
            };
            self.step(id, "join", async {
                match join::run(&self.config.join, &request).await {
                    Ok(out) => Ok((
                        (),
                        json!({ "stdout": out.stdout, "stderr": out.stderr, "exit": out.code }),
                    )),
                    Err(JoinError::Failed(out)) => Err(Failure {
                        // A failing playbook is retried: ansible runs converge, and a VM that just
                        // booted is often not quite ready for ssh.
                        retryable: true,
                        message: format!(
                            "join command failed ({}); stderr tail: {}",
                            out.summary(),
                            tail_lines(&out.stderr, 5)
                        ),
                    }),
                    Err(e) => Err(Failure::fatal(e.to_string())),
                }
            })
            .await?;
        }
        if !done("onboard") {
            self.step(id, "onboard", async {
                let target = format!("{ip}:{}", self.config.node_exporter_port);
                let labels = BTreeMap::from([
                    ("name".to_string(), req.name.clone()),
                    ("profile".to_string(), req.profile.clone()),
                    ("workflow".to_string(), id.clone()),
                ]);
                self.file_sd
                    .upsert(vmid, &target, labels)
                    .map_err(|e| Failure::fatal(e.to_string()))?;
                Ok(((), json!({ "target": target, "file": self.file_sd.path() })))
            })
            .await?;
        }
        Ok(())
    }

    /// Runs one step, recording Running, then Succeeded with its output or Failed with the error.
    async fn step<T, F>(&self, id: &str, name: &str, work: F) -> Result<T, Failure>
    where
        F: Future<Output = Result<(T, Value), Failure>>,
    {
        self.store
            .update(id, |r| {
                let s = step_mut(r, name);
                s.state = StepState::Running;
                s.attempts += 1;
                s.started_at.get_or_insert_with(Utc::now);
                s.error = None;
            })
            .await?;
        let span = tracing::info_span!("step", otel.name = %format!("step {name}"), step = name);
        let result = work.instrument(span).await;
        let (state, output, error) = match &result {
            Ok((_, out)) => (StepState::Succeeded, out.clone(), None),
            Err(f) => (StepState::Failed, Value::Null, Some(f.message.clone())),
        };
        self.store
            .update(id, |r| {
                let s = step_mut(r, name);
                s.state = state;
                if !output.is_null() {
                    s.output = output.clone();
                }
                s.error = error.clone();
                s.finished_at = Some(Utc::now());
            })
            .await?;
        result.map(|(v, _)| v)
    }

    async fn set_data(&self, id: &str, key: &str, value: Value) -> Result<(), Failure> {
        self.store
            .update(id, |r| {
                if !r.data.is_object() {
                    r.data = json!({});
                }
                if let Some(map) = r.data.as_object_mut() {
                    map.insert(key.to_string(), value.clone());
                }
            })
            .await?;
        Ok(())
    }

    /// Undoes what a failed provision left: VM, VMID reservation, scrape target. Each part is
    /// idempotent and attempted even if an earlier one fails; what could not be undone is logged.
    async fn compensate(&self, cmd: &ProvisionCommand) {
        let id = &cmd.workflow_id;
        let _ = self
            .store
            .update(id, |r| r.state = WorkflowState::Compensating)
            .await;
        let record = self.store.get(id).await.ok().flatten().map(|(r, _)| r);
        let vmid = match record.as_ref().and_then(|r| data_u32(r, "vmid")) {
            Some(v) => Some(v),
            None => self.vmids.find(id).await.ok().flatten(),
        };
        let Some(vmid) = vmid else {
            return;
        };
        if let Err(e) = steps::ensure_destroyed(&self.pve, vmid, &cmd.request.name).await {
            tracing::error!(vmid, error = %e, "compensation: VM not destroyed");
        }
        if let Err(e) = self.file_sd.remove(vmid) {
            tracing::error!(vmid, error = %e, "compensation: scrape target not removed");
        }
        if let Err(e) = self.vmids.release(vmid, id).await {
            tracing::error!(vmid, error = %e, "compensation: VMID reservation not released");
        }
        let _ = self
            .store
            .update(id, |r| {
                for s in &mut r.steps {
                    if s.state == StepState::Succeeded {
                        s.state = StepState::Compensated;
                    }
                }
            })
            .await;
    }

    /// Marks the workflow ended and publishes the outcome event.
    async fn finish(&self, cmd: &ProvisionCommand, error: Option<String>) -> Outcome {
        let id = &cmd.workflow_id;
        let record = match self
            .store
            .update(id, |r| {
                r.state = if error.is_some() {
                    WorkflowState::Failed
                } else {
                    WorkflowState::Succeeded
                };
                r.error = error.clone();
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::retry(e.to_string()),
        };
        if error.is_none()
            && let Some(vmid) = data_u32(&record, "vmid")
            && let Err(e) = self.vmids.release(vmid, id).await
        {
            // The VM exists now, so Proxmox itself guards the id; a stale reservation only wastes it.
            tracing::warn!(vmid, error = %e, "reservation not released");
        }
        self.announce(cmd, &record).await
    }

    /// Publishes the outcome of an ended workflow, as its record says.
    async fn announce(&self, cmd: &ProvisionCommand, record: &WorkflowRecord) -> Outcome {
        let succeeded = record.state == WorkflowState::Succeeded;
        let outcome = ProvisionOutcome {
            workflow_id: cmd.workflow_id.clone(),
            name: cmd.request.name.clone(),
            profile: cmd.request.profile.clone(),
            vmid: data_u32(record, "vmid").filter(|_| succeeded),
            ip: data_str(record, "ip").filter(|_| succeeded),
            error: if succeeded {
                None
            } else {
                Some(
                    record
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("workflow ended {:?}", record.state)),
                )
            },
            at: Utc::now(),
        };
        match self.publisher.publish(&outcome).await {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::retry(format!("publishing the outcome: {e}")),
        }
    }
}

fn step_mut<'a>(record: &'a mut WorkflowRecord, name: &str) -> &'a mut StepRecord {
    if let Some(i) = record.steps.iter().position(|s| s.name == name) {
        return &mut record.steps[i];
    }
    record.steps.push(StepRecord {
        name: name.to_string(),
        state: StepState::Pending,
        attempts: 0,
        started_at: None,
        finished_at: None,
        error: None,
        output: Value::Null,
        undo: None,
    });
    let last = record.steps.len() - 1;
    &mut record.steps[last]
}

fn data_u32(record: &WorkflowRecord, key: &str) -> Option<u32> {
    record
        .data
        .get(key)?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
}

fn data_str(record: &WorkflowRecord, key: &str) -> Option<String> {
    record.data.get(key)?.as_str().map(str::to_string)
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
