//! The writer of delivery state. Every change of `notification_deliveries`, `delivery_attempt_log`,
//! the devices' state and a notification's status made by a worker is one of the statements here:
//!
//! - `apply`: the planner's decisions for a chunk of jobs, in one transaction (claims, inserts,
//!   skips, holds, cancellations, expiries, operator reopens, and the acknowledgement of the jobs
//!   with nothing to send). A claim marks the delivery `sending` with who sends it for which job
//!   (`sending_since`, `claimed_by`, `claim_job_id`): that is the in-flight attempt's record.
//! - `record`: send outcomes, in one transaction per batch: delivery states, the attempts (each
//!   written once, with its result: a success on the delivery's own row, `attempt_id`, anything
//!   else in `delivery_attempt_log`; the view `delivery_attempts` is all of them), devices whose
//!   subscription is gone, retry jobs, the next stage of a `first` policy, notification states
//!   and job acknowledgements. No analytics event per delivery and no device `last_used_at`:
//!   both follow from the deliveries (views `delivery_events` and `device_last_use`).
//! - `interrupt`: deliveries left `sending` by a worker that died: their attempt is recorded
//!   `interrupted` from the claim's columns, and they are put back on their way.
//! - providers' reports (`delivered` / `undelivered`) and Twilio's 21610: `super::receipt`,
//!   called from `apply` and `record` inside their transactions.
//!
//! `resolve` decides what one outcome means (status, retry time) without I/O.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use dashlight_core::{
    controls,
    jobs::{self, NewJob, QUEUE_NOTIFICATIONS},
    kinds::{Channel, Policy},
    queue::{self, JobOutcome},
    states::{AttemptOutcome, DeliveryStatus},
};
use rand::Rng;
use sqlx::{PgConnection, PgPool};

use super::{DeliverySettings, Loaded, NotificationRow, plan::Decision, receipt};
use crate::channels::{SendError, Sent};

const INTERRUPTED: &str = "the worker stopped mid-send; the provider may have accepted it";

