//! The periodic jobs the scheduler fires; they run here, in the workers. Each takes the later of
//! its tick and the clock as its "now", reads only what an index says is due, writes its
//! business rows and the notifications they imply in one transaction, and is idempotent: a
//! re-run (a second worker, a retried job, a caught-up tick) changes nothing.
//!
//! - [`recurring`]: weekly series → bookings over the horizon, conflicts reported.
//! - [`invoices`]: succeeded payments → gap-free numbered invoices with a PDF ([`invoice_pdf`]).
//! - [`rollup`]: `daily_rollups` of the last three school days, CRM lifetime values.
//! - [`agenda`]: instructors' 07:00 agenda, in their own time zone.
//! - [`test_reminders`]: driving-test reminders 7 days and 1 day before.
//! - [`crm`]: follow-ups for leads left alone for 7 days.
//! - [`prune`]: finished jobs and old scheduler ticks.
//! - [`offers`]: slot offers past their expiry marked `expired` (run with the reminder sweep).
//!
//! The periodic queue's apalis backend, which fetches nothing while the queue is paused, is part
//! of the queue driver in `dashlight_core::queue`.
//!
//! Notifications are only ever produced through [`dashlight_core::notify::create`]; deliveries
//! belong to [`crate::delivery`]. This module owns `invoices`, `invoice_counters`,
//! `payments.invoiced_at` and `daily_rollups`, and the rollup's `crm_contacts` figures.

pub mod agenda;
pub mod crm;
pub mod invoice_pdf;
pub mod invoices;
pub mod offers;
pub mod prune;
pub mod recurring;
pub mod retention;
pub mod rollup;
pub mod test_reminders;

use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    Clock, Config, DomainError,
    jobs::{PeriodicJob, PeriodicTask},
    series::local_instant,
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

    /// The school's own address (the bare address inside `MAIL_FROM`), where school-facing
    /// messages such as `crm_follow_up` and `recurring_conflict` go.
    pub fn school_email(&self) -> String {
        bare_address(&self.config.mail_from).to_owned()
    }
}

/// Why a periodic job failed.
#[derive(Debug, thiserror::Error)]
pub enum PeriodicError {
    /// The database failed; the job is retried.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A domain operation (booking, series) failed unexpectedly.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A file could not be written (invoice PDFs).
    #[error("{}: {source}", .path.display())]
    File {
        /// The file or directory at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
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
            let expired = offers::expire(ctx, now).await?;
            // Status callbacks that overtook the recording of their send.
            let mut tx = ctx.pool.begin().await?;
            let adopted = dashlight_core::receipts::adopt_early(&mut tx).await?;
            tx.commit().await?;
            format!(
                "recovered {recovered} stuck deliveries, re-enqueued {requeued} overdue notifications, {expired} slot offers expired, {adopted} early receipts adopted"
            )
        }
        PeriodicTask::RecurringBookings => recurring::run(ctx, now).await?,
        PeriodicTask::Invoices => invoices::run(ctx, now).await?,
        PeriodicTask::AnalyticsRollup => rollup::run(ctx, now).await?,
        PeriodicTask::DailyAgenda => agenda::run(ctx, now).await?,
        PeriodicTask::TestReminders => test_reminders::run(ctx, now).await?,
        PeriodicTask::CrmFollowUp => crm::run(ctx, now).await?,
        PeriodicTask::PruneJobs => prune::run(ctx, now).await?,
        PeriodicTask::Retention => retention::run(ctx, now).await?,
    })
}

/// The bare address of a `Name <addr>` mailbox.
pub fn bare_address(mailbox: &str) -> &str {
    match (mailbox.find('<'), mailbox.rfind('>')) {
        (Some(a), Some(b)) if a < b => mailbox[a + 1..b].trim(),
        _ => mailbox.trim(),
    }
}

/// A user's time zone, or `fallback` when the stored name is not one chrono-tz knows.
pub(crate) fn tz_or(name: &str, fallback: Tz) -> Tz {
    name.parse().unwrap_or(fallback)
}

/// `[start, end)` of the local day `day` in `tz`, as UTC instants (23 or 25 hours long on the
/// days the clocks change).
pub(crate) fn day_bounds(tz: Tz, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let next = day.succ_opt().expect("date in range");
    (local_instant(tz, day, NaiveTime::MIN), local_instant(tz, next, NaiveTime::MIN))
}

/// Which of `keys` already name a notification (one index lookup for the lot), so a re-run
/// skips them without burning ids.
pub(crate) async fn existing_keys(
    conn: &mut sqlx::PgConnection,
    keys: &[String],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let found: Vec<String> = sqlx::query_scalar!("SELECT dedupe_key FROM notifications WHERE dedupe_key = ANY($1)", keys)
        .fetch_all(conn)
        .await?;
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_days() {
        assert_eq!(bare_address("Dashlight <no-reply@localhost>"), "no-reply@localhost");
        assert_eq!(bare_address(" school@x.test "), "school@x.test");
        let london = chrono_tz::Europe::London;
        let (s, e) = day_bounds(london, NaiveDate::from_ymd_opt(2026, 3, 29).unwrap());
        assert_eq!(s.to_rfc3339(), "2026-03-29T00:00:00+00:00");
        assert_eq!((e - s).num_hours(), 23);
        let (s, e) = day_bounds(london, NaiveDate::from_ymd_opt(2026, 10, 25).unwrap());
        assert_eq!(s.to_rfc3339(), "2026-10-24T23:00:00+00:00");
        assert_eq!((e - s).num_hours(), 25);
    }
}
