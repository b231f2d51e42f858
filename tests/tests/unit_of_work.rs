//! The unit of work: a job carries the notifications written and due together, a finished job is
//! deleted at its acknowledgement, and a notification that cannot be claimed fails alone while
//! every other notification of its job and batch is sent. Real Postgres, the loopback SMTP
//! server, the worker's own drain; every wait is on a condition with a generous ceiling.

use std::time::Duration;

use chrono::Utc;
use dashlight_core::{
    Clock,
    jobs::QUEUE_NOTIFICATIONS,
    kinds::{Channel, Kind},
    notify::{self, NewNotification},
};
use dashlight_tests::{api::spawn_api, wait::try_wait_until, world::World};
use serde_json::json;

const LONG: Duration = Duration::from_secs(120);

async fn scalar(w: &World, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(w.pool())
        .await
        .unwrap()
}

/// An email-only notification (a package running low) for `user`, due at `due`.
fn package_low(user: i64, key: String, due: chrono::DateTime<Utc>) -> NewNotification {
    let mut n = NewNotification::to_user(Kind::PackageLow, user, key, Utc::now());
    n.due_at = due;
    n.data = json!({"package": {"name": "Ten lessons", "lessons_remaining": 1, "expires_at": "2031-01-01T00:00:00Z"}});
    n
}

/// Creates the notifications in one transaction (so due-together ones share jobs).
async fn create_all(w: &World, all: Vec<NewNotification>) -> Vec<i64> {
    let mut tx = w.pool().begin().await.unwrap();
    let ids = notify::create_all(&mut tx, all).await.unwrap();
    tx.commit().await.unwrap();
    ids.into_iter().map(|id| id.expect("new")).collect()
}

async fn notification_jobs(w: &World) -> i64 {
    scalar(
        w,
        &format!("SELECT count(*) FROM apalis.jobs WHERE job_type = '{QUEUE_NOTIFICATIONS}'"),
    )
    .await
}