/// One unit's decision (a notification of a job), ready to be applied.
pub(crate) struct Decided {
    /// The apalis job.
    pub(crate) job_id: String,
    /// The notification this unit is about (it may no longer exist: then `loaded` is `None`).
    pub(crate) notification: i64,
    /// Its notification, when it exists.
    pub(crate) loaded: Option<Arc<Loaded>>,
    /// What to do.
    pub(crate) decision: Decision,
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

/// What `apply` did.
#[derive(Default)]
pub(crate) struct Applied {
    /// Deliveries to send now.
    pub(crate) sends: Vec<Claimed>,
    /// Units (job, notification) waiting for their deliveries' results.
    pub(crate) open: Vec<(String, i64)>,
    /// Units finished here (nothing to send), with what became of them; their jobs are
    /// acknowledged by `record` once every unit of the job is finished.
    pub(crate) finished: Vec<(String, JobOutcome)>,
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

struct Inserted {
    id: i64,
    notification_id: i64,
    channel: Channel,
    target: String,
    device_id: Option<i64>,
    status: DeliveryStatus,
    next_attempt_at: Option<DateTime<Utc>>,
}

struct ClaimedRow {
    id: i64,
    notification_id: i64,
    channel: Channel,
    target: String,
    device_id: Option<i64>,
    attempts: i32,
    max_attempts: i32,
}

/// Writes the decisions of a chunk of units in one transaction, as the worker `worker`, and
/// returns the deliveries it claimed, the units waiting for them and the units finished here.
/// A unit that cannot be planned (`Kill`) has its notification recorded `failed`.
pub(crate) async fn apply(
    pool: &PgPool,
    settings: &DeliverySettings,
    worker: &str,
    decided: &[Decided],
    now: DateTime<Utc>,
) -> Result<Applied, sqlx::Error> {
    let max_attempts = i32::try_from(settings.max_attempts).unwrap_or(i32::MAX);
    let mut kills = Vec::new();
    let mut unplannable: Vec<(i64, String)> = Vec::new();
    let mut reopen = Vec::new();
    let mut cancel = Vec::new();
    let mut withdraw = Vec::new();
    let mut expire = Vec::new();
    let mut later = Vec::new();
    let mut claim = Vec::new();
    let mut claim_nids = Vec::new();
    let mut settle = Vec::new();
    let mut receipts = Vec::new();
    // The planned inserts, column by column.
    let (mut nids, mut channels, mut targets, mut devices, mut statuses, mut reasons, mut attempts, mut holds) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut job_of: HashMap<i64, &str> = HashMap::new();
    let mut loaded_of: HashMap<i64, &Arc<Loaded>> = HashMap::new();
    for d in decided {
        if let Some(l) = &d.loaded
            && !matches!(d.decision, Decision::Receipt(_))
        {
            // The drain decides one job per notification; a second would find nothing to add.
            // (A receipt's job sends nothing: it never owns a claimed delivery.)
            job_of.entry(l.n.id).or_insert(&d.job_id);
            loaded_of.entry(l.n.id).or_insert(l);
        }
        let nid = d.loaded.as_ref().map(|l| l.n.id);
        match (&d.decision, nid) {
            (Decision::Kill(why), _) => {
                kills.push((d.job_id.clone(), JobOutcome::Killed(why.clone())));
                unplannable.push((d.notification, why.clone()));
            }
            (Decision::Cancel, Some(id)) => cancel.push(id),
            (Decision::Withdraw(why), Some(id)) => withdraw.push((id, why.as_str())),
            (Decision::Expire, Some(id)) => expire.push(id),
            (Decision::Later(at), Some(id)) => later.push((id, *at, d.loaded.as_ref().map_or(0, |l| l.n.priority))),
            (
                Decision::Deliver {
                    reopen: r,
                    insert,
                    claim: c,
                },
                Some(id),
            ) => {
                reopen.extend(*r);
                for id in c {
                    claim.push(*id);
                    claim_nids.push(d.loaded.as_ref().map_or(0, |l| l.n.id));
                }
                for p in insert {
                    let status = match (&p.skip, p.hold_until) {
                        (Some(_), _) => DeliveryStatus::Skipped,
                        (None, Some(_)) => DeliveryStatus::Pending,
                        (None, None) => DeliveryStatus::Sending,
                    };
                    nids.push(id);
                    channels.push(p.channel);
                    targets.push(p.target.as_str());
                    devices.push(p.device_id);
                    statuses.push(status);
                    reasons.push(p.skip.as_deref());
                    attempts.push(i32::from(status == DeliveryStatus::Sending));
                    holds.push(p.hold_until);
                    if let Some(reason) = &p.skip {
                        tracing::info!(notification = id, kind = d.loaded.as_ref().map(|l| l.n.kind.as_str()), channel = p.channel.as_str(), %reason, "delivery skipped");
                        metrics::counter!("dashlight_deliveries_total", "channel" => p.channel.as_str(), "outcome" => "skipped")
                            .increment(1);
                    }
                }
                settle.push(id);
            }
            (Decision::Receipt(m), Some(_)) => receipts.extend(m.clone()),
            // A decision about a notification that does not exist is always `Kill`.
            (_, None) => kills.push((d.job_id.clone(), JobOutcome::Killed("the notification does not exist".into()))),
            (Decision::Wait(_), Some(_)) => unreachable!("waiting jobs are not applied"),
        }
    }

    let mut tx = pool.begin().await?;
    fail_notifications(&mut tx, &unplannable).await?;
    // A paused channel's sends wait `pending`, the pause as their reason (its resume wakes them).
    let mut hold_reasons: Vec<Option<String>> = vec![None; nids.len()];
    let mut held: Vec<(i64, String)> = Vec::new();
    if statuses.contains(&DeliveryStatus::Sending) || !claim.is_empty() {
        let paused = controls::held_channels(&mut tx).await?;
        let why = |c: Channel| paused.iter().find(|(p, _)| *p == c).map(|(_, w)| w.clone());
        if !paused.is_empty() {
            for i in 0..nids.len() {
                if reasons[i].is_none()
                    && holds[i].is_none()
                    && let Some(w) = why(channels[i])
                {
                    statuses[i] = DeliveryStatus::Pending;
                    attempts[i] = 0;
                    hold_reasons[i] = Some(w);
                }
            }
            let mut kept = (Vec::new(), Vec::new());
            for (did, nid) in claim.iter().zip(&claim_nids) {
                let channel = loaded_of
                    .get(nid)
                    .and_then(|l| l.deliveries.iter().find(|d| d.id == *did))
                    .map(|d| d.channel);
                match channel.and_then(why) {
                    Some(w) => held.push((*did, w)),
                    None => {
                        kept.0.push(*did);
                        kept.1.push(*nid);
                    }
                }
            }
            (claim, claim_nids) = kept;
        }
    }
    if !held.is_empty() {
        let (ids, why): (Vec<i64>, Vec<&str>) = held.iter().map(|(d, w)| (*d, w.as_str())).unzip();
        sqlx::query!(
            "UPDATE notification_deliveries d SET hold_reason = t.why FROM unnest($1::bigint[], $2::text[]) AS t(id, why)
             WHERE d.id = t.id AND d.id = ANY($1) AND d.status IN ('pending', 'retrying')",
            &ids,
            &why as &[&str],
        )
        .execute(&mut *tx)
        .await?;
    }
    let held_sends = hold_reasons.iter().filter(|r| r.is_some()).count() + held.len();
    if held_sends > 0 {
        tracing::info!(deliveries = held_sends, "sends held: their channel is paused");
        metrics::counter!("dashlight_sends_held_total", "reason" => "channel_paused").increment(held_sends as u64);
    }
    for (id, why) in &withdraw {
        close_open(&mut tx, &[*id], DeliveryStatus::Cancelled, why).await?;
        sqlx::query!(
            "UPDATE notifications SET status = 'cancelled', status_reason = $2 WHERE id = $1 AND status IN ('pending', 'processing')",
            *id,
            *why,
        )
        .execute(&mut *tx)
        .await?;
        tracing::info!(notification = id, reason = why, "notification cancelled: its job was cancelled");
    }
    if !reopen.is_empty() {
        // An `undelivered` delivery's successful attempt moves off its row into the attempt log
        // before the row is claimed again.
        let reopened = sqlx::query!(
            r#"WITH o AS (
                SELECT id FROM notification_deliveries WHERE id = ANY($1) AND status IN ('failed', 'dead', 'undelivered') FOR UPDATE)
             , moved AS (
                INSERT INTO delivery_attempt_log (id, delivery_id, attempt, job_id, worker, started_at, finished_at, outcome, provider_message_id)
                OVERRIDING SYSTEM VALUE
                SELECT d.attempt_id, d.id, d.attempts, d.claim_job_id, d.claimed_by, d.sending_since, d.sent_at, 'sent', d.provider_message_id
                FROM notification_deliveries d JOIN o ON o.id = d.id WHERE d.attempt_id IS NOT NULL
                ON CONFLICT DO NOTHING)
             UPDATE notification_deliveries d
             SET status = 'retrying', next_attempt_at = NULL, max_attempts = GREATEST(d.max_attempts, d.attempts + 1),
                 attempt_id = NULL, sending_since = NULL, claimed_by = NULL, claim_job_id = NULL
             FROM o WHERE d.id = o.id RETURNING d.id, d.notification_id"#,
            &reopen,
        )
        .fetch_all(&mut *tx)
        .await?;
        let nids: Vec<i64> = reopened.iter().map(|r| r.notification_id).collect();
        sqlx::query!(
            "UPDATE notifications SET status = 'processing', status_reason = 'retried by operator' WHERE id = ANY($1) AND status <> 'cancelled'",
            &nids,
        )
        .execute(&mut *tx)
        .await?;
        for r in reopened {
            tracing::info!(
                notification = r.notification_id,
                delivery = r.id,
                "delivery reopened by operator retry"
            );
        }
    }
    if !cancel.is_empty() {
        close_open(&mut tx, &cancel, DeliveryStatus::Cancelled, "the booking changed first").await?;
    }
    if !expire.is_empty() {
        let reason = "the lesson had started before it could be sent";
        close_open(&mut tx, &expire, DeliveryStatus::Skipped, reason).await?;
        sqlx::query!(
            "UPDATE notifications SET status = 'skipped', status_reason = $2 WHERE id = ANY($1) AND status IN ('pending', 'processing')",
            &expire,
            reason,
        )
        .execute(&mut *tx)
        .await?;
        for id in &expire {
            tracing::info!(notification = id, "skipped: expired");
        }
    }

