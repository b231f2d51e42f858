//! Calendar: `GET /calendar/{token}.ics`, a person's lessons as an iCalendar feed that calendar
//! apps subscribe to (no bearer token: the per-user `calendar_token` in the address is the
//! secret), and `POST /api/users/{id}/calendar-token/rotate`, which replaces that secret so the
//! old address stops working. The feed is built by `dashlight_core::calendar`.
//!
//! The router cannot match a parameter with a suffix (`{token}.ics`), so the feed is routed as
//! `/calendar/{token}` and the handler requires and strips the `.ics`; the OpenAPI document
//! names the real address.

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use dashlight_core::calendar;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::ApiPath,
};

/// The feed's content type.
pub const CONTENT_TYPE: &str = "text/calendar; charset=utf-8";

/// The feed's documentation: its route is registered by hand (see the module header).
#[derive(OpenApi)]
#[openapi(paths(calendar_feed))]
struct FeedDoc;

/// `/api` routes (bearer token).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(rotate_token))
}

/// The open feed route.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(FeedDoc::openapi()).route("/calendar/{token}", get(calendar_feed))
}

/// A person's lessons (booking confirmed or completed, from the last year on) as an iCalendar
/// feed: `VCALENDAR` without `METHOD`, one `VEVENT` per lesson with its stable `UID`. Subscribe
/// to it from a calendar app. No bearer token: the token in the address is the secret.
#[utoipa::path(get, path = "/calendar/{token}.ics", tag = "calendar",
    params(("token" = String, Path, description = "users.calendar_token (see POST /api/users/{id}/calendar-token/rotate)")),
    responses(
        (status = 200, description = "The feed (RFC 5545)", content_type = "text/calendar", body = String),
        (status = 404, description = "No feed at this address (unknown or rotated token)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn calendar_feed(State(state): State<AppState>, ApiPath(file): ApiPath<String>) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("no calendar feed at this address".into());
    let token = file
        .strip_suffix(".ics")
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .ok_or_else(not_found)?;
    let mut conn = state.pool.acquire().await?;
    let ics = calendar::feed_for_token(&mut conn, token, state.clock.now())
        .await?
        .ok_or_else(not_found)?;
    Ok((
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "private, max-age=300"),
            (header::CONTENT_DISPOSITION, "inline; filename=\"lessons.ics\""),
        ],
        ics,
    )
        .into_response())
}

/// A user's new feed secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CalendarToken {
    /// `users.id`.
    pub user_id: i64,
    /// The new `calendar_token`.
    pub calendar_token: String,
    /// The feed's path on this server: `/calendar/<token>.ics`.
    #[schema(example = "/calendar/3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c.ics")]
    pub feed_path: String,
}

/// Replaces the user's calendar feed secret: the old feed address answers 404 from now on.
#[utoipa::path(post, path = "/api/users/{id}/calendar-token/rotate", tag = "calendar",
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 200, description = "Rotated", body = CalendarToken),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rotate_token(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<CalendarToken>, ApiError> {
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let token = calendar::rotate_token(&mut tx, id, now).await?;
    tx.commit().await?;
    tracing::info!(user_id = id, "calendar token rotated");
    Ok(Json(CalendarToken {
        user_id: id,
        feed_path: format!("/calendar/{token}.ics"),
        calendar_token: token,
    }))
}
