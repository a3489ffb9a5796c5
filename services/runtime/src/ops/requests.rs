//! Request metrics of an HTTP API (the gateway's): `proxflow_http_requests_total{route, method,
//! status}` and `proxflow_http_request_duration_seconds{route}`, labelled by the route's template
//! (`/v1/workflows/{id}`) rather than the path, so that the series stay few whatever paths clients
//! send. Applied with [`Router::route_layer`](axum::Router::route_layer) (the template is known
//! once a route matched; a request matching none is not counted here).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::Registrar;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

fn request_histogram() -> Histogram {
    // 1 ms .. ~16 s: most answers are a KV read or a publish; a slow one waits on JetStream.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The request metrics' families, registered once per registry ([`super::Metrics::requests`]).
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl RequestMetrics {
    pub(super) fn register(registry: &Registrar) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let seconds = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            request_histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route template",
            seconds.clone(),
        );
        Self { requests, seconds }
    }
}

/// The label of a method: the standard ones by name, anything else as `other` (a client picks
/// the method; it must not pick the series).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str)
}

/// The middleware: `router.route_layer(axum::middleware::from_fn_with_state(metrics.requests(),
/// count_requests))`.
pub async fn count_requests(
    State(metrics): State<RequestMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .seconds
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_method_and_status() {
        let metrics = super::super::Metrics::new();
        let app = Router::new()
            .route("/v1/workflows/{id}", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(
                metrics.requests(),
                count_requests,
            ));
        for id in ["a", "b"] {
            let request = Request::builder()
                .uri(format!("/v1/workflows/{id}"))
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let text = metrics.encode();
        assert!(
            text.contains(
                "proxflow_http_requests_total{route=\"/v1/workflows/{id}\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "proxflow_http_request_duration_seconds_count{route=\"/v1/workflows/{id}\"} 2"
            ),
            "{text}"
        );
    }
}
