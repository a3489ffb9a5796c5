//! The provisioning webhook (`POST /v1/provision`) and the workflow status API
//! (`GET /v1/workflows/{id}`).
//!
//! A provisioning request passes, in order: content type (415) → body size (413) → credentials (401)
//! → decoding and validation (422) → idempotency (the workflow record is created with KV `create`; a
//! repeat answers 200 with the existing workflow) → publish (503 when the bus is down) → 202. Nothing is
//! published for a request refused at any step.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use prometheus_client::metrics::gauge::Gauge;
use proxflow_platform::Profiles;
use proxflow_platform::claims::{self, ClaimError, Claimed};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::ops::CounterFamily;
use proxflow_runtime::telemetry;
use proxflow_schemas::provision::ProvisionRequested;
use proxflow_schemas::remediation::RemediationDecision;
use proxflow_schemas::workflow::{WorkflowRecord, WorkflowState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Authenticator, Caller};
use crate::request::{self, FieldErrors, ProvisionRequest};
use crate::store::{self, Created, Store, StoreError, WebhookSeen};

/// `POST` path of Alertmanager deliveries.
pub const ALERTS_PATH: &str = "/v1/alerts/alertmanager";
/// `GET` path of the remediation audit trail.
pub const REMEDIATIONS_PATH: &str = "/v1/remediations";
/// `POST` path of provisioning requests.
pub const PROVISION_PATH: &str = "/v1/provision";
/// Prefix of workflow status URLs; the workflow id follows.
pub const WORKFLOWS_PATH: &str = "/v1/workflows";
/// Header that may carry the idempotency key instead of the body.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The answer to an accepted (202) or repeated (200) provisioning request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowAccepted {
    /// The workflow the request started (or had started).
    pub workflow_id: String,
    /// Its state now.
    pub state: WorkflowState,
    /// The trace every step of it runs under.
    pub trace_id: Option<String>,
    /// Where to read its progress (`GET`, bearer token).
    pub status_url: String,
}

/// The workflow id of an idempotency key: `prov-` and the first 20 hex digits of its SHA-256.
pub fn workflow_id(idempotency_key: &str) -> String {
    let digest = hex::encode(Sha256::digest(idempotency_key.as_bytes()));
    format!("prov-{}", &digest[..20])
}

/// Everything the handlers share.
pub(crate) struct Api {
    pub(crate) ctx: ServiceContext,
    pub(crate) auth: Authenticator,
    profiles: Profiles,
    pub(crate) store: Store,
    max_body: usize,
    /// `gateway.http.body_read_timeout`.
    body_read_timeout: std::time::Duration,
    /// Where links (`Location`, `status_url`) point: `gateway.public_url`, else the listener's own
    /// address; never the request's `Host`, which the caller controls.
    pub(crate) base: String,
    /// The patch-run endpoints' engine and approvers.
    pub(crate) patch: crate::patch::PatchEdge,
    outcomes: CounterFamily<2>,
    alert_max_body: usize,
    /// One permit per alert being published, across deliveries (back-pressure).
    alert_permits: Arc<tokio::sync::Semaphore>,
    alert_max_in_flight: usize,
    /// `gateway.alerts.max_per_delivery`.
    alert_max_per_delivery: usize,
    /// `proxflow_gateway_alerts_in_flight`: how close the gateway is to answering 503.
    alerts_in_flight: Gauge,
}

