//! The API's contract: the token on every /api route, the router ↔ OpenAPI ↔ `ROUTES`
//! agreement, JSON error bodies for malformed, mistyped and oversized requests, health,
//! readiness and metrics, start-up errors and clean shutdown.

use std::{collections::BTreeSet, time::Duration};

use dashlight_admin_api::ROUTES;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use dashlight_tests::api::spawn_api;

use crate::{Api, Reply, TOKEN};

fn concrete(path: &str) -> String {
    // A well-formed id of either kind: numbers for our rows, ULIDs for apalis jobs.
    if path.starts_with("/api/jobs/") {
        path.replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    } else {
        path.replace("{id}", "1")
    }
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_api_route_needs_the_token_and_the_document_matches_the_router() {
    // Two wrong tokens per route, on purpose: above the per-address brake on guessing (tested in
    // api/security.rs), which would otherwise answer 429 part-way through.
    let api = Api::start_with(dashlight_core::Clock::system(), |c| c.auth_failure_limit = 10_000).await;
    let doc = api.get("/api/openapi.json").await.expect(200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let documented = documented_routes(&doc);
    let listed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, listed, "the OpenAPI document and ROUTES list the same routes");
    // Every error response documented uses the error schema.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
            }
        }
    }

    for (method, path) in &documented {
        let url = format!("{}{}", api.base, concrete(path));
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let is_api = path.starts_with("/api/");
        for token in [None, Some("wrong-token".to_owned()), Some(format!("{TOKEN}-but-longer"))] {
            let mut req = api.http.request(m.clone(), &url).json(&json!({}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let reply = Reply::read(req.send().await.unwrap()).await;
            if is_api {
                reply.expect_error(401, "unauthorized", None);
            } else {
                assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path} is open");
            }
        }
        // With the token the route exists: whatever it answers, it is not "no such route".
        let reply = Reply::read(
            api.http
                .request(m.clone(), &url)
                .bearer_auth(TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(reply.body["message"], "no such route", "{method} {path} is routed");
        assert!(
            reply.status.as_u16() < 500 || reply.status == StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {}",
            reply.body
        );
    }
    // "Basic" or a bare token is no bearer token.
    let r = Reply::read(
        api.http
            .get(format!("{}/api/queues", api.base))
            .header("authorization", format!("Basic {TOKEN}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect_error(401, "unauthorized", None);
    let r = Reply::read(
        api.http
            .get(format!("{}/api/queues", api.base))
            .header("authorization", TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect_error(401, "unauthorized", None);
    api.stop().await;
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_get_json_errors() {
    let api = Api::start().await;
    api.get("/nope").await.expect_error(404, "not_found", None);
    api.get("/api/nope").await.expect_error(404, "not_found", None);
    api.call(Method::DELETE, "/api/users", None)
        .await
        .expect_error(405, "method_not_allowed", None);
    api.post("/api/bookings/abc/cancel", json!({}))
        .await
        .expect_error(404, "not_found", None);
    api.put("/api/users/12x/preferences", json!({}))
        .await
        .expect_error(404, "not_found", None);
    api.get("/api/bookings/99999999999999999999/timeline")
        .await
        .expect_error(404, "not_found", None);
    api.get("/api/jobs/not-a-ulid").await.expect_error(404, "not_found", None);
    api.stop().await;
}

#[tokio::test]
async fn malformed_mistyped_and_oversized_bodies() {
    let api = Api::start().await;
    let (_, student) = api.student("bodies").await;
    let (_, instructor) = api.instructor("bodyguard").await;

    // Not JSON at all.
    api.post_raw("/api/bookings", Some("application/json"), "{\"student_id\": ")
        .await
        .expect_error(400, "malformed_json", None);
    api.post_raw("/api/users", Some("application/json"), "not json")
        .await
        .expect_error(400, "malformed_json", None);
    api.post_raw("/api/users", Some("application/json"), "{} trailing")
        .await
        .expect_error(400, "malformed_json", None);
    // Wrong content type, or none.
    api.post_raw("/api/bookings", Some("text/plain"), "{}")
        .await
        .expect_error(415, "unsupported_media_type", None);
    api.post_raw("/api/bookings", None, "{}")
        .await
        .expect_error(415, "unsupported_media_type", None);
    // Missing fields and wrong types name the field.
    api.post(
        "/api/bookings",
        json!({"student_id": student, "start_time": "2030-01-01T10:00:00Z", "end_time": "2030-01-01T11:00:00Z"}),
    )
    .await
    .expect_error(422, "missing_field", Some("instructor_id"));
    api.post(
        "/api/bookings",
        json!({"student_id": "one", "instructor_id": instructor, "start_time": "2030-01-01T10:00:00Z", "end_time": "2030-01-01T11:00:00Z"}),
    )
    .await
    .expect_error(422, "invalid_type", Some("student_id"));
    api.post(
        "/api/users",
        json!({"role": "instructor", "email": "x@school.test", "first_name": "X", "last_name": "Y", "instructor": {"license_number": 7}}),
    )
    .await
    .expect_error(422, "invalid_type", Some("instructor.license_number"));
    api.post(
        "/api/users",
        json!({"role": "instructor", "email": "x@school.test", "first_name": "X", "last_name": "Y", "instructor": {}}),
    )
    .await
    .expect_error(422, "missing_field", Some("instructor.license_number"));
    api.put(
        "/api/instructors/1/availability",
        json!([{"day_of_week": 1, "start_time": "08:00"}]),
    )
    .await
    .expect_error(422, "missing_field", Some("[0].end_time"));
    api.post("/api/bookings", json!([])).await.expect_error(422, "invalid_type", None);
    // A misspelt field is not silently ignored.
    api.post("/api/bookings", json!({"student_id": student, "instructor_id": instructor, "start_time": "2030-01-01T10:00:00Z", "end_time": "2030-01-01T11:00:00Z", "pickup_locaton": "x"}))
        .await
        .expect_error(422, "unknown_field", Some("pickup_locaton"));
    // Times need an offset.
    api.post("/api/bookings", json!({"student_id": student, "instructor_id": instructor, "start_time": "2030-01-01T10:00:00", "end_time": "2030-01-01T11:00:00Z"}))
        .await
        .expect_error(422, "invalid_value", Some("start_time"));
    api.post(
        "/api/bookings",
        json!({"student_id": student, "instructor_id": instructor, "start_time": "2030-01-01T10:00:00+01:00", "end_time": "next tuesday"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("end_time"));

    // Over 1 MiB: 413 with the error body, whether the length is announced or streamed.
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    api.post_raw("/api/bookings/1/cancel", Some("application/json"), big.clone())
        .await
        .expect_error(413, "payload_too_large", None);
    let (status, body) = post_chunked(&api.base, "/api/bookings/1/cancel", big.into_bytes()).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")), "{body}");
    // Just under the limit is read (and then judged on its merits).
    let fits = format!("{{\"reason\": \"{}\"}}", "x".repeat(1000 * 1000));
    api.post_raw("/api/bookings/999999/cancel", Some("application/json"), fits)
        .await
        .expect_error(422, "invalid_value", Some("reason"));
    api.stop().await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length) over a raw connection
/// and returns the status and the JSON body of the answer.
async fn post_chunked(base: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        // The server may answer and close before it has read everything: stop writing then.
        wr.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            wr.write_all(chunk).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(())
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("an answer")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        if complete_response(&raw).is_some() {
            break;
        }
    }
    writer.abort();
    complete_response(&raw).unwrap_or_else(|| panic!("incomplete response: {}", String::from_utf8_lossy(&raw)))
}

/// Parses a complete HTTP/1.1 response with a Content-Length body.
fn complete_response(raw: &[u8]) -> Option<(u16, Value)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))?
        .parse()
        .ok()?;
    if body.len() < len {
        return None;
    }
    Some((status, serde_json::from_str(&body[..len]).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let api = Api::start().await;
    let r = Reply::read(api.http.get(format!("{}/healthz", api.base)).send().await.unwrap()).await;
    assert_eq!(r.expect(200)["status"], "ok");
    let r = Reply::read(api.http.get(format!("{}/readyz", api.base)).send().await.unwrap()).await;
    assert_eq!(r.expect(200)["status"], "ready");
    api.get("/api/queues").await.expect(200);
    let res = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = res.text().await.unwrap();
    assert!(text.contains("dashlight_jobs{"), "job gauges: {text}");
    assert!(text.contains("queue=\"dashlight.notifications\""), "{text}");
    assert!(text.contains("queue=\"dashlight.periodic\""), "{text}");
    assert!(text.contains("dashlight_http_requests_total"), "{text}");
    assert!(!text.contains(TOKEN), "the token never shows");

    // Not migrated: not ready.
    sqlx::query("DROP TABLE _sqlx_migrations").execute(api.pool()).await.unwrap();
    let r = Reply::read(api.http.get(format!("{}/readyz", api.base)).send().await.unwrap()).await;
    r.expect_error(503, "unavailable", None);
    api.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_is_503_within_seconds() {
    // A pool towards a port nobody listens on, built lazily as a running API would hold it
    // when the database goes away.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://root@127.0.0.1:9/gone")
        .unwrap();
    let mut config = dashlight_core::Config::for_database("postgres://root@127.0.0.1:9/gone");
    config.admin_api_token = Some(TOKEN.into());
    let server = spawn_api(&config, pool, dashlight_core::Clock::system()).await;
    let (http, base) = (&server.http, &server.base);
    let started = std::time::Instant::now();
    let r: Reply = Reply::read(http.get(format!("{base}/readyz")).send().await.unwrap()).await;
    assert!(started.elapsed() < Duration::from_secs(3), "readyz answers within ~2 s");
    r.expect_error(503, "unavailable", None);
    let r = Reply::read(http.get(format!("{base}/api/queues")).bearer_auth(TOKEN).send().await.unwrap()).await;
    r.expect_error(503, "unavailable", None);
    let r = Reply::read(
        http.post(format!("{base}/api/bookings/1/cancel"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect_error(503, "unavailable", None);
    let r = Reply::read(http.get(format!("{base}/healthz")).send().await.unwrap()).await;
    r.expect(200);
    server.stop().await;
}

#[tokio::test]
async fn start_up_errors_name_the_variable() {
    let db = dashlight_tests::db::TestDb::new().await;
    let mut config = db.config();
    config.admin_api_token = None;
    let err = dashlight_admin_api::run(&config, db.pool.clone(), dashlight_core::Clock::system(), async {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("ADMIN_API_TOKEN"), "{err:#}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = dashlight_admin_api::serve(&config, db.pool.clone(), dashlight_core::Clock::system(), listener, async {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("ADMIN_API_TOKEN"), "{err:#}");

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = db.config();
    config.admin_api_addr = taken.local_addr().unwrap().to_string();
    let err = dashlight_admin_api::run(&config, db.pool.clone(), dashlight_core::Clock::system(), async {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("ADMIN_API_ADDR"), "{err:#}");

    // `run` on a free port stops when told to.
    let mut config = db.config();
    config.admin_api_addr = "127.0.0.1:0".into();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            dashlight_admin_api::run(&config, pool, dashlight_core::Clock::system(), async move {
                let _ = rx.await;
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn several_routers_in_one_process() {
    // The metrics recorder is installed once per process; building more routers is fine.
    let a = Api::start().await;
    let b = Api::start().await;
    a.get("/api/queues").await.expect(200);
    b.get("/api/queues").await.expect(200);
    let r = Reply::read(b.http.get(format!("{}/metrics", b.base)).send().await.unwrap()).await;
    assert_eq!(r.status, 200);
    a.stop().await;
    b.stop().await;
}
