//! The recorder's part for what providers report after accepting a message
//! (docs/hearing-back.md), owned by [`super::record`] and written in its transactions:
//!
//! - [`apply`]: receipts the planner turned into moves ([`super::plan::receipt`]): a `sent`
//!   delivery becomes `delivered` (`delivered_at` set) or `undelivered` (`last_error` with the
//!   provider's status and error code). The statement moves only deliveries still `sent`, so a
//!   report racing another report or an operator's retry changes nothing. After `undelivered`
//!   under `first`, the notification is reopened and gets a run now: the planner turns it into
//!   the next channel ([`super::plan::next_stage`]), the same way as after a permanent failure
//!   at send time. Twilio's error 21610 in a report also suppresses the number (`opted_out`).
//! - [`suppress_opted_out`]: a send refused with Twilio's 21610 (the number texted STOP to the
//!   provider) suppresses the number, so the next SMS to it is `skipped` (`opted_out`).

use chrono::{DateTime, Utc};
use dashlight_core::{
    analytics,
    kinds::Channel,
    states::DeliveryStatus,
    suppressions::{self, Reason},
};
use serde_json::json;
use sqlx::PgConnection;

use super::{plan::ReceiptMove, record::Attempted};

/// Twilio's "the recipient has opted out" (at send time or in a status callback).
pub(crate) const TWILIO_OPTED_OUT: &str = "21610";

struct Moved {
    id: i64,
    notification_id: i64,
    target: String,
    user_id: Option<i64>,
    kind: String,
    priority: i16,
}

/// Applies receipt moves; returns the runs to enqueue (notification, when, priority) for the
/// next stage of `first` policies.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    moves: &[ReceiptMove],
    now: DateTime<Utc>,
) -> Result<Vec<(i64, DateTime<Utc>, i16)>, sqlx::Error> {
    if moves.is_empty() {
        return Ok(vec![]);
    }
    // Two reports about one delivery in one batch: the first to arrive wins (both are final).
    let mut moves: Vec<&ReceiptMove> = moves.iter().collect();
    moves.sort_by_key(|m| (m.delivery_id, m.receipt_id));
    moves.dedup_by_key(|m| m.delivery_id);
    let ids: Vec<i64> = moves.iter().map(|m| m.delivery_id).collect();
    let statuses: Vec<DeliveryStatus> = moves.iter().map(|m| m.to).collect();
    let at: Vec<DateTime<Utc>> = moves.iter().map(|m| m.at).collect();
    let errors: Vec<Option<&str>> = moves.iter().map(|m| m.error.as_deref()).collect();
    let moved: Vec<Moved> = sqlx::query_as!(
        Moved,
        r#"WITH m AS (
             UPDATE notification_deliveries d
             SET status = t.status,
                 delivered_at = CASE WHEN t.status = 'delivered' THEN t.at ELSE d.delivered_at END,
                 last_error = CASE WHEN t.status = 'undelivered' THEN t.error ELSE d.last_error END
             FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[]) AS t(id, status, at, error)
             WHERE d.id = t.id AND d.id = ANY($1) AND d.status = 'sent'
             RETURNING d.id, d.notification_id, d.target)
         SELECT m.id AS "id!", m.notification_id AS "notification_id!", m.target AS "target!", n.user_id, n.type AS kind, n.priority
         FROM m JOIN notifications n ON n.id = m.notification_id"#,
        &ids,
        &statuses as &[DeliveryStatus],
        &at,
        &errors as &[Option<&str>],
    )
    .fetch_all(&mut *conn)
    .await?;

    let mut runs = Vec::new();
    let mut reopen = Vec::new();
    let mut events = Vec::new();
    for row in &moved {
        let Some(m) = moves.iter().find(|m| m.delivery_id == row.id) else {
            continue;
        };
        let (channel, status) = (m.channel.as_str(), m.to.as_str());
        if m.to == DeliveryStatus::Undelivered {
            tracing::warn!(notification = row.notification_id, delivery = row.id, receipt = m.receipt_id, channel, user = ?row.user_id,
                error = m.error.as_deref().unwrap_or_default(), next_channel = m.next_stage, "undelivered: the provider reported it did not arrive");
        } else {
            tracing::info!(notification = row.notification_id, delivery = row.id, receipt = m.receipt_id, channel, user = ?row.user_id, "delivered");
        }
        metrics::counter!("dashlight_delivery_receipts_total", "channel" => channel, "status" => status).increment(1);
        events.push(analytics::Event {
            user_id: row.user_id,
            event_type: if m.to == DeliveryStatus::Delivered {
                "notification_delivered"
            } else {
                "notification_undelivered"
            },
            data: json!({"notification_id": row.notification_id, "delivery_id": row.id, "kind": row.kind, "channel": channel,
                         "receipt_id": m.receipt_id, "error_code": m.error_code}),
            at: m.at,
        });
        if m.next_stage {
            reopen.push(row.notification_id);
            runs.push((row.notification_id, now, row.priority));
        }
        if m.channel == Channel::Sms && m.error_code.as_deref() == Some(TWILIO_OPTED_OUT) {
            suppress(conn, &row.target, row.id, "Twilio 21610 in a status callback").await?;
        }
    }
    if !reopen.is_empty() {
        // The notification was settled `done` when the send was accepted; it is open again
        // until its next channel is recorded.
        sqlx::query!(
            "UPDATE notifications SET status = 'processing', status_reason = 'undelivered: trying the next channel'
             WHERE id = ANY($1) AND status = 'done'",
            &reopen,
        )
        .execute(&mut *conn)
        .await?;
    }
    analytics::record_many(conn, &events).await?;
    for m in &moves {
        if !moved.iter().any(|r| r.id == m.delivery_id) {
            tracing::debug!(
                delivery = m.delivery_id,
                receipt = m.receipt_id,
                "receipt changes nothing: the delivery moved meanwhile"
            );
        }
    }
    runs.sort_unstable_by_key(|r| r.0);
    runs.dedup_by_key(|r| r.0);
    Ok(runs)
}

/// Suppresses the numbers whose send Twilio refused with 21610.
pub(crate) async fn suppress_opted_out(conn: &mut PgConnection, attempted: &[Attempted]) -> Result<(), sqlx::Error> {
    for a in attempted {
        if a.claimed.channel == Channel::Sms
            && let Err(e) = &a.result
            && e.is_opted_out()
        {
            suppress(conn, &a.claimed.target, a.claimed.id, &e.to_string()).await?;
        }
    }
    Ok(())
}

async fn suppress(conn: &mut PgConnection, number: &str, delivery: i64, detail: &str) -> Result<(), sqlx::Error> {
    if suppressions::suppress(conn, Channel::Sms, number, Reason::OptedOut, Some(delivery), Some(detail)).await? {
        tracing::info!(delivery, number, "number suppressed: opted out at the provider (21610)");
        metrics::counter!("dashlight_suppressions_total", "channel" => "sms", "reason" => "opted_out").increment(1);
    }
    Ok(())
}
