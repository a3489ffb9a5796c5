//! # proxflow-provisioner
//!
//! Turns a provisioning request into a k3s node VM: the profiles that say what a VM looks like
//! ([`proxflow_platform::profile`], shared with the gateway and the orchestrator), and the steps that
//! build it against Proxmox, join it to k3s ([`join`]) and onboard its metrics ([`file_sd`]).

pub mod config;
pub mod file_sd;
pub mod join;
pub mod service;
pub mod steps;
pub mod sweep;
pub mod vmid;
pub mod workflow;

pub use config::ProvisionConfig;
pub use service::{ProvisionerSettings, run};
