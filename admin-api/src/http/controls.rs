//! Operators' levers on the queues (docs/operating.md, "Operating the queues"), through
//! `dashlight_core::controls` and the queue driver: `POST /api/queues/{queue}/pause` and
//! `…/resume`, `POST /api/channels/{channel}/pause` and `…/resume`, `GET /api/pauses` (what is
//! paused and the record of who paused and resumed what), `POST /api/jobs/{id}/cancel` and
//! `POST /api/notifications/{id}/cancel`.
//!
//! Nothing here writes delivery state: a channel's resume enqueues the jobs of the sends it held,
//! and a cancel (of a job, or of one notification) enqueues the cancel of its notifications, which
//! the worker's recorder writes.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::{
    controls::{self, Scope},
    notify, queue,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, OptionalJson},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(pause_channel))
        .routes(routes!(resume_channel))
        .routes(routes!(list_pauses))
        .routes(routes!(cancel_job))
        .routes(routes!(cancel_notification))
}

/// What `POST /api/notifications/{id}/cancel` did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationCancelledOut {
    /// The notification.
    pub id: i64,
    /// `cancelling`: the worker records it `cancelled` and closes its open deliveries.
    pub status: String,
}

/// Cancels one open notification, whichever job carries it (a job may carry many; the others
/// are untouched). The worker records it `cancelled` and closes its open deliveries.
#[utoipa::path(post, path = "/api/notifications/{id}/cancel", tag = "queues",
    params(("id" = i64, Path, description = "notification id")),
    request_body(content = Option<ControlRequest>, description = "who (optional; `reason` is not used)"),
    responses(
        (status = 200, description = "Being cancelled", body = NotificationCancelledOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such notification", body = ErrorBody),
        (status = 409, description = "The notification is no longer open (sent, skipped, cancelled or failed)", body = ErrorBody),
        (status = 422, description = "A bad `by`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cancel_notification(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    OptionalJson(body): OptionalJson<ControlRequest>,
) -> Result<Json<NotificationCancelledOut>, ApiError> {
    let actor = body.actor()?;
    let mut tx = state.pool.begin().await?;
    let done = notify::cancel_one(&mut tx, id, &actor).await?;
    tx.commit().await?;
    match done {
        notify::CancelOne::Cancelling => {
            tracing::info!(notification = id, actor, "notification cancel requested");
            Ok(Json(NotificationCancelledOut {
                id,
                status: "cancelling".into(),
            }))
        }
        notify::CancelOne::NotFound => Err(ApiError::NotFound("notification not found".into())),
        notify::CancelOne::NotOpen(s) => Err(ApiError::Conflict(format!(
            "the notification is {}; only pending or processing notifications can be cancelled",
            s.as_str()
        ))),
    }
}

/// Who pulls the lever and why (both optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// Who does it, kept on record (default `api`); 1 to 200 characters.
    #[schema(example = "alice")]
    pub by: Option<String>,
    /// Why, kept on record and shown with the held sends; at most 500 characters.
    #[schema(example = "Twilio outage, see status page")]
    pub reason: Option<String>,
}

impl ControlRequest {
    fn actor(&self) -> Result<String, ApiError> {
        match self.by.as_deref().map(str::trim) {
            None => Ok("api".into()),
            Some(b) if b.is_empty() || b.chars().count() > 200 || b.chars().any(char::is_control) => {
                Err(ApiError::invalid("by", "expected 1 to 200 printable characters"))
            }
            Some(b) => Ok(b.to_owned()),
        }
    }

    fn reason(&self) -> Result<Option<&str>, ApiError> {
        match self.reason.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(r) if r.chars().count() > 500 || r.chars().any(char::is_control) => {
                Err(ApiError::invalid("reason", "expected at most 500 printable characters"))
            }
            Some(r) => Ok(Some(r)),
        }
    }
}

