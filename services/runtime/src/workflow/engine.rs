//! The engine: registered definitions, the advance consumers (`pf.cmd.workflow.<kind>`), the
//! waker that resumes due timers and expired signal waits, and the calls other code makes (start,
//! signal, list).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Store};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxflow_schemas::names::{bucket, stream, subject};
use proxflow_schemas::workflow::{
    IndexEntry, Origin, SignalRecord, StepState, Wait, WorkflowAdvance, WorkflowRecord,
    WorkflowState,
};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::definition::{ErrorKind, Halt, Workflow};
use super::index;
use super::run::Run;
use super::{EngineError, SignalError, WorkflowStore, signal_key};
use crate::ServiceContext;
use crate::bus::topology::ConsumerSpec;
use crate::bus::{ConsumerLoop, Delivery, Handler, Outcome, Publisher};
use crate::clock::SharedClock;
use crate::config::ConsumerConfig;
use crate::kv::{self as cas, CasError, Change};
use crate::lease::{Acquired, Leases};
use crate::service::{TaskError, Tasks};

/// How often the waker looks for due timers and expired signal waits.
const WAKE_EVERY: Duration = Duration::from_millis(500);
/// A running workflow not touched for this long is advanced again (its advance was lost, or its
/// owner died mid-step); the workflow's lease keeps this from running it twice at once.
const STALE_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Pause before watching the index again after the watch failed.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// A wake-up sent for a workflow that is still due after this long is sent again (the first may
/// have met a busy workflow or been lost).
const RESEND_AFTER: Duration = Duration::from_secs(30);
/// Pause before another look at a workflow whose lease another advance holds.
const BUSY_RETRY: Duration = Duration::from_secs(2);
/// Deliveries an advance may take. Advances are idempotent (the record is the truth) and a busy
/// workflow hands its advance back every [`BUSY_RETRY`]; this covers a holder that died mid-advance
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
    instance: String,
}

/// A definition with its types erased, so the engine can hold several kinds.
trait Driver: Send + Sync {
    fn advance<'a>(
        &'a self,
        inner: Arc<Inner>,
        record: WorkflowRecord,
        revision: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 'a>>;
}

struct Definition<W>(Arc<W>);

