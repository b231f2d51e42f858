//! The retention task: deliveries, attempts, receipts and inbound emails older than
//! `RETENTION_DELIVERIES`, and invoices (with their PDFs) and payments older than
//! `RETENTION_INVOICES`, deleted in small batches ([`dashlight_core::privacy::retention`]). A
//! run stops after its budget and the next one carries on. Each run first deletes the files
//! whose deletion is still requested ([`dashlight_core::files`]: an erased student's lesson
//! attachments the admin API could not delete right after the erasure).

use std::time::Instant;

use chrono::{DateTime, Utc};
use dashlight_core::{
    files::{self, DeleteError},
    privacy::retention::{self, Options, Purged},
};

use super::{Context, PeriodicError, invoices};

/// Deletes the requested files, then runs the purge with the default options; returns the
/// summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let files = delete_files(ctx).await?;
    let p = purge(ctx, now, Options::default()).await?;
    tracing::info!(?p, "retention purge");
    record_metrics(&p.0, p.1);
    Ok(format!(
        "purged {} deliveries, {} attempts, {} receipts, {} inbound emails, {} invoices and payments{}; {files}",
        p.0.deliveries,
        p.0.attempts,
        p.0.receipts,
        p.0.inbound_emails,
        p.1 + p.0.payments,
        if p.0.unfinished { " (more left for the next run)" } else { "" }
    ))
}

/// `dashlight_retention_purged_rows_total{table}`, the rows each run deleted, and
/// `dashlight_retention_unfinished`, 1 while the last run stopped at its budget with rows left:
/// at 1 day after day the purge no longer keeps up (docs/data-retention.md, "At a scale where
/// deleting rows is too slow").
fn record_metrics(p: &Purged, invoices: u64) {
    for (table, n) in [
        ("notification_deliveries", p.deliveries),
        ("delivery_attempt_log", p.attempts),
        ("delivery_receipts", p.receipts),
        ("inbound_emails", p.inbound_emails),
        ("invoices", invoices),
        ("payments", p.payments),
    ] {
        metrics::counter!("dashlight_retention_purged_rows_total", "table" => table).increment(n);
    }
    metrics::gauge!("dashlight_retention_unfinished").set(if p.unfinished { 1.0 } else { 0.0 });
}

/// Carries out the file deletions waiting in `ATTACHMENTS_DIR`; returns what happened, for the
/// summary line. A directory this worker cannot use is logged and said there, not an error: the
/// purge still runs and the requests wait.
pub async fn delete_files(ctx: &Context) -> Result<String, PeriodicError> {
    let d = match files::delete_requested(&ctx.pool, &ctx.config.attachments_dir).await {
        Ok(d) => d,
        Err(DeleteError::Db(e)) => return Err(e.into()),
        Err(e @ DeleteError::Dir { .. }) => {
            tracing::warn!(error = %e, "requested files not deleted: ATTACHMENTS_DIR cannot be used here");
            return Ok(format!("attachment files not deleted ({e})"));
        }
    };
    for (outcome, n) in [
        ("removed", d.removed),
        ("already_gone", d.already_gone),
        ("refused", d.refused),
        ("failed", d.failed),
    ] {
        metrics::counter!("dashlight_file_deletions_total", "outcome" => outcome).increment(n);
    }
    let mut line = format!("{} attachment files deleted", d.removed + d.already_gone);
    if d.already_gone > 0 {
        line += &format!(" ({} already gone)", d.already_gone);
    }
    if d.refused > 0 {
        line += &format!(", {} refused (outside ATTACHMENTS_DIR)", d.refused);
    }
    if d.failed > 0 {
        line += &format!(", {} failed (tried again next run)", d.failed);
    }
    Ok(line)
}

/// The purge with `o`: returns what went and how many invoices.
pub async fn purge(ctx: &Context, now: DateTime<Utc>, o: Options) -> Result<(Purged, u64), PeriodicError> {
    let mut out = match retention::cutoff(now, ctx.config.retention_deliveries) {
        Some(cutoff) => retention::purge_deliveries(&ctx.pool, cutoff, o).await?,
        None => Purged::default(),
    };
    let mut invoices_purged = 0;
    if let Some(cutoff) = ctx.config.retention_invoices.and_then(|r| retention::cutoff(now, r)) {
        let deadline = Instant::now() + o.budget;
        loop {
            if Instant::now() >= deadline {
                out.unfinished = true;
                break;
            }
            let n = invoices::purge_batch(ctx, cutoff, o.batch).await?;
            invoices_purged += n;
            if n < o.batch as u64 {
                let (payments, cut) = retention::purge_payments(&ctx.pool, cutoff, o).await?;
                out.payments = payments;
                out.unfinished |= cut;
                break;
            }
        }
    }
    Ok((out, invoices_purged))
}
