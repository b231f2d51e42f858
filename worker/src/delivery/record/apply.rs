//! Applying a chunk's decisions. [`apply`] runs in two steps:
//!
//! 1. [`Writes::of`], pure: the decisions become a plan of writes, one list per statement
//!    group (notifications that cannot be planned, operator reopens, cancellations, withdrawals,
//!    expiries, later runs, claims of due deliveries, new deliveries, notifications to settle,
//!    providers' reports); [`Writes::hold`], pure too, holds the sends of paused channels.
//! 2. One named write step per statement group, called in order inside the one transaction:
//!    `hold_paused`, `withdraw`, `reopen`, `expire`, `insert_deliveries` (the insert of a send is
//!    its claim), `claim_due`, then the reports, the runs to enqueue and the settling. What
//!    finished here and what waits for its sends is [`Writes::units`].

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use dashlight_core::{controls, kinds::Channel, notify, queue::JobOutcome, states::DeliveryStatus};
use sqlx::{PgConnection, PgPool};

use super::{Claimed, Decided, close_open, enqueue_runs, fail_notifications, settle_notifications};
use crate::delivery::{
    DeliverySettings, Loaded,
    plan::{Applicable, ReceiptMove},
    receipt,
};

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

/// A run of a notification at its time: (notification, when, priority).
type Run = (i64, DateTime<Utc>, i16);
/// A unit: (job, notification).
type Unit = (String, i64);
/// A finished job's unit: (job, outcome).
type Finished = (String, JobOutcome);

/// A delivery to insert.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Insert<'a> {
    pub(super) notification: i64,
    pub(super) channel: Channel,
    pub(super) target: &'a str,
    pub(super) device: Option<i64>,
    /// `sending` (claimed by its insert), `pending` (held) or `skipped`.
    pub(super) status: DeliveryStatus,
    pub(super) skip: Option<&'a str>,
    /// Quiet hours: held until then.
    pub(super) hold_until: Option<DateTime<Utc>>,
    /// Its channel is paused: it waits `pending` with the pause's reason.
    pub(super) paused: Option<String>,
}

/// The writes a chunk's decisions amount to, before any statement runs.
#[derive(Default)]
pub(super) struct Writes<'a> {
    /// Units that can never succeed, with their outcome.
    pub(super) killed: Vec<(String, JobOutcome)>,
    /// Notifications recorded `failed`, with why.
    pub(super) unplannable: Vec<(i64, String)>,
    /// Failed deliveries an operator retries.
    pub(super) reopen: Vec<i64>,
    /// Notifications whose open deliveries are cancelled (the booking changed first).
    pub(super) cancel: Vec<i64>,
    /// Notifications an operator cancelled, with the reason.
    pub(super) withdraw: Vec<(i64, &'a str)>,
    /// Notifications expired before they could be sent.
    pub(super) expire: Vec<i64>,
    /// Notifications not due yet: another run at their time.
    pub(super) later: Vec<Run>,
    /// Due deliveries to claim: (delivery, notification).
    pub(super) claim: Vec<(i64, i64)>,
    /// Deliveries to insert.
    pub(super) inserts: Vec<Insert<'a>>,
    /// Notifications settled once nothing of theirs is in flight.
    pub(super) settle: Vec<i64>,
    /// Providers' reports to apply.
    pub(super) receipts: Vec<ReceiptMove>,
    /// The job of each notification (the first in the chunk that sends).
    pub(super) job_of: HashMap<i64, &'a str>,
    loaded_of: HashMap<i64, &'a Arc<Loaded>>,
}

