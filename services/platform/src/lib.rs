//! # proxflow-platform
//!
//! What the platform looks like: provision profiles and k3s clusters with their scale-out settings;
//! config types shared by several services, validated once at load.
//!
//! - [`profile`] — `[provision.profiles.<name>]`: what a requested VM looks like and how far a request
//!   may change it (the gateway checks requests against them, the orchestrator enforces their caps,
//!   the provisioner builds from them).
//! - [`cluster`] — `[capacity.clusters.<name>]`: the k3s clusters and their scale-out settings (the
//!   capacity service measures them, the orchestrator scales them).
//! - [`claims`] — the VM names and static addresses in use (`pf_claims`): claimed by the gateway and
//!   the provisioner, settled or released when a provision ends, kept true to Proxmox by the
//!   provisioner's sweep.
//! - [`remediation`] — `[remediation]`: the rules file's path and the guardrails across all rules
//!   (the orchestrator decides with them, the remediator acts under them).
//!
//! The sections' owners validate them when the configuration loads ([`Profiles::validate_at`],
//! [`Clusters::validate_at`], and [`Clusters::check_profiles`] across the two); the services take the
//! loaded values as they are.

pub mod claims;
pub mod cluster;
pub mod profile;
pub mod remediation;

pub use cluster::{ClusterConfig, Clusters, ScaleOutConfig};
pub use profile::{OverrideLimits, Profile, Profiles, Subnet, VmShape};
pub use remediation::RemediationConfig;
