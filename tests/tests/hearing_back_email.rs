//! Hearing back by email (docs/hearing-back.md, the email half), end to end on
//! loopback: a [`World`] (its own database, the loopback SMTP server), the admin API on
//! `127.0.0.1:0` and a worker. Emails really go out over SMTP; what the server captured (the
//! envelope's `MAIL FROM`, the headers) is checked, then bounces are built as postfix writes them
//! (RFC 3464 `multipart/report`) and posted to `/hooks/email/inbound` the way postfix's `pipe`
//! with curl posts them. What changed is read back from the database.
//!
//! Most tests check what the hooks produce (the receipt, the suppression, the opt-out, the job
//! that names the receipt); `a_bounce_makes_the_email_undelivered_and_the_next_one_skipped`
//! follows a bounce through the worker's recorder and planner to the next email.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use dashlight_core::{
    Clock,
    kinds::{Channel, Kind},
    notify::{self, NewNotification},
    people::OptOutSource,
    signing,
    states::DeliveryStatus,
};
use dashlight_tests::{
    api::{Reply, TOKEN},
    db::TestDb,
    smtp::ReceivedMail,
    wait::wait_until,
    world::{WorkerHandle, World},
};
use mail_parser::MessageParser;
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

/// How long anything may take on a loaded machine.
const LONG: Duration = Duration::from_secs(90);
/// The inbound hook's bearer token in these tests.
const INBOUND: &str = "inbound-token-0123456789abcdef0123456789";

struct Env {
    w: World,
    base: String,
    http: reqwest::Client,
    key: signing::Key,
    worker: Option<WorkerHandle>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Env {
    async fn start() -> Env {
        let mut w = World::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        w.config.public_base_url = base.clone();
        w.config.mail_from = "Dashlight School <no-reply@school.test>".into();
        w.config.mail_bounce_domain = "school.test".into();
        w.config.inbound_email_token = Some(INBOUND.into());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let (config, pool) = (w.config.clone(), w.pool().clone());
            async move {
                dashlight_admin_api::serve(&config, pool, Clock::system(), listener, async move {
                    let _ = rx.await;
                })
                .await
            }
        });
        let worker = w.spawn_worker(Clock::system());
        let key = signing::load_from(w.pool()).await.expect("signing key");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Env {
            w,
            base,
            http,
            key,
            worker: Some(worker),
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.w.pool()
    }

    async fn hook(&self, bearer: Option<&str>, content_type: &str, body: impl Into<reqwest::Body>) -> Reply {
        let mut req = self
            .http
            .post(format!("{}/hooks/email/inbound", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        Reply::read(req.send().await.expect("request")).await
    }

    async fn dsn(&self, body: String) -> Value {
        self.hook(Some(INBOUND), "message/rfc822", body).await.expect(200)
    }

    async fn scalar_i64(&self, sql: &'static str, id: i64) -> i64 {
        sqlx::query_scalar(sql).bind(id).fetch_one(self.pool()).await.expect(sql)
    }

    async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await.expect("worker stops");
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("API stops")
                .expect("no panic")
                .expect("no error");
        }
    }
}

/// A captured email with what its VERP sender names.
struct Sent {
    mail: ReceivedMail,
    delivery_id: i64,
    kind: String,
    token: String,
}

