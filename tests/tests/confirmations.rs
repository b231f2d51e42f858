//! Confirmed lessons, against the real system on loopback: the admin API over a fresh database
//! (and a worker with the SMTP, SMS and push peers where messages must go out).
//!
//! - Every way to confirm goes through one operation: the reminder email's link (a GET shows a
//!   page and changes nothing, its button's POST confirms), the service worker's POST, the own
//!   page's button; forged tokens and other lessons' are 404; two at once record one.
//! - Escalations of an unconfirmed lesson (the student's SMS nudge, the instructor's alert) go
//!   once, at their moment by an injected clock, and not at all after a confirmation or a
//!   cancellation; a rescheduled lesson's escalations move with it.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use dashlight_core::Clock;
use dashlight_tests::{
    api::{RunningApi, spawn_api},
    wait::try_wait_until,
    world::{Person, World},
};
use serde_json::Value;
use sqlx::PgPool;

const LONG: Duration = Duration::from_secs(90);
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn count(pool: &PgPool, sql: &str, id: i64) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn confirmation(pool: &PgPool, booking: i64) -> (Option<DateTime<Utc>>, Option<String>) {
    sqlx::query_as("SELECT student_confirmed_at, student_confirmed_via FROM bookings WHERE id = $1")
        .bind(booking)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The confirmation path a lesson's reminders carry (`/confirm/<token>`).
async fn confirm_path(pool: &PgPool, booking: i64) -> String {
    sqlx::query_scalar(
        "SELECT data->>'confirm_path' FROM notifications WHERE booking_id = $1 AND type = 'lesson_reminder' ORDER BY id LIMIT 1",
    )
    .bind(booking)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn get_page(api: &RunningApi, path: &str) -> (u16, String) {
    let res = client()
        .get(format!("{}{path}", api.base))
        .header("accept", BROWSER_ACCEPT)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// A form post as the browser sends it from a page of this site.
async fn post_form(api: &RunningApi, path: &str) -> (u16, Option<String>, String) {
    let res = client()
        .post(format!("{}{path}", api.base))
        .header("accept", BROWSER_ACCEPT)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body("")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    (status, location, res.text().await.unwrap())
}

/// The service worker's fetch.
async fn post_json(api: &RunningApi, path: &str) -> (u16, Value) {
    let res = client()
        .post(format!("{}{path}", api.base))
        .header("accept", "application/json")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

struct Lessons {
    w: World,
    api: RunningApi,
    student: Person,
    other: Person,
    instructor: Person,
}

/// Two students and an instructor; lessons are booked 30 h ahead (reminders still pending).
async fn lessons() -> Lessons {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let student = w.person("student", "Amelia", Some("+447700900301")).await;
    let other = w.person("student", "Noah", Some("+447700900302")).await;
    let instructor = w.person("instructor", "Priya", Some("+447700900303")).await;
    Lessons {
        w,
        api,
        student,
        other,
        instructor,
    }
}

impl Lessons {
    async fn book(&self, who: &Person, hours: i64) -> i64 {
        let start = Utc::now() + chrono::Duration::hours(hours);
        self.w.book(who, &self.instructor, start, Utc::now()).await.id
    }
}

#[tokio::test]
async fn the_confirm_links_get_changes_nothing_and_its_post_confirms_once() {
    let l = lessons().await;
    let pool = l.w.pool().clone();
    let booking = l.book(&l.student, 30).await;
    let path = confirm_path(&pool, booking).await;
    assert!(path.starts_with("/confirm/"), "{path}");
    // The reminder's email link is the full address.
    let url: String =
        sqlx::query_scalar("SELECT data->>'confirm_url' FROM notifications WHERE booking_id = $1 AND type = 'lesson_reminder' LIMIT 1")
            .bind(booking)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(url, format!("{}{path}", l.w.config.public_base_url));

    // A mail scanner opens the link (twice): a page with the button, nothing changes.
    for _ in 0..2 {
        let (status, page) = get_page(&l.api, &path).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("data-confirm=\"ask\""), "{page}");
        assert!(
            page.contains(&format!("action=\"{path}\"")),
            "the button posts to the same address: {page}"
        );
        assert!(page.contains("Priya Tester"), "{page}");
    }
    assert_eq!(confirmation(&pool, booking).await, (None, None));
    let told = "SELECT count(*) FROM notifications WHERE booking_id = $1 AND type = 'student_confirmed'";
    assert_eq!(count(&pool, told, booking).await, 0);

    // The button's POST confirms, by the email path, and the instructor is told.
    let (status, _, page) = post_form(&l.api, &path).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-confirm=\"done\""), "{page}");
    let (at, via) = confirmation(&pool, booking).await;
    assert!(at.is_some());
    assert_eq!(via.as_deref(), Some("email"));
    assert_eq!(count(&pool, told, booking).await, 1);
    let (to, content): (i64, String) =
        sqlx::query_as("SELECT user_id, content FROM notifications WHERE booking_id = $1 AND type = 'student_confirmed'")
            .bind(booking)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(to, l.instructor.user_id);
    assert!(content.contains("from the reminder email"), "{content}");

    // Again, by any path: a friendly no-op; the first stays.
    let (status, _, page) = post_form(&l.api, &path).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-confirm=\"already\""), "{page}");
    assert!(page.contains("from the reminder email"), "{page}");
    let (status, page) = get_page(&l.api, &path).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-confirm=\"already\""), "{page}");
    let (status, body) = post_json(&l.api, &format!("{path}/push")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["first"], false);
    assert_eq!(body["via"], "email");
    assert_eq!(confirmation(&pool, booking).await, (at, via));
    assert_eq!(count(&pool, told, booking).await, 1);
    let t = l.api.get(&format!("/api/bookings/{booking}/timeline")).await.expect(200);
    assert_eq!(t["student_confirmed_via"], "email", "{t}");
    assert!(t["next_escalation"].is_null());

    // A cancelled lesson cannot be confirmed: its link says so.
    let cancelled = l.book(&l.student, 50).await;
    let cpath = confirm_path(&pool, cancelled).await;
    l.api
        .post(&format!("/api/bookings/{cancelled}/cancel"), serde_json::json!({}))
        .await
        .expect(200);
    let (status, page) = get_page(&l.api, &cpath).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("cancelled"), "{page}");
    let (status, _) = post_json(&l.api, &format!("{cpath}/push")).await;
    assert_eq!(status, 409);
    assert_eq!(confirmation(&pool, cancelled).await, (None, None));
}

