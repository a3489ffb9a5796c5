//! The HTTP side: `/api2/json/*` answered like pveproxy, the `/_sim/*` control API, and the
//! connection loop (TLS or plain, HTTP/1.1).
//!
//! While the node reboots every `/api2/json` request answers 503 (a real host refuses the
//! connection; a 503 keeps the simulator's listener and journal going). Otherwise, per request,
//! in Proxmox's order: authentication (401 with an empty body, after the real
//! server's 3 s delay on a failed login, scaled by `time_scale` — `durations.auth_failure`), routing against the schema (501), parameters from the query string and a form or
//! JSON body merged with the path (a conflicting duplicate is a 400), schema validation (400
//! `Parameter verification failed.`), injected faults, then the handler. Every request is
//! journaled with what was answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue, SERVER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{any, get, post, put};
use bytes::Bytes;
use hyper::ext::ReasonPhrase;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use proxflow_runtime::config::ConfigError;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::agent::AgentExecScript;
use crate::api::{ApiError, Request, value_text};
use crate::config::Faults;
use crate::host::HostUpgradeError;
use crate::load::Load;
use crate::packages::GuestUpdate;
use crate::state::SetUpdatesError;
use crate::{JournalEntry, Shared};

mod disks;

const JSON_TYPE: &str = "application/json;charset=UTF-8";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    // The control API takes the same token as /api2, checked once for all of its routes.
    let control = Router::new()
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/load/vm/{vmid}", put(put_vm_load))
        .route("/_sim/load/host", put(put_host_load))
        .route("/_sim/journal", get(get_journal))
        .route("/_sim/agent/exec", put(put_agent_exec))
        .route("/_sim/guest/{vmid}/updates", put(put_guest_updates))
        .route("/_sim/host/upgrade", post(post_host_upgrade))
        .route("/_sim/host/disk", put(disks::put_disk_health))
        .route("/_sim/state", get(get_state))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            control_auth,
        ));
    Router::new()
        .route("/api2/json", any(api))
        .route("/api2/json/", any(api))
        .route("/api2/json/{*rest}", any(api))
        .merge(control)
        .fallback(not_found)
        .layer(axum::middleware::map_response(proxmox_headers))
        .with_state(shared)
}

/// pveproxy's headers on every answer.
async fn proxmox_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    headers.insert(SERVER, HeaderValue::from_static("pve-api-daemon/3.0"));
    response
}

async fn not_found() -> Response {
    build(StatusCode::NOT_FOUND, Some("Not Found"), None)
}

/// A response with Proxmox's reason phrase (first line, printable ASCII only) and JSON body.
fn build(status: StatusCode, reason: Option<&str>, body: Option<&Value>) -> Response {
    let bytes = body.map(Value::to_string).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(reason) = reason {
        let line: String = reason
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect();
        if let Ok(phrase) = ReasonPhrase::try_from(line.into_bytes()) {
            response.extensions_mut().insert(phrase);
        }
    }
    if status.as_u16() >= 400 {
        // pveproxy closes the connection after an error.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Checks the `PVEAPIToken` header; `Err` is the 401 reason phrase.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err("No ticket");
    };
    let Some(raw) = shared
        .auth_re
        .captures(value)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
    else {
        return Err("No ticket");
    };
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    // Split on the LAST '=': token ids cannot contain one, secrets (UUIDs here) could.
    let Some((token_id, secret)) = decoded.rsplit_once('=') else {
        return Err("Authentication failed!");
    };
    if crate::config::parse_token_id(token_id).is_err()
        || token_id != shared.token_id
        || secret != shared.token_secret
    {
        return Err("Authentication failed!");
    }
    Ok(())
}

/// The result of one `/api2/json` request, before it becomes a response.
struct Outcome {
    status: StatusCode,
    reason: Option<String>,
    body: Option<Value>,
    template: Option<String>,
}

impl Outcome {
    fn error(status: StatusCode, reason: &str, body: Option<Value>) -> Self {
        Self {
            status,
            reason: Some(reason.to_owned()),
            body,
            template: None,
        }
    }

