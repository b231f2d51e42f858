//! What providers report after accepting a message (docs/hearing-back.md): Twilio's
//! status callbacks and RFC 3464 bounces. The hooks call [`report`]; it keeps the report in
//! `delivery_receipts` (append-only, written here only) and, when the report moves a delivery,
//! enqueues the notification's job naming the receipt. The worker's delivery recorder, the one
//! writer of delivery state, applies it: `delivered` / `undelivered` never move back, and
//! `undelivered` continues a `first` policy on the next channel as a permanent failure does.
//!
//! A callback can overtake its send: the provider answers the worker and reports the message
//! delivered before the worker's recorder has stored the provider's message id. Such a report
//! is not dropped: [`keep_early`] keeps it in `early_receipts` (append-only, written here
//! only), and [`adopt_early`], which the reminder sweep runs every few seconds, turns each one
//! whose message id now names a delivery into a receipt of that delivery, applied as above.

use serde::Serialize;
use sqlx::{FromRow, PgConnection};

use crate::{
    jobs::{self, DeliverJob, NewJob, QUEUE_NOTIFICATIONS},
    kinds::Channel,
};

/// Who reported (`delivery_receipts.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ReceiptSource {
    /// A Twilio status callback (`/hooks/sms/status`).
    SmsStatus,
    /// An RFC 3464 delivery status notification (`/hooks/email/inbound`).
    EmailDsn,
}

/// What the report means for the delivery (`delivery_receipts.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// It reached the handset or mailbox.
    Delivered,
    /// Accepted, then not delivered (carrier failure, hard bounce).
    Undelivered,
    /// Kept on record only (a 4.x.x delay, an intermediate status such as `queued`).
    Note,
}

/// One report about one delivery.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// `notification_deliveries.id`.
    pub delivery_id: i64,
    /// Who reported.
    pub source: ReceiptSource,
    /// What it means.
    pub status: ReceiptStatus,
    /// The provider's own words (Twilio's `MessageStatus`, a DSN's `Status`).
    pub provider_status: Option<&'a str>,
    /// Twilio's `ErrorCode`, a DSN's diagnostic code.
    pub error_code: Option<&'a str>,
    /// Free text for the operator (cut to 2,000 characters).
    pub detail: Option<&'a str>,
}

/// A stored report.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Receipt {
    /// `delivery_receipts.id`.
    pub id: i64,
    /// The delivery it is about.
    pub delivery_id: i64,
    /// Who reported.
    pub source: ReceiptSource,
    /// What it means.
    pub status: ReceiptStatus,
    /// The provider's own words.
    pub provider_status: Option<String>,
    /// The provider's error code.
    pub error_code: Option<String>,
    /// Free text.
    pub detail: Option<String>,
    /// When it arrived.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

fn cut(s: Option<&str>, max: usize) -> Option<String> {
    s.map(|s| s.chars().take(max).collect())
}

/// Keeps a report and, unless it is only a note, enqueues the job that applies it. Returns the
/// receipt's id, or `None` when the delivery does not exist. Reports arriving twice or out of
/// order are all kept; applying them is idempotent (the recorder never moves a delivery back).
pub async fn report(conn: &mut PgConnection, r: &Report<'_>) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64, i64, i16)> = sqlx::query!(
        "WITH d AS (SELECT d.id, d.notification_id, n.priority FROM notification_deliveries d
                    JOIN notifications n ON n.id = d.notification_id WHERE d.id = $1),
              ins AS (INSERT INTO delivery_receipts (delivery_id, source, status, provider_status, error_code, detail)
                      SELECT id, $2, $3, $4, $5, $6 FROM d RETURNING id)
         SELECT ins.id, d.notification_id, d.priority FROM ins, d",
        r.delivery_id,
        r.source as ReceiptSource,
        r.status as ReceiptStatus,
        cut(r.provider_status, 100),
        cut(r.error_code, 100),
        cut(r.detail, 2000),
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| (row.id, row.notification_id, row.priority));
    let Some((receipt_id, notification_id, priority)) = row else {
        return Ok(None);
    };
    if r.status != ReceiptStatus::Note {
        let job = DeliverJob::receipt(notification_id, receipt_id);
        jobs::enqueue(conn, &[NewJob::new(QUEUE_NOTIFICATIONS, &job).priority(i32::from(priority))]).await?;
    }
    Ok(Some(receipt_id))
}

