//! Suppressed addresses and numbers (docs/hearing-back.md): `GET /api/suppressions` and
//! `DELETE /api/suppressions/{id}`. Hard bounces, STOP replies and Twilio's 21610 add them
//! ([`dashlight_core::suppressions`], the one writer); sends to them are `skipped`
//! (`suppressed` / `opted_out`) until an operator lifts them here (or the person texts START).

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::{
    kinds::Channel,
    suppressions::{self, Reason, Suppression},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, ApiQuery},
    pagination::{self, Paged},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_suppressions))
        .routes(routes!(lift_suppression))
}

/// A suppressed address or number.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SuppressionOut {
    /// `suppressions.id`.
    pub id: i64,
    /// `email` or `sms`.
    pub channel: String,
    /// The lower-cased address or the E.164 number; for an erased person only its keyed hash,
    /// `hmac-sha256:<64 hex digits>`.
    pub target: String,
    /// `bounced` (a hard bounce), `opted_out` (STOP, Twilio 21610) or `erased` (the person
    /// was erased).
    pub reason: String,
    /// The skip reason sends to it get: `suppressed`, `opted_out` or `erased`.
    pub skip_reason: String,
    /// The delivery that caused it, if one did.
    pub delivery_id: Option<i64>,
    /// The provider's words.
    pub detail: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<Suppression> for SuppressionOut {
    fn from(s: Suppression) -> Self {
        SuppressionOut {
            id: s.id,
            channel: s.channel.as_str().to_owned(),
            target: s.target,
            reason: match s.reason {
                Reason::Bounced => "bounced",
                Reason::OptedOut => "opted_out",
                Reason::Erased => "erased",
            }
            .to_owned(),
            skip_reason: s.reason.skip_reason().to_owned(),
            delivery_id: s.delivery_id,
            detail: s.detail,
            created_at: s.created_at,
        }
    }
}

/// `GET /api/suppressions` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SuppressionQuery {
    /// Only this channel (`email` or `sms`).
    pub channel: Option<String>,
    /// Only this reason (`bounced`, `opted_out` or `erased`).
    pub reason: Option<String>,
    /// Page size (1 to 500, default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Suppressed addresses and numbers, newest first.
#[utoipa::path(get, path = "/api/suppressions", tag = "suppressions", params(SuppressionQuery),
    responses(
        (status = 200, description = "A page of suppressions", body = Paged<SuppressionOut>),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_suppressions(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SuppressionQuery>,
) -> Result<Json<Paged<SuppressionOut>>, ApiError> {
    let limit = pagination::limit(q.limit)?;
    let cursor = pagination::id_cursor(q.cursor.as_deref())?;
    let channel = match q.channel.as_deref() {
        None => None,
        Some("email") => Some(Channel::Email),
        Some("sms") => Some(Channel::Sms),
        Some(_) => return Err(ApiError::invalid("channel", "expected email or sms")),
    };
    let reason = match q.reason.as_deref() {
        None => None,
        Some("bounced") => Some(Reason::Bounced),
        Some("opted_out") => Some(Reason::OptedOut),
        Some("erased") => Some(Reason::Erased),
        Some(_) => return Err(ApiError::invalid("reason", "expected bounced, opted_out or erased")),
    };
    let mut conn = state.pool.acquire().await?;
    let rows = suppressions::page(&mut conn, channel, reason, cursor, limit + 1).await?;
    Ok(Json(
        pagination::finish(rows, limit, |r| r.id.to_string()).map(SuppressionOut::from),
    ))
}

/// Lifts a suppression: sends to that address or number go out again.
#[utoipa::path(delete, path = "/api/suppressions/{id}", tag = "suppressions",
    params(("id" = i64, Path, description = "suppressions.id")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such suppression", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn lift_suppression(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    let mut conn = state.pool.acquire().await?;
    if !suppressions::lift(&mut conn, id).await? {
        return Err(ApiError::NotFound("suppression not found".into()));
    }
    tracing::info!(suppression = id, "suppression lifted by an operator");
    Ok(StatusCode::NO_CONTENT)
}
