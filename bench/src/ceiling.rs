//! An experiment, not one of the issue's scenarios: the database's ceiling for the batched
//! delivery path proposed in BENCHMARKS.md. The same reminders as scenario 2 go through the same
//! tables with the same rows written per notification — job fetched and acknowledged,
//! notification `processing` then `done`, its deliveries planned (the skipped channels
//! included), claimed with an attempt record, recorded `sent`, the `notification_sent` event, the
//! device's `last_used_at` — but set-based, `batch` notifications per statement and two
//! transactions per batch, with no sending in between. Throughput is what Postgres alone allows
//! the worker; rendering and sending come on top (they parallelise outside the database).

use std::time::{Duration, Instant};

use dashlight_core::jobs::QUEUE_NOTIFICATIONS;
use serde::Serialize;
use sqlx::PgPool;

use crate::{Ctx, pg, world};

/// One ceiling run.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingRun {
    /// Reminders.
    pub notifications: u64,
    /// Notifications per batch.
    pub batch: i64,
    /// Concurrent batchers.
    pub tasks: usize,
    /// Seconds to record them all.
    pub seconds: f64,
    /// Notifications per second.
    pub per_second: f64,
    /// Transactions of the database per notification.
    pub transactions_per_notification: f64,
    /// Notifications with a `sent` delivery at the end.
    pub recorded: i64,
}

/// Claims a batch: fetches the due jobs of queue `$1` that carry about `$2` notifications (jobs
/// carry up to `NOTIFICATIONS_PER_JOB` each, as `notify::create_all` writes them), marks their notifications `processing`,
/// plans one delivery per channel of `push, sms, email` up to the first usable one (earlier ones
/// `skipped`), claims the usable one (`sending`, attempt 1) and records its attempt. Returns the
/// claimed deliveries with their notification, job and device.
const CLAIM: &str = r#"
WITH jf AS (
    UPDATE apalis.jobs SET status = 'Running', lock_by = 'ceiling', lock_at = now(), attempts = attempts + 1
    WHERE id IN (SELECT id FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending' AND run_at <= now()
                 ORDER BY priority DESC, run_at LIMIT greatest(1, $2 / 100) FOR UPDATE SKIP LOCKED)
    RETURNING id, convert_from(job, 'UTF8')::jsonb AS payload
), j AS (
    SELECT jf.id, x::bigint AS nid FROM jf,
        jsonb_array_elements_text(coalesce(payload -> 'notification_ids', jsonb_build_array(payload -> 'notification_id'))) AS x
), n AS (
    UPDATE notifications SET status = 'processing' FROM j WHERE notifications.id = j.nid AND notifications.status = 'pending'
    RETURNING notifications.id, notifications.user_id, j.id AS job_id
), r AS (
    SELECT n.id AS nid, n.job_id, u.email, u.phone, coalesce(p.push_notifications, true) AS push_on,
           coalesce(p.sms_notifications, true) AS sms_on, d.id AS device_id, d.push_endpoint
    FROM n JOIN users u ON u.id = n.user_id LEFT JOIN user_preferences p ON p.user_id = u.id
    LEFT JOIN LATERAL (SELECT id, push_endpoint FROM user_devices WHERE user_id = u.id AND active ORDER BY id LIMIT 1) d ON true
), c AS (
    SELECT r.*, CASE WHEN push_on AND device_id IS NOT NULL THEN 1 WHEN sms_on AND phone IS NOT NULL THEN 2 ELSE 3 END AS chosen FROM r
), planned AS (
    INSERT INTO notification_deliveries (notification_id, channel, target, device_id, status, attempts, skip_reason, sending_since)
    SELECT c.nid, ch.name,
           CASE WHEN ch.o < c.chosen THEN '' WHEN ch.o = 1 THEN c.push_endpoint WHEN ch.o = 2 THEN c.phone ELSE c.email END,
           CASE WHEN ch.o = 1 AND ch.o = c.chosen THEN c.device_id END,
           CASE WHEN ch.o < c.chosen THEN 'skipped' ELSE 'sending' END,
           CASE WHEN ch.o < c.chosen THEN 0 ELSE 1 END,
           CASE WHEN ch.o < c.chosen THEN 'not usable' END,
           CASE WHEN ch.o = c.chosen THEN now() END
    FROM c CROSS JOIN (VALUES (1, 'push'), (2, 'sms'), (3, 'email')) AS ch(o, name)
    WHERE ch.o <= c.chosen
    RETURNING id, notification_id, device_id, status
), attempt AS (
    INSERT INTO delivery_attempt_log (delivery_id, attempt, job_id, worker, started_at)
    SELECT id, 1, 'ceiling', 'ceiling', now() FROM planned WHERE status = 'sending'
    RETURNING delivery_id
)
SELECT p.id, p.notification_id, c.job_id, p.device_id, c.nid
FROM planned p JOIN c ON c.nid = p.notification_id JOIN attempt a ON a.delivery_id = p.id
"#;

