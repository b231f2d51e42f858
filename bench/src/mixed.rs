//! Scenario "mixed" (not in `all`): steady lateness of lesson reminders at `rate` per
//! second while `bulk` invoice emails drain at the same time. The bulk emails (`invoice_issued`,
//! priority 10) are inserted first, due at once, with the notification queue paused meanwhile;
//! the reminders (priority 20) are inserted ahead of time, due one every `1/rate` s over
//! `duration` as in scenario 3; then the queue is resumed 0.2 s before the first reminder is due,
//! so the whole bulk starts draining as the reminders start falling due. The reminders' clock starts after the bulk is loaded and the run
//! fails unless the resume committed before the first reminder was due: no reminder's lateness
//! includes the bench's pause. Lateness is `sent_at − due_at` of each reminder's `sent` delivery
//! (database timestamps); the bulk's progress is how many were sent by the cut-off (`grace` after
//! the last reminder was due) and when the last one was.

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use dashlight_core::{
    controls::{self, Scope},
    jobs::{JOB_MAX_ATTEMPTS, QUEUE_NOTIFICATIONS},
    kinds::Kind,
};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::{Ctx, pg::BenchDb, workers::Workers, world};

/// One mixed run.
#[derive(Debug, Clone, Serialize)]
pub struct MixedRun {
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
    /// How late the reminders' jobs were fetched (`lock_at − run_at`, 0 when fetched early and
    /// held): p50 / p99, ms. The rest of a reminder's lateness came after the fetch (plan, claim,
    /// send permit, send).
    pub fetch_late_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub fetch_late_p99_ms: f64,
    /// How late the reminders' sends were claimed (the attempt's `started_at − due_at`: fetch,
    /// hold, load, plan and the wait for a send slot), p99, ms.
    pub claim_late_p99_ms: f64,
    /// From claim to sent (the claim's transaction, the channel's budget, the send), p99, ms.
    pub claim_to_sent_p99_ms: f64,
    /// When the latest reminder was due, seconds after the first one (is the worst at the start,
    /// while the whole bulk is fetched, or later?).
    pub latest_due_offset_s: f64,
    /// How long before the first reminder was due the queue was resumed (committed), ms: the
    /// pause for loading the bulk ends before the reminders' clock starts, or the run fails.
    pub resume_lead_ms: f64,
    /// Bulk emails queued.
    pub bulk: u64,
    /// Bulk emails sent by the reminders' cut-off.
    pub bulk_sent_at_cutoff: u64,
    /// Seconds from the first reminder's due time until the last bulk email was sent (all of them, within
    /// a further 10 minutes).
    pub bulk_drain_seconds: f64,
    /// Bulk emails sent in the end.
    pub bulk_sent: u64,
}

/// Runs the scenario once on a fresh database with the bench's worker processes.
pub async fn run(ctx: &Ctx, rate: u64, duration: Duration, grace: Duration, bulk: u64) -> anyhow::Result<MixedRun> {
    let db = BenchDb::create("mixed", &ctx.db_settings).await?;
    let result = async {
        let n = (rate as f64 * duration.as_secs_f64()).round() as i64;
        let pop = world::populate(&db.pool, n, 200, &ctx.sinks.http_base(), &ctx.keys).await?;
        sqlx::query("VACUUM (ANALYZE) notifications, notification_deliveries, delivery_attempt_log, apalis.jobs")
            .execute(&db.pool)
            .await?;
        let mut conn = db.connect().await?;
        let workers = Workers::start(&ctx.worker_bin, &db, &mut conn, &ctx.sinks, &ctx.keys, &ctx.settings, "mixed").await?;
        let r = one(&db, &mut conn, &pop, rate, duration, grace, bulk).await;
        conn.close().await?;
        workers.stop().await?;
        r
    }
    .await;
    db.drop_db().await?;
    result
}

