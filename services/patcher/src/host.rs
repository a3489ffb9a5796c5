//! The Proxmox VE host's part of a patch run, last: snapshot of its root dataset → the upgrade
//! command (the API has none) → if a reboot is needed: the k3s VMs shut down (agents first), the
//! node rebooted through the API, the API waited for, the new kernel checked, the VMs back in boot
//! order and `Ready` → verify that nothing planned is still pending.

use std::collections::BTreeMap;

use chrono::Utc;
use proxflow_pve::ShutdownOptions;
use proxflow_runtime::workflow::{Halt, Run, StepError};
use proxflow_schemas::patch::{NodeReport, TargetKind, TargetPlan};
use proxflow_schemas::snapshot::SnapshotTarget;

use crate::flow::PatchRun;
use crate::guest::Vm;
use crate::node::{Before, NodeOutcome, act, timings};
use crate::ops::pve_err;

macro_rules! attempt {
    ($outcome:expr) => {
        match $outcome {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        }
    };
}

impl PatchRun {
    /// Patches the host, last.
    pub(crate) async fn patch_host(
        &self,
        wf: &mut Run<Self>,
        round: u32,
        plan: &TargetPlan,
        approver: Option<&str>,
    ) -> Result<NodeOutcome, Halt> {
        let key = format!("{round}.{}", plan.target);
        self.wait_for_gates(wf, &key, None).await?;
        let result = self.host_steps(wf, &key, plan, approver).await?;
        match result {
            Ok(report) => self.done(wf, &key, plan, report).await,
            Err(reason) => {
                let vm = Vm {
                    vmid: 0,
                    name: plan.name.clone(),
                    ip: String::new(),
                };
                self.failed(wf, &key, plan, &vm, None, reason).await
            }
        }
    }

    async fn host_steps(
        &self,
        wf: &mut Run<Self>,
        key: &str,
        plan: &TargetPlan,
        approver: Option<&str>,
    ) -> Result<Result<NodeReport, String>, Halt> {
        let run = wf.id().to_string();
        let ops = &self.ops;
        let dataset = ops.config.host.dataset.clone();
        let snapshot: String = attempt!(
            act(wf, &format!("{key}.snapshot"), async {
                ops.prechange(
                    format!("{run}/{key}"),
                    SnapshotTarget::Dataset { dataset },
                    format!("before patch run {run}"),
                )
                .await
            })
            .await?
        );
        let before: Before = attempt!(
            act(wf, &format!("{key}.before"), async {
                let status = ops
                    .pve
                    .node_status()
                    .await
                    .map_err(pve_err("reading the host's status"))?;
                Ok(Before {
                    // Proxmox's task start times and uptime are on the wall clock, not the engine's.
                    at: Utc::now(),
                    installed: BTreeMap::new(),
                    kernel: status.current_kernel.map(|k| k.release),
                })
            })
            .await?
        );
        let () = attempt!(act(wf, &format!("{key}.upgrade"), ops.upgrade_host()).await?);
        if plan.reboot {
            let stopped: Vec<u32> = attempt!(
                act(wf, &format!("{key}.guests_down"), async {
                    let vms = ops.k3s_vms(true).await?;
                    let mut stopped = Vec::new();
                    // Agents first, then servers: the control plane goes last.
                    for f in vms {
                        let err = || pve_err(format!("shutting VM {} down", f.vm.vmid));
                        let status = ops.pve.vm_status(f.vm.vmid).await.map_err(err())?;
                        if status.status != "running" {
                            continue;
                        }
                        let upid = ops
                            .pve
                            .shutdown_vm(
                                f.vm.vmid,
                                ShutdownOptions {
                                    timeout: Some(180),
                                    force_stop: true,
                                },
                            )
                            .await
                            .map_err(err())?;
                        ops.pve.wait_task(&upid, None).await.map_err(err())?;
                        stopped.push(f.vm.vmid);
                    }
                    Ok(stopped)
                })
                .await?
            );
            let () = attempt!(act(wf, &format!("{key}.reboot"), ops.reboot_host(before.at)).await?);
            let kernel: Option<String> =
                attempt!(act(wf, &format!("{key}.up"), ops.wait_host_up(before.at)).await?);
            if kernel == before.kernel {
                return Ok(Err(format!(
                    "the host still runs kernel {} after its reboot",
                    kernel.unwrap_or_default()
                )));
            }
            // The kernel the upgrade installed (`proxmox-kernel-6.8.12-11-pve-signed` brings
            // `6.8.12-11-pve`) is the one that must be running now.
            if let Some(installed) = installed_kernel(plan)
                && kernel.as_deref() != Some(installed.as_str())
            {
                return Ok(Err(format!(
                    "the host runs kernel {} after its reboot, not the installed {installed}",
                    kernel.unwrap_or_default()
                )));
            }
            let () = attempt!(
                act(wf, &format!("{key}.guests_up"), async {
                    let mut vms = ops.k3s_vms(false).await?;
                    // Servers first, then agents, each in its boot order.
                    vms.sort_by_key(|f| {
                        (u8::from(f.kind != TargetKind::Server), f.order, f.vm.vmid)
                    });
                    for f in vms.iter().filter(|f| stopped.contains(&f.vm.vmid)) {
                        // The host starts its `onboot` VMs itself (pve-guests' startall, in boot
                        // order): racing it with a second start is not ours to do. Only when one
                        // does not come up do we start it.
                        if !(f.onboot && ops.wait_ready(&f.vm).await.is_ok()) {
                            ops.ensure_running(f.vm.vmid).await?;
                            ops.wait_ready(&f.vm).await?;
                        }
                    }
                    Ok(())
                })
                .await?
            );
        }
        let kernel: Option<String> = attempt!(
            act(wf, &format!("{key}.verify"), async {
                let pending = ops
                    .pve
                    .apt_updates()
                    .await
                    .map_err(pve_err("listing the host's updates"))?;
                if let Some(left) = pending.iter().find(|u| {
                    plan.changes
                        .iter()
                        .any(|c| c.package == u.package && u.old_version == c.from)
                }) {
                    return Err(StepError::terminal(format!(
                        "{} is still pending after the upgrade ({} -> {})",
                        left.package,
                        left.old_version.as_deref().unwrap_or("-"),
                        left.version
                    )));
                }
                let status = ops
                    .pve
                    .node_status()
                    .await
                    .map_err(pve_err("reading the host's status"))?;
                Ok(status.current_kernel.map(|k| k.release))
            })
            .await?
        );
        let (seconds, waited_seconds, gate_wait_seconds) = timings(wf.record(), key);
        let versions = |to: bool| {
            plan.changes
                .iter()
                .filter_map(|c| {
                    let v = if to { c.to.clone() } else { c.from.clone() };
                    v.map(|v| (c.package.clone(), v))
                })
                .collect()
        };
        Ok(Ok(NodeReport {
            target: plan.target.clone(),
            before: versions(false),
            after: versions(true),
            rebooted: plan.reboot,
            kernel,
            snapshot: Some(snapshot),
            seconds,
            waited_seconds,
            gate_wait_seconds,
            approver: approver.filter(|_| plan.is_major()).map(str::to_string),
        }))
    }
}