#[tokio::test]
async fn forged_tokens_and_other_lessons_are_404() {
    let l = lessons().await;
    let pool = l.w.pool().clone();
    let mine = l.book(&l.student, 30).await;
    let theirs = l.book(&l.other, 40).await;
    let path = confirm_path(&pool, mine).await;
    let token = path.trim_start_matches("/confirm/").to_owned();
    let key = dashlight_core::signing::load_from(&pool).await.unwrap();

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // My token with the other lesson's id put in: the signature no longer verifies.
    let mut bytes = b64.decode(&token).unwrap();
    bytes[..8].copy_from_slice(&theirs.to_be_bytes());
    let swapped = b64.encode(&bytes);
    // A correctly signed token naming the other lesson with me as its student.
    let wrong_student = key.confirm_token(theirs, l.student.profile_id);
    // Tokens of other purposes, and the page's own token.
    let verp = key.verp_token(mine);
    let unsubscribe = key.unsubscribe_token(l.student.user_id, dashlight_core::kinds::Kind::LessonReminder);
    let page_token: String = sqlx::query_scalar("SELECT access_token FROM users WHERE id = $1")
        .bind(l.student.user_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let no_such_booking = key.confirm_token(mine + 1000, l.student.profile_id);
    for bad in [
        swapped.as_str(),
        wrong_student.as_str(),
        verp.as_str(),
        unsubscribe.as_str(),
        page_token.as_str(),
        no_such_booking.as_str(),
        "x",
        &"A".repeat(300),
    ] {
        let p = format!("/confirm/{bad}");
        assert_eq!(get_page(&l.api, &p).await.0, 404, "GET {p}");
        assert_eq!(post_form(&l.api, &p).await.0, 404, "POST {p}");
        assert_eq!(post_json(&l.api, &format!("{p}/push")).await.0, 404, "POST {p}/push");
    }
    // The own page confirms only the owner's lessons as student.
    let other_page = format!("/me/{page_token}/lessons/{theirs}/confirm");
    assert_eq!(post_form(&l.api, &other_page).await.0, 404);
    let instructor_token: String = sqlx::query_scalar("SELECT access_token FROM users WHERE id = $1")
        .bind(l.instructor.user_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        post_form(&l.api, &format!("/me/{instructor_token}/lessons/{mine}/confirm")).await.0,
        404,
        "an instructor does not confirm for the student"
    );
    assert_eq!(confirmation(&pool, mine).await, (None, None));
    assert_eq!(confirmation(&pool, theirs).await, (None, None));

    // From another site: refused.
    let res = client()
        .post(format!("{}{path}", l.api.base))
        .header("accept", BROWSER_ACCEPT)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(confirmation(&pool, mine).await, (None, None));

    // The real one works.
    let (status, body) = post_json(&l.api, &format!("{path}/push")).await;
    assert_eq!(
        (status, body["first"].clone(), body["via"].clone()),
        (200, Value::Bool(true), Value::from("push"))
    );
}

#[tokio::test]
async fn two_confirmations_at_once_record_one() {
    let l = lessons().await;
    let pool = l.w.pool().clone();
    for round in 0..3 {
        let booking = l.book(&l.student, 30 + round * 5).await;
        let path = confirm_path(&pool, booking).await;
        let page_token: String = sqlx::query_scalar("SELECT access_token FROM users WHERE id = $1")
            .bind(l.student.user_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        // Push actions, email buttons and the own page, all at once.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let base = l.api.base.clone();
            let path = path.clone();
            let own = format!("/me/{page_token}/lessons/{booking}/confirm");
            tasks.push(tokio::spawn(async move {
                let (url, accept) = match i % 3 {
                    0 => (format!("{base}{path}/push"), "application/json"),
                    1 => (format!("{base}{path}"), BROWSER_ACCEPT),
                    _ => (format!("{base}{own}"), BROWSER_ACCEPT),
                };
                let res = client()
                    .post(url)
                    .header("accept", accept)
                    .header("sec-fetch-site", "same-origin")
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let text = res.text().await.unwrap();
                (i % 3, status, text)
            }));
        }
        let mut firsts = 0;
        for t in tasks {
            let (path_kind, status, text) = t.await.unwrap();
            match path_kind {
                0 => {
                    assert_eq!(status, 200, "{text}");
                    let v: Value = serde_json::from_str(&text).unwrap();
                    firsts += usize::from(v["first"] == true);
                }
                1 => {
                    assert_eq!(status, 200, "{text}");
                    firsts += usize::from(text.contains("data-confirm=\"done\""));
                }
                _ => assert_eq!(status, 303, "{text}"),
            }
        }
        let (at, via) = confirmation(&pool, booking).await;
        assert!(at.is_some() && via.is_some());
        let told = count(
            &pool,
            "SELECT count(*) FROM notifications WHERE booking_id = $1 AND type = 'student_confirmed'",
            booking,
        )
        .await;
        assert_eq!(told, 1, "the instructor is told once");
        let events = count(
            &pool,
            "SELECT count(*) FROM analytics_events WHERE event_type = 'lesson_confirmed' AND (event_data->>'booking_id')::bigint = $1",
            booking,
        )
        .await;
        assert_eq!(events, 1);
        // The own-page answers cannot say who won; the others say at most one did.
        assert!(firsts <= 1, "{firsts} first confirmations");
        if via.as_deref() != Some("own_page") {
            assert_eq!(firsts, 1);
        }
    }
}

#[tokio::test]
async fn the_own_page_shows_a_confirm_button_until_the_lesson_is_confirmed() {
    let l = lessons().await;
    let pool = l.w.pool().clone();
    let booking = l.book(&l.student, 30).await;
    let token: String = sqlx::query_scalar("SELECT access_token FROM users WHERE id = $1")
        .bind(l.student.user_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let action = format!("/me/{token}/lessons/{booking}/confirm");
    let (status, page) = get_page(&l.api, &format!("/me/{token}")).await;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("action=\"{action}\"")), "{page}");
    // The instructor's page shows that the student has not confirmed.
    let itoken: String = sqlx::query_scalar("SELECT access_token FROM users WHERE id = $1")
        .bind(l.instructor.user_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let (_, ipage) = get_page(&l.api, &format!("/me/{itoken}")).await;
    assert!(ipage.contains("Not confirmed by the student yet"), "{ipage}");
    assert!(!ipage.contains("/confirm\""), "no button for the instructor");

    let (status, location, _) = post_form(&l.api, &action).await;
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some(format!("/me/{token}?done=confirmed#booking-{booking}").as_str())
    );
    assert_eq!(confirmation(&pool, booking).await.1.as_deref(), Some("own_page"));
    let (_, page) = get_page(&l.api, &format!("/me/{token}?done=confirmed")).await;
    assert!(!page.contains(&format!("action=\"{action}\"")), "the button is gone");
    assert!(page.contains("data-confirmed=\"true\""), "{page}");
    assert!(page.contains("your lesson is confirmed"), "{page}");
    let (_, ipage) = get_page(&l.api, &format!("/me/{itoken}")).await;
    assert!(ipage.contains("on their own page"), "{ipage}");
}

