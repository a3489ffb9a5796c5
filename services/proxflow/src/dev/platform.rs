//! What `proxflow dev` runs on the defaults besides the services' own defaults, so that every
//! capability shows (production leaves these to the operator's configuration):
//!
//! - a snapshot policy over the VMs tagged `patch.vm_tag` (the simulator's k3s VMs), and, when the
//!   zfs pools of `dev.zfs_source` / `dev.zfs_target` exist (`just tools zfs`), a policy over
//!   `dev.zfs_source` (created when missing) and a replication job to `dev.zfs_target` — added only
//!   when no `[[snapshot.policies]]` / `[[replication.jobs]]` are configured;
//! - the config export into `<state_dir>/export` when no export is configured, drill reports in
//!   `<state_dir>/drills` instead of the production default;
//! - with the simulator, what stands in for the parts of the platform it does not simulate: the
//!   k3s join, kubectl and the host's `ssh … full-upgrade` ([`crate::sim_hooks`]), the host's root
//!   dataset and the pools (the dev ones) for the patcher, the export and the health check; the
//!   patch window opened all day with runs started on request, when the window is the default.

use std::path::Path;

use anyhow::Context;
use proxflow_pve_sim::RunningSim;
use proxflow_snapshotter::{PolicyConfig, Targets};
use proxflow_zfs::names::pool_of;

use crate::compose::review_zfs;
use crate::settings::Settings;
use crate::sim_hooks;

/// The VM snapshot policy dev adds.
pub const VM_POLICY: &str = "dev-k3s-vms";
/// The dataset snapshot policy dev adds.
pub const DATASET_POLICY: &str = "dev-dataset";
/// The replication job dev adds.
pub const REPLICATION_JOB: &str = "dev-offsite";
/// The simulated kubectl's node state, in the state directory, new on every start (as the
/// simulator's platform is).
const KUBE_STATE: &str = "sim-kubectl.json";

/// Whether dev's zfs dataset is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZfsStatus {
    /// Both pools exist and `source` does.
    Ready {
        /// `dev.zfs_source`.
        source: String,
        /// `dev.zfs_target`.
        target: String,
        /// Their pools.
        pools: Vec<String>,
    },
    /// Not usable here, and why.
    Unavailable(String),
}

impl ZfsStatus {
    /// The pools, when there are.
    pub fn pools(&self) -> &[String] {
        match self {
            Self::Ready { pools, .. } => pools,
            Self::Unavailable(_) => &[],
        }
    }
}

/// Looks for the pools of `dev.zfs_source` and `dev.zfs_target` with the snapshotter's zfs, and
/// creates the source when they are there. Never an error: no ZFS is a status.
pub async fn detect_zfs(settings: &Settings) -> ZfsStatus {
    let zfs = review_zfs(settings);
    let (source, target) = (&settings.dev.zfs_source, &settings.dev.zfs_target);
    let have = match zfs.pools().await {
        Ok(pools) => pools,
        Err(e) => return ZfsStatus::Unavailable(e.to_string()),
    };
    let mut pools: Vec<String> = [pool_of(source), pool_of(target)]
        .map(str::to_owned)
        .to_vec();
    pools.dedup();
    let missing: Vec<&str> = pools
        .iter()
        .map(String::as_str)
        .filter(|p| !have.iter().any(|h| h == p))
        .collect();
    if !missing.is_empty() {
        return ZfsStatus::Unavailable(format!("no pool {}", missing.join(", ")));
    }
    if let Err(e) = zfs.create(source).await {
        return ZfsStatus::Unavailable(format!("creating {source}: {e}"));
    }
    ZfsStatus::Ready {
        source: source.clone(),
        target: target.clone(),
        pools,
    }
}