    fn from_api_error(error: ApiError) -> Self {
        match error {
            // PVE 8.4's server puts `message` into every JSON error.
            ApiError::Params(errors) => Self::error(
                StatusCode::BAD_REQUEST,
                "Parameter verification failed.",
                Some(json!({
                    "data": null,
                    "errors": errors,
                    "message": "Parameter verification failed.\n",
                })),
            ),
            ApiError::Failed(msg) => {
                let message = if msg.ends_with('\n') {
                    msg
                } else {
                    format!("{msg}\n")
                };
                Self::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &message,
                    Some(json!({"data": null, "message": message})),
                )
            }
            ApiError::NotSimulated(msg) => Self::error(
                StatusCode::NOT_IMPLEMENTED,
                &msg,
                Some(json!({"data": null, "message": format!("{msg}\n")})),
            ),
        }
    }
}

async fn api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = match uri.path().strip_prefix("/api2/json") {
        Some("") | None => "/".to_owned(),
        Some(p) => p.to_owned(),
    };
    let mut params = Map::new();
    let rebooting = shared.lock().rebooting_message();
    let outcome = match rebooting {
        Some(message) => Outcome::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &message,
            Some(json!({"data": null, "message": message})),
        ),
        None => process(&shared, &method, &uri, &path, &headers, &body, &mut params).await,
    };
    tracing::debug!(
        method = method.as_str(),
        path = %path,
        status = outcome.status.as_u16(),
        "pve-sim request"
    );
    let response = build(
        outcome.status,
        outcome.reason.as_deref(),
        outcome.body.as_ref(),
    );
    shared.record(JournalEntry {
        method: method.as_str().to_owned(),
        path,
        template: outcome.template,
        params,
        status: outcome.status.as_u16(),
        response: outcome.body.unwrap_or(Value::Null),
    });
    response
}

async fn process(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    params: &mut Map<String, Value>,
) -> Outcome {
    if let Err(reason) = authenticate(shared, headers) {
        // pveproxy answers a failed authentication after about 3 s (scaled here).
        let delay = shared.lock().auth_failure_delay();
        tokio::time::sleep(delay).await;
        return Outcome::error(StatusCode::UNAUTHORIZED, reason, None);
    }
    let route = match shared.schema.route(method.as_str(), path) {
        Ok(route) => route,
        Err(e) => {
            let msg = e.to_string();
            return Outcome::error(
                StatusCode::NOT_IMPLEMENTED,
                &msg,
                Some(json!({"data": null, "message": format!("{msg}\n")})),
            );
        }
    };
    let template = route.template.clone();
    let mut outcome = handle_routed(shared, method, uri, path, headers, body, route, params).await;
    outcome.template = Some(template);
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn handle_routed(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    route: crate::schema::Route,
    params: &mut Map<String, Value>,
) -> Outcome {
    let method = method.as_str();
    if !shared.schema.allows_token(method, &route.template) {
        let msg = format!(
            "Permission check failed (URI '{path}' not available with API token, need proper ticket.)"
        );
        return Outcome::error(
            StatusCode::FORBIDDEN,
            &msg,
            Some(json!({"data": null, "message": format!("{msg}\n")})),
        );
    }
    if let Err(outcome) = collect_params(shared, method, uri, headers, body, &route, params) {
        return outcome;
    }
    if let Err(errors) = shared
        .schema
        .validate_params(method, &route.template, params)
    {
        return Outcome::from_api_error(ApiError::Params(errors));
    }
    let key = format!("{method} {}", route.template);
    let (latency, fault) = shared.lock().endpoint_fault(&key, params);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(msg) = fault {
        return Outcome::from_api_error(ApiError::Failed(msg));
    }
    let request = Request {
        method,
        template: &route.template,
        params,
    };
    let result = shared.lock().handle(&shared.schema, &request);
    match result {
        Ok(reply) => {
            if let Some(task) = reply.task {
                crate::tasks::spawn(shared, task);
            }
            if let Some(generation) = reply.reboot {
                crate::host::spawn_reboot(shared, generation);
            }
            let mut body = Map::new();
            body.insert("data".into(), reply.data);
            body.extend(reply.extra);
            Outcome {
                status: StatusCode::OK,
                reason: None,
                body: Some(Value::Object(body)),
                template: None,
            }
        }
        Err(e) => Outcome::from_api_error(e),
    }
}

/// Adds a value, turning a repeated key into a list (how array parameters arrive in a form).
fn add_param(params: &mut Map<String, Value>, key: String, value: Value) {
    match params.get_mut(&key) {
        Some(Value::Array(list)) => list.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
        None => {
            params.insert(key, value);
        }
    }
}

/// Query and body merged (query over body), `_dc` dropped, array parameters wrapped, path
/// parameters added; a path parameter given again with another value is refused.
fn collect_params(
    shared: &Shared,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    route: &crate::schema::Route,
    params: &mut Map<String, Value>,
) -> Result<(), Outcome> {
    let malformed = |what: &str, e: &dyn std::fmt::Display| {
        Outcome::error(
            StatusCode::BAD_REQUEST,
            &format!("malformed {what}"),
            Some(json!({"data": null, "message": format!("malformed {what}: {e}\n")})),
        )
    };
    if !body.is_empty() {
        let is_json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().starts_with("application/json"));
        if is_json {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => params.extend(map),
                Ok(_) => return Err(malformed("JSON body", &"not an object")),
                Err(e) => return Err(malformed("JSON body", &e)),
            }
        } else {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|e| malformed("form body", &e))?;
            for (k, v) in pairs {
                add_param(params, k, Value::String(v));
            }
        }
    }
    if let Some(query) = uri.query() {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| malformed("query string", &e))?;
        let mut from_query = Map::new();
        for (k, v) in pairs {
            add_param(&mut from_query, k, Value::String(v));
        }
        params.extend(from_query);
    }
    params.remove("_dc");
    let keys: Vec<String> = params.keys().cloned().collect();
    for key in keys {
        if shared
            .schema
            .param_type(method, &route.template, &key)
            .as_deref()
            == Some("array")
            && let Some(value) = params.get_mut(&key)
            && !value.is_array()
        {
            let single = value.take();
            *value = Value::Array(vec![single]);
        }
    }
    let mut conflicts = BTreeMap::new();
    for (key, value) in &route.path_params {
        match params.get(key) {
            Some(given)
                if value_text(given).as_ref() != value.as_str().map(str::to_owned).as_ref() =>
            {
                conflicts.insert(
                    key.clone(),
                    "duplicate parameter (already defined in URI) with conflicting values!"
                        .to_owned(),
                );
            }
            _ => {
                params.insert(key.clone(), value.clone());
            }
        }
    }
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(Outcome::from_api_error(ApiError::Params(conflicts)))
    }
}

