//! "Hearing back", the SMS half (docs/hearing-back.md), against the real system on loopback: a worker and
//! the admin API over a fresh database, the Twilio-compatible SMS API, SMTP and push peers.
//! Status callbacks and inbound texts are posted as Twilio posts them, signed with a signer
//! written from Twilio's documentation and checked against its published examples.
//!
//! Each lesson is booked 2 h (the only reminder offset here) and a few seconds ahead, so its
//! reminder falls due at once; the students have no push device, so the reminder goes by SMS
//! (`first`: push → SMS → email).

use std::time::Duration;

use chrono::Utc;
use dashlight_core::Clock;
use dashlight_tests::{
    api::{RunningApi, spawn_api},
    sms::{post_signed, twilio_signature},
    wait::try_wait_until,
    world::{Person, World},
};
use serde_json::Value;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(90);
const PUBLIC: &str = "https://school.example";

struct Setup {
    w: World,
    api: RunningApi,
    _worker: dashlight_tests::world::WorkerHandle,
}

async fn setup() -> Setup {
    let mut w = World::start().await;
    w.config.public_base_url = PUBLIC.into();
    w.config.reminder_offsets = vec![Duration::from_secs(2 * 3600)];
    w.config.school_name = "Greenway Driving School".into();
    w.config.mail_from = "Greenway <office@greenway.test>".into();
    let worker = w.spawn_worker(Clock::system());
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    Setup { w, api, _worker: worker }
}

/// Books a lesson whose 2 h reminder is due in a moment; returns the booking id.
async fn lesson_now(s: &Setup, student: &Person, instructor: &Person) -> i64 {
    let start = Utc::now() + chrono::Duration::hours(2) + chrono::Duration::seconds(2);
    s.w.book(student, instructor, start, Utc::now()).await.id
}

async fn scalar<T>(pool: &PgPool, sql: &str, id: i64) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits for the reminder SMS of `booking` to be recorded `sent`; returns (delivery id, sid).
async fn reminder_sms_sent(s: &Setup, booking: i64) -> (i64, String) {
    let pool = s.w.pool().clone();
    try_wait_until("the reminder SMS recorded sent", WAIT, || {
        let pool = pool.clone();
        async move {
            let row: Option<(i64, Option<String>)> = sqlx::query_as(
                "SELECT d.id, d.provider_message_id FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
                 WHERE n.booking_id = $1 AND n.type = 'lesson_reminder' AND d.channel = 'sms' AND d.status = 'sent'",
            )
            .bind(booking)
            .fetch_optional(&pool)
            .await
            .unwrap();
            Ok(row.and_then(|(id, sid)| sid.map(|sid| (id, sid))))
        }
    })
    .await
    .unwrap()
}

async fn delivery_status(pool: &PgPool, id: i64) -> String {
    scalar(pool, "SELECT status FROM notification_deliveries WHERE id = $1", id).await
}

async fn wait_status(pool: &PgPool, id: i64, want: &str) {
    let pool = pool.clone();
    try_wait_until(&format!("delivery {id} {want}"), WAIT, || {
        let pool = pool.clone();
        async move { Ok((delivery_status(&pool, id).await == want).then_some(())) }
    })
    .await
    .unwrap();
}

/// Waits until every receipt job is done (the worker has applied every report so far).
async fn receipts_applied(pool: &PgPool) {
    let pool = pool.clone();
    try_wait_until("every receipt job done", WAIT, || {
        let pool = pool.clone();
        async move {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM apalis.jobs WHERE convert_from(job, 'UTF8')::jsonb ? 'receipt_id' AND status NOT IN ('Done', 'Killed')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            Ok((open == 0).then_some(()))
        }
    })
    .await
    .unwrap();
}

async fn status_callback(s: &Setup, params: &[(&str, &str)]) -> reqwest::Response {
    post_signed(&s.api.http, &s.api.base, PUBLIC, "/hooks/sms/status", s.w.sms.auth_token(), params).await
}

/// A well-formed Twilio message id (`SM` and 32 hex digits) standing for a short test name.
fn message_sid(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("SM{hex:0>32}")
}

