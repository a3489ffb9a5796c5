//! k3s clusters (`[capacity.clusters.<name>]`) and their scale-out settings: the capacity service
//! measures a cluster's nodes (the VMs carrying its tag), the orchestrator scales it out.

use std::collections::BTreeMap;
use std::time::Duration;

use proxflow_runtime::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::profile::Profiles;

/// The cluster metrics a scale-out can be triggered by.
pub const TRIGGERS: &[&str] = &["cpu_avg", "cpu_max", "memory_avg", "memory_max"];

/// One k3s cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Proxmox tag its node VMs carry (the `k8s-node` profile sets it).
    pub tag: String,
    /// `[capacity.clusters.<name>.scale_out]`.
    pub scale_out: ScaleOutConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            tag: "k8s-node".into(),
            scale_out: ScaleOutConfig::default(),
        }
    }
}

/// What the orchestrator does when one of the cluster's trigger metrics is exceeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleOutConfig {
    /// `false`: exceeded events are only published, nothing scales.
    pub enabled: bool,
    /// Record what would be done and do nothing.
    pub dry_run: bool,
    /// Cluster metrics whose `capacity.exceeded` starts a scale-out.
    pub triggers: Vec<String>,
    /// Provision profile of a new node (`[provision.profiles.<name>]`).
    pub profile: String,
    /// New nodes are named `<name_prefix><n>`, n one above the highest existing.
    pub name_prefix: String,
    /// No scale-out when the cluster has this many nodes.
    pub max_nodes: u32,
    /// No new scale-out within this time of the last one's start.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Veto when the host's memory commitment with the new node would exceed this (1.5 = 1.5:1).
    pub memory_commitment_budget: f64,
    /// Storage the new node's disk lands on.
    pub storage: String,
    /// Veto when that storage would be fuller than this, percent.
    pub storage_limit_percent: f64,
    /// OpenSSH public keys for the new node's cloud-init user (the join playbook logs in with them).
    pub ssh_keys: Vec<String>,
}

impl Default for ScaleOutConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dry_run: false,
            triggers: vec!["cpu_avg".into(), "memory_avg".into()],
            profile: "k8s-node".into(),
            name_prefix: "k3s-".into(),
            max_nodes: 10,
            cooldown: Duration::from_secs(10 * 60),
            memory_commitment_budget: 1.5,
            storage: "local-zfs".into(),
            storage_limit_percent: 80.0,
            ssh_keys: Vec::new(),
        }
    }
}

/// `[capacity.clusters]`: k3s clusters by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Clusters(pub BTreeMap<String, ClusterConfig>);

impl Default for Clusters {
    fn default() -> Self {
        Self(BTreeMap::from([(
            "k3s".to_string(),
            ClusterConfig::default(),
        )]))
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
}

impl Clusters {
    /// A cluster by name.
    pub fn get(&self, name: &str) -> Option<&ClusterConfig> {
        self.0.get(name)
    }

    /// A cluster by name, to change it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut ClusterConfig> {
        self.0.get_mut(name)
    }

    /// The cluster names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The clusters and their names.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ClusterConfig)> {
        self.0.iter().map(|(name, c)| (name.as_str(), c))
    }

    /// Checks every cluster; errors name `<section>.<cluster>.<key>`.
    pub fn validate_at(&self, section: &str) -> Result<(), ConfigError> {
        for (name, cluster) in &self.0 {
            let at = format!("{section}.{name}");
            if !is_name(name) {
                return Err(ConfigError::value(
                    at,
                    "cluster names are lower-case letters, digits and '-'",
                ));
            }
            if cluster.tag.is_empty() {
                return Err(ConfigError::value(format!("{at}.tag"), "must not be empty"));
            }
            let s = &cluster.scale_out;
            for t in &s.triggers {
                if !TRIGGERS.contains(&t.as_str()) {
                    return Err(ConfigError::value(
                        format!("{at}.scale_out.triggers"),
                        format!(
                            "{t:?} is not a cluster metric (cpu_avg, cpu_max, memory_avg, memory_max)"
                        ),
                    ));
                }
            }
            if s.name_prefix.is_empty() || !is_name(&s.name_prefix) {
                return Err(ConfigError::value(
                    format!("{at}.scale_out.name_prefix"),
                    "must be a DNS label prefix (lower-case letters, digits, '-')",
                ));
            }
            if !(s.memory_commitment_budget.is_finite() && s.memory_commitment_budget > 0.0) {
                return Err(ConfigError::value(
                    format!("{at}.scale_out.memory_commitment_budget"),
                    "must be a positive ratio (1.5 = 1.5:1)",
                ));
            }
            if !(0.0..=100.0).contains(&s.storage_limit_percent) {
                return Err(ConfigError::value(
                    format!("{at}.scale_out.storage_limit_percent"),
                    "must be a percentage",
                ));
            }
        }
        Ok(())
    }

    /// Every cluster that scales out names a profile of `profiles` (`[provision.profiles]`); errors
    /// name `<section>.<cluster>.scale_out.profile`.
    pub fn check_profiles(&self, section: &str, profiles: &Profiles) -> Result<(), ConfigError> {
        for (name, cluster) in &self.0 {
            let profile = &cluster.scale_out.profile;
            if cluster.scale_out.enabled && profiles.get(profile).is_none() {
                return Err(ConfigError::value(
                    format!("{section}.{name}.scale_out.profile"),
                    format!(
                        "no profile '{profile}' in [provision.profiles] (known: {})",
                        profiles.names().join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(clusters: &Clusters) -> String {
        clusters
            .validate_at("capacity.clusters")
            .map(|()| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn the_default_cluster_validates_and_bad_values_name_their_key() {
        let mut clusters = Clusters::default();
        assert_eq!(error(&clusters), "");
        if let Some(k3s) = clusters.get_mut("k3s") {
            k3s.scale_out.triggers = vec!["load".into()];
        }
        let e = error(&clusters);
        assert!(
            e.contains("capacity.clusters.k3s.scale_out.triggers"),
            "{e}"
        );
        let clusters = Clusters(BTreeMap::from([(
            "K3s".to_string(),
            ClusterConfig::default(),
        )]));
        let e = error(&clusters);
        assert!(e.contains("capacity.clusters.K3s"), "{e}");
    }

    #[test]
    fn a_scaling_cluster_needs_a_configured_profile() {
        let mut clusters = Clusters::default();
        let profiles = Profiles::default();
        assert!(
            clusters
                .check_profiles("capacity.clusters", &profiles)
                .is_ok()
        );
        if let Some(k3s) = clusters.get_mut("k3s") {
            k3s.scale_out.profile = "big".into();
        }
        let e = clusters
            .check_profiles("capacity.clusters", &profiles)
            .map(|()| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(e.contains("capacity.clusters.k3s.scale_out.profile"), "{e}");
        assert!(e.contains("no profile 'big'"), "{e}");
        if let Some(k3s) = clusters.get_mut("k3s") {
            k3s.scale_out.enabled = false;
        }
        assert!(
            clusters
                .check_profiles("capacity.clusters", &profiles)
                .is_ok()
        );
    }
}