impl<'a> Writes<'a> {
    /// The plan of writes of a chunk's decisions (no I/O).
    pub(super) fn of(decided: &'a [Decided]) -> Self {
        let mut w = Writes::default();
        for d in decided {
            if let Some(l) = &d.loaded
                && !matches!(d.decision, Applicable::Receipt(_))
            {
                // The drain decides one job per notification; a second would find nothing to add.
                // (A receipt's job sends nothing: it never owns a claimed delivery.)
                w.job_of.entry(l.n.id).or_insert(&d.job_id);
                w.loaded_of.entry(l.n.id).or_insert(l);
            }
            let Some(l) = &d.loaded else {
                // A decision about a notification that does not exist is always `Kill`.
                let why = match &d.decision {
                    Applicable::Kill(why) => {
                        w.unplannable.push((d.notification, why.clone()));
                        why.clone()
                    }
                    _ => "the notification does not exist".into(),
                };
                w.killed.push((d.job_id.clone(), JobOutcome::Killed(why)));
                continue;
            };
            let id = l.n.id;
            match &d.decision {
                Applicable::Kill(why) => {
                    w.killed.push((d.job_id.clone(), JobOutcome::Killed(why.clone())));
                    w.unplannable.push((d.notification, why.clone()));
                }
                Applicable::Cancel => w.cancel.push(id),
                Applicable::Withdraw(why) => w.withdraw.push((id, why.as_str())),
                Applicable::Expire => w.expire.push(id),
                Applicable::Later(at) => w.later.push((id, *at, l.n.priority)),
                Applicable::Deliver { reopen, insert, claim } => {
                    w.reopen.extend(*reopen);
                    w.claim.extend(claim.iter().map(|did| (*did, id)));
                    w.inserts.extend(insert.iter().map(|p| Insert {
                        notification: id,
                        channel: p.channel,
                        target: p.target.as_str(),
                        device: p.device_id,
                        status: match (&p.skip, p.hold_until) {
                            (Some(_), _) => DeliveryStatus::Skipped,
                            (None, Some(_)) => DeliveryStatus::Pending,
                            (None, None) => DeliveryStatus::Sending,
                        },
                        skip: p.skip.as_deref(),
                        hold_until: p.hold_until,
                        paused: None,
                    }));
                    w.settle.push(id);
                }
                Applicable::Receipt(m) => w.receipts.extend(m.clone()),
            }
        }
        w
    }

    /// Whether anything would be sent (then the channels' pauses matter).
    fn sends(&self) -> bool {
        self.inserts.iter().any(|i| i.status == DeliveryStatus::Sending) || !self.claim.is_empty()
    }

    /// Holds the sends of paused channels (`paused`: each channel with its pause's reason): an
    /// insert waits `pending` with the reason; a claim is dropped and returned, to have the
    /// reason written on its delivery.
    pub(super) fn hold(&mut self, paused: &[(Channel, String)]) -> Vec<(i64, String)> {
        if paused.is_empty() {
            return Vec::new();
        }
        let why = |c: Channel| paused.iter().find(|(p, _)| *p == c).map(|(_, w)| w.clone());
        for i in &mut self.inserts {
            if i.skip.is_none()
                && i.hold_until.is_none()
                && let Some(w) = why(i.channel)
            {
                i.status = DeliveryStatus::Pending;
                i.paused = Some(w);
            }
        }
        let mut held = Vec::new();
        let loaded_of = &self.loaded_of;
        self.claim.retain(|(did, nid)| {
            let channel = loaded_of
                .get(nid)
                .and_then(|l| l.deliveries.iter().find(|d| d.id == *did))
                .map(|d| d.channel);
            match channel.and_then(why) {
                Some(w) => {
                    held.push((*did, w));
                    false
                }
                None => true,
            }
        });
        held
    }

    /// The units finished here and those waiting for their sends (`sending`: the notifications
    /// with a delivery claimed by this chunk).
    pub(super) fn units(self, decided: &[Decided], sending: &HashSet<i64>) -> (Vec<Unit>, Vec<Finished>) {
        let mut finished = self.killed;
        let mut open = Vec::new();
        for d in decided {
            if matches!(d.decision, Applicable::Kill(_)) || d.loaded.is_none() {
                continue;
            }
            if sending.contains(&d.notification) && !matches!(d.decision, Applicable::Receipt(_)) {
                open.push((d.job_id.clone(), d.notification));
            } else {
                finished.push((d.job_id.clone(), JobOutcome::Done));
            }
        }
        (open, finished)
    }

    /// The log lines and metrics of the skipped deliveries.
    fn log_skipped(&self) {
        for i in &self.inserts {
            if let Some(reason) = i.skip {
                let kind = self.loaded_of.get(&i.notification).map(|l| l.n.kind.as_str());
                tracing::info!(notification = i.notification, kind, channel = i.channel.as_str(), %reason, "delivery skipped");
                metrics::counter!("dashlight_deliveries_total", "channel" => i.channel.as_str(), "outcome" => "skipped").increment(1);
            }
        }
    }
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
    let mut w = Writes::of(decided);
    w.log_skipped();

