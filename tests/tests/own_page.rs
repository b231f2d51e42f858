//! A page of one's own (issue 16), end to end against the admin API on loopback, a real
//! database, a real worker and the loopback SMTP server and push service.
//!
//! Server tests: every route of the page (bad, malformed and rotated tokens are 404 pages; no
//! other person's lessons, notifications or devices show or can be touched; writes from another
//! site are refused with 403; bad form fields are 422 naming the field), the personal link's API
//! and its email, the links in confirmation emails and in push payloads, the feed with every
//! channel switched off, the VAPID key and the service worker's headers.
//!
//! The browser test (Debian's headless Chromium over chromedriver, as the dashboard's) is in
//! `own_page_browser` below.

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
    let res = client().get(format!("{}{path}", api.base)).send().await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, res.text().await.unwrap())
}

/// A form post as a browser on the page sends it.
async fn form(api: &RunningApi, path: &str, body: &str, site: &str) -> (u16, Option<String>, String) {
    let res = client()
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
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
    assert_eq!(headers["referrer-policy"], "no-referrer");
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
    assert_eq!(payload["url"], format!("/me/{priya_token}#booking-{}", b.id), "{payload}");
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
