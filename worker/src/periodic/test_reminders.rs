//! Driving-test reminders: for every test date in `students.test_dates` still ahead, a
//! `test_reminder` 7 days and 1 day before (`test_reminder:<student>:<test unix>:<7d|1d>`), due
//! at the test minus the offset and expiring at the test. An offset whose moment has passed when
//! the date is first seen is recorded as skipped. A date that moves gets new keys; the open
//! reminders of dates no longer in the array are cancelled.
//!
//! The scan reads students whose latest test is ahead (`students_latest_test_idx`) and students
//! who still have open reminders (`notifications_open_test_reminder_idx`), so a student whose
//! dates were all removed has theirs cancelled too. One transaction per student. Owns no table.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use dashlight_core::{
    kinds::Kind,
    notify::{self, NewNotification},
};
use serde_json::json;

use super::{Context, PeriodicError, existing_keys};

/// The offsets before a test: label and days.
pub const OFFSETS: [(&str, i64); 2] = [("7d", 7), ("1d", 1)];

/// The dedupe key of the reminder `label` (`7d`, `1d`) of `student_id`'s test at `test`.
pub fn dedupe_key(student_id: i64, test: DateTime<Utc>, label: &str) -> String {
    format!("test_reminder:{student_id}:{}:{label}", test.timestamp())
}

/// The candidate scan: students with a test ahead of `$1`, and students with open reminders.
/// `pub` so tests can EXPLAIN it; [`run`] runs the same file through `query_file_as!`.
pub const SCAN_SQL: &str = include_str!("../../queries/test_reminders_scan.sql");

#[derive(Debug)]
struct StudentRow {
    id: i64,
    user_id: i64,
    test_dates: Vec<DateTime<Utc>>,
}

/// One reminder a student should have.
struct Wanted {
    key: String,
    test: DateTime<Utc>,
    label: &'static str,
    days: i64,
}

/// Creates the reminders that are missing and cancels stale ones; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let students: Vec<StudentRow> = sqlx::query_file_as!(StudentRow, "queries/test_reminders_scan.sql", now)
        .fetch_all(&ctx.pool)
        .await?;
    // Per student, the reminders of every test still ahead.
    let wanted: Vec<Vec<Wanted>> = students
        .iter()
        .map(|s| {
            let mut dates: Vec<DateTime<Utc>> = s.test_dates.iter().copied().filter(|d| *d > now).collect();
            dates.sort();
            dates.dedup();
            dates
                .into_iter()
                .flat_map(|test| {
                    OFFSETS.map(|(label, days)| Wanted {
                        key: dedupe_key(s.id, test, label),
                        test,
                        label,
                        days,
                    })
                })
                .collect()
        })
        .collect();
    let keys: Vec<String> = wanted.iter().flatten().map(|w| w.key.clone()).collect();
    let users: Vec<i64> = students.iter().map(|s| s.user_id).collect();
    let mut conn = ctx.pool.acquire().await?;
    let exists = existing_keys(&mut conn, &keys).await?;
    let open_rows = sqlx::query!(
        r#"SELECT user_id AS "user_id!", dedupe_key FROM notifications
         WHERE type = 'test_reminder' AND status IN ('pending', 'processing') AND user_id = ANY($1)"#,
        &users,
    )
    .fetch_all(&mut *conn)
    .await?;
    drop(conn);
    let mut open: HashMap<i64, Vec<String>> = HashMap::new();
    for r in open_rows {
        open.entry(r.user_id).or_default().push(r.dedupe_key);
    }

    let (mut created, mut skipped, mut cancelled) = (0usize, 0usize, 0usize);
    for (s, wanted) in students.iter().zip(&wanted) {
        let current: HashSet<&str> = wanted.iter().map(|w| w.key.as_str()).collect();
        let missing: Vec<&Wanted> = wanted.iter().filter(|w| !exists.contains(&w.key)).collect();
        let stale: Vec<&String> = open
            .get(&s.user_id)
            .into_iter()
            .flatten()
            .filter(|k| !current.contains(k.as_str()))
            .collect();
        if missing.is_empty() && stale.is_empty() {
            continue;
        }
        let mut tx = ctx.pool.begin().await?;
        for key in stale {
            if notify::cancel_by_key(&mut tx, key, "the driving test date changed").await? {
                cancelled += 1;
                tracing::info!(student = s.id, user = s.user_id, key = %key, "test reminder cancelled: date no longer booked");
            }
        }
        for w in missing {
            let due = w.test - Duration::days(w.days);
            let mut n = NewNotification::to_user(Kind::TestReminder, s.user_id, w.key.clone(), now);
            n.title = if w.days == 1 {
                "Driving test tomorrow".into()
            } else {
                format!("Driving test in {} days", w.days)
            };
            n.content = format!("Your driving test is on {}.", w.test.to_rfc3339());
            n.data = json!({ "test": { "date": w.test.to_rfc3339(), "days_before": w.days } });
            n.due_at = due;
            n.expires_at = Some(w.test);
            if due <= now {
                n.skip_reason = Some("the reminder time had already passed when the test date was added".into());
            }
            let skip = n.skip_reason.is_some();
            if notify::create(&mut tx, n).await?.is_some() {
                if skip {
                    skipped += 1;
                } else {
                    created += 1;
                }
                tracing::info!(student = s.id, user = s.user_id, test = %w.test, offset = w.label, due = %due, skipped = skip, "test reminder created");
            }
        }
        tx.commit().await?;
    }
    Ok(format!(
        "{} students scanned: {created} test reminders created, {skipped} recorded as skipped (already past), {cancelled} cancelled",
        students.len()
    ))
}
