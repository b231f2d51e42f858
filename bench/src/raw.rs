//! Scenario 1, raw queue drain: `n` no-op jobs are queued first (one `INSERT … SELECT`), then
//! drained in this process by apalis-postgres
//!
//! - `project`: the notification queue's own path (`dashlight_core::queue::JobQueue`, as
//!   `dashlight_worker::drain` drives it): batches of `WORKER_BATCH_SIZE` claimed with one
//!   `UPDATE … RETURNING` (look-ahead `POLL_INTERVAL`), at most two batches unacknowledged, every
//!   payload decoded, and a single writer acknowledging whatever has finished in one statement per
//!   transaction, while the next fetch runs;
//! - `default`: apalis-postgres's `Config::default()` (only the queue name set) and one plain
//!   worker;
//! - `tuned` (for reference, no target): `Config::default().batch_size(1000).lock_tasks(false)`,
//!   one plain worker — large batches and no task locks, the fastest stock settings measured.
//!
//! Throughput is `n / (end − start)`: for apalis's workers the end is the last `done_at` once
//! every job is `Done`; the project's path deletes a finished job at its acknowledgement (as
//! graphile-worker does), so its end is when the last acknowledgement committed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use apalis::prelude::*;
use apalis_postgres::{Config as PgConfig, PostgresStorage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

use dashlight_core::queue::{FetchedJob, JobOutcome, JobQueue};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    pg::{self, BenchDb},
    workers::WorkerSettings,
};

/// A job that does nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoopJob {
    /// Its number.
    pub n: i64,
}

/// Counts handled jobs and wakes the bench when all are.
#[derive(Debug)]
struct Drain {
    handled: AtomicU64,
    target: u64,
    all: Notify,
}

async fn noop(_job: NoopJob, drain: Data<Arc<Drain>>) -> Result<(), BoxDynError> {
    if drain.handled.fetch_add(1, Ordering::Relaxed) + 1 == drain.target {
        drain.all.notify_one();
    }
    Ok(())
}

/// Which apalis setup drains the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The project's batched queue path (core/src/queue/mod.rs, worker/src/drain/).
    Project,
    /// apalis-postgres's default `Config`, one worker.
    Default,
    /// `batch_size(1000)` + `lock_tasks(false)`, one worker.
    Tuned,
}

impl Variant {
    /// Every variant, in run order.
    pub const ALL: [Variant; 3] = [Variant::Project, Variant::Default, Variant::Tuned];

    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Project => "project",
            Variant::Default => "default",
            Variant::Tuned => "tuned",
        }
    }
}

/// One drain.
#[derive(Debug, Clone)]
pub struct DrainResult {
    /// Seconds from start to the last `done_at`.
    pub seconds: f64,
    /// Jobs per second.
    pub per_second: f64,
    /// Every job ended `Done`.
    pub all_done: bool,
    /// Transactions of the database per job (the bench's own few included).
    pub transactions_per_job: f64,
    /// Average number of the database's sessions in each `state / wait event` during the drain.
    pub sessions: std::collections::BTreeMap<String, f64>,
}