    let mut sends = Vec::new();
    let mut requeue: Vec<(i64, DateTime<Utc>, i16)> = later;
    if !nids.is_empty() {
        // The job of each delivery to send, so the claim names who sends it for what (the attempt
        // record is written once, with the result; a worker that dies mid-send leaves these on
        // the delivery for `interrupt`).
        let claim_jobs: Vec<Option<&str>> = nids
            .iter()
            .zip(&statuses)
            .map(|(nid, s)| (*s == DeliveryStatus::Sending).then(|| job_of[nid]))
            .collect();
        let inserted: Vec<Inserted> = sqlx::query_as!(
            Inserted,
            r#"INSERT INTO notification_deliveries (notification_id, channel, target, device_id, status, skip_reason, attempts, max_attempts,
                                                  sending_since, next_attempt_at, claimed_by, claim_job_id, hold_reason)
             SELECT t.nid, t.channel, t.target, t.device, t.status, t.reason, t.attempts, $8,
                    CASE WHEN t.status = 'sending' THEN $9::timestamptz END, t.hold, CASE WHEN t.status = 'sending' THEN $10 END, t.job, t.held
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[], $11::timestamptz[], $12::text[], $13::text[])
                  AS t(nid, channel, target, device, status, reason, attempts, hold, job, held)
             ON CONFLICT (notification_id, channel, target) DO NOTHING
             RETURNING id, notification_id, channel AS "channel: Channel", target, device_id, status AS "status: DeliveryStatus", next_attempt_at"#,
            &nids,
            &channels as &[Channel],
            &targets as &[&str],
            &devices as &[Option<i64>],
            &statuses as &[DeliveryStatus],
            &reasons as &[Option<&str>],
            &attempts,
            max_attempts,
            now,
            worker,
            &holds as &[Option<DateTime<Utc>>],
            &claim_jobs as &[Option<&str>],
            &hold_reasons as &[Option<String>],
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in inserted {
            let l = loaded_of[&r.notification_id];
            match r.status {
                DeliveryStatus::Sending => sends.push(Claimed {
                    id: r.id,
                    channel: r.channel,
                    target: r.target,
                    device_id: r.device_id,
                    attempt: 1,
                    max_attempts,
                    job_id: job_of[&r.notification_id].to_owned(),
                    started: now,
                    n: l.clone(),
                }),
                DeliveryStatus::Pending => {
                    if let Some(at) = r.next_attempt_at {
                        requeue.push((r.notification_id, at, l.n.priority));
                    }
                }
                _ => {}
            }
        }
    }
    if !claim.is_empty() {
        let job_ids: Vec<&str> = claim_nids.iter().map(|n| job_of[n]).collect();
        // The claim of due deliveries: only one worker moves a delivery to `sending`, and only
        // while it is still due (another worker may have sent and rescheduled it meanwhile).
        let claimed: Vec<ClaimedRow> = sqlx::query_as!(
            ClaimedRow,
            r#"UPDATE notification_deliveries d
             SET status = 'sending', attempts = d.attempts + 1, sending_since = $2, claimed_by = $4, hold_reason = NULL, claim_job_id = j.job
             FROM unnest($1::bigint[], $3::text[]) AS j(did, job)
             WHERE d.id = j.did AND d.id = ANY($1) AND d.status IN ('pending', 'retrying') AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $2)
             RETURNING d.id, d.notification_id, d.channel AS "channel: Channel", d.target, d.device_id, d.attempts, d.max_attempts"#,
            &claim,
            now,
            &job_ids as &[&str],
            worker,
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in claimed {
            sends.push(Claimed {
                id: r.id,
                channel: r.channel,
                target: r.target,
                device_id: r.device_id,
                attempt: r.attempts,
                max_attempts: r.max_attempts,
                job_id: job_of[&r.notification_id].to_owned(),
                started: now,
                n: loaded_of[&r.notification_id].clone(),
            });
        }
    }
    requeue.extend(receipt::apply(&mut tx, &receipts, now).await?);
    enqueue_runs(&mut tx, &requeue, now).await?;

