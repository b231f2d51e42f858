//! Notifications and their delivery records: `GET /api/notifications`, `GET /api/deliveries`,
//! and the operator's retries `POST /api/deliveries/{id}/retry` and `POST /api/deliveries/retry`.
//! A retry only enqueues a job through `dashlight_core::notify::enqueue_delivery_retry`; the
//! worker's delivery module does the rest. Also the row types and loaders the booking timeline
//! shares.

use std::collections::HashMap;

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::{kinds::Kind, notify, states::DeliveryStatus};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, ApiQuery, OptionalJson, rfc3339},
    pagination::{self, Paged},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_notifications))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
        .routes(routes!(retry_deliveries))
}

/// Every delivery status (docs/notifications.md, "Delivery statuses"; `dashlight_core::states`).
pub const DELIVERY_STATUSES: &[&str] = DeliveryStatus::NAMES;
/// The statuses an operator may retry.
pub const RETRYABLE: [&str; 3] = [
    DeliveryStatus::RETRYABLE[0].as_str(),
    DeliveryStatus::RETRYABLE[1].as_str(),
    DeliveryStatus::RETRYABLE[2].as_str(),
];

/// One attempt at a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptOut {
    /// `delivery_attempts.id`.
    pub id: i64,
    /// Delivery.
    pub delivery_id: i64,
    /// 1, 2, …
    pub attempt: i32,
    /// The apalis job that made it.
    pub job_id: Option<String>,
    /// The worker that made it.
    pub worker: Option<String>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// `sent`, `transient`, `permanent` or `interrupted`.
    pub outcome: Option<String>,
    /// The provider's error.
    pub error: Option<String>,
    /// The provider's id of the message.
    pub provider_message_id: Option<String>,
    /// Retry-After the provider asked for.
    pub retry_after_ms: Option<i64>,
}

/// A delivery record: one channel path of a notification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryOut {
    /// `notification_deliveries.id`.
    pub id: i64,
    /// Its notification.
    pub notification_id: i64,
    /// The notification's kind.
    pub kind: String,
    /// The recipient user (none for school-facing kinds).
    pub user_id: Option<i64>,
    /// `email`, `sms` or `push`.
    pub channel: String,
    /// Address, number or push endpoint.
    pub target: String,
    /// `user_devices.id` for push.
    pub device_id: Option<i64>,
    /// pending, sending, sent, retrying, failed, dead, skipped, cancelled, delivered, undelivered.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// Attempts before `dead`.
    pub max_attempts: i32,
    /// Last error.
    pub last_error: Option<String>,
    /// Why it was skipped.
    pub skip_reason: Option<String>,
    /// The provider's id of the message.
    pub provider_message_id: Option<String>,
    /// Next retry.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// Delivered (where the provider says so).
    pub delivered_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A delivery with its attempts, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryWithAttempts {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: DeliveryOut,
    /// Its attempts.
    pub attempts_log: Vec<AttemptOut>,
}

/// A notification with its deliveries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationOut {
    /// `notifications.id`.
    pub id: i64,
    /// Recipient user.
    pub user_id: Option<i64>,
    /// Recipient address when not a user.
    pub recipient_email: Option<String>,
    /// Kind, e.g. `booking_confirmed`.
    pub kind: String,
    /// Short title.
    pub title: String,
    /// One-line summary.
    pub content: String,
    /// Channels in order.
    pub channels: Vec<String>,
    /// `all` or `first`.
    pub policy: String,
    /// pending, processing, done, skipped, cancelled.
    pub status: String,
    /// Why it is in that status.
    pub status_reason: Option<String>,
    /// Related booking.
    pub booking_id: Option<i64>,
    /// When it should reach the recipient.
    pub due_at: DateTime<Utc>,
    /// Not sent after this.
    pub expires_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Its deliveries, oldest first, each with its attempts.
    pub deliveries: Vec<DeliveryWithAttempts>,
}

struct NotificationRow {
    id: i64,
    user_id: Option<i64>,
    recipient_email: Option<String>,
    kind: String,
    title: String,
    content: String,
    channels: Vec<String>,
    policy: String,
    status: String,
    status_reason: Option<String>,
    booking_id: Option<i64>,
    due_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// [`NotificationRow`]s: `SELECT <its columns> FROM notifications` and then the literal `$rest`
/// (`WHERE …`) with its arguments. One column list for the statements that read notifications,
/// each still one literal the compiler checks.
macro_rules! select_notifications {
    ($rest:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            NotificationRow,
            "SELECT id, user_id, recipient_email, type AS kind, title, content, channels, policy, status, status_reason, booking_id,
                    due_at, expires_at, created_at
             FROM notifications " + $rest,
            $($arg),+
        )
    };
}

