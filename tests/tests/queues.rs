//! Operating the queues (docs/operating.md, "Operating the queues"): pausing and resuming a queue and a
//! channel, cancelling a job, the providers' rate limits shared by worker processes, a
//! provider's 429 holding a channel for every worker, and time-critical kinds before bulk ones.
//! Real Postgres, the loopback SMTP server and SMS API, real workers (in-process, or real
//! processes where two must share a budget).

use std::time::{Duration, Instant};

use chrono::Utc;
use dashlight_core::{
    Clock,
    jobs::{self, NewJob, PeriodicJob, PeriodicTask, QUEUE_NOTIFICATIONS, QUEUE_PERIODIC},
    kinds::Kind,
    notify::{self, NewNotification},
};
use dashlight_tests::{
    api::spawn_api,
    proc::spawn_worker,
    wait::{try_wait_until, wait_until},
    world::{Person, World},
};
use serde_json::{Value, json};
use sqlx::PgConnection;

const LONG: Duration = Duration::from_secs(120);

/// A bulk email (`invoice_issued`) to `p`, due now.
async fn invoice(conn: &mut PgConnection, p: &Person, key: &str) -> i64 {
    let mut n = NewNotification::to_user(Kind::InvoiceIssued, p.user_id, key.to_owned(), Utc::now());
    n.title = "Your invoice".into();
    n.content = "Your invoice".into();
    n.data = json!({"invoice": {"issued_at": "2026-12-02T09:00:00Z", "number": key, "total_minor": 4500, "currency": "GBP"}});
    notify::create(conn, n).await.unwrap().unwrap()
}

/// A time-critical `lesson_reminder` to `p` (push → SMS → email: with a phone and no device, an
/// SMS), due at `due`.
async fn reminder(conn: &mut PgConnection, p: &Person, key: &str, due: chrono::DateTime<Utc>) -> i64 {
    let now = Utc::now();
    let start = now + chrono::Duration::hours(2);
    let mut n = NewNotification::to_user(Kind::LessonReminder, p.user_id, key.to_owned(), now);
    n.data = json!({
        "booking": {"id": 1, "start_time": start.to_rfc3339(), "end_time": (start + chrono::Duration::hours(1)).to_rfc3339(),
                    "pickup_location": null, "instructor_name": "Ellen Marsh", "student_name": "Sam Tester", "status": "confirmed"},
        "offset_label": "2 hours", "offset": "2h"
    });
    n.due_at = due;
    n.expires_at = Some(start);
    notify::create(conn, n).await.unwrap().unwrap()
}

async fn scalar<T>(w: &World, sql: &str, id: i64) -> T
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(w.pool())
        .await
        .unwrap()
}