    // Notifications with nothing in flight here are settled now; the others when their results
    // are recorded. Jobs likewise.
    let sending: std::collections::HashSet<i64> = sends.iter().map(|c| c.n.n.id).collect();
    settle.retain(|id| !sending.contains(id));
    settle_notifications(&mut tx, &settle, now).await?;
    let mut finished = kills;
    let mut open = Vec::new();
    for d in decided {
        if matches!(d.decision, Decision::Kill(_)) || d.loaded.is_none() {
            continue;
        }
        if sending.contains(&d.notification) && !matches!(d.decision, Decision::Receipt(_)) {
            open.push((d.job_id.clone(), d.notification));
        } else {
            finished.push((d.job_id.clone(), JobOutcome::Done));
        }
    }
    tx.commit().await?;
    Ok(Applied { sends, open, finished })
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
pub const SETTLE_SQL: &str = include_str!("../../queries/settle_notifications.sql");

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

/// What one attempt's result means for its delivery and its attempt record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolution {
    /// New delivery status: `sent`, `retrying`, `dead` or `failed`.
    pub(crate) status: DeliveryStatus,
    /// Attempt outcome.
    pub(crate) outcome: AttemptOutcome,
    /// The error (delivery `last_error` and attempt `error`).
    pub(crate) error: Option<String>,
    /// The provider's id of a sent message.
    pub(crate) provider_id: Option<String>,
    /// When the retry is due (`retrying` only).
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
    /// The provider's `Retry-After`, in ms, as it gave it (capped to fit).
    pub(crate) retry_after_ms: Option<i64>,
    /// The push subscription is gone: disable the device.
    pub(crate) disable_device: bool,
    /// The retry delay chosen (`retrying` only).
    pub(crate) retry_in: Option<Duration>,
}

