//! Small test workflows for the engine: `demo` takes a step with an undo, waits on a timer, waits
//! for a signal with an expiry, runs a `leaf` child, and takes a last step that can be made to
//! fail. Every execution of a step body and of an undo is appended to a [`Journal`] (a file, so
//! that a test can count executions across processes it kills).

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use proxflow_runtime::workflow::{ChildOutcome, Halt, Run, StepError, Workflow};
use serde::{Deserialize, Serialize};

/// An append-only log of what ran, one line per execution.
#[derive(Debug, Clone)]
pub struct Journal(pub PathBuf);

impl Journal {
    /// Appends `line`.
    pub fn note(&self, line: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How often `line` was noted.
    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }
}

/// What a `demo` run is told to do; the default waits nowhere, fails nowhere and holds nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DemoInput {
    /// Seconds to wait on the timer after the first step.
    pub wait_secs: i64,
    /// Seconds after the first step at which the wait for `go` expires (`None`: never).
    pub go_expires_secs: Option<i64>,
    /// Make the last step fail for good.
    pub fail_last: bool,
    /// Make the child's step fail for good.
    pub fail_child: bool,
    /// Make the child wait for its own signal `release` before its step.
    pub hold_child: bool,
    /// Make the first step take this long (milliseconds), so a process can be killed inside it.
    #[serde(default)]
    pub slow_begin_ms: u64,
}

/// The `demo` workflow.
#[derive(Debug, Clone)]
pub struct Demo(pub Journal);

impl Workflow for Demo {
    const KIND: &'static str = "demo";
    type Input = DemoInput;
    type Output = String;
    type Undo = String;

    async fn run(&self, wf: &mut Run<Self>, input: DemoInput) -> Result<String, Halt> {
        let journal = self.0.clone();
        let now = wf.now();
        let id = wf.id().to_string();
        let slow = std::time::Duration::from_millis(input.slow_begin_ms);
        let begun: DateTime<Utc> = wf
            .step_undo(
                "begin",
                async move {
                    journal.note(&format!("{id} begin"));
                    tokio::time::sleep(slow).await;
                    journal.note(&format!("{id} begun"));
                    Ok(now)
                },
                |_| "begin".to_string(),
            )
            .await?;
        wf.sleep_until("cool", begun + chrono::Duration::seconds(input.wait_secs))
            .await?;
        let expires = input
            .go_expires_secs
            .map(|s| begun + chrono::Duration::seconds(s));
        let Some(go) = wf.signal::<String>("go", expires).await? else {
            return Err(StepError::refused("no go before the wait expired").into());
        };
        let leaf = wf
            .child::<Leaf>(
                "leaf",
                &LeafInput {
                    word: go.clone(),
                    fail: input.fail_child,
                    hold: input.hold_child,
                },
            )
            .await?;
        let leaf = match leaf {
            ChildOutcome::Succeeded(out) => out,
            ChildOutcome::Failed(e) => {
                return Err(StepError::terminal(format!("leaf failed: {e}")).into());
            }
        };
        let journal = self.0.clone();
        let id = wf.id().to_string();
        let fail = input.fail_last;
        wf.step_undo(
            "finish",
            async move {
                journal.note(&format!("{id} finish"));
                if fail {
                    Err(StepError::terminal("finish failed as asked"))
                } else {
                    Ok(())
                }
            },
            |_| "finish".to_string(),
        )
        .await?;
        Ok(format!("{go}/{leaf}"))
    }

    async fn undo(&self, undo: String) -> Result<(), StepError> {
        self.0.note(&format!("undo {undo}"));
        Ok(())
    }
}

/// What a `leaf` child is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeafInput {
    /// Echoed back, upper-cased.
    pub word: String,
    /// Fail for good.
    pub fail: bool,
    /// Wait for the signal `release` first.
    pub hold: bool,
}

/// The `leaf` child workflow: one step.
#[derive(Debug, Clone)]
pub struct Leaf(pub Journal);

impl Workflow for Leaf {
    const KIND: &'static str = "leaf";
    type Input = LeafInput;
    type Output = String;
    type Undo = ();

    async fn run(&self, wf: &mut Run<Self>, input: LeafInput) -> Result<String, Halt> {
        if input.hold {
            wf.signal::<()>("release", None).await?;
        }
        let journal = self.0.clone();
        let id = wf.id().to_string();
        let out = wf
            .step("shout", async move {
                journal.note(&format!("{id} shout"));
                if input.fail {
                    Err(StepError::terminal("the leaf failed as asked"))
                } else {
                    Ok(input.word.to_uppercase())
                }
            })
            .await?;
        Ok(out)
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }
}
