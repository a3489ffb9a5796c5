//! The composed configuration: one TOML file, one section per concern or service.

use std::path::{Path, PathBuf};

use proxflow_capacity::CapacityConfig;
use proxflow_gateway::GatewayConfig;
use proxflow_orchestrator::OrchestratorConfig;
use proxflow_orchestrator::remediation::Rules;
use proxflow_platform::RemediationConfig;
use proxflow_provisioner::ProvisionConfig;
use proxflow_pve::PveConfig;
use proxflow_pve_sim::SimConfig;
use proxflow_replicator::ReplicationConfig;
use proxflow_runtime::config::{
    self, ConfigError, NatsConfig, OpsConfig, TelemetryConfig, Validate,
};
use proxflow_snapshotter::SnapshotConfig;
use serde::{Deserialize, Serialize};

/// Everything `proxflow` reads. Every key has a default that runs the seed's single-host platform.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[nats]`: how to reach the bus.
    pub nats: NatsConfig,
    /// `[telemetry]`: logs and traces.
    pub telemetry: TelemetryConfig,
    /// `[ops]`: health and metrics endpoint, shutdown grace.
    pub ops: OpsConfig,
    /// `[dev]`: `proxflow dev` only.
    pub dev: DevConfig,
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[pve]`: the Proxmox VE API every Proxmox-facing service uses. Validated when a command needs it
    /// (the token secret has no default); `proxflow dev` points it at the simulator.
    pub pve: PveConfig,
    /// `[sim]`: the Proxmox simulator of `proxflow sim` and `proxflow dev`.
    pub sim: SimConfig,
    /// `[provision]`: VM profiles (the gateway validates requests against them, the orchestrator
    /// enforces their caps, the provisioner builds from them), the join command, metrics onboarding.
    pub provision: ProvisionConfig,
    /// `[orchestrator]`: its request consumers.
    pub orchestrator: OrchestratorConfig,
    /// `[capacity]`: polling, sustained-threshold rules, k3s clusters and their scale-out guards
    /// (the capacity service measures, the orchestrator scales).
    pub capacity: CapacityConfig,
    /// `[remediation]`: the alert rules file and the guardrails across rules (the orchestrator
    /// decides, the remediator acts).
    pub remediation: RemediationConfig,
    /// `[snapshot]`: snapshot policies of VMs and datasets, retention, pre-change TTLs, checks.
    pub snapshot: SnapshotConfig,
    /// `[replication]`: ZFS replication jobs to the offsite target.
    pub replication: ReplicationConfig,
    /// `[patch]`: weekly patching of the k3s VMs and the host.
    pub patch: proxflow_patcher::PatchConfig,
    /// `[export]`: the weekly host-config export.
    pub export: proxflow_lifecycle::ExportConfig,
    /// `[drill]`: the quarterly restore drill of the replication jobs' offsite copies.
    pub drill: proxflow_lifecycle::DrillConfig,
    /// `[health]`: the daily disk and pool check, the quarterly audit, the monthly scrub.
    pub health: proxflow_lifecycle::HealthConfig,
}

impl Settings {
    /// The replication jobs the drill checks: `drill.jobs`, or every job when it is empty.
    pub fn drill_targets(&self) -> Vec<proxflow_lifecycle::DrillTarget> {
        self.replication
            .jobs
            .iter()
            .filter(|j| self.drill.jobs.is_empty() || self.drill.jobs.contains(&j.name))
            .map(|j| proxflow_lifecycle::DrillTarget {
                job: j.name.clone(),
                source: j.source.clone(),
                target: j.target.clone(),
                source_zfs: proxflow_zfs::Zfs::new(
                    j.source_command.clone(),
                    self.drill.zfs_timeout,
                ),
                target_zfs: proxflow_zfs::Zfs::new(
                    j.target_command.clone(),
                    self.drill.zfs_timeout,
                ),
            })
            .collect()
    }
}

/// `[dev]`: `proxflow dev` — its state, the embedded nats-server, the simulator, its zfs dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// Where `proxflow dev` keeps its state (JetStream data, its gateway credentials in
    /// `dev-secrets.toml`, the export's bundles, drill reports, the simulated kubectl's nodes);
    /// relative paths are from the working directory.
    pub state_dir: PathBuf,
    /// Client port of the embedded nats-server; 0 picks a free one.
    pub nats_port: u16,
    /// Run the Proxmox simulator (`[sim]`) and point `[pve]` at it; false uses `[pve]` as configured.
    pub simulator: bool,
    /// With the simulator, the join step runs this instead of `provision.join.command`: simulated VMs
    /// cannot be reached over SSH. Same placeholders and JSON contract.
    pub simulated_join: Vec<String>,
    /// The dataset `proxflow dev` snapshots and replicates when its pool exists (the zfs-fuse pool
    /// `tank` of `just tools zfs`); created when missing. Used only when no
    /// `[[snapshot.policies]]` / `[[replication.jobs]]` are configured.
    pub zfs_source: String,
    /// Where its replication job receives it; its pool (`offsite`) must exist too.
    pub zfs_target: String,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(".proxflow"),
            nats_port: 4222,
            simulator: true,
            simulated_join: [
                "sh",
                "-c",
                "cat > /dev/null; echo 'simulated k3s join of {name} ({ip}); the simulator has no SSH'",
            ]
            .map(String::from)
            .to_vec(),
            zfs_source: "tank/proxflow-dev".into(),
            zfs_target: "offsite/proxflow-dev".into(),
        }
    }
}

impl Validate for DevConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, dataset) in [
            ("dev.zfs_source", &self.zfs_source),
            ("dev.zfs_target", &self.zfs_target),
        ] {
            if !proxflow_zfs::names::is_dataset_name(dataset) || !dataset.contains('/') {
                return Err(ConfigError::value(
                    key,
                    format!("{dataset:?} is not a dataset below a pool (pool/name)"),
                ));
            }
        }
        if self.zfs_source == self.zfs_target {
            return Err(ConfigError::value(
                "dev.zfs_target",
                "is dev.zfs_source itself",
            ));
        }
        Ok(())
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.telemetry.validate()?;
        self.ops.validate()?;
        self.dev.validate()?;
        self.sim.validate()?;
        self.provision.validate()?;
        self.capacity.validate()?;
        self.remediation.validate()?;
        self.snapshot.validate()?;
        self.replication.validate()?;
        self.patch.validate()?;
        self.export.validate()?;
        self.drill.validate()?;
        self.health.validate()?;
        for (i, job) in self.drill.jobs.iter().enumerate() {
            if !self.replication.jobs.iter().any(|j| &j.name == job) {
                return Err(ConfigError::value(
                    format!("drill.jobs[{i}]"),
                    format!("{job:?} is not a [[replication.jobs]] name"),
                ));
            }
        }
        self.capacity
            .clusters
            .check_profiles("capacity.clusters", &self.provision.profiles)?;
        self.orchestrator
            .consumer
            .validate_at("orchestrator.consumer")?;
        self.gateway.validate()
    }
}

impl Settings {
    /// The remediation rules: the file's, validated (an error names the rule and the field), or
    /// none when no file is configured.
    pub fn remediation_rules(&self) -> Result<Rules, ConfigError> {
        match &self.remediation.rules_file {
            Some(path) => Rules::load(path)
                .map_err(|e| ConfigError::value("remediation.rules_file", e.to_string())),
            None => Ok(Rules::default()),
        }
    }

    /// Loads and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(file)
    }
}
