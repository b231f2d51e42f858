//! Recovery of in-doubt sends: deliveries left `sending` by a worker that died have their
//! attempt recorded `interrupted` (from the claim's columns) and go back to `retrying`, their
//! notifications with a job now. Called by the heartbeat (the jobs of a worker that stopped
//! beating) and by the sweep (anything `sending` for too long).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::enqueue_runs;

const INTERRUPTED: &str = "the worker stopped mid-send; the provider may have accepted it";

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
