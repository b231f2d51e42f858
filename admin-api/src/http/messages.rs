//! Messages: `POST /api/messages` (the message, its participants and their `new_message`
//! notifications: push at once, email only if still unread 15 minutes later),
//! `POST /api/messages/{id}/read` (marks it read and cancels the pending email) and
//! `GET /api/users/{id}/messages` (the user's threads with unread counts). Writes go through
//! `dashlight_core::messages` in one transaction each.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::messages::{self, Message, NewMessage, ThreadSummary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath, ApiQuery},
    pagination::{self, Paged},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_message))
        .routes(routes!(read_message))
        .routes(routes!(user_threads))
}

/// `POST /api/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// The sender (`users.id`).
    pub sender_id: i64,
    /// Everyone else on the message (`users.id`); listing the sender too is harmless.
    pub participant_ids: Vec<i64>,
    /// The thread to post in; a new thread when left out.
    pub thread_id: Option<Uuid>,
    /// 1 to 10 000 characters.
    #[schema(example = "Could we start ten minutes earlier on Thursday?")]
    pub content: String,
}

/// A participant of a message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ParticipantOut {
    /// `users.id`.
    pub user_id: i64,
    /// Read yet (the sender's is).
    pub is_read: bool,
    /// When.
    pub read_at: Option<DateTime<Utc>>,
}

/// A message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageOut {
    /// `messages.id`.
    pub id: i64,
    /// The thread.
    pub thread_id: Uuid,
    /// The sender.
    pub sender_id: i64,
    /// Text.
    pub content: String,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// Everyone on it, the sender included.
    pub participants: Vec<ParticipantOut>,
}

impl From<Message> for MessageOut {
    fn from(m: Message) -> Self {
        MessageOut {
            id: m.id,
            thread_id: m.thread_id,
            sender_id: m.sender_id,
            content: m.content,
            created_at: m.created_at,
            participants: m
                .participants
                .into_iter()
                .map(|p| ParticipantOut {
                    user_id: p.user_id,
                    is_read: p.is_read,
                    read_at: p.read_at,
                })
                .collect(),
        }
    }
}

/// Sends a message. Every other participant gets `new_message` by push at once, and by email
/// only if they have not read it 15 minutes later.
#[utoipa::path(post, path = "/api/messages", tag = "messages", request_body = MessageIn,
    responses(
        (status = 201, description = "Sent", body = MessageOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value: unknown sender or participant, no participant, empty content", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn send_message(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<MessageIn>,
) -> Result<(StatusCode, Json<MessageOut>), ApiError> {
    let nm = NewMessage {
        sender_id: body.sender_id,
        participant_ids: body.participant_ids,
        thread_id: body.thread_id,
        content: body.content,
    };
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let m = messages::send(&mut tx, nm, now).await?;
    tx.commit().await?;
    tracing::info!(message_id = m.id, thread_id = %m.thread_id, recipients = m.participants.len() - 1, "message sent");
    Ok((StatusCode::CREATED, Json(m.into())))
}

/// `POST /api/messages/{id}/read`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadIn {
    /// The reader (`users.id`), a participant of the message.
    pub user_id: i64,
}

/// A read receipt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadOut {
    /// `messages.id`.
    pub message_id: i64,
    /// The reader.
    pub user_id: i64,
    /// When it was first read.
    pub read_at: DateTime<Utc>,
    /// True when the pending email about it was cancelled by this call.
    pub email_cancelled: bool,
}

/// Marks a message read by one participant; the email that would have gone out 15 minutes after
/// it was sent is cancelled. Reading it again changes nothing.
#[utoipa::path(post, path = "/api/messages/{id}/read", tag = "messages", request_body = ReadIn,
    params(("id" = i64, Path, description = "messages.id")),
    responses(
        (status = 200, description = "Read", body = ReadOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "The user is not a participant", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn read_message(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<ReadIn>,
) -> Result<Json<ReadOut>, ApiError> {
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let r = messages::mark_read(&mut tx, id, body.user_id, now).await?;
    tx.commit().await?;
    Ok(Json(ReadOut {
        message_id: r.message_id,
        user_id: r.user_id,
        read_at: r.read_at,
        email_cancelled: r.email_cancelled,
    }))
}

/// `GET /api/users/{id}/messages` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ThreadQuery {
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The newest message of a thread.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LastMessageOut {
    /// `messages.id`.
    pub id: i64,
    /// The sender.
    pub sender_id: i64,
    /// The sender's name.
    pub sender_name: String,
    /// Text.
    pub content: String,
    /// Sent.
    pub created_at: DateTime<Utc>,
}

/// One of the user's threads.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ThreadOut {
    /// The thread.
    pub thread_id: Uuid,
    /// Messages in it the user is on.
    pub messages: i64,
    /// Of those, unread by the user.
    pub unread: i64,
    /// Everyone in the thread (`users.id`).
    pub participant_ids: Vec<i64>,
    /// Its newest message.
    pub last_message: LastMessageOut,
}

impl From<ThreadSummary> for ThreadOut {
    fn from(t: ThreadSummary) -> Self {
        ThreadOut {
            thread_id: t.thread_id,
            messages: t.messages,
            unread: t.unread,
            participant_ids: t.participant_ids,
            last_message: LastMessageOut {
                id: t.last_message.id,
                sender_id: t.last_message.sender_id,
                sender_name: t.last_message.sender_name,
                content: t.last_message.content,
                created_at: t.last_message.created_at,
            },
        }
    }
}

/// The user's message threads with their last message and unread counts.
#[utoipa::path(get, path = "/api/users/{id}/messages", tag = "messages", params(("id" = i64, Path, description = "users.id"), ThreadQuery),
    responses(
        (status = 200, description = "A page of threads, the one with the newest message first", body = Paged<ThreadOut>),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn user_threads(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ThreadQuery>,
) -> Result<Json<Paged<ThreadOut>>, ApiError> {
    let limit = pagination::limit(q.limit)?;
    let cursor = pagination::id_cursor(q.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let rows = messages::threads(&mut conn, id, limit + 1, cursor).await?;
    Ok(Json(
        pagination::finish(rows, limit, |t| t.last_message.id.to_string()).map(ThreadOut::from),
    ))
}