/// [`DeliveryOut`]s: `SELECT <its columns> FROM notification_deliveries d JOIN notifications n`
/// and then the literal `$rest` (`WHERE …`) with its arguments, as `select_notifications!`.
macro_rules! select_deliveries {
    ($rest:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            DeliveryOut,
            "SELECT d.id, d.notification_id, n.type AS kind, n.user_id, d.channel, d.target, d.device_id, d.status, d.attempts,
                    d.max_attempts, d.last_error, d.skip_reason, d.provider_message_id, d.next_attempt_at, d.sent_at, d.delivered_at,
                    d.created_at, d.updated_at
             FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id " + $rest,
            $($arg),+
        )
    };
}

/// Attaches deliveries (oldest first) and their attempts to notification rows.
async fn with_deliveries(conn: &mut PgConnection, rows: Vec<NotificationRow>) -> Result<Vec<NotificationOut>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let deliveries: Vec<DeliveryOut> = select_deliveries!("WHERE d.notification_id = ANY($1) ORDER BY d.created_at, d.id", &ids)
        .fetch_all(&mut *conn)
        .await?;
    let delivery_ids: Vec<i64> = deliveries.iter().map(|d| d.id).collect();
    let attempts: Vec<AttemptOut> = sqlx::query_as!(
        AttemptOut,
        r#"SELECT id AS "id!", delivery_id AS "delivery_id!", attempt AS "attempt!", job_id, worker, started_at AS "started_at!",
                finished_at, outcome, error, provider_message_id, retry_after_ms
         FROM delivery_attempts WHERE delivery_id = ANY($1) ORDER BY attempt, id"#,
        &delivery_ids,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut attempts_by: HashMap<i64, Vec<AttemptOut>> = HashMap::new();
    for a in attempts {
        attempts_by.entry(a.delivery_id).or_default().push(a);
    }
    let mut by_notification: HashMap<i64, Vec<DeliveryWithAttempts>> = HashMap::new();
    for d in deliveries {
        let attempts_log = attempts_by.remove(&d.id).unwrap_or_default();
        by_notification
            .entry(d.notification_id)
            .or_default()
            .push(DeliveryWithAttempts { delivery: d, attempts_log });
    }
    Ok(rows
        .into_iter()
        .map(|r| NotificationOut {
            deliveries: by_notification.remove(&r.id).unwrap_or_default(),
            id: r.id,
            user_id: r.user_id,
            recipient_email: r.recipient_email,
            kind: r.kind,
            title: r.title,
            content: r.content,
            channels: r.channels,
            policy: r.policy,
            status: r.status,
            status_reason: r.status_reason,
            booking_id: r.booking_id,
            due_at: r.due_at,
            expires_at: r.expires_at,
            created_at: r.created_at,
        })
        .collect())
}

/// A booking's notifications, oldest first, each with its deliveries and their attempts.
pub(crate) async fn for_booking(conn: &mut PgConnection, booking_id: i64) -> Result<Vec<NotificationOut>, ApiError> {
    let rows: Vec<NotificationRow> = select_notifications!("WHERE booking_id = $1 ORDER BY created_at, id", booking_id)
        .fetch_all(&mut *conn)
        .await?;
    with_deliveries(conn, rows).await
}

fn check_kind(kind: Option<&str>) -> Result<(), ApiError> {
    match kind {
        Some(k) if Kind::parse(k).is_none() => {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            Err(ApiError::invalid("kind", format!("expected one of {}", all.join(", "))))
        }
        _ => Ok(()),
    }
}

fn check_channel(channel: Option<&str>) -> Result<(), ApiError> {
    match channel {
        Some(c) if !matches!(c, "email" | "sms" | "push") => Err(ApiError::invalid("channel", "expected email, sms or push")),
        _ => Ok(()),
    }
}

/// `GET /api/notifications` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only this recipient (`users.id`).
    pub user_id: Option<i64>,
    /// Only this kind, e.g. `lesson_reminder`.
    pub kind: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Notifications with their deliveries, newest first.
