//! Lessons: completing a confirmed booking writes the lesson, its progress rows and the student's
//! levels (mean of the last three ratings), sends the report by email; a no-show is recorded.

use mail_parser::MimeHeaders;
use serde_json::json;

use crate::{Flow, lesson_start, parse, skills};

#[tokio::test]
async fn completing_lessons_tracks_skills_and_emails_the_report() {
    let f = Flow::start().await;
    let (student_user, student) = f.student("amelia").await;
    let (_, instructor) = f.instructor("priya").await;
    let cats = skills(&f, 3).await;
    let names: Vec<String> = sqlx::query_scalar("SELECT category_name FROM skill_categories ORDER BY skill_order LIMIT 3")
        .fetch_all(f.pool())
        .await
        .unwrap();

    let b1 = f.book(student, instructor, lesson_start(3)).await;
    let id1 = b1["id"].as_i64().unwrap();
    // Listed in reverse syllabus order: the answer comes back in syllabus order.
    let done = f
        .post(
            &format!("/api/bookings/{id1}/complete"),
            json!({"notes": "Good, steady lesson; mirrors, please.", "skills": [
                {"skill_category_id": cats[1], "rating": 3},
                {"skill_category_id": cats[0], "rating": 4, "notes": "Smooth"},
            ]}),
        )
        .await
        .expect(200);
    assert_eq!(done["lesson"]["booking_id"], id1);
    assert_eq!(done["lesson"]["student_id"], student);
    assert_eq!(done["lesson"]["notes"], "Good, steady lesson; mirrors, please.");
    let progress = done["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 2);
    assert_eq!(
        (progress[0]["skill_category"].clone(), progress[0]["rating"].clone()),
        (json!(names[0]), json!(4))
    );
    assert_eq!(progress[0]["notes"], "Smooth");
    assert_eq!(
        (progress[1]["skill_category"].clone(), progress[1]["rating"].clone()),
        (json!(names[1]), json!(3))
    );
    let sp = done["student_progress"].as_array().unwrap();
    assert_eq!(sp.len(), 2);
    assert_eq!(
        (
            sp[0]["skill_category_id"].clone(),
            sp[0]["current_level"].clone(),
            sp[0]["progress_percentage"].clone()
        ),
        (json!(cats[0]), json!(4), json!(80))
    );
    assert_eq!(
        (sp[1]["current_level"].clone(), sp[1]["progress_percentage"].clone()),
        (json!(3), json!(60))
    );
    assert!(sp[0]["last_assessed"].is_string());

    // In the database, in one go: booking completed, lesson, both progress tables, levels.
    let status: String = sqlx::query_scalar("SELECT status FROM bookings WHERE id = $1")
        .bind(id1)
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(status, "completed");
    assert_eq!(f.count(&format!("SELECT count(*) FROM lessons WHERE booking_id = {id1}")).await, 1);
    let rows: Vec<(String, i16)> =
        sqlx::query_as("SELECT skill_category, progress_rating FROM lesson_progress ORDER BY progress_rating DESC")
            .fetch_all(f.pool())
            .await
            .unwrap();
    assert_eq!(rows, vec![(names[0].clone(), 4), (names[1].clone(), 3)]);
    assert_eq!(f.count("SELECT count(*) FROM lesson_skill_progress").await, 2);
    let open_reminders = f
        .count(&format!(
            "SELECT count(*) FROM notifications WHERE booking_id = {id1} AND type = 'lesson_reminder' AND status = 'pending'"
        ))
        .await;
    assert_eq!(open_reminders, 0, "a completed lesson needs no reminders");

    // Completing it again, or a booking that does not exist, or bad ratings: refused, nothing written.
    f.post(&format!("/api/bookings/{id1}/complete"), json!({"skills": []}))
        .await
        .expect_error(409, "conflict", None);
    f.post("/api/bookings/999999/complete", json!({"skills": []}))
        .await
        .expect_error(404, "not_found", None);
    let b2 = f.book(student, instructor, lesson_start(4)).await;
    let id2 = b2["id"].as_i64().unwrap();
    let path2 = format!("/api/bookings/{id2}/complete");
    f.post(&path2, json!({"skills": [{"skill_category_id": cats[0], "rating": 6}]}))
        .await
        .expect_error(422, "invalid_value", Some("skills[0].rating"));
    f.post(&path2, json!({"skills": [{"skill_category_id": 999999, "rating": 3}]}))
        .await
        .expect_error(422, "invalid_value", Some("skills[0].skill_category_id"));
    f.post(
        &path2,
        json!({"skills": [{"skill_category_id": cats[0], "rating": 3}, {"skill_category_id": cats[0], "rating": 2}]}),
    )
    .await
    .expect_error(422, "invalid_value", Some("skills[1].skill_category_id"));
    f.post(&path2, json!({})).await.expect_error(422, "missing_field", Some("skills"));
    assert_eq!(f.count("SELECT count(*) FROM lessons").await, 1);

    // Levels follow the mean of the last three ratings: 4, 2 → 3; 4, 2, 5 → 4; 2, 5, 1 → 3.
    for (i, (rating, level)) in [(2, 3), (5, 4), (1, 3)].into_iter().enumerate() {
        let id = if i == 0 {
            id2
        } else {
            f.book(student, instructor, lesson_start(5 + i as i64)).await["id"]
                .as_i64()
                .unwrap()
        };
        let done = f
            .post(
                &format!("/api/bookings/{id}/complete"),
                json!({"skills": [{"skill_category_id": cats[0], "rating": rating}]}),
            )
            .await
            .expect(200);
        let first = &done["student_progress"][0];
        assert_eq!(
            (first["current_level"].clone(), first["progress_percentage"].clone()),
            (json!(level), json!(level * 20)),
            "after rating {rating}"
        );
        assert_eq!(done["student_progress"][1]["current_level"], 3, "the other category is left alone");
    }

    // Four reports by email; the first names the skills and the progress.
    let mails = f.wait_for_mails("amelia@school.test", 8).await;
    let reports: Vec<_> = mails
        .iter()
        .filter(|m| parse(m).subject().is_some_and(|s| s.starts_with("Your lesson report")))
        .collect();
    assert_eq!(reports.len(), 4, "one report per completed lesson");
    let first = reports
        .iter()
        .map(|m| parse(m))
        .find(|m| m.body_text(0).is_some_and(|t| t.contains("Good, steady lesson")))
        .expect("the first lesson's report");
    let text = first.body_text(0).unwrap();
    assert!(text.contains(&format!("{}: 4/5 (Smooth)", names[0])), "{text}");
    assert!(text.contains(&format!("{}: Confident (80%)", names[0])), "{text}");
    assert!(text.contains(&format!("{}: Competent (60%)", names[1])), "{text}");
    assert!(first.content_type().is_some_and(|ct| ct.subtype() == Some("alternative")));

    // Analytics: one booking_completed per lesson; the student's contact is active.
    let events = f.events("booking_completed").await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["booking_id"], id1);
    assert_eq!(events[0]["skills_rated"], 2);
    let event_user: Option<i64> = sqlx::query_scalar("SELECT user_id FROM analytics_events WHERE event_type = 'booking_completed' LIMIT 1")
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(event_user, Some(student_user));
    let lead: String = sqlx::query_scalar("SELECT lead_status FROM crm_contacts WHERE user_id = $1")
        .bind(student_user)
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(lead, "active");
    f.stop().await;
}

