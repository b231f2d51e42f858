//! The queue driver: the one module that reads or writes apalis's tables (`apalis.jobs`,
//! `apalis.workers`), as River keeps its driver layer and crates.io's worker its `storage.rs`.
//! Everything else — producers, the worker's drain, the periodic jobs, pruning, the admin API
//! and its dashboard — calls the functions here. apalis's job states live in one Rust enum,
//! [`JobState`]; the states the API reports are [`ReportedState`].
//!
//! What it owns:
//!
//! - **Enqueueing** ([`enqueue`]): the one insert, on the caller's connection, so a business write
//!   and the jobs it implies commit together.
//! - **The notification queue's own loop** ([`JobQueue`]): register, heartbeat and orphan rescue,
//!   batched fetch, batched acknowledgement (a finished job is deleted), release, and the
//!   wake-up on apalis's insert channel ([`InsertListener`]).
//! - **Operators' views and levers** (`ops.rs`: [`queue_stats`], [`list_jobs`], [`get_job`],
//!   [`retry_job`], [`cancel_job`], [`per_minute`]) and **pruning** ([`prune_done`]).
//! - **The sweep's view of the backlog** ([`backlog_notification_ids`]).
//! - **The periodic queue's backend** ([`stock`], [`PausableStorage`]): a stock apalis worker's
//!   storage, apalis-postgres's own statements with a fetch that honours a pause.
//!
//! ## Why the notification queue is drained by our own loop
//!
//! apalis's stock `Worker` fetches a batch but runs one handler per job and acknowledges each job
//! on its own, outside the handler's transaction. The notification path records the results of a
//! whole batch of sends *and* the acknowledgement of the jobs that produced them in one
//! transaction (BENCHMARKS.md: ~11 transactions per notification before, 0.01 after). apalis
//! 1.0's `Backend` trait cannot express that: its poll yields a stream of single tasks and its ack
//! layer writes `apalis.jobs` on its own connection, so implementing the trait for the batched
//! path would bring back the per-job acknowledgement it exists to remove. The periodic queue has
//! no such need and runs on a stock apalis worker (over apalis-postgres's own statements, with a
//! fetch that honours a pause: [`stock`]).
//!
//! ## What apalis guarantees still hold, and how the two kinds of worker coexist
//!
//! [`JobQueue`] uses apalis's own table, columns, states and fetch index, and registers in
//! `apalis.workers` with the same columns apalis's `register.sql` writes. Its heartbeat marks its
//! row alive and rescues the jobs of any worker of its queue whose heartbeat went stale, with the
//! statement of apalis's `reenqueue_orphaned.sql`; stock workers do the same for theirs, so a
//! crashed worker of either kind has its jobs put back. `attempts` counts fetches and
//! `max_attempts` is honoured exactly as apalis does; a failed job goes back to the queue after a
//! backoff instead of at once (apalis keeps `run_at` and retries immediately). Jobs enqueued by
//! [`enqueue`] wake stock workers and ours alike through apalis's insert trigger.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::jobs::{JOB_MAX_ATTEMPTS, NewJob};

pub mod stock;
pub use stock::PausableStorage;

/// apalis's job states, as stored in `apalis.jobs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text")]
pub enum JobState {
    /// Waiting for its `run_at`.
    Pending,
    /// Taken by a stock worker, not yet started.
    Queued,
    /// Held by a worker.
    Running,
    /// Finished.
    Done,
    /// Failed; fetched again while `attempts < max_attempts`.
    Failed,
    /// Will never run again.
    Killed,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "Pending",
            JobState::Queued => "Queued",
            JobState::Running => "Running",
            JobState::Done => "Done",
            JobState::Failed => "Failed",
            JobState::Killed => "Killed",
        }
    }
}

/// The state of a job as the API reports it, derived from [`JobState`], `run_at` and attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedState {
    /// Due and waiting for a worker.
    Pending,
    /// Due later.
    Scheduled,
    /// Taken by a worker.
    Running,
    /// Finished.
    Done,
    /// Failed; will be tried again.
    Failed,
    /// Killed, or failed with its attempts used up.
    Dead,
}

