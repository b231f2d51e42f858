//! The queues, read from apalis's `apalis.jobs`: `GET /api/queues` (counts per state),
//! `GET /api/jobs` (newest first; apalis ids are ULIDs, so they sort by time), `GET /api/jobs/{id}`
//! and `POST /api/jobs/{id}/retry`, which puts a failed or killed job back to `Pending`.
//!
//! A job's state, as the API reports it, is derived from apalis's status: `pending` (due),
//! `scheduled` (due later), `running` (queued or running on a worker), `done`, `failed` (will be
//! retried by apalis) and `dead` (killed, or failed with its attempts used up).

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::jobs::QUEUES;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, ApiQuery},
    pagination,
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

/// SQL deriving the reported state from apalis's columns; `$1` is "now".
const STATE_SQL: &str = "CASE
        WHEN status = 'Pending' AND run_at <= $1 THEN 'pending'
        WHEN status = 'Pending' THEN 'scheduled'
        WHEN status IN ('Queued', 'Running') THEN 'running'
        WHEN status = 'Done' THEN 'done'
        WHEN status = 'Failed' AND attempts < max_attempts THEN 'failed'
        WHEN status = 'Killed' OR status = 'Failed' THEN 'dead'
        ELSE lower(status) END";

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

/// Counts jobs per queue and state; every queue of `dashlight_core::jobs::QUEUES` is listed,
/// empty or not, then any other queue found.
pub async fn queue_stats<'c>(exec: impl PgExecutor<'c>, now: DateTime<Utc>) -> Result<Vec<QueueStats>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT job_type, {STATE_SQL} AS state, count(*) FROM apalis.jobs GROUP BY 1, 2"
    )))
    .bind(now)
    .fetch_all(exec)
    .await?;
    let mut by_queue: BTreeMap<String, QueueStats> = BTreeMap::new();
    for (queue, state, n) in rows {
        let s = by_queue.entry(queue.clone()).or_insert_with(|| QueueStats {
            queue,
            ..Default::default()
        });
        match state.as_str() {
            "pending" => s.pending += n,
            "scheduled" => s.scheduled += n,
            "running" => s.running += n,
            "done" => s.done += n,
            "failed" => s.failed += n,
            _ => s.dead += n,
        }
    }
    let mut out: Vec<QueueStats> = QUEUES
        .iter()
        .map(|q| {
            by_queue.remove(*q).unwrap_or_else(|| QueueStats {
                queue: q.to_string(),
                ..Default::default()
            })
        })
        .collect();
    out.extend(by_queue.into_values());
    Ok(out)
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, FromRow)]
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
    #[sqlx(skip)]
    pub payload: serde_json::Value,
}

#[derive(FromRow)]
struct JobRow {
    #[sqlx(flatten)]
    job: JobOut,
    raw: Vec<u8>,
}

const JOB_COLUMNS: &str =
    "id, job_type AS queue, status, attempts, max_attempts, run_at, priority, lock_by, lock_at, done_at, last_result, job AS raw";

fn decode(row: JobRow) -> JobOut {
    let mut job = row.job;
    job.payload =
        serde_json::from_slice(&row.raw).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&row.raw).into_owned()));
    job
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

/// A page of jobs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    /// The jobs.
    pub items: Vec<JobOut>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Jobs of a queue, newest first.
#[utoipa::path(get, path = "/api/jobs", tag = "queues", params(JobQuery),
    responses(
        (status = 200, description = "A page", body = JobPage),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_jobs(State(state): State<AppState>, ApiQuery(q): ApiQuery<JobQuery>) -> Result<Json<JobPage>, ApiError> {
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
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS}, {STATE_SQL} AS state FROM apalis.jobs
         WHERE ($2::text IS NULL OR job_type = $2) AND ($3::text IS NULL OR {STATE_SQL} = $3) AND ($4::text IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    )))
    .bind(state.clock.now())
    .bind(&q.queue)
    .bind(&q.status)
    .bind(&cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (rows, next_cursor) = pagination::finish(rows, limit, |r| r.job.id.clone());
    Ok(Json(JobPage {
        items: rows.into_iter().map(decode).collect(),
        next_cursor,
    }))
}

async fn load_job(state: &AppState, id: &str) -> Result<JobOut, ApiError> {
    if !is_ulid(id) {
        return Err(ApiError::NotFound("job not found".into()));
    }
    let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS}, {STATE_SQL} AS state FROM apalis.jobs WHERE id = $2"
    )))
    .bind(state.clock.now())
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(decode).ok_or_else(|| ApiError::NotFound("job not found".into()))
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
    // The status check and the reset are one statement, so a job a worker just took is never
    // reset under it. Workers are woken the way apalis's insert trigger wakes them.
    let reset: Option<String> = sqlx::query_scalar(
        "WITH reset AS (
             UPDATE apalis.jobs SET status = 'Pending', run_at = now(), attempts = 0, lock_by = NULL, lock_at = NULL, done_at = NULL
             WHERE id = $1 AND status IN ('Failed', 'Killed')
             RETURNING id, job_type, run_at)
         SELECT id FROM reset,
             LATERAL (SELECT pg_notify('apalis::job::insert', json_build_object('job_type', job_type, 'id', id, 'run_at', run_at)::text)) AS woken",
    )
    .bind(&id)
    .fetch_optional(&state.pool)
    .await?;
    if reset.is_none() {
        return Err(ApiError::Conflict(format!(
            "the job is {}; only Failed or Killed jobs can be retried",
            current.status
        )));
    }
    tracing::info!(job_id = %id, queue = %current.queue, "job retry requested");
    Ok((StatusCode::ACCEPTED, Json(load_job(&state, &id).await?)))
}
