//! Scenario 2, end-to-end burst, and scenario 5, footprint, measured in the same runs.
//!
//! Each run: a fresh database, `n` students with the channel mix and an upcoming booking each,
//! the worker processes started and registered; then `n` lesson reminders, all due at one
//! moment a little ahead, are inserted in one transaction. The run ends when every reminder has
//! a delivery recorded `sent`. Throughput is `n / (last sent_at − due_at)` on the database's
//! timestamps. Alongside: the workers' peak RSS (`VmHWM`), the bench database's transactions
//! (`pg_stat_database`, the bench's own queries subtracted) and table activity per notification,
//! WAL volume, CPU time by process group, and what the database sessions were waiting on.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::bail;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Connection;

use crate::{
    Ctx,
    pg::{self, ActivitySampler, BenchDb},
    workers::{self, Workers},
    world,
};

/// One burst run.
#[derive(Debug, Clone, Serialize)]
pub struct BurstRun {
    /// Reminders due.
    pub notifications: u64,
    /// Reminders with a `sent` delivery at the end.
    pub recorded: u64,
    /// Seconds from the due time to the last `sent_at`.
    pub seconds: f64,
    /// Notifications per second.
    pub per_second: f64,
    /// `sent` deliveries by channel (email, sms, push).
    pub sent_by_channel: BTreeMap<String, i64>,
    /// Deliveries that ended `failed`, `dead` or still `retrying`.
    pub not_sent: i64,
    /// What the sinks accepted (email, sms, push).
    pub sink_counts: (u64, u64, u64),
    /// Peak RSS of each worker process, MiB.
    pub peak_rss_mib: Vec<f64>,
    /// Transactions of the bench database in the window, the bench's own subtracted.
    pub transactions: i64,
    /// `transactions / recorded`.
    pub transactions_per_notification: f64,
    /// Cluster-wide WAL bytes per notification (other databases add to it).
    pub wal_bytes_per_notification: f64,
    /// Cluster-wide WAL syncs (fsyncs of commits) in the window.
    pub wal_syncs: i64,
    /// Per table: inserts, updates, HOT updates, deletes, index scans, seq scans — per notification
    /// (read after the workers stopped, so every backend has reported its counters).
    pub table_ops_per_notification: BTreeMap<String, [f64; 6]>,
    /// Average number of the database's client sessions in each `state / wait event`.
    pub sessions: BTreeMap<String, f64>,
    /// CPU seconds during the run: worker processes, Postgres backends of the bench database,
    /// the bench process (sinks), the whole machine (every process, other engineers' too).
    pub cpu_seconds: BTreeMap<String, f64>,
    /// WARN/ERROR lines the workers logged.
    pub worker_log_warnings: usize,
}

fn instructors_for(n: u64) -> i64 {
    (n as i64 / 100).clamp(10, 200)
}

/// Runs one burst of `n` reminders; with `perf` set, records a system-wide `perf` profile of
/// the burst window into that file.
pub async fn run(ctx: &Ctx, n: u64, label: &str, perf: Option<PathBuf>) -> anyhow::Result<BurstRun> {
    let db = BenchDb::create(label, &ctx.db_settings).await?;
    let result = run_on(ctx, &db, n, label, perf).await;
    db.drop_db().await?;
    result
}

