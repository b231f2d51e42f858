//! A batched path over apalis-postgres's own tables for the notification queue.
//!
//! apalis's stock worker fetches a batch but acknowledges every job on its own and runs one
//! handler per job; issue 7's profile showed the queue and the per-notification round trips, not
//! the sends, bounding throughput (BENCHMARKS.md). [`JobQueue`] keeps apalis's table, states and
//! worker registry, so the admin API, the dashboard, `dashlight migrate` and the periodic queue's
//! stock worker all see the same thing, and changes how a worker talks to them:
//!
//! - [`JobQueue::fetch`] claims up to `limit` jobs in one statement (`FOR UPDATE SKIP LOCKED`
//!   over apalis's fetch index), including jobs due within a short look-ahead, which the caller
//!   holds until their `run_at`: a reminder is then sent at its due time instead of at the next
//!   poll after it.
//! - [`JobQueue::complete`] records many results in one statement, on the caller's transaction,
//!   so the delivery records and the acknowledgement of the job that produced them commit
//!   together.
//! - [`JobQueue::heartbeat`] keeps this worker's row in `apalis.workers` fresh and gives the jobs
//!   of workers whose heartbeat went stale back to the queue, exactly as apalis's own
//!   `reenqueue_orphaned` does; stock workers and ours rescue each other.
//!
//! States follow apalis: `Running` while held, then `Done`, `Failed` (fetched again while
//! `attempts < max_attempts`, here only after a backoff) or `Killed`. `attempts` counts fetches.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// A job claimed by [`JobQueue::fetch`].
#[derive(Debug, Clone)]
pub struct FetchedJob {
    /// apalis's id (a ULID).
    pub id: String,
    /// The raw payload; decoding it is the handler's business (a bad one kills only its job).
    pub payload: Vec<u8>,
    /// Fetches so far, this one included.
    pub attempts: i32,
    /// Fetches allowed.
    pub max_attempts: i32,
    /// Higher runs first.
    pub priority: i32,
    /// How long after the fetch the job is due (zero when already due), on the database clock.
    pub due_in: Duration,
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Finished.
    Done,
    /// Failed; fetched again after `retry_in` unless out of attempts.
    Failed {
        /// The error, kept in `last_result`.
        error: String,
        /// Delay before the next fetch.
        retry_in: Duration,
    },
    /// Can never succeed: not fetched again.
    Killed(String),
}

/// One queue of apalis's table, as seen by one named worker.
#[derive(Debug, Clone)]
pub struct JobQueue {
    pool: PgPool,
    queue: String,
    worker: String,
}

/// Storage name written to `apalis.workers` for workers of this path.
pub const STORAGE_NAME: &str = "dashlight::queue::JobQueue";

impl JobQueue {
    /// The queue `queue` for the worker called `worker` (unique per process: see
    /// [`crate::worker_name`]).
    pub fn new(pool: PgPool, queue: &str, worker: &str) -> Self {
        JobQueue {
            pool,
            queue: queue.to_owned(),
            worker: worker.to_owned(),
        }
    }

