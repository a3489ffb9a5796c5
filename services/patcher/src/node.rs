//! One target of a patch run, as recorded steps: wait for the window and the gates, then for a VM
//! pre-change snapshot → cordon (marked as ours) → drain → upgrade → reboot if required → agent
//! and `Ready` → uncordon if ours → verify; for the host snapshot → upgrade → (reboot: k3s VMs
//! shut down agents first, reboot, API back, kernel checked, VMs started in boot order) → verify.
//!
//! A step that fails for good is recorded as a failed *outcome* (not a failed step), so a replay
//! after a crash never runs an upgrade or a reboot again: it reads what happened.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::{ErrorKind, Halt, Run, StepError};
use proxflow_schemas::patch::{NodeReport, PatchEventKind, TargetKind, TargetPlan};
use proxflow_schemas::snapshot::SnapshotTarget;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::OnFailure;
use crate::flow::PatchRun;
use crate::guest::Vm;
use crate::ops::pve_err;

/// How one target ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum NodeOutcome {
    /// Patched (or nothing was left to do).
    Done(NodeReport),
    /// Not touched, with the reason.
    Skipped(String),
    /// Failed; the run stops.
    Failed(String),
}

/// Runs `action` as step `name`, recording a terminal failure as `Err(reason)` in the output.
pub(crate) async fn act<T, F>(
    wf: &mut Run<PatchRun>,
    name: &str,
    action: F,
) -> Result<Result<T, String>, Halt>
where
    T: Serialize + DeserializeOwned + Send,
    F: Future<Output = Result<T, StepError>> + Send,
{
    wf.step(name, async {
        match action.await {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.kind == ErrorKind::Transient => Err(e),
            Err(e) => Ok(Err(e.message)),
        }
    })
    .await
}

/// What the window or a gate said, with when to look again.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Wait {
    Go,
    Until { at: DateTime<Utc>, reason: String },
}

/// The VM or host state before the change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Before {
    pub(crate) at: DateTime<Utc>,
    pub(crate) installed: BTreeMap<String, String>,
    pub(crate) kernel: Option<String>,
}

impl PatchRun {
    /// Waits until the window is open and every gate is, recording each look.
    pub(crate) async fn wait_for_gates(
        &self,
        wf: &mut Run<Self>,
        key: &str,
        vmid: Option<u32>,
    ) -> Result<(), Halt> {
        let run = wf.id().to_string();
        let ops = &self.ops;
        for n in 0u32.. {
            let now = wf.now();
            let name = format!("{key}.window.{n}");
            let window: Wait = wf
                .step(&name, async {
                    if ops.window.current(now).is_some() {
                        return Ok(Wait::Go);
                    }
                    let next = ops
                        .window
                        .next_after(now)
                        .ok_or_else(|| StepError::terminal("the patch window never opens again"))?;
                    let reason = format!("the window is closed; resuming at {}", next.start);
                    ops.event(
                        &run,
                        &name,
                        PatchEventKind::Paused,
                        Some(key),
                        &reason,
                        json!(null),
                    )
                    .await?;
                    Ok(Wait::Until {
                        at: next.start,
                        reason,
                    })
                })
                .await?;
            if let Wait::Until { at, reason } = window {
                wf.note("paused", &reason);
                wf.sleep_until(&format!("{name}.wait"), at).await?;
                continue;
            }
            let name = format!("{key}.gate.{n}");
            let recheck = chrono::Duration::from_std(ops.config.gate.recheck)
                .unwrap_or(chrono::Duration::MAX);
            let gate: Wait = wf
                .step(&name, async {
                    let verdict = ops.gates.check(vmid, now).await?;
                    if verdict.open() {
                        return Ok(Wait::Go);
                    }
                    let reason = verdict.closed.join("; ");
                    ops.event(
                        &run,
                        &name,
                        PatchEventKind::GateClosed,
                        Some(key),
                        &reason,
                        json!(null),
                    )
                    .await?;
                    Ok(Wait::Until {
                        at: now + recheck,
                        reason,
                    })
                })
                .await?;
            match gate {
                Wait::Go => {
                    wf.note("paused", serde_json::Value::Null);
                    return Ok(());
                }
                Wait::Until { at, reason } => {
                    wf.note("paused", format!("before {key}: {reason}"));
                    wf.sleep_until(&format!("{name}.wait"), at).await?;
                }
            }
        }
        Ok(())
    }