/// Queues `n` no-op jobs on `queue` and drains them with `variant`.
pub async fn drain(
    db: &BenchDb,
    url: &str,
    variant: Variant,
    queue: &str,
    n: u64,
    settings: &WorkerSettings,
) -> anyhow::Result<DrainResult> {
    let (concurrency, batch, poll) = (settings.concurrency, settings.batch, Duration::from_millis(settings.poll_ms));
    // The worker's pool size for this concurrency (dashlight_core::cli::pool_size); the project's
    // connection options (dashlight_core::db::connect_options) for the project's path, the
    // driver's defaults for apalis's.
    let options = match variant {
        Variant::Project => {
            dashlight_core::db::connect_options(url, dashlight_core::db::Pooler::Session, "dashlight-bench").map_err(anyhow::Error::msg)?
        }
        Variant::Default | Variant::Tuned => url.parse()?,
    };
    let connect = || {
        PgPoolOptions::new()
            .max_connections((concurrency as u32 / 2).clamp(8, 40))
            .connect_with(options.clone())
    };
    let pool = &connect().await?;
    sqlx::query("DELETE FROM apalis.jobs").execute(pool).await?;
    sqlx::query("DELETE FROM apalis.workers").execute(pool).await?;
    sqlx::query("VACUUM (ANALYZE) apalis.jobs").execute(pool).await?;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
         SELECT apalis.generate_ulid(), $1, convert_to('{\"n\":' || g || '}', 'UTF8'), 'Pending', 0, 25, now() - interval '1 second', 0, ''::hstore, NULL
         FROM generate_series(1, $2) g",
    )
    .bind(queue)
    .bind(n as i64)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE apalis.jobs").execute(pool).await?;
    pool.close().await;
    let x0 = pg::xacts(&db.name).await?;
    let pool = &connect().await?;
    let sampler = pg::ActivitySampler::start(&db.name).await?;

    let drain = Arc::new(Drain {
        handled: AtomicU64::new(0),
        target: n,
        all: Notify::new(),
    });
    let started: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
    let name = format!("bench-raw-{}-{}-{}", variant.as_str(), std::process::id(), queue);
    let signal = {
        let drain = drain.clone();
        async move {
            drain.all.notified().await;
            Ok(())
        }
    };
    // The project's path deletes a finished job at its acknowledgement: its end is the commit of
    // the last acknowledgement, timed by the writer.
    let mut project_end: Option<DateTime<Utc>> = None;
    match variant {
        Variant::Project => {
            let queue = JobQueue::new(pool.clone(), queue, &name);
            project_end = tokio::time::timeout(Duration::from_secs(600), batched(queue, batch, poll, drain.clone()))
                .await
                .map_err(|_| anyhow::anyhow!("project drain did not finish in 10 minutes"))??;
        }
        Variant::Default | Variant::Tuned => {
            let mut config = PgConfig::default().queue(queue);
            if variant == Variant::Tuned {
                config = config.batch_size(1000).lock_tasks(false);
            }
            let storage: PostgresStorage<NoopJob> = PostgresStorage::new(pool).with_config(config);
            let monitor = Monitor::new().shutdown_timeout(Duration::from_secs(30)).register({
                let drain = drain.clone();
                move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(storage.clone())
                        .data(drain.clone())
                        .build(noop)
                }
            });
            tokio::time::timeout(Duration::from_secs(600), monitor.run_with_signal(signal))
                .await
                .map_err(|_| anyhow::anyhow!("{} drain did not finish in 10 minutes", variant.as_str()))??;
        }
    }

    // Acknowledgements are flushed on shutdown; give a straggler a moment.
    let mut done = 0i64;
    let mut last: Option<DateTime<Utc>> = None;
    for _ in 0..100 {
        (done, last) = if variant == Variant::Project {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1")
                .bind(queue)
                .fetch_one(pool)
                .await?;
            (n as i64 - left, project_end)
        } else {
            sqlx::query_as("SELECT count(*), max(done_at) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'")
                .bind(queue)
                .fetch_one(pool)
                .await?
        };
        if done as u64 >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sessions = sampler.finish().await?;
    pool.close().await;
    let x1 = pg::xacts(&db.name).await?;
    let samples = sessions.get("(samples)").copied().unwrap_or(1).max(1) as f64;
    let sessions = sessions
        .into_iter()
        .filter(|(k, _)| k != "(samples)")
        .map(|(k, v)| (k, v as f64 / samples))
        .collect();
    let last = last.unwrap_or(started);
    let seconds = ((last - started).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-6);
    Ok(DrainResult {
        seconds,
        per_second: n as f64 / seconds,
        all_done: done as u64 >= n,
        transactions_per_job: (x1 - x0) as f64 / n as f64,
        sessions,
    })
}

/// The drain's queue loop with a no-op handler: fetch up to `batch` jobs while fewer than two
/// batches are unacknowledged, decode each payload, and let a single writer acknowledge whatever
/// has finished, one statement per transaction, while the next fetch runs. Returns when the last
/// acknowledgement committed.
async fn batched(queue: JobQueue, batch: usize, poll: Duration, drain: Arc<Drain>) -> anyhow::Result<Option<DateTime<Utc>>> {
    queue.register().await?;
    let room = Arc::new(Semaphore::new(batch * 2));
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<FetchedJob>>();
    let writer = {
        let (queue, room, drain) = (queue.clone(), room.clone(), drain.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while rx.recv_many(&mut buf, 64).await > 0 {
                let outcomes: Vec<(String, JobOutcome)> = buf
                    .drain(..)
                    .flatten()
                    .map(|job| {
                        let outcome = match serde_json::from_slice::<NoopJob>(&job.payload) {
                            Ok(_) => JobOutcome::Done,
                            Err(e) => JobOutcome::Killed(e.to_string()),
                        };
                        (job.id, outcome)
                    })
                    .collect();
                let mut t = queue.pool().begin().await?;
                let done = JobQueue::complete(&mut t, queue.worker(), &outcomes).await?;
                t.commit().await?;
                room.add_permits(outcomes.len());
                anyhow::ensure!(done as usize == outcomes.len(), "{done} of {} jobs acknowledged", outcomes.len());
                if drain.handled.fetch_add(done, Ordering::Relaxed) + done >= drain.target {
                    return Ok(Some(Utc::now()));
                }
            }
            Ok::<Option<DateTime<Utc>>, anyhow::Error>(None)
        })
    };
    loop {
        if writer.is_finished() {
            break;
        }
        drop(room.acquire().await?);
        let limit = room.available_permits().min(batch);
        let jobs = queue.fetch(limit, poll, None).await?;
        let got = jobs.len();
        if got > 0 {
            room.try_acquire_many(got as u32)?.forget();
            tx.send(jobs)?;
        }
        if got < limit {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    drop(tx);
    writer.await?
}
