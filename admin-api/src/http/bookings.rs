//! Bookings: create, cancel, reschedule, the timeline of one booking, and weekly series. Every
//! write runs in one transaction through `dashlight_core::bookings` (or `series`), with
//! `now = state.clock.now()`; the notifications and jobs it implies are enqueued on the same
//! connection and the transaction commits only after them. Each write runs through
//! [`dashlight_core::db::retry_deadlock`]: a transaction that loses a deadlock (two concurrent
//! bookings of one slot can end in one rather than in the exclusion constraint's violation) is
//! run again, so the loser gets its clean 409.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use dashlight_core::{
    DomainError,
    bookings::{self, Booking, BookingSettings, NewBooking},
    db::retry_deadlock,
    series::{self, ExpandReport, NewSeries, Series},
    states::NotificationStatus,
};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath, OptionalJson, hhmm, rfc3339},
    http::{
        deliveries::{self, NotificationOut},
        gaps::OfferOut,
    },
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_booking))
        .routes(routes!(cancel_booking))
        .routes(routes!(reschedule_booking))
        .routes(routes!(booking_timeline))
        .routes(routes!(create_series))
}

/// A booking.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BookingOut {
    /// `bookings.id`.
    pub id: i64,
    /// Student (`students.id`).
    pub student_id: i64,
    /// Instructor (`instructors.id`).
    pub instructor_id: i64,
    /// The weekly series it belongs to.
    pub series_id: Option<i64>,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// End.
    pub end_time: DateTime<Utc>,
    /// pending, confirmed, cancelled, completed, no_show.
    #[schema(example = "confirmed")]
    pub status: String,
    /// Pickup.
    pub pickup_location: Option<String>,
    /// Drop-off.
    pub dropoff_location: Option<String>,
    /// Raised on every reschedule.
    pub version: i32,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl From<Booking> for BookingOut {
    fn from(b: Booking) -> Self {
        BookingOut {
            id: b.id,
            student_id: b.student_id,
            instructor_id: b.instructor_id,
            series_id: b.series_id,
            start_time: b.start_time,
            end_time: b.end_time,
            status: b.status.to_string(),
            pickup_location: b.pickup_location,
            dropoff_location: b.dropoff_location,
            version: b.version,
            cancel_reason: b.cancel_reason,
            created_at: b.created_at,
        }
    }
}

fn check_location(field: &str, v: &Option<String>) -> Result<(), ApiError> {
    match v {
        Some(s) if s.chars().count() > 500 => Err(ApiError::invalid(field, "at most 500 characters")),
        _ => Ok(()),
    }
}

/// `POST /api/bookings`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBooking {
    /// `students.id`.
    pub student_id: i64,
    /// `instructors.id`.
    pub instructor_id: i64,
    /// Start, RFC 3339 with offset.
    #[serde(deserialize_with = "rfc3339::required")]
    #[schema(value_type = String, format = DateTime, example = "2026-03-02T09:00:00Z")]
    pub start_time: DateTime<Utc>,
    /// End, RFC 3339 with offset; after the start, at most 12 hours later.
    #[serde(deserialize_with = "rfc3339::required")]
    #[schema(value_type = String, format = DateTime, example = "2026-03-02T10:00:00Z")]
    pub end_time: DateTime<Utc>,
    /// Where the student is picked up (at most 500 characters).
    pub pickup_location: Option<String>,
    /// Where the student is dropped off (at most 500 characters).
    pub dropoff_location: Option<String>,
}

/// Books a lesson: the booking, its calendar event, the confirmation, the instructor's alert and
/// the reminders, in one transaction.
#[utoipa::path(post, path = "/api/bookings", tag = "bookings", request_body = CreateBooking,
    responses(
        (status = 201, description = "Booked", body = BookingOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 409, description = "The instructor is already booked then", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value: unknown student/instructor, times, outside availability", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_booking(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateBooking>,
) -> Result<(StatusCode, Json<BookingOut>), ApiError> {
    check_location("pickup_location", &body.pickup_location)?;
    check_location("dropoff_location", &body.dropoff_location)?;
    let nb = NewBooking {
        student_id: body.student_id,
        instructor_id: body.instructor_id,
        start_time: body.start_time,
        end_time: body.end_time,
        pickup_location: body.pickup_location,
        dropoff_location: body.dropoff_location,
        series: None,
    };
    let now = state.clock.now();
    let b = retry_deadlock(&state.pool, &state.booking, |tx, settings| {
        Box::pin(bookings::create(tx, settings, nb.clone(), now))
    })
    .await?;
    tracing::info!(booking_id = b.id, "booking created");
    Ok((StatusCode::CREATED, Json(b.into())))
}

/// `POST /api/bookings/{id}/cancel` (the body may be left out).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBooking {
    /// Why; shown to the student.
    pub reason: Option<String>,
}