impl ReportedState {
    /// Every reported state.
    pub const ALL: [ReportedState; 6] = [
        ReportedState::Pending,
        ReportedState::Scheduled,
        ReportedState::Running,
        ReportedState::Done,
        ReportedState::Failed,
        ReportedState::Dead,
    ];

    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportedState::Pending => "pending",
            ReportedState::Scheduled => "scheduled",
            ReportedState::Running => "running",
            ReportedState::Done => "done",
            ReportedState::Failed => "failed",
            ReportedState::Dead => "dead",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<ReportedState> {
        ReportedState::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// `sqlx::query_as!($out, …)` over a statement on `apalis.jobs` given as string literals, `;`,
/// then its arguments. Among the literals, `STATE` stands for the SQL deriving the reported state
/// from apalis's columns (`$1` is "now") and `JOB_COLUMNS` for the columns of a [`JobRow`]: one
/// definition of each for every statement, and each statement still one literal the macro checks.
macro_rules! jobs_query {
    ($out:path; [$($done:literal)*] STATE $($rest:tt)*) => {
        jobs_query!($out; [$($done)* "CASE
        WHEN status = 'Pending' AND run_at <= $1 THEN 'pending'
        WHEN status = 'Pending' THEN 'scheduled'
        WHEN status IN ('Queued', 'Running') THEN 'running'
        WHEN status = 'Done' THEN 'done'
        WHEN status = 'Failed' AND attempts < max_attempts THEN 'failed'
        WHEN status = 'Killed' OR status = 'Failed' THEN 'dead'
        ELSE lower(status) END"] $($rest)*)
    };
    ($out:path; [$($done:literal)*] JOB_COLUMNS $($rest:tt)*) => {
        jobs_query!($out; [$($done)* r#"id, job_type AS queue, status AS "status: JobState", attempts, max_attempts, run_at, priority, lock_by, lock_at, done_at, last_result, job AS raw"#] $($rest)*)
    };
    ($out:path; [$($done:literal)*] $piece:literal $($rest:tt)*) => {
        jobs_query!($out; [$($done)* $piece] $($rest)*)
    };
    ($out:path; [$first:literal $($done:literal)*]; $($arg:expr),+ $(,)?) => {
        sqlx::query_as!($out, $first $(+ $done)*, $($arg),+)
    };
    ($out:path; $($rest:tt)+) => {
        jobs_query!($out; [] $($rest)+)
    };
}

mod ops;
pub use ops::{CANCELLED, Cancelled, JobRecord, Minute, QueueCounts, cancel_job, get_job, list_jobs, per_minute, queue_stats, retry_job};

// ---------------------------------------------------------------------------------------------
// Enqueueing

/// Inserts jobs into apalis's table on `conn` (use a transaction to tie them to a business
/// write). Returns how many were inserted (idempotency-key duplicates are skipped).
///
/// Jobs are inserted with full timestamp precision (apalis's own sink rounds `run_at` to the
/// second); apalis's insert trigger announces them to every listening worker.
pub async fn enqueue(conn: &mut PgConnection, jobs: &[NewJob<'_>]) -> Result<u64, sqlx::Error> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let mut queues = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut run_ats = Vec::with_capacity(jobs.len());
    let mut priorities = Vec::with_capacity(jobs.len());
    let mut keys = Vec::with_capacity(jobs.len());
    for j in jobs {
        queues.push(j.queue.to_owned());
        payloads.push(serde_json::to_vec(&j.payload).expect("json"));
        run_ats.push(j.run_at);
        priorities.push(j.priority);
        keys.push(j.idempotency_key.clone());
    }
    // Mirrors apalis-postgres's queries/task/sink.sql, with run_at kept to the microsecond.
    let done = sqlx::query!(
        r#"
        INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
        SELECT apalis.generate_ulid(), q, p, 'Pending', 0, $6, coalesce(r, now()), pr, ''::hstore, k
        FROM unnest($1::text[], $2::bytea[], $3::timestamptz[], $4::int[], $5::text[]) AS t(q, p, r, pr, k)
        ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        "#,
        &queues,
        &payloads,
        &run_ats as &[Option<DateTime<Utc>>],
        &priorities,
        &keys as &[Option<String>],
        JOB_MAX_ATTEMPTS,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

// ---------------------------------------------------------------------------------------------
// The notification queue's loop

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
    /// How long it had been due when fetched (zero when not yet due): its wait in the queue.
    pub waited: Duration,
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
    /// The queue `queue` for the worker called `worker` (unique per process).
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
        sqlx::query!(
            "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) VALUES ($1, $2, $3, '', now())
             ON CONFLICT (id) DO UPDATE SET worker_type = EXCLUDED.worker_type, storage_name = EXCLUDED.storage_name, last_seen = now()",
            &self.worker,
            &self.queue,
            STORAGE_NAME,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the worker alive and returns to the queue the jobs held by workers of this queue
    /// whose heartbeat is older than `stale_after` (apalis's `reenqueue_orphaned.sql`).
    /// Returns the rescued jobs' holders (one entry per job), so the caller can settle what
    /// those workers left half-done.
    pub async fn heartbeat(&self, stale_after: Duration) -> Result<Vec<String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "UPDATE apalis.workers SET last_seen = now() WHERE id = $1 AND worker_type = $2",
            &self.worker,
            &self.queue,
        )
        .execute(&mut *tx)
        .await?;
        let rescued: Vec<String> = sqlx::query_scalar!(
            r#"WITH stale AS (
                   SELECT jobs.id, jobs.lock_by FROM apalis.jobs INNER JOIN apalis.workers ON jobs.lock_by = workers.id
                   WHERE (jobs.status = 'Running' OR jobs.status = 'Queued')
                     AND now() - workers.last_seen >= $1 AND workers.worker_type = $2
                   FOR UPDATE OF jobs SKIP LOCKED)
               UPDATE apalis.jobs SET status = 'Pending', done_at = NULL, lock_by = NULL, lock_at = NULL,
                      last_result = '{"Err": "Re-enqueued due to worker heartbeat timeout."}'
               FROM stale WHERE apalis.jobs.id = stale.id
               RETURNING stale.lock_by AS "lock_by!""#,
            stale_after as Duration,
            &self.queue,
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rescued)
    }

    /// Claims up to `limit` jobs that are due now or within `lookahead`: seven eighths of them
    /// highest priority first, then earliest (time-critical kinds before bulk ones), and an eighth
    /// (of a fetch of eight or more) earliest first whatever their priority, so bulk work still
    /// progresses under a steady stream of urgent jobs. Nothing is claimed while the queue is
    /// paused ([`crate::controls`]). The ids are picked first (`= ANY(ARRAY(…))`, evaluated once)
    /// so the update finds its rows by primary key: joining to the picked set let the planner
    /// hash the whole table on every fetch of a large batch, a cost that grew with the finished
    /// jobs kept. They are `Running` under this worker's name until [`Self::complete`] (or
    /// rescued by another worker if this one stops beating).
    ///
    /// With `min_priority`, only jobs of at least that priority are claimed (and no eighth
    /// earliest first): the drain's room kept for time-critical jobs
    /// ([`crate::kinds::TIME_CRITICAL`]) while bulk work fills the rest.
    pub async fn fetch(&self, limit: usize, lookahead: Duration, min_priority: Option<i32>) -> Result<Vec<FetchedJob>, sqlx::Error> {
        let fair = if min_priority.is_some() { 0 } else { limit / 8 };
        let rows = sqlx::query!(
            r#"UPDATE apalis.jobs j SET status = 'Running', lock_by = $4, lock_at = now(), attempts = j.attempts + 1, done_at = NULL
             WHERE j.id = ANY(ARRAY(
                 SELECT id FROM apalis.jobs
                 WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
                   AND job_type = $1 AND run_at <= now() + $3
                   AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE scope = 'queue' AND name = $1)
                   AND ($6::int4 IS NULL OR priority >= $6)
                 ORDER BY priority DESC, run_at ASC
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED) || ARRAY(
                 SELECT id FROM apalis.jobs
                 WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
                   AND job_type = $1 AND run_at <= now() + $3 AND $5 > 0
                   AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE scope = 'queue' AND name = $1)
                 ORDER BY run_at ASC
                 LIMIT $5
                 FOR UPDATE SKIP LOCKED))
             RETURNING j.id, j.job, j.attempts, j.max_attempts, j.priority AS "priority!",
                       greatest(extract(epoch FROM j.run_at - now()), 0)::float8 AS "due_in!",
                       greatest(extract(epoch FROM now() - j.run_at), 0)::float8 AS "waited!""#,
            &self.queue,
            (limit - fair) as i64,
            lookahead as Duration,
            &self.worker,
            fair as i64,
            min_priority,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FetchedJob {
                id: r.id,
                payload: r.job,
                attempts: r.attempts,
                max_attempts: r.max_attempts,
                priority: r.priority,
                due_in: Duration::from_secs_f64(r.due_in.max(0.0)),
                waited: Duration::from_secs_f64(r.waited.max(0.0)),
            })
            .collect())
    }

    /// Records the outcome of jobs held by `worker` on `conn` (a transaction of the caller's, so
    /// results and acknowledgements commit together). A finished job is deleted (graphile-worker's
    /// way: the history of what was sent is the deliveries and their attempts); a failed or
    /// killed one keeps its row, with its error, for operators. The jobs are found by
    /// primary key; the holder is checked with `IS NOT DISTINCT FROM`, which no index serves,
    /// because the planner, with statistics from when `lock_by` was empty, otherwise walks
    /// `idx_apalis_jobs_lock_by` through every job this worker ever finished (finished jobs keep
    /// their `lock_by`; the index holds only held jobs since migration 20261202000900): a cost
    /// that grew with the queue's history, measured at 30 ms per batch after 8,000 jobs. Returns
    /// how many rows changed; jobs no longer held by `worker` (rescued meanwhile) are left alone.
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
            changed += sqlx::query!(
                "DELETE FROM apalis.jobs WHERE id = ANY($1) AND lock_by IS NOT DISTINCT FROM $2",
                &done_ids as &[&str],
                worker,
            )
            .execute(&mut *conn)
            .await?
            .rows_affected();
        }
        let mut ids = Vec::new();
        let mut states = Vec::new();
        let mut results = Vec::new();
        let mut retry_ms = Vec::new();
        for (id, outcome) in outcomes {
            let (state, result, retry) = match outcome {
                JobOutcome::Done => continue,
                JobOutcome::Failed { error, retry_in } => (
                    JobState::Failed,
                    serde_json::json!({ "Err": error }),
                    Some(i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX)),
                ),
                JobOutcome::Killed(error) => (JobState::Killed, serde_json::json!({ "Err": error }), None),
            };
            ids.push(id.as_str());
            states.push(state.as_str());
            results.push(result);
            retry_ms.push(retry);
        }
        if ids.is_empty() {
            return Ok(changed);
        }
        let done = sqlx::query!(
            "UPDATE apalis.jobs j SET status = t.status, last_result = t.result, done_at = now(),
                    run_at = CASE WHEN t.retry_ms IS NULL THEN j.run_at ELSE now() + t.retry_ms * interval '1 millisecond' END,
                    lock_by = CASE WHEN t.status = 'Failed' THEN NULL ELSE j.lock_by END
             FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::bigint[]) AS t(id, status, result, retry_ms)
             WHERE j.id = t.id AND j.id = ANY($1) AND j.lock_by IS NOT DISTINCT FROM $5",
            &ids as &[&str],
            &states as &[&str],
            &results,
            &retry_ms as &[Option<i64>],
            worker,
        )
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
        let done = sqlx::query!(
            "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, attempts = greatest(attempts - 1, 0)
             WHERE id = ANY($1) AND lock_by IS NOT DISTINCT FROM $2 AND status = 'Running'",
            ids as &[String],
            &self.worker,
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// The channel apalis's insert trigger announces new jobs on (`{job_type, id, run_at}`); a
/// resume and an operator's retry announce on it too.
pub const INSERT_CHANNEL: &str = "apalis::job::insert";

/// A session listening on [`INSERT_CHANNEL`], for a drain that wakes when a job is inserted due
/// now instead of waiting for its next poll.
pub struct InsertListener(sqlx::postgres::PgListener);

impl InsertListener {
    /// Opens a session on `pool` (a direct one: a `LISTEN` through a transaction-mode pooler
    /// hears nothing once its transaction ends) and listens.
    pub async fn connect(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(INSERT_CHANNEL).await?;
        Ok(InsertListener(listener))
    }

    /// Waits until a job of `queue` is announced.
    pub async fn next(&mut self, queue: &str) -> Result<(), sqlx::Error> {
        loop {
            let n = self.0.recv().await?;
            let ours = serde_json::from_str::<serde_json::Value>(n.payload())
                .ok()
                .is_some_and(|v| v["job_type"].as_str() == Some(queue));
            if ours {
                return Ok(());
            }
        }
    }
}

/// The notification ids named by the jobs of `queue` that are due and not yet fetched (the
/// backlog, read through apalis's fetch index; jobs due later are not read), in either form of a
/// [`crate::jobs::DeliverJob`] (`notification_id` or `notification_ids`). The ids are taken from
/// the payloads with patterns that cannot fail on a malformed one.
pub async fn backlog_notification_ids(conn: &mut PgConnection, queue: &str) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT DISTINCT m[1]::bigint AS "id!"
           FROM apalis.jobs,
                LATERAL regexp_matches(substring(encode(job, 'escape') FROM '"notification_ids?":\s*(\[[0-9,\s]*\]|[0-9]+)'), '[0-9]+', 'g') AS m
           WHERE job_type = $1 AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)) AND run_at <= now()"#,
        queue,
    )
    .fetch_all(conn)
    .await
}

