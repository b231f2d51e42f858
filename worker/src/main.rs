//! `dashlight-worker`: drains Dashlight's queues and sends email, SMS and Web Push.

use clap::Parser;

/// Drains Dashlight's queues: renders and sends notifications (email, SMS, Web Push) and runs the
/// periodic jobs the scheduler fires. Configuration comes from the environment (docs/configuration.md);
/// SIGTERM or Ctrl-C stops it cleanly after in-flight sends finish.
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    dashlight_core::cli::run_program("dashlight-worker", |config, pool, clock, shutdown| async move {
        if let Some(addr) = config.worker_metrics_addr {
            dashlight_worker::serve_metrics(addr)?;
        }
        dashlight_worker::run(&config, pool, clock, shutdown).await
    })
}
