//! What a workflow definition is: typed input and output, a `run` made of recorded steps and waits,
//! and the compensations its steps register.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::run::Run;

/// A kind of workflow. `run` is replayed from the top on every resume: each step it passes that
/// is already recorded returns its recorded output without running again, so `run` must take the
/// same steps in the same order given the same recorded outputs (branch on step outputs, never on
/// the wall clock or randomness outside a step).
pub trait Workflow: Send + Sync + Sized + 'static {
    /// The kind name (`provision`, `scale_out`, `remediate`, `patch_run`); the subject token of
    /// its advances and the index's first level, so letters, digits, `_` and `-` only.
    const KIND: &'static str;
    /// What it starts from; stored in the record.
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What it ends with; stored in the record.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// How a completed step is undone, as data stored with the step (an enum of the definition's
    /// compensations). Use `()` for a workflow without compensations.
    type Undo: Serialize + DeserializeOwned + Send + 'static;

    /// Write each step as `running` (one more compare-and-set) before it runs, not only when it
    /// ends: for definitions whose steps take long enough for an operator to watch (a provision's
    /// join runs for minutes), and so a crash inside a step counts as one of its attempts.
    const RECORD_STARTS: bool = false;

    /// Whether this process can run a workflow of `input` at all with its configuration (a
    /// provision naming a profile this provisioner does not have). A refusal parks the workflow as
    /// it is: nothing is recorded or compensated, its advance is dead-lettered as poison with the
    /// reason, and once the configuration is fixed a replay of that dead letter (`proxflow
    /// deadletters replay <seq>`) runs it. Asked before every advance but a compensation's.
    fn accepts(&self, input: &Self::Input) -> Result<(), Unrunnable> {
        let _ = input;
        Ok(())
    }

    /// Attempts a step may take: a transient failure on the last one is terminal (the workflow
    /// compensates) instead of being retried again.
    fn max_attempts(&self) -> u32 {
        u32::MAX
    }

    /// The workflow's body.
    fn run(
        &self,
        wf: &mut Run<Self>,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Halt>> + Send;

    /// Undoes one completed step after a later failure; called in reverse step order. An error of
    /// kind [`ErrorKind::Transient`] is retried (the compensation resumes where it stopped).
    fn undo(&self, undo: Self::Undo) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Called once the workflow's end is decided (after any compensation), before the end is
    /// recorded: announce it, free what the whole run held. A crash before the end is recorded
    /// calls it again on resume, so it must be idempotent (publish with the workflow's id as the
    /// dedupe key). A transient error is retried; any other is logged and the workflow ends anyway.
    fn ended(
        &self,
        id: &str,
        input: &Self::Input,
        ending: Ending<'_, Self::Output>,
    ) -> impl Future<Output = Result<(), StepError>> + Send {
        let _ = (id, input, ending);
        async { Ok(()) }
    }
}

/// How a workflow ended, as [`Workflow::ended`] hears it.
#[derive(Debug)]
pub enum Ending<'a, O> {
    /// `run` returned this output.
    Succeeded(&'a O),
    /// A step failed for good (compensated); the error says why.
    Failed(&'a str),
    /// A guard refused (compensated); the reason says why.
    Cancelled(&'a str),
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A passing failure (service unavailable, timeout): the step is tried again later, and the
    /// attempt spends a delivery of the workflow's advance.
    Transient,
    /// Trying again cannot help: the workflow compensates and fails.
    Terminal,
    /// A guard refused before anything was done: the workflow compensates and ends `cancelled`.
    Refused,
}

/// Why a step did not complete.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Whether trying again can help.
    pub kind: ErrorKind,
    /// What happened, for the record and the operator.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StepError {
    /// A transient failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// A failure retrying cannot fix.
    pub fn terminal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Terminal, message)
    }

    /// A refusal by a guard.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }

    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same, with its underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// Why this process cannot run a workflow at all ([`Workflow::accepts`]): what its configuration
/// lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unrunnable(pub String);

/// Why `run` stopped before returning its output. Steps and waits return it; `?` passes it up.
#[derive(Debug, thiserror::Error)]
pub enum Halt {
    /// The workflow waits (timer, signal, child); the wait is recorded and the engine resumes it.
    #[error("waiting")]
    Suspended,
    /// A step failed (see the error's kind).
    #[error(transparent)]
    Step(#[from] StepError),
    /// This process cannot run the workflow ([`Workflow::accepts`]): it is parked, untouched.
    #[error(transparent)]
    Unrunnable(#[from] Unrunnable),
    /// The engine could not record progress (KV unavailable, the record changed under its owner);
    /// the advance is tried again.
    #[error(transparent)]
    Engine(#[from] super::EngineError),
}