    /// Patches one VM.
    pub(crate) async fn patch_vm(
        &self,
        wf: &mut Run<Self>,
        round: u32,
        plan: &TargetPlan,
        approver: Option<&str>,
    ) -> Result<NodeOutcome, Halt> {
        let vmid = plan.vmid.unwrap_or_default();
        let key = format!("{round}.{}", plan.target);
        self.wait_for_gates(wf, &key, Some(vmid)).await?;
        let run = wf.id().to_string();
        let vm = Vm {
            vmid,
            name: plan.name.clone(),
            ip: plan.address.clone().unwrap_or_default(),
        };
        let ops = &self.ops;
        let checked = act(wf, &format!("{key}.check"), async {
            let node = ops.kube.node(&vm.name).await?;
            Ok(match node.owner {
                _ if !node.unschedulable => None,
                Some(owner) if owner == run => None,
                Some(owner) => Some(format!("cordoned by another patch run ({owner})")),
                None => Some("cordoned by hand (not by proxflow); left as it is".to_string()),
            })
        })
        .await?;
        match checked {
            Err(reason) => return self.failed(wf, &key, plan, &vm, None, reason).await,
            Ok(Some(reason)) => {
                let name = format!("{key}.skipped");
                let target = Some(plan.target.as_str());
                self.announce(
                    wf,
                    &name,
                    PatchEventKind::Skipped,
                    target,
                    reason.clone(),
                    json!(null),
                )
                .await?;
                return Ok(NodeOutcome::Skipped(reason));
            }
            Ok(None) => {}
        }
        let result = self.vm_steps(wf, &key, plan, &vm, approver).await?;
        match result {
            Ok(report) => self.done(wf, &key, plan, report).await,
            Err((reason, snapshot)) => self.failed(wf, &key, plan, &vm, snapshot, reason).await,
        }
    }

    /// A target is done: its report as an event.
    pub(crate) async fn done(
        &self,
        wf: &mut Run<Self>,
        key: &str,
        plan: &TargetPlan,
        report: NodeReport,
    ) -> Result<NodeOutcome, Halt> {
        let data = serde_json::to_value(&report).unwrap_or_default();
        let target = Some(plan.target.as_str());
        let name = format!("{key}.done");
        self.announce(
            wf,
            &name,
            PatchEventKind::NodeDone,
            target,
            "patched".into(),
            data,
        )
        .await?;
        Ok(NodeOutcome::Done(report))
    }