#[utoipa::path(get, path = "/api/notifications", tag = "deliveries", params(NotificationQuery),
    responses(
        (status = 200, description = "A page of notifications", body = Paged<NotificationOut>),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_notifications(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<NotificationQuery>,
) -> Result<Json<Paged<NotificationOut>>, ApiError> {
    let limit = pagination::limit(q.limit)?;
    let cursor = pagination::id_cursor(q.cursor.as_deref())?;
    check_kind(q.kind.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let rows: Vec<NotificationRow> = select_notifications!(
        "WHERE ($1::bigint IS NULL OR user_id = $1) AND ($2::text IS NULL OR type = $2) AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
        q.user_id,
        q.kind.as_deref(),
        cursor,
        limit + 1,
    )
    .fetch_all(&mut *conn)
    .await?;
    let Paged { items: rows, next_cursor } = pagination::finish(rows, limit, |r| r.id.to_string());
    let items = with_deliveries(&mut conn, rows).await?;
    Ok(Json(Paged { items, next_cursor }))
}

/// `GET /api/deliveries` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only this status (pending, sending, sent, retrying, failed, dead, skipped, cancelled, delivered, undelivered).
    pub status: Option<String>,
    /// Only this channel (email, sms, push).
    pub channel: Option<String>,
    /// Only deliveries to this user (`users.id`).
    pub user_id: Option<i64>,
    /// Only deliveries of this notification kind.
    pub kind: Option<String>,
    /// Only deliveries changed at or after this time (RFC 3339 with offset; encode `+` as %2B).
    #[serde(default, deserialize_with = "rfc3339::optional")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Delivery records, newest first.
#[utoipa::path(get, path = "/api/deliveries", tag = "deliveries", params(DeliveryQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = Paged<DeliveryOut>),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<Paged<DeliveryOut>>, ApiError> {
    let limit = pagination::limit(q.limit)?;
    let cursor = pagination::id_cursor(q.cursor.as_deref())?;
    if let Some(s) = q.status.as_deref()
        && !DELIVERY_STATUSES.contains(&s)
    {
        return Err(ApiError::invalid(
            "status",
            format!("expected one of {}", DELIVERY_STATUSES.join(", ")),
        ));
    }
    check_channel(q.channel.as_deref())?;
    check_kind(q.kind.as_deref())?;
    let statuses: Option<Vec<String>> = q.status.map(|s| vec![s]);
    let rows = matching_deliveries(
        &state.pool,
        statuses.as_deref(),
        q.channel.as_deref(),
        q.user_id,
        q.kind.as_deref(),
        q.since,
        cursor,
        Some(limit + 1),
    )
    .await?;
    Ok(Json(pagination::finish(rows, limit, |d| d.id.to_string())))
}

#[allow(clippy::too_many_arguments)]
async fn matching_deliveries<'c, E: sqlx::PgExecutor<'c>>(
    exec: E,
    statuses: Option<&[String]>,
    channel: Option<&str>,
    user_id: Option<i64>,
    kind: Option<&str>,
    since: Option<DateTime<Utc>>,
    before_id: Option<i64>,
    limit: Option<i64>,
) -> Result<Vec<DeliveryOut>, ApiError> {
    Ok(select_deliveries!(
        "WHERE ($1::text[] IS NULL OR d.status = ANY($1)) AND ($2::text IS NULL OR d.channel = $2)
           AND ($3::bigint IS NULL OR n.user_id = $3) AND ($4::text IS NULL OR n.type = $4)
           AND ($5::timestamptz IS NULL OR d.updated_at >= $5) AND ($6::bigint IS NULL OR d.id < $6)
         ORDER BY d.id DESC LIMIT $7",
        statuses as Option<&[String]>,
        channel,
        user_id,
        kind,
        since,
        before_id,
        limit,
    )
    .fetch_all(exec)
    .await?)
}

/// A retry was enqueued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetryQueued {
    /// The delivery.
    pub delivery_id: i64,
    /// Always `queued`: a worker sends it shortly.
    pub status: String,
}

