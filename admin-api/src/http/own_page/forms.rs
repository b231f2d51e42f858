//! The page's form posts: the preferences and marking a notification read, each answered
//! `303 See Other` back to the page (422 with the page and the field at fault).

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::NaiveTime;
use dashlight_core::{
    access::{self, Owner},
    kinds::Kind,
    people::{self, Preferences},
};

use super::{
    html,
    link::writer,
    message, page_error,
    view::{FieldError, kind_label, page_view},
};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, hhmm},
    page::with_error,
};

/// The preferences form's fields, read by hand: checkboxes are absent when off and
/// `email_opt_out` repeats.
#[derive(Debug, Default)]
struct PrefsForm {
    email: bool,
    sms: bool,
    push: bool,
    quiet_start: Option<String>,
    quiet_end: Option<String>,
    opt_outs: Vec<String>,
}

fn parse_prefs_form(body: &[u8]) -> Result<PrefsForm, ApiError> {
    let mut f = PrefsForm::default();
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "email_notifications" => f.email = true,
            "sms_notifications" => f.sms = true,
            "push_notifications" => f.push = true,
            "quiet_hours_start" => f.quiet_start = Some(v.trim().to_owned()).filter(|s| !s.is_empty()),
            "quiet_hours_end" => f.quiet_end = Some(v.trim().to_owned()).filter(|s| !s.is_empty()),
            "email_opt_out" => f.opt_outs.push(v.into_owned()),
            other => return Err(ApiError::invalid(other, "unknown field")),
        }
    }
    Ok(f)
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<NaiveTime>, ApiError> {
    v.map(|s| hhmm::parse(s).map_err(|m| ApiError::invalid(field, m))).transpose()
}

async fn save_prefs(state: &AppState, o: &Owner, body: &[u8]) -> Result<(), ApiError> {
    let f = parse_prefs_form(body)?;
    let start = parse_time("quiet_hours_start", f.quiet_start.as_deref())?;
    let end = parse_time("quiet_hours_end", f.quiet_end.as_deref())?;
    let mut off = Vec::new();
    for name in &f.opt_outs {
        let k = Kind::parse(name)
            .filter(|k| kind_label(*k).is_some())
            .ok_or_else(|| ApiError::invalid("email_opt_out", format!("{name:?} is not a kind whose emails can be turned off")))?;
        off.push(k);
    }
    let mut tx = state.pool.begin().await?;
    people::set_preferences(
        &mut tx,
        &Preferences {
            user_id: o.user_id,
            email_notifications: f.email,
            sms_notifications: f.sms,
            push_notifications: f.push,
            quiet_hours_start: start,
            quiet_hours_end: end,
        },
    )
    .await
    .map_err(|e| match ApiError::from(e) {
        ApiError::Invalid { code, field, message } => ApiError::Invalid {
            code,
            field: field.map(|f| f.replace('.', "_")),
            message,
        },
        other => other,
    })?;
    for k in Kind::ALL.into_iter().filter(|k| kind_label(*k).is_some()) {
        people::set_email_opt_out(&mut tx, o.user_id, k, off.contains(&k), people::OptOutSource::OwnPage).await?;
    }
    tx.commit().await?;
    tracing::info!(
        user_id = o.user_id,
        email = f.email,
        sms = f.sms,
        push = f.push,
        quiet_hours = ?start.zip(end),
        email_opt_outs = ?off.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "preferences saved from the own page"
    );
    Ok(())
}

/// Saves the preferences form (`application/x-www-form-urlencoded`): checkboxes
/// `email_notifications`, `sms_notifications`, `push_notifications` (present = on),
/// `quiet_hours_start`/`quiet_hours_end` (`HH:MM` in the person's zone, both or neither) and
/// `email_opt_out` (repeated: the kinds whose emails are off; the others are on). `303` back to
/// the page; `422` shows the page with the field at fault.
#[utoipa::path(post, path = "/me/{token}/preferences", tag = "own page",
    params(("token" = String, Path, description = "the person's access token")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "email_notifications=on&sms_notifications=on&push_notifications=on&quiet_hours_start=22:00&quiet_hours_end=07:00&email_opt_out=lesson_report"),
    responses(
        (status = 303, description = "Saved: back to the page"),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "No page at this address (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 422, description = "A field is not acceptable: the page, naming it (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn post_preferences(State(state): State<AppState>, headers: HeaderMap, ApiPath(token): ApiPath<String>, body: Bytes) -> Response {
    let o = match writer(&state, &headers, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    match save_prefs(&state, &o, &body).await {
        Ok(()) => Redirect::to(&format!("/me/{token}?done=preferences#preferences")).into_response(),
        Err(ApiError::Invalid { field, message, .. }) => {
            let field = field.unwrap_or_default();
            tracing::info!(user_id = o.user_id, %field, %message, "own page preferences refused");
            let info = (message.clone(), field.clone());
            let error = FieldError { field, message };
            match page_view(&state, &o, &token, None, Some(error)).await {
                Ok(v) => with_error(
                    html(StatusCode::UNPROCESSABLE_ENTITY, "page", &v),
                    "invalid_value",
                    &info.0,
                    Some(info.1),
                ),
                Err(e) => page_error(&state, e),
            }
        }
        Err(e) => page_error(&state, e),
    }
}

/// Marks one of the person's notifications read; `303` back to the page. Another person's
/// notification is a 404, like one that does not exist.
#[utoipa::path(post, path = "/me/{token}/notifications/{id}/read", tag = "own page",
    params(("token" = String, Path, description = "the person's access token"), ("id" = i64, Path, description = "notifications.id")),
    responses(
        (status = 303, description = "Marked read: back to the page"),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "No page at this address, or not one of this person's notifications (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn mark_read(State(state): State<AppState>, headers: HeaderMap, ApiPath((token, id)): ApiPath<(String, i64)>) -> Response {
    let o = match writer(&state, &headers, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let done = async {
        let mut conn = state.pool.acquire().await?;
        access::mark_read(&mut conn, o.user_id, id, state.clock.now()).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match done {
        Ok(()) => {
            tracing::info!(user_id = o.user_id, notification_id = id, "notification marked read");
            Redirect::to(&format!("/me/{token}?done=read#notification-{id}")).into_response()
        }
        Err(ApiError::NotFound(_)) => message(
            &state,
            StatusCode::NOT_FOUND,
            "Notification not found",
            "There is no such notification on your page.",
        ),
        Err(e) => page_error(&state, e),
    }
}
