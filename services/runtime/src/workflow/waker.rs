//! The waker: resumes due timers, expired signal waits and stale live workflows, and keeps the
//! live-workflow gauges ([`super::metrics`]) from the index lines it watches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use proxflow_schemas::workflow::{IndexEntry, WorkflowState};
use tokio_util::sync::CancellationToken;

use super::engine::Inner;
use super::index;
use super::metrics::LIVE;

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

/// Resumes due timers, expired signal waits and stale live workflows, until `shutdown`.
///
/// It keeps the index lines of its kinds' live workflows in memory from one KV watch (one consumer
/// for the engine's life, not a listing per tick) and looks at them every [`WAKE_EVERY`].
pub(crate) async fn waker(
    inner: Arc<Inner>,
    kinds: Vec<&'static str>,
    shutdown: CancellationToken,
) {
    let filters: Vec<String> = kinds
        .iter()
        .flat_map(|kind| {
            LIVE.iter()
                .map(move |state| index::filter(Some(kind), Some(*state)))
        })
        .collect();
    let mut lines: HashMap<String, IndexEntry> = HashMap::new();
    // What was last sent per workflow, so a due workflow is woken once, not on every tick.
    let mut sent: HashMap<String, (String, Instant)> = HashMap::new();
    'watch: loop {
        let mut watch = match inner.kv.watch_many_with_history(filters.iter()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(cause = %crate::bus::Cause::of(&e), error = %e, "cannot watch the workflow index; trying again");
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
                        tracing::warn!(cause = %crate::bus::Cause::of(&e), error = %e, "workflow index watch failed; watching again");
                        continue 'watch;
                    }
                    None => continue 'watch,
                },
                _ = tick.tick() => {
                    inner.metrics.set_live(&kinds, lines.values());
                    wake_due(&inner, &lines, &mut sent).await;
                }
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
