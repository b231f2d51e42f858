//! `dashlight`: the operator's command. `migrate`, `seed-demo`, and `up` (everything in one
//! process for local use). Thin: the work lives in the libraries.

mod localpg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dashlight_core::{Clock, Config, bookings::BookingSettings, cli, db};

/// Dashlight: background jobs and notifications for driving schools.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if needed and apply every migration (ours and apalis's). Safe to repeat.
    Migrate,
    /// Load the demo school (instructors, students, devices, bookings, payments). Safe to repeat.
    SeedDemo,
    /// Run everything locally: find or start Postgres, migrate, load demo data, then run the
    /// scheduler, the workers and the admin API in this process until Ctrl-C.
    Up {
        /// Skip the demo data.
        #[arg(long)]
        no_demo: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return cli::fail("dashlight", format!("cannot start the runtime: {e}"), 1),
    };
    rt.block_on(async move {
        match args.command {
            Command::Migrate => {
                let config = match Config::from_env() {
                    Ok(c) => c,
                    Err(e) => return cli::fail("dashlight", format!("configuration error: {e}"), 2),
                };
                match migrate(&config).await {
                    Ok(url) => {
                        println!("migrated {}", db::redact_url(&url));
                        ExitCode::SUCCESS
                    }
                    Err(e) => cli::fail("dashlight migrate", format!("{e:#}"), 1),
                }
            }
            Command::SeedDemo => {
                let config = match Config::from_env() {
                    Ok(c) => c,
                    Err(e) => return cli::fail("dashlight", format!("configuration error: {e}"), 2),
                };
                match seed(&config).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => cli::fail("dashlight seed-demo", format!("{e:#}"), 1),
                }
            }
            Command::Up { no_demo } => match up(no_demo).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => cli::fail("dashlight up", format!("{e:#}"), 1),
            },
        }
    })
}

/// Creates the database if needed and migrates it, in a session of its own: through
/// `DATABASE_DIRECT_URL` when the programs go through a transaction-mode pooler (refused without
/// it, see [`db::migration_url`]). Returns the URL it migrated.
async fn migrate(config: &Config) -> anyhow::Result<String> {
    let url = db::migration_url(config)?.to_owned();
    db::ensure_database(&url).await?;
    let pool = db::connect(&url, db::Pooler::Session, "dashlight-migrate", 2).await?;
    db::migrate(&pool).await?;
    pool.close().await;
    Ok(url)
}

/// Migrates, then opens the pool `program` works with (through `DATABASE_URL`).
async fn migrate_and_connect(config: &Config, program: &str) -> anyhow::Result<sqlx::PgPool> {
    migrate(config).await?;
    Ok(db::connect(
        &config.database_url,
        config.database_pooler,
        program,
        cli::pool_size(config, program),
    )
    .await?)
}

fn booking_settings(config: &Config) -> BookingSettings {
    BookingSettings::from_config(config)
}

async fn seed(config: &Config) -> anyhow::Result<()> {
    let pool = migrate_and_connect(config, "dashlight-seed-demo").await?;
    let s = dashlight_core::demo::seed(&pool, &booking_settings(config), chrono::Utc::now()).await?;
    if s.already_present {
        println!("demo data already present");
    } else {
        println!(
            "demo school loaded: {} instructors, {} students, {} bookings, {} payments, {} past reminded lessons",
            s.instructors, s.students, s.bookings, s.payments, s.history
        );
    }
    Ok(())
}

async fn up(no_demo: bool) -> anyhow::Result<()> {
    // Find Postgres before reading the rest of the configuration.
    if std::env::var("DATABASE_URL").map(|v| v.trim().is_empty()).unwrap_or(true) {
        // Passed on explicitly rather than by mutating the environment of a running runtime.
        let url = localpg::find_or_start().await?;
        return up_with(Some(url), no_demo).await;
    }
    up_with(None, no_demo).await
}

