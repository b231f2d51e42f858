//! Operators' views and levers on apalis's tables: job counts per queue and reported state
//! ([`queue_stats`]), the job list and one job ([`list_jobs`], [`get_job`]), retry and cancel
//! ([`retry_job`], [`cancel_job`]) and the per-minute chart ([`per_minute`]). Part of the queue
//! driver ([`super`]): every statement here is on apalis's tables, through the driver's macros.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};

use super::{JobState, ReportedState, enqueue};
use crate::jobs::{NewJob, QUEUES};

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
