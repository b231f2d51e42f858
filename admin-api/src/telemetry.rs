//! Request tracing and Prometheus metrics. The trace span of a request names its method and
//! path and its end logs status and latency; headers (and with them the bearer token) are never
//! recorded, and the secret segment of a capability address (`/me/{token}`, `/offers/{token}`,
//! `/calendar/{token}.ics`, `/u/{token}`) is logged as `<token>` ([`loggable_path`]). Metrics
//! are labelled by route template (`/me/{token}`), never by the path itself; unmatched paths
//! share the label `unmatched` and methods other than the standard ones share `other`, so
//! nobody can grow the scrape by inventing methods or paths. The Prometheus recorder is installed once per process, so building several routers
//! (tests, `dashlight up`) is fine. The job gauges come from [`QueueDepths`], a cache of the
//! per-queue counts refreshed at most every [`QUEUE_DEPTHS_MAX_AGE`]: counting `apalis.jobs` is a
//! scan of the whole table, and a scrape (or many scrapers, or anyone on the network, as
//! `/metrics` is open) must not cost one each.

use std::{future::Future, sync::OnceLock, time::Instant};

use chrono::{DateTime, Utc};

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

/// How old the job counts `/metrics` serves may be.
pub const QUEUE_DEPTHS_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// The last job counts per queue and when they were taken (by the injected clock). One refresh
/// at a time: concurrent scrapes wait for it and share its result.
#[derive(Debug, Default)]
pub struct QueueDepths {
    cached: tokio::sync::Mutex<Option<(DateTime<Utc>, Vec<crate::http::queues::QueueStats>)>>,
}

impl QueueDepths {
    /// The counts, from the cache when taken less than [`QUEUE_DEPTHS_MAX_AGE`] before `now`,
    /// otherwise from `count` (which is then cached; a failure is not).
    pub async fn get<E, F, Fut>(&self, now: DateTime<Utc>, count: F) -> Result<Vec<crate::http::queues::QueueStats>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<crate::http::queues::QueueStats>, E>>,
    {
        let mut cached = self.cached.lock().await;
        if let Some((at, stats)) = cached.as_ref()
            && *at <= now
            && now - *at < QUEUE_DEPTHS_MAX_AGE
        {
            return Ok(stats.clone());
        }
        let stats = count().await?;
        *cached = Some((now, stats.clone()));
        Ok(stats)
    }
}

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

/// The `method` label: a standard method's name, or `other` for any other (clients may send
/// any token as a method).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
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
    let method = method_label(req.method());
    let route = route_of(&req);
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("dashlight_http_requests_total", "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("dashlight_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// The address prefixes whose next segment is a secret token.
const SECRET_PREFIXES: &[&str] = &["/me/", "/offers/", "/calendar/", "/u/"];

/// The path as logged: the secret segment of a capability address (a person's page, an offer,
/// a calendar feed, an unsubscribe link) replaced by `<token>`, whatever follows kept
/// (`/me/<token>/devices`). Used wherever a request path is logged.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    for prefix in SECRET_PREFIXES {
        if let Some(rest) = path.strip_prefix(prefix) {
            let (secret, tail) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            let suffix = if *prefix == "/calendar/" && secret.ends_with(".ics") {
                ".ics"
            } else {
                ""
            };
            return std::borrow::Cow::Owned(format!("{prefix}<token>{suffix}{tail}"));
        }
    }
    std::borrow::Cow::Borrowed(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_path_segments_are_redacted() {
        let t = "0123456789abcdef".repeat(4);
        for (path, logged) in [
            (format!("/me/{t}"), "/me/<token>".to_owned()),
            (format!("/me/{t}/devices/7/remove"), "/me/<token>/devices/7/remove".to_owned()),
            (format!("/offers/{t}/accept"), "/offers/<token>/accept".to_owned()),
            (format!("/calendar/{t}.ics"), "/calendar/<token>.ics".to_owned()),
            (format!("/u/{t}"), "/u/<token>".to_owned()),
            ("/api/users/7/devices".to_owned(), "/api/users/7/devices".to_owned()),
            ("/me/".to_owned(), "/me/<token>".to_owned()),
        ] {
            assert_eq!(loggable_path(&path), logged);
            assert!(!loggable_path(&path).contains(&t));
        }
    }

    /// What the request trace writes, captured.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_request_trace_never_logs_a_secret_segment() {
        use tower::ServiceExt as _;
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = axum::Router::new()
            .route("/me/{token}", axum::routing::get(|| async { "page" }))
            .route("/offers/{token}/accept", axum::routing::post(|| async { "ok" }))
            .layer(trace_layer());
        let token = "5ecre7".repeat(10);
        for (method, path) in [
            ("GET", format!("/me/{token}")),
            ("POST", format!("/offers/{token}/accept")),
            ("GET", format!("/calendar/{token}.ics")),
            ("GET", format!("/u/{token}")),
        ] {
            let req = Request::builder().method(method).uri(&path).body(Body::empty()).unwrap();
            app.clone().oneshot(req).await.unwrap();
        }
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("/me/<token>") && logged.contains("/offers/<token>/accept"),
            "{logged}"
        );
        assert!(
            logged.contains("/calendar/<token>.ics") && logged.contains("/u/<token>"),
            "{logged}"
        );
        assert!(!logged.contains(&token), "a secret was logged: {logged}");
    }

    #[test]
    fn invented_methods_share_one_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(method_label(&Method::from_bytes(b"XYZZY123").unwrap()), "other");
    }
}