/// The delivery a provider's message id names on a channel (status callbacks carry only that).
pub async fn delivery_by_provider_id(
    conn: &mut PgConnection,
    channel: Channel,
    provider_message_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM notification_deliveries WHERE provider_message_id = $1 AND channel = $2 ORDER BY id LIMIT 1",
        provider_message_id,
        channel as Channel,
    )
    .fetch_optional(&mut *conn)
    .await
}

/// A report about a message whose delivery is not known yet (no delivery holds that provider
/// message id): kept in `early_receipts` until [`adopt_early`] finds it. Returns its id.
pub async fn keep_early(conn: &mut PgConnection, channel: Channel, provider_message_id: &str, r: &Report<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO early_receipts (channel, provider_message_id, source, status, provider_status, error_code, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        channel as Channel,
        cut(Some(provider_message_id), 200),
        r.source as ReceiptSource,
        r.status as ReceiptStatus,
        cut(r.provider_status, 100),
        cut(r.error_code, 100),
        cut(r.detail, 2000),
    )
    .fetch_one(&mut *conn)
    .await
}

/// Adopts the early reports whose message id now names a delivery (at most 1,000 a call,
/// oldest first): each becomes a receipt of that delivery through [`report`] (so it is applied
/// like any other) and is marked adopted. Returns how many. Concurrent callers skip each
/// other's rows.
pub async fn adopt_early(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT e.id, d.id AS delivery_id, e.source AS "source: ReceiptSource", e.status AS "status: ReceiptStatus",
                  e.provider_status, e.error_code, e.detail
           FROM early_receipts e
           JOIN LATERAL (SELECT id FROM notification_deliveries d
                         WHERE d.provider_message_id = e.provider_message_id AND d.channel = e.channel
                         ORDER BY id LIMIT 1) d ON true
           WHERE e.adopted_at IS NULL
           ORDER BY e.id LIMIT 1000
           FOR UPDATE OF e SKIP LOCKED"#,
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let receipt = report(
            conn,
            &Report {
                delivery_id: row.delivery_id,
                source: row.source,
                status: row.status,
                provider_status: row.provider_status.as_deref(),
                error_code: row.error_code.as_deref(),
                detail: row.detail.as_deref(),
            },
        )
        .await?;
        sqlx::query!(
            "UPDATE early_receipts SET adopted_at = now(), receipt_id = $2 WHERE id = $1",
            row.id,
            receipt
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(rows.len() as u64)
}

/// A receipt by id (the worker loads the one its job names).
pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<Receipt>, sqlx::Error> {
    sqlx::query_as!(
        Receipt,
        r#"SELECT id, delivery_id, source AS "source: ReceiptSource", status AS "status: ReceiptStatus", provider_status, error_code, detail, received_at
           FROM delivery_receipts WHERE id = $1"#,
        id,
    )
    .fetch_optional(&mut *conn)
    .await
}

/// Every receipt of a delivery, oldest first (the operator's history and the timeline).
pub async fn of_delivery(conn: &mut PgConnection, delivery_id: i64) -> Result<Vec<Receipt>, sqlx::Error> {
    sqlx::query_as!(
        Receipt,
        r#"SELECT id, delivery_id, source AS "source: ReceiptSource", status AS "status: ReceiptStatus", provider_status, error_code, detail, received_at
         FROM delivery_receipts WHERE delivery_id = $1 ORDER BY received_at, id"#,
        delivery_id,
    )
    .fetch_all(&mut *conn)
    .await
}

/// Erasure: the provider's words about the person's deliveries go (a DSN's diagnostic names the
/// address); the status and time stay.
pub async fn erase_person(conn: &mut PgConnection, delivery_ids: &[i64]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE delivery_receipts SET detail = NULL WHERE delivery_id = ANY($1) AND detail IS NOT NULL",
        delivery_ids
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Retention: deletes at most `batch` receipts received before `cutoff`.
pub async fn purge_batch(conn: &mut PgConnection, cutoff: chrono::DateTime<chrono::Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM delivery_receipts WHERE id IN (SELECT id FROM delivery_receipts WHERE received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        cutoff,
        batch,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