/// Decides the fate of a delivery from one attempt's result: sent; transient with attempts left
/// → `retrying` after [`backoff`]; transient out of attempts → `dead`; permanent → `failed`.
/// A provider's number never overflows a clock: `Retry-After` is capped at the longest retry
/// delay and the arithmetic is checked.
pub(crate) fn resolve(
    result: &Result<Sent, SendError>,
    attempt: i32,
    max_attempts: i32,
    finished: DateTime<Utc>,
    settings: &DeliverySettings,
) -> Resolution {
    let mut r = Resolution {
        status: DeliveryStatus::Sent,
        outcome: AttemptOutcome::Sent,
        error: None,
        provider_id: None,
        next_attempt_at: None,
        retry_after_ms: None,
        disable_device: false,
        retry_in: None,
    };
    match result {
        Ok(sent) => {
            r.provider_id = sent.provider_message_id.clone();
        }
        Err(e) => {
            r.error = Some(e.to_string());
            match e {
                SendError::Transient { retry_after, .. } => {
                    r.outcome = AttemptOutcome::Transient;
                    r.retry_after_ms = retry_after.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                    if attempt < max_attempts {
                        let delay = backoff(attempt.max(1) as u32, settings.retry_base, settings.retry_max, *retry_after);
                        r.status = DeliveryStatus::Retrying;
                        r.retry_in = Some(delay);
                        r.next_attempt_at = Some(
                            chrono::Duration::from_std(delay)
                                .ok()
                                .and_then(|d| finished.checked_add_signed(d))
                                .unwrap_or(DateTime::<Utc>::MAX_UTC),
                        );
                    } else {
                        r.status = DeliveryStatus::Dead;
                    }
                }
                SendError::Permanent { subscription_gone, .. } => {
                    r.outcome = AttemptOutcome::Permanent;
                    r.status = DeliveryStatus::Failed;
                    r.disable_device = *subscription_gone;
                }
            }
        }
    }
    r
}

/// Exponential backoff with ±20 % jitter, at least the provider's `Retry-After`, never more
/// than `max` (a provider's `Retry-After` beyond it is capped).
pub fn backoff(attempt: u32, base: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(max);
    let jitter = rand::rng().random_range(0.8..1.2);
    let d = exp.mul_f64(jitter).min(max);
    match retry_after {
        Some(ra) => d.max(ra.min(max)),
        None => d,
    }
}

