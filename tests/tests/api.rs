//! The admin API over real HTTP: each test starts the server with `serve` on `127.0.0.1:0`
//! against its own migrated database, talks to it with reqwest and stops it with a oneshot.
//!
//! - `api/contract.rs`: auth on every route, routes ↔ OpenAPI, error bodies, health.
//! - `api/people.rs`: users, preferences, devices, availability.
//! - `api/bookings.rs`: bookings, double booking, rollback, timeline, series.
//! - `api/ops.rs`: queues, jobs, notifications, deliveries and retries.
//! - `api/security.rs`: hostile input and the brakes (issue 21): SSRF, token guessing, control
//!   characters, redirects after sign-in, sign-out, bulk retries, the metrics cache.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use dashlight_core::{Clock, Config};
use dashlight_tests::db::TestDb;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

#[path = "api/bookings.rs"]
mod bookings;
#[path = "api/contract.rs"]
mod contract;
#[path = "api/ops.rs"]
mod ops;
#[path = "api/people.rs"]
mod people;
#[path = "api/security.rs"]
mod security;

/// The token of the test configuration.
pub const TOKEN: &str = dashlight_core::config::TEST_ADMIN_TOKEN;

/// A valid Web Push subscription key pair (from the web-push crate's docs).
pub const P256DH: &str = "BLMbF9ffKBiWQLCKvTHb6LO8Nb6dcUh6TItC455vu2kElga6PQvUmaFyCdykxY2nOSSL3yKgfbmFLRTUaGv4yV8";
/// Its auth secret.
pub const AUTH: &str = "xS03Fi5ErfTNH_l9WHE9Ig";

/// A running API on its own database.
pub struct Api {
    /// The database (dropped after the server stops).
    pub db: TestDb,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The client.
    pub http: reqwest::Client,
    /// The configuration it runs with.
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A response: status and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Value,
    /// Content type.
    pub content_type: String,
}

impl Reply {
    /// Asserts the status, returning the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self.body
    }

    /// Asserts an error response: status, JSON error body with `code` and, if given, `field`.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str, field: Option<&str>) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "error bodies are JSON, got {:?}",
            self.content_type
        );
        assert_eq!(self.body["error"], code, "error code; body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a message; body: {}",
            self.body
        );
        if let Some(f) = field {
            assert_eq!(self.body["field"], f, "field; body: {}", self.body);
        }
        self.body
    }
}

impl Api {
    /// Starts the API with the system clock.
    pub async fn start() -> Api {
        Api::start_with(Clock::system(), |_| {}).await
    }

    /// Starts the API with `clock` and a configuration adjusted by `tweak`.
    pub async fn start_with(clock: Clock, tweak: impl FnOnce(&mut Config)) -> Api {
        // The server's logs show with a failing test (RUST_LOG to see more).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let db = TestDb::new().await;
        let mut config = db.config();
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let (config, pool) = (config.clone(), db.pool.clone());
            async move {
                dashlight_admin_api::serve(&config, pool, clock, listener, async move {
                    let _ = rx.await;
                })
                .await
            }
        });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Api {
            db,
            base,
            http,
            config,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The pool of the test's database.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    /// Sends a request with the token and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::reply(req.send().await.expect("request")).await
    }

    /// Reads a response.
    pub async fn reply(res: reqwest::Response) -> Reply {
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = res.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            content_type,
        }
    }

    /// GET with the token.
    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// POST JSON with the token.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// PUT JSON with the token.
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// POST a raw body with a content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Self::reply(req.send().await.expect("request")).await
    }

    /// Creates a student through the API; returns `(user_id, student_id)`.
    pub async fn student(&self, name: &str) -> (i64, i64) {
        let b = self
            .post("/api/users", json!({"role": "student", "email": format!("{name}@school.test"), "phone": "+447700900201", "first_name": name, "last_name": "Learner", "timezone": "Europe/London"}))
            .await
            .expect(201);
        (b["id"].as_i64().unwrap(), b["student_id"].as_i64().unwrap())
    }

    /// Creates an instructor through the API; returns `(user_id, instructor_id)`.
    pub async fn instructor(&self, name: &str) -> (i64, i64) {
        let b = self
            .post(
                "/api/users",
                json!({"role": "instructor", "email": format!("{name}@school.test"), "phone": "+447700900101", "first_name": name, "last_name": "Teacher", "timezone": "Europe/London", "instructor": {"license_number": format!("ADI-{name}")}}),
            )
            .await
            .expect(201);
        (b["id"].as_i64().unwrap(), b["instructor_id"].as_i64().unwrap())
    }

    /// Books a one-hour lesson through the API; returns the booking.
    pub async fn book(&self, student_id: i64, instructor_id: i64, start: DateTime<Utc>) -> Value {
        self.post("/api/bookings", json!({"student_id": student_id, "instructor_id": instructor_id, "start_time": start.to_rfc3339(), "end_time": (start + chrono::Duration::hours(1)).to_rfc3339()}))
            .await
            .expect(201)
    }

    /// Counts rows.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(self.pool())
            .await
            .expect("count")
    }

    /// Stops the server and checks it ended cleanly.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the server stops within 10 s")
                .expect("the server task did not panic");
            r.expect("the server ended without error");
        }
    }
}

/// A whole hour some days ahead: no reminder falls due during a test.
pub fn lesson_start(days: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::days(days))
        .duration_trunc(chrono::Duration::hours(1))
        .expect("trunc")
}
