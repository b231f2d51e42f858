//! The database: connecting with errors an operator can act on, creating the database when it
//! is missing, migrating both our schema (`migrations/`) and apalis's (`apalis` schema, its own
//! history table) in one step, and [`retry_deadlock`], the one way a multi-row write runs in a
//! transaction that is run again when it loses a deadlock. Owns no table.

use std::{future::Future, pin::Pin, time::Duration};

use sqlx::{
    ConnectOptions, Connection, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

use crate::{Config, error::DomainError};

/// Errors of this module, each with the host or the step and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` cannot be parsed.
    #[error("DATABASE_URL: {0}")]
    BadUrl(String),
    /// The server could not be reached or refused us.
    #[error("cannot connect to the database at {target}: {source}. Is PostgreSQL running there, and is DATABASE_URL right?")]
    Unreachable {
        /// host:port/database, without credentials.
        target: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migrating the database failed: {0}")]
    Migrate(String),
    /// Anything else the database said.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// Checks that `url` is a usable Postgres URL, without connecting.
pub fn validate_url(url: &str) -> Result<PgConnectOptions, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("expected postgres://user@host:port/database, could not parse it: {e}"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!("expected a postgres:// URL, got scheme {:?}", parsed.scheme()));
    }
    url.parse::<PgConnectOptions>()
        .map_err(|e| format!("expected postgres://user@host:port/database: {e}"))
}

/// The URL without its password, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("****"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable DATABASE_URL>".into(),
    }
}

fn target(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("(default)")
    )
}

/// How the programs reach Postgres: `DATABASE_POOLER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// A direct connection, or a session-mode pooler: every connection is a session of its own
    /// (the default).
    #[default]
    Session,
    /// A transaction-mode pooler (PgBouncer `pool_mode = transaction`, a provider's pooler):
    /// consecutive transactions of one client connection may run on different server sessions,
    /// so nothing may rely on session state. See [`connect_options`].
    Transaction,
}

impl Pooler {
    /// Parses `DATABASE_POOLER`: `transaction`, or `session`/`none` for the default.
    pub fn parse(v: &str) -> Result<Pooler, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "transaction" => Ok(Pooler::Transaction),
            "session" | "none" => Ok(Pooler::Session),
            other => Err(format!(
                "expected `transaction` (the programs connect through a transaction-mode pooler such as PgBouncer) or unset, got {other:?}"
            )),
        }
    }
}

/// The options every pool of ours connects with: `url`, statements logged at trace level,
/// `application_name` = `program`, and, in a session ([`Pooler::Session`]),
/// `plan_cache_mode=force_custom_plan`.
///
/// Why custom plans: PostgreSQL caches a generic plan for a prepared statement after five runs,
/// and for the foreign-key checks of every insert, and keeps it until the table's statistics
/// change. A plan cached while a table was empty is a sequential scan, and it stays one as the
/// table grows: the benchmark measured a queue fetch of 1,000 jobs at 700 ms, seq-scanning 60,000
/// jobs once per picked id, because its plan was cached while the queue was idle, and each
/// attempt insert seq-scanning `notification_deliveries` for its foreign key
/// (BENCHMARKS.md, "What limits us"). Autovacuum's `ANALYZE` ends such a plan eventually; with it
/// off, or before it runs, it does not. Planning every execution costs about 4 µs per
/// foreign-key check and one plan per batched statement.
///
/// Through a transaction-mode pooler ([`Pooler::Transaction`]) the connection keeps no state
/// between transactions: no statement cache (with it off, our patched sqlx-postgres runs each
/// statement unnamed under a single Sync, see `vendor/README.md`), and no startup `options` or
/// `extra_float_digits`, which PgBouncer refuses unless told to ignore them; set
/// `ALTER ROLE … SET plan_cache_mode = force_custom_plan` on the database's role instead (docs/operating.md,
/// "Behind a transaction-mode pooler").
pub fn connect_options(url: &str, pooler: Pooler, program: &str) -> Result<PgConnectOptions, String> {
    let opts = validate_url(url)?
        .log_statements(tracing::log::LevelFilter::Trace)
        .application_name(program);
    Ok(match pooler {
        Pooler::Session => opts.options([("plan_cache_mode", "force_custom_plan")]),
        Pooler::Transaction => opts.statement_cache_capacity(0).extra_float_digits(None),
    })
}

/// Opens a pool of at most `max_connections` with [`connect_options`], failing fast (5 s) with a
/// clear message.
pub async fn connect(url: &str, pooler: Pooler, program: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let opts = connect_options(url, pooler, program).map_err(DbError::BadUrl)?;
    let t = target(&opts);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .map_err(|source| DbError::Unreachable { target: t, source })
}

