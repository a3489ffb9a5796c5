//! Patch runs at the edge: `POST /v1/patch/runs` (start one now, or a dry run), `GET
//! /v1/patch/runs` (the runs, newest first), and an approver's decision on a waiting run's plan —
//! `POST /v1/patch/runs/{id}/approve|reject` with `{"plan": "<hash>"}`.
//!
//! A decision is refused unless: the caller's bearer token is named in `patch.approvers` (403);
//! the run waits for a decision now (409 `run`); the hash names exactly the plan the run asks about
//! (409 `plan`, with the hash it does ask about); the decision window is still open (409 `plan`).
//! An accepted decision is a signal to the run (202); the run checks the hash once more against a
//! fresh scan before it acts, so an approval never covers packages that were not reviewed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use proxflow_runtime::workflow::{Engine, SignalError};
use proxflow_schemas::patch::{Decision, PatchRunInput, Verdict, hash_matches};
use proxflow_schemas::workflow::{Origin, Wait, WorkflowState};
use serde::Deserialize;
use serde_json::json;

use crate::api::{Api, Rejection, WORKFLOWS_PATH};
use crate::auth::Caller;
use crate::request::FieldErrors;

/// Path of the patch runs.
pub const PATCH_RUNS_PATH: &str = "/v1/patch/runs";
/// The workflow kind of a patch run.
const KIND: &str = "patch_run";
/// A comment longer than this is refused.
const MAX_COMMENT: usize = 1000;

/// What the patch endpoints need.
#[derive(Clone)]
pub struct PatchEdge {
    /// Starts runs and delivers decisions.
    pub engine: Engine,
    /// Token names that may decide (`patch.approvers`).
    pub approvers: Vec<String>,
}

impl std::fmt::Debug for PatchEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchEdge")
            .field("approvers", &self.approvers)
            .finish_non_exhaustive()
    }
}

fn field(name: &str, message: impl Into<String>) -> FieldErrors {
    FieldErrors::from([(name.to_string(), message.into())])
}

