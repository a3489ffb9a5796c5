//! Scan → plan: the k3s VMs (by tag) through the guest, the host through the Proxmox API
//! (`apt/update` refreshed and listed, the running kernel from the node status, changelogs of major
//! changes), each target classified, the whole content-addressed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxflow_runtime::kv;
use proxflow_runtime::workflow::StepError;
use proxflow_schemas::patch::{PackageChange, PatchPlan, TargetKind, TargetPlan};
use serde::{Deserialize, Serialize};

use crate::classify;
use crate::config::HostReboot;
use crate::guest::Vm;
use crate::ops::{Ops, pve_err};

/// VMs scanned at once.
const SCAN_CONCURRENCY: usize = 16;

/// A VM to patch, as found on Proxmox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Found {
    pub(crate) vm: Vm,
    pub(crate) kind: TargetKind,
    /// `startup: order=N` (boot order), else `u32::MAX`.
    pub(crate) order: u32,
    /// `onboot: 1`: the host starts it itself when it boots.
    pub(crate) onboot: bool,
}

/// The packages held for a target after a rejection: name → the version that was rejected.
pub(crate) type Holds = BTreeMap<String, String>;

/// The `pf_patch` key of a target's holds.
pub(crate) fn holds_key(target: &str) -> String {
    format!("held.{}", proxflow_schemas::names::key::key_part(target))
}

impl Ops {
    /// The VMs carrying `patch.vm_tag` (only the running ones with `running_only`: a stopped VM
    /// cannot be scanned or upgraded, and is patched when it runs again), agents first, then
    /// servers, by name.
    pub(crate) async fn k3s_vms(&self, running_only: bool) -> Result<Vec<Found>, StepError> {
        let listed = self.pve.list_vms().await.map_err(pve_err("listing VMs"))?;
        let mut found = Vec::new();
        for summary in listed.into_iter().filter(|v| !v.template) {
            if running_only && summary.status != "running" {
                tracing::info!(vmid = summary.vmid, status = %summary.status, "not running: not scanned");
                continue;
            }
            let config = self
                .pve
                .vm_config(summary.vmid)
                .await
                .map_err(pve_err(format!("reading VM {}'s config", summary.vmid)))?;
            let tags = config.tags();
            if !tags.contains(&self.config.vm_tag.as_str()) {
                continue;
            }
            let kind = if tags.contains(&self.config.server_tag.as_str()) {
                TargetKind::Server
            } else {
                TargetKind::Agent
            };
            let ip = config
                .get("ipconfig0")
                .and_then(|c| c.split(',').find_map(|p| p.strip_prefix("ip=")))
                .and_then(|ip| ip.split('/').next())
                .filter(|ip| *ip != "dhcp")
                .unwrap_or_default()
                .to_string();
            let order = config
                .get("startup")
                .and_then(|s| s.split(',').find_map(|p| p.strip_prefix("order=")))
                .and_then(|o| o.parse().ok())
                .unwrap_or(u32::MAX);
            let onboot = config.get("onboot") == Some("1");
            found.push(Found {
                vm: Vm {
                    vmid: summary.vmid,
                    name: summary
                        .name
                        .unwrap_or_else(|| format!("vm-{}", summary.vmid)),
                    ip,
                },
                kind,
                order,
                onboot,
            });
        }
        found.sort_by(|a, b| {
            let rank = |k: TargetKind| u8::from(k == TargetKind::Server);
            (rank(a.kind), &a.vm.name).cmp(&(rank(b.kind), &b.vm.name))
        });
        Ok(found)
    }

    /// The holds recorded for `target`.
    pub(crate) async fn holds(&self, target: &str) -> Result<Holds, StepError> {
        let read = kv::read::<Holds>(&self.kv, &holds_key(target))
            .await
            .map_err(|e| StepError::transient(e.to_string()).with_source(e))?;
        Ok(read.value.unwrap_or_default())
    }

