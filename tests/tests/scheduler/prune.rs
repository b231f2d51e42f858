//! Pruning: only old finished jobs and old scheduler ticks are deleted.

use chrono::Utc;
use dashlight_core::{
    Clock,
    jobs::{self, NewJob, PeriodicJob, PeriodicTask, QUEUE_PERIODIC},
};
use dashlight_tests::db::TestDb;
use dashlight_worker::periodic::Context;

use crate::{count, run};

#[tokio::test]
async fn prune_deletes_only_old_done_jobs_and_old_ticks() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let mut conn = db.pool.acquire().await.unwrap();
    let keys = ["old-done-1", "old-done-2", "new-done", "old-failed", "old-killed", "pending"];
    let payload = PeriodicJob {
        task: PeriodicTask::PruneJobs,
        tick: now,
    };
    let new_jobs: Vec<NewJob> = keys
        .iter()
        .map(|k| NewJob::new(QUEUE_PERIODIC, &payload).idempotency_key(*k))
        .collect();
    jobs::enqueue(&mut conn, &new_jobs).await.unwrap();
    for (key, status, age_days) in [
        ("old-done-1", "Done", 10),
        ("old-done-2", "Done", 8),
        ("new-done", "Done", 1),
        ("old-failed", "Failed", 10),
        ("old-killed", "Killed", 10),
    ] {
        sqlx::query("UPDATE apalis.jobs SET status = $2, done_at = $3 WHERE idempotency_key = $1")
            .bind(key)
            .bind(status)
            .bind(now - chrono::Duration::days(age_days))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO scheduler_ticks (job, tick_at, claimed_by) VALUES ('invoices', $1, 'a'), ('invoices', $2, 'a')")
        .bind(now - chrono::Duration::days(9))
        .bind(now - chrono::Duration::hours(1))
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let ctx = Context::new(&db.config(), db.pool.clone(), Clock::system());
    let summary = run(&ctx, PeriodicTask::PruneJobs, now).await;
    assert!(summary.starts_with("deleted 2 finished jobs and 1 scheduler ticks"), "{summary}");
    let left: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM apalis.jobs ORDER BY idempotency_key")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["new-done", "old-failed", "old-killed", "pending"]);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM scheduler_ticks").await, 1);
    let again = run(&ctx, PeriodicTask::PruneJobs, now).await;
    assert!(again.starts_with("deleted 0 finished jobs and 0 scheduler ticks"), "{again}");
}
