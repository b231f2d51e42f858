//! The writer of delivery state. Every change of `notification_deliveries`, `delivery_attempt_log`,
//! the devices' state and a notification's status made by a worker is one of the statements
//! under this module:
//!
//! - `apply` (`apply.rs`): the planner's decisions for a chunk of units, in one transaction
//!   (claims, inserts, skips, holds, cancellations, expiries, operator reopens, and the units
//!   with nothing to send). A pure step turns the decisions into a plan of writes
//!   (`apply::Writes`), then one named step per statement group writes it. A claim marks the
//!   delivery `sending` with who sends it for which job (`sending_since`, `claimed_by`,
//!   `claim_job_id`): that is the in-flight attempt's record.
//! - `record` (`outcome.rs`): send outcomes, in one transaction per batch: delivery states,
//!   the attempts (each written once, with its result: a success on the delivery's own row,
//!   `attempt_id`, anything else in `delivery_attempt_log`; the view `delivery_attempts` is all
//!   of them), devices whose subscription is gone, retry jobs, the next stage of a `first`
//!   policy, notification states and job acknowledgements. No analytics event per delivery and
//!   no device `last_used_at`: both follow from the deliveries (views `delivery_events` and
//!   `device_last_use`). `outcome::resolve` decides what one outcome means (status, retry time)
//!   without I/O; [`backoff`] the retry delay.
//! - `interrupt` (`interrupt.rs`): deliveries left `sending` by a worker that died: their
//!   attempt is recorded `interrupted` from the claim's columns, and they are put back on their
//!   way.
//! - this file: the types passed between the drain and the recorder, and the statements the
//!   three share (failing a notification, closing open deliveries, enqueuing runs, settling).
//! - providers' reports (`delivered` / `undelivered`) and Twilio's 21610: `super::receipt`,
//!   called from `apply` and `record` inside their transactions.

mod apply;
mod interrupt;
mod outcome;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashlight_core::{
    jobs::{self, NewJob, QUEUE_NOTIFICATIONS},
    kinds::Channel,
    queue,
    states::DeliveryStatus,
};
use sqlx::{PgConnection, PgPool};

pub(crate) use apply::{Applied, apply};
pub(crate) use interrupt::{Stuck, interrupt};
pub use outcome::backoff;
pub(crate) use outcome::record;

use super::{Loaded, plan::Applicable};
use crate::channels::{SendError, Sent};

/// One unit's decision (a notification of a job), ready to be applied.
pub(crate) struct Decided {
    /// The apalis job.
    pub(crate) job_id: String,
    /// The notification this unit is about (it may no longer exist: then `loaded` is `None`).
    pub(crate) notification: i64,
    /// Its notification, when it exists.
    pub(crate) loaded: Option<Arc<Loaded>>,
    /// What to do (a wait is never applied: the drain holds the unit instead).
    pub(crate) decision: Applicable,
}

/// A delivery claimed for sending by this worker.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) channel: Channel,
    pub(crate) target: String,
    pub(crate) device_id: Option<i64>,
    /// This attempt's number.
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    /// The job that claimed it (acknowledged once its deliveries are recorded).
    pub(crate) job_id: String,
    /// When it was claimed (`sending_since`, the attempt's `started_at`).
    pub(crate) started: DateTime<Utc>,
    pub(crate) n: Arc<Loaded>,
}

/// A send's result, on its way to `record`.
pub(crate) struct Attempted {
    pub(crate) claimed: Claimed,
    pub(crate) finished: DateTime<Utc>,
    pub(crate) result: Result<Sent, SendError>,
}

/// Whether a database error is about the statement's rows (a value too long for an index, a
/// broken constraint, bad data: trying the same rows again fails again) rather than the
/// database's state (a lost connection, a deadlock, a serialization failure, no resources:
/// worth trying again). Row errors are isolated to the notification that caused them.
pub(crate) fn is_row_error(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    match db.code() {
        // 08 connection, 40 transaction rollback (deadlock, serialization), 53 insufficient
        // resources, 57 operator intervention (shutdown, cancel), 58 system error, XX internal.
        Some(code) => !["08", "40", "53", "55", "57", "58", "XX"]
            .iter()
            .any(|class| code.starts_with(class)),
        None => false,
    }
}

/// Records notifications `failed`, each with its reason: the worker could not plan, claim or
/// record them. Nothing else is touched; their other deliveries, if any, stay as they are.
pub(crate) async fn fail_notifications(conn: &mut PgConnection, failed: &[(i64, String)]) -> Result<(), sqlx::Error> {
    if failed.is_empty() {
        return Ok(());
    }
    let (ids, why): (Vec<i64>, Vec<&str>) = failed.iter().map(|(id, w)| (*id, w.as_str())).unzip();
    sqlx::query!(
        "UPDATE notifications n SET status = 'failed', status_reason = t.why FROM unnest($1::bigint[], $2::text[]) AS t(id, why)
         WHERE n.id = t.id AND n.id = ANY($1) AND n.status IN ('pending', 'processing')",
        &ids,
        &why as &[&str],
    )
    .execute(&mut *conn)
    .await?;
    for (id, why) in failed {
        tracing::error!(
            notification = id,
            reason = why.as_str(),
            "notification failed: it could not be planned, claimed or recorded"
        );
        metrics::counter!("dashlight_notifications_failed_total").increment(1);
    }
    Ok(())
}

/// A notification whose claim or record failed on its own rows ([`is_row_error`]) is recorded
/// `failed` with the error (`what`: "claimed", "recorded"), in a transaction of its own, so its
/// job and batch go on without it.
pub(crate) async fn fail_alone(pool: &PgPool, notification: i64, what: &str, error: &sqlx::Error) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    fail_notifications(&mut tx, &[(notification, format!("could not be {what}: {error}"))]).await?;
    tx.commit().await
}

/// Closes the open (not in-flight) deliveries of notifications `ids`.
async fn close_open(conn: &mut PgConnection, ids: &[i64], status: DeliveryStatus, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notification_deliveries SET status = $2, skip_reason = $3, next_attempt_at = NULL
         WHERE notification_id = ANY($1) AND status IN ('pending', 'retrying')",
        ids,
        status as DeliveryStatus,
        reason,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Another run of each notification at its time (retry, hold, not yet due): notifications due
/// at the same instant with the same priority share a job ([`jobs::delivery_jobs`]).
async fn enqueue_runs(conn: &mut PgConnection, runs: &[(i64, DateTime<Utc>, i16)], now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let runs: Vec<(i64, DateTime<Utc>, i32)> = runs.iter().map(|(id, at, p)| (*id, *at, i32::from(*p))).collect();
    let grouped = jobs::delivery_jobs(&runs, None);
    let jobs: Vec<NewJob> = grouped
        .iter()
        .map(|(job, at, priority)| NewJob::new(QUEUE_NOTIFICATIONS, job).due(*at, now).priority(*priority))
        .collect();
    queue::enqueue(conn, &jobs).await?;
    Ok(())
}

/// The statement of `settle_notifications`: `$1` the notification ids, `$2` now. Public for the
/// benchmark, which explains it; the function runs the same file through `query_file!`.
pub const SETTLE_SQL: &str = include_str!("../../../queries/settle_notifications.sql");

/// Notifications done when nothing is open any more; else checked again when the earliest open
/// delivery is due.
async fn settle_notifications(conn: &mut PgConnection, ids: &[i64], now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query_file!("queries/settle_notifications.sql", ids, now)
        .execute(conn)
        .await?;
    Ok(())
}
