//! What every program does around its real work: logging, reading the configuration, connecting
//! to the database, waiting for SIGTERM/Ctrl-C. Operator mistakes end with one clear line and a
//! non-zero exit, never a panic.

use std::{future::Future, process::ExitCode};

use sqlx::PgPool;

use crate::{Clock, Config, db};

/// Sets up logging to stdout: `RUST_LOG` (default `info`), `LOG_FORMAT=json` for JSON lines.
/// Plain lines are coloured only when stdout is a terminal (and `NO_COLOR` is unset), so a log
/// file or a pipe never holds escape codes.
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_postgres=warn"));
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour)
        .with_writer(std::io::stdout);
    let _ = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received: shutting down"),
        _ = term => tracing::info!("SIGTERM received: shutting down"),
    }
}

/// Prints `program: message` to stderr and returns exit code 2 (configuration) or 1.
pub fn fail(program: &str, message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("{program}: {message}");
    ExitCode::from(code)
}

/// Runs a long-lived program: config → database (must be migrated) → `body` until a signal.
pub fn run_program<F, Fut>(program: &'static str, body: F) -> ExitCode
where
    F: FnOnce(Config, PgPool, Clock, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_tracing();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(program, format!("configuration error: {e}"), 2),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(program, format!("cannot start the runtime: {e}"), 1),
    };
    rt.block_on(async move {
        let pool = match db::connect(&config.database_url, config.database_pooler, program, pool_size(&config, program)).await {
            Ok(p) => p,
            Err(e) => return fail(program, e, 1),
        };
        match db::migrations_applied(&pool).await {
            Ok(true) => {}
            Ok(false) => return fail(program, "the database is not migrated: run `dashlight migrate` first", 1),
            Err(e) => return fail(program, e, 1),
        }
        match body(config, pool, Clock::system(), Box::pin(shutdown_signal())).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(program, format!("{e:#}"), 1),
        }
    })
}

/// Database connections a process opens through `DATABASE_URL`: `DATABASE_MAX_CONNECTIONS` when
/// set, else [`default_pool_size`] for the program.
pub fn pool_size(config: &Config, program: &str) -> u32 {
    config
        .database_max_connections
        .unwrap_or_else(|| default_pool_size(config, program))
}

/// Each program's default pool (docs/configuration.md): the scheduler 8, the admin API 16,
/// the worker and everything else (`dashlight up` runs all in one process) `WORKER_CONCURRENCY / 2`
/// bounded to 8..=40 (40 with the default concurrency of 128).
pub fn default_pool_size(config: &Config, program: &str) -> u32 {
    match program {
        "dashlight-scheduler" => 8,
        "dashlight-admin-api" => 16,
        _ => (config.worker_concurrency as u32 / 2).clamp(8, 40),
    }
}
