//! Bookings: create, cancel and reschedule, each in the caller's transaction together with
//! everything it implies — the calendar event and its iCalendar invitation, the student's and
//! instructor's notifications, the lesson reminders, the package lesson it consumes or gives back
//! ([`crate::packages`]) and the CRM status it moves ([`crate::crm`]); and [`finish`], the
//! `completed`/`no_show` end of a confirmed booking ([`crate::lessons`]). The database's exclusion
//! constraint is the final judge of double bookings; its violation comes back as
//! [`DomainError::Conflict`]. A cancellation or a move offers the slot it frees to waitlisted
//! students ([`crate::gaps`]). [`confirm`] is the one writer of the student's confirmation
//! (`student_confirmed_at`/`_via`), whichever way it came (SMS reply, push action, email link,
//! own page); unconfirmed lessons get their escalations ([`Kind::ConfirmNudge`],
//! [`Kind::UnconfirmedLesson`]) with the booking, withdrawn on confirmation, cancellation and
//! reschedule and recreated for the new time. Owns writes to `bookings` and
//! `calendar_events`/`event_participants`.
//!
//! Files: this one holds the booking and its parties (the row, [`NewBooking`],
//! [`BookingSettings`], [`Party`]), the reads ([`get`], [`with_parties`], the party loaders),
//! the checks (availability, times), making a booking ([`create`]) with the alert, reminders and
//! escalations that [`cancel`] and [`reschedule`] make again, and the erasure; `changes.rs` moves
//! a booking ([`cancel`], [`reschedule`], [`finish`]); `confirmation.rs` records the student's
//! confirmation ([`confirm`]).

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::{
    Config, access, analytics,
    calendar::{self, Method},
    config::format_offset,
    crm,
    error::DomainError,
    gaps::GapFill,
    kinds::Kind,
    notify::{self, NewNotification},
    packages,
    people::Window,
    signing,
    states::{BookingStatus, ConfirmedVia},
};

/// A booking row.
#[derive(Debug, Clone, Serialize)]
pub struct Booking {
    /// Id.
    pub id: i64,
    /// Student.
    pub student_id: i64,
    /// Instructor.
    pub instructor_id: i64,
    /// Series it came from.
    pub series_id: Option<i64>,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// End.
    pub end_time: DateTime<Utc>,
    /// Where it stands.
    pub status: BookingStatus,
    /// Pickup.
    pub pickup_location: Option<String>,
    /// Drop-off.
    pub dropoff_location: Option<String>,
    /// Raised on reschedule.
    pub version: i32,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When the student confirmed they will come (the first confirmation).
    pub student_confirmed_at: Option<DateTime<Utc>>,
    /// How they confirmed.
    pub student_confirmed_via: Option<ConfirmedVia>,
}

