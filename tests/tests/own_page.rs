//! A page of one's own (docs/own-page.md), end to end against the admin API on loopback, a real
//! database, a real worker and the loopback SMTP server and push service.
//!
//! Server tests: every route of the page (bad, malformed and rotated tokens are 404 pages; no
//! other person's lessons, notifications or devices show or can be touched; writes from another
//! site are refused with 403; bad form fields are 422 naming the field), the personal link's API
//! and its email, the links in confirmation emails and in push payloads, the feed with every
//! channel switched off, the VAPID key and the service worker's headers.
//!
//! The browser test (Debian's headless Chromium over chromedriver, as the dashboard's, with
//! DevTools commands through chromedriver): the student's and the instructor's pages render
//! their lessons and feed and Mark read works; the button registers the service worker at
//! `/sw.js` (root scope); a push delivered with `ServiceWorker.deliverPushMessage` is shown with
//! our title (`registration.getNotifications()`); the page's own code path, with only
//! `PushManager.subscribe` replaced by a subscription of the loopback push service (headless
//! Chromium has no push service of its own to subscribe to), stores the device, which then
//! receives the next booking alert, decrypted by the loopback service and shown by the service
//! worker; quiet hours set on the page hold the push after that. Screenshots go to
//! `<target>/test-artifacts/own-page/`.

use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use dashlight_core::{
    Clock,
    kinds::Kind,
    notify::{self, NewNotification},
};
use dashlight_tests::{
    api::{Reply, RunningApi, spawn_api},
    wait::try_wait_until,
    world::{Person, World},
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(90);
/// What a browser sends when it navigates or posts a form: it gets pages, errors included.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// A client that does not follow redirects (the forms answer 303).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn link(api: &RunningApi, user_id: i64) -> (String, String) {
    let body = api
        .post_raw(&format!("/api/users/{user_id}/access-link"), None, "")
        .await
        .expect(200);
    let url = body["url"].as_str().unwrap().to_owned();
    let token = url.rsplit('/').next().unwrap().to_owned();
    (url, token)
}

async fn get(api: &RunningApi, path: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let res = client()
        .get(format!("{}{path}", api.base))
        .header("accept", BROWSER_ACCEPT)
        .send()
        .await
        .unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, res.text().await.unwrap())
}

/// A form post as a browser on the page sends it.
async fn form(api: &RunningApi, path: &str, body: &str, site: &str) -> (u16, Option<String>, String) {
    let res = client()
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", BROWSER_ACCEPT)
        .header("sec-fetch-site", site)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    (status, location, res.text().await.unwrap())
}

async fn post_json(api: &RunningApi, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut req = client().post(format!("{}{path}", api.base)).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::read(req.send().await.unwrap()).await
}

/// The subject and text part of an email, decoded.
fn body_text(raw: &[u8]) -> String {
    let m = mail_parser::MessageParser::default().parse(raw).expect("an email");
    format!(
        "{}\n{}",
        m.subject().unwrap_or_default(),
        m.body_text(0).map(|t| t.into_owned()).unwrap_or_default()
    )
}

