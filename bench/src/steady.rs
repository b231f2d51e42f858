//! Scenarios 3 and 4, steady lateness and history, on one database and one set of worker
//! processes:
//!
//! 1. `runs` steady runs on an empty history: `rate × duration` lesson reminders inserted ahead of
//!    time, due one every `1/rate` s over `duration`; lateness is `sent_at − due_at` of each
//!    reminder's `sent` delivery (database timestamps). A run is cut off `grace` after its last
//!    reminder was due; reminders not sent by then count with their lateness at the cut-off (the
//!    percentiles are then lower bounds) and are cancelled.
//! 2. History is loaded (past bookings, reminders, deliveries; see `world::insert_history`).
//! 3. The same `runs` steady runs again.
//!
//! The scheduler's due-scan is the sweep of `dashlight_worker::delivery::sweep_overdue`: mid-run
//! (20/40/60/80 %) its scan (the sub-select, without the row locks) runs under `EXPLAIN (ANALYZE,
//! BUFFERS)` — the server's execution time; calling the real function there would lock and
//! re-enqueue the backlog and disturb the run. Just before and after each run, where it finds
//! nothing to do, the real function is timed, and after the run its whole statement is explained.
//!
//! After each run its reminders are deleted and the touched tables vacuumed (autovacuum is off
//! on this server), so every run starts from the same state.

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgPool};

use crate::{
    Ctx,
    pg::BenchDb,
    workers::Workers,
    world::{self, Population},
};

/// The sweep's statement, for `EXPLAIN`.
const SWEEP_SQL: &str = dashlight_worker::delivery::SWEEP_OVERDUE_SQL;

/// The sweep's due-scan alone (the sub-select of [`SWEEP_SQL`] without its row locks; keep in
/// sync): read-only, so it can be measured mid-run without holding back the workers.
const SWEEP_SCAN_SQL: &str = r#"SELECT n.id FROM notifications n
           WHERE n.status IN ('pending', 'processing') AND n.next_check_at < $1
             AND n.id <> ALL($2::bigint[])
           ORDER BY n.next_check_at LIMIT 5000"#;

/// Grace the periodic reminder sweep passes (worker/src/periodic/mod.rs).
const SWEEP_GRACE: Duration = Duration::from_secs(5);

/// One steady run.
#[derive(Debug, Clone, Serialize)]
pub struct SteadyRun {
    /// Reminders due.
    pub notifications: u64,
    /// Reminders with a `sent` delivery when the run was cut off (`grace` after the last was due).
    pub delivered: u64,
    /// Lateness percentiles over every reminder, ms. A reminder not sent at the cut-off counts
    /// with its lateness at the cut-off, so with `delivered < notifications` the figures are lower
    /// bounds.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
    /// Server execution time of the sweep's due-scan at 20/40/60/80 % of the run
    /// (`EXPLAIN (ANALYZE, BUFFERS)` of [`SWEEP_SCAN_SQL`]), ms.
    pub scan_mid_ms: Vec<f64>,
    /// Rows the due-scan found at those points (open and overdue by more than the grace, at
    /// most 5,000): what a real sweep would have re-enqueued.
    pub scan_mid_rows: Vec<i64>,
    /// Wall time of the real `sweep_overdue` just before the first reminder was due (the run's
    /// reminders pending, none overdue), ms.
    pub sweep_before_ms: Vec<f64>,
    /// Wall time of the real `sweep_overdue` after the run (nothing open), ms.
    pub sweep_after_ms: Vec<f64>,
    /// The due-scan's plan at 60 %.
    #[serde(skip)]
    pub explain_mid: String,
    /// The whole sweep statement's plan after the run (rolled back).
    #[serde(skip)]
    pub explain_after: String,
    /// Mid-run plan of the recorder's settle statement (`delivery::record::SETTLE_SQL`, which
    /// closes recorded notifications), for the run's last reminder (rolled back).
    #[serde(skip)]
    pub explain_finish: String,
}

/// Scenario 3 and (optionally) 4.
#[derive(Debug, Clone, Serialize)]
pub struct SteadySuite {
    /// Runs on an empty history.
    pub empty: Vec<SteadyRun>,
    /// Runs with history, when asked.
    pub history: Vec<SteadyRun>,
    /// (bookings, deliveries) of the history.
    pub history_size: (i64, i64),
    /// Seconds the history took to load and vacuum.
    pub history_load_seconds: f64,
    /// WARN/ERROR lines the workers logged.
    pub worker_log_warnings: usize,
}

/// Runs the suite: `runs` steady runs, then (when `history` is set) the history load and `runs`
/// more.
pub async fn run(
    ctx: &Ctx,
    rate: u64,
    duration: Duration,
    grace: Duration,
    runs: usize,
    history: Option<(i64, i64)>,
) -> anyhow::Result<SteadySuite> {
    let db = BenchDb::create("steady", &ctx.db_settings).await?;
    let result = suite(ctx, &db, rate, duration, grace, runs, history).await;
    db.drop_db().await?;
    result
}

