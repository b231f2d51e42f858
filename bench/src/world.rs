//! The data the scenarios run on, written in bulk with set-based SQL (`generate_series`):
//!
//! - [`populate`]: instructors, and students whose preferences, devices and phones realise the
//!   channel mix of a lesson reminder (policy `first` over push, SMS, email): 60 % have an active
//!   push device, 10 % have a phone and push switched off (so SMS), 30 % have only an email
//!   address (no device, no phone). Each student gets one confirmed upcoming booking.
//! - [`insert_reminders`]: one `lesson_reminder` notification per booking and its apalis job, in
//!   one statement, exactly as `dashlight_core::notify::create` writes them (same columns, queue,
//!   priority, attempts; the job's `run_at` is the due time to the microsecond).
//! - [`insert_history`]: past bookings, one past reminder per booking and three deliveries per
//!   reminder, then `VACUUM (ANALYZE)` as autovacuum would have done long ago.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::{JOB_MAX_ATTEMPTS, QUEUE_NOTIFICATIONS},
    kinds::Kind,
};
use p256::{SecretKey, elliptic_curve::sec1::ToEncodedPoint};
use rand_core::{OsRng, RngCore};
use sqlx::{PgConnection, PgPool};

/// Key material: the worker's VAPID key and the (shared) subscription keys of the devices.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `VAPID_PRIVATE_KEY` (base64url raw P-256 scalar).
    pub vapid_private_key: String,
    /// base64url uncompressed P-256 public key of the subscriptions.
    pub p256dh: String,
    /// base64url 16-byte auth secret of the subscriptions.
    pub auth: String,
}

impl Keys {
    /// Fresh keys.
    pub fn generate() -> Keys {
        let vapid = SecretKey::random(&mut OsRng);
        let sub = SecretKey::random(&mut OsRng);
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        Keys {
            vapid_private_key: B64URL.encode(vapid.to_bytes()),
            p256dh: B64URL.encode(sub.public_key().to_encoded_point(false).as_bytes()),
            auth: B64URL.encode(auth),
        }
    }
}

/// What [`populate`] created.
#[derive(Debug, Clone, Copy)]
pub struct Population {
    /// Students (= upcoming bookings).
    pub students: i64,
    /// Instructors.
    pub instructors: i64,
    /// First and last id of the upcoming bookings.
    pub bookings: (i64, i64),
    /// First `students.id`.
    pub first_student: i64,
    /// First `instructors.id`.
    pub first_instructor: i64,
}

/// Creates `students` students (mix above) and `instructors` instructors, and one confirmed
/// booking per student starting a day or more from now (instructor `i % instructors`, hourly
/// slots), then `ANALYZE`s those tables (autovacuum is off on this server).
pub async fn populate(pool: &PgPool, students: i64, instructors: i64, push_origin: &str, keys: &Keys) -> anyhow::Result<Population> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO users (email, role, first_name, last_name, timezone)
         SELECT 'instructor' || g || '@bench.test', 'instructor', 'Ina', 'Structor' || g, 'Europe/London' FROM generate_series(1, $1) g",
    )
    .bind(instructors)
    .execute(&mut *tx)
    .await?;
    let first_instructor: i64 = sqlx::query_scalar(
        "WITH i AS (INSERT INTO instructors (user_id, license_number)
                    SELECT id, 'ADI-' || id FROM users WHERE role = 'instructor' ORDER BY id RETURNING id)
         SELECT min(id) FROM i",
    )
    .fetch_one(&mut *tx)
    .await?;
    // g % 10: 0-5 push (with a phone too), 6-8 email only, 9 SMS (phone, push switched off).
    sqlx::query(
        "INSERT INTO users (email, role, first_name, last_name, phone, timezone)
         SELECT 'student' || g || '@bench.test', 'student', 'Sam', 'Student' || g,
                CASE WHEN g % 10 BETWEEN 6 AND 8 THEN NULL ELSE '+44770' || lpad(g::text, 8, '0') END, 'Europe/London'
         FROM generate_series(1, $1) g",
    )
    .bind(students)
    .execute(&mut *tx)
    .await?;
    let first_student: i64 = sqlx::query_scalar(
        "WITH s AS (INSERT INTO students (user_id) SELECT id FROM users WHERE role = 'student' ORDER BY id RETURNING id)
         SELECT min(id) FROM s",
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO user_preferences (user_id, push_notifications)
         SELECT id, substring(last_name FROM 8)::bigint % 10 <> 9 FROM users WHERE role = 'student'",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth)
         SELECT id, 'phone', $1 || '/push/u' || id, $2, $3 FROM users
         WHERE role = 'student' AND substring(last_name FROM 8)::bigint % 10 BETWEEN 0 AND 5",
    )
    .bind(push_origin)
    .bind(&keys.p256dh)
    .bind(&keys.auth)
    .execute(&mut *tx)
    .await?;
    let (lo, hi): (i64, i64) = sqlx::query_as(
        "WITH b AS (
            INSERT INTO bookings (student_id, instructor_id, booking_date, start_time, end_time, status, pickup_location)
            SELECT $1 + k, $2 + k % $3, (t AT TIME ZONE 'Europe/London')::date, t, t + interval '1 hour', 'confirmed', 'Station Road'
            FROM (SELECT k, date_trunc('hour', now()) + interval '1 day' + (k / $3) * interval '1 hour' AS t
                  FROM generate_series(0, $4 - 1) k) x
            RETURNING id)
         SELECT min(id), max(id) FROM b",
    )
    .bind(first_student)
    .bind(first_instructor)
    .bind(instructors)
    .bind(students)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    // Only the tables just filled: the pipeline's own tables stay never-analysed, as after a
    // migration, so the planner sizes them from their real current size as they grow (a
    // statistics snapshot of an empty table would make it seq-scan them for the whole run; with
    // autovacuum off here nothing would refresh it).
    sqlx::query("ANALYZE users, user_preferences, user_devices, students, instructors, bookings")
        .execute(pool)
        .await?;
    Ok(Population {
        students,
        instructors,
        bookings: (lo, hi),
        first_student,
        first_instructor,
    })
}