/// Sends a failed, dead or undelivered delivery again (enqueues a job for the worker).
#[utoipa::path(post, path = "/api/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = i64, Path, description = "notification_deliveries.id")),
    responses(
        (status = 202, description = "Retry enqueued", body = RetryQueued),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "The delivery is not failed, dead or undelivered", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn retry_delivery(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<(StatusCode, Json<RetryQueued>), ApiError> {
    let mut tx = state.pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar!("SELECT status FROM notification_deliveries WHERE id = $1", id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(status) = status else {
        return Err(ApiError::NotFound("delivery not found".into()));
    };
    if !RETRYABLE.contains(&status.as_str()) {
        return Err(ApiError::Conflict(format!(
            "the delivery is {status}; only failed, dead or undelivered deliveries can be retried"
        )));
    }
    if !notify::enqueue_delivery_retry(&mut tx, id).await? {
        return Err(ApiError::NotFound("delivery not found".into()));
    }
    tx.commit().await?;
    tracing::info!(delivery_id = id, "delivery retry enqueued");
    Ok((
        StatusCode::ACCEPTED,
        Json(RetryQueued {
            delivery_id: id,
            status: "queued".into(),
        }),
    ))
}

/// `POST /api/deliveries/retry`: which deliveries to retry (every field optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRetry {
    /// `failed`, `dead` or `undelivered`; all three when left out.
    pub status: Option<String>,
    /// Only this channel (email, sms, push).
    pub channel: Option<String>,
    /// Only deliveries changed at or after this time (RFC 3339 with offset).
    #[serde(default, deserialize_with = "rfc3339::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// Only deliveries of this notification kind.
    pub kind: Option<String>,
    /// Only these deliveries (at most 500), e.g. exactly the ones a page shows; the other
    /// filters still apply.
    pub ids: Option<Vec<i64>>,
}

/// Most ids one bulk retry may name.
pub const MAX_RETRY_IDS: usize = 500;

/// Deliveries locked, re-checked and enqueued per transaction by a bulk retry.
pub const RETRY_BATCH: i64 = 500;

/// How many retries were enqueued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkRetried {
    /// Deliveries put back on their way.
    pub retried: u64,
}

/// Sends every matching failed, dead or undelivered delivery again, in batches of [`RETRY_BATCH`] (one
/// transaction each, newest first), so a large backlog neither holds one huge transaction nor
/// loads every row at once. Each batch locks its rows and re-checks their status, so `retried`
/// counts exactly the deliveries put back on their way.
#[utoipa::path(post, path = "/api/deliveries/retry", tag = "deliveries", request_body(content = Option<BulkRetry>, description = "Filters; an empty body retries every failed, dead and undelivered delivery"),
    responses(
        (status = 202, description = "Retries enqueued", body = BulkRetried),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid filter (status must be failed, dead or undelivered)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn retry_deliveries(
    State(state): State<AppState>,
    OptionalJson(body): OptionalJson<BulkRetry>,
) -> Result<(StatusCode, Json<BulkRetried>), ApiError> {
    let statuses: Vec<String> = match body.status.as_deref() {
        None => RETRYABLE.iter().map(|s| s.to_string()).collect(),
        Some(s) if RETRYABLE.contains(&s) => vec![s.to_owned()],
        Some(_) => {
            return Err(ApiError::invalid(
                "status",
                "only failed, dead or undelivered deliveries can be retried",
            ));
        }
    };
    check_channel(body.channel.as_deref())?;
    check_kind(body.kind.as_deref())?;
    if let Some(ids) = &body.ids
        && ids.len() > MAX_RETRY_IDS
    {
        return Err(ApiError::invalid("ids", format!("at most {MAX_RETRY_IDS} ids")));
    }
    let mut retried = 0u64;
    let mut before: Option<i64> = None;
    loop {
        let mut tx = state.pool.begin().await?;
        // Newest first by id, from below the last batch: each delivery is looked at once even
        // though a retried one keeps its status until a worker picks it up.
        let batch: Vec<i64> = sqlx::query_scalar!(
            "SELECT d.id FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
             WHERE d.status = ANY($1) AND ($2::text IS NULL OR d.channel = $2) AND ($3::text IS NULL OR n.type = $3)
               AND ($4::timestamptz IS NULL OR d.updated_at >= $4) AND ($5::bigint[] IS NULL OR d.id = ANY($5))
               AND ($6::bigint IS NULL OR d.id < $6)
             ORDER BY d.id DESC LIMIT $7
             FOR UPDATE OF d SKIP LOCKED",
            &statuses,
            body.channel.as_deref(),
            body.kind.as_deref(),
            body.since,
            body.ids.as_deref() as Option<&[i64]>,
            before,
            RETRY_BATCH,
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(&last) = batch.last() else { break };
        retried += notify::enqueue_delivery_retries(&mut tx, &batch).await?;
        tx.commit().await?;
        if (batch.len() as i64) < RETRY_BATCH {
            break;
        }
        before = Some(last);
    }
    tracing::info!(retried, "bulk delivery retry enqueued");
    Ok((StatusCode::ACCEPTED, Json(BulkRetried { retried })))
}
