//! Pruning: finished jobs (`apalis.jobs` rows `Done` for longer than [`RETENTION_DAYS`]) are
//! deleted in batches of [`BATCH`], each its own statement so locks stay short, and claimed
//! scheduler ticks older than the retention with them (they only guard against double firing).
//! Failed and killed jobs are kept for the operator. Reads `dashlight_jobs_done_idx`.

use chrono::{DateTime, Duration, Utc};

use super::{Context, PeriodicError};

/// How long finished jobs and claimed ticks are kept.
pub const RETENTION_DAYS: i64 = 7;

/// Rows per delete.
pub const BATCH: i64 = 10_000;

/// The batch delete. `pub` so tests can EXPLAIN it.
pub const DELETE_DONE_SQL: &str =
    "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs WHERE status = 'Done' AND done_at < $1 LIMIT $2)";

/// Deletes what is past the retention; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let cutoff = now - Duration::days(RETENTION_DAYS);
    let mut jobs = 0u64;
    loop {
        let n = sqlx::query(DELETE_DONE_SQL)
            .bind(cutoff)
            .bind(BATCH)
            .execute(&ctx.pool)
            .await?
            .rows_affected();
        jobs += n;
        if n < BATCH as u64 {
            break;
        }
    }
    let ticks = sqlx::query("DELETE FROM scheduler_ticks WHERE tick_at < $1")
        .bind(cutoff)
        .execute(&ctx.pool)
        .await?
        .rows_affected();
    tracing::info!(jobs, ticks, %cutoff, "pruned finished jobs and old ticks");
    Ok(format!(
        "deleted {jobs} finished jobs and {ticks} scheduler ticks older than {cutoff}"
    ))
}
