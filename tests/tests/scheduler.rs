//! The scheduler and the periodic jobs: ticks claimed once across replicas, caught up once after
//! downtime, and every periodic task idempotent and index-driven against real Postgres, with
//! time injected (a manual clock and explicit ticks; nothing waits for real time to pass).
//!
//! - `scheduler/ticks.rs`: one job per tick across replicas; catching up once after downtime.
//! - `scheduler/recurring.rs`: weekly series expanded over the horizon, clashes reported, DST.
//! - `scheduler/invoices.rs`: gapless numbering under concurrency, real PDFs, the invoice email.
//! - `scheduler/rollup.rs`: the analytics rollup, recomputed identically.
//! - `scheduler/agenda.rs`: the instructors' 07:00 agenda in their own time zone.
//! - `scheduler/test_reminders.rs`: driving-test reminders, moved with the date.
//! - `scheduler/crm_follow_up.rs`: follow-ups of silent leads.
//! - `scheduler/prune.rs`: pruning finished jobs and old ticks.
//! - `scheduler/scale.rs`: the due scans use indexes among 200,000 rows.
//!
//! Here: the helpers they share (times, running a task, reading notifications, checking they
//! render, row factories).

use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::{PeriodicJob, PeriodicTask},
    kinds::Kind,
};
use dashlight_tests::world::{Person, World};
use dashlight_worker::{
    periodic::{self, Context},
    render::{Part, Renderer},
};
use serde_json::{Value, json};
use sqlx::PgPool;

#[path = "scheduler/agenda.rs"]
mod agenda;
#[path = "scheduler/crm_follow_up.rs"]
mod crm_follow_up;
#[path = "scheduler/invoices.rs"]
mod invoices;
#[path = "scheduler/prune.rs"]
mod prune;
#[path = "scheduler/recurring.rs"]
mod recurring;
#[path = "scheduler/rollup.rs"]
mod rollup;
#[path = "scheduler/scale.rs"]
mod scale;
#[path = "scheduler/test_reminders.rs"]
mod test_reminders;
#[path = "scheduler/ticks.rs"]
mod ticks;

/// An RFC 3339 instant.
fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Runs one periodic task the way the worker's handler does.
async fn run(ctx: &Context, task: PeriodicTask, tick: DateTime<Utc>) -> String {
    periodic::run(ctx, &PeriodicJob { task, tick })
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", task.as_str()))
}

/// A number from the database.
async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A notification as the tests look at it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Note {
    user_id: Option<i64>,
    recipient_email: Option<String>,
    dedupe_key: String,
    status: String,
    due_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    data: Value,
}

/// The notifications of `kind`, oldest first.
async fn notes(pool: &PgPool, kind: &str) -> Vec<Note> {
    sqlx::query_as(
        "SELECT user_id, recipient_email, dedupe_key, status, due_at, expires_at, data FROM notifications WHERE type = $1 ORDER BY id",
    )
    .bind(kind)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Renders every part of every notification of `kind` with the shipped templates, the way the
/// worker builds the context (data + recipient + school): the producers keep to the contract.
async fn assert_renders(w: &World, kind: &str) {
    let renderer = Renderer::configured(w.config.templates_dir.as_deref()).expect("templates load");
    for n in notes(w.pool(), kind).await {
        let mut ctx = n.data.clone();
        ctx["recipient"] = match n.user_id {
            Some(uid) => {
                let (first, last, tz): (String, String, String) =
                    sqlx::query_as("SELECT first_name, last_name, timezone FROM users WHERE id = $1")
                        .bind(uid)
                        .fetch_one(w.pool())
                        .await
                        .unwrap();
                json!({"first_name": first, "last_name": last, "timezone": tz})
            }
            None => json!({"first_name": w.config.school_name, "last_name": "", "timezone": w.config.school_timezone.name()}),
        };
        ctx["school"] = json!({"name": w.config.school_name});
        for part in Part::ALL {
            let out = renderer
                .render(Kind::parse(kind).expect("a known kind"), part, &ctx)
                .unwrap_or_else(|e| panic!("{kind} {part} of {}: {e}\n{ctx:#}", n.dedupe_key));
            assert!(!out.trim().is_empty(), "{kind} {part} is empty");
        }
    }
}

/// `n` succeeded card payments of `student`, paid at `paid_at`, not invoiced yet.
async fn payments(w: &World, student: &Person, n: i64, paid_at: DateTime<Utc>) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO payments (student_id, amount_minor, currency, method, status, paid_at)
         SELECT $1, 4000 + g * 7, 'GBP', 'card', 'succeeded', $3 FROM generate_series(1, $2) g RETURNING id",
    )
    .bind(student.profile_id)
    .bind(n as i32)
    .bind(paid_at)
    .fetch_all(w.pool())
    .await
    .unwrap()
}

/// Sets the student's driving-test dates.
async fn set_tests(w: &World, p: &Person, dates: &[DateTime<Utc>]) {
    sqlx::query("UPDATE students SET test_dates = $2 WHERE id = $1")
        .bind(p.profile_id)
        .bind(dates)
        .execute(w.pool())
        .await
        .unwrap();
}
