//! Recurring bookings: every active weekly series that is not yet booked through the horizon is
//! expanded with [`series::expand`] and its conflicts reported with [`series::notify_conflicts`].
//!
//! Series are handled in batches, one transaction per batch and a savepoint per series, so one
//! series failing (its student gone, a bad time zone) rolls back only its own bookings and
//! notifications. Expansion never looks at a date before today in the series' time zone nor
//! touches a booking that exists, so ending or editing a series affects only future bookings,
//! and a second run books nothing (`expanded_through` moves on; one booking per occurrence is
//! also a unique index). Owns no table: bookings belong to `dashlight_core::bookings`.

use chrono::{DateTime, Utc};
use dashlight_core::{bookings::BookingSettings, series};
use sqlx::Connection;

use super::{Context, PeriodicError};

/// Series per transaction.
const BATCH: usize = 50;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Series expanded.
    pub series: usize,
    /// Bookings created.
    pub booked: usize,
    /// Occurrences not booked because the instructor could not take them.
    pub conflicts: usize,
    /// Occurrences not booked because their time had passed.
    pub past: usize,
    /// `recurring_conflict` notifications created.
    pub notified: usize,
    /// Series that have no occurrences left.
    pub ended: usize,
    /// Series whose expansion failed (rolled back; tried again next run).
    pub failed: usize,
}

/// Expands every active series that is due; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let o = expand_all(ctx, now).await?;
    Ok(format!(
        "expanded {} series: booked {}, {} conflicts ({} notifications), {} past, {} ended, {} failed",
        o.series, o.booked, o.conflicts, o.notified, o.past, o.ended, o.failed
    ))
}

/// Expands every active series whose `expanded_through` is short of the horizon.
pub async fn expand_all(ctx: &Context, now: DateTime<Utc>) -> Result<Outcome, PeriodicError> {
    let settings = BookingSettings::from_config(&ctx.config);
    let horizon = ctx.config.recurring_horizon_days;
    let school = ctx.school_email();
    // booking_series_active_idx. The horizon check spares series already booked far enough; it
    // reads the UTC date plus a day (no local date is later), so a series whose time zone is
    // broken still reaches `expand` and fails alone instead of failing the scan.
    let ids: Vec<i64> = sqlx::query_scalar!(
        "SELECT id FROM booking_series
         WHERE status = 'active'
           AND (expanded_through IS NULL OR expanded_through < (($1 AT TIME ZONE 'UTC')::date + $2::int + 1))
         ORDER BY id",
        now,
        horizon as i32,
    )
    .fetch_all(&ctx.pool)
    .await?;

    let mut out = Outcome::default();
    for chunk in ids.chunks(BATCH) {
        let mut tx = ctx.pool.begin().await?;
        for &id in chunk {
            let mut sp = tx.begin().await?;
            let result = async {
                let report = series::expand(&mut sp, &settings, id, now, horizon).await?;
                let notified = series::notify_conflicts(&mut sp, &report, Some(&school), now).await?;
                Ok::<_, PeriodicError>((report, notified))
            }
            .await;
            match result {
                Ok((report, notified)) => {
                    sp.commit().await?;
                    out.series += 1;
                    out.booked += report.created.len();
                    out.conflicts += report.skipped.iter().filter(|s| s.conflict).count();
                    out.past += report.skipped.iter().filter(|s| !s.conflict).count();
                    out.notified += notified;
                    out.ended += usize::from(report.ended);
                    for b in &report.created {
                        tracing::info!(series = id, booking = b.id, student = b.student_id, instructor = b.instructor_id, start = %b.start_time, "series occurrence booked");
                    }
                    for s in report.skipped.iter().filter(|s| s.conflict) {
                        tracing::info!(series = id, date = %s.date, reason = %s.reason, "series occurrence not booked: conflict reported");
                    }
                    if report.ended {
                        tracing::info!(series = id, "series has no occurrences left: ended");
                    }
                }
                Err(e) => {
                    sp.rollback().await?;
                    out.failed += 1;
                    tracing::warn!(series = id, error = %e, "expanding a series failed; rolled back, will retry next run");
                }
            }
        }
        tx.commit().await?;
    }
    Ok(out)
}
