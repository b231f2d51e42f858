//! Recurring bookings: expanding weekly series over the horizon, idempotently, skipping and
//! reporting clashes to the student and the school, keeping local time across DST.

use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use chrono_tz::Europe::London;
use dashlight_core::{
    Clock,
    jobs::PeriodicTask,
    series::{self, NewSeries},
};
use dashlight_tests::world::{Person, World};
use dashlight_worker::periodic::Context;
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeSet;

use crate::{Note, assert_renders, count, notes, run, t};

async fn new_series(
    w: &World,
    student: &Person,
    instructor: &Person,
    weekdays: Vec<i16>,
    starts_on: NaiveDate,
    until_on: Option<NaiveDate>,
) -> i64 {
    let mut conn = w.pool().acquire().await.unwrap();
    series::create(
        &mut conn,
        NewSeries {
            student_id: student.profile_id,
            instructor_id: instructor.profile_id,
            weekdays,
            local_start_time: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            duration_minutes: 60,
            timezone: None,
            pickup_location: Some("Station Road".into()),
            starts_on,
            until_on,
            occurrence_count: None,
        },
    )
    .await
    .unwrap()
    .id
}

async fn series_bookings(pool: &PgPool, series_id: i64) -> Vec<(i64, DateTime<Utc>, String)> {
    sqlx::query_as("SELECT id, start_time, status FROM bookings WHERE series_id = $1 ORDER BY start_time")
        .bind(series_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn series_expansion_is_idempotent_skips_conflicts_and_tells_student_and_school() {
    let w = World::start().await;
    let student = w.person("student", "Sofia", Some("+447700900301")).await;
    let other = w.person("student", "Omar", None).await;
    let instructor = w.person("instructor", "Ingrid", None).await;
    // Tuesdays only, 09:00-19:00 London.
    sqlx::query("INSERT INTO instructor_availability (instructor_id, day_of_week, start_time, end_time) VALUES ($1, 2, '09:00', '19:00')")
        .bind(instructor.profile_id)
        .execute(w.pool())
        .await
        .unwrap();
    let now = t("2026-01-05T12:00:00Z"); // a Monday
    let (clock, hand) = Clock::manual(now);
    // Omar already has Ingrid on Tuesday 13 January at 17:00.
    let clash = w.book(&other, &instructor, t("2026-01-13T17:00:00Z"), now).await;
    // Tuesdays and Saturdays at 17:00, from a date already past.
    let sid = new_series(
        &w,
        &student,
        &instructor,
        vec![2, 6],
        NaiveDate::from_ymd_opt(2025, 12, 1).unwrap(),
        None,
    )
    .await;
    // A series whose time zone is broken (written around the API) fails alone.
    let broken = new_series(&w, &other, &instructor, vec![2], NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(), None).await;
    sqlx::query("UPDATE booking_series SET timezone = 'Mars/Olympus_Mons' WHERE id = $1")
        .bind(broken)
        .execute(w.pool())
        .await
        .unwrap();
    let ctx = Context::new(&w.config, w.pool().clone(), clock.clone());

    let summary = run(&ctx, PeriodicTask::RecurringBookings, now).await;
    assert!(summary.contains("1 failed"), "{summary}");
    assert!(series_bookings(w.pool(), broken).await.is_empty());
    let booked = series_bookings(w.pool(), sid).await;
    let starts: Vec<DateTime<Utc>> = booked.iter().map(|b| b.1).collect();
    // The horizon (28 days) ends on Monday 2 February: Tuesdays 6, 13, 20, 27; Saturdays 10, 17, 24, 31.
    assert_eq!(
        starts,
        vec![t("2026-01-06T17:00:00Z"), t("2026-01-20T17:00:00Z"), t("2026-01-27T17:00:00Z")],
        "{summary}"
    );
    assert!(starts.iter().all(|s| *s > now), "nothing before now is ever booked");

    let conflicts = notes(w.pool(), "recurring_conflict").await;
    let to_student: Vec<&Note> = conflicts.iter().filter(|n| n.user_id == Some(student.user_id)).collect();
    let to_school: Vec<&Note> = conflicts.iter().filter(|n| n.user_id.is_none()).collect();
    assert_eq!(to_student.len(), 5, "the clash and four Saturdays: {conflicts:#?}");
    assert_eq!(to_school.len(), 5);
    assert!(to_school.iter().all(|n| n.recipient_email.as_deref() == Some("no-reply@localhost")));
    let clash_note = to_student
        .iter()
        .find(|n| n.data["date"] == json!("2026-01-13T17:00:00+00:00"))
        .expect("the clash is reported");
    assert!(
        clash_note.data["reason"].as_str().unwrap().contains("already booked"),
        "{:?}",
        clash_note.data
    );
    let saturday = to_student
        .iter()
        .find(|n| n.data["date"] == json!("2026-01-10T17:00:00+00:00"))
        .expect("Saturday is reported");
    assert!(
        saturday.data["reason"].as_str().unwrap().contains("availability"),
        "{:?}",
        saturday.data
    );
    assert_renders(&w, "recurring_conflict").await;

    // A second run (a retried job, another worker) books and notifies nothing new.
    let before = count(w.pool(), "SELECT count(*) FROM notifications").await;
    run(&ctx, PeriodicTask::RecurringBookings, now).await;
    assert_eq!(series_bookings(w.pool(), sid).await, booked);
    assert_eq!(count(w.pool(), "SELECT count(*) FROM notifications").await, before);
    assert_eq!(
        count(w.pool(), "SELECT count(*) FROM bookings").await,
        4,
        "Omar's booking and three of the series"
    );

    // A week on, the horizon moves: Tuesday 3 February is booked, Saturday 7 reported; the
    // bookings made earlier are left exactly as they were.
    hand.set(now + chrono::Duration::days(7));
    run(&ctx, PeriodicTask::RecurringBookings, now + chrono::Duration::days(7)).await;
    let later = series_bookings(w.pool(), sid).await;
    assert_eq!(later.len(), 4);
    assert_eq!(&later[..3], &booked[..]);
    assert_eq!(later[3].1, t("2026-02-03T17:00:00Z"));
    assert_eq!(notes(w.pool(), "recurring_conflict").await.len(), 12);

    // Ended: nothing more is booked, what was booked stays.
    sqlx::query("UPDATE booking_series SET status = 'ended', ended_at = $2 WHERE id = $1")
        .bind(sid)
        .bind(now)
        .execute(w.pool())
        .await
        .unwrap();
    hand.set(now + chrono::Duration::days(21));
    run(&ctx, PeriodicTask::RecurringBookings, now + chrono::Duration::days(21)).await;
    assert_eq!(series_bookings(w.pool(), sid).await, later);
    let clash_status: String = sqlx::query_scalar("SELECT status FROM bookings WHERE id = $1")
        .bind(clash.id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(clash_status, "confirmed");
}

#[tokio::test]
async fn weekly_series_keeps_its_local_time_across_both_dst_changes() {
    let w = World::start().await;
    let student = w.person("student", "Dora", None).await;
    let instructor = w.person("instructor", "Emil", None).await;
    let now = t("2026-03-01T12:00:00Z");
    let (clock, _hand) = Clock::manual(now);
    // Thursdays at 17:00 London, March to November.
    let sid = new_series(
        &w,
        &student,
        &instructor,
        vec![4],
        NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        NaiveDate::from_ymd_opt(2026, 11, 30),
    )
    .await;
    let mut config = w.config.clone();
    config.recurring_horizon_days = 280;
    let ctx = Context::new(&config, w.pool().clone(), clock);
    run(&ctx, PeriodicTask::RecurringBookings, now).await;

    let booked = series_bookings(w.pool(), sid).await;
    assert_eq!(booked.len(), 39, "every Thursday from 5 March to 26 November");
    for (_, start, _) in &booked {
        let local = start.with_timezone(&London);
        assert_eq!((local.hour(), local.minute()), (17, 0), "{start} is not 17:00 in London");
        let summer = *start > t("2026-03-29T01:00:00Z") && *start < t("2026-10-25T01:00:00Z");
        assert_eq!(start.hour(), if summer { 16 } else { 17 }, "{start}");
    }
    let starts: BTreeSet<DateTime<Utc>> = booked.iter().map(|b| b.1).collect();
    for expected in [
        "2026-03-26T17:00:00Z",
        "2026-04-02T16:00:00Z",
        "2026-10-22T16:00:00Z",
        "2026-10-29T17:00:00Z",
    ] {
        assert!(starts.contains(&t(expected)), "{expected} missing");
    }
    let status: String = sqlx::query_scalar("SELECT status FROM booking_series WHERE id = $1")
        .bind(sid)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(status, "ended", "nothing left after until_on");
}