/// Waits until `n` notification workers are registered (worker processes take a moment to start).
async fn workers_registered(w: &World, n: i64) {
    try_wait_until("worker processes registered", LONG, || async {
        let got: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.workers WHERE worker_type = $1")
            .bind(QUEUE_NOTIFICATIONS)
            .fetch_one(w.pool())
            .await?;
        Ok((got >= n).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_paused_queue_sends_nothing_while_other_queues_go_on_and_everything_after_resume() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let student = w.person("student", "Quinn", None).await;

    let paused = api
        .post(
            "/api/queues/dashlight.notifications/pause",
            json!({"by": "ops-alice", "reason": "provider migration"}),
        )
        .await
        .expect(200);
    assert_eq!(
        (paused["paused_by"].as_str(), paused["scope"].as_str()),
        (Some("ops-alice"), Some("queue"))
    );
    // Bad targets are 422s naming the field.
    api.post("/api/queues/nope/pause", json!({}))
        .await
        .expect_error(422, "invalid_value", Some("queue"));
    api.post("/api/channels/fax/pause", json!({}))
        .await
        .expect_error(422, "invalid_value", Some("channel"));
    api.post("/api/channels/sms/pause", json!({"by": ""}))
        .await
        .expect_error(422, "invalid_value", Some("by"));

    let worker = w.spawn_worker(Clock::system());
    let mut conn = w.pool().acquire().await.unwrap();
    for i in 0..3 {
        invoice(&mut conn, &student, &format!("paused-{i}")).await;
    }
    // Another queue goes on: a periodic job (pruning) runs while the notifications wait.
    let tick = PeriodicJob {
        task: PeriodicTask::PruneJobs,
        tick: Utc::now(),
    };
    jobs::enqueue(&mut conn, &[NewJob::new(QUEUE_PERIODIC, &tick)]).await.unwrap();
    drop(conn);
    try_wait_until("the periodic job to run", LONG, || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'")
            .bind(QUEUE_PERIODIC)
            .fetch_one(w.pool())
            .await?;
        Ok((done > 0).then_some(()))
    })
    .await
    .unwrap();
    // The worker has been fetching all along (the periodic job ran after the invoices were
    // queued, and the drain polls every 100 ms): the paused queue gave it nothing.
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending'")
        .bind(QUEUE_NOTIFICATIONS)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(pending, 3, "nothing fetched from the paused queue");
    assert!(w.smtp.messages().is_empty(), "nothing sent from the paused queue");
    let pauses = api.get("/api/pauses").await.expect(200);
    assert_eq!(pauses["pauses"][0]["name"], "dashlight.notifications");
    assert_eq!(pauses["pauses"][0]["reason"], "provider migration");

    let resumed = api
        .post("/api/queues/dashlight.notifications/resume", json!({"by": "ops-bob"}))
        .await
        .expect(200);
    assert_eq!(resumed["was_paused"], true);
    w.smtp.wait_for_messages(3, LONG).await.unwrap();
    let pauses = api.get("/api/pauses").await.expect(200);
    assert!(pauses["pauses"].as_array().unwrap().is_empty());
    let events: Vec<(String, String)> = pauses["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["actor"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        events,
        vec![
            ("resume".to_owned(), "ops-bob".to_owned()),
            ("pause".to_owned(), "ops-alice".to_owned())
        ],
        "who paused and resumed, newest first"
    );
    // A resume of what is not paused changes nothing.
    let again = api.post("/api/queues/dashlight.notifications/resume", json!({})).await.expect(200);
    assert_eq!(again["was_paused"], false);
    worker.stop().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn a_paused_periodic_queue_runs_no_tick_until_resumed_while_notifications_go_on() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let student = w.person("student", "Tamsin", None).await;
    // Paused before the worker starts: the pause is a row every worker reads, not a worker's state.
    let paused = api
        .post(
            "/api/queues/dashlight.periodic/pause",
            json!({"by": "ops-erin", "reason": "bad invoice run"}),
        )
        .await
        .expect(200);
    assert_eq!(
        (paused["paused_by"].as_str(), paused["name"].as_str()),
        (Some("ops-erin"), Some(QUEUE_PERIODIC))
    );
    let worker = w.spawn_worker(Clock::system());

    // A due tick, fired the way the scheduler fires it.
    assert!(
        dashlight_scheduler::fire(w.pool(), PeriodicTask::PruneJobs, Utc::now(), "scheduler-test")
            .await
            .unwrap()
    );
    let fired_at: chrono::DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(w.pool()).await.unwrap();
    let job: String = sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = $1")
        .bind(QUEUE_PERIODIC)
        .fetch_one(w.pool())
        .await
        .unwrap();
    // The other queue goes on.
    let mut conn = w.pool().acquire().await.unwrap();
    invoice(&mut conn, &student, "while-periodic-paused").await;
    drop(conn);
    w.smtp.wait_for_messages(1, LONG).await.unwrap();
    // The periodic worker is alive and going round its loop (a heartbeat after the tick, and ten
    // of its 100 ms poll intervals gone by), yet has not fetched the due job.
    try_wait_until("the periodic worker to beat after the tick", LONG, || async {
        let beat: Option<bool> = sqlx::query_scalar("SELECT bool_or(last_seen > $2) FROM apalis.workers WHERE worker_type = $1")
            .bind(QUEUE_PERIODIC)
            .bind(fired_at)
            .fetch_one(w.pool())
            .await?;
        Ok(beat.unwrap_or(false).then_some(()))
    })
    .await
    .unwrap();
    wait_until("ten poll intervals after the tick", LONG, || async {
        (Utc::now() > fired_at + chrono::Duration::from_std(w.config.poll_interval * 10).unwrap()).then_some(())
    })
    .await
    .unwrap();
    let row: (String, i32, Option<String>) = sqlx::query_as("SELECT status, attempts, lock_by FROM apalis.jobs WHERE id = $1")
        .bind(&job)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(
        row,
        ("Pending".to_owned(), 0, None),
        "nothing fetched from the paused periodic queue"
    );

    let resumed_at = Instant::now();
    let resumed = api
        .post("/api/queues/dashlight.periodic/resume", json!({"by": "ops-frank"}))
        .await
        .expect(200);
    assert_eq!(resumed["was_paused"], true);
    try_wait_until("the tick's job to run after the resume", LONG, || async {
        let status: String = sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
            .bind(&job)
            .fetch_one(w.pool())
            .await?;
        Ok((status == "Done").then_some(()))
    })
    .await
    .unwrap();
    tracing::info!(
        after_ms = resumed_at.elapsed().as_millis() as u64,
        "periodic job ran after the resume"
    );
    let pauses = api.get("/api/pauses").await.expect(200);
    assert!(pauses["pauses"].as_array().unwrap().is_empty());
    let events: Vec<(String, String, String)> = pauses["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            (QUEUE_PERIODIC.to_owned(), "resume".to_owned(), "ops-frank".to_owned()),
            (QUEUE_PERIODIC.to_owned(), "pause".to_owned(), "ops-erin".to_owned()),
        ]
    );
    worker.stop().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn a_paused_channel_holds_sms_while_email_goes_on_and_resume_sends_it_at_once() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let student = w.person("student", "Rowan", Some("+447700900301")).await;
    api.post("/api/channels/sms/pause", json!({"by": "ops-carol", "reason": "Twilio outage"}))
        .await
        .expect(200);
    let worker = w.spawn_worker(Clock::system());
    let mut conn = w.pool().acquire().await.unwrap();
    let held = reminder(&mut conn, &student, "held-reminder", Utc::now()).await;
    invoice(&mut conn, &student, "goes-on").await;
    drop(conn);

    // Email goes on.
    w.smtp.wait_for_messages(1, LONG).await.unwrap();
    // The SMS waits, pending, with the pause as its reason.
    let (status, reason): (String, Option<String>) = try_wait_until("the SMS to be held", LONG, || async {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, hold_reason FROM notification_deliveries WHERE notification_id = $1 AND channel = 'sms'")
                .bind(held)
                .fetch_optional(w.pool())
                .await?;
        Ok(row)
    })
    .await
    .unwrap();
    assert_eq!(status, "pending");
    let reason = reason.expect("a hold reason");
    assert!(
        reason.contains("sms paused by ops-carol") && reason.contains("Twilio outage"),
        "{reason}"
    );
    assert!(w.sms.received().is_empty(), "nothing reached the SMS provider");
    let n_status: String = scalar(&w, "SELECT status FROM notifications WHERE id = $1", held).await;
    assert_eq!(n_status, "pending", "the notification stays open");

    let resumed = api.post("/api/channels/sms/resume", json!({"by": "ops-carol"})).await.expect(200);
    assert_eq!(resumed["woken"], 1);
    let sms = w.sms.wait_for(1, LONG).await.unwrap();
    assert_eq!(sms[0].to, "+447700900301");
    try_wait_until("the held SMS recorded sent", LONG, || async {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT status, hold_reason FROM notification_deliveries WHERE notification_id = $1 AND channel = 'sms'")
                .bind(held)
                .fetch_one(w.pool())
                .await?;
        Ok((row == ("sent".to_owned(), None)).then_some(()))
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_never_runs_and_its_notification_is_recorded_cancelled() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let student = w.person("student", "Sasha", Some("+447700900302")).await;
    let worker = w.spawn_worker(Clock::system());
    let mut conn = w.pool().acquire().await.unwrap();
    // Due in 3 s: scheduled when cancelled.
    let due = Utc::now() + chrono::Duration::seconds(3);
    let n = reminder(&mut conn, &student, "to-cancel", due).await;
    drop(conn);
    let job: String = sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending'")
        .bind(QUEUE_NOTIFICATIONS)
        .fetch_one(w.pool())
        .await
        .unwrap();
    let listed = api.get(&format!("/api/jobs/{job}")).await.expect(200);
    assert_eq!(listed["state"], "scheduled");

    let cancelled = api
        .post(&format!("/api/jobs/{job}/cancel"), json!({"by": "ops-dan"}))
        .await
        .expect(200);
    assert_eq!(cancelled["notification_id"], n);
    // Not twice; unknown jobs are 404s.
    api.post(&format!("/api/jobs/{job}/cancel"), json!({})).await.expect(409);
    api.post("/api/jobs/01JD3Z6Q4M8W5T0Y2K7N9P1R3S/cancel", json!({})).await.expect(404);
    api.post("/api/jobs/not-a-job/cancel", json!({})).await.expect(404);

    // The worker's recorder records the cancel.
    let reason: Option<String> = try_wait_until("the notification recorded cancelled", LONG, || async {
        let row: (String, Option<String>) = sqlx::query_as("SELECT status, status_reason FROM notifications WHERE id = $1")
            .bind(n)
            .fetch_one(w.pool())
            .await?;
        Ok((row.0 == "cancelled").then_some(row.1))
    })
    .await
    .unwrap();
    assert!(reason.unwrap_or_default().contains("cancelled by operator (ops-dan)"));
    // Past its due time (and the worker's next polls), the job has not run: still killed, never
    // fetched, nothing sent.
    wait_until("the cancelled job's due time to pass", LONG, || async {
        (Utc::now() > due + chrono::Duration::seconds(2)).then_some(())
    })
    .await
    .unwrap();
    let row: (String, i32, Value) = sqlx::query_as("SELECT status, attempts, last_result FROM apalis.jobs WHERE id = $1")
        .bind(&job)
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!((row.0.as_str(), row.1), ("Killed", 0), "never fetched");
    assert!(row.2["Err"].as_str().unwrap().starts_with("cancelled by operator"));
    let deliveries: i64 = scalar(&w, "SELECT count(*) FROM notification_deliveries WHERE notification_id = $1", n).await;
    assert_eq!(deliveries, 0);
    assert!(w.sms.received().is_empty() && w.smtp.messages().is_empty());
    worker.stop().await.unwrap();
    api.stop().await;
}

/// The largest number of `times` within any window of `window` starting at one of them.
fn busiest(times: &[Instant], window: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| x.duration_since(t[i]) < window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn two_worker_processes_share_the_sms_rate_limit_and_lose_nothing() {
    let w = World::start().await;
    let env = [("SMS_RATE_LIMIT", "4"), ("WORKER_BATCH_SIZE", "10")];
    let _a = spawn_worker(&w, "rate-a", &env);
    let _b = spawn_worker(&w, "rate-b", &env);
    workers_registered(&w, 2).await;
    let mut conn = w.pool().acquire().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let p = w.person("student", &format!("Rate{i}"), Some(&format!("+4477009004{i:02}"))).await;
        ids.push(reminder(&mut conn, &p, &format!("rate-{i}"), Utc::now()).await);
    }
    drop(conn);
    let got = w.sms.wait_for(40, LONG).await.unwrap();
    let accepted: Vec<Instant> = got.iter().filter(|m| m.status == 201).map(|m| m.at).collect();
    assert_eq!(accepted.len(), 40, "every SMS accepted, none refused: {got:?}");
    // The bucket holds one token (burst 1): any second sees at most 4 + 1.
    let peak = busiest(&accepted, Duration::from_secs(1));
    assert!(peak <= 5, "{peak} SMS within one second at SMS_RATE_LIMIT=4 across two workers");
    let span = accepted.iter().max().unwrap().duration_since(*accepted.iter().min().unwrap());
    assert!(
        span >= Duration::from_millis(9_500),
        "40 SMS at 4/s (burst 1) take at least 9.75 s, took {span:?}"
    );
    // None lost, none twice, and both workers sent.
    let sent_and_workers = try_wait_until("all 40 recorded sent", LONG, || async {
        let row: (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE d.status = 'sent'), count(DISTINCT a.worker)
             FROM notification_deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id WHERE d.notification_id = ANY($1) AND d.channel = 'sms'",
        )
        .bind(&ids)
        .fetch_one(w.pool())
        .await?;
        Ok((row.0 == 40).then_some(row))
    })
    .await
    .unwrap();
    assert_eq!(sent_and_workers.1, 2, "both worker processes sent");
    let texts: std::collections::HashSet<&str> = got.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(texts.len(), 40, "each recipient exactly once");
}

/// The text of `url` (a `/metrics`) once it shows `name`.
async fn metrics_showing(url: &str, name: &str) -> String {
    try_wait_until(&format!("{name} in {url}"), LONG, || async move {
        let text = reqwest::get(url).await?.text().await?;
        Ok::<_, anyhow::Error>(text.contains(name).then_some(text))
    })
    .await
    .unwrap()
}

/// The worker program serves its own metrics at `WORKER_METRICS_ADDR` (a school running
/// workers as separate processes graphs them from there): a sent reminder shows in its send
/// lateness, a retention run in the purge's figures. A second worker given the same address, already taken, stops at start-up naming
/// the variable rather than running without metrics.
#[tokio::test]
async fn a_worker_process_serves_its_metrics_and_refuses_an_address_it_cannot_bind() {
    let w = World::start().await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let _worker = spawn_worker(&w, "metrics", &[("WORKER_METRICS_ADDR", addr.as_str())]);
    workers_registered(&w, 1).await;
    let p = w.person("student", "Metric", Some("+447700900611")).await;
    let mut conn = w.pool().acquire().await.unwrap();
    reminder(&mut conn, &p, "metrics-1", Utc::now()).await;
    drop(conn);
    w.sms.wait_for(1, LONG).await.unwrap();
    let url = format!("http://{addr}/metrics");
    let text = metrics_showing(&url, "dashlight_send_lateness_seconds").await;
    assert!(text.contains("priority="), "labelled by priority: {text}");
    // A retention run, fired as the scheduler fires it, shows in the same place.
    let mut conn = w.pool().acquire().await.unwrap();
    let tick = PeriodicJob {
        task: PeriodicTask::Retention,
        tick: Utc::now(),
    };
    jobs::enqueue(&mut conn, &[NewJob::new(QUEUE_PERIODIC, &tick)]).await.unwrap();
    drop(conn);
    let text = metrics_showing(&url, "dashlight_retention_unfinished").await;
    assert!(text.contains("dashlight_retention_unfinished 0"), "{text}");
    assert!(
        text.contains("dashlight_retention_purged_rows_total{table=\"notification_deliveries\"} 0"),
        "{text}"
    );

    let mut second = spawn_worker(&w, "metrics-taken", &[("WORKER_METRICS_ADDR", addr.as_str())]);
    let status = try_wait_until("the second worker stops", LONG, || {
        let status = second.child.try_wait();
        async move { Ok::<_, anyhow::Error>(status?) }
    })
    .await
    .unwrap();
    assert!(!status.success(), "a worker that cannot serve its metrics does not start");
    let out = second.output();
    assert!(out.contains("WORKER_METRICS_ADDR"), "the error names the variable: {out}");
}

#[tokio::test]
async fn a_provider_429_holds_sms_in_every_worker_until_its_retry_after() {
    let w = World::start().await;
    // Paced at 2/s so that, without the hold, SMS would keep arriving through the 3 s.
    let env = [("SMS_RATE_LIMIT", "2"), ("WORKER_BATCH_SIZE", "5"), ("RETRY_MAX_DELAY", "30s")];
    let _a = spawn_worker(&w, "hold-a", &env);
    let _b = spawn_worker(&w, "hold-b", &env);
    workers_registered(&w, 2).await;
    w.sms.rate_limit_next(1, 3);
    let mut conn = w.pool().acquire().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        let p = w.person("student", &format!("Hold{i}"), Some(&format!("+4477009005{i:02}"))).await;
        ids.push(reminder(&mut conn, &p, &format!("hold-{i}"), Utc::now()).await);
    }
    drop(conn);
    // Ten accepted, plus the one refused.
    try_wait_until("ten SMS accepted", LONG, || async {
        Ok((w.sms.accepted().len() >= 10).then_some(()))
    })
    .await
    .unwrap();
    let got = w.sms.received();
    let refused: Vec<_> = got.iter().filter(|m| m.status == 429).collect();
    assert_eq!(refused.len(), 1, "{got:?}");
    let t429 = refused[0].at;
    // A send already holding its token when the 429 came may still arrive just after it; from
    // then on, nothing until the Retry-After (3 s) is over, from either worker.
    let during: Vec<Duration> = got
        .iter()
        .filter(|m| m.at > t429)
        .map(|m| m.at.duration_since(t429))
        .filter(|d| *d >= Duration::from_millis(600) && *d < Duration::from_millis(2_900))
        .collect();
    assert!(during.is_empty(), "SMS arrived during the provider's hold, after: {during:?}");
    let after: usize = got
        .iter()
        .filter(|m| m.at > t429 && m.at.duration_since(t429) >= Duration::from_millis(2_900))
        .count();
    assert!(after >= 1, "sending resumed after the hold");
    let accepted: std::collections::HashSet<&str> = got.iter().filter(|m| m.status == 201).map(|m| m.to.as_str()).collect();
    assert_eq!(accepted.len(), 10, "none lost: the refused one was sent after the hold");
    let workers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT a.worker) FROM notification_deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id
         WHERE d.notification_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(w.pool())
    .await
    .unwrap();
    assert_eq!(workers, 2, "both workers were sending");
}

