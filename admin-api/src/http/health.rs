//! The open routes: `GET /healthz` (the process answers), `GET /readyz` (the database answers
//! and every migration is applied, checked within [`READY_TIMEOUT`]) and `GET /metrics`
//! (Prometheus text; the job gauges come from a cache refreshed at most every few seconds, see
//! [`telemetry::QueueDepths`]). No token needed.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    http::queues,
    telemetry,
};

/// How long readiness and the metrics' database query may take.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// A health answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: the database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database unreachable, too slow or not migrated", body = ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let check = async {
        sqlx::query!("SELECT 1 AS one")
            .fetch_one(&state.pool)
            .await
            .map_err(|e| format!("the database does not answer: {e}"))?;
        dashlight_core::db::migrations_applied(&state.pool)
            .await
            .map_err(|e| format!("cannot read the migrations: {e}"))
    };
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(true)) => Ok(Json(Health { status: "ready".into() })),
        Ok(Ok(false)) => Err(ApiError::Unavailable(
            "the database is not migrated: run `dashlight migrate`".into(),
        )),
        Ok(Err(m)) => Err(ApiError::Unavailable(m)),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the database did not answer within {} s",
            READY_TIMEOUT.as_secs()
        ))),
    }
}

/// Prometheus metrics: HTTP requests, deliveries (from the workers in this process) and
/// `dashlight_jobs{queue, state}`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "No metrics recorder in this process", body = ErrorBody),
    ))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = telemetry::install_recorder() else {
        return ApiError::Unavailable("metrics are not available in this process".into()).into_response();
    };
    let now = state.clock.now();
    let counted = state
        .queue_depths
        .get(now, || async {
            match tokio::time::timeout(READY_TIMEOUT, queues::queue_stats(&state.pool, now)).await {
                Ok(Ok(stats)) => Ok(stats),
                Ok(Err(e)) => Err(format!("cannot count jobs for /metrics: {e}")),
                Err(_) => Err("counting jobs for /metrics timed out".to_owned()),
            }
        })
        .await;
    match counted {
        Ok(stats) => {
            for q in stats {
                for (name, n) in [
                    ("pending", q.pending),
                    ("scheduled", q.scheduled),
                    ("running", q.running),
                    ("done", q.done),
                    ("failed", q.failed),
                    ("dead", q.dead),
                ] {
                    metrics::gauge!("dashlight_jobs", "queue" => q.queue.clone(), "state" => name).set(n as f64);
                }
            }
            metrics::gauge!("dashlight_jobs_scrape_ok").set(1.0);
        }
        Err(message) => {
            tracing::warn!(error = %message, "job gauges not refreshed");
            metrics::gauge!("dashlight_jobs_scrape_ok").set(0.0);
        }
    }
    // Paused queues and channels, and providers' holds: one gauge per target, 1 while in force.
    let levers = tokio::time::timeout(READY_TIMEOUT, async {
        Ok::<_, sqlx::Error>((
            dashlight_core::controls::pauses(&state.pool).await?,
            dashlight_core::controls::provider_holds(&state.pool).await?,
        ))
    })
    .await;
    if let Ok(Ok((pauses, holds))) = levers {
        for q in dashlight_core::jobs::QUEUES {
            let on = pauses
                .iter()
                .any(|p| p.scope == dashlight_core::controls::Scope::Queue && p.name == q);
            metrics::gauge!("dashlight_paused", "scope" => "queue", "name" => q).set(f64::from(u8::from(on)));
        }
        for c in [
            dashlight_core::kinds::Channel::Email,
            dashlight_core::kinds::Channel::Sms,
            dashlight_core::kinds::Channel::Push,
        ] {
            let on = pauses
                .iter()
                .any(|p| p.scope == dashlight_core::controls::Scope::Channel && p.name == c.as_str());
            metrics::gauge!("dashlight_paused", "scope" => "channel", "name" => c.as_str()).set(f64::from(u8::from(on)));
            let held = holds.iter().any(|(h, _, _)| *h == c);
            metrics::gauge!("dashlight_channel_provider_held", "channel" => c.as_str()).set(f64::from(u8::from(held)));
        }
    }
    handle.run_upkeep();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}