async fn suite(
    ctx: &Ctx,
    db: &BenchDb,
    rate: u64,
    duration: Duration,
    grace: Duration,
    runs: usize,
    history: Option<(i64, i64)>,
) -> anyhow::Result<SteadySuite> {
    let n = (rate as f64 * duration.as_secs_f64()).round() as i64;
    let pop = world::populate(&db.pool, n, 200, &ctx.sinks.http_base(), &ctx.keys).await?;
    // Every run starts from the state each run leaves behind: the pipeline's tables vacuumed and
    // analysed while nothing is open (as autovacuum leaves them after a quiet period).
    sqlx::query("VACUUM (ANALYZE) notifications, notification_deliveries, delivery_attempt_log, apalis.jobs")
        .execute(&db.pool)
        .await?;
    let mut conn = db.connect().await?;
    let workers = Workers::start(&ctx.worker_bin, db, &mut conn, &ctx.sinks, &ctx.keys, &ctx.settings, "steady").await?;
    conn.close().await?;
    let mut out = SteadySuite {
        empty: vec![],
        history: vec![],
        history_size: (0, 0),
        history_load_seconds: 0.0,
        worker_log_warnings: 0,
    };
    let result = async {
        for k in 0..runs {
            let r = one(db, &pop, rate, duration, grace, &format!("e{k}")).await?;
            eprintln!("  steady (empty history) run {}: {}", k + 1, serde_json::to_string(&r)?);
            out.empty.push(r);
        }
        if let Some((bookings, deliveries)) = history {
            let started = Instant::now();
            world::insert_history(&db.pool, &pop, bookings, (deliveries / bookings.max(1)).clamp(1, 3)).await?;
            out.history_load_seconds = started.elapsed().as_secs_f64();
            out.history_size = sqlx::query_as(
                "SELECT (SELECT count(*) FROM bookings WHERE status <> 'confirmed'), (SELECT count(*) FROM notification_deliveries)",
            )
            .fetch_one(&db.pool)
            .await?;
            eprintln!(
                "  history loaded: {} past bookings, {} past deliveries in {:.0} s",
                out.history_size.0, out.history_size.1, out.history_load_seconds
            );
            for k in 0..runs {
                let r = one(db, &pop, rate, duration, grace, &format!("h{k}")).await?;
                eprintln!("  steady (with history) run {}: {}", k + 1, serde_json::to_string(&r)?);
                out.history.push(r);
            }
        }
        anyhow::Ok(())
    }
    .await;
    out.worker_log_warnings = workers.stop().await?;
    result.map(|_| out)
}

