//! The bench's own Postgres databases: created fresh and migrated with
//! `dashlight_core::db::migrate`, dropped afterwards (stale ones of a crashed run are dropped at
//! start-up), plus the server-wide readings the report needs: transaction counters, table
//! activity, WAL volume and a sampler of what the bench database's sessions are waiting on.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, postgres::PgPoolOptions};

/// Prefix of every database the bench creates; `<prefix><pid>_<n>`.
const PREFIX: &str = "dashlight_bench_";

/// The server URL (its database part is replaced): `BENCH_DATABASE_URL`, default
/// `postgres://root@127.0.0.1:5432/postgres`.
pub fn server_url() -> String {
    std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("BENCH_DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A connection to the `postgres` database, for server-wide views and DDL.
pub async fn admin() -> anyhow::Result<PgConnection> {
    let url = with_db(&server_url(), "postgres");
    PgConnection::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}: is PostgreSQL running on 127.0.0.1:5432?"))
}

/// Drops databases left behind by bench processes that no longer run.
pub async fn drop_stale() -> anyhow::Result<()> {
    let mut conn = admin().await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'dashlight\\_bench\\_%'")
        .fetch_all(&mut conn)
        .await?;
    for name in names {
        let pid = name
            .trim_start_matches(PREFIX)
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            tracing::info!(%name, "dropping a database left by an earlier bench run");
            sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                .execute(&mut conn)
                .await?;
        }
    }
    Ok(())
}

/// A fresh, migrated database of this bench run.
pub struct BenchDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl BenchDb {
    /// Creates `dashlight_bench_<pid>_<label>`, migrates it (apalis's schema and ours) and applies
    /// `settings` (`name=value`, as `ALTER DATABASE … SET`) to the sessions opened afterwards.
    pub async fn create(label: &str, settings: &[String]) -> anyhow::Result<BenchDb> {
        let db = BenchDb::create_unmigrated(label, settings).await?;
        dashlight_core::db::migrate(&db.pool).await?;
        Ok(db)
    }

    /// Creates `dashlight_bench_<pid>_<label>` empty: no schema of ours (graphile-worker's
    /// comparison migrates its own).
    pub async fn create_empty(label: &str) -> anyhow::Result<BenchDb> {
        BenchDb::create_unmigrated(label, &[]).await
    }

    async fn create_unmigrated(label: &str, settings: &[String]) -> anyhow::Result<BenchDb> {
        let name = format!("{PREFIX}{}_{label}", std::process::id());
        let mut conn = admin().await?;
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
            .execute(&mut conn)
            .await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        for setting in settings {
            let Some((k, v)) = setting.split_once('=') else {
                anyhow::bail!("--db-setting {setting:?}: expected name=value")
            };
            if !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
                anyhow::bail!("--db-setting {setting:?}: not a setting name");
            }
            sqlx::query(AssertSqlSafe(format!(
                "ALTER DATABASE \"{name}\" SET {k} = '{}'",
                v.replace('\'', "''")
            )))
            .execute(&mut conn)
            .await?;
        }
        conn.close().await.ok();
        let url = with_db(&server_url(), &name);
        let pool = PgPoolOptions::new().max_connections(20).connect(&url).await?;
        Ok(BenchDb { name, url, pool })
    }

    /// A single connection to this database (kept out of the pool so its transactions can be
    /// counted).
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    /// Closes the pool and drops the database.
    pub async fn drop_db(self) -> anyhow::Result<()> {
        self.pool.close().await;
        if std::env::var_os("BENCH_KEEP_DB").is_some() {
            eprintln!("  BENCH_KEEP_DB: kept database {}", self.name);
            return Ok(());
        }
        let mut conn = admin().await?;
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

/// `xact_commit + xact_rollback` of database `db`, once every backend that touched it has
/// reported (read twice until stable: exiting backends flush their counters as they go).
pub async fn xacts(db: &str) -> anyhow::Result<i64> {
    let mut conn = admin().await?;
    let mut last = -1;
    for _ in 0..20 {
        sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut conn).await?;
        let n: i64 = sqlx::query_scalar("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1")
            .bind(db)
            .fetch_one(&mut conn)
            .await?;
        if n == last {
            return Ok(n);
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(last)
}

/// Cluster-wide WAL counters (`pg_stat_wal`): records, bytes, syncs. Other databases of the
/// server add to them; the bench reports them as an upper bound.
pub async fn wal() -> anyhow::Result<(i64, i64, i64)> {
    let mut conn = admin().await?;
    Ok(sqlx::query_as("SELECT wal_records, wal_bytes::bigint, wal_sync FROM pg_stat_wal")
        .fetch_one(&mut conn)
        .await?)
}

/// Per-table activity of the bench database: (table, inserts, updates, HOT updates, deletes,
/// index scans, sequential scans).
pub type TableStats = BTreeMap<String, [i64; 6]>;

/// Reads [`TableStats`] on `conn` (a connection to the bench database).
pub async fn table_stats(conn: &mut PgConnection) -> anyhow::Result<TableStats> {
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *conn).await?;
    let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, coalesce(idx_scan, 0), seq_scan
         FROM pg_stat_user_tables",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(t, a, b, c, d, e, f)| (t, [a, b, c, d, e, f])).collect())
}

/// What the sessions of one database were doing, sampled every 20 ms from the `postgres`
/// database (so the sampling adds nothing to the bench database's counters).
pub struct ActivitySampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<BTreeMap<String, u64>>>,
}

impl ActivitySampler {
    /// Starts sampling `pg_stat_activity` for database `db`.
    pub async fn start(db: &str) -> anyhow::Result<ActivitySampler> {
        let mut conn = admin().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let db = db.to_owned();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT coalesce(state, '?') || coalesce(' / ' || wait_event_type || ':' || wait_event, ''), count(*)
                     FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' GROUP BY 1",
                )
                .bind(&db)
                .fetch_all(&mut conn)
                .await?;
                for (k, n) in rows {
                    *counts.entry(k).or_default() += n as u64;
                }
                *counts.entry("(samples)".into()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(counts)
        });
        Ok(ActivitySampler { stop, task })
    }

    /// Stops and returns, per `state / wait event`, the number of session-samples seen.
    pub async fn finish(self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}
