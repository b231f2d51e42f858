//! Scenario 7 of the reliability issue: random and malformed JSON, huge strings, odd Unicode,
//! wrong types and injection strings thrown at every admin API route. Never a 500, never a
//! panic; every refusal is a 4xx with the JSON error body; the database stays consistent.
//! The inbound email hook and the unsubscribe links get raw messages, replayed and mangled
//! bounces, and forged tokens of their own ([`email_hook_and_unsubscribe_links_survive_hostile_input`]).

use std::time::Duration;

use dashlight_core::Clock;
use dashlight_tests::{
    api::{TOKEN, spawn_api},
    db::TestDb,
};
use proptest::{
    prelude::*,
    test_runner::{Config as PropConfig, TestRunner},
};
use serde_json::{Map, Value, json};

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("'; DROP TABLE bookings; --".to_owned()),
        Just("<script>alert(1)</script>".to_owned()),
        Just("\u{0000}\u{202e}\u{feff}zero".to_owned()),
        Just("😀".repeat(300)),
        Just("a".repeat(70_000)),
        Just("2026-13-45T25:61:00Z".to_owned()),
        Just("+447700900123".to_owned()),
        Just("Europe/Nowhere".to_owned()),
        Just("../../etc/passwd".to_owned()),
        "\\PC{0,40}",
        // Control characters (a NUL in a name was once a 500, as Postgres refuses it in
        // text): NUL, C0, DEL and C1, alone and inside ordinary text.
        // The issue's own string: "\udaaf\uddd9" is the surrogate pair of U+BBDD9.
        Just("\u{bbdd9}®\u{9e}\u{0}".to_owned()),
        Just("Ann\r\nBcc: all@example.com".to_owned()),
        "[\\x00-\\x1f\\x7f-\\x9f]{1,4}",
        "\\PC{0,10}[\\x00\\x09\\x0a\\x0d\\x1b\\x7f\\x85\\x9e]\\PC{0,10}",
        // Over-long fields of the right shape: a push endpoint of 20 KB (it used to stall the
        // worker) and one just over the 1 KiB limit, base64url keys of the wrong length.
        Just(format!("https://push.example.test/{}", "x".repeat(20_000))),
        Just(format!("https://push.example.test/{}", "y".repeat(1000))),
        Just("A".repeat(5000)),
    ]
}

/// Bodies of the right shape for the routes that create rows, with one text field made
/// hostile: they get past the type checks, so the strings reach the handlers (and, before they
/// were refused, Postgres).
fn shaped_case() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let templates = vec![
        ("/api/crm/contacts", json!({"name": "Lead", "source": "website"})),
        (
            "/api/users",
            json!({"role": "student", "email": "p@school.test", "phone": "+447700900123", "first_name": "A", "last_name": "B", "timezone": "Europe/London"}),
        ),
        ("/api/messages", json!({"sender_id": 1, "participant_ids": [1], "content": "hello"})),
        (
            "/api/lesson-packages",
            json!({"name": "Ten lessons", "lessons_included": 10, "price": 30000, "currency": "GBP", "validity_days": 180}),
        ),
        ("/api/bookings/{id}/complete", json!({"notes": "good", "skills": []})),
        ("/api/bookings/{id}/cancel", json!({"reason": "ill"})),
        (
            "/api/users/{id}/devices",
            json!({"device_id": "phone", "push_endpoint": "https://push.example.test/x", "p256dh": "k", "auth": "a"}),
        ),
    ];
    let route_of = |path: &str| {
        dashlight_admin_api::ROUTES
            .iter()
            .position(|(m, p)| *m == "POST" && *p == path)
            .unwrap_or_else(|| panic!("POST {path} is a route"))
    };
    let templates: Vec<(usize, Value)> = templates.into_iter().map(|(p, b)| (route_of(p), b)).collect();
    (prop::sample::select(templates), any::<prop::sample::Index>(), nasty_string()).prop_map(|((route, mut body), field, nasty)| {
        let keys: Vec<String> = body
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_string())
            .map(|(k, _)| k.clone())
            .collect();
        let key = field.get(&keys).clone();
        body[&key] = Value::String(nasty);
        (route, serde_json::to_vec(&body).unwrap())
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Real field names of the API mixed with junk, so bodies get past the first check often.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "role",
            "email",
            "phone",
            "first_name",
            "last_name",
            "timezone",
            "student",
            "instructor",
            "student_id",
            "instructor_id",
            "start_time",
            "end_time",
            "pickup_location",
            "reason",
            "device_id",
            "push_endpoint",
            "p256dh",
            "auth",
            "email_notifications",
            "sms_notifications",
            "push_notifications",
            "quiet_hours",
            "day_of_week",
            "weekdays",
            "local_start_time",
            "duration_minutes",
            "status",
            "channel",
            "since",
            "kind",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,12}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => Just(b"{\"role\": \"student\",".to_vec()),
        1 => Just(b"\xff\xfe not utf8".to_vec()),
        1 => Just(Vec::new()),
        1 => Just(vec![b'['; 10_000]),
    ]
}