#[tokio::test]
async fn a_no_show_is_recorded_and_cancels_the_reminders() {
    let f = Flow::start().await;
    let (_, student) = f.student("noah").await;
    let (_, instructor) = f.instructor("tom").await;
    let b = f.book(student, instructor, lesson_start(3)).await;
    let id = b["id"].as_i64().unwrap();
    assert_eq!(
        f.count(&format!(
            "SELECT count(*) FROM notifications WHERE booking_id = {id} AND type = 'lesson_reminder' AND status = 'pending'"
        ))
        .await,
        2
    );

    let out = f.post(&format!("/api/bookings/{id}/no-show"), json!({})).await.expect(200);
    assert_eq!(out["status"], "no_show");
    assert_eq!(out["id"], id);
    assert_eq!(
        f.count(&format!(
            "SELECT count(*) FROM notifications WHERE booking_id = {id} AND type = 'lesson_reminder' AND status = 'cancelled'"
        ))
        .await,
        2
    );
    f.post(&format!("/api/bookings/{id}/no-show"), json!({}))
        .await
        .expect_error(409, "conflict", None);
    f.post(&format!("/api/bookings/{id}/complete"), json!({"skills": []}))
        .await
        .expect_error(409, "conflict", None);
    f.post("/api/bookings/999999/no-show", json!({}))
        .await
        .expect_error(404, "not_found", None);
    // A cancelled booking cannot be a no-show either.
    let c = f.book(student, instructor, lesson_start(4)).await["id"].as_i64().unwrap();
    f.post(&format!("/api/bookings/{c}/cancel"), json!({})).await.expect(200);
    f.post(&format!("/api/bookings/{c}/no-show"), json!({}))
        .await
        .expect_error(409, "conflict", None);

    let events = f.events("booking_no_show").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["booking_id"], id);
    assert_eq!(events[0]["instructor_id"], instructor);
    // The slot is free again for another student (no-shows do not hold the instructor).
    let (_, other) = f.student("olive").await;
    f.book(other, instructor, lesson_start(3)).await;
    f.stop().await;
}