/// Cancels a pending or confirmed booking: its reminders are cancelled, student and instructor
/// are told.
#[utoipa::path(post, path = "/api/bookings/{id}/cancel", tag = "bookings",
    request_body(content = Option<CancelBooking>, description = "Optional: the body may be left out"),
    params(("id" = i64, Path, description = "bookings.id")),
    responses(
        (status = 200, description = "Cancelled", body = BookingOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such booking", body = ErrorBody),
        (status = 409, description = "Already cancelled, completed or no-show", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cancel_booking(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    OptionalJson(body): OptionalJson<CancelBooking>,
) -> Result<Json<BookingOut>, ApiError> {
    if body.reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
        return Err(ApiError::invalid("reason", "at most 1000 characters"));
    }
    let now = state.clock.now();
    let b = retry_deadlock(&state.pool, &state.booking, |tx, settings| {
        Box::pin(bookings::cancel(tx, settings, id, body.reason.clone(), now))
    })
    .await?;
    tracing::info!(booking_id = id, "booking cancelled");
    Ok(Json(b.into()))
}

/// `POST /api/bookings/{id}/reschedule`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RescheduleBooking {
    /// New start, RFC 3339 with offset.
    #[serde(deserialize_with = "rfc3339::required")]
    #[schema(value_type = String, format = DateTime)]
    pub start_time: DateTime<Utc>,
    /// New end, RFC 3339 with offset.
    #[serde(deserialize_with = "rfc3339::required")]
    #[schema(value_type = String, format = DateTime)]
    pub end_time: DateTime<Utc>,
}

/// Moves a confirmed booking: version raised, reminders moved, student and instructor told.
#[utoipa::path(post, path = "/api/bookings/{id}/reschedule", tag = "bookings", request_body = RescheduleBooking,
    params(("id" = i64, Path, description = "bookings.id")),
    responses(
        (status = 200, description = "Moved", body = BookingOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such booking", body = ErrorBody),
        (status = 409, description = "The instructor is booked then, or the booking is not confirmed", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid times or outside availability", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn reschedule_booking(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<RescheduleBooking>,
) -> Result<Json<BookingOut>, ApiError> {
    let now = state.clock.now();
    let b = retry_deadlock(&state.pool, &state.booking, |tx, settings| {
        Box::pin(bookings::reschedule(tx, settings, id, body.start_time, body.end_time, now))
    })
    .await?;
    tracing::info!(booking_id = id, version = b.version, "booking rescheduled");
    Ok(Json(b.into()))
}

/// A booking and everything sent about it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Timeline {
    /// The booking.
    pub booking: BookingOut,
    /// Its notifications, oldest first, each with its deliveries and their attempts.
    pub notifications: Vec<NotificationOut>,
    /// The offers of the slot it freed (cancelled or moved): who was offered it, who opened
    /// the link, who accepted.
    #[serde(default)]
    pub offers: Vec<OfferOut>,
    /// When the student confirmed it (the first confirmation, by any path).
    #[serde(default)]
    pub student_confirmed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How: `sms`, `push`, `email` or `own_page`.
    #[serde(default)]
    pub student_confirmed_via: Option<String>,
    /// While it is not confirmed: the next escalation still pending (`confirm_nudge` or
    /// `unconfirmed_lesson`) and when it is due.
    #[serde(default)]
    pub next_escalation: Option<NextEscalation>,
    /// Texts the student sent about it (C, R, anything else), oldest first.
    #[serde(default)]
    pub replies: Vec<ReplyOut>,
}

/// The next escalation of an unconfirmed lesson.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NextEscalation {
    /// `confirm_nudge` (the student's SMS) or `unconfirmed_lesson` (the instructor's alert).
    pub kind: String,
    /// When it is due.
    pub due_at: chrono::DateTime<chrono::Utc>,
}

/// An SMS the student sent to the school's number about the booking.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplyOut {
    /// `sms_replies.id`.
    pub id: i64,
    /// The sender's number.
    pub from_number: String,
    /// The text.
    pub body: String,
    /// `confirm`, `rearrange` or `other` (keywords such as STOP are not about a booking).
    pub keyword: String,
    /// When it arrived.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// The booking's notifications and every delivery attempt (statuses include what providers
/// reported: `delivered`, `undelivered`), oldest first, the offers of the slot it freed (who was
/// offered it, opened the link, accepted), and what the student texted about it.
#[utoipa::path(get, path = "/api/bookings/{id}/timeline", tag = "bookings",
    params(("id" = i64, Path, description = "bookings.id")),
    responses(
        (status = 200, description = "The timeline", body = Timeline),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such booking", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn booking_timeline(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Timeline>, ApiError> {
    // One snapshot for the booking and its messages.
    let mut tx = state.pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let booking = bookings::get(&mut tx, id).await?;
    let notifications = deliveries::for_booking(&mut tx, id).await?;
    let offers = dashlight_core::gaps::for_booking(&mut tx, id, state.clock.now()).await?;
    let (student_confirmed_at, replies) = dashlight_core::replies::for_booking(&mut tx, id).await?;
    tx.commit().await?;
    let student_confirmed_via = booking.student_confirmed_via.map(|v| v.as_str().to_owned());
    let next_escalation = notifications
        .iter()
        .filter(|n| bookings::ESCALATIONS.iter().any(|k| k.as_str() == n.kind) && n.status == NotificationStatus::Pending.as_str())
        .min_by_key(|n| n.due_at)
        .map(|n| NextEscalation {
            kind: n.kind.clone(),
            due_at: n.due_at,
        });
    Ok(Json(Timeline {
        student_confirmed_via,
        next_escalation,
        booking: booking.into(),
        notifications,
        offers: offers.into_iter().map(OfferOut::from).collect(),
        student_confirmed_at,
        replies: replies
            .into_iter()
            .map(|r| ReplyOut {
                id: r.id,
                from_number: r.from_number,
                body: r.body,
                keyword: r.keyword.as_str().to_owned(),
                received_at: r.received_at,
            })
            .collect(),
    }))
}

/// `POST /api/booking-series`: a weekly recurring booking.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSeries {
    /// `students.id`.
    pub student_id: i64,
    /// `instructors.id`.
    pub instructor_id: i64,
    /// ISO weekdays, 1 = Monday … 7 = Sunday.
    #[schema(example = json!([2, 4]))]
    pub weekdays: Vec<i16>,
    /// Wall-clock start, `HH:MM`, in `timezone` (kept across DST changes).
    #[serde(with = "hhmm")]
    #[schema(value_type = String, example = "17:30")]
    pub local_start_time: NaiveTime,
    /// Lesson length, 15 to 600 minutes.
    #[schema(example = 60)]
    pub duration_minutes: i32,
    /// IANA time zone; default the instructor's.
    pub timezone: Option<String>,
    /// Pickup location of every lesson.
    pub pickup_location: Option<String>,
    /// First date, `YYYY-MM-DD`.
    #[schema(value_type = String, format = Date)]
    pub starts_on: NaiveDate,
    /// Last date (inclusive), `YYYY-MM-DD`.
    #[schema(value_type = Option<String>, format = Date)]
    pub until_on: Option<NaiveDate>,
    /// How many occurrences at most (counted from `starts_on`).
    pub occurrence_count: Option<i32>,
}