/// Inserts one lesson reminder (and its job) per upcoming booking of `pop`, the k-th due at
/// `first_due + k × spacing`, on `conn` in one transaction. `tag` keeps dedupe keys of repeated
/// runs apart. Returns the number inserted.
/// The insert of the jobs of the notifications of the CTE `n` (columns `id`, `due_at`), as
/// `dashlight_core::notify::create_all` writes them: notifications due at one instant share jobs
/// of up to `NOTIFICATIONS_PER_JOB`. `$q`, `$p` and `$m` are the parameters holding the queue,
/// the priority and the jobs' max attempts.
pub fn grouped_jobs_insert(q: u8, p: u8, m: u8) -> String {
    let per = dashlight_core::jobs::NOTIFICATIONS_PER_JOB;
    format!(
        r#"INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
        SELECT apalis.generate_ulid(), ${q},
               convert_to(CASE WHEN count(*) = 1 THEN '{{"notification_id":' || min(id) || ',"retry_delivery_id":null}}'
                          ELSE '{{"notification_ids":[' || string_agg(id::text, ',' ORDER BY id) || '],"retry_delivery_id":null}}' END, 'UTF8'),
               'Pending', 0, ${m}, due_at, ${p}, ''::hstore, NULL
        FROM (SELECT id, due_at, (row_number() OVER (PARTITION BY due_at ORDER BY id) - 1) / {per} AS g FROM n) j
        GROUP BY due_at, g"#
    )
}

pub async fn insert_reminders(
    conn: &mut PgConnection,
    pop: &Population,
    first_due: DateTime<Utc>,
    spacing: std::time::Duration,
    tag: &str,
) -> anyhow::Result<u64> {
    let kind = Kind::LessonReminder;
    let (policy, channels) = kind.routing();
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let inserted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        r#"
        WITH b AS (
            SELECT b.id, b.start_time, b.end_time, b.pickup_location, su.id AS user_id,
                   su.first_name || ' ' || su.last_name AS student_name, iu.first_name || ' ' || iu.last_name AS instructor_name,
                   $3::timestamptz + (row_number() OVER (ORDER BY b.id) - 1) * $4::interval AS due
            FROM bookings b
            JOIN students s ON s.id = b.student_id JOIN users su ON su.id = s.user_id
            JOIN instructors i ON i.id = b.instructor_id JOIN users iu ON iu.id = i.user_id
            WHERE b.id BETWEEN $1 AND $2
        ), n AS (
            INSERT INTO notifications (user_id, type, title, content, channels, policy, data, booking_id, dedupe_key,
                                       due_at, expires_at, status, priority, next_check_at)
            SELECT user_id, $5, 'Lesson reminder', 'Your lesson with ' || instructor_name || ' starts in 2 hours.', $6, $7,
                   jsonb_build_object(
                       'booking', jsonb_build_object(
                           'id', id,
                           'start_time', to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
                           'end_time', to_char(end_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
                           'pickup_location', pickup_location, 'instructor_name', instructor_name,
                           'student_name', student_name, 'status', 'confirmed'),
                       'offset_label', '2 hours', 'offset', '2h'),
                   id, 'lesson_reminder:' || id || ':2h:v1:' || $8, due, start_time, 'pending', $9, due
            FROM b
            RETURNING id, due_at
        ), jobs AS (
        {}
        RETURNING 1)
        SELECT count(*) FROM n
        "#,
        grouped_jobs_insert(10, 9, 11)
    )))
    .bind(pop.bookings.0)
    .bind(pop.bookings.1)
    .bind(first_due)
    .bind(spacing)
    .bind(kind.as_str())
    .bind(&channels)
    .bind(policy.as_str())
    .bind(tag)
    .bind(kind.priority() as i16)
    .bind(QUEUE_NOTIFICATIONS)
    .bind(JOB_MAX_ATTEMPTS)
    .fetch_one(&mut *conn)
    .await?;
    Ok(inserted as u64)
}

