//! Faults and hostile input (docs/security.md), on the worker's side: providers and push endpoints that
//! misbehave or point where they should not, against the real worker, real Postgres and
//! loopback protocol peers.
//!
//! - a push service answering 429 with an absurd `Retry-After` does not wedge the worker;
//! - a push endpoint that redirects is not followed;
//! - with `PUSH_ALLOW_PRIVATE_ENDPOINTS` off, the worker refuses loopback endpoints when it
//!   sends (IP literal, `localhost`), and its push client's resolver refuses any name that
//!   resolves to a non-public address;
//! - SMS bodies are cut to `SMS_MAX_SEGMENTS`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::any};
use chrono::Utc;
use dashlight_core::{
    Clock,
    kinds::Kind,
    notify::{self, NewNotification},
};
use dashlight_tests::{
    push::PushResponse,
    wait::try_wait_until,
    world::{Person, World},
};
use serde_json::json;

const LONG: Duration = Duration::from_secs(90);

/// A `daily_agenda` (push → email) for `p`, which goes by push when `p` has a device.
async fn notify_push(w: &World, p: &Person, key: &str) -> i64 {
    let mut conn = w.pool().acquire().await.unwrap();
    let mut n = NewNotification::to_user(Kind::DailyAgenda, p.user_id, key.to_owned(), Utc::now());
    n.title = "Today".into();
    n.content = "Your lessons today".into();
    n.data = json!({"date": "2026-12-02T00:00:00Z", "count": 0, "lessons": []});
    notify::create(&mut conn, n).await.unwrap().unwrap()
}

