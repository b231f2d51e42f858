//! A person's data: `GET /api/users/{id}/export` (everything held about them, one JSON document
//! streamed as it is read) and `POST /api/users/{id}/erase` (erasure in one transaction, then
//! the deletion of the files it asked to delete). The reading and the erasing are
//! `dashlight_core::privacy`'s, the files' deletion `dashlight_core::files`'s; this module only
//! serves them.

use std::time::Duration;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use dashlight_core::{
    files,
    privacy::{self, export},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_user)).routes(routes!(erase_user))
}

/// Pieces of the document buffered between the database and the client: the export holds at
/// most this many rows in memory, whatever the person's history.
const EXPORT_BUFFER: usize = 32;

/// How long an erasure waits for the deletion of files after its commit; what is left then is
/// the worker's retention task's.
const FILES_WAIT: Duration = Duration::from_secs(10);

/// Everything held about a person as one JSON document: `format`, `user_id`, `exported_at`, then
/// one array per section: `profile`, `student`, `instructor`, `preferences`, `email_opt_outs`,
/// `devices` (without their keys), `crm_contacts`, `bookings`, `waitlist`, `slot_offers`,
/// `lessons`, `progress`, `package_purchases`, `payments`, `invoices`, `messages`,
/// `notifications` (each with its deliveries, their attempts, receipts and inbound emails),
/// `sms_replies`, `suppressions`. Streamed as it is read from one consistent snapshot; a
/// failure after the first byte ends the response early (the document is then incomplete JSON).
#[utoipa::path(get, path = "/api/users/{id}/export", tag = "people",
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 200, description = "The document", content_type = "application/json", body = Object),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn export_user(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Response, ApiError> {
    let mut conn = state.pool.acquire().await?;
    if !export::exists(&mut conn, id).await? {
        return Err(ApiError::NotFound("user not found".into()));
    }
    let now = state.clock.now();
    let (mut tx, rx) = tokio::sync::mpsc::channel::<Result<String, export::ExportError>>(EXPORT_BUFFER);
    tokio::spawn(async move {
        if let Err(e) = export::write(&mut conn, id, now, &mut tx).await
            && !matches!(e, export::ExportError::Closed)
        {
            tracing::warn!(user_id = id, error = %e, "person export failed part-way");
            let _ = tx.send(Err(e)).await;
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|piece| (piece, rx)) });
    let mut res = Body::from_stream(body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"person-{id}.json\"")).expect("ascii"),
    );
    Ok(res)
}

/// `POST /api/users/{id}/erase`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// Why (kept on record, with the person's own name taken out); 1 to 500 characters.
    #[schema(example = "the student asked by email on 3 December")]
    pub reason: String,
    /// Who does it, kept on record (default `api`); 1 to 200 characters.
    #[schema(example = "office manager")]
    pub by: Option<String>,
}

/// The record of an erasure.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErasureOut {
    /// `users.id`.
    pub user_id: i64,
    /// True when this request erased the person; false when they had already been erased
    /// (nothing was done).
    pub erased_now: bool,
    /// `erased` or `already_erased`.
    pub status: String,
    /// The pseudonym shown instead of the person from now on.
    #[schema(example = "Erased 3fa9c2d1")]
    pub pseudonym: String,
    /// Why.
    pub reason: String,
    /// Who asked.
    pub erased_by: String,
    /// When.
    pub erased_at: DateTime<Utc>,
    /// Rows changed per table, and `lesson_attachment_files`: the lesson attachments' files
    /// whose deletion from disk was requested.
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
}

fn printable(field: &str, value: Option<&str>, max: usize, default: &str) -> Result<String, ApiError> {
    match value.map(str::trim) {
        None => Ok(default.to_owned()),
        Some(v) if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) => {
            Err(ApiError::invalid(field, format!("expected 1 to {max} printable characters")))
        }
        Some(v) => Ok(v.to_owned()),
    }
}

/// Erases a person in one transaction: their personal data is erased or pseudonymised in every
/// table that holds it; invoices and payments are kept with the pseudonym (their PDFs drawn
/// again by the invoice task); devices, own-page link, calendar feed and offer links stop
/// working; pending notifications are cancelled; their addresses and numbers stay suppressed as
/// keyed hashes only; the erasure is recorded. Then, after the commit, their lesson attachments'
/// files are deleted from `ATTACHMENTS_DIR` (best effort: what fails here is left to the worker's
/// retention task). A second erase changes nothing and answers 200 with `status: already_erased`.
#[utoipa::path(post, path = "/api/users/{id}/erase", tag = "people", request_body = EraseRequest,
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 200, description = "Erased (or already erased)", body = ErasureOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Missing or invalid reason or by", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn erase_user(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<EraseRequest>,
) -> Result<(StatusCode, Json<ErasureOut>), ApiError> {
    let reason = printable("reason", Some(&body.reason), 500, "")?;
    let by = printable("by", body.by.as_deref(), 200, "api")?;
    let key = state.signing.get(&state.pool).await?.clone();
    let mut tx = state.pool.begin().await?;
    let outcome = privacy::erase(&mut tx, &key, id, &reason, &by, state.clock.now()).await?;
    tx.commit().await?;
    if outcome.erased_now {
        delete_files(&state).await;
    }
    let e = outcome.erasure;
    Ok((
        StatusCode::OK,
        Json(ErasureOut {
            user_id: e.user_id,
            erased_now: outcome.erased_now,
            status: if outcome.erased_now { "erased" } else { "already_erased" }.to_owned(),
            pseudonym: e.pseudonym,
            reason: e.reason,
            erased_by: e.erased_by,
            erased_at: e.erased_at,
            summary: e.summary,
        }),
    ))
}

/// Carries out the file deletions waiting (the erasure's, and any left before), best effort: a
/// failure is logged, not the caller's error; its requests stay for the worker's retention task.
async fn delete_files(state: &AppState) {
    let dir = &state.config.attachments_dir;
    match tokio::time::timeout(FILES_WAIT, files::delete_requested(&state.pool, dir)).await {
        Ok(Ok(d)) if d.failed > 0 => {
            tracing::warn!(
                ?d,
                "some files of the erasure could not be deleted; the worker's retention task tries again"
            )
        }
        Ok(Ok(d)) => tracing::info!(?d, "files of the erasure deleted"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "files of the erasure not deleted now; the worker's retention task will")
        }
        Err(_) => tracing::warn!("deleting files took longer than {FILES_WAIT:?}; the rest are left to the worker's retention task"),
    }
}