impl<W: Workflow> Driver for Definition<W> {
    fn advance<'a>(
        &'a self,
        inner: Arc<Inner>,
        record: WorkflowRecord,
        revision: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 'a>> {
        Box::pin(drive(self.0.as_ref(), inner, record, revision))
    }
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

    /// Workflows of `kind` in `state` created at or after `since`, newest first, from the index.
    pub async fn list(
        &self,
        kind: &str,
        state: WorkflowState,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<IndexEntry>, EngineError> {
        index::list(&self.inner.kv, kind, state, since).await
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
        let created = self.store.create(&record).await?;
        if created {
            index::put(&self.kv, &record, None).await?;
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

    /// Writes `record` over `revision` and keeps the index in step (`indexed` is the state the
    /// index holds, updated here). The owner is the only writer, so a conflict means someone else
    /// advanced the workflow and this advance must stop.
    pub(crate) async fn write(
        &self,
        record: &mut WorkflowRecord,
        revision: u64,
        indexed: &mut WorkflowState,
    ) -> Result<u64, EngineError> {
        record.updated_at = self.clock.now();
        let next = self.store.replace(record, revision).await?;
        // A waiting workflow is re-indexed on every write: its wake time may have changed.
        if *indexed != record.state || record.state == WorkflowState::Waiting {
            index::put(&self.kv, record, Some(*indexed)).await?;
            *indexed = record.state;
        }
        Ok(next)
    }
}

/// Replays `definition` over `record` once: runs what is not recorded yet, until the workflow
/// ends, waits or fails transiently.
async fn drive<W: Workflow>(
    definition: &W,
    inner: Arc<Inner>,
    mut record: WorkflowRecord,
    revision: u64,
) -> Result<(), Halt> {
    let indexed = record.state;
    if record.state != WorkflowState::Waiting {
        record.wait = None;
    }
    let mut run = Run::<W> {
        inner,
        record,
        revision,
        indexed,
        _definition: PhantomData,
    };
    if run.record.state == WorkflowState::Compensating {
        return compensate(definition, &mut run, None).await;
    }
    if run.record.state == WorkflowState::Pending {
        run.record.state = WorkflowState::Running;
        run.save().await?;
    }
    let input = run
        .record
        .data
        .get("input")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let input: W::Input = match serde_json::from_value(input) {
        Ok(i) => i,
        Err(e) => {
            return end(
                &mut run,
                WorkflowState::Failed,
                Some(format!("the recorded input does not decode: {e}")),
                None,
            )
            .await;
        }
    };
    match definition.run(&mut run, input).await {
        Ok(output) => {
            let output = serde_json::to_value(&output).map_err(|e| EngineError::Encode {
                id: run.record.id.clone(),
                source: e,
            })?;
            end(&mut run, WorkflowState::Succeeded, None, Some(output)).await
        }
        Err(Halt::Step(e)) if e.kind != ErrorKind::Transient => {
            run.record.state = WorkflowState::Compensating;
            run.record.error = Some(e.to_string());
            run.save().await?;
            let end_state = if e.kind == ErrorKind::Refused {
                WorkflowState::Cancelled
            } else {
                WorkflowState::Failed
            };
            compensate(definition, &mut run, Some(end_state)).await
        }
        Err(other) => Err(other),
    }
}

/// Undoes the completed steps that registered an undo, newest first, each once; then ends the
/// workflow (`Failed`, or `Cancelled` after a refusal).
async fn compensate<W: Workflow>(
    definition: &W,
    run: &mut Run<W>,
    end_state: Option<WorkflowState>,
) -> Result<(), Halt> {
    let end_state = end_state
        .or_else(|| {
            run.record
                .data
                .get("end_state")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        })
        .unwrap_or(WorkflowState::Failed);
    if let Some(data) = run.record.data.as_object_mut() {
        data.insert("end_state".into(), json!(end_state));
    }
    let mut undo_failures = Vec::new();
    for i in (0..run.record.steps.len()).rev() {
        let step = &run.record.steps[i];
        let Some(undo) = step
            .undo
            .clone()
            .filter(|_| step.state == StepState::Succeeded)
        else {
            continue;
        };
        let name = step.name.clone();
        let undo: W::Undo = match serde_json::from_value(undo) {
            Ok(u) => u,
            Err(e) => {
                undo_failures.push(format!("{name}: the recorded undo does not decode: {e}"));
                continue;
            }
        };
        match definition.undo(undo).await {
            Ok(()) => {
                run.record.steps[i].state = StepState::Compensated;
                run.save().await?;
            }
            Err(e) if e.kind == ErrorKind::Transient => return Err(Halt::Step(e)),
            Err(e) => undo_failures.push(format!("{name}: {e}")),
        }
    }
    let mut error = run.record.error.clone();
    if !undo_failures.is_empty() {
        let base = error.unwrap_or_default();
        error = Some(format!(
            "{base}; compensation failed: {}",
            undo_failures.join("; ")
        ));
    }
    end(run, end_state, error, None).await
}

async fn end<W: Workflow>(
    run: &mut Run<W>,
    state: WorkflowState,
    error: Option<String>,
    output: Option<serde_json::Value>,
) -> Result<(), Halt> {
    run.record.state = state;
    run.record.error = error;
    run.record.wait = None;
    if let (Some(output), Some(data)) = (output, run.record.data.as_object_mut()) {
        data.insert("output".into(), output);
    }
    run.save().await?;
    if let Some(parent) = run.record.parent.clone() {
        let (parent_record, _) = run
            .inner
            .store
            .get(&parent)
            .await
            .map_err(EngineError::from)?
            .ok_or_else(|| EngineError::Vanished(parent.clone()))?;
        run.inner
            .advance(
                &parent_record.kind,
                &parent,
                &format!("child/{}", run.record.id),
            )
            .await?;
    }
    Ok(())
}

/// The advance consumer of one kind.
struct Advance {
    inner: Arc<Inner>,
    driver: Arc<dyn Driver>,
}

impl Handler<WorkflowAdvance> for Advance {
    async fn handle(&self, delivery: Delivery<WorkflowAdvance>) -> Outcome {
        let id = delivery.message.id;
        let lease_key = format!("workflow/{}", proxflow_schemas::names::key::key_part(&id));
        let holder = format!("{}-{}", self.inner.instance, nuid::next());
        let lease = match self
            .inner
            .leases
            .acquire(&lease_key, &holder, "advancing the workflow")
            .await
        {
            Ok(Acquired::Held(lease)) => lease,
            // Another advance is running it; look again shortly so nothing it missed is lost.
            Ok(Acquired::Busy(_)) => return Outcome::retry_after("busy", BUSY_RETRY),
            Err(e) => return Outcome::retry(e.to_string()),
        };
        let outcome = self.advance(&id).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(workflow = %id, error = %e, "workflow lease not released; it ages out");
        }
        outcome
    }
}

impl Advance {
    async fn advance(&self, id: &str) -> Outcome {
        let (record, revision) = match self.inner.store.get(id).await {
            Ok(Some(found)) => found,
            Ok(None) => return Outcome::poison(format!("workflow {id} does not exist")),
            Err(e) if e.is_transient() => return Outcome::retry(e.to_string()),
            Err(e) => return Outcome::poison(e.to_string()),
        };
        if record.state.is_terminal() {
            // Woken although it ended: the index still lists it as live. Repair that, so the
            // waker stops waking it.
            return match index::settle(&self.inner.kv, &record).await {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::retry(e.to_string()),
            };
        }
        let span = tracing::info_span!(
            "workflow.advance",
            otel.name = %format_args!("{} {} advance", record.kind, id),
            workflow = %id,
            kind = %record.kind,
        );
        // Whatever woke it (a timer, a signal, a child, a restart), the advance joins the trace the
        // workflow started in.
        if let Some(parent) = record.traceparent.as_deref() {
            crate::telemetry::set_parent_from_traceparent(&span, parent);
        }
        let result = tracing::Instrument::instrument(
            self.driver
                .advance(Arc::clone(&self.inner), record, revision),
            span,
        )
        .await;
        match result {
            Ok(()) | Err(Halt::Suspended) => Outcome::Ack,
            Err(Halt::Step(e)) => Outcome::retry(e.to_string()),
            Err(Halt::Engine(e)) => Outcome::retry(e.to_string()),
        }
    }
}

/// Resumes due timers, expired signal waits and stale live workflows, until `shutdown`.
///
/// It keeps the index lines of its kinds' live workflows in memory from one KV watch (one consumer
/// for the engine's life, not a listing per tick) and looks at them every [`WAKE_EVERY`].
async fn waker(inner: Arc<Inner>, kinds: Vec<&'static str>, shutdown: CancellationToken) {
    let live = [
        WorkflowState::Waiting,
        WorkflowState::Running,
        WorkflowState::Pending,
        WorkflowState::Compensating,
    ];
    let filters: Vec<String> = kinds
        .iter()
        .flat_map(|kind| live.iter().map(move |state| index::filter(kind, *state)))
        .collect();
    let mut lines: HashMap<String, IndexEntry> = HashMap::new();
    // What was last sent per workflow, so a due workflow is woken once, not on every tick.
    let mut sent: HashMap<String, (String, Instant)> = HashMap::new();
    'watch: loop {
        let mut watch = match inner.kv.watch_many_with_history(filters.iter()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the workflow index; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(WATCH_RETRY) => continue 'watch,
                }
            }
        };
        lines.clear();
        let mut tick = tokio::time::interval(WAKE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        if entry.operation == kv::Operation::Put {
                            if let Ok(line) = serde_json::from_slice::<IndexEntry>(&entry.value) {
                                lines.insert(entry.key, line);
                            }
                        } else {
                            lines.remove(&entry.key);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "workflow index watch failed; watching again");
                        continue 'watch;
                    }
                    None => continue 'watch,
                },
                _ = tick.tick() => wake_due(&inner, &lines, &mut sent).await,
            }
        }
    }
}

