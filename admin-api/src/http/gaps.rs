//! Filling gaps (docs/gap-filling.md): the waitlist (`PUT`/`GET
//! /api/students/{id}/waitlist`), the offers of a booking's freed slot (`GET
//! /api/bookings/{id}/offers`), and the offer link a student opens: `GET /offers/{token}` and
//! `POST /offers/{token}/accept` (no bearer token: the token in the address is the secret and
//! names one offer to one student).
//!
//! The offer link answers a browser (an `Accept` naming `text/html` and not
//! `application/json`) with a small page of [`crate::page`]: no JavaScript, every value escaped
//! by handlebars, a strict Content-Security-Policy; anyone else gets JSON with the usual error
//! body. Accepting books through `dashlight_core::gaps::accept`, which uses the same booking
//! operation as `POST /api/bookings`, in one transaction (run again if it loses a deadlock).

use std::sync::LazyLock;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use dashlight_core::{
    DomainError,
    gaps::{self, Offer, SetWaitlist, Waitlist},
    people::Window,
    states::OfferStatus,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath},
    http::{bookings::BookingOut, people::WindowIo},
    page::{self, Pages, json_error, no_store, wants_html},
};

/// `/api` routes (bearer token).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(put_waitlist, get_waitlist))
        .routes(routes!(booking_offers))
}

/// The open routes of the offer link.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(offer_page)).routes(routes!(accept_offer))
}

/// `PUT /api/students/{id}/waitlist`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitlistIn {
    /// Preferred instructors (`instructors.id`); empty for any instructor.
    #[serde(default)]
    pub instructor_ids: Vec<i64>,
    /// Weekly windows in the student's own time zone; empty for any time.
    #[serde(default)]
    pub windows: Vec<WindowIo>,
    /// On the waitlist (true) or leaving it (false).
    pub active: bool,
}

/// A student's waitlist entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WaitlistOut {
    /// `students.id`.
    pub student_id: i64,
    /// Preferred instructors; empty = any.
    pub instructor_ids: Vec<i64>,
    /// Weekly windows in `timezone`; empty = any time.
    pub windows: Vec<WindowIo>,
    /// On the waitlist now.
    pub active: bool,
    /// Place in the queue: older entries are offered slots first. Null if never joined.
    pub joined_at: Option<DateTime<Utc>>,
    /// When the entry was closed (left, or an offer accepted).
    pub closed_at: Option<DateTime<Utc>>,
    /// Why: `left the waitlist` or `accepted an offer`.
    pub closed_reason: Option<String>,
    /// The student's time zone: the windows' zone.
    pub timezone: String,
}

impl From<Waitlist> for WaitlistOut {
    fn from(w: Waitlist) -> Self {
        WaitlistOut {
            student_id: w.student_id,
            instructor_ids: w.instructor_ids,
            windows: w
                .windows
                .into_iter()
                .map(|x| WindowIo {
                    day_of_week: x.day_of_week,
                    start_time: x.start_time,
                    end_time: x.end_time,
                })
                .collect(),
            active: w.active,
            joined_at: w.joined_at,
            closed_at: w.closed_at,
            closed_reason: w.closed_reason,
            timezone: w.timezone,
        }
    }
}

