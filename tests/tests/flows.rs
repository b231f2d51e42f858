//! The school's everyday flows end to end: each test starts a [`World`] (its own database, a
//! loopback SMTP server, SMS API and push service), the admin API on `127.0.0.1:0` and a worker,
//! all on one clock, and drives the flow through HTTP only; what was sent is read back from the
//! loopback peers and what was written from the database.
//!
//! - `flows/lessons.rs`: completing a lesson (progress, the report email), no-shows.
//! - `flows/packages.rs`: payments, packages consumed and given back, `package_low` once.
//! - `flows/calendar.rs`: the invitation in the booking emails, the feed and its rotation.
//! - `flows/messages.rs`: push at once, email only when unread after 15 minutes.
//! - `flows/crm.rs`: student contacts, leads and interactions.
//! - `flows/demo.rs`: the demo school exercises every flow.
//! - `flows/ics.rs`: a strict RFC 5545 reader the calendar tests check with.

use std::{ops::Deref, time::Duration};

use chrono::{DateTime, Utc};
use dashlight_core::Clock;
pub use dashlight_tests::api::lesson_start;
use dashlight_tests::{
    api::{RunningApi, spawn_api},
    smtp::ReceivedMail,
    wait::try_wait_until,
    world::{WorkerHandle, World},
};
use mail_parser::{Message, MessageParser};
use serde_json::{Value, json};

#[path = "flows/calendar.rs"]
mod calendar;
#[path = "flows/crm.rs"]
mod crm;
#[path = "flows/demo.rs"]
mod demo;
#[path = "flows/ics.rs"]
mod ics;
#[path = "flows/lessons.rs"]
mod lessons;
#[path = "flows/messages.rs"]
mod messages;
#[path = "flows/packages.rs"]
mod packages;

/// How long anything sent may take to arrive.
pub const LONG: Duration = Duration::from_secs(60);

/// A world with the admin API and a worker running on one clock; derefs to the
/// [`RunningApi`] for requests.
pub struct Flow {
    api: RunningApi,
    /// Database, protocol peers, configuration.
    pub w: World,
    worker: WorkerHandle,
}

impl Deref for Flow {
    type Target = RunningApi;

    fn deref(&self) -> &RunningApi {
        &self.api
    }
}

impl Flow {
    /// Starts the world, the API and a worker with the system clock.
    pub async fn start() -> Flow {
        Flow::start_with(Clock::system()).await
    }

    /// Starts the world, the API and a worker with `clock`.
    pub async fn start_with(clock: Clock) -> Flow {
        let w = World::start().await;
        let api = spawn_api(&w.config, w.pool().clone(), clock.clone()).await;
        let worker = w.spawn_worker(clock);
        Flow { api, w, worker }
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::PgPool {
        self.w.pool()
    }

    /// A student through the API (`<name>@school.test`); returns `(user_id, student_id)`.
    pub async fn student(&self, name: &str) -> (i64, i64) {
        let b = self
            .post("/api/users", json!({"role": "student", "email": format!("{name}@school.test"), "first_name": name, "last_name": "Learner", "timezone": "Europe/London"}))
            .await
            .expect(201);
        (b["id"].as_i64().unwrap(), b["student_id"].as_i64().unwrap())
    }

    /// An instructor through the API, reachable by SMS (so their alerts never land in the SMTP
    /// server); returns `(user_id, instructor_id)`.
    pub async fn instructor(&self, name: &str) -> (i64, i64) {
        let b = self
            .post(
                "/api/users",
                json!({"role": "instructor", "email": format!("{name}@school.test"), "phone": "+447700900101", "first_name": name, "last_name": "Teacher",
                       "timezone": "Europe/London", "instructor": {"license_number": format!("ADI-{name}")}}),
            )
            .await
            .expect(201);
        (b["id"].as_i64().unwrap(), b["instructor_id"].as_i64().unwrap())
    }

    /// Books a one-hour lesson through the API; returns the booking.
    pub async fn book(&self, student_id: i64, instructor_id: i64, start: DateTime<Utc>) -> Value {
        self.post(
            "/api/bookings",
            json!({"student_id": student_id, "instructor_id": instructor_id, "start_time": start.to_rfc3339(), "end_time": (start + chrono::Duration::hours(1)).to_rfc3339(), "pickup_location": "Station Road"}),
        )
        .await
        .expect(201)
    }

    /// A number from the database.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(self.pool())
            .await
            .expect("count")
    }

    /// The data of every analytics event of a type, oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Value> {
        sqlx::query_scalar(r#"SELECT event_data FROM analytics_events WHERE event_type = $1 ORDER BY "timestamp", id"#)
            .bind(event_type)
            .fetch_all(self.pool())
            .await
            .expect("events")
    }

    /// The emails the SMTP server accepted for `to`, in arrival order.
    pub fn mails_to(&self, to: &str) -> Vec<ReceivedMail> {
        self.w
            .smtp
            .messages()
            .into_iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r == to))
            .collect()
    }

    /// Waits until `n` emails reached `to`; returns them in arrival order.
    pub async fn wait_for_mails(&self, to: &str, n: usize) -> Vec<ReceivedMail> {
        try_wait_until(&format!("{n} email(s) to {to}"), LONG, || async {
            let got = self.mails_to(to);
            Ok((got.len() >= n).then_some(got))
        })
        .await
        .unwrap()
    }

    /// Waits until every notification due by `now` has been worked off (none left pending or
    /// processing).
    pub async fn settle(&self, now: DateTime<Utc>) {
        try_wait_until("notifications settled", LONG, || async {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status IN ('pending', 'processing') AND due_at <= $1")
                    .bind(now)
                    .fetch_one(self.pool())
                    .await?;
            Ok((open == 0).then_some(()))
        })
        .await
        .unwrap();
    }

    /// Stops the worker and the API.
    pub async fn stop(self) {
        self.worker.stop().await.expect("the worker stops cleanly");
        self.api.stop().await;
    }
}

/// Parses a received email.
pub fn parse(mail: &ReceivedMail) -> Message<'_> {
    MessageParser::default().parse(&mail.data).expect("a mail client can parse it")
}

/// The ids of the first `n` skill categories of the syllabus.
pub async fn skills(f: &Flow, n: i64) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM skill_categories ORDER BY skill_order LIMIT $1")
        .bind(n)
        .fetch_all(f.pool())
        .await
        .unwrap()
}