// ---------------------------------------------------------------------------------------------
// Escalations
// ---------------------------------------------------------------------------------------------

/// A Monday morning far from quiet hours.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 4, 8, 0, 0).unwrap()
}

/// The SMS and push/email escalations of a booking: (kind, status, due_at).
async fn escalations(pool: &PgPool, booking: i64) -> Vec<(String, String, DateTime<Utc>, String)> {
    sqlx::query_as(
        "SELECT type, status, due_at, dedupe_key FROM notifications WHERE booking_id = $1 AND type IN ('confirm_nudge', 'unconfirmed_lesson')
         ORDER BY id",
    )
    .bind(booking)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Sent deliveries of a kind for a booking: (channel, sent_at).
async fn sent(pool: &PgPool, booking: i64, kind: &str) -> Vec<(String, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT d.channel, d.sent_at FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE n.booking_id = $1 AND n.type = $2 AND d.status IN ('sent', 'delivered') ORDER BY d.id",
    )
    .bind(booking)
    .bind(kind)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_nudge_and_the_alert_go_once_on_time_and_not_after_a_confirmation_or_cancellation() {
    let mut w = World::start().await;
    // The nudge at the default 12 h; the alert 10 s after it, so both fall due within the test.
    w.config.confirm_nudge_before = Some(Duration::from_secs(12 * 3600));
    w.config.confirm_alert_before = Some(Duration::from_secs(12 * 3600 - 10));
    let (clock, hand) = Clock::manual(t0());
    let api = spawn_api(&w.config, w.pool().clone(), clock.clone()).await;
    let pool = w.pool().clone();
    let waits = w.person("student", "Isla", Some("+447700900311")).await;
    let confirms = w.person("student", "Leo", Some("+447700900312")).await;
    let cancels = w.person("student", "Maya", Some("+447700900313")).await;
    let instructor = w.person("instructor", "Tom", None).await;
    w.device(&instructor, "tom-phone").await;
    // Starts 12 h and 3 s from t0: nudge due at t0 + 3 s, alert at t0 + 13 s.
    let start = t0() + chrono::Duration::seconds(12 * 3600 + 3);
    // B and C at the same time with other instructors (no devices): their escalations fall due
    // at the same moments as A's, so the worker meets them withdrawn within the test.
    let ben = w.person("instructor", "Ben", None).await;
    let cal = w.person("instructor", "Cal", None).await;
    let a = w.book(&waits, &instructor, start, t0()).await.id;
    let b = w.book(&confirms, &ben, start, t0()).await.id;
    let c = w.book(&cancels, &cal, start, t0()).await.id;
    // A student who turned SMS off, with another instructor at the same time: no nudge for her.
    let no_sms = w.person("student", "Zara", Some("+447700900314")).await;
    sqlx::query("UPDATE user_preferences SET sms_notifications = false WHERE user_id = $1")
        .bind(no_sms.user_id)
        .execute(&pool)
        .await
        .unwrap();
    let other_instructor = w.person("instructor", "Ann", None).await;
    let z = w.book(&no_sms, &other_instructor, start, t0()).await.id;
    let nudge_due = start - chrono::Duration::hours(12);
    let alert_due = start - chrono::Duration::seconds(12 * 3600 - 10);
    let e = escalations(&pool, a).await;
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!((e[0].0.as_str(), e[0].1.as_str(), e[0].2), ("confirm_nudge", "pending", nudge_due));
    assert_eq!(
        (e[1].0.as_str(), e[1].1.as_str(), e[1].2),
        ("unconfirmed_lesson", "pending", alert_due)
    );
    assert_eq!(e[0].3, format!("confirm_nudge:{a}:v1"));

    // B confirms (from the push action), C is cancelled: their escalations are withdrawn.
    let path = confirm_path(&pool, b).await;
    let (status, _) = post_json(&api, &format!("{path}/push")).await;
    assert_eq!(status, 200);
    api.post(&format!("/api/bookings/{c}/cancel"), serde_json::json!({}))
        .await
        .expect(200);
    for id in [b, c] {
        let e = escalations(&pool, id).await;
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|x| x.1 == "cancelled"), "{e:?}");
    }

    // One second before the nudge is due, nothing goes, although its job runs (early) meanwhile.
    hand.set(nudge_due - chrono::Duration::seconds(1));
    let worker = w.spawn_worker(clock.clone());
    tokio::time::sleep(Duration::from_secs(5)).await; // the job's real due moment passes
    assert!(sent(&pool, a, "confirm_nudge").await.is_empty(), "not before its moment");
    assert!(w.sms.received().is_empty());

    // At its moment: one SMS to the student, asking for C.
    hand.set(nudge_due);
    let got = try_wait_until("the nudge sent", LONG, || async {
        Ok(Some(sent(&pool, a, "confirm_nudge").await).filter(|v| !v.is_empty()))
    })
    .await
    .unwrap();
    assert_eq!(got, vec![("sms".to_owned(), nudge_due)]);
    let sms = w.sms.received();
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(sms[0].to, "+447700900311");
    assert!(sms[0].body.contains("reply C"), "{}", sms[0].body);
    assert!(sent(&pool, a, "unconfirmed_lesson").await.is_empty(), "the alert is not due yet");
    let skipped: String = try_wait_until("no nudge for the student with SMS off", LONG, || async {
        let r: Option<Option<String>> = sqlx::query_scalar(
            "SELECT d.skip_reason FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
             WHERE n.booking_id = $1 AND n.type = 'confirm_nudge' AND d.status = 'skipped'",
        )
        .bind(z)
        .fetch_optional(&pool)
        .await?;
        Ok(r.flatten())
    })
    .await
    .unwrap();
    assert!(skipped.contains("switched off"), "{skipped}");

    // The alert at its moment: by push to the instructor (first: push → SMS → email).
    hand.set(alert_due);
    let got = try_wait_until("the alert sent", LONG, || async {
        Ok(Some(sent(&pool, a, "unconfirmed_lesson").await).filter(|v| !v.is_empty()))
    })
    .await
    .unwrap();
    assert_eq!(got, vec![("push".to_owned(), alert_due)]);

    // B's and C's withdrawn escalations were due at the same moments: once the worker has run
    // their jobs, nothing was sent for them.
    let withdrawn: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM notifications WHERE booking_id = ANY($1) AND type IN ('confirm_nudge', 'unconfirmed_lesson')")
            .bind(vec![b, c])
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(withdrawn.len(), 4);
    try_wait_until("the withdrawn escalations' jobs run", LONG, || async {
        let mut open = 0i64;
        for id in &withdrawn {
            open += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND encode(job, 'escape') LIKE $2 AND status NOT IN ('Done', 'Killed')",
            )
            .bind(dashlight_core::jobs::QUEUE_NOTIFICATIONS)
            .bind(format!("%\"notification_id\":{id},%"))
            .fetch_one(&pool)
            .await?;
        }
        Ok((open == 0).then_some(()))
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
    assert_eq!(sent(&pool, a, "confirm_nudge").await.len(), 1);
    assert_eq!(sent(&pool, a, "unconfirmed_lesson").await.len(), 1);
    for id in [b, c] {
        assert!(sent(&pool, id, "confirm_nudge").await.is_empty());
        assert!(sent(&pool, id, "unconfirmed_lesson").await.is_empty());
    }
    assert_eq!(w.sms.received().len(), 1, "one SMS in all");
    let alerts = w.push.received().len();
    // Tom's pushes (the only device): his new booking's alert and A's unconfirmed-lesson alert.
    assert_eq!(alerts, 2, "{alerts} pushes");
}

