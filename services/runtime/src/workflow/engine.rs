//! The engine: registered definitions and the calls other code makes (start, signal, list). The
//! advance consumers are [`super::advance`], the waker [`super::waker`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::kv::Store;
use chrono::{DateTime, Utc};
use proxflow_schemas::names::{bucket, stream, subject};
use proxflow_schemas::workflow::{
    IndexEntry, Origin, SignalRecord, StepState, Wait, WorkflowAdvance, WorkflowRecord,
    WorkflowState,
};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::advance::{Advance, Definition, Driver, GivenUp};
use super::definition::Workflow;
use super::index;
use super::metrics::WorkflowMetrics;
use super::waker::waker;
use super::{EngineError, SignalError, WorkflowStore, signal_key, signal_prefix};
use crate::ServiceContext;
use crate::bus::topology::ConsumerSpec;
use crate::bus::{ConsumerLoop, Publisher};
use crate::clock::SharedClock;
use crate::config::ConsumerConfig;
use crate::kv::{self as cas, CasError, Change};
use crate::lease::Leases;
use crate::service::{TaskError, Tasks};

/// Deliveries an advance may take. Advances are idempotent (the record is the truth) and a busy
/// workflow hands its advance back every few seconds; this covers a holder that died mid-advance
/// until its lease goes stale (3 minutes) many times over, so no advance is dead-lettered for it.
const ADVANCE_MAX_DELIVER: u32 = 1_000;

/// The engine's shared state.
pub(crate) struct Inner {
    pub(crate) store: WorkflowStore,
    pub(crate) kv: Store,
    pub(crate) leases: Leases,
    pub(crate) publisher: Publisher,
    pub(crate) clock: SharedClock,
    /// This process, as a lease holder.
    pub(crate) instance: String,
    /// The workflow counts.
    pub(crate) metrics: WorkflowMetrics,
}

/// The workflow engine of one process: the definitions it runs and how to reach the bus and KV.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    definitions: BTreeMap<&'static str, Arc<dyn Driver>>,
}

