//! Hostile input, third round: what one person's link can make the system do, the brake on
//! wrong tokens, the HTTP server's limits, the metrics' labels, the SMS and calendar hooks.
//! Each test is named after what it guards (docs/security.md says what is refused and why).

use std::time::{Duration, Instant};

use chrono::Utc;
use dashlight_core::Clock;
use dashlight_tests::{
    api::{RunningApi, TOKEN, spawn_api},
    sms::post_signed,
    wait::try_wait_until,
    world::World,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LONG: Duration = Duration::from_secs(90);

async fn post_json(api: &RunningApi, path: &str, body: &Value) -> dashlight_tests::api::Reply {
    dashlight_tests::api::Reply::read(
        api.http
            .post(format!("{}{path}", api.base))
            .header("sec-fetch-site", "same-origin")
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn page_token(api: &RunningApi, user_id: i64) -> String {
    let link = api.post(&format!("/api/users/{user_id}/access-link"), json!({})).await.expect(200);
    link["url"].as_str().unwrap().rsplit('/').next().unwrap().to_owned()
}

/// A 20 KB push endpoint from someone's own page used to be stored, and then broke the
/// worker's claim of every notification in the same batch. It is refused at both routes
/// (naming the field), the schema refuses it for an active device, and everyone else's
/// notifications are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_page_cannot_hold_back_anyone_elses_notifications() {
    let w = World::start().await;
    let amelia = w.person("student", "Amelia", None).await;
    let priya = w.person("instructor", "Priya", None).await;
    let mallory = w.person("student", "Mallory", None).await;
    w.device(&priya, "priya-phone").await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let token = page_token(&api, mallory.user_id).await;

    let mut sub = w.push.subscribe("mallory-browser").to_json();
    let endpoint = sub["endpoint"].as_str().unwrap().to_owned();
    sub["endpoint"] = json!(format!("{endpoint}?{}", "x".repeat(20_000)));
    post_json(&api, &format!("/me/{token}/devices"), &sub)
        .await
        .expect_error(422, "invalid_value", Some("endpoint"));
    // Just over the limit, through the admin route too.
    let over = format!("{endpoint}?{}", "x".repeat(1024 - endpoint.len()));
    assert_eq!(over.len(), 1025);
    api.post(
        &format!("/api/users/{}/devices", mallory.user_id),
        json!({"device_id": "long", "push_endpoint": over, "p256dh": sub["keys"]["p256dh"], "auth": sub["keys"]["auth"]}),
    )
    .await
    .expect_error(422, "invalid_value", Some("push_endpoint"));
    // Keys of the wrong decoded length name their field.
    let mut short = w.push.subscribe("mallory-2").to_json();
    short["keys"]["auth"] = json!("AAAAAAAAAAAAAAAAAAAAAAAA");
    post_json(&api, &format!("/me/{token}/devices"), &short)
        .await
        .expect_error(422, "invalid_value", Some("keys.auth"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_devices WHERE user_id = $1")
        .bind(mallory.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    // Written around the API, an active over-long endpoint is refused by the schema.
    let direct =
        sqlx::query("INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, 'direct', $2, 'k', 'a')")
            .bind(mallory.user_id)
            .bind(format!("https://push.example/{}", "x".repeat(20_000)))
            .execute(w.pool())
            .await;
    assert!(direct.is_err(), "the schema refuses an active over-long endpoint");

    // Everyone else's notifications go out: Priya's push and Amelia's email for a booking,
    // and Mallory's own email too.
    let worker = w.spawn_worker(Clock::system());
    let now = Utc::now();
    w.book(&amelia, &priya, now + chrono::Duration::days(3), now).await;
    w.book(&mallory, &priya, now + chrono::Duration::days(4), now).await;
    w.push.wait_for(2, LONG).await.expect("Priya's two pushes");
    let pool = w.pool().clone();
    try_wait_until("every notification settled", LONG, || {
        let pool = pool.clone();
        async move {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status IN ('pending', 'processing') AND due_at <= now()")
                    .fetch_one(&pool)
                    .await?;
            Ok((open == 0).then_some(()))
        }
    })
    .await
    .unwrap();
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE n.due_at <= now() AND d.status NOT IN ('sent', 'delivered', 'skipped')",
    )
    .fetch_one(w.pool())
    .await
    .unwrap();
    assert_eq!(failed, 0, "{:?}", w.delivery_statuses().await);
    api.stop().await;
    worker.stop().await.unwrap();
}

/// At most 10 active devices per person (an 11th switches off the oldest), and a
/// rate limit on registrations from the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_per_person_are_capped_and_registrations_rate_limited() {
    let w = World::start().await;
    let ben = w.person("student", "Ben", None).await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let token = page_token(&api, ben.user_id).await;
    let mut ids = Vec::new();
    for i in 0..11 {
        let sub = w.push.subscribe(&format!("ben-{i}")).to_json();
        let d = post_json(&api, &format!("/me/{token}/devices"), &sub).await.expect(201);
        ids.push(d["id"].as_i64().unwrap());
    }
    let active: Vec<i64> = sqlx::query_scalar("SELECT id FROM user_devices WHERE user_id = $1 AND active ORDER BY id")
        .bind(ben.user_id)
        .fetch_all(w.pool())
        .await
        .unwrap();
    assert_eq!(active, ids[1..].to_vec(), "the oldest was switched off");
    let reason: Option<String> = sqlx::query_scalar("SELECT disabled_reason FROM user_devices WHERE id = $1")
        .bind(ids[0])
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert!(reason.unwrap().contains("at most 10"));
    // The burst is 20 registrations; then 429 with Retry-After.
    let mut refused = None;
    for i in 11..40 {
        let sub = w.push.subscribe(&format!("ben-{i}")).to_json();
        let r = post_json(&api, &format!("/me/{token}/devices"), &sub).await;
        if r.status.as_u16() == 429 {
            refused = Some(i);
            r.expect_error(429, "too_many_requests", None);
            break;
        }
        r.expect(201);
    }
    // The 21st in a row (one more if a minute went by meanwhile).
    assert!(refused.is_some_and(|i| (20..=22).contains(&i)), "refused at {refused:?}");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM user_devices WHERE user_id = $1 AND active")
        .bind(ben.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(active, 10);
    api.stop().await;
}

/// Rotating a leaked link shuts its holder out: the devices registered from the page
/// are switched off and the calendar feed's address changes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_link_switches_off_page_devices_and_the_calendar_feed() {
    let w = World::start().await;
    let cara = w.person("student", "Cara", None).await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let token = page_token(&api, cara.user_id).await;
    let sub = w.push.subscribe("leaked-browser").to_json();
    let d = post_json(&api, &format!("/me/{token}/devices"), &sub).await.expect(201);
    let by_operator = w.device(&cara, "registered-by-the-school").await;
    let old_calendar: String = sqlx::query_scalar("SELECT calendar_token FROM users WHERE id = $1")
        .bind(cara.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    api.get_open(&format!("/calendar/{old_calendar}.ics")).await.expect(200);

    api.post(&format!("/api/users/{}/access-link/rotate", cara.user_id), json!({}))
        .await
        .expect(200);
    let devices: Vec<(i64, bool)> = sqlx::query_as("SELECT id, active FROM user_devices WHERE user_id = $1 ORDER BY id")
        .bind(cara.user_id)
        .fetch_all(w.pool())
        .await
        .unwrap();
    assert_eq!(devices, vec![(d["id"].as_i64().unwrap(), false), (by_operator, true)]);
    api.get_open(&format!("/calendar/{old_calendar}.ics"))
        .await
        .expect_error(404, "not_found", None);
    let (status, _) = get_raw(&api, &format!("/me/{token}")).await;
    assert_eq!(status, 404);
    api.stop().await;
}

async fn get_raw(api: &RunningApi, path: &str) -> (u16, String) {
    let r = api.http.get(format!("{}{path}", api.base)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A calendar token of the wrong form (a NUL was a 500) is a 404 before any query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calendar_tokens_are_not_found() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    for path in [
        "/calendar/%00.ics",
        "/calendar/abc%00def.ics",
        "/calendar/%00abc.ics",
        "/calendar/a%20b.ics",
        "/calendar/%E2%80%AE.ics",
        "/calendar/%27%3B--.ics",
    ] {
        api.get_open(path).await.expect_error(404, "not_found", None);
    }
    let long = format!("/calendar/{}.ics", "a".repeat(300));
    api.get_open(&long).await.expect_error(404, "not_found", None);
    api.stop().await;
}

/// The right token is never refused by the brake; each credential has its own brake;
/// `TRUSTED_PROXIES` decides whose address `X-Forwarded-For` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brake_never_refuses_the_right_token_and_each_hook_has_its_own() {
    const INBOUND: &str = "inbound-token-0123456789abcdefghijklmnop";
    let mut w = World::start().await;
    w.config.auth_failure_limit = 2;
    w.config.inbound_email_token = Some(INBOUND.into());
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let call = |token: &'static str, path: &'static str, xff: Option<&'static str>| {
        let mut req = api.http.get(format!("{}{path}", api.base)).bearer_auth(token);
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let email = |token: &'static str| {
        let req = api
            .http
            .post(format!("{}/hooks/email/inbound", api.base))
            .bearer_auth(token)
            .header("content-type", "message/rfc822")
            .body("From: someone@example.com\r\nTo: office@school.test\r\nSubject: hello\r\n\r\nhi\r\n");
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Lock this address out on /api.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call("wrong-token", "/api/queues", None).await);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // The right token still works, on /api and on the dashboard's sign-in.
    assert_eq!(call(TOKEN, "/api/queues", None).await, 200);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = no_redirects
        .post(format!("{}/sign-in", api.base))
        .form(&[("token", TOKEN), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert!(signed_in.headers().get("set-cookie").is_some(), "signed in while locked out");
    // The email hook has its own brake: the mail server is not locked out by /api's failures.
    assert_eq!(email(INBOUND).await, 200);
    for _ in 0..4 {
        email("wrong-inbound-token-0123456789abcdef").await;
    }
    assert_eq!(email("wrong-inbound-token-0123456789abcdef").await, 429);
    assert_eq!(email(INBOUND).await, 200, "the right token is never refused");
    api.stop().await;

    // Without trusted proxies, X-Forwarded-For is ignored: one address, locked out.
    let plain = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let call = |xff: &'static str| {
        let req = plain
            .http
            .get(format!("{}/api/queues", plain.base))
            .bearer_auth("wrong-token")
            .header("x-forwarded-for", xff);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..3 {
        call("203.0.113.1").await;
    }
    assert_eq!(call("203.0.113.2").await, 429, "the header names nobody without TRUSTED_PROXIES");
    plain.stop().await;

    // Behind a trusted proxy (the loopback peer), each forwarded client has its own count.
    w.config.http_server.trusted_proxies = dashlight_core::config::parse_trusted_proxies("127.0.0.1/32").unwrap();
    let proxied = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let call = |xff: &'static str| {
        let req = proxied
            .http
            .get(format!("{}/api/queues", proxied.base))
            .bearer_auth("wrong-token")
            .header("x-forwarded-for", xff);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call("203.0.113.1").await);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(call("203.0.113.2").await, 401, "another client behind the proxy is not locked out");
    proxied.stop().await;
}

/// Invented methods and paths do not become label values: the number of series stays
/// bounded however many are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_and_paths_do_not_grow_the_metrics() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let series = |text: &str| text.lines().filter(|l| l.starts_with("dashlight_http_requests_total")).count();
    // Every route's series once, so what follows can only add new ones by inventing.
    get_raw(&api, "/healthz").await;
    get_raw(&api, "/no/such/route").await;
    let (_, before) = get_raw(&api, "/metrics").await;
    let before_count = series(&before);
    let mut invented = Vec::new();
    for i in 0..300 {
        let method = format!("M{i}X{}", "Q".repeat(i % 7));
        let path = format!("/invented-{i}/{}", "z".repeat(i % 11));
        invented.push((method.clone(), path.clone()));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let status = api.http.request(m, format!("{}{path}", api.base)).send().await.unwrap().status();
        assert!(status.is_client_error(), "{method} {path}: {status}");
        // An invented method on a real route, too.
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        api.http.request(m, format!("{}/healthz", api.base)).send().await.unwrap();
    }
    let (_, after) = get_raw(&api, "/metrics").await;
    for (method, path) in &invented {
        assert!(!after.contains(method.as_str()), "{method} is a label value");
        assert!(!after.contains(path.as_str()), "{path} is a label value");
    }
    let grown = series(&after).saturating_sub(before_count);
    assert!(grown <= 12, "600 invented requests added {grown} series");
    assert!(after.contains("method=\"other\""), "they share one label value");
    api.stop().await;
}

/// Slowloris: connections that send partial headers are closed after the header-read
/// timeout, a stalled request body after the idle timeout, and connections over the limit at
/// once; then the server answers as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_and_the_connection_limit_holds() {
    let mut w = World::start().await;
    w.config.http_server.header_read_timeout = Duration::from_millis(1500);
    w.config.http_server.idle_timeout = Duration::from_millis(1500);
    w.config.http_server.max_connections = 8;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let addr = api.base.trim_start_matches("http://").to_owned();

    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..7 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    // The eighth stalls in its body.
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    body.write_all(b"POST /hooks/sms/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nMessageSid=")
        .await
        .unwrap();
    // Over the limit: closed at once, without an answer.
    let mut extra = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        extra.push(s);
    }
    for mut s in extra {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
            .await
            .expect("a connection over the limit is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0, "no answer over the limit: {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    // The partial headers: closed within the header-read timeout (and not long after).
    for mut s in slow {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed within the header-read timeout")
            .unwrap_or(0);
        // hyper may answer 408 before closing; never a 200.
        assert!(!String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1400), "not closed before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "closed within the timeout: {elapsed:?}");
    // The stalled body: the request fails and the connection ends.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), body.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a stalled body is cut after the idle timeout");
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&rest)
    );

    // The slots are free again.
    api.get_open("/healthz").await.expect(200);
    api.stop().await;
}

/// An inbound text must be for this account and carry a well-formed `MessageSid`: a
/// captured, signed request re-cut into a new `MessageSid` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_texts_need_this_account_and_a_real_message_sid() {
    const PUBLIC: &str = "https://school.example";
    let mut w = World::start().await;
    w.config.public_base_url = PUBLIC.into();
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let account = w.sms.account_sid().to_owned();
    let good_sid = "SM0123456789abcdef0123456789abcdef";
    let post = |params: Vec<(&'static str, String)>| {
        let (http, base, token) = (api.http.clone(), api.base.clone(), w.sms.auth_token().to_owned());
        async move {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let res = post_signed(&http, &base, PUBLIC, "/hooks/sms/inbound", &token, &pairs).await;
            dashlight_tests::api::Reply::read(res).await
        }
    };
    let text = |sid: &str, acct: &str| {
        vec![
            ("From", "+447700900321".to_owned()),
            ("Body", "HELP".to_owned()),
            ("MessageSid", sid.to_owned()),
            ("AccountSid", acct.to_owned()),
        ]
    };
    // The re-cut replay: a signed `MessageSid=SMcap0001` + `NumMedia=0` sent as one field.
    post(text("SMcap0001NumMedia0", &account))
        .await
        .expect_error(422, "invalid_value", Some("MessageSid"));
    post(text(good_sid, "ACsomebody-else"))
        .await
        .expect_error(422, "invalid_value", Some("AccountSid"));
    let mut no_account = text(good_sid, &account);
    no_account.pop();
    post(no_account).await.expect_error(422, "missing_field", Some("AccountSid"));
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM sms_replies")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(kept, 0, "nothing kept from refused texts");
    let ok = post(text(good_sid, &account)).await;
    assert_eq!(ok.status.as_u16(), 200, "{}", ok.text);
    api.stop().await;
}

/// A bounce as an MTA writes it, for the delivery whose VERP address is `verp`.
fn bounce(verp: &str, diagnostic: &str) -> String {
    format!(
        "Return-Path: <>\r\nDelivered-To: {verp}\r\nFrom: MAILER-DAEMON@mx.test\r\nTo: {verp}\r\nAuto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nUndelivered.\r\n\r\n\
--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n\
Final-Recipient: rfc822; gone@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n\
--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{verp}>\r\nSubject: x\r\n\r\n--b1--\r\n"
    )
}

/// One bounce verdict per delivery (a replay with a byte changed does not suppress
/// again an address an operator lifted), and VERP tokens older than 30 days are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_applies_once_per_delivery_and_old_verp_tokens_are_ignored() {
    let db = dashlight_tests::db::TestDb::new().await;
    let user: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, role, first_name, last_name) VALUES ('gone@b.test', 'student', 'G', 'B') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let delivery = |key: &'static str, sent_days_ago: i32| {
        let pool = db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key)
                 VALUES ($1, 'lesson_reminder', 't', 'c', '{email}', 'all', $2) RETURNING id",
            )
            .bind(user)
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO notification_deliveries (notification_id, channel, target, status, sent_at, attempts, created_at)
                 VALUES ($1, 'email', 'gone@b.test', 'sent', now() - make_interval(days => $2), 1, now() - make_interval(days => $2))
                 RETURNING id",
            )
            .bind(n)
            .bind(sent_days_ago)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let fresh = delivery("fresh", 1).await;
    let old = delivery("old", 31).await;
    let mut config = db.config();
    config.inbound_email_token = Some(TOKEN.into());
    let api = spawn_api(&config, db.pool.clone(), Clock::system()).await;
    let key = dashlight_core::signing::load_from(&db.pool).await.unwrap();
    let verp = |id: i64| dashlight_core::signing::verp_address(&key, id, &config.mail_bounce_domain);
    let post = |raw: String| api.post_raw("/hooks/email/inbound", Some("message/rfc822"), raw);

    let first = post(bounce(&verp(fresh), "550 5.1.1 no such user")).await.expect(200);
    assert_eq!(first["verdict"], "bounced", "{first}");
    assert_eq!(first["suppressed"], true);
    let suppression: i64 = sqlx::query_scalar("SELECT id FROM suppressions WHERE target = 'gone@b.test'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The operator lifts it; a replay with one byte changed must not put it back.
    api.call(reqwest::Method::DELETE, &format!("/api/suppressions/{suppression}"), None)
        .await
        .expect(204);
    let replay = post(bounce(&verp(fresh), "550 5.1.1 no such user!")).await.expect(200);
    assert_eq!(replay["verdict"], "duplicate", "{replay}");
    assert_eq!(replay["suppressed"], false);
    assert!(replay["receipt_id"].is_null());
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions WHERE target = 'gone@b.test'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(again, 0, "the lifted suppression stays lifted");

    // A delivery sent 31 days ago: its VERP token no longer counts.
    let late = post(bounce(&verp(old), "550 5.1.1 no such user")).await.expect(200);
    assert_eq!(late["verdict"], "unknown_delivery", "{late}");
    assert!(late["detail"].as_str().unwrap().contains("30 days"), "{late}");
    let suppressed: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(suppressed, 0);
    api.stop().await;
}

