//! What a send's result means and its recording: [`resolve`] and [`backoff`] decide, without
//! I/O, what one attempt's result does to its delivery; [`record`] writes a batch of results
//! and the acknowledgement of the jobs they finish in one transaction; `log_resolution` is each
//! result's log line and metrics.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dashlight_core::{
    kinds::Policy,
    queue::{self, JobOutcome},
    states::{AttemptOutcome, DeliveryStatus},
};
use rand::Rng;
use sqlx::PgPool;

use super::{Attempted, Claimed, enqueue_runs, settle_notifications};
use crate::{
    channels::{SendError, Sent},
    delivery::{DeliverySettings, NotificationRow, receipt},
};

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
