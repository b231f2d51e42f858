//! What the reminders achieve: `GET /api/analytics/confirmations`, the figures the analytics
//! rollup keeps per day and per first reminder channel (`dashlight_core::analytics`).

use axum::{Json, extract::State};
use chrono::{Duration, NaiveDate};
use dashlight_core::analytics::{self, ConfirmationFigures};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::ApiQuery,
};

/// The longest range one request may ask for, in days.
pub const MAX_DAYS: i64 = 366;

/// Days shown when the range is not given: the last four weeks, today included.
pub const DEFAULT_DAYS: i64 = 28;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(confirmations))
}

/// `GET /api/analytics/confirmations` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// First day (`YYYY-MM-DD`, the school's local days); default: 27 days before `to`.
    pub from: Option<String>,
    /// Last day, included (`YYYY-MM-DD`); default: today.
    pub to: Option<String>,
}

/// One day and first reminder channel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfirmationRow {
    /// The lessons' local day.
    #[schema(value_type = String, format = Date, example = "2026-03-03")]
    pub day: NaiveDate,
    /// The channel of the lessons' first sent reminder: `push`, `sms` or `email`.
    pub channel: String,
    /// Lessons whose reminder was sent.
    pub reminded: i32,
    /// Of those, confirmed by the student.
    pub confirmed: i32,
    /// confirmed / reminded.
    pub confirm_rate: Option<f64>,
    /// Median minutes from the first reminder to the confirmation.
    pub confirm_minutes_p50: Option<f64>,
    /// No-shows among the confirmed lessons.
    pub no_shows_confirmed: i32,
    /// No-shows among the unconfirmed lessons.
    pub no_shows_unconfirmed: i32,
}

impl From<ConfirmationFigures> for ConfirmationRow {
    fn from(f: ConfirmationFigures) -> Self {
        ConfirmationRow {
            confirm_rate: (f.reminded > 0).then(|| f64::from(f.confirmed) / f64::from(f.reminded)),
            day: f.day,
            channel: f.channel,
            reminded: f.reminded,
            confirmed: f.confirmed,
            confirm_minutes_p50: f.confirm_minutes_p50,
            no_shows_confirmed: f.no_shows_confirmed,
            no_shows_unconfirmed: f.no_shows_unconfirmed,
        }
    }
}

/// The figures of a range of days.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfirmationReport {
    /// First day.
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    /// Last day (included).
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    /// By day, then channel; days and channels without reminded lessons are left out.
    pub days: Vec<ConfirmationRow>,
}

fn day(field: &str, v: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    v.map(|s| NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| ApiError::invalid(field, "expected a date YYYY-MM-DD")))
        .transpose()
}

/// The range of a query: `to` defaults to today (school time zone), `from` to 27 days before.
pub fn range(today: NaiveDate, q: &RangeQuery) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let to = day("to", q.to.as_deref())?.unwrap_or(today);
    let from = day("from", q.from.as_deref())?.unwrap_or(to - Duration::days(DEFAULT_DAYS - 1));
    if from > to {
        return Err(ApiError::invalid("from", "must not be after `to`"));
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::invalid("from", format!("at most {MAX_DAYS} days at once")));
    }
    Ok((from, to))
}

/// Per local day of the lessons and per channel of their first sent reminder: reminded lessons,
/// how many the students confirmed, the median minutes from reminder to confirmation, and the
/// no-shows among confirmed and unconfirmed lessons. Kept by the analytics rollup (the last
/// three days are recomputed every run).
#[utoipa::path(get, path = "/api/analytics/confirmations", tag = "analytics", params(RangeQuery),
    responses(
        (status = 200, description = "The figures", body = ConfirmationReport),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn confirmations(State(state): State<AppState>, ApiQuery(q): ApiQuery<RangeQuery>) -> Result<Json<ConfirmationReport>, ApiError> {
    let today = state.clock.now().with_timezone(&state.config.school_timezone).date_naive();
    let (from, to) = range(today, &q)?;
    let mut conn = state.pool.acquire().await?;
    let days = analytics::confirmation_figures(&mut conn, from, to).await?;
    Ok(Json(ConfirmationReport {
        from,
        to,
        days: days.into_iter().map(ConfirmationRow::from).collect(),
    }))
}