// ---------------------------------------------------------------------------------------------
// Pruning

/// The batch delete of [`prune_done`]: `$1` the cutoff, `$2` the batch size. `pub` so tests can
/// EXPLAIN it (it reads `dashlight_jobs_done_idx`); the unit test `delete_done_sql_is_prunes`
/// keeps it the text of the checked statement in `delete_done`.
pub const DELETE_DONE_SQL: &str =
    "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs WHERE status = 'Done' AND done_at < $1 LIMIT $2)";

/// [`DELETE_DONE_SQL`], checked.
fn delete_done(cutoff: DateTime<Utc>, batch: i64) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query!(
        "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs WHERE status = 'Done' AND done_at < $1 LIMIT $2)",
        cutoff,
        batch,
    )
}

/// Deletes jobs `Done` before `cutoff`, `batch` rows per statement so locks stay short. Failed
/// and killed jobs are kept for the operator. Returns how many were deleted.
pub async fn prune_done(pool: &PgPool, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    let mut deleted = 0u64;
    loop {
        let n = delete_done(cutoff, batch).execute(pool).await?.rows_affected();
        deleted += n;
        if n < batch as u64 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_states_round_trip() {
        for s in ReportedState::ALL {
            assert_eq!(ReportedState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReportedState::parse("Pending"), None);
    }

    #[test]
    fn delete_done_sql_is_prunes() {
        let sql = sqlx::Execute::sql(delete_done(Utc::now(), 1));
        assert_eq!(sql.as_str(), DELETE_DONE_SQL);
    }
}