/// Inserts `bookings` past bookings of the population's students and instructors (90 %
/// completed, 5 % cancelled, 5 % no-show; hourly slots going back from yesterday), one `done`
/// lesson reminder per booking and `deliveries_per` (≤ 3) deliveries per reminder (push, SMS,
/// email: the one of the student's channel `sent` with its attempt kept on its row, the others
/// `skipped`). Loaded with `session_replication_role = replica` (foreign-key triggers off, as
/// `pg_restore` does; the rows are consistent by construction), then `VACUUM (ANALYZE)`.
pub async fn insert_history(pool: &PgPool, pop: &Population, bookings: i64, deliveries_per: i64) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await?;
    sqlx::query("SET synchronous_commit = off").execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO bookings (student_id, instructor_id, booking_date, start_time, end_time, status, cancelled_at, pickup_location, created_at, updated_at)
         SELECT $1 + g % $2, $3 + g % $4, (t AT TIME ZONE 'Europe/London')::date, t, t + interval '1 hour',
                CASE WHEN g % 20 = 0 THEN 'cancelled' WHEN g % 20 = 1 THEN 'no_show' ELSE 'completed' END,
                CASE WHEN g % 20 = 0 THEN t - interval '1 day' END, 'Station Road', t - interval '7 days', t
         FROM (SELECT g, date_trunc('hour', now()) - interval '1 day' - (g / $4) * interval '1 hour' AS t
               FROM generate_series(0, $5 - 1) g) x",
    )
    .bind(pop.first_student)
    .bind(pop.students)
    .bind(pop.first_instructor)
    .bind(pop.instructors)
    .bind(bookings)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        r#"
        INSERT INTO notifications (user_id, type, title, content, channels, policy, data, booking_id, dedupe_key,
                                   due_at, expires_at, status, priority, next_check_at, created_at, updated_at)
        SELECT s.user_id, 'lesson_reminder', 'Lesson reminder', 'Your lesson starts in 2 hours.', ARRAY['push', 'sms', 'email'], 'first',
               jsonb_build_object('booking', jsonb_build_object('id', b.id, 'start_time', b.start_time, 'end_time', b.end_time,
                                  'pickup_location', b.pickup_location, 'instructor_name', 'Ina Structor', 'student_name', 'Sam Student',
                                  'status', b.status), 'offset_label', '2 hours', 'offset', '2h'),
               b.id, 'history:lesson_reminder:' || b.id || ':2h:v1', b.start_time - interval '2 hours', b.start_time, 'done', 20,
               b.start_time - interval '2 hours', b.created_at, b.start_time - interval '2 hours'
        FROM bookings b JOIN students s ON s.id = b.student_id
        WHERE b.status <> 'confirmed'
        "#,
    )
    .execute(&mut *conn)
    .await?;
    // Channel of the student: as in `populate` (user g: g % 10 in 0-5 push, 6-8 email, 9 SMS).
    sqlx::query(
        r#"
        INSERT INTO notification_deliveries (notification_id, channel, target, device_id, status, attempts, skip_reason,
                                             provider_message_id, sent_at, created_at, updated_at,
                                             attempt_id, sending_since, claimed_by, claim_job_id)
        SELECT n.id, c.ch,
               CASE WHEN c.ch = x.ch THEN CASE c.ch WHEN 'email' THEN u.email WHEN 'sms' THEN coalesce(u.phone, '') ELSE 'http://127.0.0.1/push/u' || u.id END ELSE '' END,
               NULL,
               CASE WHEN c.ch = x.ch THEN 'sent' ELSE 'skipped' END,
               CASE WHEN c.ch = x.ch THEN 1 ELSE 0 END,
               CASE WHEN c.ch = x.ch THEN NULL ELSE 'no usable ' || c.ch END,
               CASE WHEN c.ch = x.ch THEN 'history-' || n.id END,
               CASE WHEN c.ch = x.ch THEN n.due_at + interval '150 milliseconds' END,
               n.due_at, n.due_at + interval '150 milliseconds',
               CASE WHEN c.ch = x.ch THEN nextval('delivery_attempt_log_id_seq') END,
               CASE WHEN c.ch = x.ch THEN n.due_at + interval '50 milliseconds' END,
               CASE WHEN c.ch = x.ch THEN 'history' END,
               CASE WHEN c.ch = x.ch THEN 'history' END
        FROM notifications n
        JOIN users u ON u.id = n.user_id
        CROSS JOIN LATERAL (SELECT CASE WHEN substring(u.last_name FROM 8)::bigint % 10 BETWEEN 0 AND 5 THEN 'push'
                                        WHEN substring(u.last_name FROM 8)::bigint % 10 = 9 THEN 'sms' ELSE 'email' END AS ch) x
        CROSS JOIN LATERAL (SELECT ch FROM unnest(ARRAY['push', 'sms', 'email']) WITH ORDINALITY AS a(ch, o) WHERE o <= $1) c
        WHERE n.status = 'done'
        "#,
    )
    .bind(deliveries_per)
    .execute(&mut *conn)
    .await?;
    sqlx::query("RESET session_replication_role").execute(&mut *conn).await?;
    sqlx::query("VACUUM (ANALYZE) bookings, notifications, notification_deliveries")
        .execute(&mut *conn)
        .await?;
    Ok(())
}