async fn run_on(ctx: &Ctx, db: &BenchDb, n: u64, label: &str, perf: Option<PathBuf>) -> anyhow::Result<BurstRun> {
    let pop = world::populate(&db.pool, n as i64, instructors_for(n), &ctx.sinks.http_base(), &ctx.keys).await?;
    db.pool.close().await;
    let mut conn = db.connect().await?;
    let workers = Workers::start(&ctx.worker_bin, db, &mut conn, &ctx.sinks, &ctx.keys, &ctx.settings, label).await?;
    conn.close().await?;
    ctx.sinks.counts.reset();

    // The window starts here; every query of the bench on the bench database is counted in `own`.
    let x0 = pg::xacts(&db.name).await?;
    let wal0 = pg::wal().await?;
    let mut conn = db.connect().await?;
    let mut own = 0i64;
    let t0 = pg::table_stats(&mut conn).await?;
    own += 2;
    let sampler = ActivitySampler::start(&db.name).await?;
    let backends0 = backend_cpu(&db.name).await?;
    let pooler_cpu0 = ctx.pooler_pid.map(workers::cpu_seconds);
    let (workers_cpu0, self_cpu0, machine0) = (
        workers.cpu_seconds(),
        workers::cpu_seconds(std::process::id()),
        workers::machine_cpu(),
    );

    let due: DateTime<Utc> = sqlx::query_scalar("SELECT now() + interval '1500 milliseconds'")
        .fetch_one(&mut conn)
        .await?;
    own += 1;
    let inserted = world::insert_reminders(&mut conn, &pop, due, Duration::ZERO, "burst").await?;
    own += 1;
    let committed: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut conn).await?;
    own += 1;
    if committed >= due {
        bail!("inserting {n} reminders took longer than the 1.5 s lead; the burst would start late");
    }
    let mut perf_child = match &perf {
        Some(file) => Some(
            tokio::process::Command::new("perf")
                .args(["record", "-e", "cpu-clock", "-F", "499", "-g", "-a", "-o"])
                .arg(file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        ),
        None => None,
    };

    let deadline = std::time::Instant::now() + Duration::from_secs(120.max(n / 100) + 2);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_deliveries WHERE status = 'sent'")
            .fetch_one(&mut conn)
            .await?;
        own += 1;
        if sent as u64 >= inserted || std::time::Instant::now() > deadline {
            break;
        }
    }

    let (workers_cpu1, self_cpu1, machine1) = (
        workers.cpu_seconds(),
        workers::cpu_seconds(std::process::id()),
        workers::machine_cpu(),
    );
    let backends1 = backend_cpu(&db.name).await?;
    let pooler_cpu = pooler_cpu0.zip(ctx.pooler_pid.map(workers::cpu_seconds)).map(|(a, b)| b - a);
    let peak_rss_mib = workers.peak_rss_kib().iter().map(|k| *k as f64 / 1024.0).collect();
    if let Some(mut c) = perf_child.take()
        && let Some(pid) = c.id()
    {
        let _ = tokio::process::Command::new("kill").arg("-INT").arg(pid.to_string()).status().await;
        let _ = tokio::time::timeout(Duration::from_secs(60), c.wait()).await;
    }
    let sessions = sampler.finish().await?;

    let (recorded, first_due, last_sent): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(DISTINCT n.id), min(n.due_at), max(d.sent_at)
         FROM notifications n JOIN notification_deliveries d ON d.notification_id = n.id AND d.status = 'sent'",
    )
    .fetch_one(&mut conn)
    .await?;
    own += 1;
    let by_channel: Vec<(String, i64)> =
        sqlx::query_as("SELECT channel, count(*) FROM notification_deliveries WHERE status = 'sent' GROUP BY 1")
            .fetch_all(&mut conn)
            .await?;
    own += 1;
    let not_sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries WHERE status IN ('failed', 'dead', 'retrying', 'sending', 'pending')",
    )
    .fetch_one(&mut conn)
    .await?;
    own += 1;
    conn.close().await?;
    let worker_log_warnings = workers.stop().await?;
    // Table statistics after the workers stopped: a backend reports its counters at most once a
    // second while busy and at exit, so read before the stop they miss the last writes.
    let mut conn = db.connect().await?;
    let t1 = pg::table_stats(&mut conn).await?;
    own += 2;
    conn.close().await?;
    let x1 = pg::xacts(&db.name).await?;
    let wal1 = pg::wal().await?;

    let recorded_u = recorded.max(1) as f64;
    let seconds = match (first_due, last_sent) {
        (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
        _ => f64::NAN,
    };
    let transactions = x1 - x0 - own;
    let mut table_ops = BTreeMap::new();
    for (t, after) in &t1 {
        let before = t0.get(t).copied().unwrap_or_default();
        let per: [f64; 6] = std::array::from_fn(|i| (after[i] - before[i]) as f64 / recorded_u);
        if per.iter().any(|v| *v > 0.0005) {
            table_ops.insert(t.clone(), per);
        }
    }
    let samples = sessions.get("(samples)").copied().unwrap_or(1).max(1) as f64;
    let sessions = sessions
        .into_iter()
        .filter(|(k, _)| k != "(samples)")
        .map(|(k, v)| (k, v as f64 / samples))
        .collect();
    let mut cpu = BTreeMap::new();
    cpu.insert("wall".into(), seconds);
    cpu.insert("worker processes".into(), workers_cpu1 - workers_cpu0);
    cpu.insert(
        "postgres backends".into(),
        backends1.iter().map(|(p, c)| c - backends0.get(p).copied().unwrap_or(0.0)).sum(),
    );
    cpu.insert("bench process (sinks)".into(), self_cpu1 - self_cpu0);
    if let Some(c) = pooler_cpu {
        cpu.insert("pgbouncer".into(), c);
    }
    cpu.insert("machine (all processes)".into(), machine1.0 - machine0.0);
    Ok(BurstRun {
        notifications: inserted,
        recorded: recorded as u64,
        seconds,
        per_second: recorded as f64 / seconds,
        sent_by_channel: by_channel.into_iter().collect(),
        not_sent,
        sink_counts: ctx.sinks.counts.get(),
        peak_rss_mib,
        transactions,
        transactions_per_notification: transactions as f64 / recorded_u,
        wal_bytes_per_notification: (wal1.1 - wal0.1) as f64 / recorded_u,
        wal_syncs: wal1.2 - wal0.2,
        table_ops_per_notification: table_ops,
        sessions,
        cpu_seconds: cpu,
        worker_log_warnings,
    })
}

/// CPU seconds so far of each backend process connected to database `db`.
async fn backend_cpu(db: &str) -> anyhow::Result<BTreeMap<i32, f64>> {
    let mut conn = pg::admin().await?;
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .fetch_all(&mut conn)
        .await?;
    Ok(pids.into_iter().map(|p| (p, workers::cpu_seconds(p as u32))).collect())
}

impl BurstRun {
    /// Row writes (inserts + updates + deletes, every table) per notification.
    pub fn row_writes_per_notification(&self) -> f64 {
        self.table_ops_per_notification.values().map(|v| v[0] + v[1] + v[3]).sum()
    }

    /// CPU milliseconds per notification of one group of `cpu_seconds`.
    pub fn cpu_ms_per_notification(&self, what: &str) -> f64 {
        self.cpu_seconds.get(what).copied().unwrap_or(f64::NAN) * 1000.0 / self.recorded.max(1) as f64
    }

    /// The row writes by table, one line each, and the total.
    pub fn row_writes_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .table_ops_per_notification
            .iter()
            .filter(|(_, v)| v[0] + v[1] + v[3] > 0.0005)
            .map(|(t, v)| format!("{t}: {:.2} ins + {:.2} upd ({:.2} HOT) + {:.2} del", v[0], v[1], v[2], v[3]))
            .collect();
        lines.push(format!(
            "total: {:.2} row writes per notification",
            self.row_writes_per_notification()
        ));
        lines
    }
}
