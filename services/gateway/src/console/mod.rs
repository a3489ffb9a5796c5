//! The operator's console: server-rendered pages under `/ui` on the gateway's own listener.
//!
//! Why the gateway and not a service of its own: the console's one write — approving or rejecting
//! a patch plan — must follow exactly the rules of `POST /v1/patch/runs/{id}/approve` (approvers,
//! the plan hash, the decision window), and here it calls the same function; it gets the edge's
//! hardening (body limits, read timeouts, connection caps) and its bearer tokens for free; and an
//! operator has one URL to open. Everything it shows is read through `proxflow-view`, the models
//! the CLI prints, so the page and `proxflow status` agree.
//!
//! Pages: `/ui` (the overview), `/ui/workflows` (filter by kind, state, age), `/ui/workflows/{id}`
//! (steps, attempts, errors, origin, signals, the trace as a waterfall, the approval form of a
//! waiting patch run). Every page needs a session ([`session`]); without one a `GET` is redirected
//! to `/ui/login` and a `POST` refused. Every `POST` carries the session's CSRF token. No secret is
//! ever rendered: tokens are only read from the login form, and records are shown as the services
//! wrote them (they hold no secrets; the services redact before writing).

mod first_screen;
mod pages;
pub mod session;
mod waterfall;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use proxflow_runtime::telemetry::recorded::{self, SpanTree};
use proxflow_schemas::patch::Verdict;
use proxflow_view::overview::{self, Expectations};
use proxflow_view::workflows;
use serde::Deserialize;

use crate::api::{Api, Rejection};
use crate::auth::Caller;
use session::{Session, Sessions};

/// Where the console lives.
pub const UI_PATH: &str = "/ui";

/// What the console's handlers share.
pub(crate) struct Console {
    api: Arc<Api>,
    sessions: Sessions,
    expect: Expectations,
}

impl Console {
    pub(crate) fn new(api: Arc<Api>, expect: Expectations) -> Self {
        let secure = api.base.starts_with("https://");
        let sessions = Sessions::new(api.auth.clone(), secure);
        Self {
            api,
            sessions,
            expect,
        }
    }
}

/// The console's routes.
pub(crate) fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route(UI_PATH, get(overview_page))
        .route("/ui/", get(|| async { Redirect::to(UI_PATH) }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/workflows", get(workflows_page))
        .route("/ui/workflows/{id}", get(workflow_page))
        .route("/ui/workflows/{id}/decision", post(decision))
        .with_state(console)
}

/// A page, with the headers every console answer gets: never cached (it shows live state and a
/// CSRF token), never framed, no scripts or styles from anywhere but the page itself.
fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn to_login() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl Console {
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.sessions.check(headers, Utc::now())
    }

    /// A page that could not be read: the reason, in the layout, with the status it maps to.
    fn unavailable(
        &self,
        session: &Session,
        what: &str,
        error: &dyn std::fmt::Display,
    ) -> Response {
        tracing::warn!(error = %error, "console: {what}");
        page(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error(session, &format!("{what}: {error}")),
        )
    }
}

async fn overview_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = console.session(&headers) else {
        return to_login();
    };
    match overview::collect(
        &console.api.ctx.bus.js,
        &console.api.patch.engine,
        &console.expect,
    )
    .await
    {
        Ok(view) => page(StatusCode::OK, first_screen::page(&session, &view)),
        Err(e) => console.unavailable(&session, "reading the overview", &e),
    }
}

/// `?kind=&state=&since=` of the workflow list.
#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    since: String,
}

/// At most this many rows on the list page.
const LIST_LIMIT: usize = 200;

async fn workflows_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(session) = console.session(&headers) else {
        return to_login();
    };
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                pages::error(&session, &e.body_text()),
            );
        }
    };
    let filter = match pages::filter(&query.kind, &query.state, &query.since, LIST_LIMIT) {
        Ok(filter) => filter,
        Err(message) => {
            return page(StatusCode::BAD_REQUEST, pages::error(&session, &message));
        }
    };
    match workflows::list(&console.api.patch.engine, &filter).await {
        Ok(rows) => page(
            StatusCode::OK,
            pages::workflows(&session, &query.kind, &query.state, &query.since, &rows),
        ),
        Err(e) => console.unavailable(&session, "listing workflows", &e),
    }
}

async fn workflow_page(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(session) = console.session(&headers) else {
        return to_login();
    };
    if !crate::store::is_workflow_id(&id) {
        return page(
            StatusCode::NOT_FOUND,
            pages::error(&session, "no such workflow"),
        );
    }
    let detail = match workflows::detail(&console.api.patch.engine, &id).await {
        Ok(Some(detail)) => detail,
        Ok(None) => {
            return page(
                StatusCode::NOT_FOUND,
                pages::error(&session, &format!("workflow {id} not found")),
            );
        }
        Err(e) => return console.unavailable(&session, "reading the workflow", &e),
    };
    // The trace is the page's second half: a trace that cannot be read is said so, the record is
    // still shown.
    let trace = match detail.record.trace_id.as_deref() {
        Some(trace_id) => recorded::fetch_trace(
            &console.api.ctx.bus.js,
            trace_id,
            std::time::Duration::from_secs(2),
        )
        .await
        .map(|f| SpanTree::build(f.spans))
        .map_err(|e| e.to_string()),
        None => Err("this workflow has no trace id".to_owned()),
    };
    let can_decide = console.api.patch.approvers.contains(&session.name);
    page(
        StatusCode::OK,
        pages::workflow(&session, &detail, &trace, can_decide),
    )
}

