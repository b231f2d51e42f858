//! Bookings through the API: create, cancel, reschedule, timeline; double booking under
//! concurrency; a failed enqueue rolls everything back; weekly series across a DST change.

use chrono::{Duration, TimeZone, Utc};
use dashlight_core::Clock;
use reqwest::Method;
use serde_json::json;

use crate::{Api, lesson_start};

#[tokio::test]
async fn create_reschedule_cancel_and_timeline() {
    let api = Api::start().await;
    let (_, student) = api.student("amelia").await;
    let (_, other_student) = api.student("noah").await;
    let (_, instructor) = api.instructor("priya").await;
    let start = lesson_start(3);

    let b = api
        .post("/api/bookings", json!({"student_id": student, "instructor_id": instructor, "start_time": start.to_rfc3339(), "end_time": (start + Duration::hours(1)).to_rfc3339(), "pickup_location": "Station Road"}))
        .await
        .expect(201);
    let id = b["id"].as_i64().unwrap();
    assert_eq!(b["status"], "confirmed");
    assert_eq!(b["pickup_location"], "Station Road");
    assert_eq!(b["version"], 1);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(b["start_time"].as_str().unwrap()).unwrap(),
        start
    );
    // Confirmation, alert and two reminders, each with its job, and the calendar event.
    assert_eq!(
        api.count(&format!("SELECT count(*) FROM notifications WHERE booking_id = {id}"))
            .await,
        4
    );
    assert_eq!(
        api.count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.notifications'")
            .await,
        4
    );
    assert_eq!(
        api.count(&format!("SELECT count(*) FROM calendar_events WHERE booking_id = {id}"))
            .await,
        1
    );
    // Times with another offset mean the same instant.
    let other = start + Duration::hours(2);
    let local = other.with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap());
    let b2 = api
        .post("/api/bookings", json!({"student_id": other_student, "instructor_id": instructor, "start_time": local.to_rfc3339(), "end_time": (local + Duration::hours(1)).to_rfc3339()}))
        .await
        .expect(201);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(b2["start_time"].as_str().unwrap()).unwrap(),
        other
    );

    // Unknown people, bad times.
    api.post("/api/bookings", json!({"student_id": 999999, "instructor_id": instructor, "start_time": start.to_rfc3339(), "end_time": (start + Duration::hours(1)).to_rfc3339()}))
        .await
        .expect_error(422, "invalid_value", Some("student_id"));
    api.post("/api/bookings", json!({"student_id": student, "instructor_id": 999999, "start_time": start.to_rfc3339(), "end_time": (start + Duration::hours(1)).to_rfc3339()}))
        .await
        .expect_error(422, "invalid_value", Some("instructor_id"));
    api.post(
        "/api/bookings",
        json!({"student_id": student, "instructor_id": instructor, "start_time": start.to_rfc3339(), "end_time": start.to_rfc3339()}),
    )
    .await
    .expect_error(422, "invalid_value", Some("end_time"));
    // The same slot again: the instructor is booked.
    api.post("/api/bookings", json!({"student_id": other_student, "instructor_id": instructor, "start_time": (start + Duration::minutes(30)).to_rfc3339(), "end_time": (start + Duration::minutes(90)).to_rfc3339()}))
        .await
        .expect_error(409, "conflict", None);

    // Reschedule onto the other booking: conflict; elsewhere: moved, version 2.
    let path = format!("/api/bookings/{id}/reschedule");
    api.post(
        &path,
        json!({"start_time": other.to_rfc3339(), "end_time": (other + Duration::hours(1)).to_rfc3339()}),
    )
    .await
    .expect_error(409, "conflict", None);
    let moved = start + Duration::days(1);
    let r = api
        .post(
            &path,
            json!({"start_time": moved.to_rfc3339(), "end_time": (moved + Duration::hours(1)).to_rfc3339()}),
        )
        .await
        .expect(200);
    assert_eq!(r["version"], 2);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(r["start_time"].as_str().unwrap()).unwrap(),
        moved
    );
    assert_eq!(
        api.count(&format!(
            "SELECT count(*) FROM notifications WHERE booking_id = {id} AND type = 'lesson_reminder' AND status = 'cancelled'"
        ))
        .await,
        2,
        "the old reminders are cancelled"
    );
    api.post(
        "/api/bookings/999999/reschedule",
        json!({"start_time": moved.to_rfc3339(), "end_time": (moved + Duration::hours(1)).to_rfc3339()}),
    )
    .await
    .expect_error(404, "not_found", None);
    api.post(&path, json!({"start_time": moved.to_rfc3339()}))
        .await
        .expect_error(422, "missing_field", Some("end_time"));

    // Cancel with a reason; again: conflict; a cancelled booking cannot move.
    let c = api
        .post(&format!("/api/bookings/{id}/cancel"), json!({"reason": "Instructor unwell"}))
        .await
        .expect(200);
    assert_eq!(c["status"], "cancelled");
    assert_eq!(c["cancel_reason"], "Instructor unwell");
    api.post(&format!("/api/bookings/{id}/cancel"), json!({}))
        .await
        .expect_error(409, "conflict", None);
    api.post(
        &path,
        json!({"start_time": moved.to_rfc3339(), "end_time": (moved + Duration::hours(1)).to_rfc3339()}),
    )
    .await
    .expect_error(409, "conflict", None);
    api.post("/api/bookings/999999/cancel", json!({}))
        .await
        .expect_error(404, "not_found", None);
    // Cancel without any body at all.
    let c2 = api
        .call(Method::POST, &format!("/api/bookings/{}/cancel", b2["id"]), None)
        .await
        .expect(200);
    assert_eq!(c2["status"], "cancelled");

    // The timeline: every notification oldest first, each delivery with its attempts.
    let confirmed: i64 = sqlx::query_scalar("SELECT id FROM notifications WHERE booking_id = $1 AND type = 'booking_confirmed'")
        .bind(id)
        .fetch_one(api.pool())
        .await
        .unwrap();
    let delivery: i64 = sqlx::query_scalar(
        "INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, sent_at) VALUES ($1, 'email', 'amelia@school.test', 'sent', 2, now()) RETURNING id",
    )
    .bind(confirmed)
    .fetch_one(api.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO delivery_attempt_log (delivery_id, attempt, outcome, error, finished_at) VALUES ($1, 1, 'transient', 'SMTP 451', now()), ($1, 2, 'sent', NULL, now())",
    )
    .bind(delivery)
    .execute(api.pool())
    .await
    .unwrap();
    let t = api.get(&format!("/api/bookings/{id}/timeline")).await.expect(200);
    assert_eq!(t["booking"]["id"], id);
    assert_eq!(t["booking"]["status"], "cancelled");
    let notes = t["notifications"].as_array().unwrap();
    assert_eq!(notes[0]["kind"], "booking_confirmed");
    let ids: Vec<i64> = notes.iter().map(|n| n["id"].as_i64().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "oldest first");
    assert!(notes.iter().any(|n| n["kind"] == "booking_cancelled"));
    assert!(notes.iter().any(|n| n["kind"] == "booking_rescheduled"));
    let d = &notes[0]["deliveries"][0];
    assert_eq!(d["id"], delivery);
    assert_eq!(d["status"], "sent");
    let attempts: Vec<(i64, &str)> = d["attempts_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["attempt"].as_i64().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(attempts, vec![(1, "transient"), (2, "sent")]);
    api.get("/api/bookings/999999/timeline").await.expect_error(404, "not_found", None);
    api.stop().await;
}

