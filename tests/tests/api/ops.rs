//! Operations: queue counts, jobs and their retry, notification and delivery lists, delivery
//! retries (one and in bulk) — which only ever enqueue jobs.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::{Api, lesson_start};

/// Books a lesson and returns `(booking_id, the ids of its notifications)`.
async fn booked(api: &Api, name: &str) -> (i64, Vec<i64>) {
    let (_, s) = api.student(&format!("{name}-s")).await;
    let (_, i) = api.instructor(&format!("{name}-i")).await;
    let b = api.book(s, i, lesson_start(3)).await;
    let id = b["id"].as_i64().unwrap();
    let notes: Vec<i64> = sqlx::query_scalar("SELECT id FROM notifications WHERE booking_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(api.pool())
        .await
        .unwrap();
    (id, notes)
}

async fn delivery(api: &Api, notification: i64, channel: &str, target: &str, status: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, last_error) VALUES ($1, $2, $3, $4, 3, 'boom') RETURNING id")
        .bind(notification)
        .bind(channel)
        .bind(target)
        .bind(status)
        .fetch_one(api.pool())
        .await
        .unwrap()
}

/// The `retry_delivery_id`s of the notification jobs enqueued so far.
async fn retry_jobs(api: &Api) -> Vec<i64> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT job FROM apalis.jobs WHERE job_type = 'dashlight.notifications' ORDER BY id")
        .fetch_all(api.pool())
        .await
        .unwrap();
    let mut ids: Vec<i64> = payloads
        .iter()
        .filter_map(|p| serde_json::from_slice::<Value>(p).ok())
        .filter_map(|v| v["retry_delivery_id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn queues_and_jobs() {
    let api = Api::start().await;
    let q = api.get("/api/queues").await.expect(200);
    assert_eq!(
        q,
        json!([
            {"queue": "dashlight.notifications", "pending": 0, "scheduled": 0, "running": 0, "done": 0, "failed": 0, "dead": 0},
            {"queue": "dashlight.periodic", "pending": 0, "scheduled": 0, "running": 0, "done": 0, "failed": 0, "dead": 0},
        ]),
        "both queues, even empty"
    );
    booked(&api, "q").await;
    // Four jobs: confirmation and alert due now, two reminders due later. Make one failed with
    // attempts left, one failed for good, one killed, one done.
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.jobs ORDER BY id")
        .fetch_all(api.pool())
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE id = $1")
        .bind(&ids[0])
        .execute(api.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Failed', attempts = 1, last_result = '{\"Err\": \"handler failed\"}' WHERE id = $1")
        .bind(&ids[1])
        .execute(api.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Failed', attempts = max_attempts WHERE id = $1")
        .bind(&ids[2])
        .execute(api.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Killed', attempts = 2, done_at = now() WHERE id = $1")
        .bind(&ids[3])
        .execute(api.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, run_at) VALUES
           (apalis.generate_ulid(), 'dashlight.periodic', convert_to('{\"task\":\"invoices\",\"tick\":\"2030-01-01T00:00:00Z\"}', 'UTF8'), 'Pending', now() + interval '1 hour'),
           (apalis.generate_ulid(), 'dashlight.periodic', convert_to('{\"task\":\"prune_jobs\",\"tick\":\"2030-01-01T00:00:00Z\"}', 'UTF8'), 'Running', now())",
    )
    .execute(api.pool())
    .await
    .unwrap();
    let q = api.get("/api/queues").await.expect(200);
    assert_eq!(
        q[0],
        json!({"queue": "dashlight.notifications", "pending": 0, "scheduled": 0, "running": 0, "done": 1, "failed": 1, "dead": 2})
    );
    assert_eq!(
        q[1],
        json!({"queue": "dashlight.periodic", "pending": 0, "scheduled": 1, "running": 1, "done": 0, "failed": 0, "dead": 0})
    );

    // Newest first, filtered, paged.
    let all = api.get("/api/jobs").await.expect(200);
    let listed: Vec<&str> = all["items"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    let mut newest_first = listed.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed, newest_first);
    assert_eq!(listed.len(), 6);
    assert!(all["next_cursor"].is_null());
    let dead = api.get("/api/jobs?queue=dashlight.notifications&status=dead").await.expect(200);
    let dead_ids: BTreeSet<&str> = dead["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(dead_ids, BTreeSet::from([ids[2].as_str(), ids[3].as_str()]));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/jobs?limit=4&cursor={c}"),
            None => "/api/jobs?limit=4".to_owned(),
        };
        let page = api.get(&path).await.expect(200);
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, listed);
    api.get("/api/jobs?limit=501")
        .await
        .expect_error(422, "invalid_value", Some("limit"));
    api.get("/api/jobs?limit=0").await.expect_error(422, "invalid_value", Some("limit"));
    api.get("/api/jobs?limit=ten")
        .await
        .expect_error(422, "invalid_value", Some("limit"));
    api.get("/api/jobs?status=Killed")
        .await
        .expect_error(422, "invalid_value", Some("status"));
    api.get("/api/jobs?queue=emails")
        .await
        .expect_error(422, "invalid_value", Some("queue"));
    api.get("/api/jobs?cursor=nope")
        .await
        .expect_error(422, "invalid_value", Some("cursor"));
    api.get("/api/jobs?stauts=dead")
        .await
        .expect_error(422, "unknown_field", Some("stauts"));

    // One job: payload decoded, attempts, last result.
    let j = api.get(&format!("/api/jobs/{}", ids[1])).await.expect(200);
    assert_eq!(j["state"], "failed");
    assert_eq!(j["status"], "Failed");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["last_result"], json!({"Err": "handler failed"}));
    assert!(j["payload"]["notification_id"].is_i64(), "{j}");
    api.get("/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .await
        .expect_error(404, "not_found", None);

    // Retry: failed and killed jobs go back to Pending; others are a conflict.
    for id in [&ids[1], &ids[3]] {
        let r = api.post(&format!("/api/jobs/{id}/retry"), json!({})).await.expect(202);
        assert_eq!(r["status"], "Pending");
        assert_eq!(r["attempts"], 0);
        let (status, attempts, lock_by, done_at): (String, i32, Option<String>, Option<chrono::DateTime<Utc>>) =
            sqlx::query_as("SELECT status, attempts, lock_by, done_at FROM apalis.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(api.pool())
                .await
                .unwrap();
        assert_eq!((status.as_str(), attempts, lock_by, done_at), ("Pending", 0, None, None));
    }
    api.post(&format!("/api/jobs/{}/retry", ids[0]), json!({}))
        .await
        .expect_error(409, "conflict", None);
    api.post(&format!("/api/jobs/{}/retry", ids[1]), json!({}))
        .await
        .expect_error(409, "conflict", None);
    api.post("/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry", json!({}))
        .await
        .expect_error(404, "not_found", None);
    let q = api.get("/api/queues").await.expect(200);
    assert_eq!(
        (q[0]["pending"].as_i64(), q[0]["dead"].as_i64(), q[0]["failed"].as_i64()),
        (Some(2), Some(1), Some(0))
    );
    api.stop().await;
}

#[tokio::test]
async fn notification_and_delivery_lists() {
    let api = Api::start().await;
    let (booking, notes) = booked(&api, "lists").await;
    let (_, other_notes) = booked(&api, "others").await;
    let student_user: i64 = sqlx::query_scalar("SELECT user_id FROM notifications WHERE id = $1")
        .bind(notes[0])
        .fetch_one(api.pool())
        .await
        .unwrap();
    let d1 = delivery(&api, notes[0], "email", "a@x.test", "failed").await;
    let d2 = delivery(&api, notes[0], "push", "https://p.test/1", "sent").await;
    let d3 = delivery(&api, other_notes[0], "email", "b@x.test", "dead").await;

    let page = api.get(&format!("/api/notifications?user_id={student_user}")).await.expect(200);
    let items = page["items"].as_array().unwrap();
    assert!(items.iter().all(|n| n["user_id"] == student_user));
    let confirmed = items.iter().find(|n| n["id"] == notes[0]).expect("the confirmation");
    assert_eq!(confirmed["kind"], "booking_confirmed");
    assert_eq!(confirmed["booking_id"], booking);
    let ds: Vec<i64> = confirmed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ds, vec![d1, d2]);
    let page = api.get("/api/notifications?kind=booking_alert").await.expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["items"].as_array().unwrap().iter().all(|n| n["kind"] == "booking_alert"));
    let p1 = api.get("/api/notifications?limit=3").await.expect(200);
    let cursor = p1["next_cursor"].as_str().expect("more pages").to_owned();
    let p2 = api.get(&format!("/api/notifications?limit=500&cursor={cursor}")).await.expect(200);
    assert_eq!(p1["items"].as_array().unwrap().len() + p2["items"].as_array().unwrap().len(), 8);
    assert!(p2["next_cursor"].is_null());
    api.get("/api/notifications?kind=gossip")
        .await
        .expect_error(422, "invalid_value", Some("kind"));
    api.get("/api/notifications?user_id=me")
        .await
        .expect_error(422, "invalid_value", Some("user_id"));

    let ids = |v: &Value| -> Vec<i64> { v["items"].as_array().unwrap().iter().map(|d| d["id"].as_i64().unwrap()).collect() };
    assert_eq!(ids(&api.get("/api/deliveries").await.expect(200)), vec![d3, d2, d1]);
    assert_eq!(ids(&api.get("/api/deliveries?status=failed").await.expect(200)), vec![d1]);
    assert_eq!(ids(&api.get("/api/deliveries?channel=email").await.expect(200)), vec![d3, d1]);
    assert_eq!(
        ids(&api.get(&format!("/api/deliveries?user_id={student_user}")).await.expect(200)),
        vec![d2, d1]
    );
    assert_eq!(
        ids(&api
            .get("/api/deliveries?kind=booking_confirmed&channel=email&status=dead")
            .await
            .expect(200)),
        vec![d3]
    );
    let since = (Utc::now() - Duration::hours(1)).to_rfc3339();
    assert_eq!(
        ids(&api
            .get(&format!("/api/deliveries?since={}", since.replace('+', "%2B")))
            .await
            .expect(200))
        .len(),
        3
    );
    let future = (Utc::now() + Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert!(ids(&api.get(&format!("/api/deliveries?since={future}")).await.expect(200)).is_empty());
    let d = &api.get("/api/deliveries?status=dead").await.expect(200)["items"][0];
    assert_eq!(
        (d["kind"].as_str(), d["last_error"].as_str(), d["attempts"].as_i64()),
        (Some("booking_confirmed"), Some("boom"), Some(3))
    );
    api.get("/api/deliveries?since=2030-01-01T00:00:00")
        .await
        .expect_error(422, "invalid_value", Some("since"));
    api.get("/api/deliveries?status=lost")
        .await
        .expect_error(422, "invalid_value", Some("status"));
    api.get("/api/deliveries?channel=fax")
        .await
        .expect_error(422, "invalid_value", Some("channel"));
    let p = api.get("/api/deliveries?limit=2").await.expect(200);
    assert_eq!(ids(&p), vec![d3, d2]);
    let p = api
        .get(&format!("/api/deliveries?limit=2&cursor={}", p["next_cursor"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(ids(&p), vec![d1]);
    assert!(p["next_cursor"].is_null());
    api.stop().await;
}

#[tokio::test]
async fn delivery_retries_only_enqueue_jobs() {
    let api = Api::start().await;
    let (_, notes) = booked(&api, "retry").await;
    let (_, more) = booked(&api, "retry2").await;
    let failed_email = delivery(&api, notes[0], "email", "a@x.test", "failed").await;
    let dead_push = delivery(&api, notes[0], "push", "https://p.test/1", "dead").await;
    let sent = delivery(&api, notes[1], "sms", "+447700900101", "sent").await;
    let dead_email = delivery(&api, more[0], "email", "b@x.test", "dead").await;
    let failed_sms = delivery(&api, more[1], "sms", "+447700900102", "failed").await;
    let statuses = || async {
        api.count("SELECT count(*) FROM notification_deliveries WHERE status IN ('failed', 'dead')")
            .await
    };
    let jobs_before = api.count("SELECT count(*) FROM apalis.jobs").await;

    // One delivery.
    let r = api
        .post(&format!("/api/deliveries/{failed_email}/retry"), json!({}))
        .await
        .expect(202);
    assert_eq!(r, json!({"delivery_id": failed_email, "status": "queued"}));
    assert_eq!(retry_jobs(&api).await, vec![failed_email]);
    api.post(&format!("/api/deliveries/{sent}/retry"), json!({}))
        .await
        .expect_error(409, "conflict", None);
    api.post("/api/deliveries/999999/retry", json!({}))
        .await
        .expect_error(404, "not_found", None);
    api.post("/api/deliveries/x1/retry", json!({}))
        .await
        .expect_error(404, "not_found", None);

    // In bulk, filtered.
    let r = api
        .post("/api/deliveries/retry", json!({"channel": "email", "status": "dead"}))
        .await
        .expect(202);
    assert_eq!(r, json!({"retried": 1}));
    assert_eq!(retry_jobs(&api).await, vec![failed_email, dead_email]);
    let r = api
        .post("/api/deliveries/retry", json!({"kind": "booking_alert"}))
        .await
        .expect(202);
    assert_eq!(r, json!({"retried": 1}), "the failed SMS alert");
    let r = api
        .post(
            "/api/deliveries/retry",
            json!({"since": (Utc::now() + Duration::hours(1)).to_rfc3339()}),
        )
        .await
        .expect(202);
    assert_eq!(r, json!({"retried": 0}));
    // Everything failed or dead, with an empty body.
    let r = api.post_raw("/api/deliveries/retry", None, "").await.expect(202);
    assert_eq!(r, json!({"retried": 4}));
    let mut expected = vec![
        failed_email,
        dead_email,
        failed_sms,
        failed_email,
        dead_push,
        dead_email,
        failed_sms,
    ];
    expected.sort_unstable();
    assert_eq!(retry_jobs(&api).await, expected, "one job per delivery per retry");
    assert_eq!(api.count("SELECT count(*) FROM apalis.jobs").await, jobs_before + 7);

    api.post("/api/deliveries/retry", json!({"status": "sent"}))
        .await
        .expect_error(422, "invalid_value", Some("status"));
    api.post("/api/deliveries/retry", json!({"channel": "pigeon"}))
        .await
        .expect_error(422, "invalid_value", Some("channel"));
    api.post("/api/deliveries/retry", json!({"since": "yesterday"}))
        .await
        .expect_error(422, "invalid_value", Some("since"));
    api.post_raw("/api/deliveries/retry", Some("application/json"), "{")
        .await
        .expect_error(400, "malformed_json", None);
    // The API never touched a delivery.
    assert_eq!(statuses().await, 4);
    assert_eq!(
        api.count("SELECT count(*) FROM notification_deliveries WHERE status = 'sent'")
            .await,
        1
    );
    api.stop().await;
}
