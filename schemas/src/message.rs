//! What makes a type a wire message: a versioned schema id, a subject and a dedupe key.

use std::fmt;

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

/// The name and version of a wire shape, sent as `<name>/v<version>` in the `Proxflow-Schema` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaId {
    /// Stable dotted name, e.g. `pf.evt.deadletter`.
    pub name: &'static str,
    /// Incremented on any change an older reader would misinterpret.
    pub version: u32,
}

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/v{}", self.name, self.version)
    }
}

/// Why a received `Proxflow-Schema` header does not fit the type a consumer expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaMismatch {
    /// The header is not of the form `<name>/v<N>`.
    Malformed(String),
    /// The message is of another type altogether.
    OtherType { expected: SchemaId, found: String },
    /// A producer newer than this consumer sent a version it cannot read.
    TooNew { expected: SchemaId, found: u32 },
}

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(h) => write!(f, "schema header {h:?} is not of the form <name>/v<N>"),
            Self::OtherType { expected, found } => {
                write!(f, "expected a {expected} message, got {found}")
            }
            Self::TooNew { expected, found } => write!(
                f,
                "message is {}/v{found}, newer than this consumer understands ({expected})",
                expected.name
            ),
        }
    }
}

impl std::error::Error for SchemaMismatch {}

impl SchemaId {
    /// Checks a received header against this (the reader's) schema id: same name, version not newer.
    pub fn accepts(&self, header: &str) -> Result<(), SchemaMismatch> {
        let (name, version) = header
            .rsplit_once("/v")
            .and_then(|(n, v)| v.parse::<u32>().ok().map(|v| (n, v)))
            .ok_or_else(|| SchemaMismatch::Malformed(header.to_owned()))?;
        if name != self.name {
            return Err(SchemaMismatch::OtherType {
                expected: *self,
                found: header.to_owned(),
            });
        }
        if version > self.version {
            return Err(SchemaMismatch::TooNew {
                expected: *self,
                found: version,
            });
        }
        Ok(())
    }

    /// File name of this schema's JSON Schema document under `schemas/json/`.
    pub fn file_name(&self) -> String {
        format!("{}.v{}.schema.json", self.name, self.version)
    }
}

/// A type with a stable wire shape (bus messages and stored records alike).
pub trait Versioned: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// This type's schema id.
    const SCHEMA: SchemaId;
}

/// A type published on the bus.
pub trait Message: Versioned {
    /// The subject pattern of every message of this type, with `*` where the subject has a token that
    /// varies (`pf.evt.vm.*`): what a consumer filters on and a permission allows, known without an
    /// instance. [`Message::subject`] always matches it.
    const SUBJECT: &'static str;

    /// The subject this message is published on.
    fn subject(&self) -> String;

    /// The domain key its `Nats-Msg-Id` is derived from: the same logical message must always give the
    /// same id (request id, alert fingerprint + startsAt + status, `<workflow>/<step>`), so a retried
    /// publish is dropped by the stream's dedupe window instead of being handled twice.
    fn dedupe_id(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: SchemaId = SchemaId {
        name: "pf.evt.example",
        version: 2,
    };

    #[test]
    fn accepts_same_and_older_versions() {
        assert_eq!(ID.accepts("pf.evt.example/v2"), Ok(()));
        assert_eq!(ID.accepts("pf.evt.example/v1"), Ok(()));
    }

    #[test]
    fn rejects_newer_other_and_malformed() {
        assert_eq!(
            ID.accepts("pf.evt.example/v3"),
            Err(SchemaMismatch::TooNew {
                expected: ID,
                found: 3
            })
        );
        assert!(matches!(
            ID.accepts("pf.evt.other/v1"),
            Err(SchemaMismatch::OtherType { .. })
        ));
        assert!(matches!(
            ID.accepts("pf.evt.example"),
            Err(SchemaMismatch::Malformed(_))
        ));
        assert!(matches!(
            ID.accepts("pf.evt.example/vX"),
            Err(SchemaMismatch::Malformed(_))
        ));
    }

    #[test]
    fn display_round_trips_through_accepts() {
        assert_eq!(ID.to_string(), "pf.evt.example/v2");
        assert_eq!(ID.accepts(&ID.to_string()), Ok(()));
    }
}
