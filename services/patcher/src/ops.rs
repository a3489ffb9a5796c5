//! What the patch run's steps act on, and the small actions several steps share: events, the
//! pre-change snapshot request, Proxmox power actions that survive a crash, readiness.

use std::time::Duration;

use chrono::{DateTime, Utc};
use proxflow_pve::PveClient;
use proxflow_runtime::backoff::Backoff;
use proxflow_runtime::bus::{Publisher, rpc};
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::ops::{CounterFamily, GaugeFamily, Metrics};
use proxflow_runtime::workflow::StepError;
use proxflow_schemas::names::subject;
use proxflow_schemas::patch::{PatchEvent, PatchEventKind};
use proxflow_schemas::snapshot::{PreChangeReply, PreChangeRequest, SnapshotTarget};

use crate::config::PatchConfig;
use crate::gate::Gates;
use crate::guest::{Guest, Vm};
use crate::kube::Kubectl;
use crate::window::Window;

/// The patcher's Prometheus gauges.
#[derive(Debug, Clone)]
pub(crate) struct PatchMetrics {
    /// `pending_updates{target,kind}`: pending updates at the last scan (`security` or `other`).
    pub(crate) pending: GaugeFamily<2>,
    /// `reboot_required{target}`: 1 when the last scan expects a reboot.
    pub(crate) reboot_required: GaugeFamily<1>,
    /// `last_successful_run_timestamp`: when a run last ended successfully (not dry-run).
    pub(crate) last_success: GaugeFamily<0>,
    /// `patch_node_failures_total{target}`: targets a run stopped on.
    pub(crate) failures: CounterFamily<1>,
}

impl PatchMetrics {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        Self {
            pending: metrics.gauge_family(
                "pending_updates",
                "Pending package updates at the last patch scan, per target and kind",
                ["target", "kind"],
            ),
            reboot_required: metrics.gauge_family(
                "reboot_required",
                "1 when the last patch scan expects the target to need a reboot",
                ["target"],
            ),
            last_success: metrics.gauge_family(
                "last_successful_run_timestamp",
                "Unix time a patch run last ended successfully",
                [],
            ),
            failures: metrics.counter_family(
                "patch_node_failures",
                "Targets a patch run stopped on (it paged)",
                ["target"],
            ),
        }
    }
}

/// Everything a patch run acts on.
pub(crate) struct Ops {
    pub(crate) config: PatchConfig,
    pub(crate) window: Window,
    pub(crate) pve: PveClient,
    pub(crate) guest: Guest,
    pub(crate) kube: Kubectl,
    pub(crate) gates: Gates,
    pub(crate) publisher: Publisher,
    pub(crate) nats: async_nats::Client,
    pub(crate) kv: async_nats::jetstream::kv::Store,
    pub(crate) clock: SharedClock,
    pub(crate) metrics: PatchMetrics,
}

/// A Proxmox error as a step error: transient when Proxmox says so (unavailable, timeouts).
pub(crate) fn pve_err(
    what: impl std::fmt::Display,
) -> impl FnOnce(proxflow_pve::PveError) -> StepError {
    move |e| {
        let message = format!("{what}: {e}");
        if e.is_transient() {
            StepError::transient(message).with_source(e)
        } else {
            StepError::terminal(message).with_source(e)
        }
    }
}

impl Ops {
    /// Publishes one event of run `run` (deduplicated by the step that publishes it).
    pub(crate) async fn event(
        &self,
        run: &str,
        step: &str,
        kind: PatchEventKind,
        target: Option<&str>,
        detail: impl Into<String>,
        data: serde_json::Value,
    ) -> Result<(), StepError> {
        let event = PatchEvent {
            run: run.to_string(),
            kind,
            target: target.map(str::to_string),
            detail: detail.into(),
            data,
            step: step.to_string(),
            at: self.clock.now(),
        };
        let level_page = kind == PatchEventKind::Page;
        if level_page {
            tracing::error!(run, target = ?target, detail = %event.detail, "patch run needs a human");
        } else {
            tracing::info!(run, kind = kind.token(), target = ?target, detail = %event.detail, "patch event");
        }
        self.publisher.publish(&event).await.map_err(|e| {
            StepError::transient(format!(
                "publishing {}: {e}",
                subject::evt("patch", kind.token())
            ))
            .with_source(e)
        })?;
        Ok(())
    }

    /// Asks the snapshotter for the pre-change snapshot of `target` (the same `request_id` again
    /// returns the same snapshot).
    pub(crate) async fn prechange(
        &self,
        request_id: String,
        target: SnapshotTarget,
        reason: String,
    ) -> Result<String, StepError> {
        let request = PreChangeRequest {
            request_id,
            target: target.clone(),
            reason,
            ttl_secs: None,
        };
        let reply: PreChangeReply = rpc::request(
            &self.nats,
            subject::RPC_SNAPSHOTTER_PRECHANGE,
            &request,
            self.config.snapshot_timeout,
        )
        .await
        .map_err(|e| {
            StepError::transient(format!("pre-change snapshot of {target}: {e}")).with_source(e)
        })?;
        match (reply.snapshot, reply.error) {
            (Some(name), _) => Ok(name),
            (None, error) => Err(StepError::terminal(format!(
                "pre-change snapshot of {target} refused: {}",
                error.unwrap_or_else(|| "no reason given".into())
            ))),
        }
    }