async fn text(s: &Setup, from: &str, body: &str, sid: &str) -> (u16, String, String) {
    let sid = message_sid(sid);
    let params = [
        ("From", from),
        ("To", "+447700900000"),
        ("Body", body),
        ("MessageSid", sid.as_str()),
        ("AccountSid", s.w.sms.account_sid()),
    ];
    let res = post_signed(
        &s.api.http,
        &s.api.base,
        PUBLIC,
        "/hooks/sms/inbound",
        s.w.sms.auth_token(),
        &params,
    )
    .await;
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, res.text().await.unwrap())
}

/// Waits for an email to `to` whose subject or text contains `needle`; returns its subject.
async fn mail(s: &Setup, to: &str, needle: &str) -> String {
    try_wait_until(&format!("an email to {to} with {needle:?}"), WAIT, || async {
        Ok(s.w
            .smtp
            .messages()
            .iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r == to))
            .find_map(|m| {
                let parsed = mail_parser::MessageParser::default().parse(&m.data)?;
                let subject = parsed.subject().unwrap_or_default().to_owned();
                let text = parsed.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
                (subject.contains(needle) || text.contains(needle)).then_some(subject)
            }))
    })
    .await
    .unwrap()
}

/// Signs in to the dashboard; returns the session cookie.
async fn dashboard_session(s: &Setup) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = s.w.config.admin_api_token.clone().unwrap();
    let r = http
        .post(format!("{}/sign-in", s.api.base))
        .form(&[("token", token.as_str()), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

#[test]
fn the_signer_matches_twilios_published_examples() {
    // Twilio's "Webhooks security" page and its PHP library's documentation: the same URL,
    // token and parameters, with two sets of phone numbers.
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    for (phone, expected) in [
        ("+12349013030", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
        ("+14158675309", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    ] {
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", phone),
            ("Digits", "1234"),
            ("From", phone),
            ("To", "+18005551212"),
        ];
        assert_eq!(twilio_signature("12345", url, &params), expected);
    }
}

#[tokio::test]
async fn status_callbacks_move_deliveries_never_back_and_undelivered_falls_back_to_email() {
    let s = setup().await;
    let pool = s.w.pool().clone();
    let ana = s.w.person("student", "Ana", Some("+447700900111")).await;
    let ben = s.w.person("student", "Ben", Some("+447700900222")).await;
    let i1 = s.w.person("instructor", "Ida", None).await;
    let i2 = s.w.person("instructor", "Ivo", None).await;
    let a = lesson_now(&s, &ana, &i1).await;
    let b = lesson_now(&s, &ben, &i2).await;
    let (ana_sms, ana_sid) = reminder_sms_sent(&s, a).await;
    let (ben_sms, ben_sid) = reminder_sms_sent(&s, b).await;

    // Every SMS asks for status callbacks at PUBLIC_BASE_URL/hooks/sms/status, and the reminder
    // says how to reply.
    let sent = s.w.sms.accepted();
    let to_ana = sent.iter().find(|m| m.sid.as_deref() == Some(ana_sid.as_str())).unwrap();
    assert_eq!(to_ana.status_callback, format!("{PUBLIC}/hooks/sms/status"));
    assert!(to_ana.body.contains("Reply C to confirm, R to rearrange"), "{}", to_ana.body);

    // Forged or unsigned: 403, nothing kept, nothing moved.
    let params = [("MessageSid", ana_sid.as_str()), ("MessageStatus", "delivered")];
    let forged = s
        .api
        .http
        .post(format!("{}/hooks/sms/status", s.api.base))
        .header(
            "X-Twilio-Signature",
            twilio_signature("not-the-token", &format!("{PUBLIC}/hooks/sms/status"), &params),
        )
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let unsigned = s
        .api
        .http
        .post(format!("{}/hooks/sms/status", s.api.base))
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 403);
    // Signed for another URL (the signature covers the URL).
    let elsewhere = post_signed(
        &s.api.http,
        &s.api.base,
        "https://evil.example",
        "/hooks/sms/status",
        s.w.sms.auth_token(),
        &params,
    )
    .await;
    assert_eq!(elsewhere.status().as_u16(), 403);
    let kept: i64 = scalar(&pool, "SELECT count(*) FROM delivery_receipts WHERE delivery_id = $1", ana_sms).await;
    assert_eq!(kept, 0);
    assert_eq!(delivery_status(&pool, ana_sms).await, "sent");

    // Signed as Twilio signs: delivered.
    let res = status_callback(&s, &params).await;
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/xml"));
    wait_status(&pool, ana_sms, "delivered").await;

    // A late `sent`, a replayed `delivered` and a contradicting `undelivered`: never back.
    for status in ["sent", "delivered", "undelivered"] {
        let res = status_callback(&s, &[("MessageSid", &ana_sid), ("MessageStatus", status), ("ErrorCode", "30005")]).await;
        assert_eq!(res.status().as_u16(), 200);
    }
    receipts_applied(&pool).await;
    assert_eq!(delivery_status(&pool, ana_sms).await, "delivered");
    let kept: i64 = scalar(&pool, "SELECT count(*) FROM delivery_receipts WHERE delivery_id = $1", ana_sms).await;
    assert_eq!(kept, 4, "every report is kept");

    // undelivered (carrier failure): error code kept, and the reminder goes by email instead.
    let res = status_callback(
        &s,
        &[("MessageSid", &ben_sid), ("MessageStatus", "undelivered"), ("ErrorCode", "30003")],
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    wait_status(&pool, ben_sms, "undelivered").await;
    let error: String = scalar(&pool, "SELECT last_error FROM notification_deliveries WHERE id = $1", ben_sms).await;
    assert!(error.contains("30003"), "{error}");
    mail(&s, &ben.email, "Reminder: your driving lesson").await;
    let pool2 = pool.clone();
    try_wait_until("the email delivery sent", WAIT, || {
        let pool = pool2.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
                 WHERE n.booking_id = $1 AND n.type = 'lesson_reminder' AND d.channel = 'email' AND d.status = 'sent'",
            )
            .bind(b)
            .fetch_one(&pool)
            .await
            .unwrap();
            Ok((n == 1).then_some(()))
        }
    })
    .await
    .unwrap();

    // Listed, filtered and retried like failed.
    let list = s.api.get("/api/deliveries?status=undelivered&channel=sms").await.expect(200);
    let ids: Vec<i64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![ben_sms]);
    let timeline = s.api.get(&format!("/api/bookings/{a}/timeline")).await.expect(200);
    let statuses: Vec<&str> = timeline["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["deliveries"].as_array().unwrap().iter())
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert!(statuses.contains(&"delivered"), "{statuses:?}");
    s.api
        .post(&format!("/api/deliveries/{ben_sms}/retry"), serde_json::json!({}))
        .await
        .expect(202);
    s.w.sms.wait_for(3, WAIT).await.expect("the operator's retry sends the SMS again");

    // The day's rollup: what the provider reported, per channel, with the delivered rate.
    // (Ben's SMS is `sending` again after the retry; it was counted undelivered before.)
    let day = {
        let mut conn = pool.acquire().await.unwrap();
        let now = Utc::now();
        dashlight_worker::periodic::rollup::compute_day(&mut conn, now - chrono::Duration::hours(1), now + chrono::Duration::hours(1))
            .await
            .unwrap()
    };
    let school = &day[&None];
    assert_eq!(
        school.receipts.get("sms").copied().unwrap_or_default().0,
        1,
        "{:?}",
        school.receipts
    );
    assert_eq!(school.receipts_json()["sms"]["delivered"], 1);
    // A delivered SMS still counts as sent (accepted by the provider).
    assert!(school.deliveries.get("sms").is_some_and(|d| d.0 >= 1), "{:?}", school.deliveries);

    // An unknown message id is acknowledged and changes nothing; a missing field is named.
    let res = status_callback(&s, &[("MessageSid", "SMnope"), ("MessageStatus", "delivered")]).await;
    assert_eq!(res.status().as_u16(), 200);
    let res = status_callback(&s, &[("MessageStatus", "delivered")]).await;
    assert_eq!(res.status().as_u16(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["field"], "MessageSid");
}

#[tokio::test]
async fn stop_start_help_and_replies_by_sms() {
    let s = setup().await;
    let pool = s.w.pool().clone();
    let phone = "+447700900333";
    let cara = s.w.person("student", "Cara", Some(phone)).await;
    let instructors = [
        s.w.person("instructor", "Ian", None).await,
        s.w.person("instructor", "Isla", None).await,
        s.w.person("instructor", "Ivan", None).await,
    ];
    // A later lesson with no reminder sent yet: C must not confirm it.
    let later =
        s.w.book(&cara, &instructors[0], Utc::now() + chrono::Duration::days(5), Utc::now())
            .await
            .id;
    let first = lesson_now(&s, &cara, &instructors[0]).await;
    reminder_sms_sent(&s, first).await;

    // Forged: 403, nothing kept.
    let forged = s
        .api
        .http
        .post(format!("{}/hooks/sms/inbound", s.api.base))
        .header("X-Twilio-Signature", "bm9wZQ==")
        .form(&[("From", phone), ("Body", "STOP")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let kept: i64 = scalar(&pool, "SELECT count(*) FROM sms_replies WHERE $1 = $1", 0).await;
    assert_eq!(kept, 0);

    // C confirms the reminded lesson (not the later one) and alerts the instructor, once.
    let (status, ct, body) = text(&s, phone, "C", "SMc1").await;
    assert_eq!((status, ct.as_str()), (200, "application/xml"));
    assert!(
        body.contains("<Response><Message>Thanks, your lesson on") && body.contains("is confirmed"),
        "{body}"
    );
    let confirmed: Option<chrono::DateTime<Utc>> = scalar(&pool, "SELECT student_confirmed_at FROM bookings WHERE id = $1", first).await;
    assert!(confirmed.is_some());
    let not: Option<chrono::DateTime<Utc>> = scalar(&pool, "SELECT student_confirmed_at FROM bookings WHERE id = $1", later).await;
    assert!(not.is_none());
    let (status, _, again) = text(&s, phone, "C", "SMc1").await;
    assert_eq!((status, again), (200, body), "a replay answers the same and does nothing again");
    let alerts: i64 = scalar(
        &pool,
        "SELECT count(*) FROM notifications WHERE type = 'student_confirmed' AND user_id = $1",
        instructors[0].user_id,
    )
    .await;
    assert_eq!(alerts, 1);
    // The instructor is told by email (no push device).
    mail(&s, &instructors[0].email, "Confirmed: Cara").await;
    let timeline = s.api.get(&format!("/api/bookings/{first}/timeline")).await.expect(200);
    assert!(timeline["student_confirmed_at"].is_string(), "{timeline}");
    assert_eq!(timeline["replies"][0]["keyword"], "confirm");

    // R: the instructor and the school are alerted with the student's text.
    let (_, _, body) = text(&s, phone, "R can we do Thursday?", "SMr1").await;
    assert!(body.contains("rearrange"), "{body}");
    let to: Vec<(Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT user_id, recipient_email FROM notifications WHERE type = 'rearrange_request' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        to,
        vec![(Some(instructors[0].user_id), None), (None, Some("office@greenway.test".into()))]
    );
    // The school gets the request by email.
    mail(&s, "office@greenway.test", "can we do Thursday?").await;

    // Anything else: kept on the lesson's timeline, forwarded to the school; no answer.
    let (_, _, body) = text(&s, phone, "Running 5 minutes late <sorry>", "SMo1").await;
    assert!(!body.contains("<Message>"), "{body}");
    let timeline = s.api.get(&format!("/api/bookings/{first}/timeline")).await.expect(200);
    let bodies: Vec<&str> = timeline["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["C", "R can we do Thursday?", "Running 5 minutes late <sorry>"]);
    // The text is forwarded to the school.
    mail(&s, "office@greenway.test", "Running 5 minutes late").await;

    // The dashboard's timeline and deliveries pages show the confirmation, the texts and (below)
    // the suppressions.
    let cookie = dashboard_session(&s).await;
    let page = s
        .api
        .http
        .get(format!("{}/timeline?booking={first}", s.api.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Confirmed by the student"), "{html}");
    assert!(html.contains("Running 5 minutes late &lt;sorry&gt;"), "escaped: {html}");

    // HELP: the school's name and contact.
    let (_, _, body) = text(&s, phone, "help", "SMh1").await;
    assert!(
        body.contains("Greenway Driving School") && body.contains("office@greenway.test"),
        "{body}"
    );

    // STOP: SMS off, number suppressed, confirmation answered; the next reminder's SMS is
    // skipped `opted_out` and it goes by email.
    let (_, _, body) = text(&s, phone, "Stop", "SMs1").await;
    assert!(body.contains("unsubscribed") && body.contains("START"), "{body}");
    let sms_on: bool = scalar(
        &pool,
        "SELECT sms_notifications FROM user_preferences WHERE user_id = $1",
        cara.user_id,
    )
    .await;
    assert!(!sms_on);
    let list = s.api.get("/api/suppressions").await.expect(200);
    assert_eq!(list["items"][0]["target"], phone);
    assert_eq!(list["items"][0]["reason"], "opted_out");
    let html = s
        .api
        .http
        .get(format!("{}/deliveries", s.api.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Suppressed addresses and numbers") && html.contains(phone), "{html}");
    let second = lesson_now(&s, &cara, &instructors[1]).await;
    let pool2 = pool.clone();
    let skip: String = try_wait_until("the next reminder's SMS skipped", WAIT, || {
        let pool = pool2.clone();
        async move {
            let r: Option<Option<String>> = sqlx::query_scalar(
                "SELECT d.skip_reason FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
                 WHERE n.booking_id = $1 AND n.type = 'lesson_reminder' AND d.channel = 'sms' AND d.status = 'skipped'",
            )
            .bind(second)
            .fetch_optional(&pool)
            .await
            .unwrap();
            Ok(r.flatten())
        }
    })
    .await
    .unwrap();
    assert_eq!(skip, "opted_out");

    // START: back on, suppression lifted; the next reminder is an SMS again.
    let (_, _, body) = text(&s, phone, "START", "SMs2").await;
    assert!(body.contains("subscribed to Greenway Driving School texts again"), "{body}");
    let list = s.api.get("/api/suppressions").await.expect(200);
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let third = lesson_now(&s, &cara, &instructors[2]).await;
    reminder_sms_sent(&s, third).await;

    // Operators lift a suppression by id.
    text(&s, phone, "STOPALL", "SMs3").await;
    let list = s.api.get("/api/suppressions?channel=sms&reason=opted_out").await.expect(200);
    let id = list["items"][0]["id"].as_i64().unwrap();
    s.api
        .call(reqwest::Method::DELETE, &format!("/api/suppressions/{id}"), None)
        .await
        .expect(204);
    s.api
        .call(reqwest::Method::DELETE, &format!("/api/suppressions/{id}"), None)
        .await
        .expect_error(404, "not_found", None);
    s.api
        .get("/api/suppressions?channel=fax")
        .await
        .expect_error(422, "invalid_value", Some("channel"));
    // A text with no sender is refused naming the field.
    let res = post_signed(
        &s.api.http,
        &s.api.base,
        PUBLIC,
        "/hooks/sms/inbound",
        s.w.sms.auth_token(),
        &[("Body", "hi")],
    )
    .await;
    assert_eq!(res.status().as_u16(), 422);
}

#[tokio::test]
async fn twilio_21610_on_send_fails_and_suppresses_the_number() {
    let s = setup().await;
    let pool = s.w.pool().clone();
    let phone = "+447700900444";
    s.w.sms.set_response_for(phone, dashlight_tests::sms::SmsResponse::Unsubscribed);
    let dan = s.w.person("student", "Dan", Some(phone)).await;
    let i = s.w.person("instructor", "Iris", None).await;
    let b = lesson_now(&s, &dan, &i).await;
    let pool2 = pool.clone();
    try_wait_until("the number suppressed", WAIT, || {
        let pool = pool2.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM suppressions WHERE channel = 'sms' AND reason = 'opted_out' AND target = $1")
                    .bind(phone)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            Ok((n == 1).then_some(()))
        }
    })
    .await
    .unwrap();
    let status: String = scalar(
        &pool,
        "SELECT d.status FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE n.booking_id = $1 AND n.type = 'lesson_reminder' AND d.channel = 'sms'",
        b,
    )
    .await;
    assert_eq!(status, "failed");
    // The reminder goes by email instead.
    mail(&s, &dan.email, "Reminder: your driving lesson").await;
}
