//! The `capacity_review` workflow: `compute` (read the window's samples, the RRDs, the VMs and the
//! datasets; compute the review) → `write` (the Markdown and JSON reports into
//! `capacity.review.dir`) → `announce` (`pf.evt.capacity.review`). Each step's output is recorded,
//! so a crash after `compute` does not read a month of samples again, and a start of a window
//! already reviewed (same id, [`CapacityReviewInput::workflow_id`]) is the same run.

use std::path::PathBuf;

use proxflow_runtime::bus::Publisher;
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::workflow::{Halt, Run, StepError, Workflow};
use proxflow_schemas::Message;
use proxflow_schemas::capacity_review::{CapacityReview, CapacityReviewInput, CapacityReviewed};

use crate::CapacityConfig;
use crate::review::write::{self, Written};
use crate::review::{self, Sources, Window};

/// Attempts of a step: a Proxmox or bus outage is waited out a few times, then the review fails
/// with the reason (the next start of the window tries again).
const MAX_ATTEMPTS: u32 = 5;

/// The definition, registered by the capacity service.
pub struct CapacityReviewFlow {
    /// What it reads.
    pub sources: Sources,
    /// `[capacity]` (rules' thresholds, `[capacity.review]`).
    pub config: CapacityConfig,
    /// Where the event goes.
    pub publisher: Publisher,
    /// The event's time.
    pub clock: SharedClock,
}

impl CapacityReviewFlow {
    async fn compute(&self, input: CapacityReviewInput) -> Result<CapacityReview, StepError> {
        let window = Window {
            from: input.from,
            to: input.to,
        };
        let parts = review::collect(&self.sources, &self.config, window)
            .await
            .map_err(|e| {
                let message = format!("{e}");
                if e.is_transient() {
                    StepError::transient(message).with_source(e)
                } else {
                    StepError::terminal(message).with_source(e)
                }
            })?;
        Ok(review::assemble(parts, &self.config))
    }

    fn write(&self, id: &str, report: &CapacityReview) -> Result<Written, StepError> {
        let dir: PathBuf = self.config.review.dir.clone();
        // A full or read-only disk may be fixed by someone; retried within the attempts.
        write::write(&dir, id, report)
            .map_err(|e| StepError::transient(e.to_string()).with_source(e))
    }
}

impl Workflow for CapacityReviewFlow {
    const KIND: &'static str = proxflow_schemas::capacity_review::KIND;
    type Input = CapacityReviewInput;
    type Output = Written;
    type Undo = ();

    fn max_attempts(&self) -> u32 {
        MAX_ATTEMPTS
    }

    async fn run(&self, wf: &mut Run<Self>, input: CapacityReviewInput) -> Result<Written, Halt> {
        let id = wf.id().to_string();
        let report: CapacityReview = wf.step("compute", self.compute(input)).await?;
        let written = wf.step("write", async { self.write(&id, &report) }).await?;
        let summary = review::summary(&report);
        wf.note("summary", &summary);
        let soonest = report.soonest().map(|(t, d)| (t.metric.clone(), d));
        wf.step("announce", async {
            let event = CapacityReviewed {
                workflow_id: id.clone(),
                node: report.node.clone(),
                from: report.from,
                to: report.to,
                summary: summary.clone(),
                soonest_metric: soonest.as_ref().map(|s| s.0.clone()),
                soonest_days: soonest.as_ref().map(|s| s.1),
                memory_commitment_ratio: report.commitment.ratio,
                headroom_gib: report.commitment.headroom_gib,
                markdown_path: written.markdown_path.clone(),
                json_path: written.json_path.clone(),
                sha256: written.sha256.clone(),
                at: self.clock.now(),
            };
            self.publisher.publish(&event).await.map_err(|e| {
                StepError::transient(format!("publishing {}: {e}", CapacityReviewed::SUBJECT))
            })?;
            tracing::info!(review = %id, %summary, path = %written.markdown_path, "capacity review written");
            Ok(())
        })
        .await?;
        Ok(written)
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        // Nothing to undo: a review only reads, and its files are replaced by the next attempt.
        Ok(())
    }
}
