//! `[provision]`: profiles, the join command, metrics onboarding, and how long to wait for a VM.

use std::path::PathBuf;
use std::time::Duration;

use proxflow_platform::Profiles;
use proxflow_runtime::config::{ConfigError, ConsumerConfig, Validate};
use serde::{Deserialize, Serialize};

use crate::join::JoinConfig;

/// `[provision]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    /// VM profiles by name (`[provision.profiles.k8s-node]`).
    pub profiles: Profiles,
    /// `[provision.join]`: the k3s join command.
    pub join: JoinConfig,
    /// Prometheus `file_sd` file the node-exporter targets go into.
    pub file_sd: PathBuf,
    /// node-exporter port on the new VMs.
    pub node_exporter_port: u16,
    /// How long a new VM may take to report an address through the guest agent.
    #[serde(with = "humantime_serde")]
    pub ip_timeout: Duration,
    /// How often the VM names and static addresses in use (`pf_claims`) are compared with Proxmox:
    /// VMs made outside proxflow are claimed, claims of VMs destroyed since are dropped.
    #[serde(with = "humantime_serde")]
    pub claims_sweep: Duration,
    /// Delivery settings of the provisioner's command consumer. A provision runs minutes, so the
    /// defaults allow fewer in flight than a message-sized consumer.
    pub consumer: ConsumerConfig,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            profiles: Profiles::default(),
            join: JoinConfig::default(),
            file_sd: PathBuf::from(".proxflow/file_sd/k3s-nodes.json"),
            node_exporter_port: 9100,
            ip_timeout: Duration::from_secs(300),
            claims_sweep: Duration::from_secs(60),
            consumer: ConsumerConfig {
                max_in_flight: 25,
                ..ConsumerConfig::default()
            },
        }
    }
}

impl Validate for ProvisionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.profiles.validate_at("provision.profiles")?;
        if self.join.command.is_empty() {
            return Err(ConfigError::value(
                "provision.join.command",
                "must name a program (e.g. [\"ansible-playbook\", ...])",
            ));
        }
        if self.join.timeout.is_zero() || self.ip_timeout.is_zero() {
            return Err(ConfigError::value(
                "provision.ip_timeout",
                "timeouts must be greater than zero",
            ));
        }
        if self.claims_sweep < Duration::from_secs(1) {
            return Err(ConfigError::value(
                "provision.claims_sweep",
                "must be at least 1s",
            ));
        }
        if self.file_sd.as_os_str().is_empty() {
            return Err(ConfigError::value(
                "provision.file_sd",
                "must be a file path",
            ));
        }
        self.consumer.validate_at("provision.consumer")
    }
}
