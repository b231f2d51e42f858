//! The queues, read through the queue driver (`dashlight_core::queue`, the one owner of apalis's
//! tables): `GET /api/queues` (counts per state),
//! `GET /api/jobs` (newest first; apalis ids are ULIDs, so they sort by time), `GET /api/jobs/{id}`
//! and `POST /api/jobs/{id}/retry`, which puts a failed or killed job back to `Pending`.
//!
//! A job's state, as the API reports it, is derived from apalis's status: `pending` (due),
//! `scheduled` (due later), `running` (queued or running on a worker), `done`, `failed` (will be
//! retried by apalis) and `dead` (killed, or failed with its attempts used up).

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::QUEUES,
    queue::{self, ReportedState},
};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
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
        .routes(routes!(list_queues))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(retry_job))
}

/// The states a job is reported in.
pub const JOB_STATES: [&str; 6] = ["pending", "scheduled", "running", "done", "failed", "dead"];

/// Job counts of one queue by state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct QueueStats {
    /// Queue name (apalis `job_type`).
    #[schema(example = "dashlight.notifications")]
    pub queue: String,
    /// Due and waiting for a worker.
    pub pending: i64,
    /// Due later.
    pub scheduled: i64,
    /// Taken by a worker.
    pub running: i64,
    /// Finished.
    pub done: i64,
    /// Failed; apalis will try again.
    pub failed: i64,
    /// Killed, or failed with no attempts left.
    pub dead: i64,
}

impl From<queue::QueueCounts> for QueueStats {
    fn from(c: queue::QueueCounts) -> Self {
        QueueStats {
            queue: c.queue,
            pending: c.pending,
            scheduled: c.scheduled,
            running: c.running,
            done: c.done,
            failed: c.failed,
            dead: c.dead,
        }
    }
}

/// Counts jobs per queue and state ([`queue::queue_stats`]); every queue of
/// `dashlight_core::jobs::QUEUES` is listed, empty or not, then any other queue found.
pub async fn queue_stats<'c>(exec: impl PgExecutor<'c>, now: DateTime<Utc>) -> Result<Vec<QueueStats>, sqlx::Error> {
    Ok(queue::queue_stats(exec, now).await?.into_iter().map(QueueStats::from).collect())
}

/// Job counts per queue and state.
#[utoipa::path(get, path = "/api/queues", tag = "queues",
    responses(
        (status = 200, description = "Every queue", body = Vec<QueueStats>),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_queues(State(state): State<AppState>) -> Result<Json<Vec<QueueStats>>, ApiError> {
    Ok(Json(queue_stats(&state.pool, state.clock.now()).await?))
}

/// A job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobOut {
    /// apalis id (a ULID).
    #[schema(example = "01JD3Z6Q4M8W5T0Y2K7N9P1R3S")]
    pub id: String,
    /// Queue.
    pub queue: String,
    /// apalis's own status: Pending, Queued, Running, Done, Failed, Killed.
    pub status: String,
    /// The reported state: pending, scheduled, running, done, failed, dead.
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When it may run.
    pub run_at: DateTime<Utc>,
    /// Higher runs first.
    pub priority: Option<i32>,
    /// The worker holding it.
    pub lock_by: Option<String>,
    /// When it was taken.
    pub lock_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub done_at: Option<DateTime<Utc>>,
    /// The last result apalis recorded (an error for failed jobs).
    #[schema(value_type = Option<Object>)]
    pub last_result: Option<serde_json::Value>,
    /// The payload, decoded as JSON.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<queue::JobRecord> for JobOut {
    fn from(j: queue::JobRecord) -> Self {
        JobOut {
            id: j.id,
            queue: j.queue,
            status: j.status.as_str().to_owned(),
            state: j.state.as_str().to_owned(),
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            priority: j.priority,
            lock_by: j.lock_by,
            lock_at: j.lock_at,
            done_at: j.done_at,
            last_result: j.last_result,
            payload: j.payload,
        }
    }
}

/// True for a well-formed ULID (26 Crockford base32 characters).
fn is_ulid(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `GET /api/jobs` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only this queue (`dashlight.notifications`, `dashlight.periodic`).
    pub queue: Option<String>,
    /// Only this state: pending, scheduled, running, done, failed, dead.
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Jobs of a queue, newest first.
#[utoipa::path(get, path = "/api/jobs", tag = "queues", params(JobQuery),
    responses(
        (status = 200, description = "A page of jobs", body = Paged<JobOut>),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_jobs(State(state): State<AppState>, ApiQuery(q): ApiQuery<JobQuery>) -> Result<Json<Paged<JobOut>>, ApiError> {
    let limit = pagination::limit(q.limit)?;
    if let Some(queue) = q.queue.as_deref()
        && !QUEUES.contains(&queue)
    {
        return Err(ApiError::invalid("queue", format!("expected one of {}", QUEUES.join(", "))));
    }
    if let Some(s) = q.status.as_deref()
        && !JOB_STATES.contains(&s)
    {
        return Err(ApiError::invalid("status", format!("expected one of {}", JOB_STATES.join(", "))));
    }
    let cursor = q.cursor.filter(|c| !c.is_empty());
    if cursor.as_deref().is_some_and(|c| !is_ulid(c)) {
        return Err(ApiError::invalid("cursor", "not a cursor this list gave out"));
    }
    let state_filter = q.status.as_deref().and_then(ReportedState::parse);
    let rows = queue::list_jobs(
        &state.pool,
        state.clock.now(),
        q.queue.as_deref(),
        state_filter,
        cursor.as_deref(),
        limit + 1,
    )
    .await?;
    Ok(Json(pagination::finish(rows, limit, |r| r.id.clone()).map(JobOut::from)))
}

async fn load_job(state: &AppState, id: &str) -> Result<JobOut, ApiError> {
    if !is_ulid(id) {
        return Err(ApiError::NotFound("job not found".into()));
    }
    let row = queue::get_job(&state.pool, state.clock.now(), id).await?;
    row.map(JobOut::from).ok_or_else(|| ApiError::NotFound("job not found".into()))
}

/// One job: attempts, last result, payload.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "queues",
    params(("id" = String, Path, description = "apalis job id (ULID)")),
    responses(
        (status = 200, description = "The job", body = JobOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_job(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Json<JobOut>, ApiError> {
    Ok(Json(load_job(&state, &id).await?))
}

/// Runs a failed or killed job again: back to `Pending`, due now, attempts reset.
#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "queues",
    params(("id" = String, Path, description = "apalis job id (ULID)")),
    responses(
        (status = 202, description = "Back in its queue", body = JobOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not failed or killed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn retry_job(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<(StatusCode, Json<JobOut>), ApiError> {
    let current = load_job(&state, &id).await?;
    let reset = queue::retry_job(&state.pool, &id).await?;
    if !reset {
        return Err(ApiError::Conflict(format!(
            "the job is {}; only Failed or Killed jobs can be retried",
            current.status
        )));
    }
    tracing::info!(job_id = %id, queue = %current.queue, "job retry requested");
    Ok((StatusCode::ACCEPTED, Json(load_job(&state, &id).await?)))
}
