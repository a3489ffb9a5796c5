//! The whole JetStream topology in one place: streams, KV buckets and the durable consumers services
//! ask for. Declaring is idempotent (declaring twice changes nothing) and converges: a spec that
//! changed since the last start updates the server's config instead of being silently ignored, and a
//! change the server cannot make (retention policy) stops start-up with a message saying so.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode, kv};
use proxflow_schemas::names::{
    self, INGEST_DUPLICATE_WINDOW_SECS, WEBHOOK_ID_TTL_SECS, bucket, stream as stream_name, subject,
};

use crate::config::ConsumerConfig;
use crate::nats_server::{self, INSTALL_HINT};

const DAY: Duration = Duration::from_secs(24 * 3600);
/// How long the event stream keeps events (the audit log, dead letters included).
const EVENT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The server predates the JetStream APIs proxflow uses.
    #[error(
        "nats-server {found} is too old: proxflow needs nats-server >= 2.10 (KV buckets and consumer \
         filters misbehave on 2.9); {INSTALL_HINT}"
    )]
    ServerTooOld {
        /// The version the server reported.
        found: String,
    },
    /// JetStream is off on the server.
    #[error("JetStream is not enabled on the NATS server (start it with -js): {0}")]
    JetStreamDisabled(String),
    /// A JetStream API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being declared.
        what: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// The server's JetStream store limit cannot hold the stream's size cap next to the others.
    #[error(
        "{what}: the NATS server's JetStream store limit cannot reserve its {cap} byte cap \
         (proxflow's streams reserve {total} bytes in all); raise `max_file_store` in the \
         server's jetstream block (deploy/nats/*.conf set 10G), or free disk space if it is unset \
         (the server then takes 75 % of the free disk at its start)"
    )]
    StoreTooSmall {
        /// The stream.
        what: String,
        /// Its cap.
        cap: i64,
        /// Every stream's caps together.
        total: i64,
    },
    /// The server holds a config that cannot be changed in place.
    #[error(
        "{what} exists with {field} = {found}, proxflow needs {wanted}; this cannot be changed in place"
    )]
    Conflict {
        /// The stream or consumer.
        what: String,
        /// The field.
        field: &'static str,
        /// What the server has.
        found: String,
        /// What the spec says.
        wanted: String,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::Api { what, source }
}

/// What a declaration did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// It did not exist and was created.
    Created,
    /// It existed with another config and was updated.
    Updated,
    /// It existed as specified.
    Unchanged,
}

/// What [`declare`] did, object by object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeclareReport {
    /// (object, outcome) in declaration order.
    pub objects: Vec<(String, Declared)>,
}

impl DeclareReport {
    /// Whether every object was already as specified.
    pub fn all_unchanged(&self) -> bool {
        self.objects.iter().all(|(_, d)| *d == Declared::Unchanged)
    }
}

/// One stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stream name.
    pub name: &'static str,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// Retention policy.
    pub retention: RetentionPolicy,
    /// Oldest message kept.
    pub max_age: Duration,
    /// Size cap; the oldest messages go first.
    pub max_bytes: i64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
}

/// One KV bucket.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    /// Bucket name.
    pub name: &'static str,
    /// What it holds.
    pub description: &'static str,
    /// Revisions kept per key.
    pub history: i64,
    /// Entry lifetime; zero keeps entries until deleted.
    pub max_age: Duration,
}

/// The streams of proxflow.
pub fn streams() -> Vec<StreamSpec> {
    vec![
        StreamSpec {
            name: stream_name::INGEST,
            subjects: vec![subject::INGEST_ALL.into()],
            retention: RetentionPolicy::Limits,
            max_age: 7 * DAY,
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(INGEST_DUPLICATE_WINDOW_SECS),
        },
        StreamSpec {
            name: stream_name::CMD,
            subjects: vec![subject::CMD_ALL.into()],
            // A command is work for exactly one service and is gone once done.
            retention: RetentionPolicy::WorkQueue,
            max_age: 7 * DAY,
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
        },
        StreamSpec {
            name: stream_name::EVT,
            subjects: vec![subject::EVT_ALL.into()],
            // Events are the audit log: kept by age, not by interest.
            retention: RetentionPolicy::Limits,
            max_age: EVENT_RETENTION,
            max_bytes: 5 << 30,
            duplicate_window: Duration::from_secs(120),
        },
        StreamSpec {
            name: stream_name::TRACE,
            subjects: vec![subject::TRACE_ALL.into()],
            // Spans are for looking back at recent workflows; age and size bound them, the oldest
            // going first when the size cap is hit.
            retention: RetentionPolicy::Limits,
            max_age: 7 * DAY,
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
        },
    ]
}

