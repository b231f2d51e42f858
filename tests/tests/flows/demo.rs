//! The demo school (`dashlight up`) exercises every flow: a completed lesson with its report, a
//! package running low, a message thread, a driving test coming up, a lead to follow up — and
//! the analytics events they wrote.

use chrono::{Duration, TimeZone, Utc};
use dashlight_core::bookings::BookingSettings;
use dashlight_tests::db::TestDb;

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_demo_school_shows_every_flow() {
    let db = TestDb::new().await;
    let settings = BookingSettings::from_config(&db.config());
    let now = Utc.with_ymd_and_hms(2030, 3, 6, 10, 0, 0).unwrap();
    let s = dashlight_core::demo::seed(&db.pool, &settings, now).await.unwrap();
    assert_eq!((s.lessons, s.messages, s.leads), (1, 2, 1), "{s:?}");
    for kind in ["booking_confirmed", "booking_alert", "lesson_report", "package_low", "new_message"] {
        assert!(
            count(&db, &format!("SELECT count(*) FROM notifications WHERE type = '{kind}'")).await > 0,
            "a {kind} notification"
        );
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM lessons l JOIN lesson_progress p ON p.lesson_id = l.id").await,
        3
    );
    assert_eq!(count(&db, "SELECT count(*) FROM student_progress").await, 3);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM package_purchases WHERE lessons_remaining = 1 AND status = 'active'"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "SELECT count(DISTINCT thread_id) FROM messages").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM waitlist_entries WHERE active").await,
        2,
        "two students wait for a slot"
    );
    // The reply is unread: its email is waiting; the first message was read, its email cancelled.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM notifications WHERE dedupe_key LIKE 'new_message_email:%' AND status = 'pending'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM notifications WHERE dedupe_key LIKE 'new_message_email:%' AND status = 'cancelled'"
        )
        .await,
        1
    );
    let test_ahead: i64 = sqlx::query_scalar("SELECT count(*) FROM students WHERE latest_test_date(test_dates) > $1")
        .bind(now)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(test_ahead >= 1, "a driving test coming up");
    let silent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM crm_contacts WHERE user_id IS NULL AND lead_status = 'lead' AND last_interaction_at <= $1",
    )
    .bind(now - Duration::days(7))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(silent, 1, "a lead silent for more than 7 days");
    assert_eq!(
        count(&db, "SELECT count(*) FROM crm_contacts WHERE contact_type = 'student'").await,
        8
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM crm_contacts WHERE contact_type = 'student' AND lead_status = 'active'"
        )
        .await
            >= 1
    );
    for event in [
        "booking_created",
        "booking_completed",
        "payment_succeeded",
        "package_purchased",
        "message_sent",
        "crm_contact_created",
        "crm_interaction_recorded",
    ] {
        assert!(
            count(&db, &format!("SELECT count(*) FROM analytics_events WHERE event_type = '{event}'")).await > 0,
            "a {event} event"
        );
    }
    // Idempotent: a second run adds nothing.
    let before = count(&db, "SELECT count(*) FROM notifications").await;
    assert!(dashlight_core::demo::seed(&db.pool, &settings, now).await.unwrap().already_present);
    assert_eq!(count(&db, "SELECT count(*) FROM notifications").await, before);
}