    /// The VM's change, snapshot to verify. `Err((reason, snapshot))` on a failure.
    async fn vm_steps(
        &self,
        wf: &mut Run<Self>,
        key: &str,
        plan: &TargetPlan,
        vm: &Vm,
        approver: Option<&str>,
    ) -> Result<Result<NodeReport, (String, Option<String>)>, Halt> {
        let run = wf.id().to_string();
        let ops = &self.ops;
        let snap = act(wf, &format!("{key}.snapshot"), async {
            ops.prechange(
                format!("{run}/{key}"),
                SnapshotTarget::Vm { vmid: vm.vmid },
                format!("before patch run {run}"),
            )
            .await
        })
        .await?;
        let snapshot = match snap {
            Ok(s) => s,
            Err(reason) => return Ok(Err((reason, None))),
        };
        let fail = |reason: String| Ok(Err((reason, Some(snapshot.clone()))));
        macro_rules! step {
            ($name:expr, $body:expr) => {
                match act(wf, &format!("{key}.{}", $name), $body).await? {
                    Ok(v) => v,
                    Err(reason) => return fail(reason),
                }
            };
        }
        let () = step!("cordon", ops.kube.cordon(&vm.name, &run));
        let () = step!("drain", ops.kube.drain(&vm.name));
        let before: Before = step!("before", async {
            Ok(Before {
                // Proxmox's task start times and uptime are on the wall clock, not the engine's.
                at: Utc::now(),
                installed: ops.guest.installed(vm).await?,
                // The plan has the VM's kernel from its scan; only the host's is compared after.
                kernel: None,
            })
        });
        let keep: Vec<String> = plan.skipped.iter().map(|c| c.package.clone()).collect();
        let holds = step!("holds", ops.holds(&plan.target));
        let release: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| holds.contains_key(&c.package))
            .map(|c| c.package.clone())
            .collect();
        let () = step!("upgrade", async {
            ops.guest.mark(vm, false, &release).await?;
            ops.guest.upgrade(vm, &keep).await
        });
        let reboot: bool = step!("reboot_needed", async {
            Ok(ops.guest.reboot_required(vm).await?
                || plan
                    .changes
                    .iter()
                    .any(|c| crate::classify::is_kernel(&ops.config.major, c)))
        });
        if reboot {
            let () = step!("reboot", ops.reboot_vm(vm.vmid, before.at));
        }
        let () = step!("ready", ops.wait_ready(vm));
        let ours: bool = step!("uncordon", ops.kube.uncordon(&vm.name, &run));
        if !ours {
            tracing::warn!(vm = %vm.name, "the node's cordon marker is not ours any more; left cordoned");
        }
        let after: (BTreeMap<String, String>, String) = step!("verify", async {
            let installed = ops.guest.installed(vm).await?;
            let kernel = ops.guest.kernel(vm).await?;
            for c in &plan.changes {
                let now = installed.get(&c.package);
                if now != c.to.as_ref() {
                    return Err(StepError::terminal(format!(
                        "{} is {} after the upgrade, not {}",
                        c.package,
                        now.map_or("absent", String::as_str),
                        c.to.as_deref().unwrap_or("removed")
                    )));
                }
            }
            Ok((installed, kernel))
        });
        let changed = |m: &BTreeMap<String, String>| {
            plan.changes
                .iter()
                .filter_map(|c| m.get(&c.package).map(|v| (c.package.clone(), v.clone())))
                .collect()
        };
        let (seconds, waited_seconds, gate_wait_seconds) = timings(wf.record(), key);
        Ok(Ok(NodeReport {
            target: plan.target.clone(),
            before: changed(&before.installed),
            after: changed(&after.0),
            rebooted: reboot,
            kernel: Some(after.1),
            snapshot: Some(snapshot.clone()),
            seconds,
            waited_seconds,
            gate_wait_seconds,
            approver: approver.filter(|_| plan.is_major()).map(str::to_string),
        }))
    }

    /// A target failed: page, and leave it as `on_failure` says.
    pub(crate) async fn failed(
        &self,
        wf: &mut Run<Self>,
        key: &str,
        plan: &TargetPlan,
        vm: &Vm,
        snapshot: Option<String>,
        reason: String,
    ) -> Result<NodeOutcome, Halt> {
        let run = wf.id().to_string();
        let ops = &self.ops;
        let name = format!("{key}.failed");
        let on_failure = ops.config.on_failure;
        let detail = format!("{}: {reason}", plan.target);
        let is_vm = plan.kind != TargetKind::Host;
        let left = act(wf, &name, async {
            ops.event(
                &run,
                &name,
                PatchEventKind::Page,
                Some(&plan.target),
                &detail,
                json!({"on_failure": on_failure, "snapshot": snapshot}),
            )
            .await?;
            ops.metrics.failures.inc([plan.target.as_str()]);
            if is_vm && on_failure == OnFailure::Stop {
                ops.kube.mark_failed(&vm.name, &reason).await?;
            }
            Ok(())
        })
        .await?;
        if let Err(e) = left {
            tracing::error!(target = %plan.target, error = %e, "could not mark the failed node");
        }
        if is_vm
            && on_failure == OnFailure::Rollback
            && let Some(snapshot) = snapshot
        {
            let rolled = act(wf, &format!("{key}.rollback"), async {
                let err = || pve_err(format!("rolling VM {} back to {snapshot}", vm.vmid));
                let upid = ops
                    .pve
                    .rollback_snapshot(vm.vmid, &snapshot, false)
                    .await
                    .map_err(err())?;
                ops.pve.wait_task(&upid, None).await.map_err(err())?;
                ops.ensure_running(vm.vmid).await?;
                ops.wait_ready(vm).await?;
                ops.kube.uncordon(&vm.name, &run).await.map(|_| ())
            })
            .await?;
            if let Err(e) = rolled {
                return Ok(NodeOutcome::Failed(format!(
                    "{reason}; the rollback failed too: {e}"
                )));
            }
            return Ok(NodeOutcome::Failed(format!(
                "{reason} (rolled back to {snapshot}, started and uncordoned)"
            )));
        }
        Ok(NodeOutcome::Failed(reason))
    }
}

/// The steps that wait on something outside proxflow's control: drains, upgrades, reboots, boots.
pub(crate) const WAIT_STEPS: [&str; 7] = [
    "drain",
    "upgrade",
    "reboot",
    "ready",
    "guests_down",
    "up",
    "guests_up",
];

/// From the recorded steps of target `key` (so a replay reports the same): seconds from its first
/// step to its last, seconds in [`WAIT_STEPS`], seconds waiting on the window and the gates.
pub(crate) fn timings(
    record: &proxflow_schemas::workflow::WorkflowRecord,
    key: &str,
) -> (f64, f64, f64) {
    let prefix = format!("{key}.");
    let mut first: Option<DateTime<Utc>> = None;
    let mut last: Option<DateTime<Utc>> = None;
    let mut waited = 0.0;
    let mut gate_span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for step in record.steps.iter().filter(|s| s.name.starts_with(&prefix)) {
        let (Some(start), Some(end)) = (step.started_at, step.finished_at) else {
            continue;
        };
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
        let what = &step.name[prefix.len()..];
        let took = seconds(start, end);
        if WAIT_STEPS.contains(&what) {
            waited += took;
        } else if what.starts_with("window.") || what.starts_with("gate.") {
            // From the first look to the last: the sleeps between looks are recorded as instants.
            gate_span = Some(gate_span.map_or((start, end), |(f, l)| (f.min(start), l.max(end))));
        }
    }
    let whole = first.zip(last).map_or(0.0, |(f, l)| seconds(f, l));
    let gated = gate_span.map_or(0.0, |(f, l)| seconds(f, l));
    (whole, waited, gated)
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}