/// Joins, changes or leaves the waitlist. Changing preferences keeps the student's place;
/// joining again after leaving goes to the back. Accepting an offer closes the entry.
#[utoipa::path(put, path = "/api/students/{id}/waitlist", tag = "gaps", request_body = WaitlistIn,
    params(("id" = i64, Path, description = "students.id")),
    responses(
        (status = 200, description = "Saved", body = WaitlistOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such student", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value: unknown instructor, bad window", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put_waitlist(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<WaitlistIn>,
) -> Result<Json<WaitlistOut>, ApiError> {
    let set = SetWaitlist {
        instructor_ids: body.instructor_ids,
        windows: body
            .windows
            .into_iter()
            .map(|w| Window {
                day_of_week: w.day_of_week,
                start_time: w.start_time,
                end_time: w.end_time,
            })
            .collect(),
        active: body.active,
    };
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let w = gaps::set_waitlist(&mut tx, id, set, now).await?;
    tx.commit().await?;
    tracing::info!(student_id = id, active = w.active, "waitlist entry saved");
    Ok(Json(w.into()))
}

/// A student's waitlist entry (inactive and empty if they never joined).
#[utoipa::path(get, path = "/api/students/{id}/waitlist", tag = "gaps",
    params(("id" = i64, Path, description = "students.id")),
    responses(
        (status = 200, description = "The entry", body = WaitlistOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such student", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_waitlist(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<WaitlistOut>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(gaps::get_waitlist(&mut conn, id).await?.into()))
}

/// An offer of a freed slot to one student.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OfferOut {
    /// `slot_offers.id`.
    pub id: i64,
    /// The booking that freed the slot.
    pub booking_id: i64,
    /// That booking's version while it held the slot (a reschedule frees the old version's).
    pub booking_version: i32,
    /// `instructors.id`.
    pub instructor_id: i64,
    /// The instructor's name.
    pub instructor_name: String,
    /// The student offered it (`students.id`).
    pub student_id: i64,
    /// Their name.
    pub student_name: String,
    /// Slot start.
    pub start_time: DateTime<Utc>,
    /// Slot end.
    pub end_time: DateTime<Utc>,
    /// The student's pickup (that of their latest lesson).
    pub pickup_location: Option<String>,
    /// `open`, `accepted`, `withdrawn` (another student accepted first) or `expired`.
    #[schema(example = "open")]
    pub status: String,
    /// When the slot was freed.
    pub freed_at: DateTime<Utc>,
    /// Acceptable until (slot start minus `GAP_FILL_MIN_NOTICE`).
    pub expires_at: DateTime<Utc>,
    /// When the student first opened the link.
    pub opened_at: Option<DateTime<Utc>>,
    /// When they accepted.
    pub accepted_at: Option<DateTime<Utc>>,
    /// The booking their acceptance made.
    pub accepted_booking_id: Option<i64>,
    /// When it was withdrawn.
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl From<Offer> for OfferOut {
    fn from(o: Offer) -> Self {
        OfferOut {
            id: o.id,
            booking_id: o.booking_id,
            booking_version: o.booking_version,
            instructor_id: o.instructor_id,
            instructor_name: o.instructor_name,
            student_id: o.student_id,
            student_name: o.student_name,
            start_time: o.start_time,
            end_time: o.end_time,
            pickup_location: o.pickup_location,
            status: o.status.to_string(),
            freed_at: o.freed_at,
            expires_at: o.expires_at,
            opened_at: o.opened_at,
            accepted_at: o.accepted_at,
            accepted_booking_id: o.accepted_booking_id,
            withdrawn_at: o.withdrawn_at,
            created_at: o.created_at,
        }
    }
}

/// The offers made for the slot(s) a booking freed (by its cancellation or a move), oldest
/// first, with their states.
#[utoipa::path(get, path = "/api/bookings/{id}/offers", tag = "gaps",
    params(("id" = i64, Path, description = "bookings.id")),
    responses(
        (status = 200, description = "The offers", body = Vec<OfferOut>),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such booking", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn booking_offers(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Vec<OfferOut>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    dashlight_core::bookings::get(&mut conn, id).await?;
    let offers = gaps::for_booking(&mut conn, id, state.clock.now()).await?;
    Ok(Json(offers.into_iter().map(OfferOut::from).collect()))
}

/// What `POST /offers/{token}/accept` answers in JSON: the booking made for the student (the
/// fields of `POST /api/bookings`'s answer), with the offer it came from.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AcceptedOut {
    /// The booking.
    #[serde(flatten)]
    pub booking: BookingOut,
    /// The offer, now `accepted`.
    pub offer: OfferOut,
}

// ---------------------------------------------------------------------------------------------
// The offer link
// ---------------------------------------------------------------------------------------------

/// The offer page: no script at all ([`page::NO_SCRIPT`]).
static PAGES: LazyLock<Pages> = LazyLock::new(|| {
    Pages::new(
        "offer page",
        page::NO_SCRIPT,
        &[("page", include_str!("../../templates/offers/page.html.hbs"))],
    )
});

#[derive(Serialize)]
struct SlotView {
    start_iso: String,
    when: String,
    instructor: String,
    pickup: Option<String>,
    expires: Option<String>,
}

#[derive(Serialize)]
struct PageView {
    school: String,
    title: String,
    message: String,
    state: &'static str,
    student: Option<String>,
    slot: Option<SlotView>,
    accept_action: Option<String>,
}

fn slot_view(o: &Offer, with_expiry: bool) -> SlotView {
    let tz = dashlight_core::validate::stored_timezone(&o.student_timezone);
    let (s, e) = (o.start_time.with_timezone(&tz), o.end_time.with_timezone(&tz));
    SlotView {
        start_iso: o.start_time.to_rfc3339(),
        when: format!("{} to {} ({})", s.format("%A %-d %B, %H:%M"), e.format("%H:%M"), tz.name()),
        instructor: o.instructor_name.clone(),
        pickup: o.pickup_location.clone(),
        expires: with_expiry.then(|| o.expires_at.with_timezone(&tz).format("%A %-d %B, %H:%M").to_string()),
    }
}

fn page(status: StatusCode, view: PageView) -> Response {
    PAGES.render(status, "page", &view)
}

fn simple(state: &AppState, status: StatusCode, kind: &'static str, title: &str, message: &str, offer: Option<&Offer>) -> Response {
    page(
        status,
        PageView {
            school: state.config.school_name.clone(),
            title: title.to_owned(),
            message: message.to_owned(),
            state: kind,
            student: offer.map(|o| o.student_name.clone()),
            slot: offer.map(|o| slot_view(o, false)),
            accept_action: None,
        },
    )
}

const NO_OFFER: &str =
    "There is no lesson offer at this address. Offer links are personal; check you opened the whole link from your message.";

/// The offer behind a link: a page (browsers) or the offer as JSON. Opening it marks the offer
/// opened (its holder will hear `slot_taken` if someone else accepts first).
#[utoipa::path(get, path = "/offers/{token}", tag = "gaps",
    params(("token" = String, Path, description = "the offer link's token")),
    responses(
        (status = 200, description = "The open (or this student's accepted) offer: an HTML page with an Accept button for browsers, else JSON", body = OfferOut),
        (status = 404, description = "No offer at this address", body = ErrorBody),
        (status = 410, description = "The offer expired, or the slot went to another student", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn offer_page(State(state): State<AppState>, headers: HeaderMap, ApiPath(token): ApiPath<String>) -> Result<Response, ApiError> {
    let html = wants_html(&headers);
    let now = state.clock.now();
    let mut conn = state.pool.acquire().await?;
    let Some(offer) = gaps::open(&mut conn, &token, now).await? else {
        return Ok(if html {
            simple(&state, StatusCode::NOT_FOUND, "gone", "Offer not found", NO_OFFER, None)
        } else {
            ApiError::NotFound("no offer at this address".into()).into_response()
        });
    };
    let gone = match offer.status {
        OfferStatus::Expired => Some("This offer has expired: it is too close to the lesson to book it now."),
        OfferStatus::Withdrawn => Some("Sorry, this lesson has gone: another student accepted it first."),
        OfferStatus::Open | OfferStatus::Accepted => None,
    };
    if let Some(message) = gone {
        return Ok(if html {
            simple(&state, StatusCode::GONE, "gone", "This lesson has gone", message, Some(&offer))
        } else {
            json_error(StatusCode::GONE, "gone", message, None)
        });
    }
    if !html {
        return Ok(no_store(Json(OfferOut::from(offer)).into_response()));
    }
    if offer.status == OfferStatus::Accepted {
        return Ok(simple(
            &state,
            StatusCode::OK,
            "booked",
            "This lesson is yours",
            "You accepted this lesson; it is booked and a confirmation is on its way.",
            Some(&offer),
        ));
    }
    let view = PageView {
        school: state.config.school_name.clone(),
        title: "A lesson has come free".into(),
        message: format!(
            "Hi {}, a lesson that matches your waitlist is free. The first student to accept it gets it.",
            offer.student_name
        ),
        state: "open",
        student: Some(offer.student_name.clone()),
        slot: Some(slot_view(&offer, true)),
        accept_action: Some(format!("/offers/{token}/accept")),
    };
    Ok(page(StatusCode::OK, view))
}

/// Accepts in a transaction of its own, run again when it loses a deadlock.
async fn accept_in_tx(state: &AppState, token: &str) -> Result<gaps::Accepted, DomainError> {
    let now = state.clock.now();
    let token = token.to_owned();
    dashlight_core::db::retry_deadlock(&state.pool, &state.booking, |tx, settings| {
        let token = token.clone();
        Box::pin(async move { gaps::accept(tx, settings, &token, now).await })
    })
    .await
}

/// Accepts the offer: books the slot for its student exactly as `POST /api/bookings` does
/// (confirmation, instructor alert, reminders, calendar invitation, package). The first
/// acceptor gets 201; everyone after gets 409 (the slot has gone, or the offer expired). A
/// second accept of the same offer answers 200 with the same booking. Browsers get a page.
#[utoipa::path(post, path = "/offers/{token}/accept", tag = "gaps",
    params(("token" = String, Path, description = "the offer link's token")),
    responses(
        (status = 201, description = "Booked: an HTML page for browsers, else JSON", body = AcceptedOut),
        (status = 200, description = "Already accepted by this offer: the same booking", body = AcceptedOut),
        (status = 404, description = "No offer at this address", body = ErrorBody),
        (status = 409, description = "The slot has gone (another student accepted first) or the offer expired", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn accept_offer(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(token): ApiPath<String>,
) -> Result<Response, ApiError> {
    let html = wants_html(&headers);
    match accept_in_tx(&state, &token).await {
        Ok(a) => {
            let status = if a.fresh { StatusCode::CREATED } else { StatusCode::OK };
            if a.fresh {
                tracing::info!(offer_id = a.offer.id, booking_id = a.booking.id, "slot offer accepted");
            }
            if html {
                Ok(simple(
                    &state,
                    status,
                    "booked",
                    "Booked: this lesson is yours",
                    "Your lesson is booked. A confirmation with a calendar invitation is on its way, and we will remind you before it starts.",
                    Some(&a.offer),
                ))
            } else {
                let accepted = AcceptedOut {
                    offer: a.offer.into(),
                    booking: a.booking.into(),
                };
                Ok(no_store((status, Json(accepted)).into_response()))
            }
        }
        Err(DomainError::NotFound(_)) if html => Ok(simple(&state, StatusCode::NOT_FOUND, "gone", "Offer not found", NO_OFFER, None)),
        Err(DomainError::NotFound(_)) => Err(ApiError::NotFound("no offer at this address".into())),
        Err(DomainError::Conflict(m)) => {
            tracing::info!(reason = %m, "slot offer refused");
            if html {
                let mut conn = state.pool.acquire().await?;
                let offer = gaps::find(&mut conn, &token, state.clock.now()).await?;
                let title = if m.contains("expired") {
                    "This offer has expired"
                } else {
                    "Sorry, this lesson has gone"
                };
                Ok(simple(
                    &state,
                    StatusCode::CONFLICT,
                    "gone",
                    title,
                    &capitalised(&m),
                    offer.as_ref(),
                ))
            } else {
                Err(ApiError::Conflict(m))
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect::<String>() + ".",
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows() {
        let view = PageView {
            school: "<b>School</b>".into(),
            title: "t".into(),
            message: "<script>alert(1)</script>".into(),
            state: "open",
            student: Some("Jo".into()),
            slot: None,
            accept_action: Some("/offers/abc/accept".into()),
        };
        PAGES.assert_templates_escape();
        let out = PAGES.render_to_string("page", &view).unwrap();
        assert!(!out.contains("<script>"));
        assert!(out.contains("&lt;script&gt;"));
        assert!(!out.contains("<b>School</b>"));
    }
}
