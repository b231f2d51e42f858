//! Confirming a lesson: the three web paths into [`bookings::confirm`], the one operation every
//! confirmation goes through (the SMS `C` reply is the fourth, in `dashlight_core::replies`).
//!
//! | method and path | who calls it | what it does |
//! |---|---|---|
//! | `GET /confirm/{token}` | the reminder email's link (and mail scanners) | a page showing the lesson and a Confirm button; changes nothing |
//! | `POST /confirm/{token}` | that page's button | confirms (`via = email`), answers with a page |
//! | `POST /confirm/{token}/push` | the service worker's Confirm action | confirms (`via = push`), answers JSON |
//! | `POST /me/{token}/lessons/{id}/confirm` | the own page's Confirm button | confirms (`via = own_page`), `303` back to the page |
//!
//! `{token}` of `/confirm/` is the lesson's confirmation token (`dashlight_core::signing::Key::confirm_token`):
//! signed for one booking and its student, it confirms that lesson and opens nothing else (not
//! the person's page). A forged token, or one whose student is not the booking's, is a 404 like
//! an unknown page. The first confirmation wins; a repeated one changes nothing and says so. A
//! lesson that is cancelled or over cannot be confirmed (409). Writes are refused from another
//! site as on the own page ([`super::same_origin`]).

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    bookings::{self, Booking, Confirmation, Party},
    states::{BookingStatus, ConfirmedVia},
    validate,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    html,
    link::{cross_site, not_found, same_origin, writer},
    message, page_error,
    view::in_zone,
};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::ApiPath,
    page::with_error,
};

/// What the confirmation page shows.
#[derive(Serialize)]
struct ConfirmView {
    school: String,
    title: String,
    /// `ask` (the button), `done` (just confirmed), `already`, `closed`.
    state: &'static str,
    message: String,
    when: String,
    start_iso: String,
    instructor: String,
    pickup: Option<String>,
    action: String,
}