/// A weekly series.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeriesOut {
    /// `booking_series.id`.
    pub id: i64,
    /// Student.
    pub student_id: i64,
    /// Instructor.
    pub instructor_id: i64,
    /// ISO weekdays.
    pub weekdays: Vec<i16>,
    /// `HH:MM` in `timezone`.
    #[serde(with = "hhmm")]
    #[schema(value_type = String)]
    pub local_start_time: NaiveTime,
    /// Minutes.
    pub duration_minutes: i32,
    /// IANA time zone.
    pub timezone: String,
    /// Pickup.
    pub pickup_location: Option<String>,
    /// First date.
    #[schema(value_type = String, format = Date)]
    pub starts_on: NaiveDate,
    /// Last date.
    #[schema(value_type = Option<String>, format = Date)]
    pub until_on: Option<NaiveDate>,
    /// Occurrence limit.
    pub occurrence_count: Option<i32>,
    /// `active` or `ended`.
    pub status: String,
    /// The last date booked through so far.
    #[schema(value_type = Option<String>, format = Date)]
    pub expanded_through: Option<NaiveDate>,
}

/// An occurrence that could not be booked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SkippedOut {
    /// Local date in the series' time zone.
    #[schema(value_type = String, format = Date)]
    pub date: NaiveDate,
    /// When it would have started.
    pub start_time: DateTime<Utc>,
    /// Why not.
    pub reason: String,
}

