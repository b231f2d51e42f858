//! The end of a delivery row's life (`notification_deliveries`, `delivery_attempt_log`): the
//! worker's delivery module writes them while a send is under way; this module scrubs them when
//! their person is erased and (with [`super::retention`]) purges them when they are old.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{Addresses, Erasing};

/// The email addresses and phone numbers the person's notifications were sent to.
pub async fn addresses_sent_to(conn: &mut PgConnection, user_id: i64) -> Result<Addresses, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT DISTINCT d.channel, d.target FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE n.user_id = $1 AND d.channel IN ('email', 'sms') AND d.target <> '' AND d.target NOT LIKE 'erased:%'",
        user_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Addresses::default();
    for r in rows {
        if r.channel == "email" {
            out.emails.push(r.target);
        } else {
            out.phones.push(r.target);
        }
    }
    Ok(out)
}

/// The deliveries of the person's notifications, and any other delivery to one of their
/// addresses or numbers.
pub async fn of_person(conn: &mut PgConnection, e: &Erasing) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT d.id FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id WHERE n.user_id = $1
         UNION
         SELECT id FROM notification_deliveries WHERE (channel = 'email' AND lower(target) = ANY($2)) OR (channel = 'sms' AND target = ANY($3))",
        e.user_id,
        &e.emails,
        &e.phones,
    )
    .fetch_all(&mut *conn)
    .await
    .map(|ids| ids.into_iter().flatten().collect())
}

/// Erasure: the deliveries keep their channel, state, times and provider ids; the target (the
/// address, number or push endpoint) becomes `erased:<id>` and errors lose the person's
/// strings, as do the attempts' errors. Returns the rows changed.
pub async fn erase_person(conn: &mut PgConnection, e: &Erasing, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let mut n = sqlx::query!(
        "UPDATE notification_deliveries SET target = 'erased:' || id, last_error = erase_needles(last_error, $2, $3)
         WHERE id = ANY($1)",
        ids,
        &e.needles,
        e.pseudonym,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    n += sqlx::query!(
        "UPDATE delivery_attempt_log SET error = erase_needles(error, $2, $3) WHERE delivery_id = ANY($1) AND error IS NOT NULL",
        ids,
        &e.needles,
        e.pseudonym,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// One statement of the deliveries' purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeStep {
    /// Deliveries deleted.
    pub deleted: u64,
    /// The id to carry on after, or `None` when no delivery past the cutoff is left beyond it.
    pub next: Option<i64>,
}

/// Retention: looks at the next `batch` deliveries by id after `after` and deletes those created
/// before `cutoff` that are settled (no send under way or to come), with their attempts and
/// receipts (`ON DELETE CASCADE`). A delivery's id rises with its creation, so a purge walks the
/// old ones from the oldest and each statement reads only its own `batch` rows: one that searched
/// by `created_at` would read again, each time, every row the statements before it deleted (they
/// stay in the table until vacuumed). The walk ends at the first window with nothing old in it;
/// a delivery skipped (unsettled, or locked by a send) is looked at again by the next run.
///
/// The ids go from one step to the next as arrays (`= ANY (ARRAY(…))`), so that every plan of
/// the statement, the prepared statement's generic plan too, reaches the rows through the primary
/// key: written as `id IN (SELECT …)`, the generic plan joined the window to a scan of the whole
/// table (190 ms a statement at a million rows instead of 7).
pub async fn purge_batch(conn: &mut PgConnection, cutoff: DateTime<Utc>, batch: i64, after: i64) -> Result<PurgeStep, sqlx::Error> {
    let r = sqlx::query!(
        r#"WITH w AS (
               SELECT id, created_at FROM notification_deliveries WHERE id > $3 ORDER BY id LIMIT $2),
           gone AS (
               DELETE FROM notification_deliveries WHERE id = ANY (ARRAY(
                   SELECT d.id FROM notification_deliveries d
                   WHERE d.id = ANY (ARRAY(SELECT id FROM w)) AND d.created_at < $1
                     AND d.status NOT IN ('pending', 'sending', 'retrying')
                   FOR UPDATE SKIP LOCKED))
               RETURNING 1)
           SELECT (SELECT count(*) FROM gone) AS "deleted!",
                  (SELECT max(id) FROM w) AS last,
                  EXISTS (SELECT 1 FROM w WHERE created_at < $1) AS "old!""#,
        cutoff,
        batch,
        after,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(PurgeStep {
        deleted: r.deleted as u64,
        next: r.last.filter(|_| r.old),
    })
}

/// Retention: deletes at most `batch` attempts started before `cutoff` (those whose delivery is
/// still kept; the others went with their delivery).
pub async fn purge_attempts_batch(conn: &mut PgConnection, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM delivery_attempt_log WHERE id IN (
             SELECT id FROM delivery_attempt_log WHERE started_at < $1 AND finished_at IS NOT NULL LIMIT $2 FOR UPDATE SKIP LOCKED)",
        cutoff,
        batch,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
