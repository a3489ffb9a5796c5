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

impl IpConfig {
    /// The fixed address of a static configuration (`10.20.0.44` of `10.20.0.44/24`).
    pub fn static_address(&self) -> Option<std::net::Ipv4Addr> {
        match self {
            Self::Dhcp => None,
            Self::Static { cidr, .. } => cidr.split('/').next()?.parse().ok(),
        }
    }
}

impl Versioned for ProvisionRequested {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.ingest.provision_requested",
        version: 1,
    };
}

impl Message for ProvisionRequested {
    const SUBJECT: &'static str = "pf.ingest.webhook.provision";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    fn dedupe_id(&self) -> String {
        format!("provision/{}", self.workflow_id)
    }
}

/// How a provision ended (`pf.evt.vm.provisioned` / `pf.evt.vm.provision_failed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionOutcome {
    /// The workflow.
    pub workflow_id: String,
    /// VM name.
    pub name: String,
    /// Profile.
    pub profile: String,
    /// VMID, once one was reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// Address, when the VM came up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Why it failed (absent on success). Compensation has run when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

impl Versioned for ProvisionOutcome {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.vm.provision_outcome",
        version: 1,
    };
}

impl Message for ProvisionOutcome {
    /// The last token is success or failure.
    const SUBJECT: &'static str = "pf.evt.vm.*";

    fn subject(&self) -> String {
        let event = if self.error.is_none() {
            "provisioned"
        } else {
            "provision_failed"
        };
        subject::evt("vm", event)
    }

    fn dedupe_id(&self) -> String {
        format!("{}/outcome", self.workflow_id)
    }
}

impl ProvisionRequested {
    /// The `pending` workflow record this request starts, created by whichever service sees the request
    /// first (normally the gateway; the orchestrator and provisioner when its record is missing).
    /// `reference` names the caller for the audit trail (webhook key, token name).
    pub fn pending_workflow(
        &self,
        reference: &str,
        trace_id: Option<String>,
    ) -> crate::workflow::WorkflowRecord {
        use crate::workflow::{Origin, WorkflowRecord, WorkflowState};
        WorkflowRecord {
            id: self.workflow_id.clone(),
            kind: "provision".into(),
            state: WorkflowState::Pending,
            origin: Origin {
                source: "webhook".into(),
                reference: reference.to_owned(),
                reason: format!("provision {} ({})", self.name, self.profile),
            },
            steps: Vec::new(),
            data: serde_json::to_value(self).unwrap_or_default(),
            error: None,
            trace_id,
            traceparent: None,
            wait: None,
            parent: None,
            created_at: self.requested_at,
            updated_at: self.requested_at,
        }
    }
}