impl Sent {
    fn header(&self, name: &str) -> Option<String> {
        let msg = MessageParser::default().parse(&self.mail.data).expect("parses");
        msg.headers_raw()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// The original headers, as a DSN returns them, with `Return-Path` as the receiving MTA
    /// wrote it (the envelope sender).
    fn returned_headers(&self, return_path: &str) -> String {
        let raw = String::from_utf8_lossy(&self.mail.data);
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        let mut out = format!("Return-Path: <{return_path}>\r\n");
        let mut skipping = false;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if !skipping {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                continue;
            }
            skipping = line.to_ascii_lowercase().starts_with("return-path:");
            if !skipping {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out
    }
}

/// A delivery status notification as postfix's bounce daemon writes it: `multipart/report` with
/// a human part, the `message/delivery-status` part and the returned message (its headers only
/// as `text/rfc822-headers`, or whole as `message/rfc822`).
fn postfix_dsn(verp: &str, rcpt: &str, action: &str, status: &str, diagnostic: &str, returned: &str, whole: bool) -> String {
    let boundary = "8A1B2C3D4E.1764651600/mx.school.test";
    let (subject, human) = if action == "delayed" {
        (
            "Delayed Mail (still being retried)",
            "This is the mail system at host mx.school.test.\r\n\r\n####################################################################\r\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n####################################################################\r\n\r\nYour message could not be delivered for more than 4 hour(s).\r\nIt will be retried until it is 5 day(s) old.\r\n",
        )
    } else {
        (
            "Undelivered Mail Returned to Sender",
            "This is the mail system at host mx.school.test.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.\r\n\r\nFor further assistance, please send mail to postmaster.\r\n\r\n                   The mail system\r\n",
        )
    };
    let (returned_desc, returned_type) = if whole {
        ("Undelivered Message", "message/rfc822")
    } else {
        ("Undelivered Message Headers", "text/rfc822-headers")
    };
    let returned_body = if whole {
        format!("{returned}\r\nHi, your lesson is soon.\r\n")
    } else {
        returned.to_owned()
    };
    format!(
        "Return-Path: <>\r\n\
Delivered-To: {verp}\r\n\
X-Original-To: {verp}\r\n\
Received: by mx.school.test (Postfix)\r\n\
\tid 8A1B2C3D4E; Wed,  2 Dec 2026 05:00:00 +0000 (UTC)\r\n\
Date: Wed,  2 Dec 2026 05:00:00 +0000 (UTC)\r\n\
From: MAILER-DAEMON@mx.school.test (Mail Delivery System)\r\n\
Subject: {subject}\r\n\
To: {verp}\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"{boundary}\"\r\n\
Content-Transfer-Encoding: 8bit\r\n\
Message-Id: <20261202050000.8A1B2C3D4E@mx.school.test>\r\n\
\r\n\
This is a MIME-encapsulated message.\r\n\
\r\n\
--{boundary}\r\n\
Content-Description: Notification\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
{human}\r\n\
<{rcpt}>: host mx.example.org[203.0.113.5] said: {diagnostic}\r\n\
\r\n\
--{boundary}\r\n\
Content-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.school.test\r\n\
X-Postfix-Queue-ID: 8A1B2C3D4E\r\n\
X-Postfix-Sender: rfc822; {verp}\r\n\
Arrival-Date: Wed,  2 Dec 2026 04:59:58 +0000 (UTC)\r\n\
\r\n\
Final-Recipient: rfc822; {rcpt}\r\n\
Original-Recipient: rfc822;{rcpt}\r\n\
Action: {action}\r\n\
Status: {status}\r\n\
Remote-MTA: dns; mx.example.org\r\n\
Diagnostic-Code: smtp; {diagnostic}\r\n\
\r\n\
--{boundary}\r\n\
Content-Description: {returned_desc}\r\n\
Content-Type: {returned_type}\r\n\
\r\n\
{returned_body}\r\n\
--{boundary}--\r\n"
    )
}

/// Books a lesson (a confirmation to the student, an alert to the instructor) and sends the
/// student a lesson reminder now; returns the three emails as the SMTP server captured them.
async fn three_emails(env: &Env) -> (Vec<Sent>, i64, i64) {
    let w = &env.w;
    let student = w.person("student", "Amelia", None).await;
    let instructor = w.person("instructor", "Ivan", None).await;
    let now = Utc::now();
    let booking = w.book(&student, &instructor, dashlight_tests::api::lesson_start(10), now).await;
    let (data, booking_id): (Value, Option<i64>) =
        sqlx::query_as("SELECT data, booking_id FROM notifications WHERE type = 'lesson_reminder' AND booking_id = $1 LIMIT 1")
            .bind(booking.id)
            .fetch_one(env.pool())
            .await
            .expect("a reminder of the booking");
    let mut n = NewNotification::to_user(Kind::LessonReminder, student.user_id, format!("test-reminder-{}", booking.id), now);
    n.data = data;
    n.booking_id = booking_id;
    n.title = "Lesson reminder".into();
    let mut conn = env.pool().acquire().await.expect("conn");
    notify::create(&mut conn, n).await.expect("reminder").expect("new");
    drop(conn);

    let mails = w.smtp.wait_for_messages(3, LONG).await.expect("three emails");
    let mut out = Vec::new();
    for mail in mails {
        let local = mail
            .mail_from
            .strip_suffix("@school.test")
            .unwrap_or_else(|| panic!("VERP domain: {}", mail.mail_from));
        let token = local
            .strip_prefix("bounces+")
            .unwrap_or_else(|| panic!("VERP local part: {}", mail.mail_from))
            .to_owned();
        let delivery_id = env
            .key
            .verp_delivery(&token)
            .unwrap_or_else(|| panic!("the VERP token verifies: {token}"));
        let (kind, target): (String, String) = sqlx::query_as(
            "SELECT n.type, d.target FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id WHERE d.id = $1",
        )
        .bind(delivery_id)
        .fetch_one(env.pool())
        .await
        .expect("the delivery the token names");
        assert_eq!(
            mail.rcpt_to,
            vec![target.clone()],
            "the VERP token names the delivery to this recipient"
        );
        out.push(Sent {
            mail,
            delivery_id,
            kind,
            token,
        });
    }
    (out, student.user_id, instructor.user_id)
}

fn find<'a>(sent: &'a [Sent], kind: &str) -> &'a Sent {
    sent.iter().find(|s| s.kind == kind).unwrap_or_else(|| panic!("a {kind} email"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verp_bounces_and_the_hook() {
    let env = Env::start().await;
    let (sent, student_id, instructor_id) = three_emails(&env).await;
    let reminder = find(&sent, "lesson_reminder");
    let confirmed = find(&sent, "booking_confirmed");
    let alert = find(&sent, "booking_alert");

    // The envelope sender is the VERP address, and so is the Return-Path header.
    for s in &sent {
        assert_eq!(s.header("Return-Path").as_deref(), Some(format!("<{}>", s.mail.mail_from).as_str()));
        assert_eq!(signing::verp_address(&env.key, s.delivery_id, "school.test"), s.mail.mail_from);
    }
    let student_email = reminder.mail.rcpt_to[0].clone();
    let instructor_email = alert.mail.rcpt_to[0].clone();

    // A hard bounce of the reminder: undelivered, address suppressed, the job enqueued.
    let verp = reminder.mail.mail_from.clone();
    let bounce = postfix_dsn(
        &verp,
        &student_email,
        "failed",
        "5.1.1",
        "550 5.1.1 <amelia@school.test>: Recipient address rejected: User unknown in virtual mailbox table",
        &reminder.returned_headers(&verp),
        false,
    );
    let out = env.dsn(bounce.clone()).await;
    assert_eq!(out["verdict"], "bounced", "{out}");
    assert_eq!(out["delivery_id"], reminder.delivery_id);
    assert_eq!(out["suppressed"], true);
    let receipt_id = out["receipt_id"].as_i64().expect("a receipt");
    let (status, source, provider_status, error_code, detail): (String, String, Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT status, source, provider_status, error_code, detail FROM delivery_receipts WHERE id = $1")
            .bind(receipt_id)
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), source.as_str()), ("undelivered", "email_dsn"));
    assert_eq!(provider_status.as_deref(), Some("5.1.1"));
    assert_eq!(error_code.as_deref(), Some("550"));
    assert!(detail.unwrap_or_default().contains("User unknown"));
    let (target, reason, delivery): (String, String, Option<i64>) =
        sqlx::query_as("SELECT target, reason, delivery_id FROM suppressions WHERE channel = 'email'")
            .fetch_one(env.pool())
            .await
            .expect("one suppression");
    assert_eq!(
        (target, reason, delivery),
        (student_email.to_lowercase(), "bounced".to_owned(), Some(reminder.delivery_id))
    );
    let jobs = env
        .scalar_i64(
            "SELECT count(*) FROM apalis.jobs WHERE convert_from(job, 'UTF8')::jsonb ->> 'receipt_id' = $1::text",
            receipt_id,
        )
        .await;
    assert_eq!(jobs, 1, "the notification's job naming the receipt is enqueued for the recorder");

    // The same bounce again (an MTA retrying): recorded, nothing done twice.
    let again = env.dsn(bounce).await;
    assert_eq!(again["verdict"], "duplicate", "{again}");
    let receipts = env
        .scalar_i64(
            "SELECT count(*) FROM delivery_receipts WHERE delivery_id = $1",
            reminder.delivery_id,
        )
        .await;
    assert_eq!(receipts, 1);

    // A delay (4.x.x) of the instructor's alert, the whole message returned: a note only.
    let verp = alert.mail.mail_from.clone();
    let delayed = postfix_dsn(
        &verp,
        &instructor_email,
        "delayed",
        "4.4.1",
        "421 4.4.1 mx.example.org: Connection timed out",
        &alert.returned_headers(&verp),
        true,
    );
    let out = env.dsn(delayed).await;
    assert_eq!(out["verdict"], "delayed", "{out}");
    let note_id = out["receipt_id"].as_i64().expect("a note");
    let status: String = sqlx::query_scalar("SELECT status FROM delivery_receipts WHERE id = $1")
        .bind(note_id)
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(status, "note");
    let jobs = env
        .scalar_i64(
            "SELECT count(*) FROM apalis.jobs WHERE convert_from(job, 'UTF8')::jsonb ->> 'receipt_id' = $1::text",
            note_id,
        )
        .await;
    assert_eq!(jobs, 0, "a note moves nothing");
    let suppressed = env
        .scalar_i64("SELECT count(*) FROM suppressions WHERE delivery_id = $1", alert.delivery_id)
        .await;
    assert_eq!(suppressed, 0);

    // A forged VERP token (the alert's delivery id, a tag that is not ours): ignored.
    let mut raw = URL_SAFE_NO_PAD.decode(&alert.token).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x5a;
    let forged = format!("bounces+{}@school.test", URL_SAFE_NO_PAD.encode(&raw));
    let forged_dsn = postfix_dsn(
        &forged,
        &instructor_email,
        "failed",
        "5.1.1",
        "550 5.1.1 user unknown",
        &alert.returned_headers(&forged),
        false,
    );
    let out = env.dsn(forged_dsn).await;
    assert_eq!(out["verdict"], "unsigned", "{out}");
    assert_eq!(out["receipt_id"], Value::Null);
    let alert_receipts = env
        .scalar_i64(
            "SELECT count(*) FROM delivery_receipts WHERE delivery_id = $1 AND status <> 'note'",
            alert.delivery_id,
        )
        .await;
    assert_eq!(alert_receipts, 0);
    let suppressions: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(suppressions, 1, "only the real bounce suppressed anything");

    // A wrong or missing bearer token: 403, nothing recorded.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_emails")
        .fetch_one(env.pool())
        .await
        .unwrap();
    let body = postfix_dsn(&forged, &instructor_email, "failed", "5.1.1", "550 x", "", false);
    env.hook(Some("wrong-token"), "message/rfc822", body.clone())
        .await
        .expect_error(403, "forbidden", None);
    env.hook(None, "message/rfc822", body).await.expect_error(403, "forbidden", None);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_emails")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(before, after);

    // An out-of-office reply to the confirmation's VERP address: kept and ignored.
    let auto = format!(
        "Delivered-To: {verp}\r\nFrom: Amelia <{student_email}>\r\nTo: {verp}\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\nX-Autoreply: yes\r\nPrecedence: auto_reply\r\n\r\nI am away until Monday.\r\n",
        verp = confirmed.mail.mail_from
    );
    let out = env.dsn(auto).await;
    assert_eq!(out["verdict"], "auto_reply", "{out}");
    let confirmed_receipts = env
        .scalar_i64(
            "SELECT count(*) FROM delivery_receipts WHERE delivery_id = $1",
            confirmed.delivery_id,
        )
        .await;
    assert_eq!(confirmed_receipts, 0);

    // Garbage, the wrong media type, too large: never a 500.
    let out = env
        .hook(Some(INBOUND), "text/plain", b"\xff\xfe\0\0 not a message".to_vec())
        .await
        .expect(200);
    assert!(matches!(out["verdict"].as_str(), Some("unparseable" | "unsigned")), "{out}");
    env.hook(Some(INBOUND), "application/json", "{}")
        .await
        .expect_error(415, "unsupported_media_type", None);
    env.hook(Some(INBOUND), "message/rfc822", vec![b'a'; 2 * 1024 * 1024])
        .await
        .expect_error(413, "payload_too_large", None);
    let kept: Vec<(String, i32, Vec<u8>)> = sqlx::query_as("SELECT verdict, size_bytes, sha256 FROM inbound_emails ORDER BY id")
        .fetch_all(env.pool())
        .await
        .unwrap();
    let verdicts: Vec<&str> = kept.iter().map(|(v, _, _)| v.as_str()).collect();
    assert_eq!(verdicts[..5], ["bounced", "duplicate", "delayed", "unsigned", "auto_reply"]);
    assert!(kept.iter().all(|(_, size, sha)| *size > 0 && sha.len() == 32));

    // The worker side (the recorder applying the receipt, the planner skipping the suppressed
    // address) is not on this branch: nothing here waits for it.
    let _ = (student_id, instructor_id);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_links_and_preferences() {
    let env = Env::start().await;
    let (sent, student_id, instructor_id) = three_emails(&env).await;
    let reminder = find(&sent, "lesson_reminder");
    let confirmed = find(&sent, "booking_confirmed");
    let alert = find(&sent, "booking_alert");

    // List-Unsubscribe (link and mailto) and One-Click on kinds one may opt out of, not on
    // a booking confirmation.
    let token = env.key.unsubscribe_token(student_id, Kind::LessonReminder);
    let link = format!("{}/u/{token}", env.base);
    let mailto = format!("unsubscribe+{token}@school.test");
    assert_eq!(
        reminder.header("List-Unsubscribe").as_deref(),
        Some(format!("<{link}>, <mailto:{mailto}>").as_str())
    );
    assert_eq!(
        reminder.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(alert.header("List-Unsubscribe").is_some());
    assert_eq!(confirmed.header("List-Unsubscribe"), None);
    assert_eq!(confirmed.header("List-Unsubscribe-Post"), None);

    let opt_outs = |user: i64| {
        let pool = env.pool().clone();
        async move {
            sqlx::query_as::<_, (String, String)>("SELECT kind, source FROM email_opt_outs WHERE user_id = $1 ORDER BY kind")
                .bind(user)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };

    // GET (what a mail scanner does) shows a page and changes nothing.
    for _ in 0..2 {
        let res = env.http.get(&link).header("accept", "text/html").send().await.unwrap();
        assert_eq!(res.status(), 200);
        let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        let html = res.text().await.unwrap();
        assert!(html.contains("lesson reminders"), "{html}");
        assert!(html.contains(&format!("action=\"/u/{token}\"")), "{html}");
    }
    assert!(opt_outs(student_id).await.is_empty(), "a GET unsubscribes nobody");

    // RFC 8058 one-click POST: the kind is off on email for that user.
    let res = env
        .http
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        opt_outs(student_id).await,
        vec![("lesson_reminder".to_owned(), "unsubscribe_link".to_owned())]
    );
    // Again: harmless.
    let res = env.http.post(&link).body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let html = env
        .http
        .get(&link)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("You are unsubscribed"), "{html}");

    // A bad or forged token: 404 (a page for browsers, JSON otherwise), nothing changes.
    let mut forged = URL_SAFE_NO_PAD.decode(&token).unwrap();
    forged[7] ^= 1; // another user id, same tag
    let forged = URL_SAFE_NO_PAD.encode(forged);
    for t in ["nope", forged.as_str(), &env.key.verp_token(reminder.delivery_id)] {
        let res = env
            .http
            .post(format!("{}/u/{t}", env.base))
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{t}");
        let res = env
            .http
            .get(format!("{}/u/{t}", env.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{t}");
        assert!(res.text().await.unwrap().contains("Link not found"));
    }

    // The preferences API shows the opt-out and changes the set.
    let api = |method: reqwest::Method, path: String, body: Option<Value>| {
        let (http, base) = (env.http.clone(), env.base.clone());
        async move {
            let mut req = http.request(method, format!("{base}{path}")).bearer_auth(TOKEN);
            if let Some(b) = body {
                req = req.json(&b);
            }
            Reply::read(req.send().await.unwrap()).await
        }
    };
    let prefs = api(reqwest::Method::GET, format!("/api/users/{student_id}/preferences"), None)
        .await
        .expect(200);
    assert_eq!(prefs["email_opt_outs"], json!(["lesson_reminder"]));
    assert_eq!(prefs["email_notifications"], true);
    let base_prefs = json!({"email_notifications": true, "sms_notifications": true, "push_notifications": true, "quiet_hours": null});
    let mut body = base_prefs.clone();
    body["email_opt_outs"] = json!(["lesson_reminder", "booking_confirmed"]);
    api(reqwest::Method::PUT, format!("/api/users/{student_id}/preferences"), Some(body))
        .await
        .expect_error(422, "invalid_value", Some("email_opt_outs[1]"));
    let mut body = base_prefs.clone();
    body["email_opt_outs"] = json!(["no_such_kind"]);
    api(reqwest::Method::PUT, format!("/api/users/{student_id}/preferences"), Some(body))
        .await
        .expect_error(422, "invalid_value", Some("email_opt_outs[0]"));
    assert_eq!(opt_outs(student_id).await.len(), 1, "a refused PUT changes nothing");
    let mut body = base_prefs.clone();
    body["email_opt_outs"] = json!(["daily_agenda", "lesson_report"]);
    let saved = api(reqwest::Method::PUT, format!("/api/users/{student_id}/preferences"), Some(body))
        .await
        .expect(200);
    assert_eq!(saved["email_opt_outs"], json!(["daily_agenda", "lesson_report"]));
    // Without the field the opt-outs stay as they are.
    let saved = api(
        reqwest::Method::PUT,
        format!("/api/users/{student_id}/preferences"),
        Some(base_prefs),
    )
    .await
    .expect(200);
    assert_eq!(saved["email_opt_outs"], json!(["daily_agenda", "lesson_report"]));
    api(reqwest::Method::GET, "/api/users/999999/preferences".into(), None)
        .await
        .expect_error(404, "not_found", None);

    // The mailto: a message to unsubscribe+<token>@ (here the instructor's alerts) turns it off.
    let alert_token = env.key.unsubscribe_token(instructor_id, Kind::BookingAlert);
    let msg = format!(
        "Delivered-To: unsubscribe+{alert_token}@school.test\r\nFrom: Ivan <ivan@school.test>\r\nTo: unsubscribe+{alert_token}@school.test\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n"
    );
    let out = env.dsn(msg).await;
    assert_eq!(out["verdict"], "unsubscribed", "{out}");
    assert_eq!(
        opt_outs(instructor_id).await,
        vec![("booking_alert".to_owned(), "unsubscribe_link".to_owned())]
    );
    env.stop().await;
}

#[tokio::test]
async fn the_hook_is_off_without_its_token() {
    let db = TestDb::new().await;
    let api = dashlight_tests::api::spawn_api(&db.config(), db.pool.clone(), Clock::system()).await;
    let res = api
        .http
        .post(format!("{}/hooks/email/inbound", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body("To: x@y\r\n\r\nhi")
        .send()
        .await
        .unwrap();
    Reply::read(res).await.expect_error(404, "not_found", None);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_emails")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    api.stop().await;
}

/// Why the email of a notification was skipped, once the worker has planned it.
async fn email_skip_reason(pool: &sqlx::PgPool, nid: i64) -> String {
    wait_until("the worker plans the email (skipped)", LONG, || async move {
        let (status, reason): (String, Option<String>) =
            sqlx::query_as("SELECT status, skip_reason FROM notification_deliveries WHERE notification_id = $1 AND channel = 'email'")
                .bind(nid)
                .fetch_one(pool)
                .await
                .ok()?;
        (status == "skipped").then(|| reason.unwrap_or_default())
    })
    .await
    .unwrap()
}

/// Both ends together: a hard bounce posted to the hook is applied by the worker's recorder (the
/// email becomes `undelivered`, with the bounce's status and code, and is retryable like
/// `failed`), and the next email to the bounced address is `skipped` as `suppressed`, never sent.
/// An opted-out kind is `skipped` as `unsubscribed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_makes_the_email_undelivered_and_the_next_one_skipped() {
    let env = Env::start().await;
    let (sent, student_id, _) = three_emails(&env).await;
    let reminder = find(&sent, "lesson_reminder");
    let student_email = reminder.mail.rcpt_to[0].clone();
    let verp = reminder.mail.mail_from.clone();
    let bounce = postfix_dsn(
        &verp,
        &student_email,
        "failed",
        "5.1.1",
        "550 5.1.1 <amelia@school.test>: Recipient address rejected: User unknown",
        &reminder.returned_headers(&verp),
        false,
    );
    let out = env.dsn(bounce).await;
    assert_eq!(out["verdict"], "bounced", "{out}");

    let pool = env.pool().clone();
    let id = reminder.delivery_id;
    let error: Option<String> = wait_until("the recorder applies the bounce", LONG, || {
        let pool = pool.clone();
        async move {
            let (status, error): (String, Option<String>) =
                sqlx::query_as("SELECT status, last_error FROM notification_deliveries WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (status == "undelivered").then_some(error)
        }
    })
    .await
    .unwrap();
    let error = error.unwrap_or_default();
    assert!(error.contains("5.1.1"), "the bounce's status is kept: {error}");
    assert!(DeliveryStatus::RETRYABLE.contains(&DeliveryStatus::Undelivered));

    // The next email to the bounced address: skipped, suppressed, nothing on the wire.
    let before = env.w.smtp.messages().len();
    let now = Utc::now();
    let mut n = NewNotification::to_user(Kind::PackageLow, student_id, "after-the-bounce".into(), now);
    n.title = "One lesson left".into();
    let mut conn = env.pool().acquire().await.expect("conn");
    let nid = notify::create(&mut conn, n).await.expect("notification").expect("new");
    drop(conn);
    let reason = email_skip_reason(&pool, nid).await;
    assert_eq!(reason, "suppressed");

    // Lifting the suppression and opting out of the kind instead: skipped as unsubscribed.
    let mut conn = env.pool().acquire().await.expect("conn");
    dashlight_core::suppressions::lift_target(&mut conn, Channel::Email, &student_email)
        .await
        .unwrap();
    dashlight_core::people::set_email_opt_out(&mut conn, student_id, Kind::PackageLow, true, OptOutSource::Api)
        .await
        .unwrap();
    let mut n = NewNotification::to_user(Kind::PackageLow, student_id, "after-the-opt-out".into(), Utc::now());
    n.title = "One lesson left".into();
    let nid = notify::create(&mut conn, n).await.expect("notification").expect("new");
    drop(conn);
    let reason = email_skip_reason(&pool, nid).await;
    assert_eq!(reason, "unsubscribed");
    assert_eq!(
        env.w.smtp.messages().len(),
        before,
        "nothing was sent to the bounced or opted-out address"
    );
    env.stop().await;
}