async fn note(w: &World, p: &Person, key: &str, title: &str) -> i64 {
    let mut n = NewNotification::to_user(Kind::PackageLow, p.user_id, key.into(), Utc::now());
    n.title = title.into();
    n.content = format!("{title} (content)");
    n.data = json!({"package": {"name": "Ten lessons", "lessons_remaining": 1}});
    let mut conn = w.pool().acquire().await.unwrap();
    notify::create(&mut conn, n).await.unwrap().expect("new")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_only_its_owners_things_and_refuses_strangers() {
    let w = World::start().await;
    let amelia = w.person("student", "Amelia", None).await;
    let ben = w.person("student", "Ben", None).await;
    let priya = w.person("instructor", "Priya", None).await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let now = Utc::now();
    let mine = w.book(&amelia, &priya, now + chrono::Duration::days(3), now).await;
    let soon = w.book(&amelia, &priya, now + chrono::Duration::hours(5), now).await;
    let theirs = w.book(&ben, &priya, now + chrono::Duration::days(4), now).await;
    let xss = note(&w, &amelia, "xss", "<script>alert(1)</script>").await;
    let bens_note = note(&w, &ben, "bens", "Ben's private note").await;

    // The link: PUBLIC_BASE_URL/me/<64 hex>.
    let (url, token) = link(&api, amelia.user_id).await;
    assert!(url.starts_with(&format!("{}/me/", w.config.public_base_url)), "{url}");
    assert!(dashlight_core::access::well_formed(&token), "{token}");
    api.post(&format!("/api/users/{}/access-link", 999_999), json!({}))
        .await
        .expect_error(404, "not_found", None);
    api.post(&format!("/api/users/{}/access-link", amelia.user_id), json!({"sned": true}))
        .await
        .expect_error(422, "unknown_field", Some("sned"));
    // No admin token, no link.
    let r = Reply::read(
        client()
            .post(format!("{}/api/users/{}/access-link", api.base, amelia.user_id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);

    // The page: her lessons, her feed, nothing of Ben's; escaped; strict CSP.
    let (status, headers, html) = get(&api, &format!("/me/{token}")).await;
    assert_eq!(status, 200, "{html}");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(headers["referrer-policy"], "same-origin");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(html.contains("name=\"viewport\""));
    assert!(html.contains(&format!("id=\"booking-{}\"", mine.id)), "her lesson");
    assert!(html.contains(&format!("id=\"booking-{}\"", soon.id)), "her lesson today");
    assert!(!html.contains(&format!("id=\"booking-{}\"", theirs.id)), "not Ben's lesson");
    assert!(html.contains("Priya Tester") && html.contains("Station Road"));
    assert!(html.contains("Lesson booked"), "the confirmation is in her feed");
    assert!(html.contains(&format!("id=\"notification-{xss}\"")));
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>alert"),
        "escaped"
    );
    assert!(
        !html.contains("Ben&#x27;s private note") && !html.contains("Ben's private note"),
        "not Ben's feed"
    );
    assert!(!html.contains("Ben Tester"));
    assert_eq!(html.matches("<script").count(), 1, "only /assets/me.js");
    assert!(html.contains("Enable alerts on this device"));
    let cal: String = sqlx::query_scalar("SELECT calendar_token FROM users WHERE id = $1")
        .bind(amelia.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert!(html.contains(&format!("/calendar/{cal}.ics")), "the calendar feed address");
    // A cancel request by email for the lesson in three days, not for the one in five hours.
    let lesson = |id: i64| {
        let start = html.find(&format!("id=\"booking-{id}\"")).unwrap();
        html[start..start + html[start..].find("</li>").unwrap()].to_owned()
    };
    assert!(lesson(mine.id).contains("mailto:"), "{}", lesson(mine.id));
    assert!(!lesson(soon.id).contains("mailto:") && lesson(soon.id).contains("call the school"));

    // Wrong, malformed and rotated tokens: a 404 page, nothing else.
    for bad in ["0".repeat(64), "nope".into(), format!("{token}x"), token.to_uppercase()] {
        let (status, headers, html) = get(&api, &format!("/me/{bad}")).await;
        assert_eq!(status, 404, "{bad}");
        assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(!html.contains("Amelia"));
    }
    // Clients that do not ask for HTML get the API's JSON errors.
    api.get_open(&format!("/me/{}", "0".repeat(64)))
        .await
        .expect_error(404, "not_found", None);
    let rotated = api
        .post_raw(&format!("/api/users/{}/access-link/rotate", amelia.user_id), None, "")
        .await
        .expect(200);
    let new_token = rotated["url"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    assert_ne!(new_token, token);
    assert_eq!(get(&api, &format!("/me/{token}")).await.0, 404, "the old link is dead");
    let (_, _, old_read) = form(&api, &format!("/me/{token}/notifications/{xss}/read"), "", "same-origin").await;
    assert!(old_read.contains("Page not found"));
    assert_eq!(get(&api, &format!("/me/{new_token}")).await.0, 200);
    let token = new_token;

    // Marking read: her own (303 back), not Ben's (404), not from another site (403).
    let (status, location, _) = form(&api, &format!("/me/{token}/notifications/{xss}/read"), "", "same-origin").await;
    assert_eq!(status, 303);
    assert!(location.unwrap().starts_with(&format!("/me/{token}")));
    let read: Option<chrono::DateTime<Utc>> = sqlx::query_scalar("SELECT read_at FROM notifications WHERE id = $1")
        .bind(xss)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert!(read.is_some());
    let (status, _, _) = form(&api, &format!("/me/{token}/notifications/{bens_note}/read"), "", "same-origin").await;
    assert_eq!(status, 404);
    let (status, _, _) = form(&api, &format!("/me/{token}/notifications/abc/read"), "", "same-origin").await;
    assert_eq!(status, 404);
    let other = note(&w, &amelia, "other", "Another one").await;
    let (status, _, _) = form(&api, &format!("/me/{token}/notifications/{other}/read"), "", "cross-site").await;
    assert_eq!(status, 403);
    let evil = client()
        .post(format!("{}/me/{token}/notifications/{other}/read", api.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let marked: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE id = ANY($1) AND read_at IS NOT NULL")
        .bind(vec![bens_note, other])
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(marked, 0, "neither Ben's nor the cross-site one was marked");
    let (_, _, html) = get(&api, &format!("/me/{token}")).await;
    assert!(html.contains(&format!("id=\"notification-{other}\" class=\"notification unread\"")));
    assert!(html.contains(&format!("id=\"notification-{xss}\" class=\"notification\"")));

    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_from_the_page_are_saved_checked_and_csrf_safe() {
    let w = World::start().await;
    let amelia = w.person("student", "Amelia", None).await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let (_, token) = link(&api, amelia.user_id).await;
    let path = format!("/me/{token}/preferences");
    let prefs = || async {
        sqlx::query_as::<_, (bool, bool, bool, Option<chrono::NaiveTime>, Option<chrono::NaiveTime>)>(
            "SELECT email_notifications, sms_notifications, push_notifications, quiet_hours_start, quiet_hours_end FROM user_preferences WHERE user_id = $1",
        )
        .bind(amelia.user_id)
        .fetch_one(w.pool())
        .await
        .unwrap()
    };
    let before = prefs().await;

    let good = "email_notifications=on&push_notifications=on&quiet_hours_start=22%3A00&quiet_hours_end=07%3A00&email_opt_out=lesson_report&email_opt_out=package_low";
    // From another site: refused, nothing saved.
    let (status, _, html) = form(&api, &path, good, "cross-site").await;
    assert_eq!(status, 403, "{html}");
    let res = client()
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(prefs().await, before);

    // From the page: saved, 303 back.
    let (status, location, _) = form(&api, &path, good, "same-origin").await;
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some(format!("/me/{token}?done=preferences#preferences").as_str())
    );
    let t = |s: &str| chrono::NaiveTime::parse_from_str(s, "%H:%M").unwrap();
    assert_eq!(prefs().await, (true, false, true, Some(t("22:00")), Some(t("07:00"))));
    let outs: Vec<(String, String)> = sqlx::query_as("SELECT kind, source FROM email_opt_outs WHERE user_id = $1 ORDER BY kind")
        .bind(amelia.user_id)
        .fetch_all(w.pool())
        .await
        .unwrap();
    assert_eq!(
        outs,
        vec![
            ("lesson_report".into(), "own_page".into()),
            ("package_low".into(), "own_page".into())
        ]
    );
    let mut conn = w.pool().acquire().await.unwrap();
    assert_eq!(
        dashlight_core::people::email_opt_outs(&mut conn, amelia.user_id).await.unwrap(),
        vec![Kind::LessonReport, Kind::PackageLow]
    );
    drop(conn);
    let (_, _, html) = get(&api, &format!("/me/{token}?done=preferences")).await;
    assert!(html.contains("Your preferences are saved."));
    assert!(html.contains("name=\"quiet_hours_start\" value=\"22:00\""));
    assert!(html.contains("value=\"lesson_report\" checked"));

    // Unticking one turns its emails back on; no quiet hours.
    let (status, _, _) = form(
        &api,
        &path,
        "email_notifications=on&sms_notifications=on&email_opt_out=package_low",
        "same-origin",
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(prefs().await, (true, true, false, None, None));
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM email_opt_outs WHERE user_id = $1")
        .bind(amelia.user_id)
        .fetch_all(w.pool())
        .await
        .unwrap();
    assert_eq!(kinds, vec!["package_low".to_owned()]);

    // Bad fields: 422, the page naming the field, nothing saved.
    let saved = prefs().await;
    for (body, field) in [
        ("quiet_hours_start=25%3A00&quiet_hours_end=07%3A00", "quiet_hours_start"),
        ("quiet_hours_start=22%3A00", "quiet_hours_end"),
        ("quiet_hours_end=22%3A00", "quiet_hours_start"),
        ("quiet_hours_start=22%3A00&quiet_hours_end=22%3A00", "quiet_hours_end"),
        ("email_opt_out=booking_confirmed", "email_opt_out"),
        ("email_opt_out=no_such_kind", "email_opt_out"),
        ("colour=blue", "colour"),
    ] {
        let (status, _, html) = form(&api, &path, body, "same-origin").await;
        assert_eq!(status, 422, "{body}: {html}");
        assert!(html.contains(&format!("data-field=\"{field}\"")), "{body} names {field}: {html}");
        assert!(html.contains("Hi Amelia"), "the page again");
    }
    assert_eq!(prefs().await, saved);
    let r = Reply::read(
        client()
            .post(format!("{}{path}", api.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("quiet_hours_start=7pm&quiet_hours_end=07%3A00")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect_error(422, "invalid_value", Some("quiet_hours_start"));
    let (status, _, _) = form(&api, &format!("/me/{}/preferences", "f".repeat(64)), good, "same-origin").await;
    assert_eq!(status, 404);

    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_vapid_key_and_service_worker() {
    let mut w = World::start().await;
    let amelia = w.person("student", "Amelia", None).await;
    let ben = w.person("student", "Ben", None).await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let (_, token) = link(&api, amelia.user_id).await;
    let path = format!("/me/{token}/devices");
    let sub = w.push.subscribe("amelia-browser").to_json();

    // The VAPID key: the public half of VAPID_PRIVATE_KEY, 65 bytes base64url.
    let key = api.get_open("/push/vapid-public-key").await.expect(200);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key["key"].as_str().unwrap())
        .unwrap();
    assert_eq!((raw.len(), raw[0]), (65, 4));
    let expected = dashlight_admin_api::http::own_page::public_key(&w.config.push.as_ref().unwrap().vapid_private_key).unwrap();
    assert_eq!(key["key"], expected);

    // The service worker: JavaScript, root scope allowed, shows pushes.
    let (status, headers, js) = get(&api, "/sw.js").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/javascript"));
    assert_eq!(headers["service-worker-allowed"], "/");
    assert!(js.contains("showNotification") && js.contains("notificationclick") && js.contains("openWindow"));
    let (status, headers, _) = get(&api, "/assets/me.js").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/javascript"));

    // From another site: refused.
    post_json(&api, &path, &sub, &[("sec-fetch-site", "cross-site")])
        .await
        .expect_error(403, "forbidden", None);
    // Bad token: 404.
    post_json(&api, &format!("/me/{}/devices", "a".repeat(64)), &sub, &[])
        .await
        .expect_error(404, "not_found", None);
    // Bad keys and missing fields name the field.
    let mut bad = sub.clone();
    bad["keys"]["p256dh"] = json!("AAAA");
    post_json(&api, &path, &bad, &[])
        .await
        .expect_error(422, "invalid_value", Some("keys.p256dh"));
    let mut bad = sub.clone();
    bad["keys"]["auth"] = json!("AAAA");
    post_json(&api, &path, &bad, &[])
        .await
        .expect_error(422, "invalid_value", Some("keys.auth"));
    post_json(&api, &path, &json!({"keys": sub["keys"]}), &[])
        .await
        .expect_error(422, "missing_field", Some("endpoint"));
    let mut bad = sub.clone();
    bad["endpoint"] = json!("ftp://push.example/x");
    post_json(&api, &path, &bad, &[])
        .await
        .expect_error(422, "invalid_value", Some("endpoint"));

    // From the page: 201, then the same subscription again renews it (200).
    let d = post_json(&api, &path, &sub, &[("sec-fetch-site", "same-origin")]).await.expect(201);
    assert_eq!(d["user_id"], amelia.user_id);
    assert_eq!(d["push_endpoint"], sub["endpoint"]);
    let device = d["id"].as_i64().unwrap();
    post_json(&api, &path, &sub, &[]).await.expect(200);
    let (_, _, html) = get(&api, &format!("/me/{token}")).await;
    assert!(html.contains(&format!("id=\"device-{device}\"")));

    // Removing: not Ben's device, not from another site, then hers.
    let bens = w.device(&ben, "ben-phone").await;
    let (status, _, _) = form(&api, &format!("/me/{token}/devices/{bens}/remove"), "", "same-origin").await;
    assert_eq!(status, 404);
    let (status, _, _) = form(&api, &format!("/me/{token}/devices/{device}/remove"), "", "cross-site").await;
    assert_eq!(status, 403);
    let (status, _, _) = form(&api, &format!("/me/{token}/devices/{device}/remove"), "", "same-origin").await;
    assert_eq!(status, 303);
    let active: Vec<(i64, bool)> = sqlx::query_as("SELECT id, active FROM user_devices ORDER BY id")
        .fetch_all(w.pool())
        .await
        .unwrap();
    assert_eq!(active, vec![(device, false), (bens, true)]);
    let (_, _, html) = get(&api, &format!("/me/{token}")).await;
    assert!(!html.contains(&format!("id=\"device-{device}\"")));
    api.stop().await;

    // The SSRF guard of POST /api/users/{id}/devices applies: no loopback endpoint without
    // PUSH_ALLOW_PRIVATE_ENDPOINTS, and no key without VAPID.
    w.config.push_allow_private_endpoints = false;
    w.config.push = None;
    let strict = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    post_json(&strict, &path, &sub, &[])
        .await
        .expect_error(422, "invalid_value", Some("endpoint"));
    strict.get_open("/push/vapid-public-key").await.expect_error(404, "not_found", None);
    strict.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_travel_in_emails_and_pushes_and_the_feed_holds_everything() {
    let w = World::start().await;
    let amelia = w.person("student", "Amelia", None).await;
    let priya = w.person("instructor", "Priya", None).await;
    let ben = w.person("student", "Ben", None).await;
    w.device(&priya, "priya-phone").await;
    // Ben switched every channel off.
    sqlx::query(
        "UPDATE user_preferences SET email_notifications = false, sms_notifications = false, push_notifications = false WHERE user_id = $1",
    )
    .bind(ben.user_id)
    .execute(w.pool())
    .await
    .unwrap();
    let worker = w.spawn_worker(Clock::system());
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let (amelia_url, _) = link(&api, amelia.user_id).await;
    let (_, priya_token) = link(&api, priya.user_id).await;
    let (_, ben_token) = link(&api, ben.user_id).await;

    // The link by email (kind access_link).
    let sent = api
        .post(&format!("/api/users/{}/access-link", amelia.user_id), json!({"send": true}))
        .await
        .expect(200);
    assert_eq!(sent["url"], amelia_url);
    assert!(sent["notification_id"].as_i64().is_some());
    let mails = w.smtp.wait_for_messages(1, LONG).await.unwrap();
    let text = body_text(&mails[0].data);
    assert!(text.contains(&amelia_url), "the access link email carries the link: {text}");

    // A booking: her confirmation email carries her link; Priya's alert push opens her page at
    // the booking.
    let now = Utc::now();
    let b = w.book(&amelia, &priya, now + chrono::Duration::days(3), now).await;
    let pushes = w.push.wait_for(1, LONG).await.unwrap();
    let payload: Value = serde_json::from_slice(&pushes[0].payload).unwrap();
    // The push opens her page at the booking, without the page's secret in it.
    assert_eq!(payload["url"], format!("/me#booking-{}", b.id), "{payload}");
    assert!(!String::from_utf8_lossy(&pushes[0].payload).contains(&priya_token));
    assert_eq!(payload["title"], "New booking: Amelia Tester", "{payload}");
    let mails = w.smtp.wait_for_messages(2, LONG).await.unwrap();
    let confirmation = mails
        .iter()
        .map(|m| body_text(&m.data))
        .find(|t| t.contains("Lesson booked"))
        .expect("the confirmation");
    assert!(confirmation.contains(&amelia_url), "the confirmation carries the page link");
    let reminder: Value = sqlx::query_scalar("SELECT data FROM notifications WHERE booking_id = $1 AND type = 'lesson_reminder' LIMIT 1")
        .bind(b.id)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(reminder["page_url"], amelia_url, "reminders render with the link too");

    // Ben, every channel off: his notification reaches nobody, yet his feed has it.
    let bens = w.book(&ben, &priya, now + chrono::Duration::days(4), now).await;
    try_wait_until("Ben's confirmation to be settled", LONG, || async {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM notifications WHERE booking_id = $1 AND type = 'booking_confirmed'")
            .bind(bens.id)
            .fetch_optional(w.pool())
            .await?;
        Ok(s.filter(|s| s != "pending" && s != "processing"))
    })
    .await
    .unwrap();
    let delivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE n.user_id = $1 AND d.status IN ('sent', 'delivered')",
    )
    .bind(ben.user_id)
    .fetch_one(w.pool())
    .await
    .unwrap();
    assert_eq!(delivered, 0);
    let (status, _, html) = get(&api, &format!("/me/{ben_token}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("Lesson booked"), "the feed holds it: {html}");
    assert!(html.contains(&format!("id=\"booking-{}\"", bens.id)));

    // Priya's page: both lessons (with the students' names), her alerts in the feed.
    let (_, _, html) = get(&api, &format!("/me/{priya_token}")).await;
    assert!(html.contains("Amelia Tester") && html.contains("Ben Tester"));
    assert!(html.contains("New booking"));
    assert!(html.contains("priya-phone"), "her device with a Remove button");
    assert!(
        !html.contains("mailto:"),
        "instructors are not offered the students' cancel request"
    );

    api.stop().await;
    worker.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// In a real browser
// ---------------------------------------------------------------------------------------------

/// Debian's headless Chromium over chromedriver (`dashlight_tests::browser`, as the dashboard's
/// browser test drives it), plus DevTools commands through chromedriver's `goog/cdp/execute` endpoint.
mod browser {
    use std::path::PathBuf;

    use serde_json::{Value, json};

    /// Where screenshots go: `<target dir>/test-artifacts/own-page`.
    pub fn artifacts() -> PathBuf {
        dashlight_tests::browser::artifacts(env!("CARGO_TARGET_TMPDIR"), "own-page")
    }

    /// The own page's browser window: a phone.
    pub const PHONE: (u32, u32) = (430, 1400);

    pub use dashlight_tests::browser::Driver;

    /// A DevTools protocol command sent through chromedriver (`goog/cdp/execute`).
    #[derive(Debug)]
    pub struct Cdp(pub &'static str, pub Value);

    impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
        fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
            base_url.join(&format!("session/{}/goog/cdp/execute", session_id.unwrap_or_default()))
        }

        fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
            (axum::http::Method::POST, Some(json!({"cmd": self.0, "params": self.1}).to_string()))
        }
    }
}

/// The titles of the notifications the service worker shows now.
async fn shown_titles(c: &fantoccini::Client) -> anyhow::Result<Vec<String>> {
    let v = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.serviceWorker.getRegistration('/')
               .then(r => r ? r.getNotifications() : [])
               .then(ns => done(ns.map(n => n.title)), e => done(['error: ' + e]));",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// Delivers `payload` to the page's service worker through `ServiceWorker.deliverPushMessage`.
/// The registration's id is not exposed to WebDriver; a fresh profile numbers registrations
/// from 0, so the first few ids are tried until one is accepted.
async fn deliver_push(c: &fantoccini::Client, origin: &str, payload: &Value) -> anyhow::Result<String> {
    let _ = c.issue_cmd(browser::Cdp("ServiceWorker.enable", json!({}))).await;
    let mut last = String::new();
    for id in 0..16 {
        match c
            .issue_cmd(browser::Cdp(
                "ServiceWorker.deliverPushMessage",
                json!({"origin": origin, "registrationId": id.to_string(), "data": payload.to_string()}),
            ))
            .await
        {
            Ok(_) => return Ok(id.to_string()),
            Err(e) => last = e.to_string(),
        }
    }
    anyhow::bail!("no service worker registration accepted the push: {last}")
}

async fn page_state(c: &fantoccini::Client) -> anyhow::Result<(Option<String>, String)> {
    let v = c
        .execute(
            "return [document.documentElement.getAttribute('data-alerts'), (document.getElementById('alerts-status') || {}).textContent || ''];",
            vec![],
        )
        .await?;
    Ok((v[0].as_str().map(str::to_owned), v[1].as_str().unwrap_or_default().to_owned()))
}

async fn wait_alerts(c: &fantoccini::Client, done: &[&str]) -> anyhow::Result<(String, String)> {
    try_wait_until("the enable-alerts button to finish", LONG, || async {
        let (state, text) = page_state(c).await?;
        Ok(state.filter(|s| done.contains(&s.as_str())).map(|s| (s, text.clone())))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_page_in_chromium_subscribes_and_shows_pushes() {
    let driver = browser::Driver::start()
        .await
        .expect("chromedriver (run `.ci/setup-browser` if it is missing)");
    let w = World::start().await;
    let amelia = w.person("student", "Amelia", None).await;
    let priya = w.person("instructor", "Priya", None).await;
    let worker = w.spawn_worker(Clock::system());
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let now = Utc::now();
    let first = w.book(&amelia, &priya, now + chrono::Duration::days(2), now).await;
    note(&w, &amelia, "feed-note", "One lesson left in your package").await;
    let (_, amelia_token) = link(&api, amelia.user_id).await;
    let (_, priya_token) = link(&api, priya.user_id).await;

    let c = driver.browser(browser::PHONE).await.expect("a Chromium session");
    let outcome = chromium_scenario(&c, &w, &api, &amelia, &priya, first.id, &amelia_token, &priya_token).await;
    if outcome.is_err()
        && let Ok(png) = c.screenshot().await
    {
        let _ = std::fs::create_dir_all(browser::artifacts());
        let _ = std::fs::write(browser::artifacts().join("failed.png"), png);
    }
    c.close().await.expect("closing the browser");
    outcome.unwrap();
    api.stop().await;
    worker.stop().await.unwrap();
    drop(driver);
}

#[allow(clippy::too_many_arguments)]
async fn chromium_scenario(
    c: &fantoccini::Client,
    w: &World,
    api: &RunningApi,
    amelia: &Person,
    priya: &Person,
    first: i64,
    amelia_token: &str,
    priya_token: &str,
) -> anyhow::Result<()> {
    use anyhow::{Context as _, ensure};
    use fantoccini::Locator;
    let shot = |name: &'static str| async move {
        let png = c.screenshot().await?;
        std::fs::create_dir_all(browser::artifacts())?;
        std::fs::write(browser::artifacts().join(name), png)?;
        anyhow::Ok(())
    };
    let text = || async {
        anyhow::Ok(
            c.execute("return document.body.innerText", vec![])
                .await?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };

    // The student's page: her lesson and her feed, readable; Mark read works as a plain form.
    c.goto(&format!("{}/me/{amelia_token}", api.base)).await?;
    c.wait().at_most(LONG).for_element(Locator::Id("lessons")).await?;
    let body = text().await?;
    ensure!(body.contains("Priya Tester") && body.contains("Station Road"), "her lesson: {body}");
    ensure!(
        body.contains("Lesson booked") && body.contains("One lesson left in your package"),
        "her feed: {body}"
    );
    ensure!(c.find(Locator::Css(&format!("#booking-{first}"))).await.is_ok());
    shot("student.png").await?;
    let unread_before = c.find_all(Locator::Css(".notification.unread")).await?.len();
    c.find(Locator::Css(".notification.unread form button")).await?.click().await?;
    c.wait().at_most(LONG).for_element(Locator::Id("notice")).await?;
    let unread_after = c.find_all(Locator::Css(".notification.unread")).await?.len();
    ensure!(
        unread_after + 1 == unread_before,
        "marked one read: {unread_before} -> {unread_after}"
    );

    // The instructor's page.
    let origin = api.base.clone();
    c.goto(&format!("{origin}/me/{priya_token}")).await?;
    c.wait().at_most(LONG).for_element(Locator::Id("enable-alerts")).await?;
    let body = text().await?;
    ensure!(
        body.contains("Amelia Tester") && body.contains("New booking"),
        "her lessons and feed: {body}"
    );
    c.issue_cmd(browser::Cdp(
        "Browser.grantPermissions",
        json!({"origin": origin, "permissions": ["notifications"]}),
    ))
    .await
    .context("granting notifications")?;

    // 1. The button as it is, with Chromium's own push service: headless Debian Chromium has no
    //    push service to reach (no Google API keys, no network), so its subscribe() fails or
    //    never settles; the service worker is registered at /sw.js with the root scope before
    //    it is asked, which is what this step waits for.
    c.find(Locator::Id("enable-alerts")).await?.click().await?;
    let (state, said) = wait_alerts(c, &["subscribing", "saving", "on", "error"]).await?;
    eprintln!("own page: the real pushManager.subscribe() in headless Chromium ended {state:?}: {said}");
    let sw = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.serviceWorker.ready.then(r => done([r.scope, r.active.scriptURL]));",
            vec![],
        )
        .await?;
    ensure!(
        sw[0] == format!("{origin}/") && sw[1] == format!("{origin}/sw.js"),
        "registered at /sw.js, root scope: {sw}"
    );

    // 2. A push delivered through the DevTools protocol is shown with our title.
    let payload =
        json!({"title": "Dashlight test push", "body": "From DevTools", "tag": "devtools:1", "url": format!("/me/{priya_token}")});
    // Delivered again until shown: on a busy machine the worker may not be active yet for the
    // first one (Chromium then drops it); the tag makes a repeat replace the notification.
    let deadline = std::time::Instant::now() + LONG;
    let (registration, titles) = loop {
        let delivered = deliver_push(c, &origin, &payload).await;
        let shown = try_wait_until("the service worker to show the push", std::time::Duration::from_secs(5), || async {
            let t = shown_titles(c).await?;
            Ok(t.iter().any(|t| t == "Dashlight test push").then_some(t))
        })
        .await;
        match (delivered, shown) {
            (Ok(r), Ok(t)) => break (r, t),
            (d, s) if std::time::Instant::now() > deadline => {
                anyhow::bail!("the DevTools push was never shown: delivered {d:?}, shown {s:?}")
            }
            _ => {}
        }
    };
    eprintln!("own page: registration {registration} shows {titles:?}");

    // 3. The page's own code path with a subscription of the loopback push service: only
    //    PushManager.subscribe/getSubscription are replaced (they would need Google's push
    //    service); the button, the VAPID key fetch and the POST are the page's.
    c.refresh().await?;
    c.wait().at_most(LONG).for_element(Locator::Id("enable-alerts")).await?;
    let sub = w.push.subscribe("priya-browser").to_json();
    c.execute(
        "const sub = arguments[0];
         window.__subscribeCalls = [];
         PushManager.prototype.getSubscription = function () { return Promise.resolve(null); };
         PushManager.prototype.subscribe = function (opts) {
           const key = new Uint8Array(opts.applicationServerKey);
           window.__subscribeCalls.push({ userVisibleOnly: opts.userVisibleOnly, key: Array.from(key) });
           return Promise.resolve({ toJSON: function () { return sub; } });
         };",
        vec![sub.clone()],
    )
    .await?;
    c.find(Locator::Id("enable-alerts")).await?.click().await?;
    let (state, said) = wait_alerts(c, &["on", "error"]).await?;
    ensure!(state == "on", "alerts on: {said}");
    let calls = c.execute("return window.__subscribeCalls", vec![]).await?;
    ensure!(calls[0]["userVisibleOnly"] == true, "{calls}");
    let key: Vec<u8> = serde_json::from_value(calls[0]["key"].clone())?;
    let vapid = api.get_open("/push/vapid-public-key").await.expect(200);
    ensure!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key) == vapid["key"].as_str().unwrap_or_default(),
        "subscribed with the server's VAPID key"
    );
    let stored: Option<i64> = sqlx::query_scalar("SELECT id FROM user_devices WHERE user_id = $1 AND push_endpoint = $2 AND active")
        .bind(priya.user_id)
        .bind(sub["endpoint"].as_str())
        .fetch_optional(w.pool())
        .await?;
    let device = stored.context("the subscription is stored for Priya")?;
    c.refresh().await?;
    c.wait().at_most(LONG).for_element(Locator::Id(&format!("device-{device}"))).await?;
    shot("instructor.png").await?;

    // ... and the next booking alert reaches it through the loopback push service, decrypted;
    // handed to the browser's service worker, it is shown with that title.
    let start = dashlight_tests::api::lesson_start(5);
    let b = api
        .post(
            "/api/bookings",
            json!({"student_id": amelia.profile_id, "instructor_id": priya.profile_id,
                   "start_time": start.to_rfc3339(), "end_time": (start + chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await
        .expect(201);
    let booking = b["id"].as_i64().context("booking id")?;
    let pushes = w.push.wait_for(1, LONG).await?;
    let got: Value = serde_json::from_slice(&pushes[0].payload)?;
    ensure!(pushes[0].subscription == "priya-browser", "{:?}", pushes[0].subscription);
    ensure!(got["title"] == "New booking: Amelia Tester", "{got}");
    ensure!(got["url"] == format!("/me#booking-{booking}"), "{got}");
    deliver_push(c, &origin, &got).await?;
    try_wait_until("the booking alert to show", LONG, || async {
        Ok(shown_titles(c)
            .await?
            .iter()
            .any(|t| t == "New booking: Amelia Tester")
            .then_some(()))
    })
    .await?;

    // 4. Quiet hours set on the page hold the next push.
    let tz: chrono_tz::Tz = "Europe/London".parse().unwrap();
    let local = Utc::now().with_timezone(&tz);
    let from = (local - chrono::Duration::hours(1)).format("%H:%M").to_string();
    let until = (local + chrono::Duration::hours(3)).format("%H:%M").to_string();
    c.execute(
        "document.querySelector('[name=quiet_hours_start]').value = arguments[0];
         document.querySelector('[name=quiet_hours_end]').value = arguments[1];",
        vec![json!(from), json!(until)],
    )
    .await?;
    c.find(Locator::Css("#preferences-form button[type=submit]")).await?.click().await?;
    c.wait().at_most(LONG).for_element(Locator::Id("notice")).await?;
    let saved: (Option<chrono::NaiveTime>, Option<chrono::NaiveTime>) =
        sqlx::query_as("SELECT quiet_hours_start, quiet_hours_end FROM user_preferences WHERE user_id = $1")
            .bind(priya.user_id)
            .fetch_one(w.pool())
            .await?;
    ensure!(
        saved.0.map(|t| t.format("%H:%M").to_string()) == Some(from.clone())
            && saved.1.map(|t| t.format("%H:%M").to_string()) == Some(until),
        "quiet hours saved from the page: {saved:?}"
    );
    let start = dashlight_tests::api::lesson_start(6);
    let b = api
        .post(
            "/api/bookings",
            json!({"student_id": amelia.profile_id, "instructor_id": priya.profile_id,
                   "start_time": start.to_rfc3339(), "end_time": (start + chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await
        .expect(201);
    let held_booking = b["id"].as_i64().context("booking id")?;
    let held: chrono::DateTime<Utc> = try_wait_until("the alert push to be held for quiet hours", LONG, || async {
        let row: Option<(String, Option<chrono::DateTime<Utc>>)> = sqlx::query_as(
            "SELECT d.status, d.next_attempt_at FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
             WHERE n.booking_id = $1 AND n.type = 'booking_alert' AND d.channel = 'push'",
        )
        .bind(held_booking)
        .fetch_optional(w.pool())
        .await?;
        Ok(row.and_then(|(s, t)| (s == "pending").then_some(t).flatten()))
    })
    .await?;
    ensure!(
        held > Utc::now() + chrono::Duration::hours(2),
        "held until the quiet hours end: {held}"
    );
    ensure!(w.push.received().len() == 1, "no second push during quiet hours");
    Ok(())
}
