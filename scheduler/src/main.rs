//! `dashlight-scheduler`: fires Dashlight's periodic jobs, once per tick across replicas.

use clap::Parser;

/// Fires Dashlight's periodic jobs (reminder sweep, recurring bookings, invoices, rollups, daily
/// agendas, test reminders, CRM follow-ups, pruning) into the queues. Several replicas may run:
/// each tick fires once. Schedules: `SCHEDULE_<TASK>` cron expressions (docs/configuration.md).
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    dashlight_core::cli::run_program("dashlight-scheduler", |config, pool, clock, shutdown| async move {
        dashlight_scheduler::run(&config, pool, clock, shutdown).await
    })
}
