//! What a service gets handed: the bus, readiness, metrics and its shutdown grace.

use std::time::Duration;

use crate::bus::Bus;
use crate::ops::{Health, Metrics, OpsState};

/// Shared handles of one process, passed to every service's `run`.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    /// The connected bus.
    pub bus: Bus,
    /// Readiness checks.
    pub health: Health,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// How long in-flight work may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl ServiceContext {
    /// What the ops endpoints read.
    pub fn ops_state(&self) -> OpsState {
        OpsState {
            health: self.health.clone(),
            metrics: self.metrics.clone(),
        }
    }
}
