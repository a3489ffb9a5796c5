//! Starts the window's run when a window opens: one run per opening (its id is the opening's
//! start, so a restart inside the window finds the run it started), none while an earlier run is
//! still going (it resumes itself), and none for a window that passed while proxflow was down —
//! that run happens at the next opening, not late at noon.

use std::time::Duration;

use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::workflow::Engine;
use proxflow_schemas::patch::PatchRunInput;
use proxflow_schemas::workflow::{Origin, WorkflowState};
use tokio_util::sync::CancellationToken;

use crate::window::{Span, Window};

/// How often the schedule looks at the clock.
const TICK: Duration = Duration::from_secs(2);

/// The id of the run of the opening `span`.
pub fn run_id(span: &Span) -> String {
    format!("patch-{}", span.start.format("%Y%m%dT%H%MZ"))
}

/// Starts scheduled runs.
pub(crate) struct Scheduler {
    pub(crate) engine: Engine,
    pub(crate) window: Window,
    pub(crate) clock: SharedClock,
}

/// Why the schedule could not look.
#[derive(Debug, thiserror::Error)]
#[error("patch schedule: {0}")]
pub struct ScheduleError(String);

impl Scheduler {
    pub(crate) async fn run(self, stop: CancellationToken) -> Result<(), ScheduleError> {
        // The opening whose run this process started (or found): not asked for again.
        let mut done: Option<String> = None;
        loop {
            if let Err(e) = self.tick(&mut done).await {
                // The engine's store may be briefly away; the next tick looks again.
                tracing::warn!(error = %e, "patch schedule could not look at the runs");
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn tick(&self, done: &mut Option<String>) -> Result<(), ScheduleError> {
        let now = self.clock.now();
        let Some(span) = self.window.current(now) else {
            return Ok(());
        };
        let id = run_id(&span);
        if done.as_deref() == Some(id.as_str()) {
            return Ok(());
        }
        for state in WorkflowState::LIVE {
            let busy = self
                .engine
                .list(crate::KIND, state, None)
                .await
                .map_err(|e| ScheduleError(e.to_string()))?;
            if !busy.is_empty() {
                return Ok(());
            }
        }
        let origin = Origin {
            source: "schedule".into(),
            reference: id.clone(),
            reason: format!("patch window {} – {}", span.start, span.end),
        };
        let input = PatchRunInput {
            dry_run: false,
            requested_by: "schedule".into(),
        };
        let created = self
            .engine
            .start_kind(crate::KIND, &id, origin, &input)
            .await
            .map_err(|e| ScheduleError(e.to_string()))?;
        if created {
            tracing::info!(run = %id, window_end = %span.end, "patch window opened; run started");
        }
        *done = Some(id);
        Ok(())
    }
}
