//! Task records and UPIDs (`UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`, as
//! pve-common's `upid_encode`), and the asynchronous worker that runs each task: it yields once
//! (so even at `time_scale = 0` the caller gets its UPID back before the task finishes), runs the
//! operation's start checks, waits the task's scaled duration, then applies the result. The state
//! lock is never held across an await.

use std::sync::Arc;
use std::time::Duration;

use proxflow_schemas::pve::Upid;
use serde_json::{Value, json};

use crate::Shared;
use crate::api::{TaskError, TaskOp};

/// Stopped tasks kept for `GET .../tasks` (oldest dropped first), bounding a long-running sim.
const KEEP_STOPPED: usize = 2000;

/// One task.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    pub(crate) upid: String,
    pub(crate) info: Upid,
    pub(crate) endtime: Option<i64>,
    pub(crate) exitstatus: Option<String>,
    pub(crate) log: Vec<String>,
    /// Status/log reads still to answer `no such task` (the `fresh_upid_unknown` fault).
    pub(crate) hidden_reads: u32,
}

impl TaskRecord {
    pub(crate) fn running(&self) -> bool {
        self.exitstatus.is_none()
    }

    /// The fields the status call and the task list share. A token's task carries the whole
    /// `user@realm!token` in its UPID, but PVE reports `user` and `tokenid` apart.
    fn identity_json(&self) -> Value {
        let (user, token) = match self.info.user.split_once('!') {
            Some((user, token)) => (user, Some(token)),
            None => (self.info.user.as_str(), None),
        };
        let mut v = json!({
            "upid": self.upid,
            "node": self.info.node,
            "pid": self.info.pid,
            "pstart": self.info.pstart,
            "starttime": self.info.starttime,
            "type": self.info.task_type,
            "id": self.info.id,
            "user": user,
        });
        if let Some(token) = token {
            v["tokenid"] = json!(token);
        }
        v
    }

    /// `GET .../tasks/{upid}/status`.
    pub(crate) fn status_json(&self) -> Value {
        let mut v = self.identity_json();
        v["status"] = json!(if self.running() { "running" } else { "stopped" });
        if let Some(exit) = &self.exitstatus {
            v["exitstatus"] = json!(exit);
        }
        v
    }

    /// An entry of `GET /nodes/{node}/tasks`.
    pub(crate) fn list_json(&self) -> Value {
        let mut v = self.identity_json();
        if let (Some(end), Some(exit)) = (self.endtime, &self.exitstatus) {
            v["endtime"] = json!(end);
            v["status"] = json!(exit);
        }
        v
    }
}

/// All tasks, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    pub(crate) list: Vec<TaskRecord>,
}

impl Tasks {
    pub(crate) fn get_mut(&mut self, upid: &str) -> Option<&mut TaskRecord> {
        self.list.iter_mut().rev().find(|t| t.upid == upid)
    }

    pub(crate) fn push(&mut self, task: TaskRecord) {
        self.list.push(task);
        let stopped = self.list.iter().filter(|t| !t.running()).count();
        if stopped > KEEP_STOPPED {
            let mut excess = stopped - KEEP_STOPPED;
            self.list.retain(|t| {
                if excess > 0 && !t.running() {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Ends a task: final log line and exit status.
    pub(crate) fn finish(&mut self, upid: &str, result: Result<u32, TaskError>, now: i64) {
        let Some(task) = self.get_mut(upid) else {
            return;
        };
        let exit = match result {
            Ok(0) => {
                task.log.push("TASK OK".into());
                "OK".to_owned()
            }
            Ok(warnings) => {
                task.log.push(format!("TASK WARNINGS: {warnings}"));
                format!("WARNINGS: {warnings}")
            }
            Err(error) => {
                let msg = error.to_string().trim_end().to_owned();
                task.log.push(format!("TASK ERROR: {msg}"));
                msg
            }
        };
        task.exitstatus = Some(exit);
        task.endtime = Some(now.max(i64::try_from(task.info.starttime).unwrap_or(i64::MAX)));
    }
}

/// A task created by a handler, to be run once the state lock is released.
#[derive(Debug)]
pub(crate) struct PendingTask {
    pub(crate) upid: String,
    pub(crate) op: TaskOp,
    pub(crate) delay: Duration,
}

/// Runs a task to completion unless the simulator shuts down first.
pub(crate) fn spawn(shared: &Arc<Shared>, pending: PendingTask) {
    let worker = Arc::clone(shared);
    let cancel = shared.cancel.clone();
    shared.tracker.spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = run(worker, pending) => {}
        }
    });
}

/// Runs a task: start checks, its duration, its effect (also awaited inline by a node's boot).
pub(crate) async fn run(shared: Arc<Shared>, pending: PendingTask) {
    // The handler's response (carrying the UPID) goes out before the task can finish.
    tokio::task::yield_now().await;
    let started = shared.lock().task_begin(&pending.upid, &pending.op);
    if let Err(error) = started {
        shared.lock().task_end(&pending.upid, Err(error));
        return;
    }
    tokio::time::sleep(pending.delay).await;
    let mut state = shared.lock();
    let result = state.task_finish(&pending.upid, &pending.op);
    state.task_end(&pending.upid, result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finishing_writes_the_last_log_line() {
        let mut tasks = Tasks::default();
        let injected = TaskError::Injected("VM 101 already running\n".to_owned());
        for (i, result) in [Ok(0), Ok(2), Err(injected)].into_iter().enumerate() {
            let upid = format!("u{i}");
            tasks.push(TaskRecord {
                upid: upid.clone(),
                info: "UPID:pve1:00000001:00000001:00000001:qmstart:101:root@pam:"
                    .parse()
                    .expect("valid"),
                endtime: None,
                exitstatus: None,
                log: vec![],
                hidden_reads: 0,
            });
            tasks.finish(&upid, result, 5);
        }
        let exits: Vec<_> = tasks.list.iter().map(|t| t.exitstatus.clone()).collect();
        assert_eq!(
            exits,
            vec![
                Some("OK".into()),
                Some("WARNINGS: 2".into()),
                Some("VM 101 already running".into())
            ]
        );
        assert_eq!(
            tasks.list[2].log,
            vec!["TASK ERROR: VM 101 already running"]
        );
    }
}
