//! Request tracing and Prometheus metrics. The trace span of a request names its method and
//! path and its end logs status and latency; headers (and with them the bearer token) are never
//! recorded. The Prometheus recorder is installed once per process, so building several routers
//! (tests, `dashlight up`) is fine; job gauges are refreshed on every scrape.

use std::{sync::OnceLock, time::Instant};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::TraceLayer,
};
use tracing::Span;

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder the first time it is called. When another
/// recorder is already installed, metrics are not exported and `/metrics` says so.
pub fn install_recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the Prometheus recorder; /metrics is unavailable");
                None
            }
        })
        .as_ref()
}

fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned())
}

/// Middleware: counts requests and records their latency by method, route and status.
pub async fn http_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = route_of(&req);
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("dashlight_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("dashlight_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// The path as logged: a calendar feed's address holds its secret token, which is left out.
fn loggable_path(path: &str) -> &str {
    if path.starts_with("/calendar/") {
        "/calendar/<token>.ics"
    } else {
        path
    }
}

/// The tracing layer: one span per request with method and path (no headers, no query string),
/// and one line per response with status and latency.
#[allow(clippy::type_complexity)]
pub fn trace_layer() -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    impl Fn(&Request<Body>) -> Span + Clone,
    (),
    impl Fn(&Response, std::time::Duration, &Span) + Clone,
> {
    TraceLayer::new_for_http()
        .make_span_with(
            |req: &Request<Body>| tracing::info_span!("request", method = %req.method(), path = %loggable_path(req.uri().path())),
        )
        .on_request(())
        .on_response(|res: &Response, latency: std::time::Duration, _span: &Span| {
            tracing::info!(
                status = res.status().as_u16(),
                latency_ms = (latency.as_secs_f64() * 10_000.0).round() / 10.0,
                "response"
            );
        })
}
