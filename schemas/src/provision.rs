//! Provisioning: the request the gateway accepts for a new k3s node VM, as it travels on
//! `pf.ingest.webhook.provision`. The orchestrator turns it into a `provision` workflow.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};
use crate::names::subject;

/// How the VM gets its address (cloud-init `ipconfig0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum IpConfig {
    /// DHCP on the profile's network.
    Dhcp,
    /// A fixed address.
    Static {
        /// Address with prefix length, `10.20.0.44/24`.
        cidr: String,
        /// Default gateway, `10.20.0.1`.
        gateway: String,
    },
}

/// Per-request changes to the profile, within the profile's configured limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmOverrides {
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Balloon minimum, MiB (0 disables ballooning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_mib: Option<u32>,
    /// Root disk size, GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u32>,
}

/// A request for one new VM, validated by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequested {
    /// The workflow this request starts; derived from the idempotency key, so a repeated request
    /// names the same workflow.
    pub workflow_id: String,
    /// The caller's idempotency key (or, when it gave none, the webhook id).
    pub idempotency_key: String,
    /// VM name (DNS label).
    pub name: String,
    /// Profile name (`k8s-node`).
    pub profile: String,
    /// Changes to the profile.
    #[serde(default)]
    pub overrides: VmOverrides,
    /// OpenSSH public keys for the cloud-init user.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Address configuration.
    pub ip: IpConfig,
    /// Proxmox tags added to the profile's.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Who asked: `webhook:<key id>` or `token:<name>`.
    pub requested_by: String,
    /// When the gateway accepted it.
    pub requested_at: DateTime<Utc>,
}

impl Versioned for ProvisionRequested {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.ingest.provision_requested",
        version: 1,
    };
}

impl Message for ProvisionRequested {
    fn subject(&self) -> String {
        subject::ingest("webhook", "provision")
    }

    fn dedupe_id(&self) -> String {
        format!("provision/{}", self.workflow_id)
    }
}
