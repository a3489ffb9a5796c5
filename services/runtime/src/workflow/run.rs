//! [`Run`]: what a workflow's `run` uses to take steps and wait. Every completed step is written to
//! the record (one compare-and-set) before `run` moves on, and returned from the record on replay.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proxflow_schemas::workflow::{
    Origin, SignalRecord, StepRecord, StepState, Wait, WorkflowRecord, WorkflowState,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::definition::{ErrorKind, Halt, StepError, Workflow};
use super::engine::Inner;
use super::{EngineError, child_id};

/// A workflow's view of its own record while `run` executes. Owned by exactly one advance at a
/// time (the engine holds the workflow's lease), so its writes conflict with nobody.
pub struct Run<W: Workflow> {
    pub(super) inner: Arc<Inner>,
    pub(super) record: WorkflowRecord,
    pub(super) revision: u64,
    /// What the index holds for this workflow.
    pub(super) indexed: super::index::Line,
    /// [`Workflow::max_attempts`] of the definition.
    pub(super) max_attempts: u32,
    pub(super) _definition: PhantomData<fn() -> W>,
}

/// How a child workflow ended, as its parent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub enum ChildOutcome<T> {
    /// It succeeded with this output.
    Succeeded(T),
    /// It failed or was cancelled; the error says why.
    Failed(String),
}

impl<W: Workflow> Run<W> {
    /// The workflow id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Now, by the engine's clock. Decide on time inside a step (its output is recorded), not in
    /// `run` directly: a replay later would see another time.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The record as it stands (steps so far, origin).
    pub fn record(&self) -> &WorkflowRecord {
        &self.record
    }

    /// Shows `value` under `key` in the record's data, for readers (the CLI, the status page,
    /// operators) who should not have to parse step outputs; written with the next step. `run`
    /// never reads it back: its own truth is the steps' outputs.
    pub fn note(&mut self, key: &str, value: impl Serialize) {
        let Ok(value) = serde_json::to_value(value) else {
            return;
        };
        if let Some(data) = self.record.data.as_object_mut() {
            data.insert(key.to_string(), value);
        }
    }

    /// Runs `action` once and records its output; on replay returns the recorded output without
    /// running it.
    pub async fn step<T, F>(&mut self, name: &str, action: F) -> Result<T, Halt>
    where
        T: Serialize + DeserializeOwned + Send,
        F: Future<Output = Result<T, StepError>> + Send,
    {
        self.step_inner(name, action, |_| None).await
    }

    /// Like [`Run::step`], and registers how to undo it: if the workflow fails later, the
    /// definition's `undo` gets `undo(&output)`, in reverse step order.
    pub async fn step_undo<T, F>(
        &mut self,
        name: &str,
        action: F,
        undo: impl FnOnce(&T) -> W::Undo + Send,
    ) -> Result<T, Halt>
    where
        T: Serialize + DeserializeOwned + Send,
        F: Future<Output = Result<T, StepError>> + Send,
    {
        self.step_inner(name, action, |out| Some(undo(out))).await
    }

    async fn step_inner<T, F>(
        &mut self,
        name: &str,
        action: F,
        undo: impl FnOnce(&T) -> Option<W::Undo> + Send,
    ) -> Result<T, Halt>
    where
        T: Serialize + DeserializeOwned + Send,
        F: Future<Output = Result<T, StepError>> + Send,
    {
        if let Some(done) = self.recorded(name)? {
            return Ok(done);
        }
        let started = self.now();
        begin(&mut self.record, name, started);
        if W::RECORD_STARTS {
            self.save().await?;
        }
        let span = tracing::info_span!(
            "workflow.step",
            otel.name = %format_args!("step {name}"),
            workflow = %self.record.id,
            step = name,
        );
        let result = tracing::Instrument::instrument(action, span).await;
        match result {
            Ok(output) => {
                let value = to_value(name, &output)?;
                let undo = match undo(&output) {
                    Some(u) => Some(to_value(name, &u)?),
                    None => None,
                };
                self.complete(name, started, value, undo).await?;
                Ok(output)
            }
            Err(e) => Err(Halt::Step(self.failed_attempt(name, e).await?)),
        }
    }

    /// Waits until `until` (a durable timer: a restart in between resumes at `until`, not later
    /// and not earlier).
    pub async fn sleep_until(&mut self, name: &str, until: DateTime<Utc>) -> Result<(), Halt> {
        if self.recorded::<DateTime<Utc>>(name)?.is_some() {
            return Ok(());
        }
        if self.now() >= until {
            let now = self.now();
            self.complete(name, now, to_value(name, &until)?, None)
                .await?;
            return Ok(());
        }
        self.suspend(Wait::Timer {
            step: name.to_string(),
            until,
        })
        .await
    }

