//! The analytics rollup: recomputing a day gives identical rows, and the CRM moves it implies
//! are made once.

use chrono::{DateTime, Utc};
use chrono_tz::Europe::London;
use dashlight_core::{Clock, jobs::PeriodicTask};
use dashlight_tests::world::World;
use dashlight_worker::periodic::Context;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::run;

async fn rollup_rows(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        "SELECT coalesce(json_agg(x ORDER BY x.day, x.instructor_id NULLS FIRST), '[]')::jsonb FROM (
            SELECT id, day, instructor_id, bookings_made, lessons_completed, cancellations, no_shows, revenue_minor, deliveries,
                   delivery_success_rate, due_to_sent_p50_ms, due_to_sent_p95_ms, events FROM daily_rollups) x",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rollup_of_a_day_run_twice_gives_identical_rows() {
    let w = World::start().await;
    let s1 = w.person("student", "Ruth", None).await;
    let s2 = w.person("student", "Sam", None).await;
    let i1 = w.person("instructor", "Tara", None).await;
    let i2 = w.person("instructor", "Umar", None).await;
    // Bookings are stamped with the database's clock: run the rollup at the real now.
    let now = Utc::now();
    let (clock, _hand) = Clock::manual(now);
    let day = chrono::Duration::days(1);
    let b1 = w.book(&s1, &i1, now + day * 2, now).await;
    let _b2 = w.book(&s2, &i1, now + day * 3, now).await;
    let b3 = w.book(&s1, &i2, now + day * 4, now).await;
    let b4 = w.book(&s2, &i2, now, now).await;
    let mut conn = w.pool().acquire().await.unwrap();
    dashlight_core::bookings::cancel(&mut conn, &w.booking_settings(), b1.id, Some("ill".into()), now)
        .await
        .unwrap();
    sqlx::query("UPDATE bookings SET status = 'no_show' WHERE id = $1")
        .bind(b4.id)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO lessons (booking_id, instructor_id, student_id, completed_at) VALUES ($1, $2, $3, $4)")
        .bind(b3.id)
        .bind(i2.profile_id)
        .bind(s1.profile_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO payments (student_id, booking_id, amount_minor, currency, method, status, paid_at) VALUES ($1, $2, 4500, 'GBP', 'card', 'succeeded', $3), ($4, NULL, 10000, 'GBP', 'card', 'succeeded', $3)")
        .bind(s1.profile_id)
        .bind(b3.id)
        .bind(now)
        .bind(s2.profile_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    // Deliveries of Tara's first confirmation: an email sent 1.5 s after it was due, an SMS dead.
    let confirmation: (i64, DateTime<Utc>) = sqlx::query_as("SELECT id, due_at FROM notifications WHERE dedupe_key = $1")
        .bind(format!("booking_confirmed:{}", b1.id))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO notification_deliveries (notification_id, channel, target, status, sent_at, attempts) VALUES
            ($1, 'email', 'ruth@school.test', 'sent', $2, 1), ($1, 'sms', '+447700900999', 'dead', NULL, 8)",
    )
    .bind(confirmation.0)
    .bind(confirmation.1 + chrono::Duration::milliseconds(1500))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("INSERT INTO crm_contacts (user_id, name, lead_status) VALUES ($1, 'Ruth Tester', 'lead'), (NULL, 'Walk-in', 'lead')")
        .bind(s1.user_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let ctx = Context::new(&w.config, w.pool().clone(), clock);
    run(&ctx, PeriodicTask::AnalyticsRollup, now).await;
    let first = rollup_rows(w.pool()).await;
    let crm_first: Value = sqlx::query_scalar("SELECT json_agg(c ORDER BY id)::jsonb FROM crm_contacts c")
        .fetch_one(w.pool())
        .await
        .unwrap();
    run(&ctx, PeriodicTask::AnalyticsRollup, now + chrono::Duration::minutes(15)).await;
    assert_eq!(rollup_rows(w.pool()).await, first, "recomputing changes nothing");
    let crm_second: Value = sqlx::query_scalar("SELECT json_agg(c ORDER BY id)::jsonb FROM crm_contacts c")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(crm_second, crm_first, "the CRM rows are not even touched again");

    let rows = first.as_array().unwrap();
    let today = now.with_timezone(&London).date_naive().to_string();
    assert_eq!(rows.len(), 5, "three school rows and two instructors today: {first:#}");
    let row = |instructor: Option<i64>| {
        rows.iter()
            .find(|r| r["day"] == json!(today) && r["instructor_id"] == json!(instructor))
            .unwrap_or_else(|| panic!("{instructor:?}: {first:#}"))
    };
    let school = row(None);
    assert_eq!(
        (
            school["bookings_made"].clone(),
            school["cancellations"].clone(),
            school["no_shows"].clone()
        ),
        (json!(4), json!(1), json!(1))
    );
    assert_eq!(
        (school["lessons_completed"].clone(), school["revenue_minor"].clone()),
        (json!(1), json!(14500))
    );
    assert_eq!(school["deliveries"]["email"], json!({"sent": 1, "failed": 0, "dead": 0}));
    assert_eq!(school["deliveries"]["sms"], json!({"sent": 0, "failed": 0, "dead": 1}));
    assert_eq!(school["delivery_success_rate"].as_f64(), Some(0.5));
    assert_eq!(school["due_to_sent_p50_ms"].as_f64(), Some(1500.0));
    assert_eq!(school["due_to_sent_p95_ms"].as_f64(), Some(1500.0));
    assert!(school["events"].as_i64().unwrap() >= 5, "4 bookings and a cancellation: {school}");
    // The deliveries' own events are derived, not stored (views over the deliveries): the sent e-mail and the
    // dead SMS count as one `notification_sent` and one `notification_failed`.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_events")
        .fetch_one(w.pool())
        .await
        .unwrap();
    let derived: Vec<(String, i64)> = sqlx::query_as("SELECT event_type, count(*) FROM delivery_events GROUP BY 1 ORDER BY 1")
        .fetch_all(w.pool())
        .await
        .unwrap();
    assert_eq!(
        derived,
        vec![("notification_failed".to_owned(), 1), ("notification_sent".to_owned(), 1)]
    );
    assert_eq!(
        school["events"],
        json!(stored + 2),
        "stored events and the two deliveries' events: {school}"
    );
    let tara = row(Some(i1.profile_id));
    assert_eq!(
        (
            tara["bookings_made"].clone(),
            tara["cancellations"].clone(),
            tara["revenue_minor"].clone()
        ),
        (json!(2), json!(1), json!(0))
    );
    assert_eq!(tara["deliveries"]["email"]["sent"], json!(1));
    assert_eq!(tara["events"], json!(2), "the two booking_created events naming Tara");
    let umar = row(Some(i2.profile_id));
    assert_eq!(
        (
            umar["bookings_made"].clone(),
            umar["no_shows"].clone(),
            umar["lessons_completed"].clone(),
            umar["revenue_minor"].clone()
        ),
        (json!(2), json!(1), json!(1), json!(4500))
    );
    assert_eq!(umar["delivery_success_rate"], Value::Null);

    let ruth: (String, i64) = sqlx::query_as("SELECT lead_status, lifetime_value_minor FROM crm_contacts WHERE user_id = $1")
        .bind(s1.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(
        ruth,
        ("active".to_owned(), 4500),
        "a lead who booked is active; lifetime value from succeeded payments"
    );
    let walk_in: String = sqlx::query_scalar("SELECT lead_status FROM crm_contacts WHERE user_id IS NULL")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(walk_in, "lead");
}