/// Records a batch as sent: deliveries, attempts, devices, analytics events, notifications done,
/// jobs deleted (finished jobs leave no row) — one statement.
const RECORD: &str = r#"
WITH s AS (
    UPDATE notification_deliveries SET status = 'sent', sent_at = now(), provider_message_id = 'ceiling-' || id, sending_since = NULL
    WHERE id = ANY($1) RETURNING id, notification_id, channel, device_id
), a AS (
    UPDATE delivery_attempt_log SET finished_at = now(), outcome = 'sent', provider_message_id = 'ceiling'
    WHERE delivery_id = ANY($1) AND attempt = 1
), dev AS (
    UPDATE user_devices SET last_used_at = now() WHERE id IN (SELECT device_id FROM s WHERE device_id IS NOT NULL)
), ev AS (
    INSERT INTO analytics_events (user_id, event_type, event_data)
    SELECT n.user_id, 'notification_sent',
           jsonb_build_object('notification_id', n.id, 'delivery_id', s.id, 'kind', n.type, 'channel', s.channel)
    FROM s JOIN notifications n ON n.id = s.notification_id
), done AS (
    UPDATE notifications SET status = 'done' WHERE id IN (SELECT notification_id FROM s)
)
DELETE FROM apalis.jobs WHERE id = ANY($2)
"#;

/// Runs the ceiling experiment: `n` reminders, `batch` per statement, `tasks` batchers.
/// With `explain`, first prints `EXPLAIN (ANALYZE, BUFFERS)` of one claim (rolled back).
pub async fn run(ctx: &Ctx, n: u64, batch: i64, tasks: usize, explain: bool) -> anyhow::Result<CeilingRun> {
    let db = pg::BenchDb::create("ceiling", &ctx.db_settings).await?;
    let result = async {
        let pop = world::populate(
            &db.pool,
            n as i64,
            (n as i64 / 100).clamp(10, 200),
            &ctx.sinks.http_base(),
            &ctx.keys,
        )
        .await?;
        let mut conn = db.connect().await?;
        let due: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut conn).await?;
        world::insert_reminders(&mut conn, &pop, due, Duration::ZERO, "ceiling").await?;
        // `lock_by` refers to a registered worker.
        sqlx::query(
            "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) VALUES ('ceiling', $1, 'ceiling', '', now())",
        )
        .bind(QUEUE_NOTIFICATIONS)
        .execute(&mut conn)
        .await?;
        drop(conn);
        db.pool.close().await;
        if explain {
            let mut tx = db.connect().await?;
            sqlx::query("BEGIN").execute(&mut tx).await?;
            let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS) {CLAIM}")))
                .bind(QUEUE_NOTIFICATIONS)
                .bind(batch)
                .fetch_all(&mut tx)
                .await?;
            sqlx::query("ROLLBACK").execute(&mut tx).await?;
            eprintln!("{}", plan.join("\n"));
        }
        let x0 = pg::xacts(&db.name).await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(tasks as u32)
            .connect(&db.url)
            .await?;
        let started = Instant::now();
        let mut handles = vec![];
        for _ in 0..tasks {
            let pool = pool.clone();
            handles.push(tokio::spawn(async move { batcher(&pool, batch).await }));
        }
        let mut done = 0;
        for h in handles {
            done += h.await??;
        }
        let seconds = started.elapsed().as_secs_f64();
        let recorded: i64 = sqlx::query_scalar("SELECT count(DISTINCT notification_id) FROM notification_deliveries WHERE status = 'sent'")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        let x1 = pg::xacts(&db.name).await?;
        anyhow::Ok(CeilingRun {
            notifications: done,
            batch,
            tasks,
            seconds,
            per_second: done as f64 / seconds,
            transactions_per_notification: (x1 - x0) as f64 / done.max(1) as f64,
            recorded,
        })
    }
    .await;
    db.drop_db().await?;
    result
}

async fn batcher(pool: &PgPool, batch: i64) -> anyhow::Result<u64> {
    let mut done = 0;
    loop {
        let claimed: Vec<(i64, i64, String, Option<i64>, i64)> =
            sqlx::query_as(CLAIM).bind(QUEUE_NOTIFICATIONS).bind(batch).fetch_all(pool).await?;
        if claimed.is_empty() {
            return Ok(done);
        }
        let deliveries: Vec<i64> = claimed.iter().map(|c| c.0).collect();
        let jobs: Vec<String> = claimed.iter().map(|c| c.2.clone()).collect();
        sqlx::query(RECORD).bind(&deliveries).bind(&jobs).execute(pool).await?;
        done += claimed.len() as u64;
    }
}