#[tokio::test]
async fn a_rescheduled_lessons_escalations_move_with_it() {
    let mut w = World::start().await;
    w.config.confirm_nudge_before = Some(Duration::from_secs(12 * 3600));
    w.config.confirm_alert_before = Some(Duration::from_secs(3 * 3600));
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let pool = w.pool().clone();
    let student = w.person("student", "Oscar", Some("+447700900321")).await;
    let instructor = w.person("instructor", "Ellen", None).await;
    let start = (Utc::now() + chrono::Duration::days(2)).with_timezone(&Utc);
    let start = start - chrono::Duration::nanoseconds(start.timestamp_subsec_nanos() as i64);
    let booking = w.book(&student, &instructor, start, Utc::now()).await.id;
    // Confirmed before the move: the confirmation was for the old time.
    let path = confirm_path(&pool, booking).await;
    assert_eq!(post_json(&api, &format!("{path}/push")).await.0, 200);
    let e = escalations(&pool, booking).await;
    assert!(e.iter().all(|x| x.1 == "cancelled"), "{e:?}");

    let new_start = start + chrono::Duration::days(1);
    api.post(
        &format!("/api/bookings/{booking}/reschedule"),
        serde_json::json!({"start_time": new_start, "end_time": new_start + chrono::Duration::hours(1)}),
    )
    .await
    .expect(200);
    assert_eq!(confirmation(&pool, booking).await, (None, None), "asked again for the new time");
    let e = escalations(&pool, booking).await;
    let open: Vec<_> = e.iter().filter(|x| x.1 == "pending").collect();
    assert_eq!(open.len(), 2, "{e:?}");
    assert_eq!(
        (open[0].0.as_str(), open[0].2, open[0].3.as_str()),
        (
            "confirm_nudge",
            new_start - chrono::Duration::hours(12),
            format!("confirm_nudge:{booking}:v2").as_str()
        )
    );
    assert_eq!(
        (open[1].0.as_str(), open[1].2),
        ("unconfirmed_lesson", new_start - chrono::Duration::hours(3))
    );

    // Moved again, unconfirmed this time: the v2 ones are withdrawn, v3 ones made.
    let third = new_start + chrono::Duration::hours(2);
    api.post(
        &format!("/api/bookings/{booking}/reschedule"),
        serde_json::json!({"start_time": third, "end_time": third + chrono::Duration::hours(1)}),
    )
    .await
    .expect(200);
    let e = escalations(&pool, booking).await;
    let open: Vec<_> = e.iter().filter(|x| x.1 == "pending").collect();
    assert_eq!(open.len(), 2, "{e:?}");
    assert!(open.iter().all(|x| x.3.ends_with(":v3")), "{open:?}");
    assert_eq!(open[0].2, third - chrono::Duration::hours(12));
    assert_eq!(e.iter().filter(|x| x.1 == "cancelled").count(), 4);
    // The reminders' confirmation link still names the lesson.
    assert_eq!(confirm_path(&pool, booking).await, path);
    // The booking's timeline says what comes next.
    let t = api.get(&format!("/api/bookings/{booking}/timeline")).await.expect(200);
    assert_eq!(t["next_escalation"]["kind"], "confirm_nudge", "{t}");
    let due: DateTime<Utc> = serde_json::from_value(t["next_escalation"]["due_at"].clone()).unwrap();
    assert_eq!(due, third - chrono::Duration::hours(12));
    assert!(t["student_confirmed_via"].is_null());
}

