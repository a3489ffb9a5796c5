//! The `patch_run` workflow. Round by round: scan → plan; the targets without major changes (and,
//! once approved, those with them) are patched one at a time, VMs first (agents, then servers),
//! the host last; then, if major changes remain, the run asks for a decision on their approval
//! hash and waits for it until the end of the next window (at that window's start it scans again,
//! patches what is minor by then, and asks again). An approval resumes the run in a window with a
//! fresh scan: the same approval hash proceeds, a changed plan voids the approval and asks again.
//! A rejection holds the packages until a newer version replaces them.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use proxflow_runtime::kv::{self, Change};
use proxflow_runtime::workflow::{Ending, Halt, Run, StepError, Workflow};
use proxflow_schemas::patch::{
    Awaiting, Decision, NodeReport, PatchEventKind, PatchPlan, PatchRunInput, TargetKind, Verdict,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::guest::Vm;
use crate::node::NodeOutcome;
use crate::ops::Ops;
use crate::scan::{Holds, holds_key};

/// The definition.
#[derive(Clone)]
pub(crate) struct PatchRun {
    pub(crate) ops: Arc<Ops>,
}

/// What a run ends with (also noted in the record as `report`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Whether nothing was changed on purpose.
    pub dry_run: bool,
    /// The last plan's hash.
    pub plan_hash: String,
    /// Per target, in the order they were done.
    pub nodes: Vec<NodeReport>,
    /// Targets skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Targets whose major changes were not applied (no decision in time, or rejected).
    pub deferred: Vec<(String, String)>,
}

/// What asking for a decision recorded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Asked {
    /// The decision's deadline.
    expires: DateTime<Utc>,
    /// Until when this round waits (the next window's start, if that comes first).
    until: DateTime<Utc>,
}

/// The signal a run waits on in round `round`.
pub fn decision_signal(round: u32) -> String {
    format!("decision.{round}")
}

impl Workflow for PatchRun {
    const KIND: &'static str = crate::KIND;
    type Input = PatchRunInput;
    type Output = RunReport;
    type Undo = ();
    // Upgrades and reboots take minutes: an operator watches the step that runs, and a crash
    // inside one counts as its attempt.
    const RECORD_STARTS: bool = true;

