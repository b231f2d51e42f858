//! `dashlight-admin-api`: the operators' JSON API over HTTP (docs/api.md).
//!
//! It writes business rows through `dashlight_core` (people, bookings and series, lessons,
//! payments and packages, messages, CRM, calendar secrets), each request in one transaction
//! together with the notifications and jobs it implies (bookings and series through
//! `dashlight_core::db::retry_deadlock`), reads the queues and the delivery records, and
//! re-enqueues failed work. It never talks to a provider and never writes deliveries itself:
//! the providers' hooks (`/hooks/sms/*`) keep reports through `dashlight_core::receipts` (the
//! worker's recorder applies them), texts through `dashlight_core::replies`, and
//! suppressions are lifted through `dashlight_core::suppressions`.
//!
//! - [`error`]: the one API error enum and its status table; the JSON error body.
//! - [`extract`]: body, path and query extractors whose rejections are API errors; time formats.
//! - [`auth`]: the bearer-token check (constant time) on every `/api` route.
//! - [`guard`]: the client's address (`TRUSTED_PROXIES`), failed authentications counted per
//!   client address (429 over the limit), and the own page's device registrations per person.
//! - [`dashboard`]: the operators' dashboard at `/` (HTML pages, sign-in with the token); its
//!   buttons call the `/api` routes. Not part of [`ROUTES`] nor of the OpenAPI document.
//! - [`page`]: the one renderer of the HTML pages (dashboard, own page, offer and unsubscribe
//!   links): templates, security headers, content negotiation, the fallback page.
//! - [`pagination`]: `limit`/`cursor` and the `{items, next_cursor}` page.
//! - [`http`]: the handlers, one module per area, each with its routes.
//! - [`telemetry`]: request tracing, Prometheus metrics.
//! - [`docs`]: the OpenAPI document.
//! - [`server`]: the HTTP server: header-read and idle timeouts, connection limit.
//!
//! [`serve`] runs the API on a listener until a shutdown future resolves; [`run`] binds
//! `ADMIN_API_ADDR` first. [`ROUTES`] lists every route, the one list tests compare the router
//! and the OpenAPI document against.

pub mod auth;
pub mod dashboard;
pub mod docs;
pub mod error;
pub mod extract;
pub mod guard;
pub mod http;
pub mod page;
pub mod pagination;
pub mod server;
pub mod telemetry;

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use axum::Router;
use dashlight_core::{Clock, Config, bookings::BookingSettings};
use sqlx::PgPool;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, ErrorBody};

/// Largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Every route of the router as `(method, path)`, paths in OpenAPI/axum form. The router is
/// built from the same handlers, and tests check that this list, the router and the OpenAPI
/// document agree.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/users"),
    ("PUT", "/api/users/{id}/preferences"),
    ("POST", "/api/users/{id}/devices"),
    ("PUT", "/api/instructors/{id}/availability"),
    ("POST", "/api/bookings"),
    ("POST", "/api/bookings/{id}/cancel"),
    ("POST", "/api/bookings/{id}/reschedule"),
    ("GET", "/api/bookings/{id}/timeline"),
    ("POST", "/api/booking-series"),
    ("GET", "/api/queues"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{id}"),
    ("POST", "/api/jobs/{id}/retry"),
    ("POST", "/api/jobs/{id}/cancel"),
    ("POST", "/api/queues/{queue}/pause"),
    ("POST", "/api/queues/{queue}/resume"),
    ("POST", "/api/channels/{channel}/pause"),
    ("POST", "/api/channels/{channel}/resume"),
    ("GET", "/api/pauses"),
    ("GET", "/api/notifications"),
    ("POST", "/api/notifications/{id}/cancel"),
    ("GET", "/api/deliveries"),
    ("POST", "/api/deliveries/{id}/retry"),
    ("POST", "/api/deliveries/retry"),
    ("POST", "/api/bookings/{id}/complete"),
    ("POST", "/api/bookings/{id}/no-show"),
    ("POST", "/api/payments"),
    ("POST", "/api/lesson-packages"),
    ("POST", "/api/students/{id}/packages"),
    ("POST", "/api/messages"),
    ("POST", "/api/messages/{id}/read"),
    ("GET", "/api/users/{id}/messages"),
    ("POST", "/api/crm/contacts"),
    ("POST", "/api/crm/interactions"),
    ("POST", "/api/users/{id}/calendar-token/rotate"),
    ("GET", "/calendar/{token}.ics"),
    ("PUT", "/api/students/{id}/waitlist"),
    ("GET", "/api/students/{id}/waitlist"),
    ("GET", "/api/bookings/{id}/offers"),
    ("GET", "/offers/{token}"),
    ("POST", "/offers/{token}/accept"),
    ("GET", "/api/users/{id}/preferences"),
    ("POST", "/hooks/email/inbound"),
    ("GET", "/u/{token}"),
    ("POST", "/u/{token}"),
    ("POST", "/api/users/{id}/access-link"),
    ("POST", "/api/users/{id}/access-link/rotate"),
    ("GET", "/me/{token}"),
    ("POST", "/me/{token}/preferences"),
    ("POST", "/me/{token}/devices"),
    ("POST", "/me/{token}/devices/{id}/remove"),
    ("POST", "/me/{token}/notifications/{id}/read"),
    ("GET", "/push/vapid-public-key"),
    ("GET", "/sw.js"),
    ("GET", "/confirm/{token}"),
    ("POST", "/confirm/{token}"),
    ("POST", "/confirm/{token}/push"),
    ("POST", "/me/{token}/lessons/{id}/confirm"),
    ("GET", "/api/suppressions"),
    ("DELETE", "/api/suppressions/{id}"),
    ("GET", "/api/analytics/confirmations"),
    ("GET", "/api/users/{id}/export"),
    ("POST", "/api/users/{id}/erase"),
    ("POST", "/hooks/sms/status"),
    ("POST", "/hooks/sms/inbound"),
    ("GET", "/api/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// "Now" for every write.
    pub clock: Clock,
    /// The configuration; the bearer token is `config.admin_api_token`. Its `Debug` shows the
    /// token, so it is never logged.
    pub config: Arc<Config>,
    /// What booking operations need (school time zone, reminder offsets).
    pub booking: BookingSettings,
    /// Failed authentications per client address on `/api` and the dashboard's sign-in
    /// (shared by every clone).
    pub auth_failures: Arc<guard::AuthFailures>,
    /// Failed authentications per client address on the inbound email hook: its own brake, so
    /// wrong tokens there never lock out the operators, nor theirs the mail server.
    pub email_hook_failures: Arc<guard::AuthFailures>,
    /// Device registrations per person from the own page.
    pub device_registrations: Arc<guard::PerPerson>,
    /// The job counts `/metrics` serves, refreshed every few seconds.
    pub queue_depths: Arc<telemetry::QueueDepths>,
    /// The installation's signing key: VERP addresses and unsubscribe links
    /// (`dashlight_core::signing`), loaded at start-up or, if the database was not reachable
    /// then, on first use.
    pub signing: SigningKey,
}

/// The signing key, loaded once from the database ([`dashlight_core::signing::load`]). The API
/// starts (and answers 503) while the database is away, so the key may come later.
#[derive(Clone, Default)]
pub struct SigningKey(Arc<tokio::sync::OnceCell<dashlight_core::signing::Key>>);

impl SigningKey {
    /// The key, loading it if needed; 503 when the database cannot give it.
    pub async fn get(&self, pool: &PgPool) -> Result<&dashlight_core::signing::Key, ApiError> {
        self.0
            .get_or_try_init(|| dashlight_core::signing::load_from(pool))
            .await
            .map_err(|e| ApiError::Unavailable(format!("the signing key cannot be loaded: {e:#}")))
    }
}

impl AppState {
    /// State from the configuration, a pool and a clock.
    pub fn new(config: Config, pool: PgPool, clock: Clock) -> AppState {
        let booking = BookingSettings::from_config(&config);
        AppState {
            pool,
            clock,
            auth_failures: Arc::new(guard::AuthFailures::new(config.auth_failure_limit)),
            email_hook_failures: Arc::new(guard::AuthFailures::new(config.auth_failure_limit)),
            device_registrations: Arc::new(guard::PerPerson::device_registrations()),
            queue_depths: Arc::new(telemetry::QueueDepths::default()),
            signing: SigningKey::default(),
            config: Arc::new(config),
            booking,
        }
    }
}

/// The `/api` routes (bearer token required) with their documentation.
pub(crate) fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(http::people::routes())
        .merge(http::privacy::routes())
        .merge(http::bookings::routes())
        .merge(http::queues::routes())
        .merge(http::controls::routes())
        .merge(http::deliveries::routes())
        .merge(http::lessons::routes())
        .merge(http::payments::routes())
        .merge(http::messages::routes())
        .merge(http::crm::routes())
        .merge(http::calendar::routes())
        .merge(http::gaps::routes())
        .merge(http::own_page::routes())
        .merge(http::suppressions::routes())
        .merge(http::analytics::routes())
        .merge(docs::routes())
}