/// A pause in force.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PauseOut {
    /// `queue` or `channel`.
    pub scope: String,
    /// The queue or channel.
    pub name: String,
    /// Who paused it.
    pub paused_by: String,
    /// When.
    pub paused_at: DateTime<Utc>,
    /// Why.
    pub reason: Option<String>,
}

impl From<controls::Pause> for PauseOut {
    fn from(p: controls::Pause) -> Self {
        PauseOut {
            scope: p.scope.as_str().to_owned(),
            name: p.name,
            paused_by: p.paused_by,
            paused_at: p.paused_at,
            reason: p.reason,
        }
    }
}

/// What a resume did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ResumeOut {
    /// `queue` or `channel`.
    pub scope: String,
    /// The queue or channel.
    pub name: String,
    /// Whether it was paused (a resume of something not paused changes nothing).
    pub was_paused: bool,
    /// Notifications whose held sends were put back on their way (a channel's resume).
    pub woken: u64,
}

/// One pause or resume on record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ControlEventOut {
    /// `queue` or `channel`.
    pub scope: String,
    /// The queue or channel.
    pub name: String,
    /// `pause` or `resume`.
    pub action: String,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// What is paused, and the latest 50 pauses and resumes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PausesOut {
    /// Pauses in force.
    pub pauses: Vec<PauseOut>,
    /// The record, newest first.
    pub events: Vec<ControlEventOut>,
}

async fn pause(
    state: &AppState,
    scope: Scope,
    field: &str,
    name: &str,
    body: &ControlRequest,
) -> Result<(StatusCode, Json<PauseOut>), ApiError> {
    controls::check_target(scope, name).map_err(|m| ApiError::invalid(field, m))?;
    let (actor, reason) = (body.actor()?, body.reason()?);
    let mut conn = state.pool.acquire().await?;
    let p = controls::pause(&mut conn, scope, name, &actor, reason).await?;
    Ok((StatusCode::OK, Json(p.into())))
}

async fn resume(state: &AppState, scope: Scope, field: &str, name: &str, body: &ControlRequest) -> Result<Json<ResumeOut>, ApiError> {
    controls::check_target(scope, name).map_err(|m| ApiError::invalid(field, m))?;
    let actor = body.actor()?;
    body.reason()?;
    let mut tx = state.pool.begin().await?;
    let r = controls::resume(&mut tx, scope, name, &actor).await?;
    tx.commit().await?;
    Ok(Json(ResumeOut {
        scope: scope.as_str().to_owned(),
        name: name.to_owned(),
        was_paused: r.was_paused,
        woken: r.woken,
    }))
}

