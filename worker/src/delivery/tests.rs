//! The recorder against real Postgres: one batch of jobs goes through load → decide → apply →
//! record with each kind of outcome, and the rows are what docs/notifications.md and docs/guarantees.md promise.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::QUEUE_NOTIFICATIONS,
    kinds::Kind,
    notify::{self, NewNotification},
    queue::{JobOutcome, JobQueue},
};
use dashlight_tests::db::TestDb;
use serde_json::json;
use sqlx::PgPool;

use super::{
    DeliverySettings, load,
    plan::{self, Applicable, Decision},
    record::{self, Attempted, Claimed, Decided, Stuck},
};
use crate::channels::{SendError, Sent};

const WORKER: &str = "test-worker";

/// A decision the test expects to apply now.
fn applicable(d: Decision) -> Applicable {
    match d {
        Decision::Apply(a) => a,
        Decision::Wait(w) => panic!("waits {w:?}"),
    }
}

fn settings() -> DeliverySettings {
    DeliverySettings {
        max_attempts: 8,
        retry_base: Duration::from_secs(5),
        retry_max: Duration::from_secs(3600),
        school_name: "Test School".into(),
        school_tz: chrono_tz::Europe::London,
        worker_name: WORKER.into(),
    }
}

async fn user(pool: &PgPool, name: &str, device: bool) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, phone, role, first_name, last_name, timezone)
         VALUES ($1 || '@example.com', '+447700900123', 'student', $1, 'Test', 'Europe/London') RETURNING id",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap();
    if device {
        sqlx::query(
            "INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, 'phone', 'https://push.example/1', 'k', 'a')",
        )
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    }
    id
}

async fn notification(pool: &PgPool, kind: Kind, user: i64, now: DateTime<Utc>) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let mut n = NewNotification::to_user(kind, user, format!("test:{user}"), now);
    n.data = json!({"package": {"name": "Ten", "lessons_remaining": 1, "expires_at": "2031-01-01T00:00:00Z"}});
    let id = notify::create(&mut tx, n).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    id
}

