//! The notification pipeline end to end: real SMTP, a Twilio-compatible SMS API and a Web Push
//! service on loopback, real Postgres, the real worker.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use dashlight_core::{
    Clock,
    kinds::Kind,
    notify::{self, NewNotification},
};
use dashlight_tests::{api::lesson_start, push::PushResponse, sms::SmsResponse, smtp::SmtpMode, wait::try_wait_until, world::World};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

async fn count(w: &World, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(w.pool()).await.unwrap()
}

async fn notify_email(w: &World, user_id: i64, key: &str) -> i64 {
    let mut conn = w.pool().acquire().await.unwrap();
    let mut n = NewNotification::to_user(Kind::PackageLow, user_id, key.to_owned(), Utc::now());
    n.title = "One lesson left".into();
    n.content = "One lesson left".into();
    n.data = json!({"package": {"name": "Ten lessons", "lessons_remaining": 1, "expires_at": "2027-01-01T00:00:00Z"}});
    notify::create(&mut conn, n).await.unwrap().unwrap()
}

#[tokio::test]
async fn booking_sends_email_push_and_alert_through_real_protocols() {
    let w = World::start().await;
    let student = w.person("student", "Amelia", Some("+447700900201")).await;
    let instructor = w.person("instructor", "Priya", Some("+447700900101")).await;
    w.device(&student, "amelia-phone").await;
    let worker = w.spawn_worker(Clock::system());
    let booking = w.book(&student, &instructor, lesson_start(3), Utc::now()).await;

    // Student: booking_confirmed by email and push (policy all).
    let mails = w.smtp.wait_for_messages(1, LONG).await.unwrap();
    let raw = &mails[0].data;
    let msg = MessageParser::default().parse(raw).expect("a mail client can parse it");
    assert_eq!(mails[0].rcpt_to, vec![student.email.clone()]);
    assert!(
        msg.subject().unwrap().to_lowercase().contains("lesson"),
        "subject: {:?}",
        msg.subject()
    );
    assert!(msg.message_id().is_some(), "Message-ID present");
    assert!(msg.date().is_some(), "Date present");
    assert_eq!(msg.from().unwrap().first().unwrap().address().unwrap(), "no-reply@localhost");
    // multipart/mixed: the alternative (text, HTML, the text/calendar invitation) and invite.ics.
    assert!(
        msg.content_type().is_some_and(|ct| ct.subtype() == Some("mixed")),
        "multipart/mixed"
    );
    assert!(
        msg.parts
            .iter()
            .any(|p| p.content_type().is_some_and(|ct| ct.subtype() == Some("alternative"))),
        "a multipart/alternative inside"
    );
    assert!(msg.body_text(0).unwrap().contains("Priya"), "text part names the instructor");
    assert!(msg.body_html(0).unwrap().contains("<"), "html part");

    let pushes = w.push.wait_for(1, LONG).await.unwrap();
    assert!(w.push.rejected().is_empty(), "push service refused: {:?}", w.push.rejected());
    let payload: serde_json::Value = serde_json::from_slice(&pushes[0].payload).unwrap();
    assert!(payload["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(payload["body"].as_str().is_some_and(|t| !t.is_empty()));
    // It opens the student's own page at the booking, without the page's secret in it (the
    // service worker knows the page).
    let token: String = sqlx::query_scalar("SELECT access_token FROM users WHERE id = $1")
        .bind(student.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(payload["url"], format!("/me#booking-{}", booking.id));
    assert!(!String::from_utf8_lossy(&pushes[0].payload).contains(&token));
    assert!(payload["tag"].as_str().is_some());
    assert_eq!(pushes[0].vapid_sub, "mailto:ops@school.test");

    // Instructor: booking_alert, push → SMS → email; no device, so SMS.
    let sms = w.sms.wait_for(1, LONG).await.unwrap();
    assert!(sms[0].auth_ok, "basic auth SID:TOKEN");
    assert_eq!(sms[0].to, "+447700900101");
    assert_eq!(sms[0].from, "+447700900000");
    assert!(sms[0].body.contains("Amelia"), "alert names the student: {}", sms[0].body);

    try_wait_until("every delivery recorded", LONG, || async {
        let open = count(
            &w,
            "SELECT count(*) FROM notification_deliveries WHERE status NOT IN ('sent', 'skipped')",
        )
        .await;
        Ok((open == 0).then_some(()))
    })
    .await
    .unwrap();
    let sms_sid: Option<String> = sqlx::query_scalar("SELECT provider_message_id FROM notification_deliveries WHERE channel = 'sms'")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(sms_sid, sms[0].sid, "the Twilio sid is kept");
    let skipped: String =
        sqlx::query_scalar("SELECT skip_reason FROM notification_deliveries WHERE channel = 'push' AND status = 'skipped'")
            .fetch_one(w.pool())
            .await
            .unwrap();
    assert_eq!(skipped, "no active push device");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn smtp_451_is_retried_and_550_is_final() {
    let w = World::start().await;
    let a = w.person("student", "Noah", None).await;
    let b = w.person("student", "Isla", None).await;
    let worker = w.spawn_worker(Clock::system());

    w.smtp.set_mode(SmtpMode::TempFail);
    let n1 = notify_email(&w, a.user_id, "t-451").await;
    try_wait_until("first attempt deferred", LONG, || async {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM notification_deliveries WHERE notification_id = $1")
            .bind(n1)
            .fetch_optional(w.pool())
            .await?;
        Ok((s.as_deref() == Some("retrying")).then_some(()))
    })
    .await
    .unwrap();
    w.smtp.set_mode(SmtpMode::Accept);
    let (status, attempts): (String, i32) = try_wait_until("sent on retry", LONG, || async {
        let r: (String, i32) = sqlx::query_as("SELECT status, attempts FROM notification_deliveries WHERE notification_id = $1")
            .bind(n1)
            .fetch_one(w.pool())
            .await?;
        Ok((r.0 == "sent").then_some(r))
    })
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("sent", 2));
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT a.outcome FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1 ORDER BY a.attempt")
        .bind(n1)
        .fetch_all(w.pool())
        .await
        .unwrap();
    assert_eq!(outcomes, ["transient", "sent"]);

    w.smtp.set_mode(SmtpMode::PermFail);
    let n2 = notify_email(&w, b.user_id, "t-550").await;
    let (status, attempts, err): (String, i32, Option<String>) = try_wait_until("failed", LONG, || async {
        let r: Option<(String, i32, Option<String>)> =
            sqlx::query_as("SELECT status, attempts, last_error FROM notification_deliveries WHERE notification_id = $1")
                .bind(n2)
                .fetch_optional(w.pool())
                .await?;
        Ok(r.filter(|r| r.0 == "failed"))
    })
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(err.unwrap().contains("550"));
    let nstatus: String = sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1")
        .bind(n2)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(nstatus, "done", "nothing left to retry");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn sms_429_retry_after_is_honoured() {
    let w = World::start().await;
    let student = w.person("student", "Leo", Some("+447700900204")).await;
    let instructor = w.person("instructor", "Tom", Some("+447700900102")).await;
    w.sms.set_response(SmsResponse::RateLimited { retry_after_secs: 2 });
    let worker = w.spawn_worker(Clock::system());
    w.book(&student, &instructor, lesson_start(3), Utc::now()).await;
    w.sms.wait_for(1, LONG).await.unwrap();
    w.sms.set_response(SmsResponse::Ok);
    let got = w.sms.wait_for(2, LONG).await.unwrap();
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_secs(2), "second attempt after {gap:?}, Retry-After said 2 s");
    let retry_after: Option<i64> = sqlx::query_scalar("SELECT retry_after_ms FROM delivery_attempts WHERE outcome = 'transient'")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(retry_after, Some(2000));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn push_410_disables_the_device_and_the_reminder_falls_back_to_sms() {
    let w = World::start().await;
    let student = w.person("student", "Maya", Some("+447700900205")).await;
    let device = w.device(&student, "maya-old-phone").await;
    w.push.respond_with("maya-old-phone", PushResponse::Gone);
    let worker = w.spawn_worker(Clock::system());
    let now = Utc::now();
    let mut conn = w.pool().acquire().await.unwrap();
    let mut n = NewNotification::to_user(Kind::LessonReminder, student.user_id, "reminder-410".into(), now);
    n.data = json!({
        "booking": {"id": 1, "start_time": (now + chrono::Duration::hours(2)).to_rfc3339(), "end_time": (now + chrono::Duration::hours(3)).to_rfc3339(),
                    "pickup_location": null, "instructor_name": "Ellen Marsh", "student_name": "Maya Tester", "status": "confirmed"},
        "offset_label": "2 hours", "offset": "2h"
    });
    n.expires_at = Some(now + chrono::Duration::hours(2));
    let id = notify::create(&mut conn, n).await.unwrap().unwrap();
    drop(conn);

    let sms = w.sms.wait_for(1, LONG).await.unwrap();
    assert_eq!(sms[0].to, "+447700900205");
    assert_eq!(w.push.received().len(), 1, "the push service was tried first and answered 410");
    let rows: Vec<(String, String)> = try_wait_until("reminder recorded", LONG, || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT channel, status FROM notification_deliveries WHERE notification_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(w.pool())
                .await?;
        Ok(rows.iter().any(|r| r.1 == "sent").then_some(rows))
    })
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("push".to_owned(), "failed".to_owned()), ("sms".to_owned(), "sent".to_owned())]
    );
    let active: bool = sqlx::query_scalar("SELECT active FROM user_devices WHERE id = $1")
        .bind(device)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert!(!active, "a 410 ends the subscription");
    assert!(w.smtp.messages().is_empty(), "first policy stops at the SMS");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn smtp_outage_then_everything_goes_out() {
    let w = World::start().await;
    w.smtp.pause().await;
    let worker = w.spawn_worker(Clock::system());
    let mut people = Vec::new();
    for i in 0..5 {
        let p = w.person("student", &format!("Outage{i}"), None).await;
        notify_email(&w, p.user_id, &format!("outage-{i}")).await;
        people.push(p);
    }
    try_wait_until("all deferred at least once", LONG, || async {
        let n = count(
            &w,
            "SELECT count(*) FROM notification_deliveries WHERE status = 'retrying' AND attempts >= 2",
        )
        .await;
        Ok((n == 5).then_some(()))
    })
    .await
    .unwrap();
    w.smtp.resume().await.unwrap();
    w.smtp.wait_for_messages(5, LONG).await.unwrap();
    try_wait_until("all recorded sent", LONG, || async {
        let n = count(&w, "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'").await;
        Ok((n == 5).then_some(()))
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
}

/// A retry's job that runs a moment before the retry is due (its run time comes from the
/// worker's clock, the fetch's wait from the database's) still sends it, instead of finding
/// nothing due and leaving the retry to the sweep. This test's worker runs no sweep.
#[tokio::test]
async fn a_retry_job_that_runs_early_still_sends_the_retry() {
    let w = World::start().await;
    let p = w.person("student", "Early", None).await;
    // The notification's job is due now; its email delivery has failed once and is due again
    // 800 ms from now: the job is early.
    let id = notify_email(&w, p.user_id, "early-retry").await;
    sqlx::query(
        "INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, last_error, next_attempt_at)
         VALUES ($1, 'email', $2, 'retrying', 1, 'SMTP 451', clock_timestamp() + interval '800 milliseconds')",
    )
    .bind(id)
    .bind(&p.email)
    .execute(w.pool())
    .await
    .unwrap();
    let worker = w.spawn_worker(Clock::system());
    let mails = w.smtp.wait_for_messages(1, LONG).await.unwrap();
    assert_eq!(mails[0].rcpt_to, vec![p.email.clone()]);
    try_wait_until("the retry recorded sent", LONG, || async {
        let row: Option<(String, i32)> =
            sqlx::query_as("SELECT status, attempts FROM notification_deliveries WHERE notification_id = $1 AND status = 'sent'")
                .bind(id)
                .fetch_optional(w.pool())
                .await?;
        Ok(row)
    })
    .await
    .map(|(status, attempts)| assert_eq!((status.as_str(), attempts), ("sent", 2)))
    .unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn quiet_hours_hold_push_until_they_end_and_switched_off_channels_are_skipped() {
    let w = World::start().await;
    let student = w.person("student", "Zara", Some("+447700900207")).await;
    let instructor = w.person("instructor", "Quiet", None).await;
    w.device(&student, "zara-phone").await;
    sqlx::query("UPDATE user_preferences SET quiet_hours_start = '22:00', quiet_hours_end = '07:00', email_notifications = false WHERE user_id = $1")
        .bind(student.user_id)
        .execute(w.pool())
        .await
        .unwrap();
    // 23:00 in London, lesson the next afternoon.
    let night = Utc.with_ymd_and_hms(2030, 1, 15, 23, 0, 0).unwrap();
    let (clock, hand) = Clock::manual(night);
    let worker = w.spawn_worker(clock);
    w.book(&student, &instructor, Utc.with_ymd_and_hms(2030, 1, 16, 15, 0, 0).unwrap(), night)
        .await;
    let held: chrono::DateTime<Utc> = try_wait_until("push held", LONG, || async {
        let r: Option<(String, Option<chrono::DateTime<Utc>>)> = sqlx::query_as(
            "SELECT d.status, d.next_attempt_at FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id WHERE n.type = 'booking_confirmed' AND d.channel = 'push'",
        )
        .fetch_optional(w.pool())
        .await?;
        Ok(r.and_then(|(s, t)| (s == "pending").then_some(t).flatten()))
    })
    .await
    .unwrap();
    assert_eq!(held, Utc.with_ymd_and_hms(2030, 1, 16, 7, 0, 0).unwrap());
    let email_skip: String = sqlx::query_scalar(
        "SELECT d.skip_reason FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id WHERE n.type = 'booking_confirmed' AND d.channel = 'email'",
    )
    .fetch_one(w.pool())
    .await
    .unwrap();
    assert_eq!(email_skip, "email notifications are switched off");
    assert!(w.push.received().is_empty(), "nothing pushed during quiet hours");

    // Morning: the sweep re-enqueues what is due, and the held push goes out.
    hand.set(Utc.with_ymd_and_hms(2030, 1, 16, 7, 0, 30).unwrap());
    dashlight_worker::delivery::sweep_overdue(
        w.pool(),
        Utc.with_ymd_and_hms(2030, 1, 16, 7, 0, 30).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    w.push.wait_for(1, LONG).await.unwrap();
    assert!(w.push.rejected().is_empty());
    worker.stop().await.unwrap();
}

/// The sweep gives a new job to an overdue notification whose job is gone, not to one whose job
/// is still queued (late because the workers are behind: a second job would only grow the
/// backlog).
#[tokio::test]
async fn the_sweep_requeues_lost_notifications_not_queued_ones() {
    let w = World::start().await;
    let p = w.person("student", "Backlog", None).await;
    let queued = notify_email(&w, p.user_id, "backlog-queued").await;
    let lost = notify_email(&w, p.user_id, "backlog-lost").await;
    let jobs_of = |id: i64| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND encode(job, 'escape') LIKE $2")
            .bind(dashlight_core::jobs::QUEUE_NOTIFICATIONS)
            .bind(format!("%\"notification_id\":{id},%"))
            .fetch_one(w.pool())
    };
    assert_eq!((jobs_of(queued).await.unwrap(), jobs_of(lost).await.unwrap()), (1, 1));
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1 AND encode(job, 'escape') LIKE $2")
        .bind(dashlight_core::jobs::QUEUE_NOTIFICATIONS)
        .bind(format!("%\"notification_id\":{lost},%"))
        .execute(w.pool())
        .await
        .unwrap();
    // A minute on, no worker has touched either.
    let later = Utc::now() + chrono::Duration::minutes(1);
    let requeued = dashlight_worker::delivery::sweep_overdue(w.pool(), later, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(requeued, 1);
    assert_eq!((jobs_of(queued).await.unwrap(), jobs_of(lost).await.unwrap()), (1, 1));
}

#[tokio::test]
async fn two_workers_never_send_a_notification_twice() {
    let w = World::start().await;
    let mut ids = Vec::new();
    let p = w.person("student", "Many", None).await;
    for i in 0..150 {
        ids.push(notify_email(&w, p.user_id, &format!("many-{i}")).await);
    }
    // The same event twice creates nothing new.
    let mut conn = w.pool().acquire().await.unwrap();
    let mut dup = NewNotification::to_user(Kind::PackageLow, p.user_id, "many-0".into(), Utc::now());
    dup.data = json!({});
    assert_eq!(notify::create(&mut conn, dup).await.unwrap(), None);
    drop(conn);

    let w1 = w.spawn_worker(Clock::system());
    let w2 = w.spawn_worker(Clock::system());
    w.smtp.wait_for_messages(150, LONG).await.unwrap();
    try_wait_until("all sent", LONG, || async {
        let n = count(&w, "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'").await;
        Ok((n == 150).then_some(()))
    })
    .await
    .unwrap();
    w1.stop().await.unwrap();
    w2.stop().await.unwrap();
    assert_eq!(w.smtp.messages().len(), 150, "each notification sent exactly once");
    assert_eq!(count(&w, "SELECT count(*) FROM delivery_attempts").await, 150);
    assert_eq!(
        count(&w, "SELECT count(DISTINCT worker) FROM delivery_attempts").await,
        2,
        "both workers took part"
    );
}