/// `sqlx::query_as!(Booking, …)` over a statement given as string literals, `;`, then its
/// arguments; among the literals, `COLUMNS` stands for the columns of a [`Booking`], so every
/// statement reads the same ones and each is still one literal the macro checks.
macro_rules! booking_query {
    ([$($done:literal)*] COLUMNS $($rest:tt)*) => {
        booking_query!([$($done)* r#"id, student_id, instructor_id, series_id, start_time, end_time, status AS "status: BookingStatus", pickup_location, dropoff_location, version, cancel_reason, created_at, student_confirmed_at, student_confirmed_via AS "student_confirmed_via: ConfirmedVia""#] $($rest)*)
    };
    ([$($done:literal)*] $piece:literal $($rest:tt)*) => {
        booking_query!([$($done)* $piece] $($rest)*)
    };
    ([$first:literal $($done:literal)*]; $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(Booking, $first $(+ $done)*, $($arg),+)
    };
    ($($rest:tt)+) => {
        booking_query!([] $($rest)+)
    };
}

mod changes;
mod confirmation;

pub use changes::{Outcome, cancel, finish, reschedule};
pub use confirmation::{Confirmation, ESCALATIONS, confirm};

/// What a new booking needs.
#[derive(Debug, Clone)]
pub struct NewBooking {
    /// Student.
    pub student_id: i64,
    /// Instructor.
    pub instructor_id: i64,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// End.
    pub end_time: DateTime<Utc>,
    /// Pickup.
    pub pickup_location: Option<String>,
    /// Drop-off.
    pub dropoff_location: Option<String>,
    /// The series and local date it was expanded for.
    pub series: Option<(i64, chrono::NaiveDate)>,
}

/// Settings the booking operations need.
#[derive(Debug, Clone)]
pub struct BookingSettings {
    /// The school's time zone (for `booking_date`).
    pub school_tz: Tz,
    /// Reminder offsets.
    pub reminder_offsets: Vec<Duration>,
    /// The school's `MAIL_FROM` mailbox: the ORGANIZER of the lessons' calendar invitations.
    pub organizer: String,
    /// Offering freed slots to waitlisted students ([`crate::gaps`]).
    pub gap_fill: GapFill,
    /// `CONFIRM_NUDGE_BEFORE`: the SMS nudge of an unconfirmed lesson; `None`: off.
    pub confirm_nudge_before: Option<Duration>,
    /// `CONFIRM_ALERT_BEFORE`: the instructor's alert about an unconfirmed lesson; `None`: off.
    pub confirm_alert_before: Option<Duration>,
}

impl BookingSettings {
    /// The settings of a configuration.
    pub fn from_config(config: &Config) -> BookingSettings {
        BookingSettings {
            school_tz: config.school_timezone,
            reminder_offsets: config.reminder_offsets.clone(),
            organizer: config.mail_from.clone(),
            gap_fill: GapFill::from_config(config),
            confirm_nudge_before: config.confirm_nudge_before,
            confirm_alert_before: config.confirm_alert_before,
        }
    }
}

/// A person on a booking, with what messages about it need.
#[derive(Debug, Clone, FromRow)]
pub struct Party {
    /// students.id or instructors.id.
    pub id: i64,
    /// users.id.
    pub user_id: i64,
    /// Full name.
    pub name: String,
    /// The user's time zone.
    pub timezone: String,
}

/// Loads a student with what messages about their bookings need.
pub(crate) async fn student(conn: &mut PgConnection, id: i64) -> Result<Party, DomainError> {
    sqlx::query_as!(
        Party,
        r#"SELECT s.id, u.id AS user_id, u.first_name || ' ' || u.last_name AS "name!", u.timezone
         FROM students s JOIN users u ON u.id = s.user_id WHERE s.id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await?
    .ok_or(DomainError::NotFound("student"))
}

/// Loads an active instructor and locks their row (`FOR NO KEY UPDATE`) until the transaction
/// ends: bookings of one instructor are written one at a time, so two concurrent requests for
/// one slot end in one booking and one clean exclusion violation (409), never a deadlock.
async fn instructor(conn: &mut PgConnection, id: i64) -> Result<Party, DomainError> {
    sqlx::query_as!(
        Party,
        r#"SELECT i.id, u.id AS user_id, u.first_name || ' ' || u.last_name AS "name!", u.timezone
         FROM instructors i JOIN users u ON u.id = i.user_id WHERE i.id = $1 AND i.active
         FOR NO KEY UPDATE OF i"#,
        id,
    )
    .fetch_optional(conn)
    .await?
    .ok_or(DomainError::NotFound("instructor"))
}

/// Checks `[start, end)` against the instructor's weekly availability in their time zone.
/// An instructor with no availability rows at all is taken as available any time.
pub async fn check_availability(
    conn: &mut PgConnection,
    instructor: &Party,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<bool, DomainError> {
    let windows: Vec<Window> = sqlx::query_as!(
        Window,
        "SELECT day_of_week, start_time, end_time FROM instructor_availability WHERE instructor_id = $1 AND is_available",
        instructor.id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let any: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM instructor_availability WHERE instructor_id = $1) AS "any!""#,
        instructor.id,
    )
    .fetch_one(&mut *conn)
    .await?;
    if !any {
        return Ok(true);
    }
    let tz = crate::validate::stored_timezone(&instructor.timezone);
    let (ls, le) = (start.with_timezone(&tz), end.with_timezone(&tz));
    if ls.date_naive() != le.date_naive() && le.time() != NaiveTime::MIN {
        return Ok(false);
    }
    let dow = ls.weekday().number_from_monday() as i16;
    let end_t = if le.date_naive() != ls.date_naive() {
        NaiveTime::from_hms_opt(23, 59, 59).unwrap()
    } else {
        le.time()
    };
    Ok(windows
        .iter()
        .any(|w| w.day_of_week == dow && w.start_time <= ls.time() && end_t <= w.end_time))
}

fn validate_times(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<(), DomainError> {
    if end <= start {
        return Err(DomainError::invalid("end_time", "must be after start_time"));
    }
    if end - start > chrono::Duration::hours(12) {
        return Err(DomainError::invalid("end_time", "a lesson lasts at most 12 hours"));
    }
    Ok(())
}

/// The template context of a booking.
pub fn booking_context(b: &Booking, student: &Party, instructor: &Party) -> serde_json::Value {
    json!({
        "id": b.id,
        "start_time": b.start_time.to_rfc3339(),
        "end_time": b.end_time.to_rfc3339(),
        "pickup_location": b.pickup_location,
        "instructor_name": instructor.name,
        "student_name": student.name,
        "status": b.status,
    })
}

async fn load(conn: &mut PgConnection, id: i64, lock: bool) -> Result<Booking, DomainError> {
    let booking = if lock {
        booking_query!("SELECT " COLUMNS " FROM bookings WHERE id = $1 FOR UPDATE"; id)
            .fetch_optional(conn)
            .await?
    } else {
        booking_query!("SELECT " COLUMNS " FROM bookings WHERE id = $1"; id)
            .fetch_optional(conn)
            .await?
    };
    booking.ok_or(DomainError::NotFound("booking"))
}

/// A booking with its student and instructor (for pages about it); `NotFound` when there is
/// no such booking.
pub async fn with_parties(conn: &mut PgConnection, id: i64) -> Result<(Booking, Party, Party), DomainError> {
    let b = load(conn, id, false).await?;
    let student = student(conn, b.student_id).await?;
    let instructor = instructor_plain(conn, b.instructor_id).await?;
    Ok((b, student, instructor))
}

/// Loads an instructor, active or not, without locking (for messages about a booking).
async fn instructor_plain(conn: &mut PgConnection, id: i64) -> Result<Party, DomainError> {
    sqlx::query_as!(
        Party,
        r#"SELECT i.id, u.id AS user_id, u.first_name || ' ' || u.last_name AS "name!", u.timezone
         FROM instructors i JOIN users u ON u.id = i.user_id WHERE i.id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await?
    .ok_or(DomainError::NotFound("instructor"))
}

/// Reads a booking.
pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Booking, DomainError> {
    load(conn, id, false).await
}

fn field_not_found(e: DomainError, field: &str) -> DomainError {
    match e {
        DomainError::NotFound(what) => DomainError::invalid(field, format!("no such {what}")),
        other => other,
    }
}

/// Loads an instructor, active or not, locking the row like [`instructor`].
async fn instructor_any(conn: &mut PgConnection, id: i64) -> Result<Party, DomainError> {
    sqlx::query_as!(
        Party,
        r#"SELECT i.id, u.id AS user_id, u.first_name || ' ' || u.last_name AS "name!", u.timezone
         FROM instructors i JOIN users u ON u.id = i.user_id WHERE i.id = $1
         FOR NO KEY UPDATE OF i"#,
        id,
    )
    .fetch_optional(conn)
    .await?
    .ok_or(DomainError::NotFound("instructor"))
}

/// Creates a confirmed booking with its calendar event, notifications and reminders.
pub async fn create(conn: &mut PgConnection, s: &BookingSettings, nb: NewBooking, now: DateTime<Utc>) -> Result<Booking, DomainError> {
    validate_times(nb.start_time, nb.end_time)?;
    let student = student(conn, nb.student_id).await.map_err(|e| field_not_found(e, "student_id"))?;
    let instructor = instructor(conn, nb.instructor_id)
        .await
        .map_err(|e| field_not_found(e, "instructor_id"))?;
    if !check_availability(conn, &instructor, nb.start_time, nb.end_time).await? {
        return Err(DomainError::invalid("start_time", "outside the instructor's availability"));
    }
    let booking_date = nb.start_time.with_timezone(&s.school_tz).date_naive();
    let booking: Booking = booking_query!(
        "INSERT INTO bookings (student_id, instructor_id, series_id, series_occurrence, booking_date, start_time, end_time,
                               status, pickup_location, dropoff_location)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'confirmed', $8, $9)
         RETURNING " COLUMNS;
        nb.student_id,
        nb.instructor_id,
        nb.series.map(|x| x.0),
        nb.series.map(|x| x.1),
        booking_date,
        nb.start_time,
        nb.end_time,
        nb.pickup_location.as_deref(),
        nb.dropoff_location.as_deref(),
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;

    let event_id: i64 = sqlx::query_scalar!(
        "INSERT INTO calendar_events (owner_id, booking_id, title, start_time, end_time, event_type, location, uid, organizer)
         VALUES ($1, $2, $3, $4, $5, 'lesson', $6, $7, $8) RETURNING id",
        instructor.user_id,
        booking.id,
        format!("Driving lesson: {} with {}", student.name, instructor.name),
        booking.start_time,
        booking.end_time,
        booking.pickup_location.as_deref(),
        format!("booking-{}@dashlight", booking.id),
        &s.organizer,
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO event_participants (event_id, user_id, participation_status, role)
         VALUES ($1, $2, 'accepted', 'organizer'), ($1, $3, 'accepted', 'attendee')",
        event_id,
        instructor.user_id,
        student.user_id,
    )
    .execute(&mut *conn)
    .await?;

    let ctx = booking_context(&booking, &student, &instructor);
    let mut confirmed = NewNotification::to_user(
        Kind::BookingConfirmed,
        student.user_id,
        format!("booking_confirmed:{}", booking.id),
        now,
    );
    confirmed.title = "Lesson booked".into();
    confirmed.content = format!("Your lesson with {} is confirmed.", instructor.name);
    confirmed.data = json!({
        "booking": ctx,
        "calendar": calendar::booking_invitation(conn, booking.id, Method::Request, now).await?,
        "page_url": page_url(conn, s, student.user_id).await?,
    });
    confirmed.booking_id = Some(booking.id);
    notify::create(conn, confirmed).await?;

    alert(conn, &booking, &student, &instructor, "new", None, now).await?;
    schedule_reminders(conn, s, &booking, &student, &instructor, now).await?;
    packages::consume(conn, booking.id, student.id, student.user_id, now).await?;
    crm::mark_active(conn, student.user_id).await?;
    analytics::record(
        conn,
        Some(student.user_id),
        "booking_created",
        json!({"booking_id": booking.id, "instructor_id": instructor.id, "series_id": booking.series_id}),
        now,
    )
    .await?;
    Ok(booking)
}

async fn alert(
    conn: &mut PgConnection,
    b: &Booking,
    student: &Party,
    instructor: &Party,
    change: &str,
    previous: Option<(DateTime<Utc>, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let mut n = NewNotification::to_user(
        Kind::BookingAlert,
        instructor.user_id,
        format!("booking_alert:{}:{change}:v{}", b.id, b.version),
        now,
    );
    n.title = match change {
        "new" => "New booking",
        "cancelled" => "Booking cancelled",
        _ => "Booking moved",
    }
    .into();
    n.content = format!("{}: lesson with {}", n.title, student.name);
    n.data = json!({
        "booking": booking_context(b, student, instructor),
        "change": change,
        "previous": previous.map(|(s, e)| json!({"start_time": s.to_rfc3339(), "end_time": e.to_rfc3339()})),
    });
    n.booking_id = Some(b.id);
    notify::create(conn, n).await?;
    Ok(())
}

/// One reminder per offset, due at start minus the offset, expiring at the start. An offset whose
/// moment has passed is recorded as skipped.
async fn schedule_reminders(
    conn: &mut PgConnection,
    s: &BookingSettings,
    b: &Booking,
    student: &Party,
    instructor: &Party,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let page_url = page_url(conn, s, student.user_id).await?;
    // The lesson's confirmation link (signed for this booking and student): the email's link
    // and the push notification's Confirm action.
    let confirm_path = signing::current(conn).await?.map(|k| signing::confirm_path(&k, b.id, b.student_id));
    let confirm_url = confirm_path
        .as_ref()
        .map(|p| format!("{}{p}", s.gap_fill.public_base_url.trim_end_matches('/')));
    for offset in &s.reminder_offsets {
        let label = format_offset(*offset);
        let due = b.start_time - chrono::Duration::from_std(*offset).expect("offset fits");
        let mut n = NewNotification::to_user(
            Kind::LessonReminder,
            student.user_id,
            format!("lesson_reminder:{}:{label}:v{}", b.id, b.version),
            now,
        );
        n.due_at = due;
        n.title = "Lesson reminder".into();
        n.content = format!("Your lesson with {} starts in {}.", instructor.name, human_offset(*offset));
        n.data = json!({
            "booking": booking_context(b, student, instructor),
            "offset_label": human_offset(*offset),
            "offset": label,
            "page_url": page_url,
            "confirm_path": confirm_path,
            "confirm_url": confirm_url,
        });
        n.booking_id = Some(b.id);
        n.expires_at = Some(b.start_time);
        if due <= now {
            n.skip_reason = Some("the reminder time had already passed when the booking was made; the confirmation covers it".into());
        }
        notify::create(conn, n).await?;
    }
    schedule_escalations(conn, s, b, student, instructor, now).await
}

/// The escalations of an unconfirmed lesson, each due its offset before the start and expiring
/// at the start: the student's SMS nudge (`CONFIRM_NUDGE_BEFORE`) and the instructor's alert
/// (`CONFIRM_ALERT_BEFORE`). Keyed by the booking's version, so a reschedule makes new ones. An
/// escalation whose moment has already passed when the booking is made (or moved) is not
/// created: the lesson is too close for it to help. Nothing is created for a lesson the student
/// has already confirmed.
async fn schedule_escalations(
    conn: &mut PgConnection,
    s: &BookingSettings,
    b: &Booking,
    student: &Party,
    instructor: &Party,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    if b.student_confirmed_at.is_some() {
        return Ok(());
    }
    let ctx = booking_context(b, student, instructor);
    let phone: Option<String> = sqlx::query_scalar!("SELECT phone FROM users WHERE id = $1", student.user_id)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    let escalations = [
        (Kind::ConfirmNudge, s.confirm_nudge_before, student.user_id),
        (Kind::UnconfirmedLesson, s.confirm_alert_before, instructor.user_id),
    ];
    for (kind, before, user_id) in escalations {
        let Some(before) = before else { continue };
        let due = b.start_time - chrono::Duration::from_std(before).expect("offset fits");
        if due <= now {
            continue;
        }
        let mut n = NewNotification::to_user(kind, user_id, format!("{}:{}:v{}", kind.as_str(), b.id, b.version), now);
        n.due_at = due;
        n.expires_at = Some(b.start_time);
        n.booking_id = Some(b.id);
        if kind == Kind::ConfirmNudge {
            n.title = "Please confirm your lesson".into();
            n.content = format!("Reply C to confirm your lesson with {}.", instructor.name);
        } else {
            n.title = "Lesson not confirmed".into();
            n.content = format!("{} has not confirmed the lesson.", student.name);
        }
        n.data = json!({ "booking": ctx, "offset_label": human_offset(before), "student_phone": phone });
        notify::create(conn, n).await?;
    }
    Ok(())
}

/// The link to the person's own page ([`crate::access`]) that confirmation and reminder emails
/// carry.
async fn page_url(conn: &mut PgConnection, s: &BookingSettings, user_id: i64) -> Result<String, DomainError> {
    Ok(access::page_url(
        &s.gap_fill.public_base_url,
        &access::token_of(conn, user_id).await?,
    ))
}

/// "24 hours", "2 hours", "90 minutes".
pub fn human_offset(d: Duration) -> String {
    let s = d.as_secs();
    let plural = |n: u64, w: &str| if n == 1 { format!("1 {w}") } else { format!("{n} {w}s") };
    if s.is_multiple_of(86_400) && s >= 86_400 * 2 {
        plural(s / 86_400, "day")
    } else if s.is_multiple_of(3600) {
        plural(s / 3600, "hour")
    } else {
        plural(s / 60, "minute")
    }
}

/// Erasure: a student's bookings keep their times, states and prices; pick-up and drop-off
/// places and cancel reasons go. Cancel reasons of an instructor's bookings lose the
/// instructor's name. Returns the rows changed.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE bookings
         SET pickup_location = CASE WHEN student_id = $1 THEN NULL ELSE pickup_location END,
             dropoff_location = CASE WHEN student_id = $1 THEN NULL ELSE dropoff_location END,
             cancel_reason = CASE WHEN student_id = $1 THEN NULL ELSE erase_needles(cancel_reason, $3, $4) END
         WHERE student_id = $1 OR instructor_id = $2",
        e.student_id,
        e.instructor_id,
        &e.needles,
        e.pseudonym,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