/// Records send outcomes and job acknowledgements in one transaction, as the worker `worker`.
pub(crate) async fn record(
    pool: &PgPool,
    settings: &DeliverySettings,
    worker: &str,
    deliveries: &[Attempted],
    jobs: &[(String, JobOutcome)],
    now: DateTime<Utc>,
) -> Result<Vec<Resolution>, sqlx::Error> {
    let res: Vec<Resolution> = deliveries
        .iter()
        .map(|a| resolve(&a.result, a.claimed.attempt, a.claimed.max_attempts, a.finished, settings))
        .collect();
    let mut tx = pool.begin().await?;
    if !deliveries.is_empty() {
        let ids: Vec<i64> = deliveries.iter().map(|a| a.claimed.id).collect();
        let attempt_no: Vec<i32> = deliveries.iter().map(|a| a.claimed.attempt).collect();
        let statuses: Vec<DeliveryStatus> = res.iter().map(|r| r.status).collect();
        let finished: Vec<DateTime<Utc>> = deliveries.iter().map(|a| a.finished).collect();
        let provider: Vec<Option<&str>> = res.iter().map(|r| r.provider_id.as_deref()).collect();
        let errors: Vec<Option<&str>> = res.iter().map(|r| r.error.as_deref()).collect();
        let next: Vec<Option<DateTime<Utc>>> = res.iter().map(|r| r.next_attempt_at).collect();
        // A success recorded while the delivery is still `sending` this attempt keeps its attempt
        // on the delivery row (`attempt_id`; the claim's columns stay as the attempt's worker, job
        // and start). Any other result, and a success that comes after `interrupt` recorded the
        // attempt, goes to the attempt log. A result for an attempt older than the delivery's
        // current one (recorded `interrupted`, and the delivery claimed again since) changes only
        // its attempt's record, not the delivery.
        let kept: std::collections::HashSet<i64> = sqlx::query_scalar!(
            r#"UPDATE notification_deliveries d
             SET status = t.status, sent_at = CASE WHEN t.status = 'sent' THEN t.finished ELSE d.sent_at END,
                 provider_message_id = coalesce(t.provider, d.provider_message_id), last_error = t.error,
                 next_attempt_at = t.next,
                 attempt_id = CASE WHEN t.status = 'sent' AND d.status = 'sending'
                                   THEN nextval('delivery_attempt_log_id_seq') END,
                 sending_since = CASE WHEN t.status = 'sent' AND d.status = 'sending' THEN d.sending_since END,
                 claimed_by = CASE WHEN t.status = 'sent' AND d.status = 'sending' THEN d.claimed_by END,
                 claim_job_id = CASE WHEN t.status = 'sent' AND d.status = 'sending' THEN d.claim_job_id END
             FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::timestamptz[], $7::int[])
                  AS t(id, status, finished, provider, error, next, attempt)
             WHERE d.id = t.id AND d.id = ANY($1) AND d.attempts = t.attempt
             RETURNING CASE WHEN d.attempt_id IS NOT NULL THEN d.id END AS "id?""#,
            &ids,
            &statuses as &[DeliveryStatus],
            &finished,
            &provider as &[Option<&str>],
            &errors as &[Option<&str>],
            &next as &[Option<DateTime<Utc>>],
            &attempt_no,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .flatten()
        .collect();
        let logged: Vec<usize> = (0..deliveries.len()).filter(|&i| !kept.contains(&ids[i])).collect();
        if !logged.is_empty() {
            let ids: Vec<i64> = logged.iter().map(|&i| ids[i]).collect();
            let attempt_no: Vec<i32> = logged.iter().map(|&i| attempt_no[i]).collect();
            let finished: Vec<DateTime<Utc>> = logged.iter().map(|&i| finished[i]).collect();
            let outcomes: Vec<AttemptOutcome> = logged.iter().map(|&i| res[i].outcome).collect();
            let errors: Vec<Option<&str>> = logged.iter().map(|&i| errors[i]).collect();
            let provider: Vec<Option<&str>> = logged.iter().map(|&i| provider[i]).collect();
            let retry_after: Vec<Option<i64>> = logged.iter().map(|&i| res[i].retry_after_ms).collect();
            let started: Vec<DateTime<Utc>> = logged.iter().map(|&i| deliveries[i].claimed.started).collect();
            let jobs_of: Vec<&str> = logged.iter().map(|&i| deliveries[i].claimed.job_id.as_str()).collect();
            // The attempt record, written once now that its result is known (while it was in
            // flight, the delivery's `sending_since`, `claimed_by` and `claim_job_id` said the
            // same). A record that comes after `interrupt` already recorded this attempt (a
            // worker thought dead) tells what really happened.
            sqlx::query!(
                "INSERT INTO delivery_attempt_log (delivery_id, attempt, job_id, worker, started_at, finished_at, outcome, error, provider_message_id, retry_after_ms)
                 SELECT t.id, t.attempt, t.job, $8, t.started, t.finished, t.outcome, t.error, t.provider, t.retry_after
                 FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::bigint[], $9::timestamptz[], $10::text[])
                      AS t(id, attempt, finished, outcome, error, provider, retry_after, started, job)
                 ON CONFLICT (delivery_id, attempt) DO UPDATE
                 SET finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome, error = EXCLUDED.error,
                     provider_message_id = EXCLUDED.provider_message_id, retry_after_ms = EXCLUDED.retry_after_ms",
                &ids,
                &attempt_no,
                &finished,
                &outcomes as &[AttemptOutcome],
                &errors as &[Option<&str>],
                &provider as &[Option<&str>],
                &retry_after as &[Option<i64>],
                worker,
                &started,
                &jobs_of as &[&str],
            )
            .execute(&mut *tx)
            .await?;
        }

        // Devices: subscriptions gone. (A device's last use is not written per send: it is the
        // last `sent_at` of its deliveries, the view `device_last_use`.)
        let (gone, why): (Vec<i64>, Vec<Option<&str>>) = deliveries
            .iter()
            .zip(&res)
            .filter(|(_, r)| r.disable_device)
            .filter_map(|(a, r)| a.claimed.device_id.map(|d| (d, r.error.as_deref())))
            .unzip();
        if !gone.is_empty() {
            sqlx::query!(
                "UPDATE user_devices u SET active = false, disabled_reason = t.why
                 FROM unnest($1::bigint[], $2::text[]) AS t(id, why) WHERE u.id = t.id",
                &gone,
                &why as &[Option<&str>],
            )
            .execute(&mut *tx)
            .await?;
        }

        // Jobs: retries at their time; under `first`, a failure moves on to the next channel
        // through a job that the planner turns into that stage.
        let mut runs = Vec::new();
        let mut next_stage = std::collections::HashSet::new();
        for (a, r) in deliveries.iter().zip(&res) {
            let n = &a.claimed.n.n;
            if let Some(at) = r.next_attempt_at {
                runs.push((n.id, at, n.priority));
            } else if r.status.is_failure() && n.policy == Policy::First && next_stage.insert(n.id) {
                runs.push((n.id, a.finished, n.priority));
            }
        }
        enqueue_runs(&mut tx, &runs, now).await?;
        receipt::suppress_opted_out(&mut tx, deliveries).await?;

        // No analytics event per delivery: `notification_sent` / `notification_failed` follow
        // from the deliveries (the view `delivery_events`; the daily rollup counts them there).

        let mut touched: Vec<i64> = deliveries
            .iter()
            .map(|a| a.claimed.n.n.id)
            .filter(|id| !next_stage.contains(id))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        settle_notifications(&mut tx, &touched, now).await?;
    }
    queue::JobQueue::complete(&mut tx, worker, jobs).await?;
    tx.commit().await?;
    for (a, r) in deliveries.iter().zip(&res) {
        log_resolution(&a.claimed.n.n, &a.claimed, a.finished, r);
    }
    Ok(res)
}