    async fn run(&self, wf: &mut Run<Self>, input: PatchRunInput) -> Result<RunReport, Halt> {
        let run = wf.id().to_string();
        let ops = Arc::clone(&self.ops);
        let mut report = RunReport {
            dry_run: input.dry_run,
            ..RunReport::default()
        };
        let mut approved: Option<Decision> = None;
        // Until when the decision asked for first may come (the end of the next window); later
        // rounds of the same run keep it.
        let mut deadline: Option<DateTime<Utc>> = None;
        for round in 0u32.. {
            let now = wf.now();
            let name = format!("scan.{round}");
            let plan: PatchPlan = wf
                .step(&name, async {
                    let plan = ops.scan(now).await?;
                    let detail = format!(
                        "{} target(s) with changes, {} needing approval",
                        plan.targets.len(),
                        plan.targets.iter().filter(|t| t.is_major()).count()
                    );
                    let data = json!({"hash": plan.hash, "approval_hash": plan.approval_hash});
                    ops.event(&run, &name, PatchEventKind::Planned, None, detail, data)
                        .await?;
                    Ok(plan)
                })
                .await?;
            report.plan_hash.clone_from(&plan.hash);
            wf.note("plan", &plan);
            wf.note("plan_hash", &plan.hash);
            wf.note("approval_hash", &plan.approval_hash);
            if input.dry_run {
                let verdicts = wf
                    .step("dry_run.gates", async {
                        // The platform's gates once, each VM's own after.
                        let global = ops.gates.global(now).await?;
                        let mut out = vec![("platform".to_string(), global)];
                        for t in &plan.targets {
                            if let Some(vmid) = t.vmid {
                                out.push((t.target.clone(), ops.gates.target(vmid).await?));
                            }
                        }
                        Ok(out)
                    })
                    .await?;
                wf.note("gates", &verdicts);
                wf.note("report", &report);
                return Ok(report);
            }
            // An approval covers exactly the approval hash it names, until it expires: judged in a
            // step, so a replay takes the branch the first run took.
            if let Some(d) = approved.take() {
                let name = format!("check.{round}");
                let current = plan.approval_hash.clone();
                let void: Option<String> = wf
                    .step(&name, async {
                        Ok(if current.as_deref() != Some(d.plan_hash.as_str()) {
                            Some(format!(
                                "the plan changed since {} approved {} (now {})",
                                d.by,
                                short(&d.plan_hash),
                                current.as_deref().map_or("nothing to approve", short)
                            ))
                        } else if ops.clock.now() > d.expires_at {
                            Some(format!(
                                "the approval by {} expired at {}",
                                d.by, d.expires_at
                            ))
                        } else {
                            None
                        })
                    })
                    .await?;
                match void {
                    Some(why) => {
                        let name = format!("void.{round}");
                        self.announce(
                            wf,
                            &name,
                            PatchEventKind::ApprovalVoid,
                            None,
                            why,
                            json!(null),
                        )
                        .await?;
                    }
                    None => approved = Some(d),
                }
            }
            let approver = approved.as_ref().map(|d| d.by.clone());
            for t in plan
                .targets
                .iter()
                .filter(|t| !t.is_major() || approved.is_some())
            {
                // One child span per node in the run's trace; its steps nest under it.
                let span = tracing::info_span!(
                    "patch.node",
                    otel.name = %format_args!("patch {}", t.target),
                    target = %t.target,
                    round,
                );
                let outcome = match t.kind {
                    TargetKind::Host => {
                        self.patch_host(wf, round, t, approver.as_deref())
                            .instrument(span)
                            .await?
                    }
                    _ => {
                        self.patch_vm(wf, round, t, approver.as_deref())
                            .instrument(span)
                            .await?
                    }
                };
                match outcome {
                    NodeOutcome::Done(r) => report.nodes.push(r),
                    NodeOutcome::Skipped(why) => report.skipped.push((t.target.clone(), why)),
                    NodeOutcome::Failed(why) => {
                        wf.note("report", &report);
                        return Err(StepError::terminal(format!("{}: {why}", t.target)).into());
                    }
                }
                wf.note("report", &report);
            }
            let deferred: Vec<_> = plan
                .targets
                .iter()
                .filter(|t| t.is_major() && approved.is_none())
                .collect();
            let Some(approval_hash) = plan.approval_hash.clone().filter(|_| !deferred.is_empty())
            else {
                wf.note("report", &report);
                return Ok(report);
            };
            let name = format!("ask.{round}");
            let asked: Asked = wf
                .step(&name, async {
                    let expires = match deadline {
                        Some(d) => d,
                        None => ops.window.approval_expiry(now).ok_or_else(|| {
                            StepError::terminal("the patch window never opens again")
                        })?,
                    };
                    // A window that opens before the deadline is not wasted on the waiting: the run
                    // goes on at its start (the minor targets of a new scan are patched) and asks
                    // again.
                    let until = ops
                        .window
                        .next_after(now)
                        .map_or(expires, |s| s.start.min(expires));
                    let majors: Vec<_> = deferred
                        .iter()
                        .map(|t| json!({"target": t.target, "majors": t.majors}))
                        .collect();
                    let detail = format!(
                        "approve plan {} with `proxflow patch approve {run} --plan {}` before {expires}",
                        short(&approval_hash),
                        short(&approval_hash)
                    );
                    let data = json!({"approval_hash": approval_hash, "expires_at": expires, "majors": majors});
                    ops.event(&run, &name, PatchEventKind::ApprovalRequested, None, detail, data)
                        .await?;
                    Ok(Asked { expires, until })
                })
                .await?;
            let expires_at = asked.expires;
            deadline = Some(expires_at);
            let requested_at = wf
                .record()
                .steps
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.finished_at);
            wf.note(
                "awaiting",
                Awaiting {
                    signal: decision_signal(round),
                    approval_hash: approval_hash.clone(),
                    requested_at,
                    expires_at,
                },
            );
            let decision: Option<Decision> = wf
                .signal(&decision_signal(round), Some(asked.until))
                .await?;
            wf.note("awaiting", serde_json::Value::Null);
            if decision.is_none() && asked.until < expires_at {
                // The next window opened without a decision: scan again, patch what is minor now,
                // and ask again (the same deadline).
                continue;
            }
            let Some(decision) = decision else {
                let name = format!("expired.{round}");
                let detail = format!(
                    "no decision on {} before {expires_at}; the major changes wait for a later run",
                    short(&approval_hash)
                );
                self.announce(
                    wf,
                    &name,
                    PatchEventKind::ApprovalVoid,
                    None,
                    detail,
                    json!(null),
                )
                .await?;
                report.deferred = deferred
                    .iter()
                    .map(|t| (t.target.clone(), "no decision in time".to_string()))
                    .collect();
                wf.note("report", &report);
                return Ok(report);
            };
            let name = format!("decided.{round}");
            let kind = match decision.verdict {
                Verdict::Approve => PatchEventKind::Approved,
                Verdict::Reject => PatchEventKind::Rejected,
            };
            let d = decision.clone();
            let detail = format!("{} by {}", kind.token(), d.by);
            self.announce(wf, &name, kind, None, detail, json!(d))
                .await?;
            if decision.verdict == Verdict::Reject {
                let name = format!("hold.{round}");
                wf.step(&name, async {
                    for t in &deferred {
                        self.hold(t).await?;
                    }
                    Ok(())
                })
                .await?;
                report.deferred = deferred
                    .iter()
                    .map(|t| (t.target.clone(), format!("rejected by {}", decision.by)))
                    .collect();
                wf.note("report", &report);
                return Ok(report);
            }
            // Approved: go on in a window, with a fresh scan that must show the same changes.
            let name = format!("resume.{round}");
            let at = wf
                .step(&name, async {
                    let now = ops.clock.now();
                    Ok(match ops.window.current(now) {
                        Some(_) => now,
                        None => ops.window.next_after(now).map_or(now, |s| s.start),
                    })
                })
                .await?;
            wf.sleep_until(&format!("{name}.wait"), at).await?;
            approved = Some(decision);
        }
        Ok(report)
    }

    async fn undo(&self, (): ()) -> Result<(), StepError> {
        Ok(())
    }

    async fn ended(
        &self,
        id: &str,
        input: &PatchRunInput,
        ending: Ending<'_, RunReport>,
    ) -> Result<(), StepError> {
        let (detail, ok) = match &ending {
            Ending::Succeeded(r) => (
                format!(
                    "{} target(s) patched, {} skipped, {} deferred",
                    r.nodes.len(),
                    r.skipped.len(),
                    r.deferred.len()
                ),
                true,
            ),
            Ending::Failed(why) | Ending::Cancelled(why) => ((*why).to_string(), false),
        };
        if ok && !input.dry_run {
            let at = self.ops.clock.now().timestamp() as f64;
            self.ops.metrics.last_success.set([], at);
        }
        self.ops
            .event(
                id,
                "ended",
                PatchEventKind::Finished,
                None,
                detail,
                json!({"ok": ok}),
            )
            .await
    }
}