/// A status callback that arrives before the worker recorded its send's message id is
/// kept, and applied once the message id is recorded (the reminder sweep adopts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_callback_that_overtakes_its_send_is_applied_once_recorded() {
    const PUBLIC: &str = "https://school.example";
    let mut w = World::start().await;
    w.config.public_base_url = PUBLIC.into();
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let ana = w.person("student", "Ana", Some("+447700900555")).await;
    let notification: i64 = sqlx::query_scalar(
        "INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key, status)
         VALUES ($1, 'lesson_reminder', 't', 'c', '{sms}', 'all', 'overtaken', 'processing') RETURNING id",
    )
    .bind(ana.user_id)
    .fetch_one(w.pool())
    .await
    .unwrap();
    let delivery: i64 = sqlx::query_scalar(
        "INSERT INTO notification_deliveries (notification_id, channel, target, status) VALUES ($1, 'sms', '+447700900555', 'pending') RETURNING id",
    )
    .bind(notification)
    .fetch_one(w.pool())
    .await
    .unwrap();
    let sid = "SMfeedfacefeedfacefeedfacefeedface";
    // The provider's callback comes first.
    let res = post_signed(
        &api.http,
        &api.base,
        PUBLIC,
        "/hooks/sms/status",
        w.sms.auth_token(),
        &[
            ("MessageSid", sid),
            ("MessageStatus", "delivered"),
            ("AccountSid", w.sms.account_sid()),
        ],
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM early_receipts WHERE provider_message_id = $1 AND adopted_at IS NULL")
        .bind(sid)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(kept, 1, "the callback is kept, not dropped");
    // Nothing to adopt yet.
    let mut tx = w.pool().begin().await.unwrap();
    assert_eq!(dashlight_core::receipts::adopt_early(&mut tx).await.unwrap(), 0);
    tx.commit().await.unwrap();
    // Then the recorder stores the send with the provider's message id.
    sqlx::query(
        "UPDATE notification_deliveries SET status = 'sent', provider_message_id = $2, sent_at = now(), attempts = 1 WHERE id = $1",
    )
    .bind(delivery)
    .bind(sid)
    .execute(w.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE notifications SET status = 'done' WHERE id = $1")
        .bind(notification)
        .execute(w.pool())
        .await
        .unwrap();
    // The sweep adopts it; the worker applies it like any receipt.
    let mut tx = w.pool().begin().await.unwrap();
    assert_eq!(dashlight_core::receipts::adopt_early(&mut tx).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let worker = w.spawn_worker(Clock::system());
    let pool = w.pool().clone();
    try_wait_until("the delivery to be delivered", LONG, || {
        let pool = pool.clone();
        async move {
            let s: String = sqlx::query_scalar("SELECT status FROM notification_deliveries WHERE id = $1")
                .bind(delivery)
                .fetch_one(&pool)
                .await?;
            Ok((s == "delivered").then_some(()))
        }
    })
    .await
    .unwrap();
    let receipts: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_receipts WHERE delivery_id = $1")
        .bind(delivery)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(receipts, 1);
    let mut tx = w.pool().begin().await.unwrap();
    assert_eq!(dashlight_core::receipts::adopt_early(&mut tx).await.unwrap(), 0, "adopted once");
    tx.commit().await.unwrap();
    api.stop().await;
    worker.stop().await.unwrap();
}

/// After signing out, no other spelling of the same session cookie (`v1.0<expiry>…`,
/// `v1.+<expiry>…`) gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_session_stays_out_in_every_spelling() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/sign-in", api.base))
        .form(&[("token", TOKEN), ("next", "/")])
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let value = set.split(';').next().unwrap().trim_start_matches("dashlight_session=").to_owned();
    let with_cookie = |v: String| {
        let req = http
            .get(format!("{}/api/queues", api.base))
            .header("cookie", format!("dashlight_session={v}"));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(with_cookie(value.clone()).await, 200);
    let out = http
        .post(format!("{}/sign-out", api.base))
        .header("cookie", format!("dashlight_session={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 303);
    let (expiry, tag) = value.strip_prefix("v1.").unwrap().split_once('.').unwrap();
    for v in [
        value.clone(),
        format!("v1.0{expiry}.{tag}"),
        format!("v1.+{expiry}.{tag}"),
        format!("v1.00{expiry}.{tag}"),
        format!("\"{value}\""),
    ] {
        assert_eq!(with_cookie(v.clone()).await, 401, "{v} must not get in after sign-out");
    }
    api.stop().await;
}
