//! Scenario "purge" (not in `all`): steady lateness of lesson reminders at `rate` per second, as
//! in scenario 3, while the retention purge deletes `old` deliveries older than
//! `RETENTION_DELIVERIES` (400 days) at the same time. The old deliveries (each with its
//! notification and one failed attempt in `delivery_attempt_log`) are loaded first; the purge
//! starts when the first reminder falls due and runs `dashlight_core::privacy::retention` —
//! the statements, batch size (250) and rest of the worker's `retention` task — from the
//! bench process on its own connections, with no run budget, until the reminders are measured
//! (with `--purge-whole`, until nothing old is left).
//! Lateness is `sent_at − due_at` of each reminder's `sent` delivery (database timestamps).
//!
//! The loading is followed by a `CHECKPOINT`, so the reminders do not share the disk with the
//! writing out of the load (in a school the old rows were written long ago); `--purge-off` runs
//! the same database without the purge, the control of the purge's own cost. The run reports the
//! WAL written and the checkpoints between the first and the last reminder's due time.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashlight_core::privacy::retention::{self, Options};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Ctx, pg::BenchDb, workers::Workers, world};

/// One purge run.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeRun {
    /// Reminders due.
    pub reminders: u64,
    /// Reminders sent by the cut-off.
    pub reminders_sent: u64,
    /// Reminder lateness, ms (an unsent reminder counts with its lateness at the cut-off).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
    /// Reminders later than 1 s.
    pub late_over_1s: u64,
    /// Old deliveries loaded.
    pub old_deliveries: u64,
    /// Old deliveries deleted while the reminders were due (first due to last due).
    pub purged_during_steady: u64,
    /// Old deliveries deleted in the end (by the end of the measurement, unless `--purge-whole`).
    pub purged: u64,
    /// How long the purge ran, s (to its end with `--purge-whole`).
    pub purge_seconds: f64,
    /// Deliveries deleted per second (with their attempts).
    pub purge_per_second: f64,
    /// Whether the purge ran (false: the `--purge-off` control).
    pub purging: bool,
    /// WAL written from the first to the last reminder's due time, MiB.
    pub wal_mib_during_steady: f64,
    /// Checkpoints begun in that time (timed + requested).
    pub checkpoints_during_steady: i64,
}

/// The worker's retention options, without the run budget (the bench purges to the end).
pub fn default_options() -> Options {
    Options {
        budget: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// The server's WAL bytes written so far and checkpoints begun so far.
async fn wal_and_checkpoints(pool: &PgPool) -> anyhow::Result<(f64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT wal_bytes::float8 FROM pg_stat_wal), (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)",
    )
    .fetch_one(pool)
    .await?)
}

/// Runs the scenario once on a fresh database with the bench's worker processes.
pub async fn run(
    ctx: &Ctx,
    rate: u64,
    duration: Duration,
    grace: Duration,
    old: u64,
    purge: Option<Options>,
    whole: bool,
) -> anyhow::Result<PurgeRun> {
    let db = BenchDb::create("purge", &ctx.db_settings).await?;
    let result = async {
        let n = (rate as f64 * duration.as_secs_f64()).round() as i64;
        let pop = world::populate(&db.pool, n, 200, &ctx.sinks.http_base(), &ctx.keys).await?;
        eprintln!("  loading {old} old deliveries");
        insert_old(&db.pool, old).await?;
        sqlx::query("VACUUM (ANALYZE) notifications, notification_deliveries, delivery_attempt_log, apalis.jobs")
            .execute(&db.pool)
            .await?;
        sqlx::query("CHECKPOINT").execute(&db.pool).await?;
        let mut conn = db.connect().await?;
        let workers = Workers::start(&ctx.worker_bin, &db, &mut conn, &ctx.sinks, &ctx.keys, &ctx.settings, "purge").await?;
        let r = one(&db, &mut conn, &pop, rate, duration, grace, old, purge, whole).await;
        workers.stop().await?;
        r
    }
    .await;
    db.drop_db().await?;
    result
}