#[tokio::test]
async fn concurrent_bookings_of_one_slot_give_one_201_and_one_409() {
    let api = Api::start().await;
    let (_, a) = api.student("ava").await;
    let (_, b) = api.student("ben").await;
    let (_, instructor) = api.instructor("ivy").await;
    for round in 0..5 {
        let start = lesson_start(2) + Duration::hours(round);
        let body = |s: i64| json!({"student_id": s, "instructor_id": instructor, "start_time": start.to_rfc3339(), "end_time": (start + Duration::hours(1)).to_rfc3339()});
        let (r1, r2) = tokio::join!(api.post("/api/bookings", body(a)), api.post("/api/bookings", body(b)));
        let mut statuses = [r1.status.as_u16(), r2.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}: {} / {}", r1.body, r2.body);
        let loser = if r1.status == 409 { r1 } else { r2 };
        loser.expect_error(409, "conflict", None);
    }
    assert_eq!(api.count("SELECT count(*) FROM bookings").await, 5);
    assert_eq!(
        api.count("SELECT count(*) FROM notifications WHERE type = 'booking_confirmed'")
            .await,
        5,
        "the loser left nothing behind"
    );
    api.stop().await;
}

#[tokio::test]
async fn a_booking_whose_jobs_cannot_be_enqueued_leaves_nothing_behind() {
    let api = Api::start().await;
    let (_, student) = api.student("rolly").await;
    let (_, instructor) = api.instructor("rollo").await;
    let before_events = api.count("SELECT count(*) FROM analytics_events").await;
    sqlx::query("ALTER TABLE apalis.jobs ADD CONSTRAINT no_jobs CHECK (false) NOT VALID")
        .execute(api.pool())
        .await
        .unwrap();
    let start = lesson_start(4);
    let r = api.post("/api/bookings", json!({"student_id": student, "instructor_id": instructor, "start_time": start.to_rfc3339(), "end_time": (start + Duration::hours(1)).to_rfc3339()})).await;
    assert!(r.status.is_server_error(), "{}: {}", r.status, r.body);
    r.expect_error(500, "internal", None);
    for table in ["bookings", "notifications", "calendar_events", "event_participants", "apalis.jobs"] {
        assert_eq!(api.count(&format!("SELECT count(*) FROM {table}")).await, 0, "{table} is empty");
    }
    assert_eq!(api.count("SELECT count(*) FROM analytics_events").await, before_events);

    // Once the queue accepts jobs again, the same request succeeds: nothing was poisoned.
    sqlx::query("ALTER TABLE apalis.jobs DROP CONSTRAINT no_jobs")
        .execute(api.pool())
        .await
        .unwrap();
    api.book(student, instructor, start).await;
    api.stop().await;
}

