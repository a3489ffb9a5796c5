//! Gateway settings (`[gateway]`).

use std::net::SocketAddr;

use proxflow_runtime::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Public HTTP listener (webhooks, APIs, plus the ops endpoints). Port 0 picks a free one.
    pub listen: SocketAddr,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