    /// The pool it runs on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The worker's name.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Registers the worker in `apalis.workers` (as apalis's own `register.sql` does).
    pub async fn register(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) VALUES ($1, $2, $3, '', now())
             ON CONFLICT (id) DO UPDATE SET worker_type = EXCLUDED.worker_type, storage_name = EXCLUDED.storage_name, last_seen = now()",
        )
        .bind(&self.worker)
        .bind(&self.queue)
        .bind(STORAGE_NAME)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the worker alive and returns to the queue the jobs held by workers of this queue
    /// whose heartbeat is older than `stale_after` (apalis's `reenqueue_orphaned.sql`).
    /// Returns how many jobs were rescued.
    pub async fn heartbeat(&self, stale_after: Duration) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE apalis.workers SET last_seen = now() WHERE id = $1 AND worker_type = $2")
            .bind(&self.worker)
            .bind(&self.queue)
            .execute(&mut *tx)
            .await?;
        let rescued = sqlx::query(
            r#"WITH stale AS (
                   SELECT jobs.id FROM apalis.jobs INNER JOIN apalis.workers ON jobs.lock_by = workers.id
                   WHERE (jobs.status = 'Running' OR jobs.status = 'Queued')
                     AND now() - workers.last_seen >= $1 AND workers.worker_type = $2
                   FOR UPDATE OF jobs SKIP LOCKED)
               UPDATE apalis.jobs SET status = 'Pending', done_at = NULL, lock_by = NULL, lock_at = NULL,
                      last_result = '{"Err": "Re-enqueued due to worker heartbeat timeout."}'
               FROM stale WHERE apalis.jobs.id = stale.id"#,
        )
        .bind(stale_after)
        .bind(&self.queue)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(rescued)
    }

    /// Claims up to `limit` jobs that are due now or within `lookahead`, highest priority first,
    /// then earliest. The ids are picked first (`= ANY(ARRAY(…))`, evaluated once) so the update
    /// finds its rows by primary key: joining to the picked set let the planner hash the whole
    /// table on every fetch of a large batch, a cost that grew with the finished jobs kept. They are `Running` under this worker's name until [`Self::complete`] (or
    /// rescued by another worker if this one stops beating).
    pub async fn fetch(&self, limit: usize, lookahead: Duration) -> Result<Vec<FetchedJob>, sqlx::Error> {
        let rows: Vec<(String, Vec<u8>, i32, i32, i32, f64)> = sqlx::query_as(
            "UPDATE apalis.jobs j SET status = 'Running', lock_by = $4, lock_at = now(), attempts = j.attempts + 1, done_at = NULL
             WHERE j.id = ANY(ARRAY(
                 SELECT id FROM apalis.jobs
                 WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
                   AND job_type = $1 AND run_at <= now() + $3
                 ORDER BY priority DESC, run_at ASC
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED))
             RETURNING j.id, j.job, j.attempts, j.max_attempts, j.priority,
                       greatest(extract(epoch FROM j.run_at - now()), 0)::float8",
        )
        .bind(&self.queue)
        .bind(limit as i64)
        .bind(lookahead)
        .bind(&self.worker)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, attempts, max_attempts, priority, due_in)| FetchedJob {
                id,
                payload,
                attempts,
                max_attempts,
                priority,
                due_in: Duration::from_secs_f64(due_in),
            })
            .collect())
    }

    /// Records the outcome of jobs held by `worker`, in one statement on `conn` (a transaction of
    /// the caller's, so results and acknowledgements commit together). The jobs are found by
    /// primary key; the holder is checked with `IS NOT DISTINCT FROM`, which no index serves,
    /// because the planner, with statistics from when `lock_by` was empty, otherwise walks
    /// `idx_apalis_jobs_lock_by` through every job this worker ever finished (finished jobs keep
    /// their `lock_by`): a cost that grew with the queue's history, measured at 30 ms per batch
    /// after 8,000 jobs. Returns how many rows
    /// changed; jobs no longer held by `worker` (rescued meanwhile) are left alone.
    pub async fn complete(conn: &mut PgConnection, worker: &str, outcomes: &[(String, JobOutcome)]) -> Result<u64, sqlx::Error> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        // The common case, jobs done, as one join-free statement; failures (few) with their
        // own results and retry times.
        let done_ids: Vec<&str> = outcomes
            .iter()
            .filter(|(_, o)| *o == JobOutcome::Done)
            .map(|(id, _)| id.as_str())
            .collect();
        let mut changed = 0;
        if !done_ids.is_empty() {
            changed += sqlx::query(
                r#"UPDATE apalis.jobs SET status = 'Done', last_result = '{"Ok": null}', done_at = now()
                   WHERE id = ANY($1) AND lock_by IS NOT DISTINCT FROM $2"#,
            )
            .bind(&done_ids)
            .bind(worker)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        }
        let mut ids = Vec::new();
        let mut statuses = Vec::new();
        let mut results = Vec::new();
        let mut retry_ms = Vec::new();
        for (id, outcome) in outcomes {
            let (status, result, retry) = match outcome {
                JobOutcome::Done => continue,
                JobOutcome::Failed { error, retry_in } => {
                    ("Failed", serde_json::json!({ "Err": error }), Some(retry_in.as_millis() as i64))
                }
                JobOutcome::Killed(error) => ("Killed", serde_json::json!({ "Err": error }), None),
            };
            ids.push(id.as_str());
            statuses.push(status);
            results.push(result);
            retry_ms.push(retry);
        }
        if ids.is_empty() {
            return Ok(changed);
        }
        let done = sqlx::query(
            "UPDATE apalis.jobs j SET status = t.status, last_result = t.result, done_at = now(),
                    run_at = CASE WHEN t.retry_ms IS NULL THEN j.run_at ELSE now() + t.retry_ms * interval '1 millisecond' END,
                    lock_by = CASE WHEN t.status = 'Failed' THEN NULL ELSE j.lock_by END
             FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::bigint[]) AS t(id, status, result, retry_ms)
             WHERE j.id = t.id AND j.id = ANY($1) AND j.lock_by IS NOT DISTINCT FROM $5",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&results)
        .bind(&retry_ms)
        .bind(worker)
        .execute(conn)
        .await?;
        Ok(changed + done.rows_affected())
    }

    /// Puts jobs this worker claimed but never started back to `Pending`, their fetch not
    /// counted (graceful shutdown with jobs still held for their due time).
    pub async fn release(&self, ids: &[String]) -> Result<u64, sqlx::Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, attempts = greatest(attempts - 1, 0)
             WHERE id = ANY($1) AND lock_by IS NOT DISTINCT FROM $2 AND status = 'Running'",
        )
        .bind(ids)
        .bind(&self.worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