async fn one(
    db: &BenchDb,
    conn: &mut PgConnection,
    pop: &world::Population,
    rate: u64,
    duration: Duration,
    grace: Duration,
    bulk: u64,
) -> anyhow::Result<MixedRun> {
    let pool = &db.pool;
    let n = (rate as f64 * duration.as_secs_f64()).round() as u64;
    // The bulk is loaded while the queue is paused (an operator's pause, as in the README), due at
    // once; the reminders are inserted ahead of their due times; then the queue is resumed, so
    // the bulk is already waiting when the first reminder falls due.
    controls::pause(conn, Scope::Queue, QUEUE_NOTIFICATIONS, "bench", Some("loading the bulk")).await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *conn).await?;
    let queued = insert_bulk(conn, now, bulk).await?;
    let lead_ms = 3000 + n / 5;
    let first_due: DateTime<Utc> = sqlx::query_scalar("SELECT now() + $1 * interval '1 millisecond'")
        .bind(lead_ms as f64)
        .fetch_one(&mut *conn)
        .await?;
    let reminders = world::insert_reminders(conn, pop, first_due, Duration::from_secs_f64(1.0 / rate as f64), "mixed").await?;
    // The queue is resumed just before the first reminder is due, so the whole bulk is still
    // draining while the reminders fall due (resumed earlier, the bulk of grouped jobs drained
    // in the lead and the scenario measured reminders alone).
    let until_resume: f64 = sqlx::query_scalar("SELECT extract(epoch FROM $1 - clock_timestamp())::float8 - 0.2")
        .bind(first_due)
        .fetch_one(&mut *conn)
        .await?;
    if until_resume > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(until_resume)).await;
    }
    let mut tx = conn.begin().await?;
    controls::resume(&mut tx, Scope::Queue, QUEUE_NOTIFICATIONS, "bench").await?;
    tx.commit().await?;
    // The reminders' clock must start after the resume: a reminder due while the bench still
    // held the queue paused would measure the bench, not the worker.
    let resumed: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *conn).await?;
    let resume_lead = first_due - resumed;
    if resume_lead <= chrono::Duration::zero() {
        bail!(
            "loading the bulk and {n} reminders took longer than the {lead_ms} ms lead: the queue was resumed {} ms after the first reminder was due",
            -resume_lead.num_milliseconds()
        );
    }
    eprintln!(
        "  bulk of {queued} and {reminders} reminders loaded; queue resumed {} ms before the first reminder is due",
        resume_lead.num_milliseconds()
    );
    let start = Instant::now() + resume_lead.to_std().unwrap_or_default();
    let deadline = start + duration + grace;
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE type = 'lesson_reminder' AND status IN ('pending', 'processing')")
                .fetch_one(pool)
                .await?;
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cutoff: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
    type Stats = (i64, Option<f64>, Option<f64>, Option<f64>, i64, Option<f64>);
    let (sent, p50, p99, max, over_1s, latest_offset): Stats = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE sent IS NOT NULL), percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l), count(*) FILTER (WHERE l > 1000),
                (array_agg(extract(epoch FROM due_at - $2)::float8 ORDER BY l DESC))[1]
         FROM (SELECT s.sent, n.due_at, extract(epoch FROM coalesce(s.sent, $1) - n.due_at)::float8 * 1000 AS l
               FROM notifications n
               LEFT JOIN LATERAL (SELECT min(d.sent_at) AS sent FROM notification_deliveries d
                                  WHERE d.notification_id = n.id AND d.status = 'sent' AND d.sent_at <= $1) s ON true
               WHERE n.type = 'lesson_reminder') x",
    )
    .bind(cutoff)
    .bind(first_due)
    .fetch_one(pool)
    .await?;
    let (fetch_p50, fetch_p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l)
         FROM (SELECT greatest(extract(epoch FROM lock_at - run_at)::float8, 0) * 1000 AS l
               FROM apalis.jobs WHERE job_type = $1 AND priority = $2 AND lock_at IS NOT NULL) x",
    )
    .bind(QUEUE_NOTIFICATIONS)
    .bind(Kind::LessonReminder.priority())
    .fetch_one(pool)
    .await?;
    let (claim_p99, send_p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM a.started_at - n.due_at)::float8 * 1000),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM a.finished_at - a.started_at)::float8 * 1000)
         FROM notifications n JOIN notification_deliveries d ON d.notification_id = n.id
              JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = 1
         WHERE n.type = 'lesson_reminder'",
    )
    .fetch_one(pool)
    .await?;
    let bulk_at_cutoff: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE n.type = 'invoice_issued' AND d.status = 'sent' AND d.sent_at <= $1",
    )
    .bind(cutoff)
    .fetch_one(pool)
    .await?;
    // Then let the bulk finish (up to 10 minutes more).
    let drain_by = Instant::now() + Duration::from_secs(600);
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE type = 'invoice_issued' AND status IN ('pending', 'processing')")
                .fetch_one(pool)
                .await?;
        if open == 0 || Instant::now() > drain_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (bulk_sent, last): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), max(d.sent_at) FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE n.type = 'invoice_issued' AND d.status = 'sent'",
    )
    .fetch_one(pool)
    .await?;
    Ok(MixedRun {
        reminders,
        reminders_sent: sent as u64,
        p50_ms: p50.unwrap_or(f64::NAN),
        p99_ms: p99.unwrap_or(f64::NAN),
        max_ms: max.unwrap_or(f64::NAN),
        late_over_1s: over_1s as u64,
        fetch_late_p50_ms: fetch_p50.unwrap_or(f64::NAN),
        fetch_late_p99_ms: fetch_p99.unwrap_or(f64::NAN),
        claim_late_p99_ms: claim_p99.unwrap_or(f64::NAN),
        claim_to_sent_p99_ms: send_p99.unwrap_or(f64::NAN),
        latest_due_offset_s: latest_offset.unwrap_or(f64::NAN),
        resume_lead_ms: resume_lead.num_milliseconds() as f64,
        bulk: queued,
        bulk_sent_at_cutoff: bulk_at_cutoff as u64,
        bulk_drain_seconds: last.map_or(f64::NAN, |t| (t - first_due).num_milliseconds() as f64 / 1000.0),
        bulk_sent: bulk_sent as u64,
    })
}