/// Which in-doubt deliveries `interrupt` recovers.
pub(crate) enum Stuck<'a> {
    /// `sending` since before this time (the sweep's net).
    Since(DateTime<Utc>),
    /// Whose current attempt belongs to one of these workers (their jobs were just rescued).
    Of(&'a [String]),
}

/// Deliveries left `sending` by a worker that died: their attempt is recorded `interrupted`,
/// they go back to `retrying`, and their notifications get a job now. Returns how many.
///
/// A delivery another transaction has locked is being recorded by a live worker at this moment:
/// it is skipped (`SKIP LOCKED`), not waited for. Waiting deadlocked with a recorder locking the
/// same deliveries in another order (seen when a sweep ran with a clock far ahead of the worker's
/// sends); a delivery that is really stuck is taken by the next sweep.
pub(crate) async fn interrupt(pool: &PgPool, which: Stuck<'_>, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let (cutoff, workers): (Option<DateTime<Utc>>, Option<&[String]>) = match which {
        Stuck::Since(t) => (Some(t), None),
        Stuck::Of(w) => (None, Some(w)),
    };
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"WITH s AS (
            SELECT d.id, d.notification_id, d.attempts, d.claimed_by, d.claim_job_id, d.sending_since
            FROM notification_deliveries d
            WHERE d.status = 'sending'
              AND ($1::timestamptz IS NULL OR d.sending_since < $1)
              AND ($2::text[] IS NULL OR d.claimed_by = ANY($2) OR (d.claimed_by IS NULL AND EXISTS (
                    SELECT 1 FROM delivery_attempt_log a WHERE a.delivery_id = d.id AND a.attempt = d.attempts AND a.worker = ANY($2))))
            FOR UPDATE SKIP LOCKED)
         , u AS (
            UPDATE notification_deliveries d SET status = 'retrying', next_attempt_at = NULL, sending_since = NULL,
                   claimed_by = NULL, claim_job_id = NULL, last_error = 'interrupted: ' || $3
            FROM s WHERE d.id = s.id AND d.status = 'sending'
            RETURNING d.id)
         , a AS (
            INSERT INTO delivery_attempt_log (delivery_id, attempt, job_id, worker, started_at, finished_at, outcome, error)
            SELECT s.id, s.attempts, s.claim_job_id, s.claimed_by, coalesce(s.sending_since, $4), $4, 'interrupted', $3
            FROM s JOIN u ON u.id = s.id
            ON CONFLICT (delivery_id, attempt) DO UPDATE SET finished_at = EXCLUDED.finished_at, outcome = 'interrupted', error = EXCLUDED.error
            WHERE delivery_attempt_log.outcome IS NULL)
         SELECT s.id AS "id!", s.notification_id AS "notification_id!", n.priority
         FROM s JOIN u ON u.id = s.id JOIN notifications n ON n.id = s.notification_id"#,
        cutoff,
        workers as Option<&[String]>,
        INTERRUPTED,
        now,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut runs = Vec::new();
    for r in &rows {
        tracing::warn!(
            delivery = r.id,
            notification = r.notification_id,
            "recovered a delivery a stopped worker left in sending"
        );
        runs.push((r.notification_id, now, r.priority));
    }
    runs.sort_unstable_by_key(|r| r.0);
    runs.dedup_by_key(|r| r.0);
    enqueue_runs(&mut tx, &runs, now).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// The log line and metrics of one resolved attempt.