/// The JSON body of a request, refused field by field.
async fn body<T: for<'de> Deserialize<'de>>(
    api: &Api,
    request: Request,
) -> Result<(Caller, T), Rejection> {
    let (parts, body): (_, Body) = request.into_parts();
    let caller = api.auth.read(&parts.headers).map_err(|e| {
        tracing::info!(reason = %e, "credentials refused");
        Rejection::Unauthorized
    })?;
    let bytes = api.read_body(&parts.headers, body).await?;
    let bytes = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    let value = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::Invalid(field("body", format!("not the expected JSON: {e}"))))?;
    Ok((caller, value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/patch/runs`: starts a run now (outside the schedule) or a dry run.
pub(crate) async fn start(State(api): State<Arc<Api>>, request: Request) -> Response {
    match start_inner(&api, request).await {
        Ok(r) => r,
        Err(rejection) => rejection.into_response(),
    }
}

async fn start_inner(api: &Api, request: Request) -> Result<Response, Rejection> {
    let (caller, StartBody { dry_run }) = body(api, request).await?;
    api.ensure_connected()?;
    let now = Utc::now();
    let id = format!(
        "patch-{}-{}",
        if dry_run { "dry" } else { "now" },
        now.format("%Y%m%dT%H%M%S%3fZ")
    );
    let origin = Origin {
        source: "operator".into(),
        reference: caller.reference().to_string(),
        reason: if dry_run {
            "patch dry run"
        } else {
            "patch run on request"
        }
        .into(),
    };
    let input = PatchRunInput {
        dry_run,
        requested_by: caller.requested_by(),
    };
    api.patch
        .engine
        .start_kind(KIND, &id, origin, &input)
        .await
        .map_err(|e| Rejection::Unavailable(e.to_string()))?;
    let body = json!({
        "workflow_id": id,
        "dry_run": dry_run,
        "status_url": format!("{}{WORKFLOWS_PATH}/{id}", api.base),
    });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// `GET /v1/patch/runs`: the runs of the last 90 days by state, newest first.
pub(crate) async fn list(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let result = async {
        api.auth.read(&headers).map_err(|e| {
            tracing::info!(reason = %e, "credentials refused");
            Rejection::Unauthorized
        })?;
        api.ensure_connected()?;
        let since = Utc::now() - Duration::days(90);
        let mut runs = Vec::new();
        for state in WorkflowState::ALL {
            let entries = api
                .patch
                .engine
                .list(KIND, state, Some(since))
                .await
                .map_err(|e| Rejection::Unavailable(e.to_string()))?;
            runs.extend(entries);
        }
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        Ok::<_, Rejection>(axum::Json(json!({ "runs": runs })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    plan: String,
    #[serde(default)]
    comment: String,
}

/// `POST /v1/patch/runs/{id}/approve`.
pub(crate) async fn approve(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    decide(&api, &id, request, Verdict::Approve)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/patch/runs/{id}/reject`.
pub(crate) async fn reject(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    decide(&api, &id, request, Verdict::Reject)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn decide(
    api: &Api,
    id: &str,
    request: Request,
    verdict: Verdict,
) -> Result<Response, Rejection> {
    let (caller, decision): (Caller, DecisionBody) = body(api, request).await?;
    let body = decide_as(api, id, &caller, &decision.plan, decision.comment, verdict).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// A decision by `caller` on run `id`'s plan, under every rule of the module header; the accepted
/// decision as JSON. The console's approval form comes through here too.
pub(crate) async fn decide_as(
    api: &Api,
    id: &str,
    caller: &Caller,
    plan: &str,
    comment: String,
    verdict: Verdict,
) -> Result<serde_json::Value, Rejection> {
    let by = match caller {
        Caller::Token { name } if api.patch.approvers.iter().any(|a| a == name) => name.clone(),
        Caller::Token { name } => {
            return Err(Rejection::Forbidden(format!(
                "token {name:?} may not decide on patch plans: it is not in patch.approvers"
            )));
        }
        _ => {
            return Err(Rejection::Forbidden(
                "a patch decision needs a bearer token named in patch.approvers".into(),
            ));
        }
    };
    let plan = plan.trim().to_ascii_lowercase();
    if plan.len() < 12 || plan.len() > 64 || !plan.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Rejection::Invalid(field(
            "plan",
            "must be the plan's hash: 12 to 64 hex digits, as `proxflow patch plan` prints it",
        )));
    }
    if comment.chars().count() > MAX_COMMENT || comment.chars().any(char::is_control) {
        return Err(Rejection::Invalid(field(
            "comment",
            format!("at most {MAX_COMMENT} printable characters"),
        )));
    }
    if !crate::store::is_workflow_id(id) {
        return Err(Rejection::NotFound(id.to_string()));
    }
    api.ensure_connected()?;
    let record = api
        .store
        .workflow(id)
        .await
        .map_err(|e| Rejection::Unavailable(e.to_string()))?
        .filter(|r| r.kind == KIND)
        .ok_or_else(|| Rejection::NotFound(id.to_string()))?;
    let Some(Wait::Signal {
        name, expires_at, ..
    }) = record
        .wait
        .clone()
        .filter(|_| record.state == WorkflowState::Waiting)
    else {
        return Err(Rejection::InUse(field(
            "run",
            format!(
                "patch run {id} is not waiting for a decision (it is {})",
                proxflow_runtime::workflow::state_name(record.state)
            ),
        )));
    };
    let asked = record
        .data
        .get("approval_hash")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !name.starts_with("decision.") || asked.is_empty() {
        return Err(Rejection::InUse(field(
            "run",
            format!("patch run {id} is not waiting for a decision"),
        )));
    }
    if !hash_matches(&asked, &plan) {
        return Err(Rejection::InUse(field(
            "plan",
            format!(
                "patch run {id} asks about plan {}, not {plan}: review it with `proxflow patch plan {id}`",
                &asked[..asked.len().min(12)]
            ),
        )));
    }
    // The engine's clock: the one the run's deadline was computed on. The deadline is the run's
    // (`awaiting.expires_at`, the end of the next window); the wait itself may end earlier, at
    // the next window's start, when the run scans again and asks anew.
    let now = api.ctx.clock.now();
    let expires_at = record
        .data
        .get("awaiting")
        .and_then(|a| a.get("expires_at"))
        .and_then(|v| serde_json::from_value::<chrono::DateTime<Utc>>(v.clone()).ok())
        .or(expires_at)
        .unwrap_or(now);
    if now > expires_at {
        return Err(Rejection::InUse(field(
            "plan",
            format!("the decision on plan {plan} closed at {expires_at}"),
        )));
    }
    let payload = Decision {
        verdict,
        plan_hash: asked.clone(),
        by: by.clone(),
        at: now,
        expires_at,
        comment,
    };
    api.patch
        .engine
        .signal(id, &name, &caller.requested_by(), &payload)
        .await
        .map_err(|e| match e {
            SignalError::NotFound(_) => Rejection::NotFound(id.to_string()),
            SignalError::Engine(e) => Rejection::Unavailable(e.to_string()),
            other => Rejection::InUse(field("plan", other.to_string())),
        })?;
    tracing::info!(run = %id, plan = %asked, by = %by, verdict = ?verdict, "patch decision accepted");
    Ok(json!({
        "run": id,
        "verdict": verdict,
        "plan_hash": asked,
        "by": by,
        "expires_at": expires_at,
    }))
}