/// `bulk` invoice emails to the population's students (round robin), all due at `due`, with their
/// jobs, in one statement.
async fn insert_bulk(conn: &mut PgConnection, due: DateTime<Utc>, bulk: u64) -> anyhow::Result<u64> {
    let kind = Kind::InvoiceIssued;
    let (policy, channels) = kind.routing();
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let done: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        r#"
        WITH s AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS r, count(*) OVER () AS c FROM users WHERE role = 'student'),
        n AS (
            INSERT INTO notifications (user_id, type, title, content, channels, policy, data, dedupe_key, due_at, status, priority, next_check_at)
            SELECT s.id, $1, 'Your invoice', 'Your invoice', $2, $3,
                   jsonb_build_object('invoice', jsonb_build_object('issued_at', '2026-12-02T09:00:00Z', 'number', 'B-' || g.k,
                                                                    'total_minor', 4500, 'currency', 'GBP')),
                   'bulk-invoice:' || g.k, $4, 'pending', $5, $4
            FROM generate_series(0, $6 - 1) AS g(k) JOIN s ON s.r = g.k % s.c
            RETURNING id, due_at),
        jobs AS (
        {}
        RETURNING 1)
        SELECT count(*) FROM n
        "#,
        crate::world::grouped_jobs_insert(7, 5, 8)
    )))
    .bind(kind.as_str())
    .bind(&channels)
    .bind(policy.as_str())
    .bind(due)
    .bind(kind.priority() as i16)
    .bind(bulk as i64)
    .bind(QUEUE_NOTIFICATIONS)
    .bind(JOB_MAX_ATTEMPTS)
    .fetch_one(conn)
    .await?;
    Ok(done as u64)
}
