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

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use dashlight_core::Clock;
use dashlight_tests::{
    smtp::ReceivedMail,
    wait::try_wait_until,
    world::{WorkerHandle, World},
};
use mail_parser::{Message, MessageParser};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

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

/// The token of the test configuration.
pub const TOKEN: &str = dashlight_core::config::TEST_ADMIN_TOKEN;

/// How long anything sent may take to arrive.
pub const LONG: Duration = Duration::from_secs(60);

/// A response: status, content type and body (JSON, or `Null` with the text in `text`).
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Content type.
    pub content_type: String,
    /// The JSON body, `Null` when not JSON.
    pub body: Value,
    /// The raw body.
    pub text: String,
}

impl Reply {
    /// Asserts the status, returning the JSON body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        self.body
    }

    /// Asserts an error response with its code and, if given, field.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str, field: Option<&str>) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "JSON error body, got {:?}",
            self.content_type
        );
        assert_eq!(self.body["error"], code, "error code; body: {}", self.body);
        if let Some(f) = field {
            assert_eq!(self.body["field"], f, "field; body: {}", self.body);
        }
        self.body
    }
}

/// A world with the admin API and a worker running on one clock.
pub struct Flow {
    /// Database, protocol peers, configuration.
    pub w: World,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The client.
    pub http: reqwest::Client,
    worker: Option<WorkerHandle>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Flow {
    /// Starts the world, the API and a worker with the system clock.
    pub async fn start() -> Flow {
        Flow::start_with(Clock::system()).await
    }

    /// Starts the world, the API and a worker with `clock`.
    pub async fn start_with(clock: Clock) -> Flow {
        let w = World::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let (config, pool, clock) = (w.config.clone(), w.pool().clone(), clock.clone());
            async move {
                dashlight_admin_api::serve(&config, pool, clock, listener, async move {
                    let _ = rx.await;
                })
                .await
            }
        });
        let worker = w.spawn_worker(clock);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Flow {
            w,
            base,
            http,
            worker: Some(worker),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::PgPool {
        self.w.pool()
    }

    async fn reply(res: reqwest::Response) -> Reply {
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            body,
            text,
        }
    }

    /// A request with the bearer token.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::reply(req.send().await.expect("request")).await
    }

    /// POST JSON with the token.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// GET with the token.
    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// GET without any token (the calendar feed).
    pub async fn get_open(&self, path: &str) -> Reply {
        Self::reply(self.http.get(format!("{}{path}", self.base)).send().await.expect("request")).await
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
    pub async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await.expect("the worker stops cleanly");
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the API stops within 10 s")
                .expect("no panic")
                .expect("the API ended cleanly");
        }
    }
}

/// Parses a received email.
pub fn parse(mail: &ReceivedMail) -> Message<'_> {
    MessageParser::default().parse(&mail.data).expect("a mail client can parse it")
}

/// A whole hour some days ahead: no reminder falls due during a test.
pub fn lesson_start(days: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::days(days))
        .duration_trunc(chrono::Duration::hours(1))
        .expect("trunc")
}

/// The ids of the first `n` skill categories of the syllabus.
pub async fn skills(f: &Flow, n: i64) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM skill_categories ORDER BY skill_order LIMIT $1")
        .bind(n)
        .fetch_all(f.pool())
        .await
        .unwrap()
}
