//! The admin API over real HTTP: each test starts the server with
//! [`dashlight_tests::api::spawn_api`] (`127.0.0.1:0`) against its own migrated database, talks
//! to it with reqwest and stops it cleanly.
//!
//! - `api/contract.rs`: auth on every route, routes ↔ OpenAPI, error bodies, health.
//! - `api/people.rs`: users, preferences, devices, availability.
//! - `api/bookings.rs`: bookings, double booking, rollback, timeline, series.
//! - `api/ops.rs`: queues, jobs, notifications, deliveries and retries.
//! - `api/security.rs`: hostile input and the brakes (docs/security.md): SSRF, token guessing, control
//!   characters, redirects after sign-in, sign-out, bulk retries, the metrics cache.

use std::ops::Deref;

use chrono::{DateTime, Utc};
use dashlight_core::{Clock, Config};
pub use dashlight_tests::api::{Reply, TOKEN, lesson_start};
use dashlight_tests::{
    api::{RunningApi, spawn_api},
    db::TestDb,
};
use serde_json::{Value, json};

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

/// A valid Web Push subscription key pair (from the web-push crate's docs).
pub const P256DH: &str = "BLMbF9ffKBiWQLCKvTHb6LO8Nb6dcUh6TItC455vu2kElga6PQvUmaFyCdykxY2nOSSL3yKgfbmFLRTUaGv4yV8";
/// Its auth secret.
pub const AUTH: &str = "xS03Fi5ErfTNH_l9WHE9Ig";

/// The API running on its own database; derefs to the [`RunningApi`] for requests.
pub struct Api {
    server: RunningApi,
    /// The database (dropped after the server stops).
    pub db: TestDb,
    /// The configuration it runs with.
    pub config: Config,
}

impl Deref for Api {
    type Target = RunningApi;

    fn deref(&self) -> &RunningApi {
        &self.server
    }
}

impl Api {
    /// Starts the API with the system clock.
    pub async fn start() -> Api {
        Api::start_with(Clock::system(), |_| {}).await
    }

    /// Starts the API with `clock` and a configuration adjusted by `tweak`.
    pub async fn start_with(clock: Clock, tweak: impl FnOnce(&mut Config)) -> Api {
        let db = TestDb::new().await;
        let mut config = db.config();
        tweak(&mut config);
        let server = spawn_api(&config, db.pool.clone(), clock).await;
        Api { server, db, config }
    }

    /// The pool of the test's database.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
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
    pub async fn stop(self) {
        self.server.stop().await;
    }
}
