//! The retention purge: rows past their retention are deleted in small batches ([`BATCH`] rows
//! per statement, each statement its own short transaction on a pool connection taken for that
//! statement only, followed by a rest at least four times as long as the statement took). So a purge never
//! holds locks or a connection that sends need, takes at most a fifth of one connection's time,
//! and never touches a row a send is still writing (unsettled deliveries are skipped, rows
//! locked by someone else are skipped with `SKIP LOCKED`). Deliveries are walked by id, so a
//! statement reads only its own rows, never those earlier ones deleted
//! ([`super::deliveries::purge_batch`]). A run stops after [`RUN_BUDGET`] and
//! the next run carries on where it stopped: catching up with a large backlog takes several
//! runs, not one long one.
//!
//! What goes (see `docs/data-retention.md`): deliveries created before `RETENTION_DELIVERIES`
//! with their attempts and receipts, and attempts, receipts and inbound emails of that age;
//! invoices and payments before `RETENTION_INVOICES` (the invoice rows and PDFs are the worker's
//! invoice task's, so it deletes those and calls [`purge_payments`] after). The daily rollups
//! keep their aggregates: they are computed from these rows only for the last three days, and
//! `RETENTION_DELIVERIES` cannot be shorter than a week (`MIN_RETENTION_DELIVERIES`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::{inbound_email, payments, receipts};

/// Rows per statement.
pub const BATCH: i64 = 250;

/// How long one run goes on at most.
pub const RUN_BUDGET: Duration = Duration::from_secs(120);

/// What one run deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Deliveries (with the attempts and receipts that went with them, not counted again).
    pub deliveries: u64,
    /// Attempts deleted on their own.
    pub attempts: u64,
    /// Receipts deleted on their own.
    pub receipts: u64,
    /// Inbound emails.
    pub inbound_emails: u64,
    /// Payments.
    pub payments: u64,
    /// Whether the run stopped at its budget with rows left (the next run carries on).
    pub unfinished: bool,
}

/// Options of one run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Rows per statement.
    pub batch: i64,
    /// Stop after this long.
    pub budget: Duration,
    /// Pause between statements, at least (gives the disk to the senders).
    pub pause: Duration,
    /// And at least this many times as long as the last statement took: with 1.0 the purge
    /// uses at most half of one connection's time, whatever the machine's speed; the default
    /// 4.0 a fifth. At the default, the reminders' lateness beside a purge is within the spread
    /// of the same database without it (BENCHMARKS.md, "2026-12-08").
    pub rest: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: BATCH,
            budget: RUN_BUDGET,
            pause: Duration::from_millis(5),
            rest: 4.0,
        }
    }
}

/// Runs steps from `at` until one says nothing is left (`None`) or the deadline passes; each step
/// gets a connection of its own and where the last one stopped. Returns (rows deleted, whether it
/// stopped at the deadline).
async fn drain<S, F, Fut>(pool: &PgPool, o: Options, deadline: Instant, mut at: S, mut step: F) -> Result<(u64, bool), sqlx::Error>
where
    S: Copy,
    F: FnMut(sqlx::pool::PoolConnection<sqlx::Postgres>, S) -> Fut,
    Fut: Future<Output = Result<(u64, Option<S>), sqlx::Error>>,
{
    let mut total = 0;
    loop {
        if Instant::now() >= deadline {
            return Ok((total, true));
        }
        let started = Instant::now();
        let (n, next) = step(pool.acquire().await?, at).await?;
        total += n;
        let Some(next) = next else {
            return Ok((total, false));
        };
        at = next;
        let rest = o.pause.max(started.elapsed().mul_f64(o.rest.max(0.0)));
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
    }
}

/// A step of a table purged `batch` rows at a time until a statement deletes fewer.
fn until_short(n: u64, batch: i64) -> (u64, Option<()>) {
    (n, (n >= batch.max(1) as u64).then_some(()))
}

/// Purges deliveries, attempts, receipts and inbound emails from before `cutoff`.
pub async fn purge_deliveries(pool: &PgPool, cutoff: DateTime<Utc>, o: Options) -> Result<Purged, sqlx::Error> {
    let deadline = Instant::now() + o.budget;
    let b = o.batch;
    let mut out = Purged::default();
    let (n, cut) = drain(pool, o, deadline, 0, |mut c, after| async move {
        let s = super::deliveries::purge_batch(&mut c, cutoff, b, after).await?;
        Ok((s.deleted, s.next))
    })
    .await?;
    out.deliveries = n;
    out.unfinished |= cut;
    let (n, cut) = drain(pool, o, deadline, (), |mut c, ()| async move {
        Ok(until_short(super::deliveries::purge_attempts_batch(&mut c, cutoff, b).await?, b))
    })
    .await?;
    out.attempts = n;
    out.unfinished |= cut;
    let (n, cut) = drain(pool, o, deadline, (), |mut c, ()| async move {
        Ok(until_short(receipts::purge_batch(&mut c, cutoff, b).await?, b))
    })
    .await?;
    out.receipts = n;
    out.unfinished |= cut;
    let (n, cut) = drain(pool, o, deadline, (), |mut c, ()| async move {
        Ok(until_short(inbound_email::purge_batch(&mut c, cutoff, b).await?, b))
    })
    .await?;
    out.inbound_emails = n;
    out.unfinished |= cut;
    Ok(out)
}

/// Purges payments from before `cutoff` that no longer have an invoice (call it after the
/// invoices of that age are gone). Returns (how many, whether it stopped at the budget).
pub async fn purge_payments(pool: &PgPool, cutoff: DateTime<Utc>, o: Options) -> Result<(u64, bool), sqlx::Error> {
    let deadline = Instant::now() + o.budget;
    let b = o.batch;
    drain(pool, o, deadline, (), |mut c, ()| async move {
        Ok(until_short(payments::purge_batch(&mut c, cutoff, b).await?, b))
    })
    .await
}

/// `now - retention`, or `None` when the retention does not fit (never purges then).
pub fn cutoff(now: DateTime<Utc>, retention: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(retention).ok().and_then(|d| now.checked_sub_signed(d))
}