async fn scalar<T>(pool: &PgPool, sql: &str, id: i64) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn one_batch_of_every_outcome_writes_exactly_the_promised_rows() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let s = settings();
    let now = Utc::now();
    // sent, transient, transient with Retry-After (email, policy all); permanent under `first`
    // (push, then SMS); interrupted (email).
    let kinds = [
        ("sent", Kind::PackageLow, false),
        ("transient", Kind::PackageLow, false),
        ("retryafter", Kind::PackageLow, false),
        ("permanent", Kind::LessonReminder, true),
        ("interrupted", Kind::PackageLow, false),
    ];
    let mut ids = Vec::new();
    for (name, kind, device) in kinds {
        let u = user(pool, name, device).await;
        ids.push(notification(pool, kind, u, now).await);
    }
    let queue = JobQueue::new(pool.clone(), QUEUE_NOTIFICATIONS, WORKER);
    queue.register().await.unwrap();
    let jobs = queue.fetch(100, Duration::ZERO, None).await.unwrap();
    assert_eq!(jobs.len(), ids.len());

    // Load and decide, as the drain does.
    let (mut loaded, unplannable) = load::load(pool, &s, &ids).await.unwrap();
    assert!(unplannable.is_empty());
    let decided: Vec<Decided> = jobs
        .iter()
        .map(|j| {
            let job: dashlight_core::jobs::DeliverJob = serde_json::from_slice(&j.payload).unwrap();
            let l = loaded.remove(&job.notification_id).map(Arc::new);
            let decision = applicable(plan::decide(l.as_deref(), None, Utc::now(), false));
            assert!(matches!(decision, Applicable::Deliver { .. }), "{decision:?}");
            Decided {
                job_id: j.id.clone(),
                notification: job.notification_id,
                loaded: l,
                decision,
            }
        })
        .collect();
    let applied = record::apply(pool, &s, WORKER, &decided, Utc::now()).await.unwrap();
    assert_eq!(applied.sends.len(), ids.len(), "one claimed delivery each");
    assert_eq!(applied.open.len(), ids.len());
    for id in &ids {
        let (status, attempts): (String, i32) =
            sqlx::query_as("SELECT status, attempts FROM notification_deliveries WHERE notification_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!((status.as_str(), attempts), ("sending", 1), "claimed by its insert");
        // The in-flight attempt is on record on the delivery (who, for which job, since when);
        // its attempt row is written once, with its result.
        let claim: i64 = scalar(
            pool,
            "SELECT count(*) FROM notification_deliveries d WHERE d.notification_id = $1 AND d.sending_since IS NOT NULL
               AND d.claimed_by = 'test-worker' AND d.claim_job_id IS NOT NULL",
            *id,
        )
        .await;
        assert_eq!(claim, 1, "attempt 1 on record as started, on the delivery");
        let rows: i64 = scalar(
            pool,
            "SELECT count(*) FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1",
            *id,
        )
        .await;
        assert_eq!(rows, 0, "no attempt row until its result is known");
    }

    // Outcomes for all but the interrupted one.
    let finished = Utc::now();
    let by_n = |i: usize| applied.sends.iter().find(|c| c.n.n.id == ids[i]).unwrap().clone();
    let attempted = vec![
        Attempted {
            claimed: by_n(0),
            finished,
            result: Ok(Sent {
                provider_message_id: Some("<m1@test>".into()),
            }),
        },
        Attempted {
            claimed: by_n(1),
            finished,
            result: Err(SendError::transient("connection reset")),
        },
        Attempted {
            claimed: by_n(2),
            finished,
            result: Err(SendError::Transient {
                message: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(90)),
            }),
        },
        Attempted {
            claimed: by_n(3),
            finished,
            result: Err(SendError::Permanent {
                message: "HTTP 410: gone".into(),
                subscription_gone: true,
            }),
        },
    ];
    let acks: Vec<(String, JobOutcome)> = (0..4).map(|i| (by_n(i).job_id, JobOutcome::Done)).collect();
    let jobs_before: i64 = scalar(pool, "SELECT count(*) FROM apalis.jobs WHERE $1 = $1", 0).await;
    record::record(pool, &s, WORKER, &attempted, &acks, finished).await.unwrap();

    // sent: delivery sent with the provider id, attempt sent, event, notification done.
    let (status, provider, sent_at): (String, Option<String>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, provider_message_id, sent_at FROM notification_deliveries WHERE notification_id = $1")
            .bind(ids[0])
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), provider.as_deref()), ("sent", Some("<m1@test>")));
    assert!(sent_at.is_some());
    let outcome: String = scalar(
        pool,
        "SELECT a.outcome FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1",
        ids[0],
    )
    .await;
    assert_eq!(outcome, "sent");
    // ... kept on the delivery's own row: the attempt log holds only the attempts that did not
    // succeed.
    let logged = |i: usize| {
        scalar::<i64>(
            pool,
            "SELECT count(*) FROM delivery_attempt_log a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1",
            ids[i],
        )
    };
    assert_eq!((logged(0).await, logged(1).await, logged(3).await), (0, 1, 1));
    let n_status: String = scalar(pool, "SELECT status FROM notifications WHERE id = $1", ids[0]).await;
    assert_eq!(n_status, "done");
    let events: i64 = scalar(
        pool,
        "SELECT count(*) FROM delivery_events WHERE event_type = 'notification_sent' AND (event_data->>'notification_id')::bigint = $1",
        ids[0],
    )
    .await;
    assert_eq!(events, 1);

    // transient: retrying ~5 s later (±20 %), attempt transient, notification open until then.
    let (status, next): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, next_attempt_at FROM notification_deliveries WHERE notification_id = $1")
            .bind(ids[1])
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(status, "retrying");
    let delay = (next.unwrap() - finished).num_milliseconds();
    assert!((4000..=6000).contains(&delay), "retry in {delay} ms");
    let (n_status, check): (String, DateTime<Utc>) = sqlx::query_as("SELECT status, next_check_at FROM notifications WHERE id = $1")
        .bind(ids[1])
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((n_status.as_str(), check), ("pending", next.unwrap()));

    // transient with Retry-After: not before it; the provider's figure on the attempt.
    let next: Option<DateTime<Utc>> = scalar(
        pool,
        "SELECT next_attempt_at FROM notification_deliveries WHERE notification_id = $1",
        ids[2],
    )
    .await;
    // (Postgres keeps microseconds; `finished` has nanoseconds.)
    assert!((next.unwrap() - finished).num_microseconds().unwrap() >= 89_999_999);
    let ra: Option<i64> = scalar(
        pool,
        "SELECT a.retry_after_ms FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1",
        ids[2],
    )
    .await;
    assert_eq!(ra, Some(90_000));

    // permanent under `first`: failed, device disabled, notification still open for the next stage.
    let status: String = scalar(
        pool,
        "SELECT status FROM notification_deliveries WHERE notification_id = $1",
        ids[3],
    )
    .await;
    assert_eq!(status, "failed");
    let active: bool = scalar(
        pool,
        "SELECT u.active FROM user_devices u JOIN notifications n ON n.user_id = u.user_id WHERE n.id = $1",
        ids[3],
    )
    .await;
    assert!(!active, "the gone subscription is disabled");
    let n_status: String = scalar(pool, "SELECT status FROM notifications WHERE id = $1", ids[3]).await;
    assert_eq!(n_status, "pending");

    // Jobs: the four acknowledged, so deleted (a finished job leaves no row); new ones for the
    // two retries and the next stage.
    let acked: Vec<String> = acks.iter().map(|(id, _)| id.clone()).collect();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE id = ANY($1)")
        .bind(&acked)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "finished jobs are deleted");
    let jobs_after: i64 = scalar(pool, "SELECT count(*) FROM apalis.jobs WHERE $1 = $1", 0).await;
    assert_eq!(jobs_after - (jobs_before - 4), 3, "two retries and one next stage");

    // The next stage of `first`: the planner turns the new job into SMS.
    let (loaded, _) = load::load(pool, &s, &[ids[3]]).await.unwrap();
    match applicable(plan::decide(loaded.get(&ids[3]), None, Utc::now(), false)) {
        Applicable::Deliver { insert, .. } => assert_eq!(insert.first().map(|p| p.channel), Some(dashlight_core::kinds::Channel::Sms)),
        other => panic!("{other:?}"),
    }

    // interrupted: the worker's jobs rescued, its in-flight delivery recorded interrupted.
    let recovered = record::interrupt(pool, Stuck::Of(&[WORKER.to_owned()]), Utc::now()).await.unwrap();
    assert_eq!(recovered, 1);
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, last_error FROM notification_deliveries WHERE notification_id = $1")
            .bind(ids[4])
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(status, "retrying");
    assert!(error.unwrap().starts_with("interrupted"));
    let outcome: String = scalar(
        pool,
        "SELECT a.outcome FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1",
        ids[4],
    )
    .await;
    assert_eq!(outcome, "interrupted");
    // The interrupted attempt says who was sending it, for which job, and since when.
    let (worker, job, started, claimed_by): (Option<String>, Option<String>, DateTime<Utc>, Option<String>) = sqlx::query_as(
        "SELECT a.worker, a.job_id, a.started_at, d.claimed_by FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id
         WHERE d.notification_id = $1",
    )
    .bind(ids[4])
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(worker.as_deref(), Some(WORKER));
    assert_eq!(job.as_deref(), Some(by_n(4).job_id.as_str()));
    assert_eq!(started.timestamp_micros(), by_n(4).started.timestamp_micros());
    assert_eq!(claimed_by, None, "the claim is cleared once recorded");

    // Every sent attempt's row carries its start, worker and job; nothing else is left open.
    let open: i64 = scalar(
        pool,
        "SELECT count(*) FROM delivery_attempts WHERE $1 = $1 AND (outcome IS NULL OR finished_at IS NULL)",
        0,
    )
    .await;
    assert_eq!(open, 0);
    let (worker, job): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT a.worker, a.job_id FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1",
    )
    .bind(ids[0])
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((worker.as_deref(), job), (Some(WORKER), Some(by_n(0).job_id)));
    // No device use written per send: it is derived.
    let device_writes: i64 = scalar(
        pool,
        "SELECT count(*) FROM user_devices WHERE last_used_at IS NOT NULL AND $1 = $1",
        0,
    )
    .await;
    assert_eq!(device_writes, 0);
}