/// Pauses a queue: no worker fetches from it (jobs already held finish); survives restarts.
#[utoipa::path(post, path = "/api/queues/{queue}/pause", tag = "queues",
    params(("queue" = String, Path, description = "`dashlight.notifications` or `dashlight.periodic`")),
    request_body(content = Option<ControlRequest>, description = "who and why (optional)"),
    responses(
        (status = 200, description = "Paused (a second pause keeps the first one's author and time)", body = PauseOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Not a queue, or a bad `by`/`reason`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn pause_queue(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(body): OptionalJson<ControlRequest>,
) -> Result<(StatusCode, Json<PauseOut>), ApiError> {
    pause(&state, Scope::Queue, "queue", &name, &body).await
}

/// Resumes a queue: workers fetch from it again at once.
#[utoipa::path(post, path = "/api/queues/{queue}/resume", tag = "queues",
    params(("queue" = String, Path, description = "`dashlight.notifications` or `dashlight.periodic`")),
    request_body(content = Option<ControlRequest>, description = "who (optional)"),
    responses(
        (status = 200, description = "Resumed (or was not paused)", body = ResumeOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Not a queue, or a bad `by`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn resume_queue(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(body): OptionalJson<ControlRequest>,
) -> Result<Json<ResumeOut>, ApiError> {
    resume(&state, Scope::Queue, "queue", &name, &body).await
}

/// Pauses a channel (a provider outage): its sends wait as `pending` with the pause as their
/// reason; other channels go on.
#[utoipa::path(post, path = "/api/channels/{channel}/pause", tag = "queues",
    params(("channel" = String, Path, description = "`email`, `sms` or `push`")),
    request_body(content = Option<ControlRequest>, description = "who and why (optional)"),
    responses(
        (status = 200, description = "Paused (a second pause keeps the first one's author and time)", body = PauseOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Not a channel, or a bad `by`/`reason`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn pause_channel(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(body): OptionalJson<ControlRequest>,
) -> Result<(StatusCode, Json<PauseOut>), ApiError> {
    pause(&state, Scope::Channel, "channel", &name, &body).await
}

/// Resumes a channel: what its pause held is sent at once, oldest due first.
#[utoipa::path(post, path = "/api/channels/{channel}/resume", tag = "queues",
    params(("channel" = String, Path, description = "`email`, `sms` or `push`")),
    request_body(content = Option<ControlRequest>, description = "who (optional)"),
    responses(
        (status = 200, description = "Resumed (or was not paused)", body = ResumeOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Not a channel, or a bad `by`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn resume_channel(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(body): OptionalJson<ControlRequest>,
) -> Result<Json<ResumeOut>, ApiError> {
    resume(&state, Scope::Channel, "channel", &name, &body).await
}

/// Pauses in force and the latest pauses and resumes, who and when.
#[utoipa::path(get, path = "/api/pauses", tag = "queues",
    responses(
        (status = 200, description = "Pauses and their record", body = PausesOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_pauses(State(state): State<AppState>) -> Result<Json<PausesOut>, ApiError> {
    let pauses = controls::pauses(&state.pool).await?;
    let events = controls::events(&state.pool, 50).await?;
    Ok(Json(PausesOut {
        pauses: pauses.into_iter().map(PauseOut::from).collect(),
        events: events
            .into_iter()
            .map(|e| ControlEventOut {
                scope: e.scope.as_str().to_owned(),
                name: e.name,
                action: e.action,
                actor: e.actor,
                reason: e.reason,
                at: e.at,
            })
            .collect(),
    }))
}

/// A cancelled job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CancelledOut {
    /// The job.
    pub id: String,
    /// The notification whose cancel the worker now records, for a job about one notification.
    pub notification_id: Option<i64>,
    /// Every notification the job still carried, whose cancel the worker now records (a
    /// notification job may carry many; empty for a periodic job).
    pub notification_ids: Vec<i64>,
}

/// Cancels a pending or scheduled job: it will not run. Every notification a notification job
/// carries is recorded `cancelled` by the worker (to cancel one notification of a job, use
/// `POST /api/notifications/{id}/cancel`).
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "queues",
    params(("id" = String, Path, description = "apalis job id (ULID)")),
    request_body(content = Option<ControlRequest>, description = "who (optional; `reason` is not used)"),
    responses(
        (status = 200, description = "Cancelled", body = CancelledOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is running or finished", body = ErrorBody),
        (status = 422, description = "A bad `by`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cancel_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<ControlRequest>,
) -> Result<Json<CancelledOut>, ApiError> {
    let actor = body.actor()?;
    if !(id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return Err(ApiError::NotFound("job not found".into()));
    }
    let mut tx = state.pool.begin().await?;
    let done = queue::cancel_job(&mut tx, &id, &actor).await?;
    tx.commit().await?;
    match done {
        queue::Cancelled::Cancelled { notifications } => {
            tracing::info!(job_id = %id, ?notifications, actor, "job cancelled");
            Ok(Json(CancelledOut {
                id,
                notification_id: match notifications.as_slice() {
                    [one] => Some(*one),
                    _ => None,
                },
                notification_ids: notifications,
            }))
        }
        queue::Cancelled::NotFound => Err(ApiError::NotFound("job not found".into())),
        queue::Cancelled::NotCancellable(s) => Err(ApiError::Conflict(format!(
            "the job is {}; only Pending jobs and Failed jobs waiting for another try can be cancelled",
            s.as_str()
        ))),
    }
}