async fn one(db: &BenchDb, pop: &Population, rate: u64, duration: Duration, grace: Duration, tag: &str) -> anyhow::Result<SteadyRun> {
    let pool = &db.pool;
    let queue = dashlight_core::jobs::QUEUE_NOTIFICATIONS;
    let marker: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM notifications")
        .fetch_one(pool)
        .await?;
    let n = (rate as f64 * duration.as_secs_f64()).round() as u64;
    // Lead: enough to insert every reminder before the first is due.
    let lead_ms = 1500 + n / 20;
    let first_due: DateTime<Utc> = sqlx::query_scalar("SELECT now() + $1 * interval '1 millisecond'")
        .bind(lead_ms as f64)
        .fetch_one(pool)
        .await?;
    let mut conn = db.connect().await?;
    let inserted = world::insert_reminders(&mut conn, pop, first_due, Duration::from_secs_f64(1.0 / rate as f64), tag).await?;
    let committed: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut conn).await?;
    conn.close().await?;
    if committed >= first_due {
        bail!("inserting {n} reminders took longer than the {lead_ms} ms lead");
    }
    let start = Instant::now() + (first_due - committed).to_std().unwrap_or_default();
    let mut sweep_before_ms = vec![];
    // One untimed call first: the pool may have to open a connection.
    time_sweep(pool).await?;
    for _ in 0..3 {
        if Instant::now() + Duration::from_millis(100) < start {
            sweep_before_ms.push(time_sweep(pool).await?);
        }
    }

    let mut scan_mid_ms = vec![];
    let mut scan_mid_rows = vec![];
    let mut explain_mid = String::new();
    let mut explain_finish = String::new();
    for frac in [0.2, 0.4, 0.5, 0.6, 0.8] {
        tokio::time::sleep_until((start + duration.mul_f64(frac)).into()).await;
        if frac == 0.5 {
            explain_finish = explain_finish_update(pool, marker).await?;
            continue;
        }
        let (plan, ms, rows) = explain_sweep(pool, false).await?;
        scan_mid_ms.push(ms);
        scan_mid_rows.push(rows);
        if frac == 0.6 {
            explain_mid = plan;
        }
    }
    let deadline = start + duration + grace;
    loop {
        // Progress from the run's own notifications (a primary-key range): a count over
        // `notification_deliveries` would read the whole history's `sent` index every time.
        let finished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE id > $1 AND status <> 'pending' AND status <> 'processing'")
                .bind(marker)
                .fetch_one(pool)
                .await?;
        if finished as u64 >= inserted || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cutoff: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
    let (delivered, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE sent IS NOT NULL), percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l)
         FROM (SELECT s.sent, extract(epoch FROM coalesce(s.sent, $2) - n.due_at)::float8 * 1000 AS l
               FROM notifications n
               LEFT JOIN LATERAL (SELECT min(d.sent_at) AS sent FROM notification_deliveries d
                                  WHERE d.notification_id = n.id AND d.status = 'sent' AND d.sent_at <= $2) s ON true
               WHERE n.id > $1) x",
    )
    .bind(marker)
    .bind(cutoff)
    .fetch_one(pool)
    .await?;

    // Stop what is left: jobs not fetched yet are dropped; notifications a worker already holds
    // are cancelled, which it closes without sending.
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending'")
        .bind(queue)
        .execute(pool)
        .await?;
    sqlx::query("UPDATE notifications SET status = 'cancelled', status_reason = 'bench cut-off' WHERE id > $1 AND status IN ('pending', 'processing')")
        .bind(marker)
        .execute(pool)
        .await?;
    let quiet_by = Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status IN ('Pending', 'Queued', 'Running')")
                .bind(queue)
                .fetch_one(pool)
                .await?;
        if open == 0 || Instant::now() > quiet_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let explain_after = explain_sweep(pool, true).await?.0;
    let mut sweep_after_ms = vec![];
    time_sweep(pool).await?;
    for _ in 0..5 {
        sweep_after_ms.push(time_sweep(pool).await?);
    }

    // Back to the state before the run.
    sqlx::query("DELETE FROM notifications WHERE id > $1")
        .bind(marker)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(queue)
        .execute(pool)
        .await?;
    sqlx::query(
        "VACUUM (ANALYZE) notifications, notification_deliveries, delivery_attempt_log, apalis.jobs, user_devices, analytics_events",
    )
    .execute(pool)
    .await?;
    Ok(SteadyRun {
        notifications: inserted,
        delivered: delivered as u64,
        p50_ms: p50.unwrap_or(f64::NAN),
        p99_ms: p99.unwrap_or(f64::NAN),
        max_ms: max.unwrap_or(f64::NAN),
        scan_mid_ms,
        scan_mid_rows,
        sweep_before_ms,
        sweep_after_ms,
        explain_mid,
        explain_after,
        explain_finish,
    })
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the recorder's settle statement
/// (`dashlight_worker::delivery::record::SETTLE_SQL`), which closes every recorded notification, on
/// the run's last reminder (not due yet), rolled back.
async fn explain_finish_update(pool: &PgPool, marker: i64) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar("SELECT max(id) FROM notifications WHERE id > $1")
        .bind(marker)
        .fetch_one(&mut *tx)
        .await?;
    let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS) {}",
        dashlight_worker::delivery::record::SETTLE_SQL
    )))
    .bind(vec![id])
    .bind(chrono::Utc::now())
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(lines.join("\n"))
}

/// Calls the real `sweep_overdue` as the periodic reminder sweep does (only where nothing is
/// overdue, so it changes nothing); returns its wall time in ms.
async fn time_sweep(pool: &PgPool) -> anyhow::Result<f64> {
    let started = Instant::now();
    let requeued = dashlight_worker::delivery::sweep_overdue(pool, Utc::now(), SWEEP_GRACE).await?;
    if requeued > 0 {
        tracing::warn!(requeued, "the sweep re-enqueued overdue notifications while the bench timed it");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// `EXPLAIN (ANALYZE, BUFFERS)` with the parameters the sweep would get now, in a transaction
/// that is rolled back: of the whole sweep statement (`full`) or of its due-scan. Returns the
/// plan, its execution time in ms and the rows its top node returned.
async fn explain_sweep(pool: &PgPool, full: bool) -> anyhow::Result<(String, f64, i64)> {
    let now = Utc::now();
    let cutoff = now - chrono::Duration::from_std(SWEEP_GRACE)?;
    let mut tx = pool.begin().await?;
    // The backlog's notification ids, read through the queue driver as the sweep does.
    let queued = dashlight_core::queue::backlog_notification_ids(&mut tx, dashlight_core::jobs::QUEUE_NOTIFICATIONS).await?;
    let lines: Vec<String> = if full {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS) {SWEEP_SQL}")))
            .bind(cutoff)
            .bind(now + chrono::Duration::minutes(1))
            .bind(&queued)
            .fetch_all(&mut *tx)
            .await?
    } else {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS) {SWEEP_SCAN_SQL}")))
            .bind(cutoff)
            .bind(&queued)
            .fetch_all(&mut *tx)
            .await?
    };
    tx.rollback().await?;
    let ms = lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Execution Time: ")
                .and_then(|x| x.trim_end_matches(" ms").parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN);
    let rows = lines
        .first()
        .and_then(|l| l.split("actual time=").nth(1))
        .and_then(|x| x.split("rows=").nth(1))
        .and_then(|x| x.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|x| x.parse().ok())
        .unwrap_or(-1);
    Ok((lines.join("\n"), ms, rows))
}