fn log_resolution(n: &NotificationRow, d: &Claimed, finished: DateTime<Utc>, res: &Resolution) {
    let (delivery, channel, attempt) = (d.id, d.channel.as_str(), d.attempt);
    let error = res.error.as_deref().unwrap_or_default();
    match res.status {
        DeliveryStatus::Sent => {
            tracing::info!(notification = n.id, delivery, kind = n.kind.as_str(), channel, attempt, user = ?n.user_id, "sent");
        }
        DeliveryStatus::Retrying => {
            let retry_in_ms = res.retry_in.unwrap_or_default().as_millis() as u64;
            tracing::warn!(
                notification = n.id,
                delivery,
                channel,
                attempt,
                retry_in_ms,
                error,
                "send failed, will retry"
            );
        }
        DeliveryStatus::Dead => {
            tracing::error!(
                notification = n.id,
                delivery,
                channel,
                attempt,
                error,
                "delivery dead: attempts exhausted"
            )
        }
        _ => {
            if res.disable_device
                && let Some(dev) = d.device_id
            {
                tracing::info!(device = dev, "push subscription gone: device disabled");
            }
            tracing::warn!(
                notification = n.id,
                delivery,
                channel,
                attempt,
                error,
                "delivery failed permanently"
            );
        }
    }
    if res.status == DeliveryStatus::Sent {
        let lateness = (finished - n.due_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("dashlight_delivery_lateness_seconds", "channel" => channel).record(lateness);
    }
    metrics::counter!("dashlight_deliveries_total", "channel" => channel, "outcome" => res.outcome.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeliverySettings {
        DeliverySettings {
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            school_name: "S".into(),
            school_tz: chrono_tz::Europe::London,
            worker_name: "w".into(),
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-03T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        assert!(backoff(1, b, m, None) <= Duration::from_millis(1200));
        assert!(backoff(4, b, m, None) >= Duration::from_millis(6400));
        assert!(backoff(30, b, m, None) <= m);
        assert!(backoff(1, b, m, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }

    #[test]
    fn an_absurd_retry_after_is_capped_and_never_overflows_the_clock() {
        let e = Err(SendError::Transient {
            message: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(100_000_000_000_000)),
        });
        let r = resolve(&e, 1, 8, t0(), &settings());
        assert_eq!(r.status, DeliveryStatus::Retrying);
        assert_eq!(r.retry_in, Some(Duration::from_secs(3600)));
        assert_eq!(r.next_attempt_at, Some(t0() + chrono::Duration::hours(1)));
        assert!(r.retry_after_ms.is_some_and(|ms| ms > 0));
        // Even a clock at the end of time does not panic.
        let r = resolve(&e, 1, 8, DateTime::<Utc>::MAX_UTC, &settings());
        assert_eq!(r.next_attempt_at, Some(DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn each_outcome_resolves_as_the_readme_says() {
        let s = settings();
        let sent = resolve(
            &Ok(Sent {
                provider_message_id: Some("SM1".into()),
            }),
            1,
            8,
            t0(),
            &s,
        );
        assert_eq!((sent.status, sent.outcome), (DeliveryStatus::Sent, AttemptOutcome::Sent));
        assert_eq!(sent.provider_id.as_deref(), Some("SM1"));

        let transient = resolve(&Err(SendError::transient("reset")), 1, 8, t0(), &s);
        assert_eq!(
            (transient.status, transient.outcome),
            (DeliveryStatus::Retrying, AttemptOutcome::Transient)
        );
        let delay = transient.retry_in.unwrap();
        assert!(delay >= Duration::from_secs(4) && delay <= Duration::from_secs(6), "{delay:?}");

        let with_ra = resolve(
            &Err(SendError::Transient {
                message: "429".into(),
                retry_after: Some(Duration::from_secs(90)),
            }),
            1,
            8,
            t0(),
            &s,
        );
        assert!(with_ra.retry_in.unwrap() >= Duration::from_secs(90));
        assert_eq!(with_ra.retry_after_ms, Some(90_000));

        let dead = resolve(&Err(SendError::transient("reset")), 8, 8, t0(), &s);
        assert_eq!((dead.status, dead.next_attempt_at), (DeliveryStatus::Dead, None));

        let gone = resolve(
            &Err(SendError::Permanent {
                message: "HTTP 410".into(),
                subscription_gone: true,
            }),
            1,
            8,
            t0(),
            &s,
        );
        assert_eq!(
            (gone.status, gone.outcome, gone.disable_device),
            (DeliveryStatus::Failed, AttemptOutcome::Permanent, true)
        );
    }
}