/// The push delivery of notification `n`: `(status, last_error)`, once it is not pending.
async fn push_outcome(w: &World, n: i64, done: &'static [&'static str]) -> (String, Option<String>) {
    try_wait_until("the push delivery to settle", LONG, || async {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, last_error FROM notification_deliveries WHERE notification_id = $1 AND channel = 'push'")
                .bind(n)
                .fetch_optional(w.pool())
                .await?;
        Ok(row.filter(|(s, _)| done.contains(&s.as_str())))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_absurd_retry_after_does_not_wedge_the_worker() {
    let w = World::start().await;
    let a = w.person("instructor", "Wedge", None).await;
    let b = w.person("instructor", "Next", None).await;
    w.device(&a, "wedge-phone").await;
    w.device(&b, "next-phone").await;
    w.push.respond_with(
        "wedge-phone",
        PushResponse::TooMany {
            retry_after_secs: 100_000_000_000_000,
        },
    );
    let worker = w.spawn_worker(Clock::system());

    let first = notify_push(&w, &a, "absurd-retry-after").await;
    // The 429 is taken as transient and the retry is scheduled within the cap.
    let (status, error) = push_outcome(&w, first, &["retrying", "failed", "dead"]).await;
    assert_eq!(status, "retrying", "{error:?}");
    let next_attempt: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM notification_deliveries WHERE notification_id = $1 AND channel = 'push'")
            .bind(first)
            .fetch_one(w.pool())
            .await
            .unwrap();
    assert!(
        next_attempt <= Utc::now() + chrono::Duration::hours(1) + chrono::Duration::minutes(1),
        "Retry-After is capped: next attempt at {next_attempt}"
    );

    // The worker is still sending: the next notifications go out.
    let second = notify_push(&w, &b, "after-the-absurd-one").await;
    let third = notify_push(&w, &b, "and-another").await;
    for n in [second, third] {
        let (status, error) = push_outcome(&w, n, &["sent", "failed", "dead"]).await;
        assert_eq!(status, "sent", "{error:?}");
    }
    assert_eq!(w.push.delivered().len(), 2);
    worker.stop().await.unwrap();
}

/// A server on loopback that answers every request with `status` and `Location: location`,
/// counting the requests it gets.
async fn redirector(status: StatusCode, location: String) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let counter = hits.clone();
    let app = Router::new().fallback(any(move || {
        let counter = counter.clone();
        let location = location.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (status, [("location", location)], "moved").into_response()
        }
    }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, hits)
}

#[tokio::test]
async fn a_redirecting_push_endpoint_is_not_followed() {
    let w = World::start().await;
    let p = w.person("instructor", "Redirected", None).await;
    // Where the redirect points: it must never be asked anything.
    let (target, target_hits) = redirector(StatusCode::OK, String::new()).await;
    let (endpoint, redirect_hits) = redirector(StatusCode::TEMPORARY_REDIRECT, format!("{target}/internal/admin")).await;
    let sub = w.push.subscribe("redirected-phone");
    sqlx::query("INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, 'redirected-phone', $2, $3, $4)")
        .bind(p.user_id)
        .bind(format!("{endpoint}/push/redirected-phone"))
        .bind(&sub.p256dh)
        .bind(&sub.auth)
        .execute(w.pool())
        .await
        .unwrap();
    let worker = w.spawn_worker(Clock::system());
    let n = notify_push(&w, &p, "redirect").await;
    let (status, error) = push_outcome(&w, n, &["sent", "retrying", "failed", "dead"]).await;
    assert_ne!(status, "sent", "a redirect is not a delivery");
    assert!(error.as_deref().is_some_and(|e| e.contains("redirect")), "{error:?}");
    assert!(redirect_hits.load(Ordering::SeqCst) >= 1, "the endpoint itself was asked");
    assert_eq!(target_hits.load(Ordering::SeqCst), 0, "the redirect was followed");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn private_push_endpoints_are_refused_at_connect_time() {
    let mut w = World::start().await;
    // As in production: no loopback or private push endpoints.
    w.config.push_allow_private_endpoints = false;
    let by_ip = w.person("instructor", "Literal", None).await;
    let by_name = w.person("instructor", "Named", None).await;
    let port = w.push.addr().port();
    for (p, endpoint) in [
        (&by_ip, format!("https://127.0.0.1:{port}/push/literal")),
        (&by_name, format!("https://localhost:{port}/push/named")),
    ] {
        let sub = w.push.subscribe(if p.user_id == by_ip.user_id { "literal" } else { "named" });
        sqlx::query("INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, 'phone', $2, $3, $4)")
            .bind(p.user_id)
            .bind(endpoint)
            .bind(&sub.p256dh)
            .bind(&sub.auth)
            .execute(w.pool())
            .await
            .unwrap();
    }
    let worker = w.spawn_worker(Clock::system());
    for p in [&by_ip, &by_name] {
        let n = notify_push(&w, p, &format!("private-{}", p.user_id)).await;
        let (status, error) = push_outcome(&w, n, &["sent", "retrying", "failed", "dead"]).await;
        assert_eq!(status, "failed", "refused for good: {error:?}");
        assert!(error.as_deref().is_some_and(|e| e.contains("refused")), "{error:?}");
    }
    assert!(w.push.received().is_empty(), "nothing reached the loopback service");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn long_sms_bodies_are_cut_to_the_segment_limit() {
    let mut w = World::start().await;
    if let Some(sms) = w.config.sms.as_mut() {
        sms.max_segments = 2;
    }
    let student = w.person("student", "Segments", None).await;
    // No device: the booking alert goes by SMS.
    let instructor = w.person("instructor", "Texted", Some("+447700900555")).await;
    let worker = w.spawn_worker(Clock::system());
    let start = Utc::now() + chrono::Duration::days(3);
    let mut tx = w.pool().begin().await.unwrap();
    dashlight_core::bookings::create(
        &mut tx,
        &w.booking_settings(),
        dashlight_core::bookings::NewBooking {
            student_id: student.profile_id,
            instructor_id: instructor.profile_id,
            start_time: start,
            end_time: start + chrono::Duration::hours(1),
            pickup_location: Some("The long lane behind the old market hall, ".repeat(11)),
            dropoff_location: None,
            series: None,
        },
        Utc::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let sms = w.sms.wait_for(1, LONG).await.unwrap();
    let body = &sms[0].body;
    let (encoding, segments) = dashlight_worker::channels::sms::segments(body);
    assert_eq!(encoding, "GSM-7", "{body}");
    assert_eq!(segments, 2, "cut to SMS_MAX_SEGMENTS: {body}");
    assert!(body.ends_with("..."), "with an ellipsis: {body}");
    assert!(body.starts_with("New booking: Segments"), "{body}");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_push_clients_resolver_refuses_names_of_private_addresses() {
    let (base, hits) = redirector(StatusCode::OK, String::new()).await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    // `localhost` resolves to loopback; only the resolver stands between the name and the
    // connection here (no endpoint check in front of it), as with a rebinding DNS name.
    let url = format!("http://localhost:{port}/");
    let guarded = dashlight_worker::channels::push::http_client(false).unwrap();
    let err = guarded.get(&url).send().await.expect_err("refused by the resolver");
    let chain = dashlight_worker::channels::error_chain(&err);
    assert!(chain.contains("not a public address"), "{chain}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no connection was made");
    // Allowed explicitly (local runs, tests), the same request goes through.
    let open = dashlight_worker::channels::push::http_client(true).unwrap();
    assert_eq!(open.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