impl Api {
    pub(crate) fn new(
        ctx: &ServiceContext,
        auth: Authenticator,
        profiles: Profiles,
        store: Store,
        config: &crate::config::GatewayConfig,
        base: String,
        patch: crate::patch::PatchEdge,
    ) -> Self {
        let alerts = &config.alerts;
        let outcomes = ctx.metrics.counter_family(
            "webhooks",
            "Requests to the gateway's webhook endpoints, by outcome",
            ["endpoint", "outcome"],
        );
        let alerts_in_flight = Gauge::default();
        ctx.metrics.register(
            "gateway_alerts_in_flight",
            "Alerts being published now, across deliveries (503 at gateway.alerts.max_in_flight)",
            alerts_in_flight.clone(),
        );
        Self {
            ctx: ctx.clone(),
            auth,
            profiles,
            store,
            max_body: config.max_body,
            body_read_timeout: config.http.body_read_timeout,
            base,
            patch,
            outcomes,
            alert_max_body: alerts.max_body,
            alert_permits: Arc::new(tokio::sync::Semaphore::new(alerts.max_in_flight)),
            alert_max_in_flight: alerts.max_in_flight,
            alert_max_per_delivery: alerts.max_per_delivery.min(alerts.max_in_flight),
            alerts_in_flight,
        }
    }
}

/// The API routes.
pub(crate) fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route(PROVISION_PATH, post(provision))
        .route(ALERTS_PATH, post(alerts))
        .route(REMEDIATIONS_PATH, get(remediations))
        .route(&format!("{WORKFLOWS_PATH}/{{id}}"), get(workflow))
        .route(
            crate::patch::PATCH_RUNS_PATH,
            post(crate::patch::start).get(crate::patch::list),
        )
        .route(
            &format!("{}/{{id}}/approve", crate::patch::PATCH_RUNS_PATH),
            post(crate::patch::approve),
        )
        .route(
            &format!("{}/{{id}}/reject", crate::patch::PATCH_RUNS_PATH),
            post(crate::patch::reject),
        )
        .with_state(api)
}