// ---------------------------------------------------------------------------------------------
// Measured
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_rollup_counts_reminded_confirmed_and_no_shows_per_first_reminder_channel() {
    use dashlight_core::{
        bookings::{self, Outcome},
        jobs::{PeriodicJob, PeriodicTask},
        states::ConfirmedVia,
    };
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let pool = w.pool().clone();
    let instructor = w.person("instructor", "Ellen", None).await;
    let mut students = Vec::new();
    for i in 0..7 {
        students.push(w.person("student", &format!("Rollup{i}"), None).await);
    }
    // The lessons of 5 March 2030 (London is on UTC then), booked two days before.
    let day = Utc.with_ymd_and_hms(2030, 3, 5, 0, 0, 0).unwrap();
    let booked = day - chrono::Duration::days(2);
    let mut ids = Vec::new();
    for (i, s) in students.iter().enumerate() {
        let start = day + chrono::Duration::hours(9 + i as i64);
        ids.push(w.book(s, &instructor, start, booked).await);
    }
    // Deliveries of a lesson's reminder at `offset`, sent on `channel` at `start - offset + 1 s`.
    let remind = |b: &bookings::Booking, offset: &'static str, channel: &'static str| {
        let pool = pool.clone();
        let (id, start) = (b.id, b.start_time);
        async move {
            let hours = if offset == "24h" { 24 } else { 2 };
            let at = start - chrono::Duration::hours(hours) + chrono::Duration::seconds(1);
            sqlx::query(
                "INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, sent_at)
                 SELECT id, $2, 'target', 'sent', 1, $3 FROM notifications WHERE booking_id = $1 AND dedupe_key LIKE '%:' || $4 || ':v1'",
            )
            .bind(id)
            .bind(channel)
            .bind(at)
            .bind(offset)
            .execute(&pool)
            .await
            .unwrap();
            at
        }
    };
    let mut conn = pool.acquire().await.unwrap();
    let mins = chrono::Duration::minutes;
    // 0: push, confirmed 10 min after, completed.   1: push, confirmed 30 min after, no-show.
    // 2: push, not confirmed, no-show.              3: SMS first (a later push too), confirmed 20 min after.
    // 4: email, not confirmed, left as it is.       5: reminded by push but cancelled: not counted.
    // 6: never reminded: not counted.
    let at0 = remind(&ids[0], "24h", "push").await;
    let at1 = remind(&ids[1], "24h", "push").await;
    remind(&ids[2], "24h", "push").await;
    let at3 = remind(&ids[3], "24h", "sms").await;
    remind(&ids[3], "2h", "push").await;
    remind(&ids[4], "24h", "email").await;
    remind(&ids[5], "24h", "push").await;
    for (i, via, at) in [
        (0, ConfirmedVia::Push, at0 + mins(10)),
        (1, ConfirmedVia::Email, at1 + mins(30)),
        (3, ConfirmedVia::Sms, at3 + mins(20)),
    ] {
        let done = bookings::confirm(&mut conn, ids[i].id, via, at).await.unwrap();
        assert!(matches!(done, bookings::Confirmation::Confirmed(_)));
    }
    bookings::finish(&mut conn, ids[0].id, Outcome::Completed).await.unwrap();
    bookings::finish(&mut conn, ids[1].id, Outcome::NoShow).await.unwrap();
    bookings::finish(&mut conn, ids[2].id, Outcome::NoShow).await.unwrap();
    bookings::cancel(&mut conn, &w.booking_settings(), ids[5].id, None, booked)
        .await
        .unwrap();
    drop(conn);

    // The periodic rollup the next day, twice: the same figures.
    let tick = day + chrono::Duration::days(1) + chrono::Duration::hours(12);
    let ctx = dashlight_worker::periodic::Context::new(&w.config, pool.clone(), Clock::system());
    for _ in 0..2 {
        dashlight_worker::periodic::run(
            &ctx,
            &PeriodicJob {
                task: PeriodicTask::AnalyticsRollup,
                tick,
            },
        )
        .await
        .unwrap();
    }
    let body = api
        .get("/api/analytics/confirmations?from=2030-03-04&to=2030-03-06")
        .await
        .expect(200);
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str()),
        (Some("2030-03-04"), Some("2030-03-06"))
    );
    type Row = (String, String, i64, i64, Option<f64>, i64, i64);
    let rows: Vec<Row> = body["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().to_owned(),
                r["channel"].as_str().unwrap().to_owned(),
                r["reminded"].as_i64().unwrap(),
                r["confirmed"].as_i64().unwrap(),
                r["confirm_minutes_p50"].as_f64(),
                r["no_shows_confirmed"].as_i64().unwrap(),
                r["no_shows_unconfirmed"].as_i64().unwrap(),
            )
        })
        .collect();
    let d = "2030-03-05".to_owned();
    assert_eq!(
        rows,
        vec![
            (d.clone(), "email".into(), 1, 0, None, 0, 0),
            (d.clone(), "push".into(), 3, 2, Some(20.0), 1, 1),
            (d.clone(), "sms".into(), 1, 1, Some(20.0), 0, 0),
        ],
        "{body:#}"
    );
    let push = &body["days"][1];
    assert!((push["confirm_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    // Bad ranges are refused.
    api.get("/api/analytics/confirmations?from=2030-03-06&to=2030-03-04")
        .await
        .expect(422);
    api.get("/api/analytics/confirmations?from=yesterday").await.expect(422);
}

#[tokio::test]
async fn the_demo_school_has_a_confirmations_history() {
    let w = World::start().await;
    let summary = dashlight_core::demo::seed(w.pool(), &w.booking_settings(), Utc::now())
        .await
        .unwrap();
    assert!(summary.history >= 40, "{summary:?}");
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let body = api.get("/api/analytics/confirmations").await.expect(200);
    let days = body["days"].as_array().unwrap();
    let channels: std::collections::BTreeSet<&str> = days.iter().map(|r| r["channel"].as_str().unwrap()).collect();
    assert_eq!(channels.into_iter().collect::<Vec<_>>(), ["email", "push", "sms"], "{body:#}");
    let sum = |f: &str| days.iter().map(|r| r[f].as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum("reminded") as usize, summary.history);
    assert!(sum("confirmed") > 0 && sum("confirmed") < sum("reminded"));
    assert!(sum("no_shows_unconfirmed") > 0, "{body:#}");
}

// ---------------------------------------------------------------------------------------------
// The service worker's Confirm action, in Chromium
// ---------------------------------------------------------------------------------------------

/// A DevTools protocol command sent through chromedriver (`goog/cdp/execute`).
#[derive(Debug)]
struct Cdp(&'static str, Value);

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/goog/cdp/execute", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(serde_json::json!({"cmd": self.0, "params": self.1}).to_string()),
        )
    }
}

