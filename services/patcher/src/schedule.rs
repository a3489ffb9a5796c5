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

/// The run due at `now`: the open window's, none outside a window (a window missed while proxflow
/// was down is not made up for later).
pub fn due(window: &Window, now: chrono::DateTime<chrono::Utc>) -> Option<(String, Span)> {
    window.current(now).map(|span| (run_id(&span), span))
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
        let Some((id, span)) = due(&self.window, self.clock.now()) else {
            return Ok(());
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowConfig;

    #[test]
    fn a_run_is_due_only_inside_the_window_and_named_after_its_opening() {
        let window = WindowConfig::default().checked().expect("valid");
        let at = |s: &str| s.parse().expect("time");
        let (id, span) = due(&window, at("2026-12-06T02:10:00Z")).expect("due in the window");
        assert_eq!(id, "patch-20261206T0200Z");
        assert_eq!(span.end, at("2026-12-06T05:00:00Z"));
        // The same opening later on: the same run (starting it again changes nothing).
        assert_eq!(
            due(&window, at("2026-12-06T04:59:00Z")).map(|d| d.0),
            Some(id)
        );
        // Proxflow was down through the window: nothing at noon, the next opening's run next week.
        assert_eq!(due(&window, at("2026-12-06T12:00:00Z")), None);
        assert_eq!(
            due(&window, at("2026-12-13T02:00:00Z"))
                .map(|d| d.0)
                .as_deref(),
            Some("patch-20261213T0200Z")
        );
    }
}
