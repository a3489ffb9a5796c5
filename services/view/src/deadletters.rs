//! Dead letters and their replay.
//!
//! A dead letter is a [`DeadLetter`] event on `pf.evt.deadletter.<consumer>` in `PF_EVT`: what a
//! consumer gave up on, with its original subject, headers and payload. Its sequence in `PF_EVT` is
//! its handle. [`replay`] publishes the original again, once per letter:
//!
//! 1. the replay is claimed first, with a KV `create` of `PF_EVT.<seq>` in `pf_replays` (who, when):
//!    a second replay finds the claim and is refused, naming the first;
//! 2. the original goes out on its subject with its headers and payload (base64 decoded when the
//!    letter says so), its `Nats-Msg-Id` derived (`<original>:replay-<seq>`: the original's id is
//!    likely still in the stream's duplicate window, and the stream would drop the replay silently),
//!    and `Proxflow-Replay-Of: PF_EVT.<seq>` added; the stream must acknowledge it;
//! 3. where it was stored is added to the claim. A replay the stream did not acknowledge gives its
//!    claim back, so it may be tried again (a publish whose acknowledgement was lost is dropped as a
//!    duplicate by that derived id if tried again within the stream's window).

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use proxflow_runtime::bus::Bus;
use proxflow_runtime::bus::history;
use proxflow_runtime::kv::{self as cas, Change};
use proxflow_schemas::Versioned;
use proxflow_schemas::events::{DeadLetter, PayloadEncoding};
use proxflow_schemas::names::{bucket, header, key, stream, subject};
use serde::{Deserialize, Serialize};

use crate::ViewError;

/// How many letters a listing shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// Which dead letters to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only those of this consumer (its durable name, `workflow-provision`).
    pub consumer: Option<String>,
    /// Only those dead-lettered at or after this (else as far back as the stream keeps them).
    pub since: Option<DateTime<Utc>>,
    /// At most this many, the newest.
    pub limit: usize,
}

impl Default for Filter {
    /// Every consumer's, the [`DEFAULT_LIMIT`] newest.
    fn default() -> Self {
        Self {
            consumer: None,
            since: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// A replay of a dead letter, as claimed in `pf_replays`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Who replayed it (`cli:<user>`, a console user).
    pub by: String,
    /// When the replay was claimed.
    pub at: DateTime<Utc>,
    /// The subject it was published on (the original's).
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// Its sequence in the stream that stored it; absent until the stream acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_as: Option<u64>,
    /// The stream had it already (an earlier attempt whose acknowledgement was lost).
    #[serde(default)]
    pub duplicate: bool,
}

/// A dead letter, its handle and whether it was replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Letter {
    /// Its sequence in `PF_EVT`: the handle `proxflow deadletters replay` takes.
    pub seq: u64,
    /// The letter: consumer, reason, detail, the original's subject, headers and payload.
    pub letter: DeadLetter,
    /// Its replay, if it was replayed.
    pub replayed: Option<Replay>,
}

/// The dead letters `filter` selects, newest first, each with its replay if there was one.
pub async fn list(bus: &Bus, filter: &Filter) -> Result<Vec<Letter>, ViewError> {
    let consumer = match filter.consumer.as_deref() {
        Some(c)
            if c.is_empty() || c.contains(['.', '*', '>']) || c.contains(char::is_whitespace) =>
        {
            return Err(ViewError::InvalidConsumer(c.to_owned()));
        }
        Some(c) => c,
        None => "*",
    };
    let found: Vec<history::Sequenced<DeadLetter>> = history::since_sequenced(
        &bus.js,
        stream::EVT,
        &subject::dead_letter(consumer),
        filter.since.unwrap_or(DateTime::<Utc>::MIN_UTC),
        filter.limit,
    )
    .await?;
    let mut replays: BTreeMap<String, Replay> = cas::latest(&replays(&bus.js).await?, "*.*")
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
        .collect();
    Ok(found
        .into_iter()
        .rev()
        .map(|s| Letter {
            seq: s.sequence,
            replayed: replays.remove(&key::replay(stream::EVT, s.sequence)),
            letter: s.message,
        })
        .collect())
}

/// Publishes the original of dead letter `seq` again, once (see the module's header); `by` is who
/// asks. The replay as recorded, with where the stream stored it.
pub async fn replay(bus: &Bus, seq: u64, by: &str) -> Result<Replay, ViewError> {
    let letter = letter_at(&bus.js, seq).await?;
    let payload = match letter.payload_encoding {
        PayloadEncoding::Utf8 => bytes::Bytes::from(letter.payload.clone()),
        PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(&letter.payload)
            .map(bytes::Bytes::from)
            .map_err(|source| ViewError::Payload { seq, source })?,
    };
    let original = letter
        .headers
        .get(header::MSG_ID)
        .and_then(|ids| ids.first())
        .map_or_else(
            || format!("deadletter/{}/{}", letter.stream, letter.stream_sequence),
            Clone::clone,
        );
    let claim = Replay {
        by: by.to_owned(),
        at: Utc::now(),
        subject: letter.subject.clone(),
        msg_id: format!("{original}:replay-{seq}"),
        stored_as: None,
        duplicate: false,
    };
    let store = replays(&bus.js).await?;
    let key = key::replay(stream::EVT, seq);
    let (claimed, _) = cas::change(&store, &key, |current: Option<Replay>| match current {
        Some(earlier) => Change::Keep(Err(earlier)),
        None => Change::Write(claim.clone(), Ok(())),
    })
    .await?;
    if let Err(earlier) = claimed {
        return Err(ViewError::AlreadyReplayed {
            seq,
            at: earlier.at,
            by: earlier.by,
            landed: earlier.stored_as,
        });
    }
    let headers = replay_headers(&letter.headers, &claim.msg_id, seq);
    let published = bus
        .publisher
        .republish(letter.subject.clone(), headers, payload)
        .await;
    let receipt = match published {
        Ok(receipt) => receipt,
        Err(publish) => {
            // Not stored: the claim goes, so the letter may be replayed again.
            let released = cas::change(&store, &key, |current: Option<Replay>| match current {
                Some(c) if c == claim => Change::Delete(()),
                _ => Change::Keep(()),
            })
            .await;
            return Err(match released {
                Ok(_) => ViewError::NotReplayed {
                    seq,
                    source: publish,
                },
                Err(release) => ViewError::ClaimStuck {
                    seq,
                    key,
                    publish,
                    release,
                },
            });
        }
    };
    let done = Replay {
        stored_as: Some(receipt.sequence),
        duplicate: receipt.duplicate,
        ..claim.clone()
    };
    // The replay happened; failing to note where it went changes nothing about that.
    let noted = cas::change(&store, &key, |current: Option<Replay>| match current {
        Some(c) if c == claim => Change::Write(done.clone(), ()),
        _ => Change::Keep(()),
    })
    .await;
    if let Err(e) = noted {
        tracing::warn!(seq, error = %e, "replayed, but where it was stored is not recorded");
    }
    Ok(done)
}

/// The replays bucket (declared with the topology).
async fn replays(js: &jetstream::Context) -> Result<kv::Store, ViewError> {
    js.get_key_value(bucket::REPLAYS)
        .await
        .map_err(|e| ViewError::Api {
            what: format!("opening bucket {}", bucket::REPLAYS),
            source: e.into(),
        })
}

/// The dead letter at `seq` of `PF_EVT`.
async fn letter_at(js: &jetstream::Context, seq: u64) -> Result<DeadLetter, ViewError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let events = js
        .get_stream(stream::EVT)
        .await
        .map_err(|e| ViewError::Api {
            what: format!("opening stream {}", stream::EVT),
            source: e.into(),
        })?;
    let message = match events.get_raw_message(seq).await {
        Ok(m) => m,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
            return Err(ViewError::NoSuchLetter {
                stream: stream::EVT,
                seq,
            });
        }
        Err(e) => {
            return Err(ViewError::Api {
                what: format!("reading {} sequence {seq}", stream::EVT),
                source: e.into(),
            });
        }
    };
    let schema = message
        .headers
        .get(header::SCHEMA)
        .map(|v| v.as_str().to_owned());
    let is_letter = message
        .subject
        .as_str()
        .starts_with(&format!("{}.", subject::DEAD_LETTER_PREFIX))
        && schema.is_some_and(|s| DeadLetter::SCHEMA.accepts(&s).is_ok());
    if !is_letter {
        return Err(ViewError::NotALetter {
            stream: stream::EVT,
            seq,
            subject: message.subject.to_string(),
        });
    }
    serde_json::from_slice(&message.payload)
        .map_err(|source| ViewError::Undecodable { seq, source })
}