#[tokio::test]
async fn a_reminder_due_now_goes_before_two_thousand_queued_invoice_emails() {
    let mut w = World::start().await;
    w.config.worker_batch_size = 100;
    let (batch, concurrency) = (w.config.worker_batch_size as i64, w.config.worker_concurrency as i64);
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let student = w.person("student", "Bulk", None).await;
    let learner = w.person("student", "Urgent", Some("+447700900601")).await;
    // Queue the bulk while the queue is paused, so it is all waiting when the worker starts.
    api.post("/api/queues/dashlight.notifications/pause", json!({})).await.expect(200);
    let mut tx = w.pool().begin().await.unwrap();
    for i in 0..2000 {
        invoice(&mut tx, &student, &format!("bulk-{i}")).await;
    }
    tx.commit().await.unwrap();
    let worker = w.spawn_worker(Clock::system());
    api.post("/api/queues/dashlight.notifications/resume", json!({})).await.expect(200);
    w.smtp.wait_for_messages(50, LONG).await.unwrap();
    let mut conn = w.pool().acquire().await.unwrap();
    let due = Utc::now();
    let sent_before: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_deliveries WHERE channel = 'email' AND status = 'sent'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let urgent = reminder(&mut conn, &learner, "urgent", due).await;
    drop(conn);
    w.sms.wait_for(1, LONG).await.unwrap();
    let sent_at: chrono::DateTime<Utc> = try_wait_until("the reminder recorded", LONG, || async {
        let t: Option<chrono::DateTime<Utc>> =
            sqlx::query_scalar("SELECT sent_at FROM notification_deliveries WHERE notification_id = $1 AND status = 'sent'")
                .bind(urgent)
                .fetch_optional(w.pool())
                .await?;
        Ok(t)
    })
    .await
    .unwrap();
    let sent_ahead: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_deliveries WHERE channel = 'email' AND sent_at < $1")
        .bind(sent_at)
        .fetch_one(w.pool())
        .await
        .unwrap();
    let overtaken = 2000 - sent_ahead;
    let waiting_at_insert = 2000 - sent_before;
    // Without priorities the reminder would wait behind every invoice queued before it. With
    // them it waits at most for what the worker had already fetched and claimed: two batches in
    // memory and the sends in flight.
    assert!(
        sent_ahead - sent_before <= 2 * batch + concurrency,
        "{} invoices went before the reminder after it was queued (of {waiting_at_insert} waiting)",
        sent_ahead - sent_before
    );
    assert!(
        overtaken >= waiting_at_insert - 2 * batch - concurrency,
        "the reminder overtook {overtaken} of {waiting_at_insert} invoices"
    );
    // Bulk still progresses: every invoice is sent.
    w.smtp.wait_for_messages(2000, LONG).await.unwrap();
    tracing::info!(
        lateness_ms = (sent_at - due).num_milliseconds(),
        overtaken,
        "reminder sent ahead of the bulk"
    );
    worker.stop().await.unwrap();
    api.stop().await;
}