/// A result recorded after the worker was thought dead (its attempt already recorded
/// `interrupted` by another worker's rescue) tells what really happened: one attempt row, with the
/// real outcome.
#[tokio::test]
async fn a_late_result_after_an_interrupt_replaces_the_interrupted_attempt() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let s = settings();
    let now = Utc::now();
    let u = user(pool, "late", false).await;
    let id = notification(pool, Kind::PackageLow, u, now).await;
    let queue = JobQueue::new(pool.clone(), QUEUE_NOTIFICATIONS, WORKER);
    queue.register().await.unwrap();
    let claimed = claim_one(pool, &s, &queue, id).await;
    assert_eq!(
        record::interrupt(pool, Stuck::Of(&[WORKER.to_owned()]), Utc::now()).await.unwrap(),
        1
    );
    let attempted = vec![Attempted {
        claimed,
        finished: Utc::now(),
        result: Ok(Sent {
            provider_message_id: Some("<late@test>".into()),
        }),
    }];
    record::record(pool, &s, WORKER, &attempted, &[], Utc::now()).await.unwrap();
    let rows: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT a.attempt, a.outcome FROM delivery_attempts a JOIN notification_deliveries d ON d.id = a.delivery_id WHERE d.notification_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![(1, Some("sent".to_owned()))]);
}

