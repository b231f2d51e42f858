//! What providers report after accepting a message (PRODUCT.md, "Hearing back"): Twilio's
//! status callbacks and RFC 3464 bounces. The hooks call [`report`]; it keeps the report in
//! `delivery_receipts` (append-only, written here only) and, when the report moves a delivery,
//! enqueues the notification's job naming the receipt. The worker's delivery recorder, the one
//! writer of delivery state, applies it: `delivered` / `undelivered` never move back, and
//! `undelivered` continues a `first` policy on the next channel as a permanent failure does.

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
        let job = DeliverJob {
            notification_id,
            retry_delivery_id: None,
            receipt_id: Some(receipt_id),
            cancel: None,
        };
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