/// The URL to migrate through: `DATABASE_DIRECT_URL` when given, else `DATABASE_URL` unless it
/// goes through a transaction-mode pooler, whose sessions cannot hold the migrations' advisory
/// lock (that is an error naming `DATABASE_DIRECT_URL`).
pub fn migration_url(config: &Config) -> Result<&str, DbError> {
    match (&config.database_direct_url, config.database_pooler) {
        (Some(direct), _) => Ok(direct),
        (None, Pooler::Session) => Ok(&config.database_url),
        (None, Pooler::Transaction) => Err(DbError::Migrate(
            "refusing to migrate through a transaction-mode pooler (DATABASE_POOLER=transaction): migrations hold a session-level advisory lock. Set DATABASE_DIRECT_URL to a direct connection to the database (not through the pooler)".into(),
        )),
    }
}

/// Where `LISTEN` wake-ups connect: `DATABASE_DIRECT_URL` when given, `DATABASE_URL` in a
/// session; `None` through a transaction-mode pooler without a direct URL (poll instead: a
/// `LISTEN` through it would hear nothing once its transaction ends).
pub fn listen_url(config: &Config) -> Option<&str> {
    match (&config.database_direct_url, config.database_pooler) {
        (Some(direct), _) => Some(direct),
        (None, Pooler::Session) => Some(&config.database_url),
        (None, Pooler::Transaction) => None,
    }
}

/// Creates the database named in `url` when it does not exist yet (connecting to `postgres`).
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let opts = validate_url(url).map_err(DbError::BadUrl)?;
    let Some(name) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = PgConnection::connect_with(&admin).await.map_err(|source| DbError::Unreachable {
        target: target(&admin),
        source,
    })?;
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        &name
    )
    .fetch_one(&mut conn)
    .await?;
    if !exists {
        // Dynamic SQL: a database name is an identifier, which no statement takes as a parameter;
        // it is quoted here. Covered by `a_postgres_restart_mid_burst_loses_nothing_and_every_program_recovers`
        // (tests/tests/pooler.rs), whose `dashlight migrate` creates its database in a fresh cluster.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
            // Another process may have created it meanwhile.
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !raced {
                return Err(e.into());
            }
        }
        tracing::info!(database = %name, "created database");
    }
    conn.close().await.ok();
    Ok(())
}

/// Our own migrations (`migrations/` at the workspace root).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("../migrations");
    // apalis keeps its history in its own table; ignoring unknown versions keeps the two
    // migrators independent even if they ever share one.
    m.set_ignore_missing(true);
    m
}

/// Applies apalis's migrations, then ours. Running it twice is a no-op.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .map_err(|e| DbError::Migrate(format!("apalis schema: {e}")))?;
    adopt_reworded(pool).await?;
    migrator().run(pool).await.map_err(|e| DbError::Migrate(e.to_string()))?;
    Ok(())
}

/// Applied migrations whose comments were reworded after they shipped (their SQL unchanged),
/// with the SHA-384 of the text they were applied with. sqlx refuses to run when an applied
/// migration's checksum differs from the shipped file's, so [`adopt_reworded`] records the new
/// checksum where the old one is stored, and only there: a migration applied from any other
/// text still stops the run.
const REWORDED: &[(i64, &str)] = &[
    (
        20261125000001,
        "19371e483a0bf6bdd98b9aef7330a55c3a51380c13f076b7129610010297a331927e375a1465b3941c0a3aa479119b15",
    ),
    (
        20261202000200,
        "3f5a4312cc26b1b9e9b4037bb5f6caab45f27745fdd75daa0ca553336342105ffd663a422cfe1bad1c7ecfda65fd8159",
    ),
    (
        20261202000300,
        "4228de433a5f9c6a9270687de0ac31ea7f1ea164d4781e2fc3bf46f50683aa91a076c0966f654d326f2e3ac87c9e7d4a",
    ),
    (
        20261202000400,
        "55b6a52ec9c721b8c03693110eaa3d8cbcb4974af2555e026c7477b53e5421ea032fa9cec5d620c8fa1691b77daa8371",
    ),
    (
        20261202000500,
        "957237a1440aface63d1c58c584584b5a7fe97b610372443a6899357b91fbeaab8dd44e08954d098dea7fccf917d8ede",
    ),
    (
        20261202000700,
        "086c3902da27000b4dfd372fda38208655575786f4e05e1af1116c6a31eb0dc0e69d4a1a899686c287cf1e63fe83b09f",
    ),
];

/// The SHA-384 (hex) a migration whose comments were reworded after it shipped was applied
/// with, if it is one of those (`REWORDED`).
pub fn reworded_checksum(version: i64) -> Option<&'static str> {
    REWORDED.iter().find(|(v, _)| *v == version).map(|(_, old)| *old)
}