/// The KV buckets of proxflow.
pub fn buckets() -> Vec<BucketSpec> {
    vec![
        BucketSpec {
            name: bucket::WORKFLOWS,
            description: "workflow records (revision CAS)",
            history: 10,
            max_age: 90 * DAY,
        },
        BucketSpec {
            name: bucket::LOCKS,
            description: "leases on targets; an entry expires after max_age if its holder dies",
            history: 1,
            max_age: Duration::from_secs(15 * 60),
        },
        BucketSpec {
            name: bucket::COOLDOWNS,
            description: "cooldown markers keyed by rule and target",
            history: 1,
            max_age: DAY,
        },
        BucketSpec {
            name: bucket::VMIDS,
            description: "VMID reservations taken with create",
            history: 1,
            max_age: Duration::ZERO,
        },
        BucketSpec {
            name: bucket::ADMISSIONS,
            description: "admission ledgers for caps (running, started in the last hour)",
            history: 1,
            max_age: Duration::ZERO,
        },
        BucketSpec {
            name: bucket::CLAIMS,
            description: "VM names and static addresses in use, claimed by CAS",
            history: 1,
            max_age: Duration::ZERO,
        },
        BucketSpec {
            name: bucket::PATCH,
            description: "patching: packages held after a rejected approval, per target",
            history: 1,
            max_age: Duration::ZERO,
        },
        BucketSpec {
            name: bucket::CAPACITY,
            description: "capacity detector state per metric (CAS)",
            history: 1,
            max_age: Duration::ZERO,
        },
        BucketSpec {
            name: bucket::REPLAYS,
            description: "dead letters replayed, each claimed with create (one replay per letter)",
            history: 1,
            // As long as the letters themselves.
            max_age: EVENT_RETENTION,
        },
        BucketSpec {
            name: bucket::WEBHOOK_IDS,
            description: "accepted webhook ids (replay guard), taken with create",
            history: 1,
            // Fixed, not derived from the gateway's tolerance: every gateway instance declares the
            // same bucket, and the gateway caps its tolerance below this instead.
            max_age: Duration::from_secs(WEBHOOK_ID_TTL_SECS),
        },
    ]
}

/// Refuses servers older than 2.10 with a plain message instead of the decode errors they cause later.
pub fn check_server(client: &async_nats::Client) -> Result<(), TopologyError> {
    let found = client.server_info().version;
    if nats_server::is_supported(&found) {
        Ok(())
    } else {
        Err(TopologyError::ServerTooOld { found })
    }
}

/// Declares every stream and bucket. Safe to run from every process at every start.
pub async fn declare(
    client: &async_nats::Client,
    js: &jetstream::Context,
    replicas: usize,
) -> Result<DeclareReport, TopologyError> {
    check_server(client)?;
    js.query_account()
        .await
        .map_err(|e| TopologyError::JetStreamDisabled(e.to_string()))?;
    let mut report = DeclareReport::default();
    for spec in streams() {
        let outcome = declare_stream(js, stream_config(&spec, replicas)).await?;
        report
            .objects
            .push((format!("stream {}", spec.name), outcome));
    }
    for spec in buckets() {
        let outcome = declare_bucket(js, &spec, replicas).await?;
        report
            .objects
            .push((format!("bucket {}", spec.name), outcome));
    }
    Ok(report)
}