/// A result for an attempt older than the delivery's current one (recorded `interrupted`, and the
/// delivery claimed again since) changes only that attempt's record: the delivery stays with its
/// current attempt, whose own result is then kept on the delivery's row.
#[tokio::test]
async fn a_late_result_for_an_older_attempt_leaves_the_current_attempt_alone() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let s = settings();
    let u = user(pool, "older", false).await;
    let id = notification(pool, Kind::PackageLow, u, Utc::now()).await;
    let queue = JobQueue::new(pool.clone(), QUEUE_NOTIFICATIONS, WORKER);
    queue.register().await.unwrap();
    let first = claim_one(pool, &s, &queue, id).await;
    assert_eq!(
        record::interrupt(pool, Stuck::Of(&[WORKER.to_owned()]), Utc::now()).await.unwrap(),
        1
    );
    let second = claim_one(pool, &s, &queue, id).await;
    assert_eq!((first.attempt, second.attempt), (1, 2));
    let sent = |c: &Claimed, provider: &str| Attempted {
        claimed: c.clone(),
        finished: Utc::now(),
        result: Ok(Sent {
            provider_message_id: Some(provider.into()),
        }),
    };
    record::record(pool, &s, WORKER, &[sent(&first, "<first@test>")], &[], Utc::now())
        .await
        .unwrap();
    let (status, attempts): (String, i32) = sqlx::query_as("SELECT status, attempts FROM notification_deliveries WHERE id = $1")
        .bind(second.id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("sending", 2), "attempt 2 is still in flight");
    record::record(pool, &s, WORKER, &[sent(&second, "<second@test>")], &[], Utc::now())
        .await
        .unwrap();
    let rows: Vec<(i32, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT attempt, outcome, provider_message_id FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt")
            .bind(second.id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (1, Some("sent".to_owned()), Some("<first@test>".to_owned())),
            (2, Some("sent".to_owned()), Some("<second@test>".to_owned())),
        ]
    );
    let kept: Option<i64> = scalar(pool, "SELECT attempt_id FROM notification_deliveries WHERE id = $1", second.id).await;
    assert!(kept.is_some(), "the current attempt's success is kept on the row");
}

/// Fetches the queue's due jobs and returns the one of notification `nid` naming a receipt.
async fn receipt_job(queue: &JobQueue, nid: i64) -> (String, dashlight_core::jobs::DeliverJob) {
    let jobs = queue.fetch(100, Duration::ZERO, None).await.unwrap();
    jobs.iter()
        .filter_map(|j| {
            let job: dashlight_core::jobs::DeliverJob = serde_json::from_slice(&j.payload).unwrap();
            (job.notification_id == nid && job.receipt_id.is_some()).then(|| (j.id.clone(), job))
        })
        .next()
        .expect("the report enqueued a job naming it")
}

/// Claims notification `nid`'s next send as the drain does: fetches its job, loads, decides and
/// applies. Returns the one delivery claimed.
async fn claim_one(pool: &PgPool, s: &DeliverySettings, queue: &JobQueue, nid: i64) -> Claimed {
    let jobs = queue.fetch(100, Duration::ZERO, None).await.unwrap();
    let (loaded, _) = load::load(pool, s, &[nid]).await.unwrap();
    let l = loaded.get(&nid).cloned().map(Arc::new);
    let decision = applicable(plan::decide(l.as_deref(), None, Utc::now(), false));
    let job = jobs
        .iter()
        .find(|j| {
            serde_json::from_slice::<dashlight_core::jobs::DeliverJob>(&j.payload)
                .unwrap()
                .notification_id
                == nid
        })
        .unwrap();
    let decided = vec![Decided {
        job_id: job.id.clone(),
        notification: nid,
        loaded: l,
        decision,
    }];
    let applied = record::apply(pool, s, WORKER, &decided, Utc::now()).await.unwrap();
    assert_eq!(applied.sends.len(), 1);
    applied.sends[0].clone()
}