#[tokio::test]
async fn notifications_written_and_due_together_share_jobs_and_a_finished_job_leaves_no_row() {
    let w = World::start().await;
    let users = w.load_students(250, "group").await;
    let due = Utc::now();
    let ids = create_all(&w, users.iter().map(|u| package_low(*u, format!("group:{u}"), due)).collect()).await;
    assert_eq!(ids.len(), 250);
    // 250 notifications due at one instant with one priority: three jobs (100, 100, 50).
    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT coalesce(jsonb_array_length(convert_from(job, 'UTF8')::jsonb -> 'notification_ids'), 1)::int8
         FROM apalis.jobs WHERE job_type = $1 ORDER BY 1 DESC",
    )
    .bind(QUEUE_NOTIFICATIONS)
    .fetch_all(w.pool())
    .await
    .unwrap();
    assert_eq!(sizes, [100, 100, 50]);

    let worker = w.spawn_worker(Clock::system());
    w.smtp.wait_for_messages(250, LONG).await.unwrap();
    try_wait_until("every job acknowledged", LONG, || async {
        Ok((notification_jobs(&w).await == 0).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        scalar(&w, "SELECT count(*) FROM notifications WHERE status = 'done'").await,
        250,
        "every notification done"
    );
    assert_eq!(
        scalar(
            &w,
            "SELECT count(DISTINCT claim_job_id) FROM notification_deliveries WHERE status = 'sent'"
        )
        .await,
        3,
        "each sent attempt names the job that carried it"
    );
    worker.stop().await.unwrap();
    assert_eq!(w.smtp.messages().len(), 250, "each once");
}

#[tokio::test]
async fn a_poisoned_recipient_fails_alone_and_every_other_notification_of_its_job_is_sent() {
    let w = World::start().await;
    let users = w.load_students(300, "poison").await;
    // A recipient whose address is 22 KB of hex (written before any check, or around the API):
    // it does not compress below what a btree entry may hold, so its delivery row cannot be
    // indexed and the claim's insert fails on it.
    let long: String = sqlx::query_scalar("SELECT (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 700) g) || '@school.test'")
        .fetch_one(w.pool())
        .await
        .unwrap();
    let due = Utc::now();
    let mut all: Vec<NewNotification> = users.iter().map(|u| package_low(*u, format!("poison:{u}"), due)).collect();
    let mut poisoned = package_low(users[0], "poison:bad".into(), due);
    poisoned.user_id = None;
    poisoned.recipient_email = Some(long);
    poisoned.channels = Some(vec![Channel::Email]);
    // In the middle of the batch, so it shares a job with good ones.
    all.insert(150, poisoned);
    let ids = create_all(&w, all).await;
    let bad_id = ids[150];
    assert!(notification_jobs(&w).await <= 4, "grouped");

    let worker = w.spawn_worker(Clock::system());
    w.smtp.wait_for_messages(300, LONG).await.unwrap();
    let (status, reason): (String, Option<String>) = try_wait_until("the poisoned notification recorded failed", LONG, || async {
        let row: (String, Option<String>) = sqlx::query_as("SELECT status, status_reason FROM notifications WHERE id = $1")
            .bind(bad_id)
            .fetch_one(w.pool())
            .await?;
        Ok((row.0 != "pending" && row.0 != "processing").then_some(row))
    })
    .await
    .unwrap();
    assert_eq!(status, "failed", "{reason:?}");
    assert!(reason.as_deref().is_some_and(|r| r.contains("could not be claimed")), "{reason:?}");
    try_wait_until("every job acknowledged", LONG, || async {
        Ok((notification_jobs(&w).await == 0).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        scalar(&w, "SELECT count(*) FROM notifications WHERE status = 'done'").await,
        300,
        "every good one sent"
    );
    assert_eq!(
        scalar(&w, "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'").await,
        300
    );
    worker.stop().await.unwrap();
    // Nothing retried in a loop: no job was failed or put back, and no second email went out.
    assert_eq!(notification_jobs(&w).await, 0);
    assert_eq!(w.smtp.messages().len(), 300);
}

#[tokio::test]
async fn a_grouped_jobs_notifications_are_cancelled_one_by_one_or_all_at_once() {
    let w = World::start().await;
    let api = spawn_api(&w.config, w.pool().clone(), Clock::system()).await;
    let users = w.load_students(6, "cancel").await;
    // Due in a few seconds: scheduled while they are cancelled.
    let due = Utc::now() + chrono::Duration::seconds(4);
    let first = create_all(&w, users[..3].iter().map(|u| package_low(*u, format!("one:{u}"), due)).collect()).await;
    let later = due + chrono::Duration::seconds(1);
    let second = create_all(&w, users[3..].iter().map(|u| package_low(*u, format!("all:{u}"), later)).collect()).await;
    assert_eq!(notification_jobs(&w).await, 2, "one job each");

    // One notification of the first job.
    let out = api
        .post(&format!("/api/notifications/{}/cancel", first[1]), json!({"by": "ops-ann"}))
        .await
        .expect(200);
    assert_eq!(out["status"], "cancelling");
    api.post("/api/notifications/999999999/cancel", json!({})).await.expect(404);
    // Every notification the second job carries.
    let job: String = sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = $1 AND convert_from(job, 'UTF8') LIKE $2")
        .bind(QUEUE_NOTIFICATIONS)
        .bind(format!("%{}%", second[0]))
        .fetch_one(w.pool())
        .await
        .unwrap();
    let cancelled = api.post(&format!("/api/jobs/{job}/cancel"), json!({})).await.expect(200);
    assert_eq!(cancelled["notification_ids"], json!(second));

    let worker = w.spawn_worker(Clock::system());
    let mails = w.smtp.wait_for_messages(2, LONG).await.unwrap();
    try_wait_until("the cancels recorded", LONG, || async {
        let n = scalar(&w, "SELECT count(*) FROM notifications WHERE status = 'cancelled'").await;
        Ok((n == 4).then_some(()))
    })
    .await
    .unwrap();
    try_wait_until("every job finished", LONG, || async {
        let open = scalar(
            &w,
            &format!("SELECT count(*) FROM apalis.jobs WHERE job_type = '{QUEUE_NOTIFICATIONS}' AND status <> 'Killed'"),
        )
        .await;
        Ok((open == 0).then_some(()))
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
    let to: Vec<String> = mails.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    assert_eq!(w.smtp.messages().len(), 2, "only the two left: {to:?}");
    let pool = w.pool();
    let status = |id: i64| async move {
        sqlx::query_scalar::<_, String>("SELECT status FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(status(first[0]).await, "done");
    assert_eq!(status(first[1]).await, "cancelled");
    assert_eq!(status(first[2]).await, "done");
    for id in &second {
        assert_eq!(status(*id).await, "cancelled");
    }
    // A cancelled notification cannot be cancelled again.
    api.post(&format!("/api/notifications/{}/cancel", first[1]), json!({}))
        .await
        .expect(409);
}

#[tokio::test]
async fn the_sweep_reads_every_notification_a_waiting_job_carries() {
    let w = World::start().await;
    let users = w.load_students(120, "backlog").await;
    let due = Utc::now();
    let mut ids = create_all(&w, users.iter().map(|u| package_low(*u, format!("backlog:{u}"), due)).collect()).await;
    // And one job of the one-notification form.
    let one = w.load_students(1, "single").await;
    ids.extend(create_all(&w, vec![package_low(one[0], "single".into(), due)]).await);
    let mut conn = w.pool().acquire().await.unwrap();
    let mut backlog = dashlight_core::queue::backlog_notification_ids(&mut conn, QUEUE_NOTIFICATIONS)
        .await
        .unwrap();
    backlog.sort_unstable();
    ids.sort_unstable();
    assert_eq!(backlog, ids);
}