/// Sets up what dev runs (see the module's description) on `settings`.
pub fn apply(
    settings: &mut Settings,
    zfs: &ZfsStatus,
    sim: Option<&RunningSim>,
) -> anyhow::Result<()> {
    let state = settings.dev.state_dir.clone();
    if settings.snapshot.policies.is_empty() {
        settings.snapshot.policies = dev_policies(&settings.patch.vm_tag, zfs);
    }
    if let (true, ZfsStatus::Ready { source, target, .. }) =
        (settings.replication.jobs.is_empty(), zfs)
    {
        settings
            .replication
            .jobs
            .push(proxflow_replicator::config::JobConfig {
                name: REPLICATION_JOB.to_owned(),
                source: source.clone(),
                target: target.clone(),
                ..proxflow_replicator::config::JobConfig::default()
            });
        // A dataset dev has just made has no snapshot until the snapshotter's first pass, which
        // may come a moment after the replicator first looks: the next try is then a pass later,
        // not a quarter of an hour.
        if settings.replication.retry_after
            == proxflow_replicator::ReplicationConfig::default().retry_after
        {
            settings.replication.retry_after = settings.snapshot.interval;
        }
    }
    if !settings.export.enabled() {
        settings.export.dir = Some(state.join("export"));
    }
    if settings.drill.report_dir == proxflow_lifecycle::DrillConfig::default().report_dir {
        settings.drill.report_dir = state.join("drills");
    }
    if let Some(sim) = sim {
        simulated_platform(settings, zfs, sim, &state)?;
    }
    Ok(())
}

/// The VM policy, and the dataset policy when the dev dataset is there.
fn dev_policies(vm_tag: &str, zfs: &ZfsStatus) -> Vec<PolicyConfig> {
    let mut policies = vec![PolicyConfig {
        name: VM_POLICY.to_owned(),
        targets: Targets {
            tags: vec![vm_tag.to_owned()],
            ..Targets::default()
        },
        ..PolicyConfig::default()
    }];
    if let ZfsStatus::Ready { source, .. } = zfs {
        policies.push(PolicyConfig {
            name: DATASET_POLICY.to_owned(),
            targets: Targets {
                datasets: vec![source.clone()],
                ..Targets::default()
            },
            ..PolicyConfig::default()
        });
    }
    policies
}

/// What stands in for the host the simulator plays.
fn simulated_platform(
    settings: &mut Settings,
    zfs: &ZfsStatus,
    sim: &RunningSim,
    state: &Path,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary for the simulated hooks")?;
    settings.provision.join.command = settings.dev.simulated_join.clone();

    let patch = &mut settings.patch;
    let kube_state = state.join(KUBE_STATE);
    proxflow_pve_sim::kubectl::State {
        auto_join: true,
        ..proxflow_pve_sim::kubectl::State::default()
    }
    .save(&kube_state)
    .context("writing the simulated kubectl's state")?;
    patch.kubectl.command = sim_hooks::kubectl_command(&exe, &kube_state);
    patch.host.upgrade_command = sim_hooks::host_upgrade_command(&exe, sim);
    if let ZfsStatus::Ready { source, .. } = zfs {
        // The host's pre-change snapshot is taken of the dev dataset: the simulated host's root
        // dataset is on no real pool.
        patch.host.dataset = source.clone();
    }
    if !patch
        .approvers
        .iter()
        .any(|a| a == super::secrets::TOKEN_NAME)
    {
        patch.approvers.push(super::secrets::TOKEN_NAME.to_owned());
    }
    if patch.window == proxflow_patcher::window::WindowConfig::default() {
        // A run started by hand goes on at once, and none starts by itself.
        patch.window = proxflow_patcher::window::WindowConfig::always_open();
        patch.enabled = false;
    }

    // The simulated host's `rpool` is not on this machine: the export and the health check read
    // the dev pools instead, and the health check does not run without them.
    let pools = zfs.pools().to_vec();
    if settings.export.pools == proxflow_lifecycle::ExportConfig::default().pools {
        settings.export.pools.clone_from(&pools);
    }
    if settings.health.pools == proxflow_lifecycle::HealthConfig::default().pools {
        if pools.is_empty() {
            settings.health.enabled = false;
        } else {
            settings.health.pools = pools;
        }
    }
    Ok(())
}