/// Records the shipped checksum of each [`REWORDED`] migration applied with its old text.
async fn adopt_reworded(pool: &PgPool) -> Result<u64, DbError> {
    let m = migrator();
    let mut adopted = 0;
    for (version, old) in REWORDED {
        let Some(now) = m.iter().find(|x| x.version == *version) else {
            continue;
        };
        // Dynamic SQL: sqlx's history table is absent from the schema the macros check, and
        // from a new database (then there is nothing to adopt).
        match sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = decode($3, 'hex')")
            .bind(now.checksum.as_ref())
            .bind(version)
            .bind(old)
            .execute(pool)
            .await
        {
            Ok(r) => adopted += r.rows_affected(),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
    if adopted > 0 {
        tracing::info!(migrations = adopted, "applied migrations with reworded comments: checksums updated");
    }
    Ok(adopted)
}

/// True when every migration we ship is applied (readiness).
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, DbError> {
    // Dynamic SQL: `_sqlx_migrations` is sqlx's own history table, created by the first
    // migration run, so it is absent from the schema the macros are checked against (and a
    // missing table is an answer here, `false`). Covered by
    // `migrations_apply_to_an_empty_database_and_twice_in_a_row` (tests/tests/schema.rs).
    let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
    {
        Ok(v) => v,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(migrator().iter().all(|m| applied.contains(&m.version)))
}

/// How many times in all [`retry_deadlock`] runs a transaction that keeps losing.
pub const RETRY_ATTEMPTS: u32 = 3;

/// True for errors after which the whole transaction may simply be run again: a deadlock
/// (`40P01`; concurrent inserts against the bookings' exclusion constraint can end in one rather
/// than in its violation) or a serialization failure (`40001`).
pub fn is_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01" || c == "40001")
}

/// What the body of [`retry_deadlock`] returns: a future borrowing the transaction and the
/// context.
pub type TxFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, DomainError>> + Send + 'c>>;

/// Runs `body` in a transaction on `pool` and commits it. When the database makes the
/// transaction a deadlock's victim or reports a serialization failure ([`is_retryable`]), in the
/// body or at commit, the transaction is rolled back and `body` runs again on a fresh one, up to
/// [`RETRY_ATTEMPTS`] times in all; any other error (or the last retryable one) is returned and
/// nothing is committed. `body` may therefore run more than once: it must not have effects
/// outside the transaction.
///
/// `body` gets the transaction's connection and `ctx` (whatever the write borrows, e.g. the
/// request's state); anything else it uses it copies or clones before building its future:
///
/// ```ignore
/// let booking = db::retry_deadlock(&pool, &settings, |tx, settings| {
///     Box::pin(bookings::create(tx, settings, nb.clone(), now))
/// })
/// .await?;
/// ```
pub async fn retry_deadlock<C, T, F>(pool: &PgPool, ctx: &C, mut body: F) -> Result<T, DomainError>
where
    C: ?Sized + Sync,
    F: for<'c> FnMut(&'c mut PgConnection, &'c C) -> TxFuture<'c, T>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut tx = pool.begin().await?;
        let error = match body(&mut tx, ctx).await {
            Ok(value) => match tx.commit().await {
                Ok(()) => return Ok(value),
                Err(e) => DomainError::Db(e),
            },
            Err(e) => e,
        };
        match error {
            DomainError::Db(e) if is_retryable(&e) && attempt < RETRY_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "transaction lost a deadlock; running it again");
            }
            e => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_are_accepted_and_passwords_are_redacted() {
        assert!(validate_url("postgres://root@127.0.0.1:5432/x").is_ok());
        assert!(validate_url("mysql://root@h/x").unwrap_err().contains("postgres://"));
        assert!(validate_url("not a url").is_err());
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:****@h:5432/db");
    }

    #[test]
    fn pooler_mode_picks_sessions_for_migrations_and_listen() {
        assert_eq!(Pooler::parse("Transaction"), Ok(Pooler::Transaction));
        assert_eq!(Pooler::parse("session"), Ok(Pooler::Session));
        assert!(Pooler::parse("statement").unwrap_err().contains("transaction"));
        let mut c = Config::for_database("postgres://root@pooler:6432/d");
        assert_eq!(migration_url(&c).unwrap(), "postgres://root@pooler:6432/d");
        assert_eq!(listen_url(&c), Some("postgres://root@pooler:6432/d"));
        c.database_pooler = Pooler::Transaction;
        assert!(migration_url(&c).unwrap_err().to_string().contains("DATABASE_DIRECT_URL"));
        assert_eq!(listen_url(&c), None);
        c.database_direct_url = Some("postgres://root@db:5432/d".into());
        assert_eq!(migration_url(&c).unwrap(), "postgres://root@db:5432/d");
        assert_eq!(listen_url(&c), Some("postgres://root@db:5432/d"));
        // No session state through the pooler: no statement cache, no startup options.
        let o = connect_options("postgres://root@pooler:6432/d", Pooler::Transaction, "t").unwrap();
        assert!(o.get_options().is_none());
        let o = connect_options("postgres://root@db:5432/d", Pooler::Session, "t").unwrap();
        assert!(o.get_options().is_some_and(|s| s.contains("plan_cache_mode")));
    }
}