#[tokio::test]
async fn weekly_series_books_the_horizon_across_dst_and_reports_clashes() {
    // Monday 15 March 2027, 12:00 UTC; British Summer Time starts on Sunday 28 March.
    let now = Utc.with_ymd_and_hms(2027, 3, 15, 12, 0, 0).unwrap();
    let (clock, _hands) = Clock::manual(now);
    let api = Api::start_with(clock, |c| c.recurring_horizon_days = 28).await;
    let (_, student) = api.student("sam").await;
    let (_, rival) = api.student("rita").await;
    let (_, instructor) = api.instructor("dan").await;
    // Thursday 25 March 09:00 GMT is taken already.
    let clash = Utc.with_ymd_and_hms(2027, 3, 25, 9, 0, 0).unwrap();
    api.book(rival, instructor, clash).await;

    let b = api
        .post(
            "/api/booking-series",
            json!({"student_id": student, "instructor_id": instructor, "weekdays": [1, 4], "local_start_time": "09:00", "duration_minutes": 60,
                   "starts_on": "2027-03-15", "occurrence_count": 8, "pickup_location": "Home"}),
        )
        .await
        .expect(201);
    let series_id = b["series"]["id"].as_i64().unwrap();
    assert_eq!(b["series"]["timezone"], "Europe/London", "the instructor's time zone by default");
    assert_eq!(b["series"]["local_start_time"], "09:00");
    let starts: Vec<&str> = b["bookings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["start_time"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        vec![
            "2027-03-18T09:00:00Z",
            "2027-03-22T09:00:00Z",
            "2027-03-29T08:00:00Z", // 09:00 BST
            "2027-04-01T08:00:00Z",
            "2027-04-05T08:00:00Z",
            "2027-04-08T08:00:00Z",
        ]
    );
    assert!(
        b["bookings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["series_id"] == series_id && x["pickup_location"] == "Home")
    );
    let skipped: Vec<&str> = b["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["date"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, vec!["2027-03-15", "2027-03-25"], "{}", b["skipped"]);
    assert!(
        b["skipped"][1]["reason"].as_str().unwrap().contains("already booked"),
        "{}",
        b["skipped"]
    );
    assert_eq!(b["series"]["status"], "ended", "all eight occurrences are accounted for");

    // The clash is told to the student and the school, once.
    let conflicts: Vec<(Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT user_id, recipient_email FROM notifications WHERE type = 'recurring_conflict' ORDER BY id")
            .fetch_all(api.pool())
            .await
            .unwrap();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(conflicts[0].0.is_some());
    assert_eq!(conflicts[1].1.as_deref(), Some("no-reply@localhost"));

    // Expanding again (as the scheduler will) books nothing twice, even forgetting where it got to.
    let settings = dashlight_core::bookings::BookingSettings::from_config(&api.config);
    sqlx::query("UPDATE booking_series SET status = 'active', expanded_through = NULL WHERE id = $1")
        .bind(series_id)
        .execute(api.pool())
        .await
        .unwrap();
    let mut tx = api.pool().begin().await.unwrap();
    let report = dashlight_core::series::expand(&mut tx, &settings, series_id, now, 28)
        .await
        .unwrap();
    dashlight_core::series::notify_conflicts(&mut tx, &report, Some("Dashlight <no-reply@localhost>"), now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(report.created.is_empty(), "{report:?}");
    assert_eq!(
        api.count(&format!("SELECT count(*) FROM bookings WHERE series_id = {series_id}"))
            .await,
        6
    );
    assert_eq!(
        api.count("SELECT count(*) FROM notifications WHERE type = 'recurring_conflict'")
            .await,
        2,
        "conflicts are notified once"
    );

    // An open-ended series rolls forward as time passes, and only then.
    let b = api
        .post("/api/booking-series", json!({"student_id": student, "instructor_id": instructor, "weekdays": [3], "local_start_time": "18:30", "duration_minutes": 90, "starts_on": "2027-03-15"}))
        .await
        .expect(201);
    let open_id = b["series"]["id"].as_i64().unwrap();
    assert_eq!(
        b["bookings"].as_array().unwrap().len(),
        4,
        "Wednesdays 17, 24, 31 March and 7 April"
    );
    assert_eq!(b["series"]["expanded_through"], "2027-04-12");
    for (at, expected) in [(now, 0), (now + Duration::days(7), 1), (now + Duration::days(7), 0)] {
        let mut tx = api.pool().begin().await.unwrap();
        let report = dashlight_core::series::expand(&mut tx, &settings, open_id, at, 28).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(report.created.len(), expected, "at {at}: {report:?}");
    }

    // Validation.
    let base = json!({"student_id": student, "instructor_id": instructor, "weekdays": [1], "local_start_time": "09:00", "duration_minutes": 60, "starts_on": "2027-04-01"});
    let with = |k: &str, v: serde_json::Value| {
        let mut x = base.clone();
        x[k] = v;
        x
    };
    api.post("/api/booking-series", with("weekdays", json!([])))
        .await
        .expect_error(422, "invalid_value", Some("weekdays"));
    api.post("/api/booking-series", with("weekdays", json!([8])))
        .await
        .expect_error(422, "invalid_value", Some("weekdays"));
    api.post("/api/booking-series", with("duration_minutes", json!(5)))
        .await
        .expect_error(422, "invalid_value", Some("duration_minutes"));
    api.post("/api/booking-series", with("local_start_time", json!("25:00")))
        .await
        .expect_error(422, "invalid_value", Some("local_start_time"));
    api.post("/api/booking-series", with("until_on", json!("2027-03-01")))
        .await
        .expect_error(422, "invalid_value", Some("until_on"));
    api.post("/api/booking-series", with("timezone", json!("Nowhere/Land")))
        .await
        .expect_error(422, "invalid_value", Some("timezone"));
    api.post("/api/booking-series", with("student_id", json!(999999)))
        .await
        .expect_error(422, "invalid_value", Some("student_id"));
    api.post("/api/booking-series", with("starts_on", json!("1 April")))
        .await
        .expect_error(422, "invalid_value", Some("starts_on"));
    api.stop().await;
}