/// The original's headers for its replay: all of them, but its own `Nats-Msg-Id` (the stream would
/// drop the replay as a duplicate) and the publish expectations (`Nats-Expected-*`, which held for
/// the original's position, not the replay's); with `msg_id` and the letter it replays.
fn replay_headers(original: &BTreeMap<String, Vec<String>>, msg_id: &str, seq: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original {
        if name.eq_ignore_ascii_case(header::MSG_ID) || name.starts_with("Nats-Expected-") {
            continue;
        }
        for value in values {
            headers.append(name.as_str(), value.as_str());
        }
    }
    headers.insert(header::MSG_ID, msg_id);
    headers.insert(header::REPLAY_OF, key::replay(stream::EVT, seq).as_str());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_keeps_the_headers_but_its_id_and_says_what_it_replays() {
        let original = BTreeMap::from([
            (
                header::MSG_ID.to_owned(),
                vec!["workflow/prov-1/start".to_owned()],
            ),
            (
                header::SCHEMA.to_owned(),
                vec!["pf.cmd.workflow.advance/v1".to_owned()],
            ),
            (
                header::TRACEPARENT.to_owned(),
                vec!["00-4bf9-00f0-01".to_owned()],
            ),
            (
                "Nats-Expected-Last-Sequence".to_owned(),
                vec!["7".to_owned()],
            ),
            ("X-Multi".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
        ]);
        let headers = replay_headers(&original, "workflow/prov-1/start:replay-42", 42);
        let one = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            one(header::MSG_ID).as_deref(),
            Some("workflow/prov-1/start:replay-42")
        );
        assert_eq!(
            one(header::SCHEMA).as_deref(),
            Some("pf.cmd.workflow.advance/v1")
        );
        assert_eq!(one(header::TRACEPARENT).as_deref(), Some("00-4bf9-00f0-01"));
        assert_eq!(one(header::REPLAY_OF).as_deref(), Some("PF_EVT.42"));
        assert_eq!(one("Nats-Expected-Last-Sequence"), None);
        let multi: Vec<&str> = headers.get_all("X-Multi").map(|v| v.as_str()).collect();
        assert_eq!(multi, ["a", "b"]);
    }
}