/// Why a request was refused; each maps to one status and one `outcome` label.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("content type must be application/json")]
    UnsupportedType,
    #[error("the body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the body did not arrive within {0:?} (gateway.http.body_read_timeout)")]
    SlowBody(std::time::Duration),
    #[error(
        "{what} is larger than the bus accepts (the NATS server's max_payload is {max_payload} bytes)"
    )]
    TooLargeForBus { what: String, max_payload: usize },
    #[error("unauthorized")]
    Unauthorized,
    #[error("webhook-id {0} was already accepted with another body")]
    Replayed(String),
    #[error("invalid request")]
    Invalid(FieldErrors),
    #[error("in use")]
    InUse(FieldErrors),
    #[error("malformed payload: {0}")]
    Malformed(crate::alertmanager::PayloadError),
    #[error("workflow {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Rejection {
    fn outcome(&self) -> &'static str {
        match self {
            Self::UnsupportedType => "unsupported_type",
            Self::TooLarge(_) => "too_large",
            Self::SlowBody(_) => "slow_body",
            Self::TooLargeForBus { .. } => "too_large",
            Self::Unauthorized => "unauthorized",
            Self::Replayed(_) => "duplicate",
            Self::Invalid(_) | Self::Malformed(_) => "invalid",
            Self::InUse(_) => "conflict",
            Self::NotFound(_) => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "error",
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            // Never 503: a sender retries that for ever, and it can never fit.
            Self::TooLargeForBus { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Replayed(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // The request is well-formed, but what it names is taken (a name, an address).
            Self::InUse(_) => StatusCode::CONFLICT,
            // Alertmanager drops a delivery answered 4xx and retries 5xx: a malformed one must not
            // be retried forever.
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Invalid(errors) | Self::InUse(errors) => json!({ "errors": errors }),
            Self::Malformed(e) => json!({ "error": self.to_string(), "field": e.path }),
            other => json!({ "error": other.to_string() }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

impl From<ClaimError> for Rejection {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Held { field, message } => {
                Self::InUse(FieldErrors::from([(field.to_string(), message)]))
            }
            ClaimError::Kv(_) => Self::Unavailable(e.to_string()),
            ClaimError::Workflow(ref w) if w.is_transient() => Self::Unavailable(e.to_string()),
            ClaimError::Workflow(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<StoreError> for Rejection {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Open { .. } | StoreError::Unavailable { .. } => {
                Self::Unavailable(e.to_string())
            }
            StoreError::Workflow(ref w) if w.is_transient() => Self::Unavailable(e.to_string()),
            StoreError::Workflow(_) => Self::Internal(e.to_string()),
        }
    }
}

/// An accepted request: the workflow, whether this request created it, and the base URL its status
/// is read at.
struct Accepted {
    record: WorkflowRecord,
    created: bool,
    base: String,
}

async fn provision(State(api): State<Arc<Api>>, request: Request) -> Response {
    let result = api.accept(request).await;
    let outcome = match &result {
        Ok(a) if a.created => "accepted",
        Ok(_) => "duplicate",
        Err(r) => r.outcome(),
    };
    api.outcomes.inc(["provision", outcome]);
    match result {
        Ok(accepted) => {
            tracing::info!(workflow = %accepted.record.id, created = accepted.created, "provisioning request accepted");
            Api::accepted_response(accepted)
        }
        Err(rejection) => {
            tracing::info!(status = %rejection.status(), reason = %rejection, "provisioning request refused");
            rejection.into_response()
        }
    }
}

/// What a delivery's alerts became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsAccepted {
    /// Alerts in the delivery, all durably published.
    pub alerts: usize,
    /// How many of them the stream already had (Alertmanager re-sends a group every
    /// `group_interval` and retries failed posts).
    pub duplicates: usize,
}

async fn alerts(State(api): State<Arc<Api>>, request: Request) -> Response {
    let result = api.accept_alerts(request).await;
    api.outcomes.inc([
        "alertmanager",
        match &result {
            Ok(_) => "accepted",
            Err(r) => r.outcome(),
        },
    ]);
    match result {
        Ok(accepted) => {
            tracing::info!(
                alerts = accepted.alerts,
                duplicates = accepted.duplicates,
                "alerts accepted"
            );
            (StatusCode::OK, axum::Json(accepted)).into_response()
        }
        Err(rejection) => {
            tracing::info!(status = %rejection.status(), reason = %rejection, "alert delivery refused");
            rejection.into_response()
        }
    }
}

/// `?since=24h&limit=100` of `GET /v1/remediations`.
#[derive(Debug, Deserialize)]
struct RemediationsQuery {
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `?since=` (a duration, default 24h, at most 366 days) and `?limit=` (1 to 10,000, default 100)
/// of a history query, or the field errors.
pub fn history_window(
    since: Option<&str>,
    limit: Option<usize>,
) -> Result<(std::time::Duration, usize), FieldErrors> {
    // The event stream keeps far less; a bound also keeps `now - since` from overflowing.
    const MAX_SINCE: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
    let since = match since {
        None => std::time::Duration::from_secs(24 * 3600),
        Some(text) => humantime_serde::re::humantime::parse_duration(text).map_err(|e| {
            FieldErrors::from([(
                "since".into(),
                format!("{text:?} is not a duration like 24h or 30m: {e}"),
            )])
        })?,
    };
    if since > MAX_SINCE {
        return Err(FieldErrors::from([(
            "since".into(),
            format!("{since:?} is longer than the 366 days a remediation history can reach back"),
        )]));
    }
    let limit = limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(FieldErrors::from([(
            "limit".into(),
            "must be 1 to 10000".into(),
        )]));
    }
    Ok((since, limit))
}

/// The remediation decisions (acted or suppressed, with the guard and the numbers), newest last.
async fn remediations(
    State(api): State<Arc<Api>>,
    axum::extract::Query(query): axum::extract::Query<RemediationsQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        api.auth
            .read(&headers)
            .map_err(|_| Rejection::Unauthorized)?;
        let (since, limit) =
            history_window(query.since.as_deref(), query.limit).map_err(Rejection::Invalid)?;
        api.ensure_connected()?;
        let from = Utc::now() - chrono::Duration::from_std(since).unwrap_or_default();
        proxflow_runtime::bus::history::since::<RemediationDecision>(
            &api.ctx.bus.js,
            proxflow_schemas::names::stream::EVT,
            <RemediationDecision as proxflow_schemas::Message>::SUBJECT,
            from,
            limit,
        )
        .await
        .map_err(|e| Rejection::Unavailable(e.to_string()))
    }
    .await;
    match result {
        Ok(decisions) => axum::Json(decisions).into_response(),
        Err(rejection) => rejection.into_response(),
    }
}

async fn workflow(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match api.read_workflow(&id, &headers).await {
        Ok(record) => axum::Json(record).into_response(),
        Err(rejection) => rejection.into_response(),
    }
}

impl Api {
    async fn accept(&self, request: Request) -> Result<Accepted, Rejection> {
        let (parts, body) = request.into_parts();
        if !is_json(&parts.headers) {
            return Err(Rejection::UnsupportedType);
        }
        let now = Utc::now();
        self.auth
            .before_body(&parts.headers, now.timestamp())
            .map_err(|e| {
                tracing::info!(reason = %e, "credentials refused before the body");
                Rejection::Unauthorized
            })?;
        let body = self.read_body(&parts.headers, body).await?;
        // The request travels as one message: one that cannot fit the bus is refused before a
        // workflow is recorded for it.
        if body.len() + BUS_HEADROOM > self.max_payload() {
            return Err(Rejection::TooLargeForBus {
                what: format!("a {}-byte provisioning request", body.len()),
                max_payload: self.max_payload(),
            });
        }
        let caller = self
            .auth
            .signed(&parts.headers, &body, now.timestamp())
            .map_err(|e| {
                tracing::info!(reason = %e, "credentials refused");
                Rejection::Unauthorized
            })?;
        let header_key = match parts.headers.get(IDEMPOTENCY_KEY_HEADER) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                Rejection::Invalid(FieldErrors::from([(
                    "idempotency_key".into(),
                    "the Idempotency-Key header must be printable ASCII".into(),
                )]))
            })?),
        };
        let request =
            request::parse(&body, header_key, &self.profiles).map_err(Rejection::Invalid)?;

        self.ensure_connected()?;
        let digest = hex::encode(Sha256::digest(&body));
        if let Caller::Webhook { id, .. } = &caller
            && let Some(seen) = self.store.webhook(id).await?
        {
            return self.replayed(id, &seen, &digest).await;
        }
        let base = self.base.clone();
        let message = requested(&request, &caller, now);
        let record = first_record(&message, &caller);
        let accepted = match self.store.workflow(&record.id).await? {
            Some(existing) => self.repeated(existing, &message, base).await?,
            None => {
                // The name and the address are claimed before the record exists: a request refused
                // here leaves no workflow behind for a retry of its key to find.
                let claimed = claims::of_request(&message);
                self.store.claims.take(&record.id, &claimed, now).await?;
                match self.store.create_workflow(&record).await? {
                    Created::New => {
                        self.publish(&message).await?;
                        Accepted {
                            record,
                            created: true,
                            base,
                        }
                    }
                    // A concurrent request with the same key created it first.
                    Created::Existing(existing) => {
                        let stored = stored_request(&existing);
                        let theirs = stored.as_ref().map(claims::of_request);
                        let repeated = self.repeated(*existing, &message, base).await;
                        if repeated.is_err() {
                            // What this request claimed that the workflow does not use goes back.
                            let extra: Vec<Claimed<'_>> = claimed
                                .iter()
                                .filter(|c| theirs.as_ref().is_none_or(|t| !t.contains(c)))
                                .copied()
                                .collect();
                            if let Err(e) = self.store.claims.release(&record.id, &extra).await {
                                tracing::warn!(error = %e, "claims of a refused request not released");
                            }
                        }
                        repeated?
                    }
                }
            }
        };
        if let Caller::Webhook { id, .. } = &caller {
            match self
                .store
                .record_webhook(id, &accepted.record.id, &digest)
                .await
            {
                Ok(true) => {}
                // Another delivery of the same id got there first (a concurrent retry): answered
                // like any later retry of it.
                Ok(false) => {
                    return match self.store.webhook(id).await? {
                        Some(seen) => self.replayed(id, &seen, &digest).await,
                        None => Err(Rejection::Replayed(id.clone())),
                    };
                }
                // The request is in; without the record a replay still maps to the same workflow.
                Err(e) => {
                    tracing::warn!(error = %e, "accepted, but the webhook id could not be recorded")
                }
            }
        }
        Ok(accepted)
    }

    /// A request whose idempotency key started a workflow already: the same request gets that
    /// workflow (200), another request under the key is refused (422).
    async fn repeated(
        &self,
        existing: WorkflowRecord,
        message: &ProvisionRequested,
        base: String,
    ) -> Result<Accepted, Rejection> {
        if !asks_the_same(&existing, message) {
            return Err(Rejection::Invalid(FieldErrors::from([(
                "idempotency_key".into(),
                format!(
                    "already used for a different request (workflow {}); a new request needs a \
                     new key",
                    existing.id
                ),
            )])));
        }
        // Still pending: the earlier request's publish may have failed after its record was
        // created. Publishing the stored request again heals that, and is dropped by the stream's
        // dedupe window when the first one did land.
        if existing.state == WorkflowState::Pending {
            match serde_json::from_value::<ProvisionRequested>(existing.data.clone()) {
                Ok(original) => self.publish(&original).await?,
                Err(e) => {
                    tracing::warn!(workflow = %existing.id, error = %e, "pending workflow's request is unreadable; not re-published")
                }
            }
        }
        Ok(Accepted {
            record: existing,
            created: false,
            base,
        })
    }

    /// A webhook id accepted before: a sender retrying after it lost our answer gets the same
    /// workflow again (200, `Location`), so it never records a failure for a VM that exists; the
    /// same id with another body is a sender's bug, refused with 409.
    async fn replayed(
        &self,
        id: &str,
        seen: &WebhookSeen,
        digest: &str,
    ) -> Result<Accepted, Rejection> {
        if seen.body_sha256.as_deref().is_some_and(|d| d != digest) {
            return Err(Rejection::Replayed(id.to_string()));
        }
        let record = self
            .store
            .workflow(&seen.workflow_id)
            .await?
            .ok_or_else(|| Rejection::NotFound(seen.workflow_id.clone()))?;
        Ok(Accepted {
            record,
            created: false,
            base: self.base.clone(),
        })
    }

    /// A delivery passes content type (415), size (413), credentials (401), payload (400), then every
    /// alert is published with its dedupe id before the 200; any failure or back-pressure is 503, so
    /// Alertmanager retries the whole delivery and the stream drops what already landed.
    async fn accept_alerts(&self, request: Request) -> Result<AlertsAccepted, Rejection> {
        let (parts, body) = request.into_parts();
        if !is_json(&parts.headers) {
            return Err(Rejection::UnsupportedType);
        }
        // Credentials come from the headers: nobody unauthenticated gets a body read.
        let caller = self.auth.alertmanager(&parts.headers).map_err(|e| {
            tracing::info!(reason = %e, "alert credentials refused");
            Rejection::Unauthorized
        })?;
        let body = read_limited(
            &parts.headers,
            body,
            self.alert_max_body,
            self.body_read_timeout,
        )
        .await?;
        let alerts = crate::alertmanager::parse(&body, &caller.requested_by(), Utc::now())
            .map_err(Rejection::Malformed)?;
        self.ensure_connected()?;
        // One delivery holds at most its share of the permits and publishes through them in
        // turn, so a 10,000-alert delivery cannot starve the one-alert deliveries next to it.
        let share = alerts.len().min(self.alert_max_per_delivery).max(1);
        let wanted = u32::try_from(share).unwrap_or(u32::MAX);
        let _in_flight = self
            .alert_permits
            .clone()
            .try_acquire_many_owned(wanted)
            .map(|permits| InFlight::new(permits, &self.alerts_in_flight))
            .map_err(|_| {
                Rejection::Unavailable(format!(
                    "{} alerts are being published already (gateway.alerts.max_in_flight {}); retry later",
                    self.alert_max_in_flight - self.alert_permits.available_permits(),
                    self.alert_max_in_flight
                ))
            })?;
        let publisher = &self.ctx.bus.publisher;
        let mut results = Vec::with_capacity(alerts.len());
        for wave in alerts.chunks(share) {
            results.extend(
                futures::future::join_all(wave.iter().map(|alert| publisher.publish(alert))).await,
            );
        }
        let mut duplicates = 0;
        let mut failed = Vec::new();
        for (alert, result) in alerts.iter().zip(results) {
            match result {
                Ok(receipt) => duplicates += usize::from(receipt.duplicate),
                Err(e) if e.is_too_large() => {
                    return Err(Rejection::TooLargeForBus {
                        what: format!("alert {}", alert.fingerprint),
                        max_payload: self.max_payload(),
                    });
                }
                Err(e) => failed.push(format!("{}: {e}", alert.fingerprint)),
            }
        }
        if let Some(first) = failed.first() {
            return Err(Rejection::Unavailable(format!(
                "{} of {} alerts could not be queued (first: {first}); retry the delivery",
                failed.len(),
                alerts.len()
            )));
        }
        Ok(AlertsAccepted {
            alerts: alerts.len(),
            duplicates,
        })
    }

    /// Reads the body up to `max_body`: a declared length over the limit is refused before reading.
    pub(crate) async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<bytes::Bytes, Rejection> {
        read_limited(headers, body, self.max_body, self.body_read_timeout).await
    }
}