impl PatchRun {
    /// Publishes one event as its own recorded step `name` (published once; a replay reads it).
    pub(crate) async fn announce(
        &self,
        wf: &mut Run<Self>,
        name: &str,
        kind: PatchEventKind,
        target: Option<&str>,
        detail: String,
        data: serde_json::Value,
    ) -> Result<(), Halt> {
        let run = wf.id().to_string();
        wf.step(name, self.ops.event(&run, name, kind, target, detail, data))
            .await
    }

    /// Holds a rejected target's major packages (`apt-mark hold` on a VM) and records them, with
    /// the rejected version, so a newer version is offered again.
    async fn hold(&self, t: &proxflow_schemas::patch::TargetPlan) -> Result<(), StepError> {
        let packages: Vec<(String, String)> = t
            .majors
            .iter()
            .filter_map(|m| m.package.clone())
            .filter_map(|p| {
                t.changes
                    .iter()
                    .find(|c| c.package == p)
                    .and_then(|c| c.to.clone())
                    .map(|v| (p, v))
            })
            .collect();
        if let Some(vmid) = t.vmid {
            let vm = Vm {
                vmid,
                name: t.name.clone(),
                ip: t.address.clone().unwrap_or_default(),
            };
            let names: Vec<String> = packages.iter().map(|(p, _)| p.clone()).collect();
            // A package the upgrade would newly install is not there to hold; the record keeps
            // it out of the plan.
            let installed = self.ops.guest.installed(&vm).await?;
            let present: Vec<String> = names
                .into_iter()
                .filter(|p| installed.contains_key(p))
                .collect();
            self.ops.guest.mark(&vm, true, &present).await?;
        }
        kv::change(
            &self.ops.kv,
            &holds_key(&t.target),
            |current: Option<Holds>| {
                let mut holds = current.unwrap_or_default();
                holds.extend(packages.iter().cloned());
                Change::Write(holds, ())
            },
        )
        .await
        .map_err(|e| StepError::transient(e.to_string()).with_source(e))?;
        Ok(())
    }
}

/// A hash as people read it.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
