//! The safety net the periodic reminder sweep runs: deliveries a dead worker left `sending`
//! ([`recover_stuck`], recorded `interrupted` through [`super::record`]) and open notifications
//! whose job was lost ([`sweep_overdue`], which enqueues their jobs through the queue driver).
//! Neither writes a delivery's or a notification's state itself.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::{self, NewJob, QUEUE_NOTIFICATIONS},
    queue,
};
use sqlx::PgPool;

use super::record::{self, Stuck};

/// How long a send may take before a delivery left `sending` is considered interrupted (when
/// the heartbeat rescue did not already recover it).
pub const SENDING_TIMEOUT: Duration = Duration::from_secs(120);

/// Deliveries left `sending` longer than [`SENDING_TIMEOUT`] by a worker that died: the attempt
/// is recorded `interrupted` and they go back to `retrying`, their notifications re-enqueued.
/// Returns how many were recovered.
pub async fn recover_stuck(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let cutoff = now - chrono::Duration::from_std(SENDING_TIMEOUT).expect("fits");
    record::interrupt(pool, Stuck::Since(cutoff), now).await
}

/// The statement of [`sweep_overdue`]: `$1` the overdue cutoff, `$2` the next check it sets,
/// `$3` the ids of notifications whose job waits in the queue's backlog. Public for the
/// benchmark, which explains it; the function runs the same file through `query_file!`.
pub const SWEEP_OVERDUE_SQL: &str = include_str!("../../queries/sweep_overdue.sql");

/// The sweep's safety net: open notifications whose worker should have acted on them more than
/// `grace` ago, and whose job is not still waiting in the queue, get a new job. Returns how many.
///
/// A notification whose job is queued but not yet fetched is late because the workers are
/// behind, not lost: a second job would only add to the backlog (up to 5,000 per sweep, every
/// 10 s, while a large burst drains). The backlog's notification ids come from the queue driver
/// ([`queue::backlog_notification_ids`]). Jobs already fetched (held for their due time or in
/// flight, at most two batches per worker) are not excluded: a second job for one of those
/// finds its deliveries claimed and does nothing.
pub async fn sweep_overdue(pool: &PgPool, now: DateTime<Utc>, grace: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = now - chrono::Duration::from_std(grace).expect("fits");
    let mut tx = pool.begin().await?;
    let queued = queue::backlog_notification_ids(&mut tx, QUEUE_NOTIFICATIONS).await?;
    let rows = sqlx::query_file!("queries/sweep_overdue.sql", cutoff, now + chrono::Duration::minutes(1), &queued)
        .fetch_all(&mut *tx)
        .await?;
    let runs: Vec<(i64, DateTime<Utc>, i32)> = rows.iter().map(|r| (r.id, now, i32::from(r.priority))).collect();
    let grouped = jobs::delivery_jobs(&runs, None);
    let jobs: Vec<NewJob> = grouped
        .iter()
        .map(|(job, _, priority)| NewJob::new(QUEUE_NOTIFICATIONS, job).priority(*priority))
        .collect();
    queue::enqueue(&mut tx, &jobs).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}