async fn up_with(database_url: Option<String>, no_demo: bool) -> anyhow::Result<()> {
    let mut config = Config::from_env().map_err(|e| anyhow::anyhow!("configuration error: {e}"))?;
    if let Some(url) = database_url {
        config.database_url = url;
    }
    // A local run talks to local push services (a browser on this machine, a test sink):
    // allow them unless the operator said otherwise.
    if std::env::var_os("PUSH_ALLOW_PRIVATE_ENDPOINTS").is_none() {
        config.push_allow_private_endpoints = true;
    }
    let generated_token = config.admin_api_token.is_none();
    if generated_token {
        config.admin_api_token = Some(generate_token()?);
    }
    let pool = migrate_and_connect(&config, "dashlight-up").await?;
    println!("database: {} (migrated)", db::redact_url(&config.database_url));
    if !no_demo {
        let s = dashlight_core::demo::seed(&pool, &booking_settings(&config), chrono::Utc::now()).await?;
        if s.already_present {
            println!("demo data: already present");
        } else {
            println!(
                "demo data: {} instructors, {} students, {} bookings, {} payments",
                s.instructors, s.students, s.bookings, s.payments
            );
        }
    }
    if generated_token {
        let token = config.admin_api_token.clone().unwrap_or_default();
        println!(
            "admin API: http://{}  (Authorization: Bearer {token}, generated for this run)",
            config.admin_api_addr
        );
    } else {
        // A token the operator chose is theirs to know; it never goes to the terminal or a log.
        println!(
            "admin API: http://{}  (Authorization: Bearer $ADMIN_API_TOKEN)",
            config.admin_api_addr
        );
    }
    println!("dashboard: http://{}/", config.admin_api_addr);
    for (role, name, url) in dashlight_core::demo::page_links(&pool, &config.public_base_url).await? {
        println!("own page of {role} {name}: {url}");
    }
    let _ = std::fs::create_dir_all(&config.outbox_dir);
    println!(
        "outbox:    {}",
        std::fs::canonicalize(&config.outbox_dir)
            .unwrap_or(config.outbox_dir.clone())
            .display()
    );
    println!("Ctrl-C stops everything.");

    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let clock = Clock::system();
    let worker = tokio::spawn({
        let (c, p, k, s) = (config.clone(), pool.clone(), clock.clone(), stop(rx.clone()));
        async move { dashlight_worker::run(&c, p, k, s).await }
    });
    let scheduler = tokio::spawn({
        let (c, p, k, s) = (config.clone(), pool.clone(), clock.clone(), stop(rx.clone()));
        async move { dashlight_scheduler::run(&c, p, k, s).await }
    });
    let api = tokio::spawn({
        let (c, p, k, s) = (config.clone(), pool.clone(), clock.clone(), stop(rx.clone()));
        async move { dashlight_admin_api::run(&c, p, k, s).await }
    });
    let (mut worker, mut scheduler, mut api) = (worker, scheduler, api);
    // Ctrl-C, or one part ending on its own (a broken template directory, a port already taken):
    // either stops everything, at once, rather than leaving the others running without it.
    let early = tokio::select! {
        _ = cli::shutdown_signal() => None,
        r = &mut worker => Some(("worker", r)),
        r = &mut scheduler => Some(("scheduler", r)),
        r = &mut api => Some(("admin API", r)),
    };
    let _ = tx.send(true);
    let early_name = early.as_ref().map(|(name, _)| *name);
    if let Some(name) = early_name {
        eprintln!("dashlight up: the {name} stopped on its own; stopping everything");
    }
    let mut results = Vec::from_iter(early);
    for (name, handle) in [("worker", worker), ("scheduler", scheduler), ("admin API", api)] {
        if Some(name) != early_name {
            results.push((name, handle.await));
        }
    }
    for (name, r) in results {
        match r {
            Ok(Ok(())) if Some(name) == early_name => anyhow::bail!("{name} stopped on its own"),
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context(format!("{name} failed"))),
            Err(e) => anyhow::bail!("{name} panicked: {e}"),
        }
    }
    println!("stopped cleanly");
    Ok(())
}

/// A fresh admin token: 256 bits from the operating system's random source, base64url (43
/// characters). Fails rather than falling back to anything guessable.
fn generate_token() -> anyhow::Result<String> {
    use base64::Engine as _;
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read the operating system's random source for the admin token: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_random_base64url() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_eq!(a.len(), 43, "{a}");
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert!(dashlight_core::config::check_admin_token(&a).is_ok());
    }
}