    /// Waits for the signal `name` until `expires_at` (`None`: for ever). `Some(payload)` when it
    /// came in time, `None` when the wait expired; either is recorded, so a signal arriving after
    /// the expiry is refused and never changes what `run` saw.
    pub async fn signal<T>(
        &mut self,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Option<T>, Halt>
    where
        T: Serialize + DeserializeOwned + Send,
    {
        if let Some(done) = self.recorded::<Option<T>>(name)? {
            return Ok(done);
        }
        let now = self.now();
        let received = self.inner.read_signal(&self.record.id, name).await?;
        let within = |s: &SignalRecord| expires_at.is_none_or(|e| s.at <= e);
        if let Some(signal) = received.filter(within) {
            let payload: T = serde_json::from_value(signal.payload).map_err(|e| {
                Halt::Step(StepError::terminal(format!(
                    "signal {name} does not decode as expected: {e}"
                )))
            })?;
            let got = Some(payload);
            self.complete(name, now, to_value(name, &got)?, None)
                .await?;
            return Ok(got);
        }
        if expires_at.is_some_and(|e| now >= e) {
            self.complete(name, now, serde_json::Value::Null, None)
                .await?;
            return Ok(None);
        }
        self.suspend(Wait::Signal {
            step: name.to_string(),
            name: name.to_string(),
            expires_at,
        })
        .await
    }

    /// Starts the child workflow `name` (once) and waits for it to end.
    pub async fn child<C: Workflow>(
        &mut self,
        name: &str,
        input: &C::Input,
    ) -> Result<ChildOutcome<C::Output>, Halt> {
        if let Some(done) = self.recorded(name)? {
            return Ok(done);
        }
        let id = child_id(&self.record.id, name);
        let origin = Origin {
            source: "workflow".into(),
            reference: self.record.id.clone(),
            reason: format!("step {name} of {} {}", self.record.kind, self.record.id),
        };
        self.inner
            .create(C::KIND, &id, origin, input, Some(self.record.id.clone()))
            .await?;
        let (child, _) = self
            .inner
            .store
            .get(&id)
            .await
            .map_err(EngineError::from)?
            .ok_or_else(|| EngineError::Vanished(id.clone()))?;
        if child.state.is_terminal() {
            let outcome = match child.state {
                WorkflowState::Succeeded => {
                    let output = child
                        .data
                        .get("output")
                        .cloned()
                        .unwrap_or(serde_json::Value::Null);
                    ChildOutcome::Succeeded(serde_json::from_value(output).map_err(|e| {
                        Halt::Step(StepError::terminal(format!(
                            "child {id}'s output does not decode: {e}"
                        )))
                    })?)
                }
                _ => ChildOutcome::Failed(child.error.unwrap_or_else(|| "ended".into())),
            };
            let now = self.now();
            self.complete(name, now, to_value(name, &outcome)?, None)
                .await?;
            return Ok(outcome);
        }
        self.inner.advance(C::KIND, &id, "start").await?;
        self.suspend(Wait::Child {
            step: name.to_string(),
            child: id,
        })
        .await
    }

    /// The recorded output of `name`, if it completed.
    fn recorded<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Halt> {
        let Some(step) = self.record.steps.iter().find(|s| s.name == name) else {
            return Ok(None);
        };
        if step.state != StepState::Succeeded {
            return Ok(None);
        }
        serde_json::from_value(step.output.clone())
            .map(Some)
            .map_err(|e| {
                Halt::Step(StepError::terminal(format!(
                    "step {name}'s recorded output does not decode (was the definition changed \
                     under a running workflow?): {e}"
                )))
            })
    }

    async fn complete(
        &mut self,
        name: &str,
        started: DateTime<Utc>,
        output: serde_json::Value,
        undo: Option<serde_json::Value>,
    ) -> Result<(), EngineError> {
        let now = self.now();
        let step = step_mut(&mut self.record, name, started);
        step.state = StepState::Succeeded;
        step.finished_at = Some(now);
        step.error = None;
        step.output = output;
        step.undo = undo;
        if self.record.state == WorkflowState::Waiting {
            self.record.wait = None;
            self.record.state = WorkflowState::Running;
        }
        self.save().await
    }

    /// Records a failed attempt of `name` (begun). A transient failure on the definition's last
    /// allowed attempt becomes terminal.
    async fn failed_attempt(
        &mut self,
        name: &str,
        mut error: StepError,
    ) -> Result<StepError, EngineError> {
        let now = self.now();
        let step = step_mut(&mut self.record, name, now);
        if error.kind == ErrorKind::Transient && step.attempts >= self.max_attempts {
            error.kind = ErrorKind::Terminal;
            error.message = format!(
                "{} (gave up after {} attempts)",
                error.message, step.attempts
            );
        }
        step.state = StepState::Failed;
        step.error = Some(error.to_string());
        step.finished_at = Some(now);
        self.save().await?;
        Ok(error)
    }

    async fn suspend<T>(&mut self, wait: Wait) -> Result<T, Halt> {
        self.record.state = WorkflowState::Waiting;
        self.record.wait = Some(wait);
        self.save().await?;
        Err(Halt::Suspended)
    }

    pub(super) async fn save(&mut self) -> Result<(), EngineError> {
        self.revision = self
            .inner
            .write(&mut self.record, self.revision, &mut self.indexed)
            .await?;
        Ok(())
    }
}

/// Step `name` begins an attempt: created (running, first attempt) if it is not recorded yet;
/// an existing one that failed, or was running when its process died, counts another attempt.
fn begin(record: &mut WorkflowRecord, name: &str, at: DateTime<Utc>) {
    match record.steps.iter_mut().find(|s| s.name == name) {
        Some(step) => {
            step.attempts += 1;
            step.state = StepState::Running;
            step.finished_at = None;
        }
        None => record.steps.push(StepRecord::started(name, at)),
    }
}

/// The step `name`, created (as running, first attempt) if it is not recorded yet.
fn step_mut<'a>(
    record: &'a mut WorkflowRecord,
    name: &str,
    started: DateTime<Utc>,
) -> &'a mut StepRecord {
    match record.steps.iter().position(|s| s.name == name) {
        Some(i) => &mut record.steps[i],
        None => {
            record.steps.push(StepRecord::started(name, started));
            let last = record.steps.len() - 1;
            &mut record.steps[last]
        }
    }
}

fn to_value<T: Serialize>(name: &str, value: &T) -> Result<serde_json::Value, Halt> {
    serde_json::to_value(value).map_err(|e| {
        Halt::Step(StepError::terminal(format!(
            "step {name}'s output does not encode: {e}"
        )))
    })
}
