//! `dashlight-admin-api`: serves the admin API (see the library).

use clap::Parser;

/// Serves Dashlight's admin API: people, bookings, queues, deliveries and their retries, plus
/// /healthz, /readyz and /metrics. Listens on ADMIN_API_ADDR (default 127.0.0.1:8080); every
/// /api route needs `Authorization: Bearer $ADMIN_API_TOKEN` (required). Configuration comes
/// from the environment (docs/configuration.md); SIGTERM or Ctrl-C stops it after in-flight requests finish.
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    dashlight_core::cli::run_program("dashlight-admin-api", |config, pool, clock, shutdown| async move {
        dashlight_admin_api::run(&config, pool, clock, shutdown).await
    })
}