    /// Scans every target and classifies the plan. VMs are scanned [`SCAN_CONCURRENCY`] at a
    /// time (an `apt-get update` takes seconds; 200 of them one after another would take the
    /// window), the result in the patch order.
    pub(crate) async fn scan(&self, now: DateTime<Utc>) -> Result<PatchPlan, StepError> {
        let vms = self.k3s_vms(true).await?;
        let scanned: Vec<Result<TargetPlan, StepError>> = futures::stream::iter(vms)
            .map(|found| self.scan_vm(found))
            .buffered(SCAN_CONCURRENCY)
            .collect()
            .await;
        let mut targets = Vec::new();
        for plan in scanned {
            let plan = plan?;
            self.gauges(&plan);
            if !plan.changes.is_empty() {
                targets.push(plan);
            }
        }
        if self.config.host.enabled {
            let plan = self.scan_host().await?;
            self.gauges(&plan);
            if !plan.changes.is_empty() {
                targets.push(plan);
            }
        }
        Ok(PatchPlan::new(targets, now))
    }

    async fn scan_vm(&self, found: Found) -> Result<TargetPlan, StepError> {
        let target = format!("vm/{}", found.vm.vmid);
        let (changes, kernel) = self.guest.scan(&found.vm).await?;
        let holds = self.holds(&target).await?;
        let (apply, skipped): (Vec<PackageChange>, Vec<PackageChange>) =
            changes.into_iter().partition(|c| {
                let rejected = holds
                    .get(&c.package)
                    .is_some_and(|v| Some(v) == c.to.as_ref());
                !rejected && (c.security || !self.config.security_only)
            });
        let mut plan = TargetPlan {
            target,
            kind: found.kind,
            name: found.vm.name.clone(),
            vmid: Some(found.vm.vmid),
            kernel: Some(kernel),
            address: Some(found.vm.ip.clone()).filter(|ip| !ip.is_empty()),
            changes: apply,
            skipped,
            reboot: false,
            majors: Vec::new(),
            changelogs: BTreeMap::new(),
        };
        classify::classify(&self.config.major, &mut plan, false);
        Ok(plan)
    }

    async fn scan_host(&self) -> Result<TargetPlan, StepError> {
        let node = self.pve.node().to_string();
        let upid = self
            .pve
            .apt_refresh()
            .await
            .map_err(pve_err("refreshing the host's package lists"))?;
        self.pve
            .wait_task(&upid, None)
            .await
            .map_err(pve_err("refreshing the host's package lists"))?;
        let updates = self
            .pve
            .apt_updates()
            .await
            .map_err(pve_err("listing the host's updates"))?;
        let status = self
            .pve
            .node_status()
            .await
            .map_err(pve_err("reading the host's status"))?;
        let mut changes: Vec<PackageChange> = updates
            .into_iter()
            .map(|u| PackageChange {
                package: u.package,
                from: u.old_version,
                to: Some(u.version),
                security: u.origin.to_ascii_lowercase().contains("security"),
                origin: u.origin,
            })
            .collect();
        changes.sort();
        let mut plan = TargetPlan {
            target: format!("host/{node}"),
            kind: TargetKind::Host,
            name: node,
            vmid: None,
            kernel: status.current_kernel.map(|k| k.release),
            address: None,
            changes,
            skipped: Vec::new(),
            reboot: false,
            majors: Vec::new(),
            changelogs: BTreeMap::new(),
        };
        let approve_reboot = self.config.host_reboot == HostReboot::Approve;
        classify::classify(&self.config.major, &mut plan, approve_reboot);
        for major in &plan.majors {
            let Some(package) = &major.package else {
                continue;
            };
            let version = plan
                .changes
                .iter()
                .find(|c| &c.package == package)
                .and_then(|c| c.to.clone());
            // A changelog is for the reviewer; one that cannot be fetched does not stop the plan.
            match self.pve.apt_changelog(package, version.as_deref()).await {
                Ok(text) => {
                    let excerpt: Vec<&str> = text.lines().take(30).collect();
                    plan.changelogs.insert(package.clone(), excerpt.join("\n"));
                }
                Err(e) => {
                    tracing::warn!(%package, error = %e, "no changelog for a major host change")
                }
            }
        }
        Ok(plan)
    }

    fn gauges(&self, plan: &TargetPlan) {
        let security = plan.changes.iter().filter(|c| c.security).count();
        let other = plan.changes.len() + plan.skipped.len() - security;
        let m = &self.metrics;
        m.pending
            .set([plan.target.as_str(), "security"], security as f64);
        m.pending.set([plan.target.as_str(), "other"], other as f64);
        m.reboot_required
            .set([plan.target.as_str()], f64::from(u8::from(plan.reboot)));
    }
}
