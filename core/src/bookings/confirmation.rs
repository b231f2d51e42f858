//! The student's confirmation of a lesson ([`confirm`]): its one writer, whichever way it came;
//! it withdraws the lesson's escalations and tells the instructor.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::{Booking, booking_context, instructor_plain, load, student};
use crate::{
    analytics,
    error::DomainError,
    kinds::Kind,
    notify::{self, NewNotification},
    states::{BookingStatus, ConfirmedVia},
};

/// The kinds that escalate an unconfirmed lesson: withdrawn when it is confirmed, cancelled,
/// moved or ended.
pub const ESCALATIONS: [Kind; 2] = [Kind::ConfirmNudge, Kind::UnconfirmedLesson];

/// What [`confirm`] found.
#[derive(Debug, Clone)]
pub enum Confirmation {
    /// This call confirmed the lesson: the instructor was told, the escalations withdrawn.
    Confirmed(Booking),
    /// It had been confirmed before (the first confirmation wins; nothing changed).
    Already(Booking),
    /// The booking is not an upcoming confirmed lesson (cancelled, ended or over).
    NotConfirmable(Booking),
}

impl Confirmation {
    /// The booking as it is now.
    pub fn booking(&self) -> &Booking {
        match self {
            Confirmation::Confirmed(b) | Confirmation::Already(b) | Confirmation::NotConfirmable(b) => b,
        }
    }
}

/// The student confirms that they will come to the lesson, by any path. One conditional
/// `UPDATE … WHERE student_confirmed_at IS NULL` records it, so of two confirmations at once
/// exactly one wins (the other waits for the row, then finds it confirmed: [`Confirmation::Already`]).
/// The first one withdraws the lesson's pending escalations and tells the instructor
/// (`student_confirmed`). Only a `confirmed` booking that has not ended can be confirmed.
pub async fn confirm(conn: &mut PgConnection, id: i64, via: ConfirmedVia, now: DateTime<Utc>) -> Result<Confirmation, DomainError> {
    let updated = booking_query!(
        "UPDATE bookings SET student_confirmed_at = $2, student_confirmed_via = $3
         WHERE id = $1 AND status = 'confirmed' AND student_confirmed_at IS NULL AND end_time > $2
         RETURNING " COLUMNS;
        id,
        now,
        via as ConfirmedVia,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(b) = updated else {
        let b = load(conn, id, false).await?;
        return Ok(if b.student_confirmed_at.is_some() {
            Confirmation::Already(b)
        } else {
            Confirmation::NotConfirmable(b)
        });
    };
    notify::cancel_for_booking(conn, id, &ESCALATIONS, "the student confirmed the lesson").await?;
    let student = student(conn, b.student_id).await?;
    let instructor = instructor_plain(conn, b.instructor_id).await?;
    let mut n = NewNotification::to_user(
        Kind::StudentConfirmed,
        instructor.user_id,
        format!("student_confirmed:{}:v{}", b.id, b.version),
        now,
    );
    n.booking_id = Some(b.id);
    n.title = "Lesson confirmed by the student".into();
    n.content = format!("{} confirmed the lesson {}", student.name, via.phrase());
    n.data = json!({
        "booking": booking_context(&b, &student, &instructor),
        "via": via,
        "via_phrase": via.phrase(),
    });
    notify::create(conn, n).await?;
    analytics::record(
        conn,
        Some(student.user_id),
        "lesson_confirmed",
        json!({"booking_id": b.id, "instructor_id": instructor.id, "via": via}),
        now,
    )
    .await?;
    tracing::info!(
        booking = b.id,
        via = via.as_str(),
        "lesson confirmed by the student; instructor told, escalations withdrawn"
    );
    Ok(Confirmation::Confirmed(b))
}
