//! Events: facts published on `pf.evt.*`. The event stream keeps them long, so they double as the audit
//! log; every event names what it is about and carries enough to be read on its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, SchemaId, Versioned};
use crate::names::subject;

/// Why a message was taken out of circulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The message cannot be handled however often it is retried: undecodable payload, unknown schema
    /// version, or a handler that declared it invalid.
    Poison,
    /// The handler asked for a retry on the last allowed delivery (`max_deliver`).
    RetriesExhausted,
}

/// How the original payload is carried in a [`DeadLetter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// The payload was valid UTF-8 and is carried as is.
    Utf8,
    /// The payload was binary and is carried as standard base64.
    Base64,
}

/// A message a consumer gave up on, with the reason and the original, so nothing is lost: an operator
/// can read why, fix the cause and re-publish the payload to its subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Durable name of the consumer that gave up.
    pub consumer: String,
    /// Stream the original was read from.
    pub stream: String,
    /// Sequence of the original in that stream.
    pub stream_sequence: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// Subject the original was published on.
    pub subject: String,
    /// Why it was dead-lettered.
    pub reason: DeadLetterReason,
    /// The specific error: decode failure, handler message, last retry reason.
    pub detail: String,
    /// The original's headers (trace context, schema, dedupe id included).
    pub headers: BTreeMap<String, Vec<String>>,
    /// The original payload, see `payload_encoding`.
    pub payload: String,
    /// How `payload` is encoded.
    pub payload_encoding: PayloadEncoding,
    /// When the consumer gave up.
    pub dead_lettered_at: DateTime<Utc>,
}

impl Versioned for DeadLetter {
    const SCHEMA: SchemaId = SchemaId {
        name: "pf.evt.deadletter",
        version: 1,
    };
}

impl Message for DeadLetter {
    /// The last token is the consumer that gave up.
    const SUBJECT: &'static str = "pf.evt.deadletter.*";

    fn subject(&self) -> String {
        subject::dead_letter(&self.consumer)
    }

    /// One dead letter per original message, however often the consumer's last step is retried.
    fn dedupe_id(&self) -> String {
        format!("deadletter/{}/{}", self.stream, self.stream_sequence)
    }
}
