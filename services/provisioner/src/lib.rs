//! # proxflow-provisioner
//!
//! Turns a provisioning request into a k3s node VM: the profiles that say what a VM looks like
//! ([`profile`]), and the steps that build it against Proxmox, join it to k3s and onboard its metrics.

pub mod profile;

pub use profile::{OverrideLimits, Profile, Profiles, VmShape};
