//! The gateway's router: the API, the console, the ops endpoints, and a span per request.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use proxflow_runtime::{ServiceContext, telemetry};
use tracing::Instrument;

use crate::api::{self, Api};

/// The gateway's routes: the provisioning and workflow API next to the ops endpoints, each request in
/// a span that continues the caller's trace, with the trace id echoed back in `traceparent` so a
/// caller can look the trace up, and counted by route (`proxflow_http_requests_total`, its latency
/// in `proxflow_http_request_duration_seconds`).
pub(crate) fn router(
    ctx: &ServiceContext,
    api: Arc<Api>,
    expect: proxflow_view::overview::Expectations,
) -> Router {
    let console = Arc::new(crate::console::Console::new(api.clone(), expect));
    proxflow_runtime::ops::router(ctx.ops_state())
        .merge(api::routes(api))
        .merge(crate::console::routes(console))
        .route_layer(middleware::from_fn_with_state(
            ctx.metrics.requests(),
            proxflow_runtime::ops::count_requests,
        ))
        .layer(middleware::from_fn(trace_request))
}

async fn trace_request(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    telemetry::set_parent_from_http(&span, request.headers(), "gateway");
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    telemetry::inject_http(&span, response.headers_mut());
    response
}