/// The permits of one delivery's alerts, counted in the in-flight gauge until they are returned.
struct InFlight {
    permits: tokio::sync::OwnedSemaphorePermit,
    gauge: Gauge,
}

impl InFlight {
    fn new(permits: tokio::sync::OwnedSemaphorePermit, gauge: &Gauge) -> Self {
        gauge.inc_by(i64::try_from(permits.num_permits()).unwrap_or(i64::MAX));
        Self {
            permits,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge
            .dec_by(i64::try_from(self.permits.num_permits()).unwrap_or(i64::MAX));
    }
}

/// Reads a body up to `max_body` within `deadline`: a declared length over the limit is refused
/// before reading, a body still arriving at the deadline is refused with 408.
async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max_body: usize,
    deadline: std::time::Duration,
) -> Result<bytes::Bytes, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(Rejection::TooLarge(max_body));
    }
    // Past the limit the read stops with an error; the other way it fails, a broken connection,
    // leaves nobody to answer.
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, max_body)).await {
        Ok(read) => read.map_err(|_| Rejection::TooLarge(max_body)),
        Err(_) => Err(Rejection::SlowBody(deadline)),
    }
}

/// Room a message needs beyond the request body: its envelope fields and headers.
const BUS_HEADROOM: usize = 4096;