/// The open routes: liveness, readiness, metrics, calendar feeds, offer links, providers'
/// hooks (SMS callbacks and replies; the inbound email hook with its own bearer token),
/// unsubscribe links, people's own pages with the VAPID key and the service worker.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    http::health::routes()
        .merge(http::calendar::open_routes())
        .merge(http::gaps::open_routes())
        .merge(http::unsubscribe::open_routes())
        .merge(http::own_page::open_routes())
        .merge(http::hooks::open_routes())
}

/// The application: every route of [`ROUTES`], the bearer check on `/api`, JSON errors
/// everywhere, the 1 MiB body limit, request tracing and metrics.
pub fn router(state: AppState) -> Router {
    telemetry::install_recorder();
    let api = api_routes().route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    let (router, _) = OpenApiRouter::new().merge(api).merge(open_routes()).split_for_parts();
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn(error::json_errors))
        // Merged after the JSON error layer: the dashboard answers in HTML, errors included.
        .merge(dashboard::routes())
        .merge(http::own_page::asset_routes())
        .layer(axum::middleware::from_fn(telemetry::http_metrics))
        .layer(telemetry::trace_layer())
        .with_state(state)
}

fn require_token(config: &Config) -> anyhow::Result<()> {
    match config.admin_api_token.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => dashlight_core::config::check_admin_token(t).map_err(anyhow::Error::new),
        _ => anyhow::bail!("ADMIN_API_TOKEN: required: set it to the bearer token operators will use"),
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
/// Fails when `ADMIN_API_TOKEN` is not configured.
pub async fn serve(
    config: &Config,
    pool: PgPool,
    clock: Clock,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    require_token(config)?;
    let addr = listener.local_addr().context("reading the listener's address")?;
    let state = AppState::new(config.clone(), pool, clock);
    if let Err(e) = state.signing.get(&state.pool).await {
        tracing::warn!(error = %e, "signing key not loaded at start-up; unsubscribe links and the inbound email hook load it on first use");
    }
    let limits = config.http_server.clone();
    let app = router(state);
    tracing::info!(%addr, max_connections = limits.max_connections, header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout, trusted_proxies = limits.trusted_proxies.len(), "admin API listening");
    server::serve(listener, app, &limits, shutdown)
        .await
        .context("the admin API server failed")?;
    tracing::info!("admin API stopped");
    Ok(())
}

/// Binds `config.admin_api_addr` and [`serve`]s until `shutdown` resolves.
pub async fn run(config: &Config, pool: PgPool, clock: Clock, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    require_token(config)?;
    let listener = tokio::net::TcpListener::bind(&config.admin_api_addr)
        .await
        .with_context(|| format!("ADMIN_API_ADDR: cannot listen on {}", config.admin_api_addr))?;
    serve(config, pool, clock, listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn routes_list_matches_the_openapi_document() {
        let doc = docs::openapi();
        let mut documented = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if op.is_some() {
                    documented.insert((method.to_owned(), path.clone()));
                }
            }
        }
        let listed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(listed, documented);
    }

    #[test]
    fn optional_bodies_are_documented_as_optional() {
        let doc = serde_json::to_value(docs::openapi()).unwrap();
        for path in ["/api/deliveries/retry", "/api/bookings/{id}/cancel"] {
            let body = &doc["paths"][path]["post"]["requestBody"];
            assert!(body.is_object(), "{path}");
            assert_ne!(body["required"], true, "{path}: {body}");
        }
        assert_eq!(doc["paths"]["/api/bookings"]["post"]["requestBody"]["required"], true);
    }
}
