//! Span records: every finished span of every proxflow service, as published on
//! `pf.trace.<trace_id>` (stream `PF_TRACE`) so that a workflow's trace can be read back from the bus
//! (`proxflow trace`) without an external collector.
//!
//! Times are RFC 3339 in UTC with microsecond precision (`2025-01-02T03:04:05.123456Z`): readable in a
//! raw dump, exact enough to order the spans of one process, and the same form the other records use.
//!
//! A record is not `deny_unknown_fields`: spans outlive the binaries that wrote them (the stream keeps
//! them 7 days), so an older `proxflow trace` must still read what a newer service adds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{SchemaId, Versioned};

/// What part a span plays in a request (the OpenTelemetry span kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// Work inside one process.
    Internal,
    /// Handling an incoming request (the gateway's HTTP requests).
    Server,
    /// An outgoing request (Proxmox API calls).
    Client,
    /// Publishing a message.
    Producer,
    /// Handling a message.
    Consumer,
}

/// Whether a span ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusCode {
    /// Nothing reported an error (OpenTelemetry's "unset" and "ok").
    Ok,
    /// The span, or an ERROR-level event inside it, reported a failure.
    Error,
}

/// A span's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SpanStatus {
    /// `ok` or `error`.
    pub code: StatusCode,
    /// What went wrong, when known: the span's status description, else the error of its last event
    /// that carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Something that happened during a span: a log event inside it (errors included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SpanEvent {
    /// The event's message.
    pub name: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Its fields (`level`, `target`, `error`, ...), values as text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SpanRecord {
    /// Trace id, 32 lowercase hex digits (also the last subject token).
    pub trace_id: String,
    /// Span id, 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; absent for a trace's root. The parent may live in another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Span name (`POST /v1/provision`, `pf.cmd.provisioner.provision process`, `pve POST /nodes/…`).
    pub name: String,
    /// The recording process's OpenTelemetry `service.name`.
    pub service: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Start time (UTC, microseconds).
    pub start: DateTime<Utc>,
    /// End time (UTC, microseconds).
    pub end: DateTime<Utc>,
    /// `end - start` in microseconds.
    pub duration_us: u64,
    /// Outcome.
    pub status: SpanStatus,
    /// Attributes, values as text: `pve.upid`, `pve.vmid`, `http.request.method`, `command.program`,
    /// `outcome`, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Events in the order they happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
}

impl SpanRecord {
    /// Whether the span failed.
    pub fn is_error(&self) -> bool {
        self.status.code == StatusCode::Error
    }
}

impl Versioned for SpanRecord {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.trace.span",
        version: 1,
    };
}

/// Whether `s` is a valid trace id as records carry it: 32 lowercase hex digits, not all zero (the
/// W3C "invalid" id). Only such ids are put into subjects, so no id can widen a subject filter.
pub fn is_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_32_lowercase_hex_and_not_zero() {
        assert!(is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!is_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736"));
        assert!(!is_trace_id("4bf92f3577b34da6a3ce929d0e0e473"));
        assert!(!is_trace_id("00000000000000000000000000000000"));
        assert!(!is_trace_id("4bf92f3577b34da6a3ce929d0e0e47.>"));
        assert!(!is_trace_id("prov-3f2a"));
    }

    #[test]
    fn a_record_from_a_newer_writer_still_reads() {
        let json = r#"{
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
            "name": "run ansible-playbook", "service": "provisioner", "kind": "internal",
            "start": "2025-01-02T03:04:05.000001Z", "end": "2025-01-02T03:04:06.000001Z",
            "duration_us": 1000000, "status": {"code": "error", "message": "exit 2"},
            "added_later": true
        }"#;
        let record: SpanRecord = serde_json::from_str(json).expect("decodes");
        assert!(record.is_error());
        assert_eq!(record.parent_span_id, None);
        assert!(record.attributes.is_empty() && record.events.is_empty());
    }
}