impl Engine {
    /// An engine on the context's bus, its clock (timers, expiries) and its leases.
    pub async fn new(ctx: &ServiceContext) -> Result<Self, EngineError> {
        let kv = ctx
            .bus
            .js
            .get_key_value(bucket::WORKFLOWS)
            .await
            .map_err(|e| EngineError::Open(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store: WorkflowStore::from_store(kv.clone()),
                kv,
                leases: ctx.leases.clone(),
                publisher: ctx.bus.publisher.clone(),
                clock: ctx.clock.clone(),
                instance: format!("engine-{}-{}", std::process::id(), nuid::next()),
                metrics: ctx.metrics.workflows(),
            }),
            definitions: BTreeMap::new(),
        })
    }

    /// Adds a definition this engine runs (before [`Engine::run`]).
    pub fn register<W: Workflow>(&mut self, definition: W) -> &mut Self {
        self.definitions
            .insert(W::KIND, Arc::new(Definition(Arc::new(definition))));
        self
    }

    /// Starts workflow `id` of kind `W` with `input`, unless it exists (then nothing changes:
    /// starting is idempotent, and the existing record wins). `true` when this call created it.
    pub async fn start<W: Workflow>(
        &self,
        id: &str,
        origin: Origin,
        input: &W::Input,
    ) -> Result<bool, EngineError> {
        self.start_kind(W::KIND, id, origin, input).await
    }

    /// [`Engine::start`] for a kind this process does not run (another service advances it), by
    /// name, with its input as the definition expects it.
    pub async fn start_kind(
        &self,
        kind: &str,
        id: &str,
        origin: Origin,
        input: &impl Serialize,
    ) -> Result<bool, EngineError> {
        let created = self.inner.create(kind, id, origin, input, None).await?;
        // Also when it existed: a start retried after a crash between create and advance must
        // still get the workflow going (the advance is deduplicated).
        self.inner.advance(kind, id, "start").await?;
        Ok(created)
    }

    /// Starts a workflow whose first record the caller built in its kind's own layout (an edge's
    /// pending record whose data is the request, e.g. `ProvisionRequested::pending_workflow`):
    /// created unless it exists (the first writer wins), then advanced. `true` when this call
    /// created it.
    pub async fn start_record(&self, record: &WorkflowRecord) -> Result<bool, EngineError> {
        let created = self.inner.insert(record).await?;
        self.inner
            .advance(&record.kind, &record.id, "start")
            .await?;
        Ok(created)
    }

    /// Delivers signal `name` with `payload` to workflow `id`. Refused when the workflow ended,
    /// when its wait for `name` already ended (expired), or when the signal was already given.
    pub async fn signal(
        &self,
        id: &str,
        name: &str,
        sender: &str,
        payload: &impl Serialize,
    ) -> Result<(), SignalError> {
        let (record, _) = self
            .inner
            .store
            .get(id)
            .await
            .map_err(EngineError::from)?
            .ok_or_else(|| SignalError::NotFound(id.to_string()))?;
        let ended = |r: &WorkflowRecord| -> Option<SignalError> {
            if r.state.is_terminal() {
                return Some(SignalError::Ended {
                    id: id.to_string(),
                    state: r.state,
                });
            }
            r.steps
                .iter()
                .find(|s| s.name == name && s.state == StepState::Succeeded)
                .map(|s| SignalError::WaitOver {
                    id: id.to_string(),
                    name: name.to_string(),
                    at: s.finished_at,
                    expired: s.output.is_null(),
                })
        };
        if let Some(refusal) = ended(&record) {
            return Err(refusal);
        }
        let now = self.inner.clock.now();
        if let Some(Wait::Signal {
            name: waited,
            expires_at: Some(expires),
            ..
        }) = &record.wait
            && waited == name
            && *expires <= now
        {
            // Expired but not yet recorded (the waker has not come by): refuse now, as the
            // workflow will.
            return Err(SignalError::WaitOver {
                id: id.to_string(),
                name: name.to_string(),
                at: Some(*expires),
                expired: true,
            });
        }
        let signal = SignalRecord {
            sender: sender.to_string(),
            at: now,
            payload: serde_json::to_value(payload).map_err(SignalError::Encode)?,
        };
        let key = signal_key(id, name);
        let (created, _) =
            cas::change(
                &self.inner.kv,
                &key,
                |current: Option<SignalRecord>| match current {
                    Some(_) => Change::Keep(false),
                    None => Change::Write(signal.clone(), true),
                },
            )
            .await
            .map_err(EngineError::from)?;
        if !created {
            return Err(SignalError::AlreadyGiven {
                id: id.to_string(),
                name: name.to_string(),
            });
        }
        // The wait may have expired between the check and the write: the workflow ignores a late
        // signal, and the sender must hear so.
        if let Some((record, _)) = self.inner.store.get(id).await.map_err(EngineError::from)?
            && let Some(refusal) = ended(&record)
        {
            return Err(refusal);
        }
        self.inner
            .advance(&record.kind, id, &format!("signal/{name}"))
            .await?;
        Ok(())
    }

    /// Workflow `id`'s record, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<WorkflowRecord>, EngineError> {
        Ok(self.inner.store.get(id).await?.map(|(record, _)| record))
    }

    /// Workflows of `kind` in `state` created at or after `since`, newest first, from the index.
    pub async fn list(
        &self,
        kind: &str,
        state: WorkflowState,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<IndexEntry>, EngineError> {
        self.search(Some(kind), Some(state), since).await
    }

    /// Workflows of `kind` in `state`, either `None` for any, created at or after `since`, newest
    /// first, from the index: one pass over the matching index lines, whatever the number of
    /// workflows, and no record read.
    pub async fn search(
        &self,
        kind: Option<&str>,
        state: Option<WorkflowState>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<IndexEntry>, EngineError> {
        index::search(&self.inner.kv, kind, state, since).await
    }

    /// The signals given to `record`'s workflow, by name, oldest first: who sent each, when, and
    /// what (an approver's decision, another service's outcome). Signals stay stored after the
    /// workflow read them, so this is its record of who decided.
    pub async fn signals(
        &self,
        record: &WorkflowRecord,
    ) -> Result<Vec<(String, SignalRecord)>, EngineError> {
        let prefix = signal_prefix(&record.id);
        let stored = cas::latest(&self.inner.kv, &format!("{prefix}*")).await?;
        // A name that is not a key-safe token (`decision.0`) is hashed in its key: the names the
        // record knows (its steps, its wait) name them back.
        let waited = match &record.wait {
            Some(Wait::Signal { name, .. }) => Some(name.as_str()),
            _ => None,
        };
        let known: BTreeMap<String, &str> = record
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .chain(waited)
            .map(|name| (signal_key(&record.id, name), name))
            .collect();
        let mut signals: Vec<(String, SignalRecord)> = stored
            .into_iter()
            .filter_map(|(key, value)| {
                let signal = serde_json::from_slice::<SignalRecord>(&value).ok()?;
                let name = known.get(&key).map_or_else(
                    || key.strip_prefix(&prefix).unwrap_or(&key).to_owned(),
                    |n| (*n).to_owned(),
                );
                Some((name, signal))
            })
            .collect();
        signals.sort_by_key(|(_, s)| s.at);
        Ok(signals)
    }

    /// Starts the advance consumer of every registered kind and the waker as tasks of the
    /// service; they stop with the service's tasks.
    pub fn spawn(&self, ctx: &ServiceContext, consumer: &ConsumerConfig, tasks: &mut Tasks) {
        for (kind, driver) in &self.definitions {
            let spec = ConsumerSpec {
                stream: stream::CMD,
                durable: proxflow_schemas::names::workflow_durable(kind),
                filter_subject: subject::cmd("workflow", kind),
            };
            let handler = Advance {
                inner: Arc::clone(&self.inner),
                driver: Arc::clone(driver),
            };
            let mut tuning = consumer.clone();
            tuning.max_deliver = tuning.max_deliver.max(ADVANCE_MAX_DELIVER);
            let advances = ConsumerLoop::new(ctx.clone(), spec, tuning, handler);
            tasks.spawn(
                format!("workflow {kind} advances"),
                advances.run(tasks.shutdown()),
            );
            let spec = ConsumerSpec {
                stream: stream::EVT,
                durable: proxflow_schemas::names::workflow_given_up_durable(kind),
                filter_subject: subject::dead_letter(&proxflow_schemas::names::workflow_durable(
                    kind,
                )),
            };
            let given_up = GivenUp {
                inner: Arc::clone(&self.inner),
            };
            let given_up = ConsumerLoop::new(ctx.clone(), spec, consumer.clone(), given_up);
            tasks.spawn(
                format!("workflow {kind} given-up advances"),
                given_up.run(tasks.shutdown()),
            );
        }
        let kinds: Vec<&'static str> = self.definitions.keys().copied().collect();
        let inner = Arc::clone(&self.inner);
        let stop = tasks.shutdown();
        tasks.spawn("workflow waker", async move {
            waker(inner, kinds, stop).await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Runs the engine alone (a process whose only work is workflows) until `shutdown`.
    pub async fn run(
        &self,
        ctx: &ServiceContext,
        consumer: &ConsumerConfig,
        shutdown: &CancellationToken,
    ) -> Result<(), TaskError> {
        let mut tasks = Tasks::new(ctx, shutdown);
        self.spawn(ctx, consumer, &mut tasks);
        tasks.join().await
    }
}

impl Inner {
    /// Creates the record of workflow `id` (state `pending`) unless it exists; indexes it.
    pub(crate) async fn create(
        &self,
        kind: &str,
        id: &str,
        origin: Origin,
        input: &impl Serialize,
        parent: Option<String>,
    ) -> Result<bool, EngineError> {
        let now = self.clock.now();
        let input = serde_json::to_value(input).map_err(|e| EngineError::Encode {
            id: id.to_string(),
            source: e,
        })?;
        let record = WorkflowRecord {
            id: id.to_string(),
            kind: kind.to_string(),
            state: WorkflowState::Pending,
            origin,
            steps: Vec::new(),
            data: json!({ "input": input }),
            error: None,
            trace_id: crate::telemetry::trace_id(&tracing::Span::current()),
            traceparent: crate::telemetry::traceparent(&tracing::Span::current()),
            wait: None,
            parent,
            created_at: now,
            updated_at: now,
        };
        self.insert(&record).await
    }

    /// Creates `record` unless one with its id exists; indexes it.
    pub(crate) async fn insert(&self, record: &WorkflowRecord) -> Result<bool, EngineError> {
        let created = self.store.create(record).await?;
        if created {
            index::put(&self.kv, record, None).await?;
        }
        Ok(created)
    }

    /// Asks the advance consumer of `kind` to look at `id` again.
    pub(crate) async fn advance(
        &self,
        kind: &str,
        id: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let advance = WorkflowAdvance {
            kind: kind.to_string(),
            id: id.to_string(),
            reason: reason.to_string(),
        };
        self.publisher.publish(&advance).await?;
        Ok(())
    }

    pub(crate) async fn read_signal(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<SignalRecord>, EngineError> {
        Ok(cas::read(&self.kv, &signal_key(id, name)).await?.value)
    }

    /// Writes `record` over `revision` and keeps the index in step (`indexed` is what the index
    /// holds, updated here): its line is written again when its state, current step or wake time
    /// changed. The owner is the only writer, so a conflict means someone else advanced the
    /// workflow and this advance must stop.
    pub(crate) async fn write(
        &self,
        record: &mut WorkflowRecord,
        revision: u64,
        indexed: &mut index::Line,
    ) -> Result<u64, EngineError> {
        record.updated_at = self.clock.now();
        let next = self.store.replace(record, revision).await?;
        let line = index::Line::of(record);
        if *indexed != line {
            index::put(&self.kv, record, Some(indexed.state)).await?;
            if indexed.state != record.state && record.state.is_terminal() {
                self.metrics.ended(&record.kind, record.state);
            }
            *indexed = line;
        }
        Ok(next)
    }
}

impl From<CasError> for EngineError {
    fn from(e: CasError) -> Self {
        EngineError::Kv(e)
    }
}