/// `old` notifications sent 500 days ago, each with a `sent` email delivery and a failed first
/// attempt in the log, in chunks of 100,000.
async fn insert_old(pool: &PgPool, old: u64) -> anyhow::Result<()> {
    let mut done = 0u64;
    while done < old {
        let k = (old - done).min(100_000);
        sqlx::query(
            "WITH n AS (
                 INSERT INTO notifications (user_id, type, title, content, channels, policy, dedupe_key, status, due_at, created_at)
                 SELECT (SELECT min(id) FROM users), 'lesson_reminder', 'Old', 'Old', '{email}', 'first', 'old:' || ($1 + g), 'done',
                        now() - interval '500 days', now() - interval '500 days'
                 FROM generate_series(1, $2) AS g RETURNING id),
             d AS (
                 INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, created_at, sent_at, sending_since)
                 SELECT id, 'email', 'old@bench.test', 'sent', 2, now() - interval '500 days', now() - interval '500 days',
                        now() - interval '500 days'
                 FROM n RETURNING id)
             INSERT INTO delivery_attempt_log (delivery_id, attempt, started_at, finished_at, outcome, error)
             SELECT id, 1, now() - interval '500 days', now() - interval '500 days', 'transient', 'timeout' FROM d",
        )
        .bind(done as i64)
        .bind(k as i64)
        .execute(pool)
        .await?;
        done += k;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn one(
    db: &BenchDb,
    conn: &mut PgConnection,
    pop: &world::Population,
    rate: u64,
    duration: Duration,
    grace: Duration,
    old: u64,
    options: Option<Options>,
    whole: bool,
) -> anyhow::Result<PurgeRun> {
    let pool = &db.pool;
    let n = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let lead_ms = 3000 + n / 5;
    let first_due: DateTime<Utc> = sqlx::query_scalar("SELECT now() + $1 * interval '1 millisecond'")
        .bind(lead_ms as f64)
        .fetch_one(&mut *conn)
        .await?;
    let reminders = world::insert_reminders(conn, pop, first_due, Duration::from_secs_f64(1.0 / rate as f64), "purge").await?;
    let lead = (first_due
        - sqlx::query_scalar::<_, DateTime<Utc>>("SELECT clock_timestamp()")
            .fetch_one(&mut *conn)
            .await?)
        .to_std()
        .unwrap_or_default();
    let start = Instant::now() + lead;
    tokio::time::sleep(lead).await;
    let (wal_at_start, checkpoints_at_start) = wal_and_checkpoints(pool).await?;

    // The purge, on its own pool (as the worker's periodic task would run it), from the first due.
    let purge_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with((*pool.connect_options()).clone())
        .await?;
    let purge_started = Instant::now();
    let purge = tokio::spawn(async move {
        let cutoff = Utc::now() - chrono::Duration::days(400);
        let p = match options {
            Some(o) => retention::purge_deliveries(&purge_pool, cutoff, o).await,
            None => Ok(retention::Purged::default()),
        };
        (p, purge_started.elapsed())
    });

    let steady_end = start + duration;
    let deadline = steady_end + grace;
    let mut purged_during_steady = None;
    let mut steady_wal = None;
    loop {
        if purged_during_steady.is_none() && Instant::now() >= steady_end {
            steady_wal = Some(wal_and_checkpoints(pool).await?);
            purged_during_steady = Some(old_left(pool).await?);
        }
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE type = 'lesson_reminder' AND status IN ('pending', 'processing') AND created_at > now() - interval '1 day'")
                .fetch_one(pool)
                .await?;
        if (open == 0 && purged_during_steady.is_some()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (wal_at_end, checkpoints_at_end) = match steady_wal {
        Some(w) => w,
        None => wal_and_checkpoints(pool).await?,
    };
    let left_at_steady_end = match purged_during_steady {
        Some(left) => left,
        None => old_left(pool).await?,
    };
    let cutoff: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
    type Stats = (i64, Option<f64>, Option<f64>, Option<f64>, i64);
    let (sent, p50, p99, max, over_1s): Stats = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE sent IS NOT NULL), percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l), count(*) FILTER (WHERE l > 1000)
         FROM (SELECT s.sent, extract(epoch FROM coalesce(s.sent, $1) - n.due_at)::float8 * 1000 AS l
               FROM notifications n
               LEFT JOIN LATERAL (SELECT min(d.sent_at) AS sent FROM notification_deliveries d
                                  WHERE d.notification_id = n.id AND d.status = 'sent' AND d.sent_at <= $1) s ON true
               WHERE n.type = 'lesson_reminder' AND n.due_at >= $2) x",
    )
    .bind(cutoff)
    .bind(first_due)
    .fetch_one(pool)
    .await?;
    let (purged, took) = if whole {
        let (purged, took) = purge.await?;
        (purged?.deliveries, took)
    } else {
        // The reminders are measured: what the purge did so far is its pace.
        purge.abort();
        let took = purge_started.elapsed();
        let left = if options.is_some() { old_left(pool).await? } else { old };
        (old.saturating_sub(left), took)
    };
    Ok(PurgeRun {
        reminders,
        reminders_sent: sent as u64,
        p50_ms: p50.unwrap_or(f64::NAN),
        p99_ms: p99.unwrap_or(f64::NAN),
        max_ms: max.unwrap_or(f64::NAN),
        late_over_1s: over_1s as u64,
        old_deliveries: old,
        purged_during_steady: old.saturating_sub(left_at_steady_end),
        purged,
        purge_seconds: took.as_secs_f64(),
        purge_per_second: purged as f64 / took.as_secs_f64().max(1e-9),
        purging: options.is_some(),
        wal_mib_during_steady: (wal_at_end - wal_at_start) / (1024.0 * 1024.0),
        checkpoints_during_steady: checkpoints_at_end - checkpoints_at_start,
    })
}

async fn old_left(pool: &PgPool) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_deliveries WHERE created_at < now() - interval '400 days'")
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}
