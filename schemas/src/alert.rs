//! Alerts from Alertmanager as they travel on `pf.ingest.alertmanager.alert`: one message per alert
//! of a webhook delivery, so each is deduplicated, matched and audited on its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};

/// An alert's state in the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Active.
    Firing,
    /// No longer active.
    Resolved,
}

impl AlertStatus {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert of an Alertmanager webhook delivery (payload version 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertReceived {
    /// Alertmanager's fingerprint of the label set.
    pub fingerprint: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Labels (`alertname` always present).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it started firing.
    pub starts_at: DateTime<Utc>,
    /// When it resolved (absent while firing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Link to the expression that fired.
    #[serde(default)]
    pub generator_url: String,
    /// The Alertmanager receiver that sent it.
    pub receiver: String,
    /// The group it was delivered in: the first 16 hex digits of the SHA-256 of the delivery's
    /// `groupKey`. Alerts of one delivery share it; the key itself (the group's label matchers,
    /// often kilobytes) is not copied into every alert. (v1 carried the whole key as `group_key`,
    /// still read.)
    #[serde(default, alias = "group_key")]
    pub group: String,
    /// The sending Alertmanager (at most 2,048 characters).
    #[serde(default)]
    pub external_url: String,
    /// Who delivered it: `token:<name>` or `basic:<user>`.
    pub received_by: String,
    /// When the gateway accepted it.
    pub received_at: DateTime<Utc>,
}

impl AlertReceived {
    /// `alertname`.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

impl Versioned for AlertReceived {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.ingest.alert_received",
        version: 2,
    };
}

impl Message for AlertReceived {
    const SUBJECT: &'static str = "pf.ingest.alertmanager.alert";

    fn subject(&self) -> String {
        Self::SUBJECT.into()
    }

    /// (fingerprint, startsAt, status): Alertmanager re-sends a firing group every
    /// `group_interval` and retries failed posts, and each copy is the same alert.
    fn dedupe_id(&self) -> String {
        format!(
            "alert/{}/{}/{}",
            self.fingerprint,
            self.starts_at.timestamp_millis(),
            self.status.as_str()
        )
    }
}