/// Sends notification `nid`'s first stage and records it `sent` with `provider_id`; returns
/// the delivery id.
async fn send_first_stage(pool: &PgPool, s: &DeliverySettings, queue: &JobQueue, nid: i64, result: Result<Sent, SendError>) -> i64 {
    let claimed = claim_one(pool, s, queue, nid).await;
    let id = claimed.id;
    let attempted = vec![Attempted {
        claimed: claimed.clone(),
        finished: Utc::now(),
        result,
    }];
    record::record(pool, s, WORKER, &attempted, &[(claimed.job_id, JobOutcome::Done)], Utc::now())
        .await
        .unwrap();
    id
}

/// Applies the receipt job of `nid` as the drain does: load, plan, apply.
async fn apply_receipt(pool: &PgPool, s: &DeliverySettings, queue: &JobQueue, nid: i64) -> Applicable {
    let (job_id, job) = receipt_job(queue, nid).await;
    let (loaded, _) = load::load(pool, s, &[nid]).await.unwrap();
    let receipts = load::receipts(pool, &[job.receipt_id.unwrap()]).await.unwrap();
    let l = loaded.get(&nid).cloned().map(Arc::new);
    let decision = Applicable::Receipt(plan::receipt(l.as_deref(), receipts.get(&job.receipt_id.unwrap())));
    let decided = vec![Decided {
        job_id,
        notification: nid,
        loaded: l,
        decision: decision.clone(),
    }];
    let applied = record::apply(pool, s, WORKER, &decided, Utc::now()).await.unwrap();
    assert!(applied.sends.is_empty() && applied.open.is_empty(), "a receipt sends nothing");
    decision
}

async fn report(pool: &PgPool, delivery: i64, status: dashlight_core::receipts::ReceiptStatus, code: Option<&str>) {
    let mut conn = pool.acquire().await.unwrap();
    let r = dashlight_core::receipts::Report {
        delivery_id: delivery,
        source: dashlight_core::receipts::ReceiptSource::SmsStatus,
        status,
        provider_status: Some(if status == dashlight_core::receipts::ReceiptStatus::Delivered {
            "delivered"
        } else {
            "undelivered"
        }),
        error_code: code,
        detail: None,
    };
    dashlight_core::receipts::report(&mut conn, &r).await.unwrap().unwrap();
}

