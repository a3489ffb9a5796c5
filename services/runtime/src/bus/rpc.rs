//! Core NATS request/reply of a versioned message (the snapshotter's pre-change snapshots): the
//! caller's side, with the schema header and a deadline.

use std::time::Duration;

use async_nats::HeaderMap;
use proxflow_schemas::Versioned;
use proxflow_schemas::names::header;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Encoding failed.
    #[error("encoding the request: {0}")]
    Encode(#[from] serde_json::Error),
    /// No reply within the timeout, or nobody listening.
    #[error("no answer on {subject}: {reason}")]
    NoAnswer {
        /// The request subject.
        subject: String,
        /// Timed out, or no responders.
        reason: String,
    },
    /// The reply does not decode.
    #[error("undecodable reply on {subject}: {reason}")]
    Decode {
        /// The request subject.
        subject: String,
        /// The decode error.
        reason: String,
    },
}

/// Sends `request` on `subject` and waits up to `timeout` for its reply.
pub async fn request<Req, Rep>(
    client: &async_nats::Client,
    subject: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, RequestError>
where
    Req: Serialize + Versioned,
    Rep: DeserializeOwned,
{
    let body = serde_json::to_vec(request)?;
    let mut headers = HeaderMap::new();
    headers.insert(header::SCHEMA, Req::SCHEMA.to_string().as_str());
    let no_answer = |reason: String| RequestError::NoAnswer {
        subject: subject.to_string(),
        reason,
    };
    let answer = tokio::time::timeout(
        timeout,
        client.request_with_headers(subject.to_string(), headers, body.into()),
    )
    .await
    .map_err(|_| no_answer(format!("timed out after {timeout:?}")))?
    .map_err(|e| no_answer(e.to_string()))?;
    serde_json::from_slice(&answer.payload).map_err(|e| RequestError::Decode {
        subject: subject.to_string(),
        reason: e.to_string(),
    })
}