/// The kernel release a host plan installs, from its kernel image package
/// (`proxmox-kernel-6.8.12-11-pve-signed`, `pve-kernel-5.15.158-2-pve`); the newest when several.
fn installed_kernel(plan: &TargetPlan) -> Option<String> {
    plan.changes
        .iter()
        .filter(|c| c.to.is_some())
        .filter_map(|c| {
            let rest = c
                .package
                .strip_prefix("proxmox-kernel-")
                .or_else(|| c.package.strip_prefix("pve-kernel-"))?;
            let release = rest.strip_suffix("-signed").unwrap_or(rest);
            release.ends_with("-pve").then(|| release.to_string())
        })
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
}

/// `6.8.12-11-pve` → `[6, 8, 12, 11]`, for ordering releases.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(['.', '-'])
        .map_while(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use proxflow_schemas::patch::{PackageChange, TargetKind};

    use super::*;

    #[test]
    fn the_installed_kernel_is_read_from_the_kernel_image_packages() {
        let change = |p: &str| PackageChange {
            package: p.into(),
            from: None,
            to: Some("1".into()),
            security: false,
            origin: String::new(),
        };
        let plan = |changes: Vec<PackageChange>| TargetPlan {
            target: "host/pve1".into(),
            kind: TargetKind::Host,
            name: "pve1".into(),
            vmid: None,
            kernel: None,
            address: None,
            changes,
            skipped: Vec::new(),
            reboot: true,
            majors: Vec::new(),
            changelogs: BTreeMap::new(),
        };
        let p = plan(vec![
            change("proxmox-kernel-6.8"),
            change("proxmox-kernel-6.8.12-9-pve-signed"),
            change("proxmox-kernel-6.8.12-11-pve-signed"),
            change("openssl"),
        ]);
        assert_eq!(installed_kernel(&p).as_deref(), Some("6.8.12-11-pve"));
        assert_eq!(
            installed_kernel(&plan(vec![change("pve-kernel-5.15.158-2-pve")])).as_deref(),
            Some("5.15.158-2-pve")
        );
        assert_eq!(
            installed_kernel(&plan(vec![change("proxmox-kernel-6.8")])),
            None
        );
    }
}