    let mut tx = pool.begin().await?;
    fail_notifications(&mut tx, &w.unplannable).await?;
    hold_paused(&mut tx, &mut w).await?;
    withdraw(&mut tx, &w.withdraw).await?;
    reopen(&mut tx, &w.reopen).await?;
    if !w.cancel.is_empty() {
        close_open(&mut tx, &w.cancel, DeliveryStatus::Cancelled, "the booking changed first").await?;
    }
    expire(&mut tx, &w.expire).await?;
    let mut requeue = std::mem::take(&mut w.later);
    let mut sends = insert_deliveries(&mut tx, &w, worker, max_attempts, now, &mut requeue).await?;
    sends.extend(claim_due(&mut tx, &w, worker, now).await?);
    requeue.extend(receipt::apply(&mut tx, &w.receipts, now).await?);
    enqueue_runs(&mut tx, &requeue, now).await?;

    // Notifications with nothing in flight here are settled now; the others when their results
    // are recorded. Jobs likewise.
    let sending: HashSet<i64> = sends.iter().map(|c| c.n.n.id).collect();
    w.settle.retain(|id| !sending.contains(id));
    settle_notifications(&mut tx, &w.settle, now).await?;
    let (open, finished) = w.units(decided, &sending);
    tx.commit().await?;
    Ok(Applied { sends, open, finished })
}

/// A paused channel's sends wait `pending`, the pause as their reason (its resume wakes them).
async fn hold_paused(tx: &mut PgConnection, w: &mut Writes<'_>) -> Result<(), sqlx::Error> {
    if !w.sends() {
        return Ok(());
    }
    let paused = controls::held_channels(&mut *tx).await?;
    let held = w.hold(&paused);
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
    let held_sends = w.inserts.iter().filter(|i| i.paused.is_some()).count() + held.len();
    if held_sends > 0 {
        tracing::info!(deliveries = held_sends, "sends held: their channel is paused");
        metrics::counter!("dashlight_sends_held_total", "reason" => "channel_paused").increment(held_sends as u64);
    }
    Ok(())
}

/// An operator cancelled these notifications' jobs: each has its open deliveries closed and is
/// recorded `cancelled` with its reason (by core's one writer of that state,
/// `notify::record_cancelled`).
async fn withdraw(tx: &mut PgConnection, withdraw: &[(i64, &str)]) -> Result<(), sqlx::Error> {
    for (id, why) in withdraw {
        close_open(&mut *tx, &[*id], DeliveryStatus::Cancelled, why).await?;
        notify::record_cancelled(&mut *tx, &[*id], why).await?;
        tracing::info!(notification = id, reason = why, "notification cancelled: its job was cancelled");
    }
    Ok(())
}

/// An operator's retries: the failed deliveries become `retrying` again.
async fn reopen(tx: &mut PgConnection, reopen: &[i64]) -> Result<(), sqlx::Error> {
    if reopen.is_empty() {
        return Ok(());
    }
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
            reopen,
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
    Ok(())
}

/// Notifications whose lesson started before they could be sent: closed `skipped`.
async fn expire(tx: &mut PgConnection, expire: &[i64]) -> Result<(), sqlx::Error> {
    if expire.is_empty() {
        return Ok(());
    }
    let reason = "the lesson had started before it could be sent";
    close_open(&mut *tx, expire, DeliveryStatus::Skipped, reason).await?;
    sqlx::query!(
        "UPDATE notifications SET status = 'skipped', status_reason = $2 WHERE id = ANY($1) AND status IN ('pending', 'processing')",
        expire,
        reason,
    )
    .execute(&mut *tx)
    .await?;
    for id in expire {
        tracing::info!(notification = id, "skipped: expired");
    }
    Ok(())
}

