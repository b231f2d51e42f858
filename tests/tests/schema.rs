//! The schema enforces the rules, whatever code path writes; migrations are repeatable; the demo
//! data loads; every program refuses a bad DATABASE_URL with a clear line.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use dashlight_core::states::{
    AttemptOutcome, BookingStatus, CalendarStatus, DeliveryStatus, LeadStatus, NotificationStatus, OfferStatus, PackageStatus,
    PaymentStatus, SeriesStatus,
};
use dashlight_tests::{api::TOKEN, bins, db::TestDb, world::World};

async fn err_code(r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> (String, String) {
    let e = r.expect_err("the schema must refuse this");
    let db = e.as_database_error().expect("a database error");
    (
        db.code().unwrap_or_default().to_string(),
        db.constraint().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_database_migrated_before_a_comment_was_reworded_still_migrates_and_other_texts_are_refused() {
    let db = TestDb::new().await;
    // As a database migrated before the queue controls' comment was reworded stores it.
    let old = "086c3902da27000b4dfd";
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode($1, 'hex') WHERE version = 20261202000700")
        .bind(dashlight_core::db::reworded_checksum(20261202000700).expect("listed"))
        .execute(&db.pool)
        .await
        .unwrap();
    let stored = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT encode(checksum, 'hex') FROM _sqlx_migrations WHERE version = 20261202000700")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(stored(db.pool.clone()).await.starts_with(old));
    dashlight_core::db::migrate(&db.pool)
        .await
        .expect("the old text's checksum is adopted");
    let shipped = dashlight_core::db::migrator()
        .iter()
        .find(|m| m.version == 20261202000700)
        .map(|m| m.checksum.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap();
    assert_eq!(stored(db.pool.clone()).await, shipped);
    // Any other text than the listed one still stops the run.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode(repeat('ab', 48), 'hex') WHERE version = 20261202000700")
        .execute(&db.pool)
        .await
        .unwrap();
    let e = dashlight_core::db::migrate(&db.pool)
        .await
        .expect_err("a changed migration is refused");
    assert!(e.to_string().contains("20261202000700"), "{e}");
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_twice_in_a_row() {
    let db = TestDb::new().await;
    // The template was migrated once; migrating again is a no-op.
    dashlight_core::db::migrate(&db.pool).await.unwrap();
    dashlight_core::db::migrate(&db.pool).await.unwrap();
    assert!(dashlight_core::db::migrations_applied(&db.pool).await.unwrap());
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(tables >= 27, "{tables} tables");
    for t in [
        "users",
        "user_preferences",
        "instructors",
        "students",
        "user_devices",
        "bookings",
        "lessons",
        "lesson_progress",
        "payments",
        "invoices",
        "booking_packages",
        "messages",
        "message_participants",
        "notifications",
        "notification_deliveries",
        "calendar_events",
        "event_participants",
        "instructor_availability",
        "crm_contacts",
        "crm_interactions",
        "analytics_events",
        "skill_categories",
        "student_progress",
        "lesson_skill_progress",
        "lesson_packages",
        "booking_series",
        "file_deletions",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(t)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(exists, "table {t}");
    }
    let apalis: bool = sqlx::query_scalar("SELECT to_regclass('apalis.jobs') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(apalis, "apalis's tables are migrated in the same step");
}

/// Every pool of the programs plans each statement for the data it has now: a generic plan
/// cached while a table was empty (a queue fetch, a foreign-key check) stays a sequential scan
/// as the table grows, which the benchmark measured at 700 ms a fetch (BENCHMARKS.md).
/// The values the database lets `table.column` hold: its own CHECK constraint (one on that
/// column alone, `column = ANY (ARRAY['a'::text, …])`), read back from `pg_constraint`.
async fn allowed_values(pool: &sqlx::PgPool, table: &str, column: &str) -> BTreeSet<String> {
    let defs: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.contype = 'c' AND c.conrelid = $1::regclass AND a.attname = $2 AND cardinality(c.conkey) = 1",
    )
    .bind(table)
    .bind(column)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(defs.len(), 1, "{table}.{column} has one CHECK of its own: {defs:?}");
    assert!(defs[0].contains("ANY (ARRAY["), "{table}.{column}: {}", defs[0]);
    // The quoted literals are the allowed values.
    defs[0].split('\'').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The text values of a state enum.
fn values<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> BTreeSet<String> {
    all.iter().map(|s| as_str(*s).to_owned()).collect()
}

#[tokio::test]
async fn every_state_column_allows_exactly_the_values_of_its_enum() {
    let db = TestDb::new().await;
    let columns = [
        (
            "notifications",
            "status",
            values(NotificationStatus::ALL, NotificationStatus::as_str),
        ),
        (
            "notification_deliveries",
            "status",
            values(DeliveryStatus::ALL, DeliveryStatus::as_str),
        ),
        (
            "delivery_attempt_log",
            "outcome",
            values(AttemptOutcome::ALL, AttemptOutcome::as_str),
        ),
        ("bookings", "status", values(BookingStatus::ALL, BookingStatus::as_str)),
        ("slot_offers", "status", values(OfferStatus::ALL, OfferStatus::as_str)),
        ("payments", "status", values(PaymentStatus::ALL, PaymentStatus::as_str)),
        ("package_purchases", "status", values(PackageStatus::ALL, PackageStatus::as_str)),
        ("booking_series", "status", values(SeriesStatus::ALL, SeriesStatus::as_str)),
        ("crm_contacts", "lead_status", values(LeadStatus::ALL, LeadStatus::as_str)),
        ("calendar_events", "status", values(CalendarStatus::ALL, CalendarStatus::as_str)),
    ];
    for (table, column, enum_values) in columns {
        assert_eq!(
            allowed_values(&db.pool, table, column).await,
            enum_values,
            "{table}.{column}: the CHECK constraint and the enum differ"
        );
    }
    // Each enum reads back what it writes.
    assert!(
        NotificationStatus::ALL
            .iter()
            .all(|s| NotificationStatus::parse(s.as_str()) == Some(*s))
    );
    assert!(DeliveryStatus::ALL.iter().all(|s| DeliveryStatus::parse(s.as_str()) == Some(*s)));
    assert!(AttemptOutcome::ALL.iter().all(|s| AttemptOutcome::parse(s.as_str()) == Some(*s)));
    assert!(BookingStatus::ALL.iter().all(|s| BookingStatus::parse(s.as_str()) == Some(*s)));
    assert!(OfferStatus::ALL.iter().all(|s| OfferStatus::parse(s.as_str()) == Some(*s)));
    assert!(PaymentStatus::ALL.iter().all(|s| PaymentStatus::parse(s.as_str()) == Some(*s)));
    assert!(PackageStatus::ALL.iter().all(|s| PackageStatus::parse(s.as_str()) == Some(*s)));
    assert!(SeriesStatus::ALL.iter().all(|s| SeriesStatus::parse(s.as_str()) == Some(*s)));
    assert!(LeadStatus::ALL.iter().all(|s| LeadStatus::parse(s.as_str()) == Some(*s)));
    assert!(CalendarStatus::ALL.iter().all(|s| CalendarStatus::parse(s.as_str()) == Some(*s)));
}

#[tokio::test]
async fn the_programs_pools_never_reuse_a_plan_made_for_other_data() {
    let db = TestDb::new().await;
    let pool = dashlight_core::db::connect(&db.url, dashlight_core::db::Pooler::Session, "dashlight-tests", 2)
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&pool).await.unwrap();
    assert_eq!(mode, "force_custom_plan");
}

#[tokio::test]
async fn the_schema_refuses_what_the_rules_forbid() {
    let w = World::start().await;
    let pool = w.pool();
    let s = w.person("student", "Rules", None).await;
    let i = w.person("instructor", "Judge", None).await;
    let t = |h| Utc.with_ymd_and_hms(2030, 5, 1, h, 0, 0).unwrap();
    let insert = |start: chrono::DateTime<Utc>, end: chrono::DateTime<Utc>, status: &'static str| {
        sqlx::query("INSERT INTO bookings (student_id, instructor_id, booking_date, start_time, end_time, status, cancelled_at) VALUES ($1, $2, $3::date, $3, $4, $5, CASE WHEN $5 = 'cancelled' THEN now() END)")
            .bind(s.profile_id)
            .bind(i.profile_id)
            .bind(start)
            .bind(end)
            .bind(status)
            .execute(pool)
    };
    insert(t(10), t(11), "confirmed").await.unwrap();
    assert_eq!(
        err_code(insert(t(10), t(12), "confirmed").await).await,
        ("23P01".into(), "bookings_no_instructor_overlap".into())
    );
    // Back to back is fine; a cancelled booking does not block the slot.
    insert(t(11), t(12), "confirmed").await.unwrap();
    insert(t(12), t(13), "cancelled").await.unwrap();
    insert(t(12), t(13), "confirmed").await.unwrap();
    // Unknown status.
    assert_eq!(err_code(insert(t(14), t(15), "maybe").await).await.0, "23514");
    // End before start.
    assert_eq!(err_code(insert(t(16), t(15), "confirmed").await).await.1, "bookings_time_order");
    // Orphan foreign key.
    let orphan = sqlx::query(
        "INSERT INTO bookings (student_id, instructor_id, booking_date, start_time, end_time) VALUES (999999, $1, '2030-05-02', $2, $3)",
    )
    .bind(i.profile_id)
    .bind(t(17))
    .bind(t(18))
    .execute(pool)
    .await;
    assert_eq!(err_code(orphan).await.0, "23503");
    // A second instructor profile for one user.
    let second = sqlx::query("INSERT INTO instructors (user_id, license_number) VALUES ($1, 'ADI-2')")
        .bind(i.user_id)
        .execute(pool)
        .await;
    assert_eq!(err_code(second).await, ("23505".into(), "instructors_user_id_key".into()));
    // Bad phone, bad delivery status, unknown notification kind.
    let phone = sqlx::query("UPDATE users SET phone = '07700 900123' WHERE id = $1")
        .bind(s.user_id)
        .execute(pool)
        .await;
    assert_eq!(err_code(phone).await.0, "23514");
    let kind = sqlx::query("INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key) VALUES ($1, 'nonsense', 't', 'c', '{email}', 'all', 'k')")
        .bind(s.user_id)
        .execute(pool)
        .await;
    assert_eq!(err_code(kind).await.0, "23514");
    // One preferences row per user.
    let prefs = sqlx::query("INSERT INTO user_preferences (user_id) VALUES ($1)")
        .bind(s.user_id)
        .execute(pool)
        .await;
    assert_eq!(err_code(prefs).await.0, "23505");
    // A file deletion names a file.
    let nothing = sqlx::query("INSERT INTO file_deletions (path) VALUES ('')").execute(pool).await;
    assert_eq!(err_code(nothing).await, ("23514".into(), "file_deletions_path_check".into()));
}

#[tokio::test]
async fn demo_data_loads_and_fills_the_queue() {
    let db = TestDb::new().await;
    let config = db.config();
    let settings = dashlight_core::bookings::BookingSettings::from_config(&config);
    let now = Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap();
    let s = dashlight_core::demo::seed(&db.pool, &settings, now).await.unwrap();
    assert_eq!((s.instructors, s.students), (3, 8));
    assert!(s.bookings >= 20, "{s:?}");
    assert!(s.payments > 0);
    let series: i64 = sqlx::query_scalar("SELECT count(*) FROM booking_series WHERE status = 'active'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(series, 1, "a weekly series for the recurring job to book");
    let again = dashlight_core::demo::seed(&db.pool, &settings, now).await.unwrap();
    assert!(again.already_present);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.notifications'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(jobs >= s.bookings as i64 * 2, "confirmation and alert per booking: {jobs}");
}

#[test]
fn every_program_rejects_a_bad_database_url_clearly() {
    for (program, args) in [
        ("dashlight", vec!["migrate"]),
        ("dashlight-worker", vec![]),
        ("dashlight-scheduler", vec![]),
        ("dashlight-admin-api", vec![]),
    ] {
        let out = bins::command(program)
            .args(&args)
            .env("DATABASE_URL", "mysql://nobody@localhost/x")
            .env("ADMIN_API_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{program} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("DATABASE_URL") && err.contains("postgres://"), "{program}: {err}");
        assert!(!err.contains("panicked"), "{program} panicked: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{program}: one clear line, got {err}");

        let out = bins::command(program)
            .args(&args)
            .env("DATABASE_URL", "postgres://root@127.0.0.1:1/x")
            .env("ADMIN_API_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{program} must fail on an unreachable database");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("127.0.0.1:1"), "{program} names the host: {err}");

        let help = bins::command(program).arg("--help").output().unwrap();
        assert!(help.status.success() && !help.stdout.is_empty(), "{program} --help");
    }
}
