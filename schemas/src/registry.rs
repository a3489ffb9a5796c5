//! Every wire type with its JSON Schema, for `just schemas` and the drift test.

use schemars::schema_for;

use crate::alert::AlertReceived;
use crate::capacity::{
    CapacityExceeded, CapacityRecovered, CapacitySample, HostExhausted, ScaleOutRequested,
};
use crate::capacity_review::{CapacityReview, CapacityReviewed};
use crate::events::DeadLetter;
use crate::health::{HealthDegraded, HealthReport, ScrubReport};
use crate::lifecycle::{DrillCompleted, ExportCompleted};
use crate::message::{SchemaId, Versioned};
use crate::patch::PatchEvent;
use crate::provision::{ProvisionOutcome, ProvisionRequested};
use crate::remediation::{
    HandOffOutcome, RemediationCommand, RemediationDecision, RemediationOutcome, RemediationPage,
};
use crate::replication::{ReplicationDiverged, ReplicationRequested, ReplicationRun};
use crate::snapshot::{
    PreChangeReply, PreChangeRequest, PruneRequested, SnapshotCheck, SnapshotTaken, SnapshotsPruned,
};
use crate::trace::SpanRecord;
use crate::workflow::{WorkflowAdvance, WorkflowRecord};

/// One generated JSON Schema document.
#[derive(Debug, Clone)]
pub struct SchemaDoc {
    /// The schema id it documents.
    pub id: SchemaId,
    /// The JSON Schema itself.
    pub schema: serde_json::Value,
}

impl SchemaDoc {
    fn of<T: Versioned>() -> Self {
        Self {
            id: T::SCHEMA,
            schema: schema_for!(T).to_value(),
        }
    }

    /// The document as written to disk: pretty JSON with a trailing newline.
    pub fn to_file_contents(&self) -> String {
        // A `serde_json::Value` always serialises; the fallback only keeps this total.
        let mut text = serde_json::to_string_pretty(&self.schema).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// All wire types. A type missing here has no checked-in schema, so add every new one.
pub fn all() -> Vec<SchemaDoc> {
    vec![
        SchemaDoc::of::<DeadLetter>(),
        SchemaDoc::of::<ProvisionRequested>(),
        SchemaDoc::of::<ProvisionOutcome>(),
        SchemaDoc::of::<WorkflowRecord>(),
        SchemaDoc::of::<WorkflowAdvance>(),
        SchemaDoc::of::<HandOffOutcome>(),
        SchemaDoc::of::<SpanRecord>(),
        SchemaDoc::of::<PreChangeRequest>(),
        SchemaDoc::of::<PruneRequested>(),
        SchemaDoc::of::<PreChangeReply>(),
        SchemaDoc::of::<SnapshotTaken>(),
        SchemaDoc::of::<SnapshotsPruned>(),
        SchemaDoc::of::<SnapshotCheck>(),
        SchemaDoc::of::<ReplicationRun>(),
        SchemaDoc::of::<ReplicationDiverged>(),
        SchemaDoc::of::<ReplicationRequested>(),
        SchemaDoc::of::<AlertReceived>(),
        SchemaDoc::of::<RemediationDecision>(),
        SchemaDoc::of::<RemediationCommand>(),
        SchemaDoc::of::<RemediationOutcome>(),
        SchemaDoc::of::<RemediationPage>(),
        SchemaDoc::of::<CapacitySample>(),
        SchemaDoc::of::<CapacityExceeded>(),
        SchemaDoc::of::<CapacityRecovered>(),
        SchemaDoc::of::<HostExhausted>(),
        SchemaDoc::of::<ScaleOutRequested>(),
        SchemaDoc::of::<CapacityReview>(),
        SchemaDoc::of::<CapacityReviewed>(),
        SchemaDoc::of::<PatchEvent>(),
        SchemaDoc::of::<ExportCompleted>(),
        SchemaDoc::of::<DrillCompleted>(),
        SchemaDoc::of::<HealthReport>(),
        SchemaDoc::of::<HealthDegraded>(),
        SchemaDoc::of::<ScrubReport>(),
    ]
}