/// Advances every live workflow that is due: a waiting one whose wake time passed, another one not
/// touched for [`STALE_AFTER`] (its advance was lost or its owner died mid-step).
async fn wake_due(
    inner: &Inner,
    lines: &HashMap<String, IndexEntry>,
    sent: &mut HashMap<String, (String, Instant)>,
) {
    let now = inner.clock.now();
    sent.retain(|_, (_, at)| at.elapsed() < RESEND_AFTER);
    for line in lines.values() {
        let reason = match line.state {
            WorkflowState::Waiting => match line.wake_at.filter(|at| *at <= now) {
                Some(at) => format!("wake/{}", at.timestamp_millis()),
                None => continue,
            },
            _ if now - line.updated_at > STALE_AFTER => {
                format!(
                    "stale/{}",
                    now.timestamp() / STALE_AFTER.num_seconds().max(1)
                )
            }
            _ => continue,
        };
        if sent.get(&line.id).is_some_and(|(r, _)| *r == reason) {
            continue;
        }
        match inner.advance(&line.kind, &line.id, &reason).await {
            Ok(()) => {
                sent.insert(line.id.clone(), (reason, Instant::now()));
            }
            Err(e) => {
                tracing::warn!(workflow = %line.id, error = %e, "could not wake the workflow")
            }
        }
    }
}

impl From<CasError> for EngineError {
    fn from(e: CasError) -> Self {
        EngineError::Kv(e)
    }
}