/// The notifications the service worker shows: `[title, [action, ...]]`.
async fn shown(c: &fantoccini::Client) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let v = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.serviceWorker.getRegistration('/')
               .then(r => r ? r.getNotifications() : [])
               .then(ns => done(ns.map(n => [n.title, (n.actions || []).map(a => a.action)])), e => done([['error: ' + e, []]]));",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_workers_confirm_action_confirms_the_lesson_in_chromium() {
    let driver = dashlight_tests::browser::Driver::start()
        .await
        .expect("chromedriver (run `.ci/setup-browser` if it is missing)");
    let w = World::start().await;
    let student = w.person("student", "Amelia", None).await;
    let instructor = w.person("instructor", "Priya", None).await;
    w.device(&student, "amelia-phone").await;
    let worker = w.spawn_worker(Clock::system());
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    // The 24 h reminder falls due in a few seconds and goes by push (the student's phone).
    let now = Utc::now();
    let booking = w
        .book(&student, &instructor, now + chrono::Duration::seconds(24 * 3600 + 3), now)
        .await
        .id;
    // The booking confirmation goes by push too; the reminder is the one with a lesson_reminder tag.
    let pushed = w.push.wait_for(2, LONG).await.expect("the reminder pushed");
    let payload: Value = pushed
        .iter()
        .map(|p| serde_json::from_slice::<Value>(&p.payload).unwrap())
        .find(|p| p["tag"].as_str().is_some_and(|t| t.starts_with("lesson_reminder:")))
        .unwrap_or_else(|| panic!("no reminder among {pushed:?}"));
    let path = confirm_path(w.pool(), booking).await;
    assert_eq!(
        payload["actions"],
        serde_json::json!([{"action": "confirm", "title": "Confirm"}]),
        "{payload}"
    );
    assert_eq!(payload["confirm_url"], Value::from(format!("{path}/push")), "{payload}");
    let token: String = sqlx::query_scalar("SELECT access_token FROM users WHERE id = $1")
        .bind(student.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();

    let c = driver.browser((430, 1400)).await.expect("a Chromium session");
    let outcome = async {
        use anyhow::{Context as _, ensure};
        let origin = api.base.clone();
        c.goto(&format!("{origin}/me/{token}")).await?;
        c.wait().at_most(LONG).for_element(fantoccini::Locator::Id("lessons")).await?;
        c.issue_cmd(Cdp(
            "Browser.grantPermissions",
            serde_json::json!({"origin": origin, "permissions": ["notifications"]}),
        ))
        .await
        .context("granting notifications")?;
        let sw = c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 navigator.serviceWorker.register('/sw.js', { scope: '/' })
                   .then(() => navigator.serviceWorker.ready)
                   .then(r => done(r.active.scriptURL), e => done('error: ' + e));",
                vec![],
            )
            .await?;
        ensure!(sw == format!("{origin}/sw.js"), "registered: {sw}");
        // The reminder as the worker pushed it, handed to the service worker by DevTools.
        let _ = c.issue_cmd(Cdp("ServiceWorker.enable", serde_json::json!({}))).await;
        let deadline = std::time::Instant::now() + LONG;
        let actions = loop {
            for id in 0..16 {
                let sent = c
                    .issue_cmd(Cdp(
                        "ServiceWorker.deliverPushMessage",
                        serde_json::json!({"origin": origin, "registrationId": id.to_string(), "data": payload.to_string()}),
                    ))
                    .await;
                if sent.is_ok() {
                    break;
                }
            }
            let got = try_wait_until("the reminder shown", Duration::from_secs(5), || async {
                let s = shown(&c).await?;
                Ok(s.into_iter().find(|(t, _)| t.starts_with("Lesson in")).map(|(_, a)| a))
            })
            .await;
            match got {
                Ok(a) => break a,
                Err(e) if std::time::Instant::now() > deadline => anyhow::bail!("the reminder was never shown: {e}"),
                Err(_) => {}
            }
        };
        ensure!(actions == ["confirm"], "the notification offers Confirm: {actions:?}");
        ensure!(confirmation(w.pool(), booking).await.0.is_none(), "not confirmed by being shown");

        // Click Confirm: a notificationclick with action 'confirm', dispatched inside the worker
        // through a DevTools session attached to it.
        let targets = c.issue_cmd(Cdp("Target.getTargets", serde_json::json!({}))).await?;
        let infos = targets
            .get("targetInfos")
            .or_else(|| targets.pointer("/value/targetInfos"))
            .cloned()
            .unwrap_or_default();
        let target = infos
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "service_worker" && t["url"].as_str().is_some_and(|u| u.ends_with("/sw.js")))
            .and_then(|t| t["targetId"].as_str().map(str::to_owned))
            .with_context(|| format!("the service worker's DevTools target: {targets}"))?;
        let attached = c
            .issue_cmd(Cdp(
                "Target.attachToTarget",
                serde_json::json!({"targetId": target, "flatten": false}),
            ))
            .await
            .context("attaching to the service worker")?;
        let session = attached
            .get("sessionId")
            .or_else(|| attached.pointer("/value/sessionId"))
            .and_then(Value::as_str)
            .with_context(|| format!("a session: {attached}"))?
            .to_owned();
        let click = "self.registration.getNotifications().then(function (ns) {
             var n = ns.filter(function (x) { return x.data && x.data.confirm_url; })[0];
             self.dispatchEvent(new NotificationEvent('notificationclick', { notification: n, action: 'confirm' }));
           })";
        let message = serde_json::json!({"id": 1, "method": "Runtime.evaluate", "params": {"expression": click}}).to_string();
        c.issue_cmd(Cdp(
            "Target.sendMessageToTarget",
            serde_json::json!({"sessionId": session, "message": message}),
        ))
        .await
        .context("evaluating in the service worker")?;
        let confirmed = try_wait_until("the booking confirmed from the push action", LONG, || async {
            Ok(confirmation(w.pool(), booking).await.1)
        })
        .await?;
        ensure!(confirmed == "push", "confirmed via {confirmed}");
        // The worker tells the student it worked.
        let titles = try_wait_until("the answer shown", LONG, || async {
            let s = shown(&c).await?;
            Ok(s.iter().any(|(t, _)| t == "Lesson confirmed").then_some(s))
        })
        .await?;
        eprintln!("service worker shows {titles:?}");
        anyhow::Ok(())
    }
    .await;
    c.close().await.expect("closing the browser");
    outcome.unwrap();
    let told = count(
        w.pool(),
        "SELECT count(*) FROM notifications WHERE booking_id = $1 AND type = 'student_confirmed'",
        booking,
    )
    .await;
    assert_eq!(told, 1);
    api.stop().await;
    worker.stop().await.unwrap();
    drop(driver);
}

