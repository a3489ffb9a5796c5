//! Advancing a workflow: the advance consumer of one kind (`workflow-<kind>` on
//! `pf.cmd.workflow.<kind>`) takes the workflow's lease and replays its definition over its record
//! ([`drive`]), compensating after a terminal failure and waking the parent of an ended child.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proxflow_schemas::events::{DeadLetter, DeadLetterReason};
use proxflow_schemas::workflow::{StepState, WorkflowAdvance, WorkflowRecord, WorkflowState};
use serde_json::json;

use serde::Deserialize;

use super::definition::{Ending, ErrorKind, Halt, Workflow};
use super::engine::Inner;
use super::run::Run;
use super::{EngineError, WorkflowStoreError, index};
use crate::bus::{Delivery, Handler, Outcome};
use crate::lease::Acquired;

/// Pause before another look at a workflow whose lease another advance holds.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// A definition with its types erased, so the engine can hold several kinds.
pub(crate) trait Driver: Send + Sync {
    fn advance<'a>(
        &'a self,
        inner: Arc<Inner>,
        record: WorkflowRecord,
        revision: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 'a>>;
}

/// A registered definition.
pub(crate) struct Definition<W>(pub(crate) Arc<W>);

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

/// Replays `definition` over `record` once: runs what is not recorded yet, until the workflow
/// ends, waits or fails transiently.
async fn drive<W: Workflow>(
    definition: &W,
    inner: Arc<Inner>,
    mut record: WorkflowRecord,
    revision: u64,
) -> Result<(), Halt> {
    let indexed = index::Line::of(&record);
    if record.state != WorkflowState::Waiting {
        record.wait = None;
    }
    freeze_input(&mut record);
    let mut run = Run::<W> {
        inner,
        record,
        revision,
        indexed,
        max_attempts: definition.max_attempts(),
        _definition: PhantomData,
    };
    if run.record.state == WorkflowState::Compensating {
        return compensate(definition, &mut run, None).await;
    }
    let input: W::Input = match input_of::<W>(&run.record) {
        Ok(i) => i,
        Err(e) => {
            let error = format!("the recorded input does not decode: {e}");
            return end(
                definition,
                &mut run,
                WorkflowState::Failed,
                Some(error),
                None,
            )
            .await;
        }
    };
    // Before anything is recorded: a workflow this process cannot run stays exactly as it was.
    definition.accepts(&input)?;
    if run.record.state == WorkflowState::Pending {
        start(&mut run.record);
        run.save().await?;
    }
    match definition.run(&mut run, input).await {
        Ok(output) => {
            end(
                definition,
                &mut run,
                WorkflowState::Succeeded,
                None,
                Some(&output),
            )
            .await
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
    end(definition, run, end_state, error, None).await
}

/// A record an edge wrote in its kind's own layout (the request as the whole of `data`, as the
/// gateway writes a provision) gets that input frozen under `data.input` on its first advance, so
/// what the engine and `run` add to `data` later can never change what a replay decodes.
fn freeze_input(record: &mut WorkflowRecord) {
    if let Some(data) = record.data.as_object_mut()
        && !data.contains_key("input")
    {
        let input = serde_json::Value::Object(data.clone());
        data.insert("input".into(), input);
    }
}

/// The first advance of a pending workflow: it runs from now on, in the trace of the advance that
/// started it if it carries none.
fn start(record: &mut WorkflowRecord) {
    record.state = WorkflowState::Running;
    if record.traceparent.is_none() {
        record.traceparent = crate::telemetry::traceparent(&tracing::Span::current());
    }
}

/// The workflow's input: `data.input`, or the whole of `data` for a record not yet started that an
/// edge wrote in its kind's own layout.
fn input_of<W: Workflow>(record: &WorkflowRecord) -> Result<W::Input, serde_json::Error> {
    let input = record.data.get("input").unwrap_or(&record.data);
    W::Input::deserialize(input)
}

async fn end<W: Workflow>(
    definition: &W,
    run: &mut Run<W>,
    state: WorkflowState,
    error: Option<String>,
    output: Option<&W::Output>,
) -> Result<(), Halt> {
    let reason = error.as_deref().unwrap_or_default();
    let ending = match (state, output) {
        (WorkflowState::Succeeded, Some(output)) => Some(Ending::Succeeded(output)),
        (WorkflowState::Cancelled, _) => Some(Ending::Cancelled(reason)),
        (WorkflowState::Failed, _) => Some(Ending::Failed(reason)),
        _ => None,
    };
    match (input_of::<W>(&run.record), ending) {
        (Ok(input), Some(ending)) => match definition.ended(&run.record.id, &input, ending).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Transient => return Err(Halt::Step(e)),
            Err(e) => {
                tracing::error!(workflow = %run.record.id, error = %e, "announcing the end failed")
            }
        },
        (Err(e), _) => {
            tracing::warn!(workflow = %run.record.id, error = %e, "input unreadable; its end is not announced")
        }
        (Ok(_), None) => {}
    }
    run.record.state = state;
    run.record.error = error;
    run.record.wait = None;
    if let Some(output) = output {
        let output = serde_json::to_value(output).map_err(|e| EngineError::Encode {
            id: run.record.id.clone(),
            source: e,
        })?;
        if let Some(data) = run.record.data.as_object_mut() {
            data.insert("output".into(), output);
        }
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
pub(crate) struct Advance {
    pub(crate) inner: Arc<Inner>,
    pub(crate) driver: Arc<dyn Driver>,
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
            Err(Halt::Unrunnable(why)) => Outcome::poison(format!(
                "{why}; workflow {id} is parked as it was: fix the configuration, restart the \
                 service, then replay this dead letter"
            )),
            Err(Halt::Step(e)) => Outcome::retry(e.to_string()),
            Err(Halt::Engine(e)) => Outcome::retry(e.to_string()),
        }
    }
}

/// Advances of one kind its advance consumer gave up on (`pf.evt.deadletter.workflow-<kind>`): the
/// workflow could not be moved on through every retry, so it is compensated and ends `failed` with
/// the dead letter's reason, instead of showing `running` for ever and holding what it claimed.
/// A poisoned advance is not one it gave up on: the workflow was parked on purpose (this process
/// cannot run it, [`Workflow::accepts`], or its record is missing or unreadable) and waits for an
/// operator's replay, so it is left as it is.
pub(crate) struct GivenUp {
    pub(crate) inner: Arc<Inner>,
}

impl Handler<DeadLetter> for GivenUp {
    async fn handle(&self, delivery: Delivery<DeadLetter>) -> Outcome {
        let letter = delivery.message;
        if letter.reason == DeadLetterReason::Poison {
            return Outcome::Ack;
        }
        let advance: WorkflowAdvance = match serde_json::from_str(&letter.payload) {
            Ok(a) => a,
            Err(e) => {
                return Outcome::poison(format!("dead letter without a workflow advance: {e}"));
            }
        };
        let reason = format!(
            "the engine gave up after {} deliveries: {}",
            letter.deliveries, letter.detail
        );
        let mut before = None;
        let changed = self
            .inner
            .store
            .update(&advance.id, |r| {
                before = None;
                if !r.state.is_terminal() && r.state != WorkflowState::Compensating {
                    before = Some(r.state);
                    r.state = WorkflowState::Compensating;
                    r.error = Some(reason.clone());
                }
            })
            .await;
        match changed {
            Ok(record) if record.state.is_terminal() => Outcome::Ack,
            Ok(record) => {
                if let Some(before) = before
                    && let Err(e) = index::put(&self.inner.kv, &record, Some(before)).await
                {
                    return Outcome::retry(e.to_string());
                }
                match self
                    .inner
                    .advance(&advance.kind, &advance.id, "given-up")
                    .await
                {
                    Ok(()) => Outcome::Ack,
                    Err(e) => Outcome::retry(e.to_string()),
                }
            }
            Err(WorkflowStoreError::NotFound(_)) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}