/// The series and the bookings made so far.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeriesCreated {
    /// The series.
    pub series: SeriesOut,
    /// Bookings created (up to the booking horizon).
    pub bookings: Vec<BookingOut>,
    /// Occurrences not booked and why (the student and the school are notified of clashes).
    pub skipped: Vec<SkippedOut>,
}

/// Creates the series, books it up to the horizon and notifies its clashes.
async fn create_and_expand(
    conn: &mut PgConnection,
    settings: &BookingSettings,
    ns: NewSeries,
    now: DateTime<Utc>,
    horizon_days: u32,
    school_email: &str,
) -> Result<(Series, ExpandReport), DomainError> {
    let created = series::create(conn, ns).await?;
    let report = series::expand(conn, settings, created.id, now, horizon_days).await?;
    series::notify_conflicts(conn, &report, Some(school_email), now).await?;
    let s = series::get(conn, created.id).await?;
    Ok((s, report))
}

/// Creates a weekly series and books its occurrences up to the horizon
/// (`RECURRING_HORIZON_DAYS`); the scheduler books later ones as time moves on.
#[utoipa::path(post, path = "/api/booking-series", tag = "bookings", request_body = CreateSeries,
    responses(
        (status = 201, description = "Created, with the bookings made so far", body = SeriesCreated),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_series(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateSeries>,
) -> Result<(StatusCode, Json<SeriesCreated>), ApiError> {
    let now = state.clock.now();
    let ns = NewSeries {
        student_id: body.student_id,
        instructor_id: body.instructor_id,
        weekdays: body.weekdays,
        local_start_time: body.local_start_time,
        duration_minutes: body.duration_minutes,
        timezone: body.timezone,
        pickup_location: body.pickup_location,
        starts_on: body.starts_on,
        until_on: body.until_on,
        occurrence_count: body.occurrence_count,
    };
    let (s, report) = retry_deadlock(&state.pool, &state, |tx, state| {
        Box::pin(create_and_expand(
            tx,
            &state.booking,
            ns.clone(),
            now,
            state.config.recurring_horizon_days,
            &state.config.mail_from,
        ))
    })
    .await?;
    tracing::info!(
        series_id = s.id,
        booked = report.created.len(),
        skipped = report.skipped.len(),
        "booking series created"
    );
    Ok((
        StatusCode::CREATED,
        Json(SeriesCreated {
            series: SeriesOut {
                id: s.id,
                student_id: s.student_id,
                instructor_id: s.instructor_id,
                weekdays: s.weekdays,
                local_start_time: s.local_start_time,
                duration_minutes: s.duration_minutes,
                timezone: s.timezone,
                pickup_location: s.pickup_location,
                starts_on: s.starts_on,
                until_on: s.until_on,
                occurrence_count: s.occurrence_count,
                status: s.status.to_string(),
                expanded_through: s.expanded_through,
            },
            bookings: report.created.into_iter().map(BookingOut::from).collect(),
            skipped: report
                .skipped
                .into_iter()
                .map(|k| SkippedOut {
                    date: k.date,
                    start_time: k.start_time,
                    reason: k.reason,
                })
                .collect(),
        }),
    ))
}