/// The dashboard's Confirmations page over the demo school: the call list and a filled chart. Its
/// screenshot (`<target>/test-artifacts/confirmations/confirmations.png`) is the one in
/// docs/confirmations.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirmations_page_shows_the_call_list_and_the_chart_in_chromium() {
    let driver = dashlight_tests::browser::Driver::start()
        .await
        .expect("chromedriver (run `.ci/setup-browser` if it is missing)");
    let mut w = World::start().await;
    w.config.confirm_nudge_before = Some(Duration::from_secs(12 * 3600));
    w.config.confirm_alert_before = Some(Duration::from_secs(3 * 3600));
    let now = Utc::now();
    dashlight_core::demo::seed(w.pool(), &w.booking_settings(), now).await.unwrap();
    let late = w.person("student", "Ivy", Some("+447700900399")).await;
    let instructor = w.person("instructor", "Sam", None).await;
    w.book(&late, &instructor, now + chrono::Duration::minutes(95), now).await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let token = w.config.admin_api_token.clone().unwrap();

    let c = driver.browser((1280, 1100)).await.expect("a Chromium session");
    let outcome = async {
        use anyhow::ensure;
        use fantoccini::Locator;
        c.goto(&format!("{}/sign-in?next=/confirmations", api.base)).await?;
        let input = c.wait().at_most(LONG).for_element(Locator::Id("token")).await?;
        input.send_keys(&token).await?;
        c.find(Locator::Id("sign-in")).await?.click().await?;
        c.wait().at_most(LONG).for_element(Locator::Id("confirmations-chart")).await?;
        let bars = c.find_all(Locator::Css("#confirmations-chart rect")).await?.len();
        ensure!(bars >= 20, "the chart has bars: {bars}");
        let channels = c.find_all(Locator::Css("#channels tbody tr")).await?.len();
        ensure!(channels == 3, "a row per first reminder channel: {channels}");
        let calls = c.find(Locator::Id("calls")).await?.text().await?;
        ensure!(
            calls.contains("Ivy Tester") && calls.contains("+447700900399"),
            "on the call list: {calls}"
        );
        let png = c.screenshot().await?;
        let dir = dashlight_tests::browser::artifacts(env!("CARGO_TARGET_TMPDIR"), "confirmations");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("confirmations.png"), png)?;
        anyhow::Ok(())
    }
    .await;
    c.close().await.expect("closing the browser");
    outcome.unwrap();
    api.stop().await;
    drop(driver);
}
