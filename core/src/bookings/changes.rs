//! Moving a booking: [`cancel`], [`reschedule`] and [`finish`] (`completed`/`no_show`), each with
//! the notifications, calendar changes and freed slot it implies.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::{
    Booking, BookingSettings, Party, alert, booking_context, check_availability, instructor_any, load, schedule_reminders, student,
    validate_times,
};
use crate::{
    analytics,
    calendar::{self, Method},
    error::DomainError,
    gaps::{self, FreedSlot},
    kinds::Kind,
    notify::{self, NewNotification},
    packages,
    states::{BookingStatus, ConfirmedVia},
};

/// Cancels a pending or confirmed booking: pending reminders are cancelled, the calendar event
/// is cancelled (SEQUENCE raised), the student and instructor are told, and the freed slot is
/// offered to waitlisted students ([`gaps::offer_freed_slot`]).
pub async fn cancel(
    conn: &mut PgConnection,
    s: &BookingSettings,
    id: i64,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<Booking, DomainError> {
    let b = load(conn, id, true).await?;
    if !b.status.is_cancellable() {
        return Err(DomainError::Conflict(format!(
            "booking is {}, only pending or confirmed bookings can be cancelled",
            b.status
        )));
    }
    let b: Booking = booking_query!(
        "UPDATE bookings SET status = 'cancelled', cancel_reason = $2, cancelled_at = $3 WHERE id = $1 RETURNING " COLUMNS;
        id,
        reason.as_deref(),
        now,
    )
    .fetch_one(&mut *conn)
    .await?;
    notify::cancel_for_booking(
        conn,
        id,
        &[Kind::LessonReminder, Kind::ConfirmNudge, Kind::UnconfirmedLesson],
        "booking cancelled",
    )
    .await?;
    sqlx::query!(
        "UPDATE calendar_events SET status = 'cancelled', sequence = sequence + 1 WHERE booking_id = $1",
        id
    )
    .execute(&mut *conn)
    .await?;
    packages::give_back(conn, id, now).await?;
    let student = student(conn, b.student_id).await?;
    let instructor = instructor_any(conn, b.instructor_id).await?;
    let mut n = NewNotification::to_user(Kind::BookingCancelled, student.user_id, format!("booking_cancelled:{id}"), now);
    n.title = "Lesson cancelled".into();
    n.content = format!("Your lesson with {} has been cancelled.", instructor.name);
    n.data = json!({
        "booking": booking_context(&b, &student, &instructor),
        "reason": reason,
        "calendar": calendar::booking_invitation(conn, id, Method::Cancel, now).await?,
    });
    n.booking_id = Some(id);
    notify::create(conn, n).await?;
    alert(conn, &b, &student, &instructor, "cancelled", None, now).await?;
    let freed = FreedSlot {
        booking_id: b.id,
        booking_version: b.version,
        student_id: b.student_id,
        instructor: &instructor,
        start_time: b.start_time,
        end_time: b.end_time,
    };
    gaps::offer_freed_slot(conn, &s.gap_fill, &freed, now).await?;
    analytics::record(
        conn,
        Some(student.user_id),
        "booking_cancelled",
        json!({"booking_id": id, "reason": reason}),
        now,
    )
    .await?;
    Ok(b)
}

/// Moves a confirmed booking: version raised, old reminders and escalations cancelled and new
/// ones scheduled, the calendar event moved (SEQUENCE raised), both people told. The student's
/// confirmation was for the old time: it is cleared, and the new time asks again.
pub async fn reschedule(
    conn: &mut PgConnection,
    s: &BookingSettings,
    id: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Booking, DomainError> {
    validate_times(start, end)?;
    let old = load(conn, id, true).await?;
    if old.status != BookingStatus::Confirmed {
        return Err(DomainError::Conflict(format!(
            "booking is {}, only confirmed bookings can be rescheduled",
            old.status
        )));
    }
    let instructor = instructor_any(conn, old.instructor_id).await?;
    if !check_availability(conn, &instructor, start, end).await? {
        return Err(DomainError::invalid("start_time", "outside the instructor's availability"));
    }
    let b: Booking = booking_query!(
        "UPDATE bookings SET start_time = $2, end_time = $3, booking_date = $4, version = version + 1,
                            student_confirmed_at = NULL, student_confirmed_via = NULL
         WHERE id = $1 RETURNING " COLUMNS;
        id,
        start,
        end,
        start.with_timezone(&s.school_tz).date_naive(),
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    notify::cancel_for_booking(
        conn,
        id,
        &[Kind::LessonReminder, Kind::ConfirmNudge, Kind::UnconfirmedLesson],
        "booking rescheduled",
    )
    .await?;
    sqlx::query!(
        "UPDATE calendar_events SET start_time = $2, end_time = $3, sequence = sequence + 1 WHERE booking_id = $1",
        id,
        start,
        end,
    )
    .execute(&mut *conn)
    .await?;
    let student = student(conn, b.student_id).await?;
    let mut n = NewNotification::to_user(
        Kind::BookingRescheduled,
        student.user_id,
        format!("booking_rescheduled:{id}:v{}", b.version),
        now,
    );
    n.title = "Lesson moved".into();
    n.content = format!("Your lesson with {} has moved.", instructor.name);
    n.data = json!({
        "booking": booking_context(&b, &student, &instructor),
        "previous": {"start_time": old.start_time.to_rfc3339(), "end_time": old.end_time.to_rfc3339()},
        "calendar": calendar::booking_invitation(conn, id, Method::Request, now).await?,
    });
    n.booking_id = Some(id);
    notify::create(conn, n).await?;
    alert(
        conn,
        &b,
        &student,
        &instructor,
        "rescheduled",
        Some((old.start_time, old.end_time)),
        now,
    )
    .await?;
    schedule_reminders(conn, s, &b, &student, &instructor, now).await?;
    let freed = FreedSlot {
        booking_id: b.id,
        booking_version: old.version,
        student_id: b.student_id,
        instructor: &instructor,
        start_time: old.start_time,
        end_time: old.end_time,
    };
    gaps::offer_freed_slot(conn, &s.gap_fill, &freed, now).await?;
    analytics::record(
        conn,
        Some(student.user_id),
        "booking_rescheduled",
        json!({"booking_id": id, "version": b.version}),
        now,
    )
    .await?;
    Ok(b)
}

/// How a confirmed booking ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The lesson took place.
    Completed,
    /// The student did not turn up.
    NoShow,
}

impl Outcome {
    /// The booking status it leads to.
    pub fn status(self) -> BookingStatus {
        match self {
            Outcome::Completed => BookingStatus::Completed,
            Outcome::NoShow => BookingStatus::NoShow,
        }
    }
}

/// Ends a confirmed booking as `completed` or `no_show` (anything else is a conflict) and
/// cancels its pending reminders. The calendar event stays: the lesson was in the diary. Returns
/// the booking with its student and instructor.
pub async fn finish(conn: &mut PgConnection, id: i64, outcome: Outcome) -> Result<(Booking, Party, Party), DomainError> {
    let b = load(conn, id, true).await?;
    if b.status != BookingStatus::Confirmed {
        return Err(DomainError::Conflict(format!(
            "booking is {}, only a confirmed booking can be marked {}",
            b.status,
            outcome.status()
        )));
    }
    let b: Booking = booking_query!(
        "UPDATE bookings SET status = $2 WHERE id = $1 RETURNING " COLUMNS;
        id,
        outcome.status() as BookingStatus,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let reason = match outcome {
        Outcome::Completed => "lesson completed",
        Outcome::NoShow => "student did not show up",
    };
    notify::cancel_for_booking(
        conn,
        id,
        &[Kind::LessonReminder, Kind::ConfirmNudge, Kind::UnconfirmedLesson],
        reason,
    )
    .await?;
    let student = student(conn, b.student_id).await?;
    let instructor = instructor_any(conn, b.instructor_id).await?;
    Ok((b, student, instructor))
}
