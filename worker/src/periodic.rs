//! The periodic jobs the scheduler fires; they run here, in the workers. Each takes the tick
//! time as its "now" and is idempotent, so a re-run changes nothing.

use std::time::Duration;

use dashlight_core::{
    Clock, Config,
    jobs::{PeriodicJob, PeriodicTask},
};
use sqlx::PgPool;

use crate::delivery;

/// What the periodic jobs need.
#[derive(Clone, Debug)]
pub struct Context {
    /// Database.
    pub pool: PgPool,
    /// Clock.
    pub clock: Clock,
    /// Configuration.
    pub config: Config,
}

impl Context {
    /// Builds the context.
    pub fn new(config: &Config, pool: PgPool, clock: Clock) -> Self {
        Context {
            pool,
            clock,
            config: config.clone(),
        }
    }
}

/// Runs one periodic job; returns a one-line summary for the log.
pub async fn run(ctx: &Context, job: &PeriodicJob) -> anyhow::Result<String> {
    // A tick's work uses the later of the tick and the clock: a job that waited in the queue
    // still sees what became due meanwhile.
    let now = job.tick.max(ctx.clock.now());
    Ok(match job.task {
        PeriodicTask::ReminderSweep => {
            let recovered = delivery::recover_stuck(&ctx.pool, now).await?;
            let requeued = delivery::sweep_overdue(&ctx.pool, now, Duration::from_secs(5)).await?;
            format!("recovered {recovered} stuck deliveries, re-enqueued {requeued} overdue notifications")
        }
        other => format!("{} is not implemented yet", other.as_str()),
    })
}