/// The fields of a console form: its CSRF token and what it carries.
#[derive(Debug, Deserialize)]
struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    verdict: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    comment: String,
}

/// Reads a url-encoded form body within the gateway's body limits.
async fn form<T: for<'de> Deserialize<'de>>(api: &Api, request: Request) -> Result<T, Rejection> {
    let (parts, body): (_, Body) = request.into_parts();
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(Rejection::Invalid(crate::request::FieldErrors::from([(
            "content-type".to_owned(),
            "must be application/x-www-form-urlencoded".to_owned(),
        )])));
    }
    let bytes = api.read_body(&parts.headers, body).await?;
    serde_urlencoded::from_bytes(&bytes).map_err(|e| {
        Rejection::Invalid(crate::request::FieldErrors::from([(
            "form".to_owned(),
            e.to_string(),
        )]))
    })
}

async fn decision(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    // The session is checked before the body is read: no memory for a caller without one.
    let Some(session) = console.session(request.headers()) else {
        return page(
            StatusCode::UNAUTHORIZED,
            pages::refused("log in first: this form needs a console session"),
        );
    };
    let form: DecisionForm = match session_form(&console, &session, request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let verdict = match form.verdict.as_str() {
        "approve" => Verdict::Approve,
        "reject" => Verdict::Reject,
        other => {
            return page(
                StatusCode::BAD_REQUEST,
                pages::error(
                    &session,
                    &format!("verdict must be approve or reject, not {other:?}"),
                ),
            );
        }
    };
    let caller = Caller::Token {
        name: session.name.clone(),
    };
    match crate::patch::decide_as(
        &console.api,
        &id,
        &caller,
        &form.plan,
        form.comment,
        verdict,
    )
    .await
    {
        Ok(_) => Redirect::to(&format!("/ui/workflows/{id}")).into_response(),
        Err(rejection) => {
            let status = rejection.status();
            page(status, pages::error(&session, &rejection_text(&rejection)))
        }
    }
}

/// A form posted from a console page: it carries the session's CSRF token.
trait SessionForm: for<'de> Deserialize<'de> {
    fn csrf(&self) -> &str;
}

impl SessionForm for DecisionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl SessionForm for LogoutForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The body of a form `session` posted, or the page that refuses it: 400 when it does not read,
/// 403 when its CSRF token is not the session's.
async fn session_form<T: SessionForm>(
    console: &Console,
    session: &Session,
    request: Request,
) -> Result<T, Response> {
    let form: T = form(&console.api, request).await.map_err(|rejection| {
        page(
            StatusCode::BAD_REQUEST,
            pages::error(session, &rejection_text(&rejection)),
        )
    })?;
    if !session::csrf_ok(session, form.csrf()) {
        return Err(page(
            StatusCode::FORBIDDEN,
            pages::error(
                session,
                "the form's CSRF token is missing or not this session's: reload the page and try again",
            ),
        ));
    }
    Ok(form)
}

/// A refusal in words, with its field messages.
fn rejection_text(rejection: &Rejection) -> String {
    match rejection {
        Rejection::Invalid(fields) | Rejection::InUse(fields) => fields
            .iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

async fn login_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if console.session(&headers).is_some() {
        return Redirect::to(UI_PATH).into_response();
    }
    login_form(&console, StatusCode::OK, None)
}

fn login_form(console: &Console, status: StatusCode, message: Option<&str>) -> Response {
    let (token, cookie) = console.sessions.login_form();
    let mut response = page(status, pages::login(&token, message));
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    form: String,
}

async fn login(State(console): State<Arc<Console>>, request: Request) -> Response {
    let form_ok = |headers: &HeaderMap, field: &str| Sessions::login_form_ok(headers, field);
    let headers = request.headers().clone();
    let form: LoginForm = match form(&console.api, request).await {
        Ok(form) => form,
        Err(rejection) => {
            return login_form(
                &console,
                StatusCode::BAD_REQUEST,
                Some(&rejection_text(&rejection)),
            );
        }
    };
    if !form_ok(&headers, &form.form) {
        return login_form(
            &console,
            StatusCode::FORBIDDEN,
            Some("the login form expired or was not this browser's: try again"),
        );
    }
    match console.sessions.login(&form.token, Utc::now()) {
        Some((session, cookie)) => {
            tracing::info!(token = %session.name, "console login");
            let mut response = Redirect::to(UI_PATH).into_response();
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response
        }
        None => {
            tracing::info!("console login refused: unknown token");
            login_form(
                &console,
                StatusCode::UNAUTHORIZED,
                Some("that token is not one of gateway.bearer_tokens"),
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(console): State<Arc<Console>>, request: Request) -> Response {
    let Some(session) = console.session(request.headers()) else {
        return to_login();
    };
    if let Err(refused) = session_form::<LogoutForm>(&console, &session, request).await {
        return refused;
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, console.sessions.logout());
    response
}