fn path_id() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "1",
        "0",
        "-1",
        "99999999999999999999",
        "abc",
        "%27%20OR%201%3D1",
        "%F0%9F%98%80",
        "1.5",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ])
    .prop_map(str::to_owned)
}

#[test]
fn every_route_survives_hostile_input() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (db, api) = rt.block_on(async {
        let db = TestDb::new().await;
        // A little real data, so some ids exist.
        sqlx::query("INSERT INTO users (email, role, first_name, last_name) VALUES ('a@b.test', 'student', 'A', 'B')")
            .execute(&db.pool)
            .await
            .unwrap();
        // The inbound email hook on, with the same bearer token as the rest.
        let mut config = db.config();
        config.inbound_email_token = Some(TOKEN.into());
        let api = spawn_api(&config, db.pool.clone(), Clock::system()).await;
        (db, api)
    });
    let base = &api.base;
    // A fresh connection per request: the server may close one after answering early without
    // reading a large body, and a pooled client could race that close.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut runner = TestRunner::new(PropConfig {
        cases: 24 * dashlight_admin_api::ROUTES.len() as u32,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let routes = dashlight_admin_api::ROUTES;
    // Any route with any body, and (a quarter of the cases) a create route with a body of its
    // shape holding one hostile string.
    let case = prop_oneof![3 => (0..routes.len(), body()), 1 => shaped_case()];
    let strategy = (case, path_id(), prop::option::of("[a-z_=&%0-9]{0,40}"));
    runner
        .run(&strategy, |((route, body), id, query)| {
            let (method, path) = routes[route];
            let mut url = format!("{base}{}", path.replace("{id}", &id));
            if let Some(q) = query {
                url.push('?');
                url.push_str(&q);
            }
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let (status, ctype, text) = rt.block_on(async {
                let res = client
                    .request(method.clone(), &url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("the server answers");
                let status = res.status().as_u16();
                let ctype = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (status, ctype, res.text().await.unwrap_or_default())
            });
            prop_assert!(status < 500, "{method} {url} → {status}: {text}");
            if (400..500).contains(&status) {
                prop_assert!(
                    ctype.starts_with("application/json"),
                    "{method} {url} → {status} with {ctype}: {text}"
                );
                let v: Value =
                    serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{method} {url}: not JSON ({e}): {text}")))?;
                prop_assert!(v["error"].is_string() && v["message"].is_string(), "{method} {url}: error body {v}");
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        // Consistency: nothing half-written.
        let bad: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM bookings b WHERE NOT EXISTS (SELECT 1 FROM calendar_events c WHERE c.booking_id = b.id))
                  + (SELECT count(*) FROM users u WHERE u.role IN ('student', 'instructor') AND u.email <> 'a@b.test'
                       AND NOT EXISTS (SELECT 1 FROM students s WHERE s.user_id = u.id) AND NOT EXISTS (SELECT 1 FROM instructors i WHERE i.user_id = u.id))",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(bad, 0, "every booking has its calendar event, every person their profile");
        api.stop().await;
    });
}