#[tokio::test]
async fn receipts_move_sent_deliveries_once_and_undelivered_moves_on() {
    use dashlight_core::{kinds::Channel, receipts::ReceiptStatus};
    let db = TestDb::new().await;
    let pool = &db.pool;
    let s = settings();
    let now = Utc::now();
    let queue = JobQueue::new(pool.clone(), QUEUE_NOTIFICATIONS, WORKER);
    queue.register().await.unwrap();

    // A reminder (first: push → SMS → email) to a student without devices: SMS is sent.
    let u = user(pool, "delivered", false).await;
    let nid = notification(pool, Kind::LessonReminder, u, now).await;
    let sms = send_first_stage(
        pool,
        &s,
        &queue,
        nid,
        Ok(Sent {
            provider_message_id: Some("SM1".into()),
        }),
    )
    .await;

    // delivered: the delivery moves, once.
    report(pool, sms, ReceiptStatus::Delivered, None).await;
    let d = apply_receipt(pool, &s, &queue, nid).await;
    assert!(matches!(&d, Applicable::Receipt(Some(m)) if !m.next_stage), "{d:?}");
    let (status, delivered_at): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, delivered_at FROM notification_deliveries WHERE id = $1")
            .bind(sms)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(status, "delivered");
    assert!(delivered_at.is_some());
    let events: i64 = scalar(
        pool,
        "SELECT count(*) FROM analytics_events WHERE event_type = 'notification_delivered' AND (event_data->>'delivery_id')::bigint = $1",
        sms,
    )
    .await;
    assert_eq!(events, 1);
    // A late `undelivered` (or a second `delivered`) changes nothing: delivered stays delivered.
    report(pool, sms, ReceiptStatus::Undelivered, Some("30005")).await;
    assert_eq!(apply_receipt(pool, &s, &queue, nid).await, Applicable::Receipt(None));
    let status: String = scalar(pool, "SELECT status FROM notification_deliveries WHERE id = $1", sms).await;
    assert_eq!(status, "delivered");

    // undelivered under `first`: error code kept, the notification reopened, email next.
    let u = user(pool, "undelivered", false).await;
    let nid = notification(pool, Kind::LessonReminder, u, now).await;
    let sms = send_first_stage(
        pool,
        &s,
        &queue,
        nid,
        Ok(Sent {
            provider_message_id: Some("SM2".into()),
        }),
    )
    .await;
    let n_status: String = scalar(pool, "SELECT status FROM notifications WHERE id = $1", nid).await;
    assert_eq!(n_status, "done");
    report(pool, sms, ReceiptStatus::Undelivered, Some("30003")).await;
    let d = apply_receipt(pool, &s, &queue, nid).await;
    assert!(matches!(&d, Applicable::Receipt(Some(m)) if m.next_stage), "{d:?}");
    let (status, error): (String, Option<String>) = sqlx::query_as("SELECT status, last_error FROM notification_deliveries WHERE id = $1")
        .bind(sms)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(status, "undelivered");
    assert!(error.unwrap().contains("30003"));
    let n_status: String = scalar(pool, "SELECT status FROM notifications WHERE id = $1", nid).await;
    assert_eq!(n_status, "processing");
    let (loaded, _) = load::load(pool, &s, &[nid]).await.unwrap();
    match applicable(plan::decide(loaded.get(&nid), None, Utc::now(), false)) {
        Applicable::Deliver { insert, .. } => assert_eq!(insert.first().map(|p| p.channel), Some(Channel::Email)),
        other => panic!("{other:?}"),
    }
    // An operator may retry it like a failed one.
    let decision = applicable(plan::decide(loaded.get(&nid), Some(sms), Utc::now(), false));
    match &decision {
        Applicable::Deliver { reopen, .. } => assert_eq!(*reopen, Some(sms)),
        other => panic!("{other:?}"),
    }

    // The sent attempt was kept on the delivery's row; the retry moves it into the attempt log
    // (same id) before the delivery is claimed again, and the second success is kept on the row.
    let attempts = || {
        sqlx::query_as::<_, (i64, i32, Option<String>, Option<String>)>(
            "SELECT id, attempt, outcome, provider_message_id FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(sms)
        .fetch_all(pool)
    };
    let before = attempts().await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!((before[0].1, before[0].2.as_deref()), (1, Some("sent")));
    let logged: i64 = scalar(pool, "SELECT count(*) FROM delivery_attempt_log WHERE delivery_id = $1", sms).await;
    assert_eq!(logged, 0, "a first-attempt success writes no attempt row");
    let decided = vec![Decided {
        job_id: "operator-retry".into(),
        notification: nid,
        loaded: loaded.get(&nid).cloned().map(Arc::new),
        decision,
    }];
    let applied = record::apply(pool, &s, WORKER, &decided, Utc::now()).await.unwrap();
    let again = applied
        .sends
        .iter()
        .find(|c| c.id == sms)
        .expect("the retried delivery is claimed")
        .clone();
    assert_eq!(again.attempt, 2);
    let moved: Vec<(i64, i32, String)> = sqlx::query_as("SELECT id, attempt, outcome FROM delivery_attempt_log WHERE delivery_id = $1")
        .bind(sms)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(moved, vec![(before[0].0, 1, "sent".to_owned())]);
    let attempted = vec![Attempted {
        claimed: again,
        finished: Utc::now(),
        result: Ok(Sent {
            provider_message_id: Some("SM3".into()),
        }),
    }];
    record::record(pool, &s, WORKER, &attempted, &[], Utc::now()).await.unwrap();
    let after = attempts().await.unwrap();
    assert_eq!(
        after.iter().map(|a| (a.1, a.2.as_deref(), a.3.as_deref())).collect::<Vec<_>>(),
        vec![(1, Some("sent"), Some("SM2")), (2, Some("sent"), Some("SM3"))]
    );
    assert_eq!(after[0].0, before[0].0, "an attempt keeps its id when it moves");
    assert_ne!(after[1].0, after[0].0);
}

#[tokio::test]
async fn opted_out_numbers_suppressed_and_skipped_and_email_opt_outs_honoured() {
    use dashlight_core::kinds::Channel;
    let db = TestDb::new().await;
    let pool = &db.pool;
    let s = settings();
    let now = Utc::now();
    let queue = JobQueue::new(pool.clone(), QUEUE_NOTIFICATIONS, WORKER);
    queue.register().await.unwrap();

    // Twilio's 21610 on send: failed, and the number suppressed as opted out.
    let u = user(pool, "optedout", false).await;
    let nid = notification(pool, Kind::LessonReminder, u, now).await;
    let sms = send_first_stage(
        pool,
        &s,
        &queue,
        nid,
        Err(SendError::opted_out("HTTP 400: SMS provider error 21610")),
    )
    .await;
    let status: String = scalar(pool, "SELECT status FROM notification_deliveries WHERE id = $1", sms).await;
    assert_eq!(status, "failed");
    let (reason, delivery): (String, Option<i64>) =
        sqlx::query_as("SELECT reason, delivery_id FROM suppressions WHERE channel = 'sms' AND target = '+447700900123'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((reason.as_str(), delivery), ("opted_out", Some(sms)));

    // The next reminder to that number: SMS skipped `opted_out`, email instead.
    let mut tx = pool.begin().await.unwrap();
    let mut n = NewNotification::to_user(Kind::LessonReminder, u, format!("second:{u}"), now);
    n.data = json!({});
    let next = notify::create(&mut tx, n).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    let (loaded, _) = load::load(pool, &s, &[next]).await.unwrap();
    let Applicable::Deliver { insert, .. } = applicable(plan::decide(loaded.get(&next), None, Utc::now(), false)) else {
        panic!()
    };
    let sms_plan = insert.iter().find(|p| p.channel == Channel::Sms).unwrap();
    assert_eq!(sms_plan.skip.as_deref(), Some("opted_out"));
    assert_eq!(insert.last().map(|p| (p.channel, p.skip.is_none())), Some((Channel::Email, true)));

    // A per-kind email opt-out: that kind's email is skipped `unsubscribed`.
    sqlx::query("INSERT INTO email_opt_outs (user_id, kind, source) VALUES ($1, 'lesson_reminder', 'api')")
        .bind(u)
        .execute(pool)
        .await
        .unwrap();
    let (loaded, _) = load::load(pool, &s, &[next]).await.unwrap();
    let Applicable::Deliver { insert, .. } = applicable(plan::decide(loaded.get(&next), None, Utc::now(), false)) else {
        panic!()
    };
    assert_eq!(
        insert.last().map(|p| (p.channel, p.skip.as_deref())),
        Some((Channel::Email, Some("unsubscribed")))
    );
}

/// The drain's reserved room: a fetch with a minimum priority claims only time-critical jobs and
/// leaves the bulk ones for a fetch without.
#[tokio::test]
async fn a_fetch_for_the_reserve_claims_only_time_critical_jobs() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let now = Utc::now();
    let mut urgent = Vec::new();
    for (i, kind) in [
        Kind::PackageLow,
        Kind::LessonReminder,
        Kind::PackageLow,
        Kind::BookingCancelled,
        Kind::PackageLow,
    ]
    .into_iter()
    .enumerate()
    {
        let u = user(pool, &format!("reserve{i}"), false).await;
        let id = notification(pool, kind, u, now).await;
        if kind.priority() >= dashlight_core::kinds::TIME_CRITICAL {
            urgent.push(id);
        }
    }
    let queue = JobQueue::new(pool.clone(), QUEUE_NOTIFICATIONS, WORKER);
    queue.register().await.unwrap();
    let notification_of = |j: &dashlight_core::queue::FetchedJob| {
        serde_json::from_slice::<dashlight_core::jobs::DeliverJob>(&j.payload)
            .unwrap()
            .notification_id
    };
    let reserve = queue
        .fetch(10, Duration::ZERO, Some(dashlight_core::kinds::TIME_CRITICAL))
        .await
        .unwrap();
    let mut got: Vec<i64> = reserve.iter().map(notification_of).collect();
    got.sort_unstable();
    assert_eq!(got, urgent, "only the reminder and the cancellation");
    let rest = queue.fetch(10, Duration::ZERO, None).await.unwrap();
    assert_eq!(rest.len(), 3, "the bulk jobs are left for a fetch without a minimum");
    assert!(rest.iter().all(|j| j.priority < dashlight_core::kinds::TIME_CRITICAL));
}
