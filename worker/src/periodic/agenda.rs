//! Daily agenda: each active instructor whose local time (their `users.timezone`) is 07:00 or
//! later on their day D, and who has confirmed lessons starting on D, gets one `daily_agenda`
//! (`daily_agenda:<instructor id>:<D>`). No lessons, no message; before 07:00, not yet.
//!
//! Runs every 15 minutes. The scan reads confirmed bookings starting within a day and a bit of
//! now (`bookings_upcoming_idx`), which covers "today" in every time zone; the instructor's day
//! and hour are worked out here with chrono-tz. An agenda expires at the end of its day, so one
//! held up past midnight is skipped rather than sent late. Owns no table.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    kinds::Kind,
    notify::{self, NewNotification},
};
use serde_json::json;

use super::{Context, PeriodicError, day_bounds, existing_keys, tz_or};

/// Local time from which the day's agenda goes out.
pub fn send_from() -> NaiveTime {
    NaiveTime::from_hms_opt(7, 0, 0).expect("valid time")
}

#[derive(Debug, Clone)]
struct LessonRow {
    instructor_id: i64,
    instructor_user: i64,
    timezone: String,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    pickup_location: Option<String>,
    student_name: String,
}

/// The dedupe key of an instructor's agenda for local day `day`.
pub fn dedupe_key(instructor_id: i64, day: NaiveDate) -> String {
    format!("daily_agenda:{instructor_id}:{day}")
}

/// The candidate scan: confirmed lessons of active instructors starting within 26 hours of
/// `$1` either way (a local day is at most 25 hours long). `pub` so tests can EXPLAIN it; [`run`]
/// runs the same file through `query_file_as!`.
pub const SCAN_SQL: &str = include_str!("../../queries/agenda_scan.sql");

/// Sends the agendas that are due; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let rows: Vec<LessonRow> = sqlx::query_file_as!(LessonRow, "queries/agenda_scan.sql", now)
        .fetch_all(&ctx.pool)
        .await?;

    // Per instructor: their local day, if it is 07:00 or later there, and that day's lessons.
    let mut due: BTreeMap<i64, (i64, Tz, NaiveDate, Vec<LessonRow>)> = BTreeMap::new();
    let mut early = BTreeSet::new();
    for r in rows {
        let tz = tz_or(&r.timezone, ctx.config.school_timezone);
        let local_now = now.with_timezone(&tz);
        if local_now.time() < send_from() {
            early.insert(r.instructor_id);
            continue;
        }
        let day = local_now.date_naive();
        if r.start_time.with_timezone(&tz).date_naive() != day {
            continue;
        }
        due.entry(r.instructor_id)
            .or_insert_with(|| (r.instructor_user, tz, day, Vec::new()))
            .3
            .push(r);
    }
    let keys: Vec<String> = due.iter().map(|(id, (_, _, day, _))| dedupe_key(*id, *day)).collect();
    let mut conn = ctx.pool.acquire().await?;
    let done = existing_keys(&mut conn, &keys).await?;
    drop(conn);

    let mut sent = 0usize;
    for (instructor_id, (user_id, tz, day, lessons)) in due {
        let key = dedupe_key(instructor_id, day);
        if done.contains(&key) {
            continue;
        }
        let count = lessons.len();
        let list: Vec<_> = lessons
            .iter()
            .map(|l| {
                json!({
                    "start_time": l.start_time.to_rfc3339(),
                    "end_time": l.end_time.to_rfc3339(),
                    "student_name": l.student_name,
                    "pickup_location": l.pickup_location,
                })
            })
            .collect();
        let first = lessons[0].start_time.with_timezone(&tz).format("%H:%M");
        let mut n = NewNotification::to_user(Kind::DailyAgenda, user_id, key, now);
        n.title = "Your lessons today".into();
        n.content = format!(
            "{count} lesson{} on {day}, the first at {first}.",
            if count == 1 { "" } else { "s" }
        );
        n.data = json!({ "date": day.to_string(), "lessons": list, "count": count });
        n.expires_at = Some(day_bounds(tz, day).1);
        let mut tx = ctx.pool.begin().await?;
        if notify::create(&mut tx, n).await?.is_some() {
            sent += 1;
            tracing::info!(instructor = instructor_id, user = user_id, %day, lessons = count, timezone = tz.name(), "daily agenda created");
        }
        tx.commit().await?;
    }
    Ok(format!(
        "{sent} daily agendas created; {} instructors already had theirs; {} instructors with lessons not yet at 07:00",
        keys.len() - sent,
        early.len()
    ))
}
