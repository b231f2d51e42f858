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
//! - **Operators' views and levers** ([`queue_stats`], [`list_jobs`], [`get_job`], [`retry_job`],
//!   [`per_minute`]) and **pruning** ([`prune_done`]).
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

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::jobs::{JOB_MAX_ATTEMPTS, NewJob, QUEUES};

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
// Operators' views and levers

/// Job counts of one queue by reported state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueCounts {
    /// Queue name (apalis `job_type`).
    pub queue: String,
    /// Due and waiting for a worker.
    pub pending: i64,
    /// Due later.
    pub scheduled: i64,
    /// Taken by a worker.
    pub running: i64,
    /// Finished.
    pub done: i64,
    /// Failed; will be tried again.
    pub failed: i64,
    /// Killed, or failed with no attempts left.
    pub dead: i64,
}

/// Jobs of one queue in one reported state.
struct StateCount {
    queue: String,
    state: String,
    n: i64,
}

/// Counts jobs per queue and reported state; every queue of [`QUEUES`] is listed, empty or not,
/// then any other queue found.
pub async fn queue_stats<'c>(exec: impl PgExecutor<'c>, now: DateTime<Utc>) -> Result<Vec<QueueCounts>, sqlx::Error> {
    let rows: Vec<StateCount> =
        jobs_query!(StateCount; "SELECT job_type AS queue, " STATE r#" AS "state!", count(*) AS "n!" FROM apalis.jobs GROUP BY 1, 2"#; now)
            .fetch_all(exec)
            .await?;
    let mut by_queue: BTreeMap<String, QueueCounts> = BTreeMap::new();
    for StateCount { queue, state, n } in rows {
        let s = by_queue.entry(queue.clone()).or_insert_with(|| QueueCounts {
            queue,
            ..Default::default()
        });
        match ReportedState::parse(&state) {
            Some(ReportedState::Pending) => s.pending += n,
            Some(ReportedState::Scheduled) => s.scheduled += n,
            Some(ReportedState::Running) => s.running += n,
            Some(ReportedState::Done) => s.done += n,
            Some(ReportedState::Failed) => s.failed += n,
            Some(ReportedState::Dead) | None => s.dead += n,
        }
    }
    let mut out: Vec<QueueCounts> = QUEUES
        .iter()
        .map(|q| {
            by_queue.remove(*q).unwrap_or_else(|| QueueCounts {
                queue: q.to_string(),
                ..Default::default()
            })
        })
        .collect();
    out.extend(by_queue.into_values());
    Ok(out)
}

/// A job as operators see it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// apalis id (a ULID).
    pub id: String,
    /// Queue.
    pub queue: String,
    /// apalis's own status.
    pub status: JobState,
    /// The reported state.
    pub state: ReportedState,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When it may run.
    pub run_at: DateTime<Utc>,
    /// Higher runs first.
    pub priority: Option<i32>,
    /// The worker holding it.
    pub lock_by: Option<String>,
    /// When it was taken.
    pub lock_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub done_at: Option<DateTime<Utc>>,
    /// The last result apalis recorded (an error for failed jobs).
    pub last_result: Option<serde_json::Value>,
    /// The payload, decoded as JSON (a string when it is not JSON).
    pub payload: serde_json::Value,
}

struct JobRow {
    id: String,
    queue: String,
    status: JobState,
    state: String,
    attempts: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    priority: Option<i32>,
    lock_by: Option<String>,
    lock_at: Option<DateTime<Utc>>,
    done_at: Option<DateTime<Utc>>,
    last_result: Option<serde_json::Value>,
    raw: Vec<u8>,
}

impl From<JobRow> for JobRecord {
    fn from(r: JobRow) -> Self {
        let payload =
            serde_json::from_slice(&r.raw).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&r.raw).into_owned()));
        JobRecord {
            id: r.id,
            queue: r.queue,
            status: r.status,
            state: ReportedState::parse(&r.state).unwrap_or(ReportedState::Dead),
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            run_at: r.run_at,
            priority: r.priority,
            lock_by: r.lock_by,
            lock_at: r.lock_at,
            done_at: r.done_at,
            last_result: r.last_result,
            payload,
        }
    }
}

/// Jobs newest first (apalis ids are ULIDs, so they sort by time), optionally of one queue and
/// one reported state, older than the id `before`; at most `limit`.
pub async fn list_jobs<'c>(
    exec: impl PgExecutor<'c>,
    now: DateTime<Utc>,
    queue: Option<&str>,
    state: Option<ReportedState>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<JobRecord>, sqlx::Error> {
    let rows: Vec<JobRow> = jobs_query!(
        JobRow;
        "SELECT " JOB_COLUMNS ", " STATE r#" AS "state!" FROM apalis.jobs
         WHERE ($2::text IS NULL OR job_type = $2) AND ($3::text IS NULL OR "# STATE " = $3) AND ($4::text IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5";
        now,
        queue,
        state.map(ReportedState::as_str),
        before,
        limit,
    )
    .fetch_all(exec)
    .await?;
    Ok(rows.into_iter().map(JobRecord::from).collect())
}

/// One job.
pub async fn get_job<'c>(exec: impl PgExecutor<'c>, now: DateTime<Utc>, id: &str) -> Result<Option<JobRecord>, sqlx::Error> {
    let row: Option<JobRow> =
        jobs_query!(JobRow; "SELECT " JOB_COLUMNS ", " STATE r#" AS "state!" FROM apalis.jobs WHERE id = $2"#; now, id)
            .fetch_optional(exec)
            .await?;
    Ok(row.map(JobRecord::from))
}

/// Puts a failed or killed job back to `Pending`, due now, attempts reset; returns whether it
/// was. The state check and the reset are one statement, so a job a worker just took is never
/// reset under it. Workers are woken the way apalis's insert trigger wakes them.
pub async fn retry_job<'c>(exec: impl PgExecutor<'c>, id: &str) -> Result<bool, sqlx::Error> {
    let reset: Option<String> = sqlx::query_scalar!(
        r#"WITH reset AS (
             UPDATE apalis.jobs SET status = 'Pending', run_at = now(), attempts = 0, lock_by = NULL, lock_at = NULL, done_at = NULL
             WHERE id = $1 AND status IN ('Failed', 'Killed')
             RETURNING id, job_type, run_at)
         SELECT id AS "id!" FROM reset,
             LATERAL (SELECT pg_notify('apalis::job::insert', json_build_object('job_type', job_type, 'id', id, 'run_at', run_at)::text)) AS woken"#,
        id,
    )
    .fetch_optional(exec)
    .await?;
    Ok(reset.is_some())
}