/// A path segment standing for an id or a token: hostile ones (NUL, control characters,
/// encoded slashes, very long, Unicode) and a few ordinary ones.
fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        path_id(),
        prop::sample::select(vec![
            "%00",
            "abc%00def",
            "%00.ics",
            "%0d%0aSet-Cookie:%20x=1",
            "..%2F..%2Fetc%2Fpasswd",
            "%2e%2e",
            "%E2%80%AE",
            "%FF%FE",
            "0123456789abcdef0123456789abcdef.ics",
        ])
        .prop_map(str::to_owned),
        Just("a".repeat(5000)),
        Just(format!("{}.ics", "f".repeat(64))),
        "[A-Za-z0-9_-]{1,80}",
    ]
}

/// Every route with invented methods, hostile path segments in place of its parameters, and
/// extra segments after it: never a 500, every refusal a 4xx with a JSON body (or, for the
/// pages made for people, HTML).
#[test]
fn every_route_survives_invented_methods_and_path_segments() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (_db, api) = rt.block_on(async {
        let db = TestDb::new().await;
        let mut config = db.config();
        config.inbound_email_token = Some(TOKEN.into());
        let api = spawn_api(&config, db.pool.clone(), Clock::system()).await;
        (db, api)
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let routes = dashlight_admin_api::ROUTES;
    let method = prop_oneof![
        2 => prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]).prop_map(str::to_owned),
        1 => "[A-Z]{1,20}",
        1 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}",
    ];
    let tail = prop::option::of(prop::collection::vec(path_segment(), 1..3));
    let strategy = (0..routes.len(), method, path_segment(), tail, any::<bool>());
    let mut runner = TestRunner::new(PropConfig {
        cases: 6 * routes.len() as u32,
        failure_persistence: None,
        ..PropConfig::default()
    });
    runner
        .run(&strategy, |(route, method, segment, tail, with_token)| {
            let (_, template) = routes[route];
            // Every `{param}` replaced by the hostile segment (`{token}.ics` keeps its suffix).
            let mut path = String::new();
            let mut rest = template;
            while let Some(open) = rest.find('{') {
                path.push_str(&rest[..open]);
                path.push_str(&segment);
                rest = rest[open..].split_once('}').map_or("", |(_, r)| r);
            }
            path.push_str(rest);
            if let Some(tail) = tail {
                for t in tail {
                    path.push('/');
                    path.push_str(&t);
                }
            }
            let url = format!("{}{path}", api.base);
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let (status, ctype, text) = rt.block_on(async {
                let mut req = client.request(m, &url).header("content-type", "application/json").body("{}");
                if with_token {
                    req = req.bearer_auth(TOKEN);
                }
                let res = req.send().await.expect("the server answers");
                let status = res.status().as_u16();
                let ctype = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (status, ctype, res.text().await.unwrap_or_default())
            });
            prop_assert!(status < 500, "{method} {url} → {status}: {text}");
            // The dashboard's routes (a `..` segment can lead to `/`) answer a wrong method
            // with an empty 405, as they are HTML pages outside the API's JSON errors.
            if (400..500).contains(&status) && method != "HEAD" && !text.is_empty() {
                prop_assert!(
                    ctype.starts_with("application/json") || ctype.starts_with("text/html"),
                    "{method} {url} → {status} with {ctype}: {text}"
                );
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(api.stop());
}

/// A bounce as postfix writes it, with every field a parameter (the hostile test mangles them).
fn dsn(verp: &str, action: &str, status: &str, diagnostic: &str, boundary: &str) -> String {
    format!(
        "Return-Path: <>\r\nDelivered-To: {verp}\r\nFrom: MAILER-DAEMON@mx.test\r\nTo: {verp}\r\nAuto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n\
--{boundary}\r\nContent-Type: text/plain\r\n\r\nUndelivered.\r\n\r\n\
--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n\
Final-Recipient: rfc822; a@b.test\r\nAction: {action}\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n\
--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{verp}>\r\nSubject: x\r\n\r\n--{boundary}--\r\n"
    )
}

#[test]
fn email_hook_and_unsubscribe_links_survive_hostile_input() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (db, api, key, user_id) = rt.block_on(async {
        let db = TestDb::new().await;
        let user_id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, role, first_name, last_name) VALUES ('a@b.test', 'student', 'A', 'B') RETURNING id",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let mut config = db.config();
        config.inbound_email_token = Some(TOKEN.into());
        let api = spawn_api(&config, db.pool.clone(), Clock::system()).await;
        let key = dashlight_core::signing::load_from(&db.pool).await.unwrap();
        (db, api, key, user_id)
    });
    let base = api.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Tokens: signed for a delivery or a user that does not exist, signed for the real user,
    // one of each purpose in the other's place, and junk.
    let tokens = vec![
        key.verp_token(1),
        key.verp_token(i64::MAX),
        key.unsubscribe_token(user_id, dashlight_core::kinds::Kind::LessonReminder),
        key.unsubscribe_token(999_999, dashlight_core::kinds::Kind::DailyAgenda),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        "%00".to_owned(),
        "a".repeat(300),
    ];
    let token = prop::sample::select(tokens);
    let local = prop::sample::select(vec!["bounces+", "unsubscribe+", "BOUNCES+", ""]);
    let mangled = (token.clone(), local, nasty_string(), nasty_string(), nasty_string(), nasty_string()).prop_map(
        |(t, local, action, status, diag, boundary)| {
            dsn(&format!("{local}{t}@school.test"), &action, &status, &diag, &boundary).into_bytes()
        },
    );
    let real = (
        token.clone(),
        prop::sample::select(vec!["failed", "delayed", "delivered"]),
        "[245]\\.[0-9]\\.[0-9]",
    )
        .prop_map(|(t, action, status)| {
            dsn(
                &format!("bounces+{t}@school.test"),
                action,
                &status,
                "550 5.1.1 no such user",
                "b0undary",
            )
            .into_bytes()
        });
    let message = prop_oneof![
        2 => mangled,
        2 => real,
        1 => prop::collection::vec(any::<u8>(), 0..3000),
        1 => body(),
    ];
    let content_type = prop::sample::select(vec![
        "message/rfc822",
        "text/plain",
        "application/octet-stream",
        "application/json",
        "multipart/form-data; boundary=x",
        "",
    ]);
    let request = prop_oneof![
        3 => (message, content_type).prop_map(|(m, ct)| ("hook".to_owned(), m, ct.to_owned())),
        1 => (token, prop::sample::select(vec!["GET", "POST"]), body()).prop_map(|(t, method, b)| (format!("{method} {t}"), b, "application/x-www-form-urlencoded".to_owned())),
    ];
    let mut runner = TestRunner::new(PropConfig {
        cases: 300,
        failure_persistence: None,
        ..PropConfig::default()
    });
    runner
        .run(&request, |(what, body, ct)| {
            let (url, method) = match what.split_once(' ') {
                None => (format!("{base}/hooks/email/inbound"), reqwest::Method::POST),
                Some((m, t)) => (format!("{base}/u/{t}"), reqwest::Method::from_bytes(m.as_bytes()).unwrap()),
            };
            let (status, ctype, text) = rt.block_on(async {
                let mut req = client.request(method.clone(), &url).bearer_auth(TOKEN).body(body.clone());
                if !ct.is_empty() {
                    req = req.header("content-type", ct.clone());
                }
                let res = req.send().await.expect("the server answers");
                let status = res.status().as_u16();
                let ctype = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (status, ctype, res.text().await.unwrap_or_default())
            });
            prop_assert!(status < 500, "{method} {url} ({ct}) → {status}: {text}");
            if (400..500).contains(&status) {
                prop_assert!(
                    ctype.starts_with("application/json"),
                    "{method} {url} → {status} with {ctype}: {text}"
                );
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        // Nothing acted on a delivery that does not exist; every message was kept.
        let receipts: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_receipts")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(receipts, 0);
        let suppressions: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(suppressions, 0);
        api.stop().await;
    });
}

/// The SMS provider's hooks with correctly signed but hostile forms: any subset of the fields
/// Twilio sends, hostile values, unknown fields, each case posted twice (a replay). Never a
/// 500; every refusal is a 4xx with the JSON error body; every answer otherwise is TwiML.
#[test]
fn sms_hooks_survive_signed_hostile_and_replayed_forms() {
    const PUBLIC: &str = "https://school.example";
    const AUTH: &str = "hostile-auth-token";
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (_db, api) = rt.block_on(async {
        let db = TestDb::new().await;
        // A student with a number and a sent SMS, so some callbacks and texts find something.
        let uid: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, phone, role, first_name, last_name) VALUES ('s@b.test', '+447700900123', 'student', 'S', 'T') RETURNING id",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let nid: i64 = sqlx::query_scalar(
            "INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key)
             VALUES ($1, 'lesson_reminder', 't', 'c', '{sms,email}', 'first', 'hostile') RETURNING id",
        )
        .bind(uid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO notification_deliveries (notification_id, channel, target, status, provider_message_id, sent_at, attempts)
             VALUES ($1, 'sms', '+447700900123', 'sent', 'SM1', now(), 1)",
        )
        .bind(nid)
        .execute(&db.pool)
        .await
        .unwrap();
        let mut config = db.config();
        config.public_base_url = PUBLIC.into();
        config.sms = Some(dashlight_core::config::SmsConfig {
            api_base_url: "http://127.0.0.1:9".into(),
            account_sid: "AC1".into(),
            auth_token: AUTH.into(),
            from: "+447700900000".into(),
            max_segments: 3,
        });
        let api = spawn_api(&config, db.pool.clone(), Clock::system()).await;
        (db, api)
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let field = prop_oneof![
        Just("From".to_owned()),
        Just("Body".to_owned()),
        Just("MessageSid".to_owned()),
        Just("MessageStatus".to_owned()),
        Just("ErrorCode".to_owned()),
        Just("To".to_owned()),
        Just("AccountSid".to_owned()),
        "[A-Za-z]{1,12}",
    ];
    let value = prop_oneof![
        2 => nasty_string(),
        1 => prop::sample::select(vec!["SM1", "AC1", "SM0123456789abcdef0123456789abcdef", "SMcap0001NumMedia0", "+447700900123", "delivered", "undelivered", "failed", "sent", "STOP", "START", "C", "R", "HELP", "30003", "21610", ""])
            .prop_map(str::to_owned),
    ];
    let strategy = (
        prop::sample::select(vec!["/hooks/sms/status", "/hooks/sms/inbound"]),
        prop::collection::vec((field, value), 0..6),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(PropConfig {
        cases: 160,
        failure_persistence: None,
        ..PropConfig::default()
    });
    runner
        .run(&strategy, |(path, params, signed)| {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let signature = if signed {
                dashlight_tests::sms::twilio_signature(AUTH, &format!("{PUBLIC}{path}"), &pairs)
            } else {
                "AAAA".to_owned()
            };
            let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
            for attempt in 0..2 {
                let (status, ctype, text) = rt.block_on(async {
                    let res = client
                        .post(format!("{}{path}", api.base))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("X-Twilio-Signature", &signature)
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the server answers");
                    let status = res.status().as_u16();
                    let ctype = res
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    (status, ctype, res.text().await.unwrap_or_default())
                });
                prop_assert!(status < 500, "{path} (attempt {attempt}) {pairs:?} → {status}: {text}");
                if !signed {
                    prop_assert_eq!(status, 403);
                }
                if (400..500).contains(&status) {
                    prop_assert!(ctype.starts_with("application/json"), "{path} → {status} with {ctype}: {text}");
                } else {
                    prop_assert!(
                        ctype.starts_with("application/xml") && text.contains("<Response>"),
                        "{path} → {status} with {ctype}: {text}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(api.stop());
}