// ---- control API ----------------------------------------------------------------------------

fn control_json(status: StatusCode, body: &Value) -> Response {
    build(status, None, Some(body))
}

fn control_errors(errors: impl IntoIterator<Item = (String, String)>) -> Response {
    let map: BTreeMap<String, String> = errors.into_iter().collect();
    control_json(StatusCode::BAD_REQUEST, &json!({ "errors": map }))
}

/// The 401 answer when the token is missing or wrong.
async fn control_auth(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authenticate(&shared, request.headers()) {
        Ok(_) => next.run(request).await,
        Err(reason) => build(StatusCode::UNAUTHORIZED, Some(reason), None),
    }
}

/// The JSON body, or the 400 answer naming the problem.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(control_errors([("body".to_owned(), e.to_string())])))
}

fn config_error_fields(e: ConfigError) -> Vec<(String, String)> {
    match e {
        ConfigError::Value { key, message } => vec![(key, message)],
        ConfigError::Invalid(lines) => lines
            .into_iter()
            .map(|l| match l.split_once(": ") {
                Some((k, m)) => (k.to_owned(), m.to_owned()),
                None => ("faults".to_owned(), l),
            })
            .collect(),
    }
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    let faults = shared.lock().faults.clone();
    control_json(StatusCode::OK, &json!(faults))
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let faults: Faults = match parse_body(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    if let Err(e) = crate::check_faults(&faults, &shared.schema) {
        return control_errors(config_error_fields(e));
    }
    shared.lock().faults = faults.clone();
    control_json(StatusCode::OK, &json!(faults))
}

fn apply_load(shared: &Arc<Shared>, body: &Bytes, vmid: Option<u32>) -> Response {
    let load: Load = match parse_body(body) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    if let Err(errors) = load.validate() {
        return control_errors(
            errors
                .into_iter()
                .map(|(field, e)| (field.to_owned(), e.to_string())),
        );
    }
    let handle = crate::SimHandle {
        shared: Arc::clone(shared),
    };
    match vmid {
        Some(id) => handle.set_vm_load(id, load.clone()),
        None => handle.set_host_load(load.clone()),
    }
    control_json(StatusCode::OK, &json!(load))
}

async fn put_vm_load(
    State(shared): State<Arc<Shared>>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Response {
    match vmid.parse::<u32>() {
        Ok(id) if id >= 100 => apply_load(&shared, &body, Some(id)),
        _ => control_errors([(
            "vmid".to_owned(),
            format!("'{vmid}' is not a VM id (100 or above)"),
        )]),
    }
}

async fn put_host_load(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    apply_load(&shared, &body, None)
}

async fn get_journal(State(shared): State<Arc<Shared>>) -> Response {
    let journal = crate::SimHandle { shared }.journal();
    control_json(StatusCode::OK, &json!(journal))
}

async fn put_agent_exec(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let script: AgentExecScript = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Some((i, _)) = script
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.vmid.is_some_and(|v| v < 100))
    {
        return control_errors([(
            format!("rules[{i}].vmid"),
            "not a VM id (100 or above)".to_owned(),
        )]);
    }
    shared.lock().exec_script = script.clone();
    control_json(StatusCode::OK, &json!(script))
}

/// `PUT /_sim/guest/{vmid}/updates` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatesBody {
    updates: Vec<GuestUpdate>,
}

