//! Pruning: finished jobs `Done` for longer than [`RETENTION_DAYS`] are deleted through the
//! queue driver (`dashlight_core::queue::prune_done`, in batches of [`BATCH`]), and claimed
//! scheduler ticks older than the retention with them (they only guard against double firing).
//! Failed and killed jobs are kept for the operator.

use chrono::{DateTime, Duration, Utc};

use super::{Context, PeriodicError};

/// How long finished jobs and claimed ticks are kept.
pub const RETENTION_DAYS: i64 = 7;

/// Rows per delete.
pub const BATCH: i64 = 10_000;

/// The batch delete (EXPLAINed by the tests).
pub use dashlight_core::queue::DELETE_DONE_SQL;

/// Deletes what is past the retention; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let cutoff = now - Duration::days(RETENTION_DAYS);
    let jobs = dashlight_core::queue::prune_done(&ctx.pool, cutoff, BATCH).await?;
    let ticks = sqlx::query!("DELETE FROM scheduler_ticks WHERE tick_at < $1", cutoff)
        .execute(&ctx.pool)
        .await?
        .rows_affected();
    tracing::info!(jobs, ticks, %cutoff, "pruned finished jobs and old ticks");
    Ok(format!(
        "deleted {jobs} finished jobs and {ticks} scheduler ticks older than {cutoff}"
    ))
}