fn stream_config(spec: &StreamSpec, replicas: usize) -> stream::Config {
    stream::Config {
        name: spec.name.into(),
        subjects: spec.subjects.clone(),
        retention: spec.retention,
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        duplicate_window: spec.duplicate_window,
        discard: DiscardPolicy::Old,
        // Spelled out as the server reports "unlimited" (-1), so a re-declaration compares equal.
        max_messages_per_subject: -1,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

fn stream_missing(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Declares one stream config (streams of KV buckets included).
async fn declare_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> Result<Declared, TopologyError> {
    let what = format!("stream {}", wanted.name);
    match js.get_stream(&wanted.name).await {
        Ok(existing) => {
            let have = &existing.cached_info().config;
            if have.retention != wanted.retention {
                return Err(TopologyError::Conflict {
                    what,
                    field: "retention",
                    found: format!("{:?}", have.retention),
                    wanted: format!("{:?}", wanted.retention),
                });
            }
            let same = have.subjects == wanted.subjects
                && have.max_age == wanted.max_age
                && have.max_bytes == wanted.max_bytes
                && have.duplicate_window == wanted.duplicate_window
                && have.num_replicas == wanted.num_replicas
                && have.max_messages_per_subject == wanted.max_messages_per_subject
                && have.discard == wanted.discard;
            if same {
                return Ok(Declared::Unchanged);
            }
            // Keep server-managed fields (e.g. a KV bucket's allow_rollup) from the existing config.
            let merged = stream::Config {
                subjects: wanted.subjects,
                max_age: wanted.max_age,
                max_bytes: wanted.max_bytes,
                duplicate_window: wanted.duplicate_window,
                num_replicas: wanted.num_replicas,
                max_messages_per_subject: wanted.max_messages_per_subject,
                discard: wanted.discard,
                ..have.clone()
            };
            js.update_stream(merged)
                .await
                .map_err(|e| api(what)(e.into()))?;
            tracing::info!(stream = %existing.cached_info().config.name, "stream config updated");
            Ok(Declared::Updated)
        }
        Err(e) if stream_missing(&e) => {
            let cap = wanted.max_bytes;
            js.create_stream(wanted).await.map_err(|e| {
                if matches!(e.kind(), CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED)
                {
                    TopologyError::StoreTooSmall {
                        what: what.clone(),
                        cap,
                        total: streams().iter().map(|s| s.max_bytes).sum(),
                    }
                } else {
                    api(what.clone())(e.into())
                }
            })?;
            Ok(Declared::Created)
        }
        Err(e) => Err(api(what)(e.into())),
    }
}

async fn declare_bucket(
    js: &jetstream::Context,
    spec: &BucketSpec,
    replicas: usize,
) -> Result<Declared, TopologyError> {
    let what = format!("bucket {}", spec.name);
    let stream = format!("KV_{}", spec.name);
    match js.get_stream(&stream).await {
        Ok(existing) => {
            let have = &existing.cached_info().config;
            if have.max_messages_per_subject == spec.history
                && have.max_age == spec.max_age
                && have.num_replicas == replicas
            {
                return Ok(Declared::Unchanged);
            }
            let merged = stream::Config {
                max_messages_per_subject: spec.history,
                max_age: spec.max_age,
                num_replicas: replicas,
                ..have.clone()
            };
            declare_stream(js, merged).await
        }
        Err(e) if stream_missing(&e) => {
            js.create_key_value(kv::Config {
                bucket: spec.name.into(),
                description: spec.description.into(),
                history: spec.history,
                max_age: spec.max_age,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| api(what)(e.into()))?;
            Ok(Declared::Created)
        }
        Err(e) => Err(api(what)(e.into())),
    }
}

/// A durable pull consumer a service reads with.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Stream it reads.
    pub stream: &'static str,
    /// Durable name; also the label on metrics and the dead-letter subject suffix.
    pub durable: String,
    /// The one subject filter (a single filter also works on servers that ignore `filter_subjects`).
    pub filter_subject: String,
}

impl From<names::Consumer> for ConsumerSpec {
    /// A service's consumer, from the table every permission is generated from.
    fn from(consumer: names::Consumer) -> Self {
        Self {
            stream: consumer.stream,
            durable: consumer.durable.to_owned(),
            filter_subject: consumer.filter_subject(),
        }
    }
}

fn consumer_config(spec: &ConsumerSpec, tuning: &ConsumerConfig, replicas: usize) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: tuning.ack_wait,
        // Unlimited on the server: the consumer loop itself dead-letters a message on its last allowed
        // delivery, and one delivered more often than allowed (its handler crashed every time) as soon as
        // it comes back, so nothing ever sits exhausted and unseen in the stream.
        max_deliver: -1,
        max_ack_pending: i64::try_from(tuning.max_in_flight.saturating_mul(4)).unwrap_or(i64::MAX),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Declares a consumer and returns it, converging its config as [`declare`] does for streams.
pub async fn declare_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    tuning: &ConsumerConfig,
    replicas: usize,
) -> Result<(PullConsumer, Declared), TopologyError> {
    let what = format!("consumer {} on {}", spec.durable, spec.stream);
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| api(&what)(e.into()))?;
    let wanted = consumer_config(spec, tuning, replicas);
    match stream.consumer_info(&spec.durable).await {
        Ok(info) => {
            let have = &info.config;
            let same = have.filter_subject == wanted.filter_subject
                && have.ack_wait == wanted.ack_wait
                && have.max_deliver == wanted.max_deliver
                && have.max_ack_pending == wanted.max_ack_pending;
            if same {
                let existing = stream
                    .get_consumer(&spec.durable)
                    .await
                    .map_err(api(&what))?;
                return Ok((existing, Declared::Unchanged));
            }
            let updated = stream
                .update_consumer(wanted)
                .await
                .map_err(|e| api(&what)(e.into()))?;
            tracing::info!(consumer = %spec.durable, "consumer config updated");
            Ok((updated, Declared::Updated))
        }
        Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {
            let created = stream
                .create_consumer(wanted)
                .await
                .map_err(|e| api(&what)(e.into()))?;
            Ok((created, Declared::Created))
        }
        Err(e) => Err(api(what)(e.into())),
    }
}