    /// Reboots VM `vmid` through the API once: a `qmreboot` of ours since `since` (a crash after
    /// the request) is waited for instead of asking again.
    pub(crate) async fn reboot_vm(&self, vmid: u32, since: DateTime<Utc>) -> Result<(), StepError> {
        let err = || pve_err(format!("rebooting VM {vmid}"));
        let since = u64::try_from(since.timestamp()).unwrap_or(0);
        let earlier = self
            .pve
            .find_tasks("qmreboot", &vmid.to_string(), since)
            .await
            .map_err(err())?;
        let upid = match earlier.into_iter().next() {
            Some(upid) => upid,
            None => self.pve.reboot_vm(vmid, None).await.map_err(err())?,
        };
        self.pve.wait_task(&upid, None).await.map_err(err())?;
        Ok(())
    }

    /// Starts VM `vmid` unless it runs.
    pub(crate) async fn ensure_running(&self, vmid: u32) -> Result<(), StepError> {
        let err = || pve_err(format!("starting VM {vmid}"));
        let status = self.pve.vm_status(vmid).await.map_err(err())?;
        if status.status == "running" {
            return Ok(());
        }
        let upid = self.pve.start_vm(vmid).await.map_err(err())?;
        self.pve.wait_task(&upid, None).await.map_err(err())?;
        Ok(())
    }

    /// Waits until the VM's guest agent answers and its k3s node is `Ready`, up to
    /// `patch.ready_timeout`.
    pub(crate) async fn wait_ready(&self, vm: &Vm) -> Result<(), StepError> {
        let mut tries = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
            attempts: u32::MAX,
            deadline: self.config.ready_timeout,
        }
        .start();
        let mut last = String::from("not looked at yet");
        while tries.next().await.is_some() {
            match self.pve.agent_ping(vm.vmid).await {
                Err(e) => last = format!("guest agent: {e}"),
                Ok(()) => match self.kube.node(&vm.name).await {
                    Ok(node) if node.ready => return Ok(()),
                    Ok(_) => last = format!("node {} is not Ready", vm.name),
                    Err(e) => last = e.message,
                },
            }
        }
        Err(StepError::terminal(format!(
            "VM {} ({}) not ready within {:?}: {last}",
            vm.vmid, vm.name, self.config.ready_timeout
        )))
    }
}

impl Ops {
    /// Runs `patch.host.upgrade_command` (the API has no upgrade call).
    pub(crate) async fn upgrade_host(&self) -> Result<(), StepError> {
        let node = self.pve.node().to_string();
        let argv = self
            .config
            .host
            .upgrade_command
            .iter()
            .map(|a| a.replace("{node}", &node))
            .collect();
        let spec = proxflow_runtime::command::CommandSpec {
            argv,
            timeout: self.config.host.upgrade_timeout,
            ..Default::default()
        };
        let output = proxflow_runtime::command::run(&spec)
            .await
            .map_err(|e| StepError::terminal(format!("host upgrade: {e}")).with_source(e))?;
        if !output.success() {
            return Err(StepError::terminal(format!(
                "host upgrade failed ({})",
                output.summary()
            )));
        }
        Ok(())
    }

    /// Reboots the host once: a host that came up after `since` has rebooted already.
    pub(crate) async fn reboot_host(&self, since: DateTime<Utc>) -> Result<(), StepError> {
        if self.host_up_since(since).await?.is_some() {
            return Ok(());
        }
        self.pve
            .reboot_node()
            .await
            .map_err(pve_err("asking the host to reboot"))
    }

    /// The running kernel when the host booted after `since`; `None` while it has not.
    async fn host_up_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Option<Option<String>>, StepError> {
        let status = self
            .pve
            .node_status()
            .await
            .map_err(pve_err("reading the host's status"))?;
        // The host's uptime is on the wall clock (as is `since`), not the engine's.
        let elapsed = (Utc::now() - since).num_seconds().max(0);
        let uptime = i64::try_from(status.uptime).unwrap_or(i64::MAX);
        Ok((uptime < elapsed).then(|| status.current_kernel.map(|k| k.release)))
    }

    /// Waits until the host's API answers again after a reboot requested after `since`; the
    /// kernel it runs.
    pub(crate) async fn wait_host_up(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Option<String>, StepError> {
        let mut tries = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
            attempts: u32::MAX,
            deadline: self.config.host.reboot_timeout,
        }
        .start();
        let mut last = String::from("not looked at yet");
        while tries.next().await.is_some() {
            match self.host_up_since(since).await {
                Ok(Some(kernel)) => return Ok(kernel),
                Ok(None) => last = "it has not gone down yet".into(),
                Err(e) => last = e.message,
            }
        }
        Err(StepError::terminal(format!(
            "the host did not come back within {:?}: {last}",
            self.config.host.reboot_timeout
        )))
    }
}