/// The `last_result` error of a job an operator cancelled.
pub const CANCELLED: &str = "cancelled by operator";

/// What [`cancel_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// The job will not run; `notifications` are those it still carried, whose cancel the
    /// worker's recorder now records (through a job of its own, enqueued here).
    Cancelled {
        /// The notifications of a notification job (empty for another queue's job).
        notifications: Vec<i64>,
    },
    /// No such job.
    NotFound,
    /// The job is not pending or scheduled (its apalis status).
    NotCancellable(JobState),
}

/// Cancels a pending or scheduled job (apalis `Pending`, or `Failed` waiting for its next try)
/// as `actor`: it is `Killed` with [`CANCELLED`] as its result, in one statement, so a job a
/// worker just took is never cancelled under it. Every notification a notification job carries
/// is then recorded `cancelled` by the worker's recorder (the one writer of delivery state): a
/// job due now carrying the cancel is enqueued on `conn` (use a transaction).
pub async fn cancel_job(conn: &mut PgConnection, id: &str, actor: &str) -> Result<Cancelled, sqlx::Error> {
    let reason = format!("{CANCELLED} ({actor})");
    let row = sqlx::query!(
        "UPDATE apalis.jobs SET status = 'Killed', last_result = jsonb_build_object('Err', $2::text), done_at = now(),
                lock_by = NULL, lock_at = NULL
         WHERE id = $1 AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
         RETURNING job_type, job, priority",
        id,
        &reason,
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| (r.job_type, r.job, r.priority));
    let Some((queue, payload, priority)) = row else {
        let status: Option<JobState> = sqlx::query_scalar!(r#"SELECT status AS "status: JobState" FROM apalis.jobs WHERE id = $1"#, id)
            .fetch_optional(&mut *conn)
            .await?;
        return Ok(match status {
            None => Cancelled::NotFound,
            Some(s) => Cancelled::NotCancellable(s),
        });
    };
    let mut notifications = Vec::new();
    if queue == crate::jobs::QUEUE_NOTIFICATIONS
        && let Ok(job) = serde_json::from_slice::<crate::jobs::DeliverJob>(&payload)
        && job.cancel.is_none()
    {
        notifications = job.notifications();
        let mark = crate::jobs::DeliverJob::cancel(&notifications, format!("job {id} {reason}"));
        enqueue(conn, &[NewJob::new(&queue, &mark).priority(priority.unwrap_or(0))]).await?;
    }
    Ok(Cancelled::Cancelled { notifications })
}

/// Jobs finished in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Finished well.
    pub done: i64,
    /// Failed or killed.
    pub failed: i64,
}

/// Work finished per minute over the `minutes` before `now`, oldest first (slot `minutes - 1`
/// ends at `now`): done is the deliveries sent in that minute (a finished notification job leaves
/// no row; its deliveries are its record) and the periodic jobs finished; failed is the jobs
/// that failed or were killed (apalis's `done_at`, stamped on every outcome).
pub async fn per_minute<'c>(exec: impl PgExecutor<'c>, now: DateTime<Utc>, minutes: usize) -> Result<Vec<Minute>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT ago AS "ago!", sum(done)::int8 AS "done!", sum(failed)::int8 AS "failed!" FROM (
             SELECT floor(extract(epoch FROM ($1 - done_at)) / 60)::int AS ago,
                    count(*) FILTER (WHERE status = 'Done') AS done,
                    count(*) FILTER (WHERE status IN ('Failed', 'Killed')) AS failed
             FROM apalis.jobs
             WHERE done_at > $1 - make_interval(mins => $2) AND done_at <= $1
             GROUP BY 1
             UNION ALL
             SELECT floor(extract(epoch FROM ($1 - sent_at)) / 60)::int, count(*), 0
             FROM notification_deliveries
             WHERE sent_at > $1 - make_interval(mins => $2) AND sent_at <= $1
             GROUP BY 1) t
         GROUP BY 1"#,
        now,
        i32::try_from(minutes).unwrap_or(i32::MAX),
    )
    .fetch_all(exec)
    .await?;
    let mut out = vec![Minute::default(); minutes];
    for r in rows {
        if let Ok(ago) = usize::try_from(r.ago)
            && ago < minutes
        {
            out[minutes - 1 - ago] = Minute {
                done: r.done,
                failed: r.failed,
            };
        }
    }
    Ok(out)
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