impl Api {
    /// The connected server's `max_payload` (1 MiB by default; a server may be configured lower).
    fn max_payload(&self) -> usize {
        self.ctx.bus.client.server_info().max_payload
    }

    /// Fails fast with 503 while NATS is disconnected instead of waiting out request timeouts.
    pub(crate) fn ensure_connected(&self) -> Result<(), Rejection> {
        if self.ctx.bus.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Rejection::Unavailable(
                "the message bus (NATS) is not connected; retry later".into(),
            ));
        }
        // Connected is not enough on a cluster: without a quorum every publish would wait out
        // its retries and fail. The JetStream probe's last answer refuses at once, with the cause.
        if self
            .ctx
            .health
            .check(proxflow_runtime::bus::probe::JETSTREAM_CHECK)
            == Some(false)
        {
            return Err(Rejection::Unavailable(
                "JetStream is unavailable (no quorum: NATS nodes down, or a leader election); \
                 retry later"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn publish(&self, message: &ProvisionRequested) -> Result<(), Rejection> {
        self.ctx
            .bus
            .publisher
            .publish(message)
            .await
            .map(drop)
            .map_err(|e| {
                if e.is_too_large() {
                    Rejection::TooLargeForBus {
                        what: "the provisioning request".into(),
                        max_payload: self.max_payload(),
                    }
                } else {
                    Rejection::Unavailable(format!("the request could not be queued: {e}"))
                }
            })
    }

    async fn read_workflow(
        &self,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<WorkflowRecord, Rejection> {
        self.auth.read(headers).map_err(|e| {
            tracing::info!(reason = %e, "credentials refused");
            Rejection::Unauthorized
        })?;
        if !store::is_workflow_id(id) {
            return Err(Rejection::NotFound(id.to_owned()));
        }
        self.ensure_connected()?;
        self.store
            .workflow(id)
            .await?
            .ok_or_else(|| Rejection::NotFound(id.to_owned()))
    }

    /// `public_url`, else `http://<Host>` when the `Host` header is a plain authority, else nothing
    /// (a relative URL).
    fn accepted_response(accepted: Accepted) -> Response {
        let record = accepted.record;
        let status_url = format!("{}{WORKFLOWS_PATH}/{}", accepted.base, record.id);
        let body = WorkflowAccepted {
            workflow_id: record.id,
            state: record.state,
            trace_id: record.trace_id,
            status_url,
        };
        let status = if accepted.created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        let mut response = (status, axum::Json(&body)).into_response();
        if let Ok(location) = HeaderValue::from_str(&body.status_url) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// The request a workflow was started for, as its record keeps it (`data.input` once started,
/// `data` before).
fn stored_request(existing: &WorkflowRecord) -> Option<ProvisionRequested> {
    let stored = existing.data.get("input").unwrap_or(&existing.data);
    serde_json::from_value(stored.clone()).ok()
}

/// Whether `message` asks for what the workflow `existing` was started for (a retry under the same
/// idempotency key).
fn asks_the_same(existing: &WorkflowRecord, message: &ProvisionRequested) -> bool {
    let Some(stored) = stored_request(existing) else {
        // Unreadable (an older layout): the key alone decides, as before.
        return true;
    };
    (
        &stored.name,
        &stored.profile,
        &stored.overrides,
        &stored.ssh_keys,
        &stored.ip,
        &stored.tags,
    ) == (
        &message.name,
        &message.profile,
        &message.overrides,
        &message.ssh_keys,
        &message.ip,
        &message.tags,
    )
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The bus message of a validated request.
fn requested(
    request: &ProvisionRequest,
    caller: &Caller,
    now: chrono::DateTime<Utc>,
) -> ProvisionRequested {
    // A webhook delivery's id is its idempotency key by default (the sender retries with the same id);
    // a bearer call without a key gets a random one, so each call is a new workflow.
    let idempotency_key = request
        .idempotency_key
        .clone()
        .or_else(|| match caller {
            Caller::Webhook { id, .. } => Some(id.clone()),
            Caller::Token { .. } | Caller::Basic { .. } | Caller::Anonymous => None,
        })
        .unwrap_or_else(random_key);
    ProvisionRequested {
        workflow_id: workflow_id(&idempotency_key),
        idempotency_key,
        name: request.name.clone(),
        profile: request.profile_name().to_owned(),
        overrides: request.overrides.clone(),
        ssh_keys: request.ssh_keys.clone(),
        ip: request.ip.clone(),
        tags: request.tags.clone(),
        requested_by: caller.requested_by(),
        requested_at: now,
    }
}

/// The workflow's first record: pending, who asked and why, the request as its data, and the trace of
/// the request that started it.
fn first_record(message: &ProvisionRequested, caller: &Caller) -> WorkflowRecord {
    message.pending_workflow(
        caller.reference(),
        telemetry::trace_id(&tracing::Span::current()),
    )
}

/// A random, UUID-shaped key.
fn random_key() -> String {
    let b = rand::random::<[u8; 16]>();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_ids_derive_from_the_idempotency_key() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad.
        assert_eq!(workflow_id("abc"), "prov-ba7816bf8f01cfea4141");
        assert_ne!(workflow_id("ticket-42"), workflow_id("ticket-43"));
        assert!(store::is_workflow_id(&workflow_id("ticket-42")));
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonp"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn random_keys_look_like_uuids_and_differ() {
        let (a, b) = (random_key(), random_key());
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
    }
}
