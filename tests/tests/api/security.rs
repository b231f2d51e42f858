//! Faults and hostile input (docs/security.md), on the admin API's side: what it refuses, and the
//! brakes it puts on guessing and on expensive requests.

use std::collections::BTreeSet;

use chrono::Utc;
use dashlight_core::Clock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{AUTH, Api, P256DH, TOKEN};

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in to the dashboard; returns the `name=value` of the session cookie.
async fn sign_in(api: &Api) -> String {
    let r = no_redirects()
        .post(format!("{}/sign-in", api.base))
        .form(&[("token", TOKEN), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn push_endpoints_on_private_networks_are_refused_at_registration() {
    let api = Api::start().await;
    let (uid, _) = api.student("ssrf").await;
    let path = format!("/api/users/{uid}/devices");
    for endpoint in [
        "http://169.254.169.254/latest/meta-data/iam",
        "https://169.254.169.254/latest/meta-data/iam",
        "https://127.0.0.1:5432/x",
        "https://10.1.2.3/x",
        "http://push.example.com/x",
        "https://[::1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://100.64.1.1/x",
        "https://localhost/x",
    ] {
        let body = json!({"device_id": "phone", "push_endpoint": endpoint, "p256dh": P256DH, "auth": AUTH});
        let b = api
            .post(&path, body)
            .await
            .expect_error(422, "invalid_value", Some("push_endpoint"));
        assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{endpoint}: {b}");
    }
    assert_eq!(api.count("SELECT count(*) FROM user_devices").await, 0);
    // A public https endpoint is fine.
    api.post(
        &path,
        json!({"device_id": "phone", "push_endpoint": "https://fcm.googleapis.com/fcm/send/abc", "p256dh": P256DH, "auth": AUTH}),
    )
    .await
    .expect(201);
    api.stop().await;

    // Allowed explicitly (local runs, tests with loopback push services).
    let api = Api::start_with(Clock::system(), |c| c.push_allow_private_endpoints = true).await;
    let (uid, _) = api.student("local").await;
    api.post(
        &format!("/api/users/{uid}/devices"),
        json!({"device_id": "phone", "push_endpoint": "http://127.0.0.1:8443/push/x", "p256dh": P256DH, "auth": AUTH}),
    )
    .await
    .expect(201);
    api.stop().await;
}

#[tokio::test]
async fn guessing_the_token_is_braked() {
    let api = Api::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/queues", api.base);
    let mut first_429 = None;
    for i in 0..60 {
        let r = http.get(&url).bearer_auth(format!("guess-{i:040}")).send().await.unwrap();
        match r.status() {
            StatusCode::UNAUTHORIZED => assert!(first_429.is_none(), "no 401 once braked (guess {i})"),
            StatusCode::TOO_MANY_REQUESTS => {
                let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&after), "Retry-After {after}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"], "too_many_requests");
                first_429.get_or_insert(i);
            }
            s => panic!("guess {i}: {s}"),
        }
    }
    let first = first_429.expect("60 wrong tokens in a row are braked");
    assert!(first <= 10, "braked after the allowed failures, at guess {first}");
    // While braked, the right token is still let through: nobody can lock the operators out.
    let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The sign-in form shares the brake: wrong tokens are refused, the right one signs in.
    let r = no_redirects()
        .post(format!("{}/sign-in", api.base))
        .form(&[("token", "still-guessing"), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let r = no_redirects()
        .post(format!("{}/sign-in", api.base))
        .form(&[("token", TOKEN), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers().contains_key("set-cookie"));
    api.stop().await;

    // Requests without any credential are plain 401s and cost nothing; the right token neither.
    let api = Api::start().await;
    let url = format!("{}/api/queues", api.base);
    for _ in 0..30 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    for _ in 0..30 {
        assert_eq!(http.get(&url).bearer_auth(TOKEN).send().await.unwrap().status(), StatusCode::OK);
    }
    // The answer is in the contract.
    let doc = api.get("/api/openapi.json").await.expect(200);
    assert_eq!(
        doc["paths"]["/api/queues"]["get"]["responses"]["429"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    api.stop().await;
}

#[tokio::test]
async fn wrong_sign_ins_are_braked() {
    let api = Api::start().await;
    let http = no_redirects();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = http
            .post(format!("{}/sign-in", api.base))
            .form(&[("token", format!("guess-{i}").as_str()), ("next", "/")])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[0], 401);
    assert!(statuses.contains(&429), "{statuses:?}");
    api.stop().await;
}

#[tokio::test]
async fn a_short_admin_token_stops_the_api() {
    let db = dashlight_tests::db::TestDb::new().await;
    let mut config = db.config();
    config.admin_api_token = Some("local-0123456789abcdef".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = dashlight_admin_api::serve(&config, db.pool.clone(), Clock::system(), listener, async {})
        .await
        .expect_err("a 22-character token is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("ADMIN_API_TOKEN") && msg.contains("32"), "{msg}");
}

#[tokio::test]
async fn signing_in_never_redirects_off_this_server() {
    let api = Api::start().await;
    let http = no_redirects();
    for next in [
        "/%09/evil.example",
        "/%09/evil.example/path",
        "/\t/evil.example",
        "/%0d%0a/evil.example",
        "/%5Cevil.example",
        "/%2F%2Fevil.example",
        "//evil.example",
        "https://evil.example/",
    ] {
        let r = http
            .post(format!("{}/sign-in", api.base))
            .form(&[("token", TOKEN), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{next:?}");
        assert_eq!(r.headers()["location"], "/", "{next:?}");
    }
    // Already signed in, the form's GET sends the browser on: the same rule.
    let cookie = sign_in(&api).await;
    let r = http
        .get(format!("{}/sign-in?next=%2F%2509%2Fevil.example", api.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    // A path on this server is kept.
    let r = http
        .post(format!("{}/sign-in", api.base))
        .form(&[("token", TOKEN), ("next", "/deliveries?status=failed")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/deliveries?status=failed");
    api.stop().await;
}

#[tokio::test]
async fn signing_out_revokes_the_session_on_the_server() {
    let api = Api::start().await;
    let http = no_redirects();
    let cookie = sign_in(&api).await;
    let queues = format!("{}/api/queues", api.base);
    assert_eq!(http.get(&queues).header("cookie", &cookie).send().await.unwrap().status(), 200);
    assert_eq!(
        http.get(format!("{}/", api.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .post(format!("{}/sign-out", api.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // The same cookie, replayed (a copy kept elsewhere), no longer works anywhere.
    assert_eq!(http.get(&queues).header("cookie", &cookie).send().await.unwrap().status(), 401);
    let r = http.get(format!("{}/", api.base)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 303, "the dashboard sends it to sign in");
    // Signing in again gives a working session.
    let again = sign_in(&api).await;
    // Issued in the same second the cookie may be the very same value; wait for a new one.
    let again = if again == cookie {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        sign_in(&api).await
    } else {
        again
    };
    assert_eq!(http.get(&queues).header("cookie", &again).send().await.unwrap().status(), 200);
    api.stop().await;
}

#[tokio::test]
async fn control_characters_are_refused_naming_the_field() {
    let api = Api::start().await;
    // The body of the issue: a NUL (and a C1 control) in a contact's name was a 500.
    let r = api
        .post_raw(
            "/api/crm/contacts",
            Some("application/json"),
            r#"{"name": "\udaaf\uddd9®\u009e\u0000", "source": "website"}"#,
        )
        .await;
    r.expect_error(422, "invalid_value", Some("name"));
    // CR/LF in a name (header injection in emails, log forging).
    api.post(
        "/api/users",
        json!({"role": "student", "email": "crlf@school.test", "phone": "+447700900201", "first_name": "Ann\r\nBcc: all@example.com", "last_name": "L", "timezone": "Europe/London"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("first_name"));
    api.post(
        "/api/users",
        json!({"role": "student", "email": "tab@school.test", "phone": "+447700900201", "first_name": "Ann", "last_name": "L\u{1b}[31m", "timezone": "Europe/London"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("last_name"));
    assert_eq!(api.count("SELECT count(*) FROM users").await, 0);
    // Message content may hold line breaks, never NUL.
    let (a, _) = api.student("writer").await;
    let (b, _) = api.student("reader").await;
    api.post(
        "/api/messages",
        json!({"sender_id": a, "participant_ids": [b], "content": "Line one\nLine two\n\tindented"}),
    )
    .await
    .expect(201);
    api.post(
        "/api/messages",
        json!({"sender_id": a, "participant_ids": [b], "content": "before\u{0}after"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("content"));
    api.stop().await;
}

#[tokio::test]
async fn message_participants_are_capped_before_anything_else() {
    let api = Api::start().await;
    let (a, _) = api.student("sender").await;
    let (b, _) = api.student("other").await;
    // Duplicates are dropped, within the cap.
    let m = api
        .post(
            "/api/messages",
            json!({"sender_id": a, "participant_ids": [b, b, a, b], "content": "hi"}),
        )
        .await
        .expect(201);
    assert_eq!(m["participants"].as_array().unwrap().len(), 2, "{m}");
    // A long list is refused before being walked, even if it is one id repeated.
    api.post(
        "/api/messages",
        json!({"sender_id": a, "participant_ids": vec![b; 60], "content": "hi"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("participant_ids"));
    let many: Vec<i64> = (1..=100_000).collect();
    api.post("/api/messages", json!({"sender_id": a, "participant_ids": many, "content": "hi"}))
        .await
        .expect_error(422, "invalid_value", Some("participant_ids"));
    api.stop().await;
}

/// Adds `n` failed email deliveries of `user`; returns their ids, newest first.
async fn failed_deliveries(api: &Api, user: i64, n: i64, tag: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "WITH n AS (
            INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key, status)
            SELECT $1, 'package_low', 'One lesson left', 'One lesson left', ARRAY['email'], 'all', $3 || g, 'done'
            FROM generate_series(1, $2) g RETURNING id)
         INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, last_error)
         SELECT id, 'email', 'x@school.test', 'failed', 1, '550 refused' FROM n
         RETURNING id",
    )
    .bind(user)
    .bind(n)
    .bind(tag)
    .fetch_all(api.pool())
    .await
    .map(|mut ids: Vec<i64>| {
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids
    })
    .unwrap()
}

async fn retry_jobs(api: &Api) -> BTreeSet<i64> {
    let rows: Vec<i64> = sqlx::query_scalar(
        "SELECT (convert_from(job, 'UTF8')::jsonb ->> 'retry_delivery_id')::bigint FROM apalis.jobs
         WHERE job_type = 'dashlight.notifications' AND convert_from(job, 'UTF8')::jsonb ->> 'retry_delivery_id' IS NOT NULL",
    )
    .fetch_all(api.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

#[tokio::test]
async fn bulk_retry_works_in_batches_and_counts_truly() {
    let api = Api::start().await;
    let (uid, _) = api.student("bulk").await;
    // More than two batches.
    let ids = failed_deliveries(&api, uid, 1_234, "bulk-").await;
    let b = api.post("/api/deliveries/retry", json!({})).await.expect(202);
    assert_eq!(b["retried"], 1_234);
    assert_eq!(retry_jobs(&api).await, ids.iter().copied().collect());
    // Named ids: exactly those (with the other filters still applying).
    let more = failed_deliveries(&api, uid, 3, "more-").await;
    let b = api
        .post("/api/deliveries/retry", json!({"ids": [more[0], more[2], 999_999_999]}))
        .await
        .expect(202);
    assert_eq!(b["retried"], 2);
    api.post("/api/deliveries/retry", json!({"ids": (1..=501).collect::<Vec<i64>>()}))
        .await
        .expect_error(422, "invalid_value", Some("ids"));
    api.stop().await;
}

#[tokio::test]
async fn retry_all_shown_retries_exactly_the_rows_shown() {
    let api = Api::start().await;
    let (uid, _) = api.student("shown").await;
    let ids = failed_deliveries(&api, uid, 230, "shown-").await;
    let cookie = sign_in(&api).await;
    let page = no_redirects()
        .get(format!("{}/deliveries?status=failed", api.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown = dashlight_admin_api::dashboard::pages::DELIVERIES_SHOWN as usize;
    assert!(page.contains(&format!("Retry all shown ({shown})")), "the button's label");
    let attr = page
        .split("data-ids=\"")
        .nth(1)
        .expect("the button names its rows")
        .split('"')
        .next()
        .unwrap();
    let named: Vec<i64> = attr.split(',').map(|s| s.parse().unwrap()).collect();
    assert_eq!(named, ids[..shown].to_vec(), "the newest {shown}, as shown");
    // What the button's script sends.
    let later = failed_deliveries(&api, uid, 5, "later-").await;
    let r = no_redirects()
        .post(format!("{}/api/deliveries/retry", api.base))
        .header("cookie", &cookie)
        .header("x-requested-with", "dashlight")
        .json(&json!({"status": "failed", "ids": named}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["retried"], shown);
    let retried = retry_jobs(&api).await;
    assert_eq!(retried.len(), shown);
    assert!(later.iter().all(|id| !retried.contains(id)), "failed after the page was drawn");
    assert!(ids[shown..].iter().all(|id| !retried.contains(id)), "not shown");
    api.stop().await;
}

/// The value of `dashlight_jobs{queue=…,state=…}` in a scrape.
fn gauge(text: &str, queue: &str, state: &str) -> Option<f64> {
    let prefix = format!("dashlight_jobs{{queue=\"{queue}\",state=\"{state}\"}} ");
    let prefix2 = format!("dashlight_jobs{{state=\"{state}\",queue=\"{queue}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).or_else(|| l.strip_prefix(&prefix2)))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_serve_queue_depths_from_a_cache() {
    let (clock, hand) = Clock::manual(Utc::now());
    let api = Api::start_with(clock, |_| {}).await;
    // A queue of this test's own: the metrics recorder is shared by every server of this process.
    let queue = format!("security-test-{}", std::process::id());
    let add_job = || async {
        sqlx::query("INSERT INTO apalis.jobs (job, id, job_type, run_at) VALUES ('\\x7b7d', gen_random_uuid()::text, $1, '2000-01-01')")
            .bind(&queue)
            .execute(api.pool())
            .await
            .unwrap();
    };
    let scrape = || async {
        let text = reqwest::get(format!("{}/metrics", api.base)).await.unwrap().text().await.unwrap();
        gauge(&text, &queue, "pending")
    };
    add_job().await;
    assert_eq!(scrape().await, Some(1.0));
    // Within the cache's lifetime, scrapes do not count again.
    add_job().await;
    for _ in 0..5 {
        assert_eq!(scrape().await, Some(1.0));
    }
    hand.advance(chrono::Duration::seconds(2));
    assert_eq!(scrape().await, Some(1.0));
    // Once it is older than a few seconds, the next scrape refreshes it.
    hand.advance(chrono::Duration::seconds(10));
    assert_eq!(scrape().await, Some(2.0));
    api.stop().await;
}
