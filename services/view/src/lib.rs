//! # proxflow-view
//!
//! What an operator reads, computed from the bus: the workflow list and a workflow's detail, the
//! plans waiting for approval, the dead letters (and their one-time replay), and the status overview
//! (the console's first screen, `proxflow status`). A library, not a service: the gateway's console
//! and the `proxflow` CLI render the same models, so a number on the page is the number in the
//! terminal.
//!
//! ## Layout
//! - [`workflows`]: the workflow list from the index, narrowed by kind, state and age
//!   ([`workflows::Filter`]), and one workflow's detail (its record, the signals it was given, its
//!   children).
//! - [`approvals`]: the patch runs waiting for a decision, what their plans hold, and the command
//!   that decides.
//! - [`overview`]: the first screen (console and `proxflow status`): gauges against their limits,
//!   pools, replication lag, snapshot ages, the lifecycle jobs, live work, approvals, remediations.
//! - [`words`]: ages and durations in words, the same on the page and in the terminal.
//! - [`deadletters`]: the dead letters on `PF_EVT` with their sequence (the replay handle), whether
//!   each was replayed, and the replay itself, once per letter.
//!
//! Every model is `Serialize` (the CLI's `--json` and the console's API print them as they are);
//! every failure is a [`ViewError`].

pub mod approvals;
pub mod deadletters;
pub mod overview;
pub mod words;
pub mod workflows;

use chrono::{DateTime, Utc};
use proxflow_runtime::bus::PublishError;
use proxflow_runtime::bus::history::HistoryError;
use proxflow_runtime::kv::{CasError, ListError};
use proxflow_runtime::workflow::EngineError;

/// Why a view could not be computed, or a replay not made.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The workflow engine (records, index, signals) failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The event stream could not be read.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A KV bucket could not be listed.
    #[error(transparent)]
    List(#[from] ListError),
    /// A KV key could not be read or written.
    #[error(transparent)]
    Kv(#[from] CasError),
    /// The NATS API refused or failed a call (a stream or bucket that is not there).
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// A consumer filter that cannot be a durable name.
    #[error("{0:?} is not a consumer name (one token: no '.', '*', '>' or blanks)")]
    InvalidConsumer(String),
    /// Nothing at that sequence of the event stream.
    #[error(
        "no dead letter {seq}: {stream} has no message at that sequence (expired, or never there)"
    )]
    NoSuchLetter {
        /// The stream.
        stream: &'static str,
        /// The sequence asked for.
        seq: u64,
    },
    /// The message at that sequence is something else.
    #[error("{stream} sequence {seq} is not a dead letter but a {subject} message")]
    NotALetter {
        /// The stream.
        stream: &'static str,
        /// The sequence asked for.
        seq: u64,
        /// What is there.
        subject: String,
    },
    /// The dead letter does not decode.
    #[error("dead letter {seq} does not decode: {source}")]
    Undecodable {
        /// The letter.
        seq: u64,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The letter's payload is not the base64 it says it is.
    #[error("dead letter {seq}: the payload is not valid base64: {source}")]
    Payload {
        /// The letter.
        seq: u64,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },
    /// The letter was replayed before: a letter is replayed once.
    #[error(
        "dead letter {seq} was already replayed at {at} by {by}{}",
        landed.map(|s| format!(" (stored as sequence {s})")).unwrap_or_default()
    )]
    AlreadyReplayed {
        /// The letter.
        seq: u64,
        /// When.
        at: DateTime<Utc>,
        /// By whom.
        by: String,
        /// Where the replay was stored, if that was recorded.
        landed: Option<u64>,
    },
    /// The replay was not stored; its claim was given back, so it may be tried again.
    #[error("dead letter {seq} was not replayed (its claim is released, try again): {source}")]
    NotReplayed {
        /// The letter.
        seq: u64,
        /// The publish error.
        #[source]
        source: PublishError,
    },
    /// The replay was not stored and its claim could not be given back either.
    #[error(
        "dead letter {seq} was not replayed ({publish}), and its claim could not be released \
         ({release}): delete key {key} of bucket pf_replays before trying again"
    )]
    ClaimStuck {
        /// The letter.
        seq: u64,
        /// The claim's key.
        key: String,
        /// Why the publish failed.
        #[source]
        publish: PublishError,
        /// Why the release failed.
        release: CasError,
    },
}