/// A 400 or 404 of the control API: the message, and for a field the `errors` map too.
fn control_message(status: StatusCode, message: &str, field: Option<String>) -> Response {
    let mut body = json!({ "message": message });
    if let Some(field) = field {
        body["errors"] = json!({ field: message });
    }
    control_json(status, &body)
}

async fn put_guest_updates(
    State(shared): State<Arc<Shared>>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(vmid) = vmid.parse::<u32>() else {
        return control_message(
            StatusCode::BAD_REQUEST,
            &format!("'{vmid}' is not a VM id"),
            Some("vmid".into()),
        );
    };
    let parsed: UpdatesBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return control_message(StatusCode::BAD_REQUEST, &e.to_string(), Some("body".into()));
        }
    };
    let result = shared.lock().set_guest_updates(vmid, parsed.updates);
    match result {
        Ok(pending) => control_json(StatusCode::OK, &json!({ "updates": pending })),
        Err(e @ (SetUpdatesError::NoVm(_) | SetUpdatesError::NoPackages(_))) => {
            control_message(StatusCode::NOT_FOUND, &e.to_string(), None)
        }
        Err(e @ SetUpdatesError::Invalid { .. }) => {
            let message = e.to_string();
            let field = message
                .split_once(':')
                .map(|(f, _)| f.to_owned())
                .unwrap_or_default();
            control_message(StatusCode::BAD_REQUEST, &message, Some(field))
        }
    }
}

async fn post_host_upgrade(State(shared): State<Arc<Shared>>) -> Response {
    let result = shared.lock().host_upgrade();
    match result {
        Ok((upgraded, reboot_required)) => control_json(
            StatusCode::OK,
            &json!({"upgraded": upgraded, "reboot_required": reboot_required}),
        ),
        Err(e @ HostUpgradeError::Down(_)) => control_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"data": null, "message": e.to_string()}),
        ),
        Err(e @ HostUpgradeError::Dpkg) => control_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"message": e.to_string()}),
        ),
    }
}

async fn get_state(State(shared): State<Arc<Shared>>) -> Response {
    let summary = shared.lock().summary();
    control_json(StatusCode::OK, &summary)
}

// ---- connections ----------------------------------------------------------------------------

/// Accepts connections until cancelled; each is served on its own task.
pub(crate) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let app = router(Arc::clone(&shared));
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "pve-sim: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let cancel = shared.cancel.clone();
        let tls = tls.clone();
        shared.tracker.spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    let stream = tokio::select! {
                        () = cancel.cancelled() => return,
                        s = acceptor.accept(stream) => match s {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "pve-sim: TLS handshake failed");
                                return;
                            }
                        },
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        _ = conn => {}
                    }
                }
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        _ = conn => {}
                    }
                }
            }
        });
    }
}
