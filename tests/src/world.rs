//! A whole little world for end-to-end tests: a fresh database, a loopback SMTP server, SMS API
//! and push service, a configuration pointing at them, people to send to (row factories),
//! lessons booked through the real booking operation, and workers to start and stop. The admin
//! API is started on top of it with [`crate::api::spawn_api`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use dashlight_core::{Clock, Config};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{db::TestDb, push::PushService, sms::SmsApi, smtp::SmtpServer};

/// Database, protocol peers and configuration.
pub struct World {
    /// The test's database.
    pub db: TestDb,
    /// SMTP server.
    pub smtp: SmtpServer,
    /// SMS API.
    pub sms: SmsApi,
    /// Push service.
    pub push: PushService,
    /// Configuration with every channel pointing at the peers.
    pub config: Config,
}

/// A person the tests send to.
#[derive(Debug, Clone)]
pub struct Person {
    /// users.id.
    pub user_id: i64,
    /// students.id or instructors.id.
    pub profile_id: i64,
    /// Email address.
    pub email: String,
    /// Phone.
    pub phone: Option<String>,
}

/// A running worker, stopped with [`WorkerHandle::stop`].
pub struct WorkerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Asks the worker to stop and waits for it (in-flight jobs finish).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task).await??
    }
}

impl World {
    /// Starts everything; retries are fast (200 ms base) so failure tests finish quickly.
    pub async fn start() -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let db = TestDb::new().await;
        let smtp = SmtpServer::start().await.expect("smtp");
        let sms = SmsApi::start().await.expect("sms");
        let push = PushService::start().await.expect("push");
        let mut config = db.config();
        config.smtp = Some(dashlight_core::config::SmtpConfig { url: smtp.url() });
        config.sms = Some(dashlight_core::config::SmsConfig {
            api_base_url: sms.base_url(),
            account_sid: sms.account_sid().to_owned(),
            auth_token: sms.auth_token().to_owned(),
            from: "+447700900000".into(),
            max_segments: dashlight_core::config::DEFAULT_SMS_MAX_SEGMENTS,
        });
        // The push service is on loopback.
        config.push_allow_private_endpoints = true;
        config.push = Some(dashlight_core::config::PushConfig {
            vapid_private_key: crate::push::vapid_private_key_b64url(),
            vapid_subject: "mailto:ops@school.test".into(),
        });
        World {
            db,
            smtp,
            sms,
            push,
            config,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    /// Starts a worker process-equivalent (its own apalis workers) with `clock`.
    pub fn spawn_worker(&self, clock: Clock) -> WorkerHandle {
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        let pool = self.db.pool.clone();
        let task = tokio::spawn(async move {
            dashlight_worker::run(&config, pool, clock, async move {
                let _ = rx.await;
            })
            .await
        });
        WorkerHandle { stop: Some(tx), task }
    }

    /// Adds `n` student users at once (emails `<tag>-<i>@load.test`, no profile, no preferences
    /// row: the defaults apply) and returns their ids, for load-shaped tests.
    pub async fn load_students(&self, n: i64, tag: &str) -> Vec<i64> {
        sqlx::query_scalar(
            "INSERT INTO users (email, role, first_name, last_name, timezone)
             SELECT $2 || '-' || i || '@load.test', 'student', 'Learner' || i, 'Load', 'Europe/London' FROM generate_series(1, $1) i RETURNING id",
        )
        .bind(n)
        .bind(tag)
        .fetch_all(self.pool())
        .await
        .expect("users")
    }

    /// Adds a user with a profile (`student` or `instructor`) and default preferences.
    pub async fn person(&self, role: &str, name: &str, phone: Option<&str>) -> Person {
        let email = format!("{}@school.test", name.to_lowercase());
        let uid: i64 = sqlx::query_scalar("INSERT INTO users (email, role, first_name, last_name, phone, timezone) VALUES ($1, $2, $3, 'Tester', $4, 'Europe/London') RETURNING id")
            .bind(&email)
            .bind(role)
            .bind(name)
            .bind(phone)
            .fetch_one(self.pool())
            .await
            .expect("user");
        sqlx::query("INSERT INTO user_preferences (user_id) VALUES ($1)")
            .bind(uid)
            .execute(self.pool())
            .await
            .expect("prefs");
        let profile_id: i64 = if role == "instructor" {
            sqlx::query_scalar("INSERT INTO instructors (user_id, license_number) VALUES ($1, $2) RETURNING id")
                .bind(uid)
                .bind(format!("ADI-{uid}"))
        } else {
            sqlx::query_scalar("INSERT INTO students (user_id) VALUES ($1) RETURNING id").bind(uid)
        }
        .fetch_one(self.pool())
        .await
        .expect("profile");
        Person {
            user_id: uid,
            profile_id,
            email,
            phone: phone.map(str::to_owned),
        }
    }

    /// Registers a push subscription of the loopback push service for `p`.
    pub async fn device(&self, p: &Person, name: &str) -> i64 {
        let sub = self.push.subscribe(name);
        sqlx::query_scalar(
            "INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(p.user_id)
        .bind(name)
        .bind(&sub.endpoint)
        .bind(&sub.p256dh)
        .bind(&sub.auth)
        .fetch_one(self.pool())
        .await
        .expect("device")
    }

    /// Booking settings from the configuration.
    pub fn booking_settings(&self) -> dashlight_core::bookings::BookingSettings {
        dashlight_core::bookings::BookingSettings::from_config(&self.config)
    }

    /// Books a lesson through the real booking operation.
    pub async fn book(
        &self,
        student: &Person,
        instructor: &Person,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> dashlight_core::bookings::Booking {
        let mut tx = self.pool().begin().await.expect("tx");
        let b = dashlight_core::bookings::create(
            &mut tx,
            &self.booking_settings(),
            dashlight_core::bookings::NewBooking {
                student_id: student.profile_id,
                instructor_id: instructor.profile_id,
                start_time: start,
                end_time: start + chrono::Duration::hours(1),
                pickup_location: Some("Station Road".into()),
                dropoff_location: None,
                series: None,
            },
            now,
        )
        .await
        .expect("booking");
        tx.commit().await.expect("commit");
        b
    }

    /// Status counts of deliveries, e.g. `[("sent", 3)]`.
    pub async fn delivery_statuses(&self) -> Vec<(String, String, i64)> {
        sqlx::query_as("SELECT channel, status, count(*) FROM notification_deliveries GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(self.pool())
            .await
            .expect("query")
    }
}
