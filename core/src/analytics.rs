//! `analytics_events`: the system's own record of what happened (booking created, payment
//! succeeded, notification sent, ...), written in the same transaction as the fact it records.
//!
//! Also the confirmation figures of the rollup ([`rollup_confirmations`], run by the periodic
//! queue's analytics rollup for its days, and by the demo for its past lessons), the one writer
//! of `confirmation_rollups`: per local day of the lesson's start and per channel of its first
//! sent reminder,
//!
//! | figure | what it counts |
//! |---|---|
//! | `reminded` | lessons (bookings not cancelled) with at least one `lesson_reminder` delivery sent (then delivered or not) |
//! | `confirmed` | of those, the ones the student confirmed (`student_confirmed_at`) |
//! | `confirm_minutes_p50` | median minutes from the first reminder's send to the confirmation (0 for a confirmation made before it) |
//! | `no_shows_confirmed` / `no_shows_unconfirmed` | of those, the ones the instructor marked `no_show`, confirmed or not |
//!
//! A lesson's figures move as its outcome is recorded: a day is recomputed from scratch each
//! time, and the rollup recomputes the last few days (a no-show marked later than that stays out).

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

/// Records an analytics event.
pub async fn record(
    conn: &mut PgConnection,
    user_id: Option<i64>,
    event_type: &str,
    data: Value,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO analytics_events (user_id, event_type, event_data, "timestamp") VALUES ($1, $2, $3, $4)"#,
        user_id,
        event_type,
        data,
        at,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One event of [`record_many`].
#[derive(Debug, Clone)]
pub struct Event {
    /// Who it is about.
    pub user_id: Option<i64>,
    /// What happened.
    pub event_type: &'static str,
    /// Details.
    pub data: Value,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Records many events in one statement.
pub async fn record_many(conn: &mut PgConnection, events: &[Event]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let users: Vec<Option<i64>> = events.iter().map(|e| e.user_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let data: Vec<&Value> = events.iter().map(|e| &e.data).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> = events.iter().map(|e| e.at).collect();
    sqlx::query!(
        r#"INSERT INTO analytics_events (user_id, event_type, event_data, "timestamp")
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::timestamptz[])"#,
        &users as &[Option<i64>],
        &types as &[&str],
        &data as &[&Value],
        &at,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One row of `confirmation_rollups`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ConfirmationFigures {
    /// The lessons' local day (school time zone).
    pub day: NaiveDate,
    /// The channel of the lessons' first sent reminder: `push`, `sms` or `email`.
    pub channel: String,
    /// Reminded lessons.
    pub reminded: i32,
    /// Of those, confirmed by the student.
    pub confirmed: i32,
    /// Median minutes from the first reminder to the confirmation.
    pub confirm_minutes_p50: Option<f64>,
    /// No-shows among the confirmed.
    pub no_shows_confirmed: i32,
    /// No-shows among the unconfirmed.
    pub no_shows_unconfirmed: i32,
}

/// `[local midnight of day, next local midnight)` in `tz`.
pub fn day_bounds(tz: Tz, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let next = day.succ_opt().expect("date in range");
    (
        crate::series::local_instant(tz, day, NaiveTime::MIN),
        crate::series::local_instant(tz, next, NaiveTime::MIN),
    )
}

/// Recomputes the confirmation figures of the lessons of one local day into
/// `confirmation_rollups` (one row per first-reminder channel; a channel with none left is
/// deleted). Returns how many rows the day has.
pub async fn rollup_confirmations(conn: &mut PgConnection, tz: Tz, day: NaiveDate, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
    let (start, end) = day_bounds(tz, day);
    let rows = sqlx::query!(
        r#"WITH lessons AS (
             SELECT b.status, b.student_confirmed_at, r.channel, r.sent_at
             FROM bookings b
             CROSS JOIN LATERAL (
                 SELECT d.channel, d.sent_at FROM notifications n JOIN notification_deliveries d ON d.notification_id = n.id
                 WHERE n.booking_id = b.id AND n.type = 'lesson_reminder' AND d.status IN ('sent', 'delivered', 'undelivered')
                   AND d.sent_at IS NOT NULL
                 ORDER BY d.sent_at, d.id LIMIT 1) r
             WHERE b.start_time >= $1 AND b.start_time < $2 AND b.status <> 'cancelled')
           SELECT channel AS "channel!", count(*)::int AS "reminded!",
                  count(*) FILTER (WHERE student_confirmed_at IS NOT NULL)::int AS "confirmed!",
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(0, extract(epoch FROM student_confirmed_at - sent_at) / 60)::float8)
                      FILTER (WHERE student_confirmed_at IS NOT NULL) AS p50,
                  count(*) FILTER (WHERE status = 'no_show' AND student_confirmed_at IS NOT NULL)::int AS "ns_confirmed!",
                  count(*) FILTER (WHERE status = 'no_show' AND student_confirmed_at IS NULL)::int AS "ns_unconfirmed!"
           FROM lessons GROUP BY channel ORDER BY channel"#,
        start,
        end,
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        sqlx::query!(
            "INSERT INTO confirmation_rollups (day, channel, reminded, confirmed, confirm_minutes_p50, no_shows_confirmed,
                                              no_shows_unconfirmed, computed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (day, channel) DO UPDATE SET
                reminded = EXCLUDED.reminded, confirmed = EXCLUDED.confirmed, confirm_minutes_p50 = EXCLUDED.confirm_minutes_p50,
                no_shows_confirmed = EXCLUDED.no_shows_confirmed, no_shows_unconfirmed = EXCLUDED.no_shows_unconfirmed,
                computed_at = EXCLUDED.computed_at",
            day,
            r.channel,
            r.reminded,
            r.confirmed,
            r.p50,
            r.ns_confirmed,
            r.ns_unconfirmed,
            now,
        )
        .execute(&mut *conn)
        .await?;
    }
    let keep: Vec<String> = rows.iter().map(|r| r.channel.clone()).collect();
    sqlx::query!("DELETE FROM confirmation_rollups WHERE day = $1 AND channel <> ALL($2)", day, &keep,)
        .execute(&mut *conn)
        .await?;
    Ok(rows.len())
}

/// The stored confirmation figures of the days `from..=to`, by day then channel.
pub async fn confirmation_figures(
    conn: &mut PgConnection,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<ConfirmationFigures>, sqlx::Error> {
    sqlx::query_as!(
        ConfirmationFigures,
        "SELECT day, channel, reminded, confirmed, confirm_minutes_p50, no_shows_confirmed, no_shows_unconfirmed
         FROM confirmation_rollups WHERE day >= $1 AND day <= $2 ORDER BY day, channel",
        from,
        to,
    )
    .fetch_all(conn)
    .await
}

/// An upcoming lesson its student has not confirmed: the dashboard's call list.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Unconfirmed {
    /// `bookings.id`.
    pub booking_id: i64,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// The student's name.
    pub student_name: String,
    /// The student's phone.
    pub student_phone: Option<String>,
    /// The instructor's name.
    pub instructor_name: String,
    /// Whether the instructor's alert went (`unconfirmed_lesson` done).
    pub alerted: bool,
}

/// Confirmed-but-not-by-the-student lessons starting in `[now, now + within)`, soonest first
/// (at most 100): whom to call.
pub async fn unconfirmed_lessons(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    within: chrono::Duration,
) -> Result<Vec<Unconfirmed>, sqlx::Error> {
    sqlx::query_as!(
        Unconfirmed,
        r#"SELECT b.id AS booking_id, b.start_time,
                su.first_name || ' ' || su.last_name AS "student_name!", su.phone AS student_phone,
                iu.first_name || ' ' || iu.last_name AS "instructor_name!",
                EXISTS (SELECT 1 FROM notifications n WHERE n.booking_id = b.id AND n.type = 'unconfirmed_lesson' AND n.status = 'done') AS "alerted!"
         FROM bookings b
         JOIN students s ON s.id = b.student_id JOIN users su ON su.id = s.user_id
         JOIN instructors i ON i.id = b.instructor_id JOIN users iu ON iu.id = i.user_id
         WHERE b.status = 'confirmed' AND b.student_confirmed_at IS NULL AND b.start_time >= $1 AND b.start_time < $2
         ORDER BY b.start_time, b.id LIMIT 100"#,
        now,
        now + within,
    )
    .fetch_all(conn)
    .await
}

/// Erasure: the person's events keep their (pseudonymous) user id and type; any identifying
/// string in their data, or in another event's data about them, becomes the pseudonym.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE analytics_events SET event_data = erase_needles_jsonb(event_data, $2, $3)
         WHERE (user_id = $1 OR EXISTS (SELECT 1 FROM unnest($4::text[]) AS s WHERE strpos(lower(event_data::text), lower(s)) > 0))
           AND event_data <> erase_needles_jsonb(event_data, $2, $3)",
        e.user_id,
        &e.needles,
        e.pseudonym,
        &e.strong,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