/// The booking a confirmation token names, with its people, when the token verifies and names
/// the booking's own student; `None` otherwise (answered 404).
async fn resolve(state: &AppState, token: &str) -> Result<Option<(Booking, Party, Party)>, ApiError> {
    let key = state.signing.get(&state.pool).await?;
    let Some((booking_id, student_id)) = key.confirm_target(token) else {
        return Ok(None);
    };
    let mut conn = state.pool.acquire().await?;
    match bookings::with_parties(&mut conn, booking_id).await {
        Ok((b, s, i)) if b.student_id == student_id => Ok(Some((b, s, i))),
        Ok(_) | Err(dashlight_core::DomainError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn view(state: &AppState, token: &str, b: &Booking, student: &Party, instructor: &Party, kind: &'static str) -> ConfirmView {
    let tz: Tz = validate::stored_timezone(&student.timezone);
    let when = format!("{}–{}", in_zone(b.start_time, tz), b.end_time.with_timezone(&tz).format("%H:%M"));
    let (title, text) = match kind {
        "ask" => (
            "Confirm your lesson",
            "Will you be there? Confirm, and your instructor will know.".to_owned(),
        ),
        "done" => (
            "Lesson confirmed",
            "Thanks: your lesson is confirmed and your instructor knows.".to_owned(),
        ),
        "already" => (
            "Already confirmed",
            format!(
                "This lesson was already confirmed{}. Nothing more to do: see you there.",
                confirmed_phrase(b, tz)
            ),
        ),
        _ => (
            "This lesson cannot be confirmed",
            format!(
                "This lesson is {}: there is nothing to confirm. Please contact the school if this is not right.",
                closed_word(b)
            ),
        ),
    };
    ConfirmView {
        school: state.config.school_name.clone(),
        title: title.to_owned(),
        state: kind,
        message: text,
        when,
        start_iso: b.start_time.to_rfc3339(),
        instructor: instructor.name.clone(),
        pickup: b.pickup_location.clone(),
        action: format!("/confirm/{token}"),
    }
}

fn confirmed_phrase(b: &Booking, tz: Tz) -> String {
    match (b.student_confirmed_at, b.student_confirmed_via) {
        (Some(at), Some(via)) => format!(" {} on {}", via_words(via), in_zone(at, tz)),
        _ => String::new(),
    }
}

/// The student's own view of a path ("from the push notification" is about them here).
fn via_words(via: ConfirmedVia) -> &'static str {
    match via {
        ConfirmedVia::Sms => "by text message",
        ConfirmedVia::Push => "from the notification",
        ConfirmedVia::Email => "from the reminder email",
        ConfirmedVia::OwnPage => "on your page",
    }
}

fn closed_word(b: &Booking) -> &'static str {
    match b.status {
        BookingStatus::Cancelled => "cancelled",
        BookingStatus::Confirmed | BookingStatus::Completed | BookingStatus::NoShow => "over",
        BookingStatus::Pending => "not booked yet",
    }
}

fn page(status: StatusCode, v: &ConfirmView) -> Response {
    let res = html(status, "confirm", v);
    if status.is_success() {
        res
    } else {
        with_error(res, "conflict", &v.message, None)
    }
}

/// The lesson's confirmation page: the lesson and a Confirm button that POSTs. Changes nothing
/// (mail scanners open links); a confirmed lesson says so, a cancelled or past one too (409).
#[utoipa::path(get, path = "/confirm/{token}", tag = "own page",
    params(("token" = String, Path, description = "the lesson's confirmation token (from its reminder)")),
    responses(
        (status = 200, description = "The page: the lesson and a Confirm button, or that it is already confirmed", content_type = "text/html", body = String),
        (status = 404, description = "Not a confirmation token of this server (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 409, description = "The lesson is cancelled or over (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn confirm_page(State(state): State<AppState>, ApiPath(token): ApiPath<String>) -> Response {
    let (b, s, i) = match resolve(&state, &token).await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found(&state),
        Err(e) => return page_error(&state, e),
    };
    let now = state.clock.now();
    if b.student_confirmed_at.is_some() {
        return page(StatusCode::OK, &view(&state, &token, &b, &s, &i, "already"));
    }
    if b.status != BookingStatus::Confirmed || b.end_time <= now {
        return page(StatusCode::CONFLICT, &view(&state, &token, &b, &s, &i, "closed"));
    }
    page(StatusCode::OK, &view(&state, &token, &b, &s, &i, "ask"))
}

async fn run_confirm(state: &AppState, booking_id: i64, via: ConfirmedVia) -> Result<Confirmation, ApiError> {
    let mut tx = state.pool.begin().await?;
    let done = bookings::confirm(&mut tx, booking_id, via, state.clock.now()).await?;
    tx.commit().await?;
    Ok(done)
}

/// Confirms the lesson from its confirmation page's button (`via = email`) and answers with a
/// page. Confirming again changes nothing and says it was already confirmed.
#[utoipa::path(post, path = "/confirm/{token}", tag = "own page",
    params(("token" = String, Path, description = "the lesson's confirmation token")),
    responses(
        (status = 200, description = "Confirmed, or already confirmed before: a page saying which", content_type = "text/html", body = String),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "Not a confirmation token of this server (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 409, description = "The lesson is cancelled or over (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn confirm_post(State(state): State<AppState>, headers: HeaderMap, ApiPath(token): ApiPath<String>) -> Response {
    let (b, s, i) = match resolve(&state, &token).await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found(&state),
        Err(e) => return page_error(&state, e),
    };
    if !same_origin(&headers, &state.config.public_base_url) {
        return cross_site(&state);
    }
    match run_confirm(&state, b.id, ConfirmedVia::Email).await {
        Ok(Confirmation::Confirmed(b)) => page(StatusCode::OK, &view(&state, &token, &b, &s, &i, "done")),
        Ok(Confirmation::Already(b)) => page(StatusCode::OK, &view(&state, &token, &b, &s, &i, "already")),
        Ok(Confirmation::NotConfirmable(b)) => page(StatusCode::CONFLICT, &view(&state, &token, &b, &s, &i, "closed")),
        Err(e) => page_error(&state, e),
    }
}

/// What the service worker's Confirm action learns.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfirmOut {
    /// `bookings.id`.
    pub booking_id: i64,
    /// True when this request confirmed it; false when it had been confirmed before.
    pub first: bool,
    /// When the student confirmed (the first confirmation).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub confirmed_at: Option<DateTime<Utc>>,
    /// How (`sms`, `push`, `email`, `own_page`).
    #[schema(value_type = Option<String>, example = "push")]
    pub via: Option<ConfirmedVia>,
}

/// Confirms the lesson from the push reminder's Confirm action (`via = push`); called by the
/// service worker with `fetch`. Confirming again answers 200 with `first: false`.
#[utoipa::path(post, path = "/confirm/{token}/push", tag = "own page",
    params(("token" = String, Path, description = "the lesson's confirmation token (the push payload's `confirm_url`)")),
    responses(
        (status = 200, description = "Confirmed now (`first`) or before", body = ConfirmOut),
        (status = 403, description = "Sent from another site", body = ErrorBody),
        (status = 404, description = "Not a confirmation token of this server", body = ErrorBody),
        (status = 409, description = "The lesson is cancelled or over", body = ErrorBody),
    ))]
pub async fn confirm_push(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(token): ApiPath<String>,
) -> Result<Json<ConfirmOut>, ApiError> {
    let Some((b, _, _)) = resolve(&state, &token).await? else {
        return Err(ApiError::NotFound("no lesson to confirm at this address".into()));
    };
    if !same_origin(&headers, &state.config.public_base_url) {
        return Err(ApiError::Forbidden("this request did not come from this site".into()));
    }
    let (b, first) = match run_confirm(&state, b.id, ConfirmedVia::Push).await? {
        Confirmation::Confirmed(b) => (b, true),
        Confirmation::Already(b) => (b, false),
        Confirmation::NotConfirmable(b) => {
            return Err(ApiError::Conflict(format!(
                "the lesson is {}: it cannot be confirmed",
                closed_word(&b)
            )));
        }
    };
    Ok(Json(ConfirmOut {
        booking_id: b.id,
        first,
        confirmed_at: b.student_confirmed_at,
        via: b.student_confirmed_via,
    }))
}

/// Confirms one of the person's upcoming lessons from their own page (`via = own_page`); `303`
/// back to the lesson on the page. A lesson that is not theirs as the student is a 404.
#[utoipa::path(post, path = "/me/{token}/lessons/{id}/confirm", tag = "own page",
    params(("token" = String, Path, description = "the person's access token"), ("id" = i64, Path, description = "bookings.id")),
    responses(
        (status = 303, description = "Confirmed (or already confirmed): back to the page"),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "No page at this address, or not one of this person's lessons (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 409, description = "The lesson is cancelled or over (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn confirm_own(State(state): State<AppState>, headers: HeaderMap, ApiPath((token, id)): ApiPath<(String, i64)>) -> Response {
    let o = match writer(&state, &headers, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let theirs = async {
        let mut conn = state.pool.acquire().await?;
        let found = match bookings::with_parties(&mut conn, id).await {
            Ok((_, s, _)) => s.user_id == o.user_id,
            Err(dashlight_core::DomainError::NotFound(_)) => false,
            Err(e) => return Err(ApiError::from(e)),
        };
        Ok::<_, ApiError>(found)
    }
    .await;
    match theirs {
        Ok(true) => {}
        Ok(false) => {
            return message(
                &state,
                StatusCode::NOT_FOUND,
                "Lesson not found",
                "There is no such lesson on your page.",
            );
        }
        Err(e) => return page_error(&state, e),
    }
    match run_confirm(&state, id, ConfirmedVia::OwnPage).await {
        Ok(Confirmation::Confirmed(_)) | Ok(Confirmation::Already(_)) => {
            Redirect::to(&format!("/me/{token}?done=confirmed#booking-{id}")).into_response()
        }
        Ok(Confirmation::NotConfirmable(b)) => message(
            &state,
            StatusCode::CONFLICT,
            "This lesson cannot be confirmed",
            &format!("This lesson is {}: there is nothing to confirm.", closed_word(&b)),
        ),
        Err(e) => page_error(&state, e),
    }
}
