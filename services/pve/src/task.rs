//! Proxmox tasks: UPIDs and waiting for a worker to finish.
//!
//! Every long operation returns a UPID at once and runs in a forked worker. Its result is only in the
//! task status (`exitstatus`: `OK`, `WARNINGS: n` — a success — or the error text) and its log, so an
//! operation is done when its task says so, not when the HTTP call returns.

use std::time::{Duration, Instant};

use reqwest::Method;
use tracing::Instrument;

use crate::client::{Params, PveClient};
use crate::error::{ErrorKind, PveError};
use crate::types::{TaskLogLine, TaskStatus};

/// How many log lines a failed task's error carries.
pub const LOG_TAIL_LINES: usize = 10;

pub use proxflow_schemas::pve::{Upid, UpidError};

/// A task that ended successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDone {
    /// The task.
    pub upid: Upid,
    /// Number of warnings (`WARNINGS: n`); 0 for `OK`.
    pub warnings: u32,
}

/// Interprets a stopped task's `exitstatus`: Ok(warnings) for success, Err(text) for failure.
pub fn exit_outcome(exitstatus: &str) -> Result<u32, &str> {
    let status = exitstatus.trim();
    if status == "OK" {
        return Ok(0);
    }
    if let Some(n) = status.strip_prefix("WARNINGS:")
        && let Ok(n) = n.trim().parse()
    {
        return Ok(n);
    }
    Err(status)
}

impl PveClient {
    /// `GET /nodes/{node}/tasks/{upid}/status` (on the node that runs the task).
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, PveError> {
        self.call(Method::GET, &task_path(upid, "status"), &Params::new())
            .await
    }

    /// `GET /nodes/{node}/tasks/{upid}/log`: lines from `start` (0-based), at most `limit`, and the total.
    pub async fn task_log(
        &self,
        upid: &Upid,
        start: u64,
        limit: u64,
    ) -> Result<(Vec<TaskLogLine>, u64), PveError> {
        let path = task_path(upid, "log");
        let envelope = self
            .call_envelope(
                Method::GET,
                &path,
                &Params::new().set("start", start).set("limit", limit),
            )
            .await?;
        let lines: Vec<TaskLogLine> = envelope
            .get("data")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| PveError::new(ErrorKind::Decode, "GET", &path, Some(200), e.to_string()))?
            .unwrap_or_default();
        let total = envelope
            .get("total")
            .and_then(|t| {
                t.as_u64()
                    .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(start + lines.len() as u64);
        Ok((lines, total))
    }

    /// The last `n` lines of a task's log.
    pub async fn task_log_tail(&self, upid: &Upid, n: usize) -> Result<Vec<String>, PveError> {
        let (lines, total) = self.task_log(upid, 0, 1).await?;
        let start = total.saturating_sub(n as u64);
        let lines = if start == 0 && lines.len() as u64 >= total {
            lines
        } else {
            self.task_log(upid, start, n as u64).await?.0
        };
        Ok(lines.into_iter().map(|l| l.t).collect())
    }

    /// Waits for a task to stop, up to `deadline` (default `pve.task_timeout`). `WARNINGS: n` is success.
    /// A failed task's error carries the tail of its log; a task still running at the deadline is a
    /// [`ErrorKind::TaskTimeout`] (it was not cancelled). A fresh UPID that Proxmox does not know yet is
    /// polled again for `pve.fresh_task_grace`.
    pub async fn wait_task(
        &self,
        upid: &Upid,
        deadline: Option<Duration>,
    ) -> Result<TaskDone, PveError> {
        let span = tracing::info_span!(
            "pve.task.wait",
            pve.upid = %upid,
            pve.task_type = %upid.task_type,
            pve.id = %upid.id,
            outcome = tracing::field::Empty,
        );
        let result = self
            .wait_task_inner(upid, deadline)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            match &result {
                Ok(done) if done.warnings > 0 => "warnings",
                Ok(_) => "ok",
                Err(e) if e.kind == ErrorKind::TaskTimeout => "timeout",
                Err(_) => "failed",
            },
        );
        result
    }

    async fn wait_task_inner(
        &self,
        upid: &Upid,
        deadline: Option<Duration>,
    ) -> Result<TaskDone, PveError> {
        let started = Instant::now();
        let limit = deadline.unwrap_or(self.config().task_timeout);
        let grace = self.config().fresh_task_grace;
        let max_pause = self.config().task_poll_max;
        let mut pause = Duration::from_millis(20).min(max_pause);
        loop {
            match self.task_status(upid).await {
                Ok(status) if status.is_stopped() => {
                    let exit = status
                        .exitstatus
                        .unwrap_or_else(|| "unexpected status".into());
                    return match exit_outcome(&exit) {
                        Ok(warnings) => {
                            if warnings > 0 {
                                tracing::warn!(upid = %upid, warnings, "task finished with warnings");
                            }
                            Ok(TaskDone {
                                upid: upid.clone(),
                                warnings,
                            })
                        }
                        Err(text) => {
                            let tail = self
                                .task_log_tail(upid, LOG_TAIL_LINES)
                                .await
                                .unwrap_or_else(|e| vec![format!("(task log unavailable: {e})")]);
                            Err(PveError::task_failed(upid.as_str(), text, tail))
                        }
                    };
                }
                Ok(_) => {}
                // Proxmox registers the worker just after handing out its UPID.
                Err(e) if e.kind == ErrorKind::NotFound && started.elapsed() < grace => {}
                Err(e) => return Err(e),
            }
            let elapsed = started.elapsed();
            if elapsed >= limit {
                return Err(PveError::task_timeout(upid.as_str(), elapsed));
            }
            tokio::time::sleep(pause.min(limit - elapsed)).await;
            pause = (pause * 3 / 2).min(max_pause);
        }
    }
}

/// Characters that cannot stand in a path segment. A UPID's `:`, `@` and `!` stay literal, as Proxmox
/// clients send them.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'%');

fn task_path(upid: &Upid, what: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(upid.as_str(), SEGMENT);
    format!("/nodes/{}/tasks/{encoded}/{what}", upid.node)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn warnings_are_success() {
        assert_eq!(exit_outcome("OK"), Ok(0));
        assert_eq!(exit_outcome("WARNINGS: 3"), Ok(3));
        assert_eq!(
            exit_outcome("VM 101 already running"),
            Err("VM 101 already running")
        );
        assert_eq!(exit_outcome("WARNINGS: many"), Err("WARNINGS: many"));
    }
}