/// Inserts the planned deliveries: those to send are inserted `sending` (the insert is their
/// claim) and returned; held ones get a run at their time (`requeue`).
async fn insert_deliveries(
    tx: &mut PgConnection,
    w: &Writes<'_>,
    worker: &str,
    max_attempts: i32,
    now: DateTime<Utc>,
    requeue: &mut Vec<Run>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut sends = Vec::new();
    if w.inserts.is_empty() {
        return Ok(sends);
    }
    let ins = &w.inserts;
    let nids: Vec<i64> = ins.iter().map(|i| i.notification).collect();
    let channels: Vec<Channel> = ins.iter().map(|i| i.channel).collect();
    let targets: Vec<&str> = ins.iter().map(|i| i.target).collect();
    let devices: Vec<Option<i64>> = ins.iter().map(|i| i.device).collect();
    let statuses: Vec<DeliveryStatus> = ins.iter().map(|i| i.status).collect();
    let reasons: Vec<Option<&str>> = ins.iter().map(|i| i.skip).collect();
    let attempts: Vec<i32> = ins.iter().map(|i| i32::from(i.status == DeliveryStatus::Sending)).collect();
    let holds: Vec<Option<DateTime<Utc>>> = ins.iter().map(|i| i.hold_until).collect();
    let hold_reasons: Vec<Option<String>> = ins.iter().map(|i| i.paused.clone()).collect();
    // The job of each delivery to send, so the claim names who sends it for what (the attempt
    // record is written once, with the result; a worker that dies mid-send leaves these on
    // the delivery for `interrupt`).
    let claim_jobs: Vec<Option<&str>> = ins
        .iter()
        .map(|i| (i.status == DeliveryStatus::Sending).then(|| w.job_of[&i.notification]))
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
        let l = w.loaded_of[&r.notification_id];
        match r.status {
            DeliveryStatus::Sending => sends.push(Claimed {
                id: r.id,
                channel: r.channel,
                target: r.target,
                device_id: r.device_id,
                attempt: 1,
                max_attempts,
                job_id: w.job_of[&r.notification_id].to_owned(),
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
    Ok(sends)
}

/// The claim of due deliveries: only one worker moves a delivery to `sending`, and only while it
/// is still due (another worker may have sent and rescheduled it meanwhile).
async fn claim_due(tx: &mut PgConnection, w: &Writes<'_>, worker: &str, now: DateTime<Utc>) -> Result<Vec<Claimed>, sqlx::Error> {
    if w.claim.is_empty() {
        return Ok(Vec::new());
    }
    let (claim, job_ids): (Vec<i64>, Vec<&str>) = w.claim.iter().map(|(did, nid)| (*did, w.job_of[nid])).unzip();
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
    Ok(claimed
        .into_iter()
        .map(|r| Claimed {
            id: r.id,
            channel: r.channel,
            target: r.target,
            device_id: r.device_id,
            attempt: r.attempts,
            max_attempts: r.max_attempts,
            job_id: w.job_of[&r.notification_id].to_owned(),
            started: now,
            n: w.loaded_of[&r.notification_id].clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use dashlight_core::states::NotificationStatus;

    use super::*;
    use crate::delivery::plan::{
        Planned,
        tests::{delivery, loaded, t},
    };

    fn unit(job: &str, decision: Applicable, status: NotificationStatus) -> Decided {
        let l = loaded(status, vec![delivery(5, Channel::Sms, DeliveryStatus::Retrying, None)]);
        Decided {
            job_id: job.into(),
            notification: l.n.id,
            loaded: Some(Arc::new(l)),
            decision,
        }
    }

    fn planned(channel: Channel, skip: Option<&str>, hold_until: Option<DateTime<Utc>>) -> Planned {
        Planned {
            channel,
            target: "t".into(),
            device_id: None,
            skip: skip.map(str::to_owned),
            hold_until,
        }
    }

    #[test]
    fn a_deliver_decision_plans_its_inserts_claims_and_settling() {
        let decided = [unit(
            "j1",
            Applicable::Deliver {
                reopen: Some(5),
                insert: vec![
                    planned(Channel::Push, None, None),
                    planned(Channel::Email, Some("opted out"), None),
                    planned(Channel::Sms, None, Some(t("2026-03-03T13:00:00Z"))),
                ],
                claim: vec![5],
            },
            NotificationStatus::Pending,
        )];
        let w = Writes::of(&decided);
        let statuses: Vec<DeliveryStatus> = w.inserts.iter().map(|i| i.status).collect();
        assert_eq!(
            statuses,
            [DeliveryStatus::Sending, DeliveryStatus::Skipped, DeliveryStatus::Pending]
        );
        assert_eq!(
            (w.reopen.as_slice(), w.claim.as_slice(), w.settle.as_slice()),
            (&[5][..], &[(5, 1)][..], &[1][..])
        );
        assert_eq!(w.job_of.get(&1), Some(&"j1"));
        assert!(w.killed.is_empty() && w.unplannable.is_empty());
        assert!(w.sends());
    }

    #[test]
    fn a_kill_fails_its_notification_and_a_missing_one_only_kills_its_job() {
        let mut gone = unit("j2", Applicable::Cancel, NotificationStatus::Pending);
        gone.loaded = None;
        gone.notification = 9;
        let decided = [
            unit("j1", Applicable::Kill("unknown kind".into()), NotificationStatus::Pending),
            gone,
        ];
        let w = Writes::of(&decided);
        assert_eq!(w.unplannable, [(1, "unknown kind".to_owned())]);
        assert_eq!(
            w.killed,
            [
                ("j1".to_owned(), JobOutcome::Killed("unknown kind".into())),
                ("j2".to_owned(), JobOutcome::Killed("the notification does not exist".into())),
            ]
        );
        let (open, finished) = w.units(&decided, &HashSet::new());
        assert!(open.is_empty());
        assert_eq!(finished.len(), 2, "no unit is finished twice");
    }

    #[test]
    fn each_closing_decision_goes_to_its_own_statement_group() {
        let decided = [
            unit("c", Applicable::Cancel, NotificationStatus::Cancelled),
            unit("w", Applicable::Withdraw("operator".into()), NotificationStatus::Pending),
            unit("e", Applicable::Expire, NotificationStatus::Pending),
            unit("l", Applicable::Later(t("2026-03-03T12:30:00Z")), NotificationStatus::Pending),
            unit("r", Applicable::Receipt(None), NotificationStatus::Done),
        ];
        let w = Writes::of(&decided);
        assert_eq!(w.cancel, [1]);
        assert_eq!(w.withdraw, [(1, "operator")]);
        assert_eq!(w.expire, [1]);
        assert_eq!(w.later, [(1, t("2026-03-03T12:30:00Z"), 20)]);
        assert!(w.receipts.is_empty() && w.inserts.is_empty() && !w.sends());
        // A receipt's job never owns the notification's sends.
        assert_eq!(w.job_of.get(&1), Some(&"c"));
    }

    #[test]
    fn a_paused_channel_holds_new_sends_and_due_claims_but_not_skips_or_quiet_hours() {
        let decided = [unit(
            "j1",
            Applicable::Deliver {
                reopen: None,
                insert: vec![
                    planned(Channel::Sms, None, None),
                    planned(Channel::Sms, Some("opted out"), None),
                    planned(Channel::Sms, None, Some(t("2026-03-03T13:00:00Z"))),
                    planned(Channel::Push, None, None),
                ],
                claim: vec![5],
            },
            NotificationStatus::Pending,
        )];
        let mut w = Writes::of(&decided);
        let held = w.hold(&[(Channel::Sms, "provider outage".into())]);
        assert_eq!(held, [(5, "provider outage".to_owned())]);
        assert!(w.claim.is_empty());
        let after: Vec<(DeliveryStatus, Option<&str>)> = w.inserts.iter().map(|i| (i.status, i.paused.as_deref())).collect();
        assert_eq!(
            after,
            [
                (DeliveryStatus::Pending, Some("provider outage")),
                (DeliveryStatus::Skipped, None),
                (DeliveryStatus::Pending, None),
                (DeliveryStatus::Sending, None),
            ]
        );
        // Nothing paused: nothing held.
        let mut w = Writes::of(&decided);
        assert!(w.hold(&[]).is_empty());
        assert_eq!(w.claim, [(5, 1)]);
    }

    #[test]
    fn units_with_a_claimed_send_stay_open_and_the_rest_finish() {
        let decided = [
            unit(
                "j1",
                Applicable::Deliver {
                    reopen: None,
                    insert: vec![],
                    claim: vec![5],
                },
                NotificationStatus::Pending,
            ),
            unit("r1", Applicable::Receipt(None), NotificationStatus::Pending),
        ];
        let w = Writes::of(&decided);
        let (open, finished) = w.units(&decided, &HashSet::from([1]));
        assert_eq!(open, [("j1".to_owned(), 1)]);
        assert_eq!(finished, [("r1".to_owned(), JobOutcome::Done)]);
    }
}
